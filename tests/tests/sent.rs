//! Reading what clients sent: `GET /clients/{client_id}/sent` (admin), and
//! `sent_head` in the operators' listing. Both backends.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::*;

const API: &str = "/api/v1";

async fn sent_raw(s: &Server, token: &str, client_id: &str, query: &str) -> reqwest::Response {
    s.request(
        Method::GET,
        &format!("{API}/clients/{client_id}/sent{query}"),
    )
    .header("x-admin-token", token)
    .send()
    .await
    .expect("sent request")
}

/// One page: `Some(page)` for 200, `None` for 204.
async fn sent_page(s: &Server, c: &Creds, query: &str) -> Option<Value> {
    let resp = sent_raw(s, s.admin_token(), &c.client_id, query).await;
    match resp.status() {
        StatusCode::NO_CONTENT => None,
        StatusCode::OK => {
            let v = json_body(resp).await;
            assert_keys(&v, &["messages", "next_after"]);
            Some(v)
        }
        other => panic!("sent{query}: {other} {}", json_body(resp).await),
    }
}

async fn send(s: &Server, c: &Creds, plaintext: &Value, aad: Option<&Value>) -> u64 {
    let resp = s.send_raw(c, &send_body(c, plaintext, aad)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    json_body(resp).await["id"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_reads_what_a_client_sent_in_order_and_in_pages() {
    let s = Server::start().await;
    let c = s.new_client().await;
    let other = s.new_client().await;
    assert_eq!(sent_page(&s, &c, "").await, None, "nothing sent yet: 204");

    let aad = json!({"client_id": c.client_id, "trip": 4, "urgent": true});
    let sent = [
        json!({"type": "battery", "payload": {"level": 87, "note": "ça va"}}),
        json!({"type": "door", "payload": "open"}),
        json!({"type": "battery", "payload": null}),
    ];
    assert_eq!(send(&s, &c, &sent[0], Some(&aad)).await, 1);
    assert_eq!(send(&s, &c, &sent[1], None).await, 2);
    assert_eq!(send(&s, &c, &sent[2], None).await, 3);
    send(&s, &other, &json!({"type": "x", "payload": 1}), None).await;

    let page = sent_page(&s, &c, "").await.expect("three messages");
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(page["next_after"], json!(3));
    assert_eq!(messages.len(), 3);
    for (i, m) in messages.iter().enumerate() {
        assert_keys(m, &["id", "type", "payload", "aad", "created_at"]);
        assert_eq!(m["id"], json!(i + 1));
        assert_eq!(m["type"], sent[i]["type"]);
        assert_eq!(m["payload"], sent[i]["payload"]);
        assert_timestamp(m["created_at"].as_str().unwrap());
    }
    assert_eq!(messages[0]["aad"], aad, "the aad the client bound to it");
    assert_eq!(messages[1]["aad"], json!({}));

    // Pages of one, following next_after, then 204.
    let mut after = 0;
    let mut ids = Vec::new();
    while let Some(page) = sent_page(&s, &c, &format!("?after={after}&limit=1")).await {
        let messages = page["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1);
        ids.push(messages[0]["id"].as_u64().unwrap());
        after = page["next_after"].as_u64().unwrap();
    }
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(
        sent_page(&s, &c, "?after=2").await.unwrap()["messages"][0]["id"],
        json!(3)
    );

    // Another client's sends are its own.
    let theirs = sent_page(&s, &other, "").await.unwrap();
    assert_eq!(theirs["messages"].as_array().unwrap().len(), 1);
    assert_eq!(theirs["messages"][0]["type"], json!("x"));
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_sent_messages_needs_the_admin_token_and_a_real_client() {
    let s = Server::start().await;
    let c = s.new_client().await;
    send(&s, &c, &json!({"type": "t", "payload": 1}), None).await;
    for token in ["", "wrong-token", s.operator_token()] {
        expect_error(
            sent_raw(&s, token, &c.client_id, "").await,
            401,
            "unauthorized",
        )
        .await;
    }
    let stranger = uuid::Uuid::new_v4().to_string();
    expect_error(
        sent_raw(&s, s.admin_token(), &stranger, "").await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        sent_raw(&s, s.admin_token(), "not-a-uuid", "").await,
        404,
        "not_found",
    )
    .await;
    for query in ["?limit=0", "?limit=501", "?after=-1", "?after=x"] {
        let field = if query.contains("limit") {
            "limit"
        } else {
            "after"
        };
        expect_validation(
            sent_raw(&s, s.admin_token(), &c.client_id, query).await,
            field,
        )
        .await;
    }
    // A client's token is not an admin token.
    let resp = c
        .auth(s.request(Method::GET, &format!("{API}/clients/{}/sent", c.client_id)))
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listing_shows_each_clients_newest_sent_id() {
    let s = Server::start().await;
    let busy = s.new_client().await;
    let quiet = s.new_client().await;
    for n in 0..2 {
        send(&s, &busy, &json!({"type": "t", "payload": n}), None).await;
    }
    let (clients, _) = s.list_all_clients(100).await;
    let head = |id: &str| {
        clients
            .iter()
            .find(|c| c["id"] == json!(id))
            .map(|c| c["sent_head"].clone())
            .unwrap_or_else(|| panic!("{id} listed"))
    };
    assert_eq!(head(&busy.client_id), json!(2));
    assert_eq!(head(&quiet.client_id), json!(0));
}

/// Lambda's synchronous responses stop at 6 MB; pages stay under 5 MiB.
const PAGE_LIMIT: usize = 5 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn a_long_history_of_large_sends_comes_in_pages_under_5_mib() {
    let s = Server::start_with(Config::default().with_env("SEND_RATE_LIMIT", "0")).await;
    let c = s.new_client().await;
    // 100 sends of 60 KB: 6 MB of payload, more than one page may hold.
    let blob = "y".repeat(60 * 1024);
    for n in 0..100 {
        let plaintext = json!({"type": "log", "payload": {"n": n, "blob": blob}});
        assert_eq!(send(&s, &c, &plaintext, None).await, n + 1);
    }

    let (mut after, mut pages) = (0u64, Vec::new());
    loop {
        let resp = sent_raw(
            &s,
            s.admin_token(),
            &c.client_id,
            &format!("?after={after}"),
        )
        .await;
        if resp.status() == StatusCode::NO_CONTENT {
            break;
        }
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = resp.bytes().await.expect("a sent page");
        pages.push(bytes.len());
        let page: Value = serde_json::from_slice(&bytes).expect("JSON");
        for m in page["messages"].as_array().expect("messages") {
            assert_eq!(m["id"].as_u64(), Some(after + 1), "contiguous pages");
            assert_eq!(m["payload"]["n"], json!(after));
            assert_eq!(
                m["payload"]["blob"].as_str().map(str::len),
                Some(blob.len())
            );
            after += 1;
        }
        assert_eq!(page["next_after"], json!(after));
    }
    assert_eq!(after, 100, "the admin reads every send");
    assert!(pages.len() >= 2, "pages: {pages:?}");
    assert!(pages.iter().all(|b| *b <= PAGE_LIMIT), "pages: {pages:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_sends_holds_100_unless_the_admin_asks_for_more() {
    let s = Server::start_with(Config::default().with_env("SEND_RATE_LIMIT", "0")).await;
    let c = s.new_client().await;
    for n in 0..101 {
        send(&s, &c, &json!({"type": "t", "payload": n}), None).await;
    }
    let count = |page: &Value| page["messages"].as_array().map(Vec::len);
    let first = sent_page(&s, &c, "").await.expect("101 sends");
    assert_eq!(count(&first), Some(100), "the default limit");
    assert_eq!(first["next_after"], json!(100));
    let rest = sent_page(&s, &c, "?after=100").await.expect("one more");
    assert_eq!(count(&rest), Some(1));
    let all = sent_page(&s, &c, "?limit=500").await.expect("every send");
    assert_eq!(count(&all), Some(101));
}
