//! Security at rest: a copy of the data directory (without the master key)
//! holds no plaintext and no usable credential. On the aws backend the same
//! goes for every item of every DynamoDB table.

mod support;

use reqwest::StatusCode;
use serde_json::json;
use support::*;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn data_dir_reveals_no_plaintext_or_credentials() {
    let mut s = Server::start().await;
    let fingerprint = format!("device-fingerprint-{}", uuid::Uuid::new_v4().simple());
    let c = s.register(&fingerprint).await;
    let published = format!("published-secret-{}", uuid::Uuid::new_v4().simple());
    s.publish(&[&c.client_id], "secret", json!({ "text": published }))
        .await;
    let sent = format!("sent-secret-{}", uuid::Uuid::new_v4().simple());
    // The type of a send is sealed too (the outbox row's kind is a
    // placeholder): a unique one, so finding it anywhere means it leaked.
    let sent_type = format!("sent-type-{}", uuid::Uuid::new_v4().simple());
    let body = send_body(&c, &json!({"type": sent_type, "payload": sent}), None);
    assert_eq!(s.send_raw(&c, &body).await.status(), StatusCode::CREATED);
    assert!(s.poll(&c, None, None).await.is_some());

    // Stop it hard so nothing is tidied up, then look at every file (and
    // table item) left.
    s.kill9();
    let files = s.data_at_rest().await;
    assert!(
        !files.is_empty(),
        "the data dir (or the tables) hold the data"
    );

    // Control: the scan does see the stored data (the client id is not
    // secret).
    let id = uuid::Uuid::parse_str(&c.client_id).unwrap();
    let holds_id = |d: &[u8]| {
        contains(d, c.client_id.as_bytes())
            || contains(d, id.as_bytes())
            || contains(d, id.simple().to_string().as_bytes())
    };
    assert!(
        files.iter().any(|(_, d)| holds_id(d)),
        "the client id is nowhere at rest: the scan reads the wrong data"
    );
    if s.backend() == Backend::Aws {
        let items = files.iter().filter(|(_, d)| holds_id(d)).count();
        // The client, its inbox message and its sent message are separate
        // items in separate tables: the scan must see all three.
        assert!(
            items >= 3,
            "only {items} table items mention the client: the scan misses tables: {:?}",
            files.iter().map(|(name, _)| name).collect::<Vec<_>>()
        );
    }

    let key = c.key();
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("published plaintext", published.into_bytes()),
        ("sent plaintext", sent.into_bytes()),
        ("type of the sent message", sent_type.into_bytes()),
        ("fingerprint", fingerprint.clone().into_bytes()),
        ("api_token", c.api_token.clone().into_bytes()),
        (
            "api_token body",
            c.api_token.trim_start_matches("pht_").as_bytes().to_vec(),
        ),
        (
            "personal_token (base64)",
            c.personal_token.clone().into_bytes(),
        ),
        ("personal key (raw bytes)", key.to_vec()),
        ("admin token", s.admin_token().as_bytes().to_vec()),
        (
            "master key (base64)",
            s.config.master_key.clone().unwrap().into_bytes(),
        ),
    ];
    for (name, data) in &files {
        for (what, needle) in &needles {
            assert!(!contains(data, needle), "{name} contains the {what}");
        }
    }

    // And the server still reads it all back after the hard stop.
    s.restart().await;
    assert_eq!(s.register(&fingerprint).await, c);
}
