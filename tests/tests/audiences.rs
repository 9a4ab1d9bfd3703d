//! Audiences: operators tag clients (`PUT /operators/clients/{id}/tags`,
//! `tags` and `?tag=` in the listing), and a publish names exactly one of
//! `to_client_ids`, `to_tags` or `"to_all": true`. Both backends.

mod support;

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::*;

/// The clients carrying `tag`, walking `?tag=` pages of `limit`: each page
/// at most `limit` long, nobody twice. Returns the clients and the pages.
async fn tagged(s: &Server, tag: &str, limit: u32) -> (Vec<Value>, usize) {
    let mut all: Vec<Value> = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = format!("tag={}&limit={limit}", urlencode(tag));
        if let Some(t) = &token {
            query.push_str(&format!("&page_token={}", urlencode(t)));
        }
        let resp = s.list_clients_raw(s.operator_token(), &query).await;
        let status = resp.status();
        let v = json_body(resp).await;
        assert_eq!(status, StatusCode::OK, "list ?{query}: {v}");
        pages += 1;
        let clients = v["clients"].as_array().expect("clients array");
        assert!(clients.len() <= limit as usize, "page over limit: {v}");
        for c in clients {
            assert!(
                all.iter().all(|seen| seen["id"] != c["id"]),
                "{} listed twice under tag {tag}",
                c["id"]
            );
            assert!(
                c["tags"]
                    .as_array()
                    .is_some_and(|t| t.contains(&json!(tag))),
                "listed under tag {tag} without carrying it: {c}"
            );
            all.push(c.clone());
        }
        match v.get("next_page_token") {
            Some(Value::String(t)) => token = Some(t.clone()),
            None => return (all, pages),
            Some(other) => panic!("next_page_token is not a string: {other}"),
        }
        assert!(pages < 1000, "paging does not terminate");
    }
}

fn ids(clients: &[Value]) -> BTreeSet<String> {
    clients
        .iter()
        .map(|c| c["id"].as_str().expect("id string").to_string())
        .collect()
}

fn set(ids: &[&Creds]) -> BTreeSet<String> {
    ids.iter().map(|c| c.client_id.clone()).collect()
}

/// The tags the full listing shows for `client_id`.
async fn listed_tags(s: &Server, client_id: &str) -> Value {
    let (clients, _) = s.list_all_clients(1000).await;
    let c = clients
        .iter()
        .find(|c| c["id"] == json!(client_id))
        .unwrap_or_else(|| panic!("{client_id} not listed"));
    c["tags"].clone()
}

/// Everything the client can fetch now: `Some(messages)` (ids and
/// plaintexts checked) or `None` for a 204.
async fn inbox(s: &Server, c: &Creds) -> Option<Vec<(u64, Value)>> {
    let body = s.poll(c, Some(0), None).await?;
    Some(
        messages_of(&body)
            .iter()
            .map(|m| (m["id"].as_u64().unwrap(), open_message(c, m)))
            .collect(),
    )
}

