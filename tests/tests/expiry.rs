//! Messages that expire: a publish's `ttl_secs`. A recipient that has not
//! acknowledged the message within that time never receives it; its id
//! stays taken, polls cover it with `next_cursor`, and the publish status
//! counts it `expired`. Both backends; the only real waits are the few
//! seconds a message needs to expire.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// Long enough for a `ttl_secs: 1` message to have expired.
const PAST_ONE_SECOND: Duration = Duration::from_secs(2);

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp with
/// milliseconds (`2026-11-25T23:49:50.123Z`).
fn millis(ts: &str) -> i64 {
    assert_timestamp(ts);
    let n = |r: std::ops::Range<usize>| ts[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + n(11..13)) * 60 + n(14..16)) * 60_000 + n(17..19) * 1000 + n(20..23)
}

/// The counts of a status body: recipients, delivered, acknowledged,
/// expired, unknown, pending, state.
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

/// Publishes `body` plus `"type": "t"` to `to`, asserting 202 and waiting
/// for the fan-out; returns the publish id.
async fn publish(s: &Server, to: &[&Creds], payload: Value, ttl_secs: Option<u64>) -> String {
    let mut body = json!({
        "to_client_ids": to.iter().map(|c| c.client_id.as_str()).collect::<Vec<_>>(),
        "type": "t",
        "payload": payload,
    });
    if let Some(ttl) = ttl_secs {
        body["ttl_secs"] = json!(ttl);
    }
    let p = s.publish_with(&body).await;
    assert_eq!(p["recipients"], json!(to.len()), "{p}");
    p["publish_id"].as_str().unwrap().to_string()
}

