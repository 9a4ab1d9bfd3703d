//! `GET /messages/publish/{publish_id}` (admin): how far a publish got, in
//! counts and (`?recipients=1`) per recipient. Both backends.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::*;

/// The counts of a status body, in a fixed order: recipients, delivered,
/// acknowledged, expired, unknown, pending, state.
fn counts(v: &Value) -> Value {
    json!([
        v["recipients"],
        v["delivered"],
        v["acknowledged"],
        v["expired"],
        v["unknown"],
        v["pending"],
        v["state"]
    ])
}

/// `client id -> (message_id, status)` of every recipient of a publish.
async fn by_client(s: &Server, publish_id: &str) -> BTreeMap<String, (Value, String)> {
    s.recipient_statuses(publish_id, 1000)
        .await
        .into_iter()
        .map(|r| {
            (
                r["client_id"].as_str().unwrap().to_string(),
                (
                    r["message_id"].clone(),
                    r["status"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn entry(id: u64, status: &str) -> (Value, String) {
    (json!(id), status.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn status_counts_move_from_pending_to_delivered_to_acknowledged() {
    let s = Server::start().await;
    let a = s.new_client().await;
    let b = s.new_client().await;
    let c = s.new_client().await;

    s.hold_fanout().await;
    let sent = Instant::now();
    let p = s
        .publish_nowait(
            &[&a.client_id, &b.client_id, &c.client_id, &a.client_id],
            "news",
            json!({"n": 1}),
        )
        .await;
    assert_eq!(p["recipients"], json!(3));
    let id = p["publish_id"].as_str().unwrap().to_string();
    let st = s.publish_status(&id, "").await;
    let held = sent.elapsed() < FANOUT_HOLD;
    assert_eq!(st["type"], json!("news"));
    assert_eq!(st["audience"], json!({"to_client_ids": 3}));
    assert_eq!(st["expires_at"], Value::Null);
    match s.backend() {
        // The fan-out runs inside the publish request.
        Backend::Embedded => assert_eq!(counts(&st), json!([3, 3, 0, 0, 0, 0, "done"])),
        // The job is still on the queue: nobody has it yet.
        Backend::Aws if held => {
            assert_eq!(counts(&st), json!([3, 0, 0, 0, 0, 3, "queued"]));
            let detail = by_client(&s, &id).await;
            assert_eq!(detail.len(), 3);
            assert!(
                detail
                    .values()
                    .all(|(m, status)| m.is_null() && status == "pending"),
                "{detail:?}"
            );
        }
        Backend::Aws => eprintln!("the status call came after the hold; not checking pending"),
    }
    s.release_fanout().await;
    s.settle().await;

    let st = s.publish_status(&id, "").await;
    assert_eq!(counts(&st), json!([3, 3, 0, 0, 0, 0, "done"]));
    let created = st["created_at"].clone();

    // Polling is not acknowledging.
    for client in [&a, &b, &c] {
        let body = s.poll(client, None, None).await.expect("the message");
        assert_eq!(ids_of(&messages_of(&body)), [1]);
    }
    let st = s.publish_status(&id, "").await;
    assert_eq!(counts(&st), json!([3, 3, 0, 0, 0, 0, "done"]));

    assert_eq!(s.ack(&a, 1).await, 1);
    let st = s.publish_status(&id, "").await;
    assert_eq!(counts(&st), json!([3, 3, 1, 0, 0, 0, "done"]));
    assert_eq!(
        by_client(&s, &id).await,
        BTreeMap::from([
            (a.client_id.clone(), entry(1, "acknowledged")),
            (b.client_id.clone(), entry(1, "delivered")),
            (c.client_id.clone(), entry(1, "delivered")),
        ])
    );

    // A later publish to b and c; c acknowledging it passes the first too.
    let p2 = s
        .publish(&[&b.client_id, &c.client_id], "news", json!({"n": 2}))
        .await;
    let id2 = p2["publish_id"].as_str().unwrap().to_string();
    assert_eq!(
        counts(&s.publish_status(&id2, "").await),
        json!([2, 2, 0, 0, 0, 0, "done"])
    );
    assert_eq!(s.ack(&c, 2).await, 2);
    assert_eq!(
        counts(&s.publish_status(&id, "").await),
        json!([3, 3, 2, 0, 0, 0, "done"])
    );
    assert_eq!(
        counts(&s.publish_status(&id2, "").await),
        json!([2, 2, 1, 0, 0, 0, "done"])
    );
    assert_eq!(s.ack(&b, 2).await, 2);
    let st = s.publish_status(&id, "").await;
    assert_eq!(counts(&st), json!([3, 3, 3, 0, 0, 0, "done"]));
    assert_eq!(st["created_at"], created, "created_at does not change");
    assert_eq!(
        by_client(&s, &id2).await,
        BTreeMap::from([
            (b.client_id.clone(), entry(2, "acknowledged")),
            (c.client_id.clone(), entry(2, "acknowledged")),
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_that_name_no_client_are_counted_unknown() {
    let s = Server::start().await;
    let real = s.new_client().await;
    let gone = s.new_client().await;
    s.delete_client(&gone.client_id).await;
    let stranger = uuid::Uuid::new_v4().to_string();

    let p = s
        .publish(
            &[
                &stranger,
                &real.client_id,
                &gone.client_id,
                &stranger,
                &real.client_id,
            ],
            "t",
            json!(1),
        )
        .await;
    assert_eq!(p["recipients"], json!(3), "distinct ids");
    let id = p["publish_id"].as_str().unwrap();
    let st = s.publish_status(id, "").await;
    assert_eq!(counts(&st), json!([3, 1, 0, 0, 2, 0, "done"]));
    assert_eq!(st["audience"], json!({"to_client_ids": 3}));
    assert_eq!(
        by_client(&s, id).await,
        BTreeMap::from([
            (real.client_id.clone(), entry(1, "delivered")),
            (gone.client_id.clone(), (Value::Null, "unknown".into())),
            (stranger.clone(), (Value::Null, "unknown".into())),
        ])
    );

    // Only strangers: done at once, nothing delivered.
    let p = s.publish(&[&stranger], "t", json!(2)).await;
    let st = s
        .publish_status(p["publish_id"].as_str().unwrap(), "")
        .await;
    assert_eq!(counts(&st), json!([1, 0, 0, 0, 1, 0, "done"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn recipient_detail_pages_through_every_recipient_once() {
    let s = Server::start().await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(s.new_client().await);
    }
    let strangers: Vec<String> = (0..2).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut to: Vec<&str> = clients.iter().map(|c| c.client_id.as_str()).collect();
    to.extend(strangers.iter().map(String::as_str));
    let p = s.publish(&to, "t", json!("x")).await;
    let id = p["publish_id"].as_str().unwrap();
    assert_eq!(s.ack(&clients[0], 1).await, 1);

    let mut want: BTreeMap<String, (Value, String)> = clients
        .iter()
        .map(|c| (c.client_id.clone(), entry(1, "delivered")))
        .collect();
    want.insert(clients[0].client_id.clone(), entry(1, "acknowledged"));
    for stranger in &strangers {
        want.insert(stranger.clone(), (Value::Null, "unknown".into()));
    }

    // Without recipients=1: counts only.
    let st = s.publish_status(id, "").await;
    assert!(st.get("recipient_status").is_none(), "{st}");
    assert_eq!(counts(&st), json!([7, 5, 1, 0, 2, 0, "done"]));

    // Pages of 2: four pages, a token on all but the last.
    let mut seen = BTreeMap::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut query = "?recipients=1&limit=2".to_string();
        if let Some(t) = &token {
            query.push_str(&format!("&page_token={}", urlencode(t)));
        }
        let page = s.publish_status(id, &query).await;
        assert_eq!(counts(&page), counts(&st), "every page has the same counts");
        pages += 1;
        let entries = page["recipient_status"].as_array().unwrap();
        for r in entries {
            let client = r["client_id"].as_str().unwrap().to_string();
            let value = (
                r["message_id"].clone(),
                r["status"].as_str().unwrap().into(),
            );
            assert!(
                seen.insert(client.clone(), value).is_none(),
                "{client} twice"
            );
        }
        match page.get("next_page_token") {
            Some(Value::String(t)) => {
                assert_eq!(entries.len(), 2, "a short page before the end: {page}");
                token = Some(t.clone());
            }
            None => break,
            Some(other) => panic!("next_page_token: {other}"),
        }
        assert!(pages < 10, "the pages do not end");
    }
    assert_eq!(pages, 4, "7 recipients at 2 a page");
    assert_eq!(seen, want);

    // limit=1 and the walk in support agree; so does the default page.
    let ones = s.recipient_statuses(id, 1).await;
    assert_eq!(ones.len(), 7);
    let all = s.publish_status(id, "?recipients=1").await;
    assert_eq!(all["recipient_status"].as_array().unwrap().len(), 7);
    assert!(all.get("next_page_token").is_none(), "{all}");
    // A page that holds exactly the rest is the last.
    let exact = s.publish_status(id, "?recipients=1&limit=7").await;
    assert!(exact.get("next_page_token").is_none(), "{exact}");
    let max = s.publish_status(id, "?recipients=1&limit=1000").await;
    assert_eq!(max["recipient_status"].as_array().unwrap().len(), 7);

    for (query, field) in [
        ("?recipients=1&limit=0", "limit"),
        ("?recipients=1&limit=1001", "limit"),
        ("?recipients=1&limit=x", "limit"),
        ("?recipients=1&limit=-1", "limit"),
        ("?recipients=1&page_token=%21%21garbage%21%21", "page_token"),
    ] {
        expect_validation(
            s.publish_status_raw(s.admin_token(), id, query).await,
            field,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_needs_the_admin_token_and_a_known_publish() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let p = s.publish(&[&c.client_id], "t", json!(1)).await;
    let id = p["publish_id"].as_str().unwrap();

    let path = format!("{API}/messages/publish/{id}");
    let resp = s.request(Method::GET, &path).send().await.unwrap();
    expect_error(resp, 401, "unauthorized").await;
    for token in [
        "wrong-admin-token".to_string(),
        format!("{}x", s.admin_token()),
        s.operator_token().to_string(),
        c.api_token.clone(),
    ] {
        expect_error(
            s.publish_status_raw(&token, id, "").await,
            401,
            "unauthorized",
        )
        .await;
    }
    let resp = c.auth(s.request(Method::GET, &path)).send().await.unwrap();
    expect_error(resp, 401, "unauthorized").await;

    for unknown in [
        uuid::Uuid::new_v4().to_string(),
        "not-a-uuid".to_string(),
        format!("{id}0"),
        "12345".to_string(),
    ] {
        expect_error(
            s.publish_status_raw(s.admin_token(), &unknown, "").await,
            404,
            "not_found",
        )
        .await;
    }
    // Another server's publish is unknown here.
    let other = Server::start().await;
    expect_error(
        other.publish_status_raw(other.admin_token(), id, "").await,
        404,
        "not_found",
    )
    .await;

    // Only GET.
    let resp = s
        .request(Method::DELETE, &path)
        .header("X-Admin-Token", s.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        counts(&s.publish_status(id, "").await),
        json!([1, 1, 0, 0, 0, 0, "done"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_audience_is_counted_once_the_fan_out_has_enumerated_it() {
    let s = Server::start().await;
    let eu1 = s.new_client().await;
    let eu2 = s.new_client().await;
    let other = s.new_client().await;
    s.set_tags(&eu1.client_id, &["eu"]).await;
    s.set_tags(&eu2.client_id, &["eu", "door"]).await;

    s.hold_fanout().await;
    let sent = Instant::now();
    let mut ids = Vec::new();
    for audience in [json!({"to_tags": ["eu"]}), json!({"to_all": true})] {
        let mut body = json!({"type": "hello", "payload": {"x": 1}});
        for (k, v) in audience.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = s.publish_raw(&body).await;
        let status = resp.status();
        let p = json_body(resp).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{p}");
        assert_keys(&p, &["publish_id", "recipients"]);
        assert_eq!(p["recipients"], Value::Null, "{body}");
        let id = p["publish_id"].as_str().unwrap().to_string();
        // The status is readable at once, whatever the fan-out has done.
        let st = s.publish_status(&id, "?recipients=1").await;
        assert_eq!(st["audience"], audience);
        let held = sent.elapsed() < FANOUT_HOLD;
        match s.backend() {
            Backend::Embedded => assert_eq!(st["state"], json!("done"), "{st}"),
            Backend::Aws if held => {
                assert_eq!(counts(&st), json!([null, 0, 0, 0, 0, 0, "queued"]));
                assert_eq!(st["recipient_status"], json!([]), "{st}");
            }
            Backend::Aws => eprintln!("the status call came after the hold; not checking it"),
        }
        ids.push(id);
    }
    s.release_fanout().await;
    s.settle().await;

    let tagged = s.publish_status(&ids[0], "").await;
    assert_eq!(counts(&tagged), json!([2, 2, 0, 0, 0, 0, "done"]));
    assert_eq!(
        by_client(&s, &ids[0])
            .await
            .into_keys()
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([eu1.client_id.clone(), eu2.client_id.clone()])
    );
    let everyone = s.publish_status(&ids[1], "").await;
    assert_eq!(counts(&everyone), json!([3, 3, 0, 0, 0, 0, "done"]));
    assert_eq!(
        by_client(&s, &ids[1]).await,
        BTreeMap::from([
            (eu1.client_id.clone(), entry(2, "delivered")),
            (eu2.client_id.clone(), entry(2, "delivered")),
            (other.client_id.clone(), entry(1, "delivered")),
        ])
    );

    // Acknowledgements count for audiences as for named ids.
    let body = s.poll(&other, None, None).await.unwrap();
    assert_eq!(
        s.ack(&other, body["next_cursor"].as_u64().unwrap()).await,
        1
    );
    assert_eq!(s.ack(&eu1, 1).await, 1);
    assert_eq!(
        counts(&s.publish_status(&ids[0], "").await),
        json!([2, 2, 1, 0, 0, 0, "done"])
    );
    assert_eq!(
        counts(&s.publish_status(&ids[1], "").await),
        json!([3, 3, 1, 0, 0, 0, "done"])
    );
}
