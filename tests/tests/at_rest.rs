//! Security at rest: a copy of the data directory (without the master key)
//! holds no plaintext and no usable credential.

mod support;

use std::path::Path;

use reqwest::StatusCode;
use serde_json::json;
use support::*;

fn read_all_files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            read_all_files(&path, out);
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
}

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
    let body = send_body(&c, &json!({"type": "up", "payload": sent}), None);
    assert_eq!(s.send_raw(&c, &body).await.status(), StatusCode::CREATED);
    assert!(s.poll(&c, None, None).await.is_some());

    // Stop it hard so nothing is tidied up, then look at every file left.
    s.kill9();
    let mut files = Vec::new();
    read_all_files(&s.data_dir(), &mut files);
    assert!(!files.is_empty(), "the data dir holds the database");

    // Control: the scan does see the stored data (the client id is not secret).
    let id = uuid::Uuid::parse_str(&c.client_id).unwrap();
    assert!(
        files
            .iter()
            .any(|(_, d)| contains(d, c.client_id.as_bytes())
                || contains(d, id.as_bytes())
                || contains(d, id.simple().to_string().as_bytes())),
        "the client id is nowhere in the data dir: the scan reads the wrong files"
    );

    let key = c.key();
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("published plaintext", published.into_bytes()),
        ("sent plaintext", sent.into_bytes()),
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