/// The (id, payload) pairs of a 200 poll body, which may hold no message.
fn page(body: &Value) -> Vec<(u64, Value)> {
    assert_keys(body, &["messages", "next_cursor"]);
    body["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["type"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_expired_unacknowledged_is_never_delivered() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let other = s.new_client().await;
    publish(&s, &[&c], json!("before"), None).await;

    let expiring = publish(&s, &[&c, &other], json!("stale soon"), Some(1)).await;
    let st = s.publish_status(&expiring, "").await;
    let expires_at = millis(st["expires_at"].as_str().expect("an expiry"));
    assert_eq!(
        expires_at - millis(st["created_at"].as_str().unwrap()),
        1000,
        "{st}"
    );
    tokio::time::sleep(PAST_ONE_SECOND).await;

    let after = publish(&s, &[&c, &other], json!("fresh"), None).await;
    // c: the expired id 2 is skipped, the next message keeps id 3.
    let body = s.poll(&c, None, None).await.expect("messages");
    let msgs = messages_of(&body);
    assert_eq!(ids_of(&msgs), [1, 3]);
    assert_eq!(open_message(&c, &msgs[0])["payload"], json!("before"));
    assert_eq!(open_message(&c, &msgs[1])["payload"], json!("fresh"));
    // other: the expired id 1 is skipped, the next message is id 2.
    let body = s.poll(&other, None, None).await.expect("messages");
    let msgs = messages_of(&body);
    assert_eq!(ids_of(&msgs), [2]);
    assert_eq!(open_message(&other, &msgs[0])["payload"], json!("fresh"));
    // Not even an explicit cursor reaches it.
    let body = s.poll(&c, Some(1), None).await.expect("messages");
    assert_eq!(ids_of(&messages_of(&body)), [3]);

    let st = s.publish_status(&expiring, "").await;
    assert_eq!(counts(&st), json!([2, 0, 0, 2, 0, 0, "done"]));
    for r in s.recipient_statuses(&expiring, 10).await {
        assert_eq!(r["status"], json!("expired"), "{r}");
        let want = if r["client_id"] == json!(c.client_id) {
            2
        } else {
            1
        };
        assert!(
            r["message_id"] == json!(want) || r["message_id"].is_null(),
            "{r}"
        );
    }
    assert_eq!(
        counts(&s.publish_status(&after, "").await),
        json!([2, 2, 0, 0, 0, 0, "done"])
    );

    // Acknowledging past it works as for any id, and it stays expired.
    assert_eq!(s.ack(&c, 3).await, 3);
    assert_eq!(s.ack(&other, 2).await, 2);
    assert!(s.poll(&c, None, None).await.is_none());
    assert_eq!(
        counts(&s.publish_status(&expiring, "").await),
        json!([2, 0, 0, 2, 0, 0, "done"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_only_expired_messages_is_empty_and_moves_the_cursor() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let seen = s.new_client().await;
    // seen has a message it acknowledged before the expiring ones.
    publish(&s, &[&seen], json!("old"), None).await;
    assert_eq!(s.ack(&seen, 1).await, 1);

    // Two messages to everyone, expiring after a second.
    for n in 0..2 {
        let p = s
            .publish_with(&json!({"to_all": true, "type": "t", "payload": n, "ttl_secs": 1}))
            .await;
        assert_eq!(p["recipients"], Value::Null);
    }
    tokio::time::sleep(PAST_ONE_SECOND).await;

    let body = s.poll(&c, None, None).await.expect("a page, not a 204");
    assert_eq!(body, json!({"messages": [], "next_cursor": 2}));
    // Until the cursor moves, the same answer.
    let body = s.poll(&c, Some(0), None).await.expect("a page, not a 204");
    assert_eq!(body, json!({"messages": [], "next_cursor": 2}));
    assert_eq!(s.ack(&c, 2).await, 2);
    assert!(
        s.poll(&c, None, None).await.is_none(),
        "204 once the cursor passed them"
    );

    let body = s.poll(&seen, None, None).await.expect("a page, not a 204");
    assert_eq!(body, json!({"messages": [], "next_cursor": 3}));
    assert_eq!(s.ack(&seen, 3).await, 3);
    assert!(s.poll(&seen, None, None).await.is_none());

    // The next message is delivered with the next id.
    publish(&s, &[&c, &seen], json!("next"), None).await;
    let body = s.poll(&c, None, None).await.expect("the next message");
    let msgs = messages_of(&body);
    assert_eq!(ids_of(&msgs), [3]);
    assert_eq!(open_message(&c, &msgs[0])["payload"], json!("next"));
    let body = s.poll(&seen, None, None).await.expect("the next message");
    assert_eq!(ids_of(&messages_of(&body)), [4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_acknowledged_before_it_expired_stays_acknowledged() {
    let s = Server::start().await;
    let acker = s.new_client().await;
    let reader = s.new_client().await;
    // Long enough to poll and acknowledge it first, on either backend.
    const TTL: u64 = 4;
    let id = publish(&s, &[&acker, &reader], json!("brief"), Some(TTL)).await;

    // Before it expires it is delivered like any message.
    for c in [&acker, &reader] {
        let body = s.poll(c, None, None).await.expect("the message");
        let msgs = messages_of(&body);
        assert_eq!(ids_of(&msgs), [1]);
        assert_eq!(open_message(c, &msgs[0])["payload"], json!("brief"));
    }
    assert_eq!(s.ack(&acker, 1).await, 1);
    let st = s.publish_status(&id, "").await;
    let expires_at = millis(st["expires_at"].as_str().expect("an expiry"));
    assert_eq!(
        expires_at - millis(st["created_at"].as_str().unwrap()),
        TTL as i64 * 1000
    );
    assert_eq!(counts(&st), json!([2, 2, 1, 0, 0, 0, "done"]));

    tokio::time::sleep(Duration::from_secs(TTL + 1)).await;
    // reader saw it but did not acknowledge it: expired, and gone.
    let st = s.publish_status(&id, "").await;
    assert_eq!(counts(&st), json!([2, 1, 1, 1, 0, 0, "done"]));
    let detail = s.recipient_statuses(&id, 10).await;
    assert_eq!(detail.len(), 2);
    for r in &detail {
        let want = if r["client_id"] == json!(acker.client_id) {
            "acknowledged"
        } else {
            "expired"
        };
        assert_eq!(r["status"], json!(want), "{r}");
    }
    let acked = detail
        .iter()
        .find(|r| r["client_id"] == json!(acker.client_id))
        .unwrap();
    assert_eq!(acked["message_id"], json!(1));
    let body = s
        .poll(&reader, None, None)
        .await
        .expect("a page, not a 204");
    assert_eq!(page(&body), []);
    assert_eq!(body["next_cursor"], json!(1));
    assert!(s.poll(&acker, None, None).await.is_none());

    // Later acknowledgements change neither.
    assert_eq!(s.ack(&reader, 1).await, 1);
    assert_eq!(
        counts(&s.publish_status(&id, "").await),
        json!([2, 1, 1, 1, 0, 0, "done"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_secs_must_be_one_second_to_thirty_days() {
    let s = Server::start().await;
    let c = s.new_client().await;
    s.set_tags(&c.client_id, &["eu"]).await;
    for audience in [
        json!({"to_client_ids": [c.client_id]}),
        json!({"to_tags": ["eu"]}),
        json!({"to_all": true}),
    ] {
        for ttl in [
            json!(0),
            json!(2_592_001),
            json!(-1),
            json!(1.5),
            json!("60"),
            json!(u64::MAX),
        ] {
            let mut body = json!({"type": "t", "payload": 1, "ttl_secs": ttl});
            for (k, v) in audience.as_object().unwrap() {
                body[k] = v.clone();
            }
            expect_validation(s.publish_raw(&body).await, "ttl_secs").await;
        }
    }
    s.settle().await;
    assert!(
        s.poll(&c, None, None).await.is_none(),
        "a refused publish delivered something"
    );

    // The bounds themselves are fine.
    for (n, ttl) in [(1, 1u64), (2, 2_592_000)] {
        let id = publish(&s, &[&c], json!(n), Some(ttl)).await;
        let st = s.publish_status(&id, "").await;
        let lifetime =
            millis(st["expires_at"].as_str().unwrap()) - millis(st["created_at"].as_str().unwrap());
        assert_eq!(lifetime, ttl as i64 * 1000, "{st}");
    }
    // The thirty-day one is there; so is one without a ttl.
    let id = publish(&s, &[&c], json!(3), None).await;
    assert_eq!(s.publish_status(&id, "").await["expires_at"], Value::Null);
    tokio::time::sleep(PAST_ONE_SECOND).await;
    let body = s.poll(&c, None, None).await.expect("messages");
    assert_eq!(ids_of(&messages_of(&body)), [2, 3]);
}