/// The ids of the recipients in a (finished) publish's status.
async fn recipients_of(s: &Server, publish_id: &str) -> BTreeSet<String> {
    s.recipient_statuses(publish_id, 1000)
        .await
        .iter()
        .map(|r| r["client_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_tag_clients_and_the_listing_shows_and_filters_by_tag() {
    let s = Server::start().await;
    let door_eu = s.new_client().await;
    let eu = s.new_client().await;
    let us = s.new_client().await;
    let plain = s.new_client().await;

    // Sorted, duplicates folded.
    assert_eq!(
        s.set_tags(&door_eu.client_id, &["eu", "door-sensors", "eu"])
            .await,
        ["door-sensors", "eu"]
    );
    assert_eq!(s.set_tags(&eu.client_id, &["eu"]).await, ["eu"]);
    assert_eq!(
        s.set_tags(&us.client_id, &["us", "a.b_c-9", "x".repeat(64).as_str()])
            .await,
        ["a.b_c-9", "us", "x".repeat(64).as_str()]
    );

    // Every client in the listing has its tags, none for the untagged one.
    let (clients, _) = s.list_all_clients(100).await;
    assert_eq!(clients.len(), 4);
    for c in &clients {
        assert_keys(
            c,
            &[
                "created_at",
                "id",
                "last_seen_at",
                "name",
                "sent_head",
                "status",
                "tags",
            ],
        );
    }
    assert_eq!(
        listed_tags(&s, &door_eu.client_id).await,
        json!(["door-sensors", "eu"])
    );
    assert_eq!(listed_tags(&s, &eu.client_id).await, json!(["eu"]));
    assert_eq!(listed_tags(&s, &plain.client_id).await, json!([]));

    // ?tag= lists exactly the clients carrying it, in pages.
    let (both, pages) = tagged(&s, "eu", 1).await;
    assert_eq!(ids(&both), set(&[&door_eu, &eu]));
    assert!(
        pages >= 2,
        "two clients at one per page took {pages} page(s)"
    );
    let (one, _) = tagged(&s, "door-sensors", 100).await;
    assert_eq!(ids(&one), set(&[&door_eu]));
    let resp = s.list_clients_raw(s.operator_token(), "tag=nobody").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(resp).await, json!({"clients": []}));
    // The default page holds them all.
    let v = json_body(s.list_clients_raw(s.operator_token(), "tag=eu").await).await;
    assert_keys(&v, &["clients"]);
    assert_eq!(ids(v["clients"].as_array().unwrap()), set(&[&door_eu, &eu]));

    // The tag set is replaced, not added to.
    assert_eq!(s.set_tags(&door_eu.client_id, &["us"]).await, ["us"]);
    assert_eq!(ids(&tagged(&s, "eu", 1).await.0), set(&[&eu]));
    assert_eq!(ids(&tagged(&s, "us", 1).await.0), set(&[&door_eu, &us]));
    assert!(tagged(&s, "door-sensors", 10).await.0.is_empty());
    // Setting the same set again changes nothing.
    assert_eq!(s.set_tags(&door_eu.client_id, &["us"]).await, ["us"]);
    assert_eq!(ids(&tagged(&s, "us", 10).await.0), set(&[&door_eu, &us]));
    // [] clears.
    assert!(s.set_tags(&door_eu.client_id, &[]).await.is_empty());
    assert_eq!(listed_tags(&s, &door_eu.client_id).await, json!([]));
    assert_eq!(ids(&tagged(&s, "us", 10).await.0), set(&[&us]));

    // 20 tags are allowed.
    let twenty: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    let twenty: Vec<&str> = twenty.iter().map(String::as_str).collect();
    assert_eq!(s.set_tags(&plain.client_id, &twenty).await, twenty);
    assert_eq!(ids(&tagged(&s, "t19", 10).await.0), set(&[&plain]));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tags_are_refused_and_unknown_clients_are_404() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let op = s.operator_token().to_string();
    assert_eq!(s.set_tags(&c.client_id, &["keep"]).await, ["keep"]);

    let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
    for body in [
        json!({}),
        json!({"tags": null}),
        json!({"tags": "eu"}),
        json!({"tags": {"eu": true}}),
        json!({"tags": ["EU"]}),
        json!({"tags": [""]}),
        json!({"tags": ["a b"]}),
        json!({"tags": ["eu/west"]}),
        json!({"tags": ["café"]}),
        json!({"tags": ["x".repeat(65)]}),
        json!({"tags": ["ok", 7]}),
        json!({"tags": ["ok", null]}),
        json!({ "tags": many }),
    ] {
        expect_validation(s.set_tags_raw(&op, &c.client_id, &body).await, "tags").await;
    }
    // A refused request changes nothing.
    assert_eq!(listed_tags(&s, &c.client_id).await, json!(["keep"]));

    // No such client: 404, whether the id is a UUID or not.
    for id in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_string()] {
        expect_error(
            s.set_tags_raw(&op, &id, &json!({"tags": ["eu"]})).await,
            404,
            "not_found",
        )
        .await;
    }
    // Nobody was created by them.
    assert_eq!(s.list_all_clients(100).await.0.len(), 1);

    // Only an operator token sets tags.
    for token in ["", "wrong-operator-token", s.admin_token()] {
        expect_error(
            s.set_tags_raw(token, &c.client_id, &json!({"tags": ["eu"]}))
                .await,
            401,
            "unauthorized",
        )
        .await;
    }
    let resp = c
        .auth(s.request(
            Method::PUT,
            &format!("{API}/operators/clients/{}/tags", c.client_id),
        ))
        .json(&json!({"tags": ["eu"]}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "unauthorized").await;
    // A body that is not declared JSON.
    let resp = s
        .request(
            Method::PUT,
            &format!("{API}/operators/clients/{}/tags", c.client_id),
        )
        .header("X-Operator-Token", &op)
        .header("Content-Type", "text/plain")
        .body(r#"{"tags": ["eu"]}"#)
        .send()
        .await
        .unwrap();
    expect_error(resp, 415, "unsupported_media_type").await;
    assert_eq!(listed_tags(&s, &c.client_id).await, json!(["keep"]));

    // A bad ?tag= in the listing.
    for query in [
        "tag=",
        "tag=EU",
        "tag=a%20b",
        "tag=a%2Fb",
        &format!("tag={}", "x".repeat(65)),
    ] {
        expect_validation(s.list_clients_raw(&op, query).await, "tag").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_client_loses_its_tags() {
    let s = Server::start().await;
    let fp = random_fingerprint();
    let doomed = s.register(&fp).await;
    let keeper = s.new_client().await;
    // A tag only the doomed client carries: it must not outlive it at rest.
    let solo = format!("solo-{}", uuid::Uuid::new_v4().simple());
    s.set_tags(&doomed.client_id, &["eu", "door", &solo]).await;
    s.set_tags(&keeper.client_id, &["eu"]).await;
    assert_eq!(ids(&tagged(&s, "eu", 10).await.0), set(&[&doomed, &keeper]));
    let holding = |at_rest: Vec<(String, Vec<u8>)>| -> Vec<String> {
        at_rest
            .into_iter()
            .filter(|(_, d)| d.windows(solo.len()).any(|w| w == solo.as_bytes()))
            .map(|(place, _)| place)
            .collect()
    };
    assert!(
        !holding(s.data_at_rest().await).is_empty(),
        "control: the tag is at rest before the delete"
    );

    s.delete_client(&doomed.client_id).await;
    let left = holding(s.data_at_rest().await);
    assert!(
        left.is_empty(),
        "the deleted client's tag is still at rest: {left:?}"
    );
    assert_eq!(ids(&tagged(&s, "eu", 10).await.0), set(&[&keeper]));
    assert!(tagged(&s, "door", 10).await.0.is_empty());
    expect_error(
        s.set_tags_raw(
            s.operator_token(),
            &doomed.client_id,
            &json!({"tags": ["eu"]}),
        )
        .await,
        404,
        "not_found",
    )
    .await;

    // A tag publish does not count it.
    let p = s
        .publish_with(&json!({"to_tags": ["eu", "door"], "type": "t", "payload": 1}))
        .await;
    let id = p["publish_id"].as_str().unwrap();
    let status = s.publish_status(id, "").await;
    assert_eq!(status["recipients"], json!(1), "{status}");
    assert_eq!(recipients_of(&s, id).await, set(&[&keeper]));

    // Its fingerprint registers a new client, which carries no tags.
    let (code, reborn) = s.register_status(&fp, None).await;
    assert_eq!(code, 201);
    assert_eq!(listed_tags(&s, &reborn.client_id).await, json!([]));
    assert!(tagged(&s, "door", 10).await.0.is_empty());
    assert_eq!(ids(&tagged(&s, "eu", 10).await.0), set(&[&keeper]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_publish_reaches_exactly_the_tagged_clients() {
    let s = Server::start().await;
    let eu = s.new_client().await;
    let eu_door = s.new_client().await;
    let door = s.new_client().await;
    let us = s.new_client().await;
    let untagged = s.new_client().await;
    s.set_tags(&eu.client_id, &["eu"]).await;
    s.set_tags(&eu_door.client_id, &["eu", "door"]).await;
    s.set_tags(&door.client_id, &["door", "x"]).await;
    s.set_tags(&us.client_id, &["us"]).await;
    // An earlier message, so ids are per client and not per publish.
    s.publish(&[&door.client_id], "before", json!(0)).await;

    let payload = json!({"alert": "door open", "floor": 3});
    let p = s
        .publish_with(&json!({"to_tags": ["eu", "door"], "type": "alert", "payload": payload}))
        .await;
    assert_eq!(
        p["recipients"],
        Value::Null,
        "a tag audience is counted later"
    );
    let id = p["publish_id"].as_str().unwrap();
    uuid::Uuid::parse_str(id).expect("publish_id is a UUID");

    let want = json!({"type": "alert", "payload": payload});
    for (c, message_id) in [(&eu, 1), (&eu_door, 1), (&door, 2)] {
        let got = inbox(&s, c).await.expect("a tagged client got the message");
        assert_eq!(
            got.last().unwrap(),
            &(message_id, want.clone()),
            "exactly once, after what it had: {got:?}"
        );
        assert_eq!(got.len() as u64, message_id, "{got:?}");
    }
    for c in [&us, &untagged] {
        assert_eq!(inbox(&s, c).await, None, "an untargeted client got it");
    }

    let status = s.publish_status(id, "").await;
    assert_eq!(status["recipients"], json!(3), "{status}");
    assert_eq!(status["delivered"], json!(3), "{status}");
    assert_eq!(status["state"], json!("done"), "{status}");
    assert_eq!(status["type"], json!("alert"));
    let tags: BTreeSet<&str> = status["audience"]["to_tags"]
        .as_array()
        .unwrap_or_else(|| panic!("audience: {status}"))
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tags, BTreeSet::from(["door", "eu"]));
    let detail = s.recipient_statuses(id, 1000).await;
    assert_eq!(
        detail
            .iter()
            .map(|r| r["client_id"].as_str().unwrap().to_string())
            .collect::<BTreeSet<_>>(),
        set(&[&eu, &eu_door, &door])
    );
    for r in &detail {
        assert_eq!(r["status"], json!("delivered"), "{r}");
        let want = if r["client_id"] == json!(door.client_id) {
            2
        } else {
            1
        };
        assert_eq!(r["message_id"], json!(want), "{r}");
    }

    // A tag nobody carries: accepted, and reaches nobody.
    let p = s
        .publish_with(&json!({"to_tags": ["nobody"], "type": "t", "payload": 1}))
        .await;
    let status = s
        .publish_status(p["publish_id"].as_str().unwrap(), "")
        .await;
    assert_eq!(status["recipients"], json!(0), "{status}");
    assert_eq!(status["state"], json!("done"), "{status}");
    for (c, n) in [
        (&eu, 1),
        (&eu_door, 1),
        (&door, 2),
        (&us, 0),
        (&untagged, 0),
    ] {
        let got = inbox(&s, c).await.map_or(0, |m| m.len());
        assert_eq!(
            got, n,
            "what {} holds after a publish to nobody",
            c.client_id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn to_all_reaches_every_client_registered_before_it_and_none_after() {
    let s = Server::start().await;
    let first = s.new_client().await;
    let tagged_one = s.new_client().await;
    let quiet = s.new_client().await;
    s.set_tags(&tagged_one.client_id, &["eu"]).await;
    s.publish(&[&first.client_id], "before", json!(1)).await;
    s.publish(&[&first.client_id], "before", json!(2)).await;

    // On the aws backend the fan-out runs after the 202: hold it, so the
    // late client below exists before the audience is enumerated.
    s.hold_fanout().await;
    let resp = s
        .publish_raw(&json!({"to_all": true, "type": "all", "payload": {"n": 1}}))
        .await;
    let status = resp.status();
    let p = json_body(resp).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{p}");
    assert_keys(&p, &["publish_id", "recipients"]);
    assert_eq!(p["recipients"], Value::Null);
    let late = s.new_client().await;
    s.set_tags(&late.client_id, &["eu"]).await;
    s.release_fanout().await;
    s.settle().await;

    let want = json!({"type": "all", "payload": {"n": 1}});
    assert_eq!(inbox(&s, &first).await.unwrap()[2], (3, want.clone()));
    for c in [&tagged_one, &quiet] {
        assert_eq!(inbox(&s, c).await, Some(vec![(1, want.clone())]));
    }
    assert_eq!(
        inbox(&s, &late).await,
        None,
        "a client registered after the publish was accepted got it"
    );
    let id = p["publish_id"].as_str().unwrap();
    let st = s.publish_status(id, "").await;
    assert_eq!(st["audience"], json!({"to_all": true}));
    assert_eq!(st["recipients"], json!(3), "{st}");
    assert_eq!(st["delivered"], json!(3), "{st}");
    assert_eq!(st["state"], json!("done"), "{st}");
    assert_eq!(
        recipients_of(&s, id).await,
        set(&[&first, &tagged_one, &quiet])
    );

    // The next one reaches the late client too.
    s.publish_with(&json!({"to_all": true, "type": "all", "payload": {"n": 2}}))
        .await;
    let again = json!({"type": "all", "payload": {"n": 2}});
    assert_eq!(inbox(&s, &late).await, Some(vec![(1, again.clone())]));
    assert_eq!(inbox(&s, &quiet).await.unwrap()[1], (2, again.clone()));
    assert_eq!(inbox(&s, &first).await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_names_exactly_one_audience() {
    let s = Server::start().await;
    let c = s.new_client().await;
    s.set_tags(&c.client_id, &["eu"]).await;
    let id = c.client_id.clone();
    let with = |audience: Value| {
        let mut body = json!({"type": "t", "payload": 1});
        for (k, v) in audience.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let eleven: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    for (audience, field) in [
        (json!({}), "to_client_ids"),
        (json!({"to_client_ids": [id], "to_tags": ["eu"]}), "to_tags"),
        (json!({"to_client_ids": [id], "to_all": true}), "to_all"),
        (json!({"to_tags": ["eu"], "to_all": true}), "to_all"),
        (
            json!({"to_client_ids": [id], "to_tags": ["eu"], "to_all": true}),
            "to_all",
        ),
        (json!({"to_all": false}), "to_all"),
        (json!({"to_all": "true"}), "to_all"),
        (json!({"to_all": 1}), "to_all"),
        (json!({"to_all": null}), "to_all"),
        (json!({"to_tags": []}), "to_tags"),
        (json!({"to_tags": "eu"}), "to_tags"),
        (json!({"to_tags": null}), "to_tags"),
        (json!({"to_tags": ["EU"]}), "to_tags"),
        (json!({"to_tags": ["eu", ""]}), "to_tags"),
        (json!({"to_tags": ["eu", 5]}), "to_tags"),
        (json!({"to_tags": ["x".repeat(65)]}), "to_tags"),
        (json!({ "to_tags": eleven }), "to_tags"),
    ] {
        let body = with(audience);
        let msg = expect_validation(s.publish_raw(&body).await, field).await;
        assert!(!msg.is_empty(), "{body}");
    }
    s.settle().await;
    assert!(
        s.poll(&c, None, None).await.is_none(),
        "a refused publish delivered something"
    );

    // Ten tags are fine, and one audience of each kind is accepted.
    let ten: Vec<String> = (0..9)
        .map(|i| format!("t{i}"))
        .chain(["eu".into()])
        .collect();
    for audience in [
        json!({ "to_tags": ten }),
        json!({"to_all": true}),
        json!({"to_client_ids": [id]}),
    ] {
        s.publish_with(&with(audience)).await;
    }
    let got = inbox(&s, &c).await.unwrap();
    assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotent_retry_of_an_audience_publish_delivers_once() {
    let s = Server::start().await;
    let a = s.new_client().await;
    let b = s.new_client().await;
    let other = s.new_client().await;
    s.set_tags(&a.client_id, &["eu"]).await;
    s.set_tags(&b.client_id, &["eu", "door"]).await;

    let publish = |key: &str, body: &Value| {
        let request = s
            .request(Method::POST, &format!("{API}/messages/publish"))
            .header("X-Admin-Token", s.admin_token())
            .header("Idempotency-Key", key)
            .json(body);
        async move {
            let resp = request.send().await.expect("publish request");
            let status = resp.status().as_u16();
            (status, json_body(resp).await)
        }
    };

    // A tag publish, retried: the same answer, delivered once.
    let tagged = json!({"to_tags": ["eu", "door"], "type": "tagged", "payload": {"k": 1}});
    let key = uuid::Uuid::new_v4().to_string();
    let (status, first) = publish(&key, &tagged).await;
    assert_eq!(status, 202, "{first}");
    assert_keys(&first, &["publish_id", "recipients"]);
    assert_eq!(first["recipients"], Value::Null);
    // A client registered between the attempts is not reached by the retry.
    let late = s.new_client().await;
    s.set_tags(&late.client_id, &["eu"]).await;
    let (status, retry) = publish(&key, &tagged).await;
    assert_eq!(
        (status, &retry),
        (202, &first),
        "the retry answers the first publish"
    );
    s.settle().await;
    let (status, again) = publish(&key, &tagged).await;
    assert_eq!((status, &again), (202, &first), "a retry after the fan-out");
    // The same key with another audience is refused.
    let changed = json!({"to_tags": ["eu"], "type": "tagged", "payload": {"k": 1}});
    let (status, refused) = publish(&key, &changed).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], json!("idempotency_key_reused"));
    s.settle().await;
    let id = first["publish_id"].as_str().unwrap();
    let st = s.publish_status(id, "").await;
    assert_eq!(st["recipients"], json!(2), "{st}");
    assert_eq!(st["delivered"], json!(2), "{st}");
    assert_eq!(recipients_of(&s, id).await, set(&[&a, &b]));
    assert_eq!(
        inbox(&s, &late).await,
        None,
        "the retry reached a later client"
    );

    // The same for everyone.
    let everyone = json!({"to_all": true, "type": "everyone", "payload": {"k": 2}});
    let key = uuid::Uuid::new_v4().to_string();
    let (status, first) = publish(&key, &everyone).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["recipients"], Value::Null);
    let later = s.new_client().await;
    let (status, retry) = publish(&key, &everyone).await;
    assert_eq!(
        (status, &retry),
        (202, &first),
        "the retry answers the first publish"
    );
    s.settle().await;
    let (status, again) = publish(&key, &everyone).await;
    assert_eq!((status, &again), (202, &first), "a retry after the fan-out");
    let changed = json!({"to_tags": ["eu"], "type": "everyone", "payload": {"k": 2}});
    let (status, refused) = publish(&key, &changed).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], json!("idempotency_key_reused"));
    s.settle().await;
    let id = first["publish_id"].as_str().unwrap();
    let st = s.publish_status(id, "").await;
    assert_eq!(st["recipients"], json!(4), "{st}");
    assert_eq!(st["delivered"], json!(4), "{st}");
    assert_eq!(recipients_of(&s, id).await, set(&[&a, &b, &other, &late]));
    assert_eq!(
        inbox(&s, &later).await,
        None,
        "the retry reached a later client"
    );

    // Each message arrived exactly once.
    let tagged = json!({"type": "tagged", "payload": {"k": 1}});
    let everyone = json!({"type": "everyone", "payload": {"k": 2}});
    for c in [&a, &b] {
        assert_eq!(
            inbox(&s, c).await,
            Some(vec![(1, tagged.clone()), (2, everyone.clone())])
        );
    }
    for c in [&other, &late] {
        assert_eq!(inbox(&s, c).await, Some(vec![(1, everyone.clone())]));
    }
}
