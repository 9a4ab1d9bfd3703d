//! `GET /operators/clients`: listing, paging, presence.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn paging_with_limit_2_visits_every_client_once() {
    let s = Server::start().await;
    let mut expected = BTreeMap::new();
    for i in 0..5 {
        let name = format!("device-{i}");
        let (st, c) = s.register_status(&random_fingerprint(), Some(&name)).await;
        assert_eq!(st, 201);
        expected.insert(c.client_id.clone(), json!(name));
    }
    let unnamed = s.new_client().await;
    expected.insert(unnamed.client_id.clone(), Value::Null);

    let (clients, pages) = s.list_all_clients(2).await;
    assert_eq!(pages, 3, "6 clients at 2 per page");
    assert_eq!(clients.len(), 6, "{clients:?}");
    let ids: Vec<String> = clients
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 6, "a client appeared twice: {ids:?}");
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
        assert_eq!(c["tags"], serde_json::json!([]), "untagged");
        let id = c["id"].as_str().unwrap();
        assert_eq!(&c["name"], &expected[id], "name of {id}");
        assert_timestamp(c["created_at"].as_str().unwrap());
    }
    // Exactly the registered clients. The order is the store's own (the
    // contract promises each client once across pages, no particular order).
    assert_eq!(
        unique,
        expected.keys().collect::<BTreeSet<_>>(),
        "the listing is not the registered clients"
    );

    // The last page has no next_page_token; a page holding exactly the rest has none either.
    let resp = s.list_clients_raw(s.operator_token(), "limit=6").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json_body(resp).await;
    assert_keys(&v, &["clients"]);
    assert_eq!(v["clients"].as_array().unwrap().len(), 6);

    // Default limit returns all of them on one page.
    let v = json_body(s.list_clients_raw(s.operator_token(), "").await).await;
    assert_keys(&v, &["clients"]);
    let default_ids: Vec<&str> = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(default_ids.len(), 6, "{default_ids:?}");
    assert_eq!(
        default_ids.iter().copied().collect::<BTreeSet<_>>(),
        ids.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );

    // limit=1 also works: 6 pages, each client once.
    let (clients1, pages1) = s.list_all_clients(1).await;
    assert_eq!(pages1, 6);
    assert_eq!(clients1.len(), 6);
    let ids1: BTreeSet<&str> = clients1.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids1, unique.iter().map(|i| i.as_str()).collect());
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_listing_is_200_with_no_clients() {
    let s = Server::start().await;
    let resp = s.list_clients_raw(s.operator_token(), "").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json_body(resp).await, json!({"clients": []}));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reflects_authenticated_activity() {
    let s = Server::start().await;
    let poller = s.new_client().await;
    let sender = s.new_client().await;
    let idle = s.new_client().await;
    // An unauthenticated request mentioning the idle client does not count.
    let resp = s
        .request(reqwest::Method::GET, "/api/v1/messages/poll")
        .header("Authorization", "Bearer pht_wrong")
        .header("X-Client-Id", &idle.client_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Re-registering is not an authenticated request either.
    let fp_idle = random_fingerprint();
    let idle2 = s.register(&fp_idle).await;
    s.register(&fp_idle).await;

    assert!(s.poll(&poller, None, None).await.is_none());
    let body = send_body(&sender, &json!({"type": "t", "payload": 1}), None);
    assert_eq!(
        s.send_raw(&sender, &body).await.status(),
        StatusCode::CREATED
    );

    let (clients, _) = s.list_all_clients(100).await;
    let by_id: BTreeMap<&str, &Value> = clients
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c))
        .collect();
    for active in [&poller, &sender] {
        let c = by_id[active.client_id.as_str()];
        assert_eq!(c["status"], json!("online"), "{c}");
        let seen = c["last_seen_at"]
            .as_str()
            .unwrap_or_else(|| panic!("last_seen_at set for an active client: {c}"));
        assert_timestamp(seen);
        assert!(
            seen >= c["created_at"].as_str().unwrap(),
            "seen before created: {c}"
        );
    }
    for never in [&idle, &idle2] {
        let c = by_id[never.client_id.as_str()];
        assert_eq!(c["status"], json!("offline"), "{c}");
        assert_eq!(c["last_seen_at"], Value::Null, "{c}");
    }
}
