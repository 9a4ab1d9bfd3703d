//! `GET /metrics`: the Prometheus text format, for operators only, and
//! counters and histograms that follow the traffic.

mod support;

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::*;

/// The series of a scrape: `name{label="value",...}` (labels sorted) to
/// value. Comment lines are left out.
fn series(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        let key = match key.split_once('{') {
            None => key.to_string(),
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels end with }");
                let mut labels: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
        };
        out.insert(key, value);
    }
    out
}

struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// The value of a series; 0 when it has not been recorded yet.
    fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// How much `key` grew since `before`.
    fn delta(&self, before: &Scrape, key: &str) -> f64 {
        self.get(key) - before.get(key)
    }
}

async fn scrape(s: &Server) -> (String, Scrape) {
    let resp = s
        .request(Method::GET, "/metrics")
        .header("Authorization", format!("Bearer {}", s.operator_token()))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    let parsed = Scrape(series(&text));
    (text, parsed)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_for_operators_only() {
    let s = Server::start().await;
    let get = || s.request(Method::GET, "/metrics");

    expect_error(get().send().await.unwrap(), 401, "unauthorized").await;
    for wrong in [
        get().header("X-Operator-Token", "not-the-token"),
        get().header("Authorization", "Bearer not-the-token"),
        // The admin token is not an operator token.
        get().header("X-Operator-Token", s.admin_token()),
        get().header("Authorization", format!("Bearer {}", s.admin_token())),
        // Only the bearer scheme.
        get().header("Authorization", s.operator_token().to_string()),
    ] {
        expect_error(wrong.send().await.unwrap(), 401, "unauthorized").await;
    }

    let tokens = s.config.operator_tokens.clone().unwrap();
    for resp in [
        get().header("X-Operator-Token", &tokens[0]),
        // Any of the operator tokens, as Prometheus' scrape config sends it.
        get().header("Authorization", format!("Bearer {}", tokens[1])),
        get().header("authorization", format!("bearer {}", tokens[0])),
    ] {
        let resp = resp.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = resp.text().await.unwrap();
        // Valid exposition text, whatever has been recorded so far.
        series(&text);
    }

    let resp = s
        .request(Method::POST, "/metrics")
        .header("X-Operator-Token", &tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "GET");
    expect_error(resp, 405, "method_not_allowed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_and_histograms_follow_the_traffic() {
    let s = Server::start().await;
    let (_, before) = scrape(&s).await;

    let (status, c) = s.register_status(&random_fingerprint(), None).await;
    assert_eq!(status, 201);
    let other = s.new_client().await;
    s.publish(&[&c.client_id, &other.client_id], "event", json!({"n": 1}))
        .await;
    let page = s.poll(&c, None, None).await.expect("the published message");
    let id = ids_of(&messages_of(&page))[0];
    s.ack(&c, id).await;
    assert!(s.poll(&c, Some(id), None).await.is_none());
    let sent = s
        .send_raw(
            &c,
            &send_body(&c, &json!({"type": "t", "payload": {}}), None),
        )
        .await;
    assert_eq!(sent.status(), StatusCode::CREATED);
    let unknown = s
        .request(Method::GET, "/api/v1/no-such-thing")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let (text, after) = scrape(&s).await;
    let grew = |key: &str| after.delta(&before, key);
    assert_eq!(
        grew(r#"pigeonhole_http_requests_total{route="register",status="201"}"#),
        2.0,
        "{text}"
    );
    assert_eq!(
        grew(r#"pigeonhole_http_requests_total{route="publish",status="202"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        grew(r#"pigeonhole_http_requests_total{route="poll",status="200"}"#),
        1.0
    );
    assert_eq!(
        grew(r#"pigeonhole_http_requests_total{route="poll",status="204"}"#),
        1.0
    );
    assert_eq!(
        grew(r#"pigeonhole_http_requests_total{route="ack",status="200"}"#),
        1.0
    );
    assert_eq!(
        grew(r#"pigeonhole_http_requests_total{route="unmatched",status="404"}"#),
        1.0
    );
    assert_eq!(grew(r#"pigeonhole_polls_total{outcome="messages"}"#), 1.0);
    assert_eq!(grew(r#"pigeonhole_polls_total{outcome="empty"}"#), 1.0);
    assert_eq!(grew("pigeonhole_sends_stored_total"), 1.0);
    assert_eq!(grew("pigeonhole_messages_delivered_total"), 2.0, "{text}");
    assert!(grew(r#"pigeonhole_fanout_jobs_total{outcome="done"}"#) >= 1.0);
    assert_eq!(
        grew(r#"pigeonhole_fanout_jobs_total{outcome="failed"}"#),
        0.0
    );

    // The request latency, a histogram per route.
    assert!(text.contains("# TYPE pigeonhole_http_request_duration_seconds histogram"));
    assert!(grew(r#"pigeonhole_http_request_duration_seconds_count{route="poll"}"#) >= 2.0);
    assert!(
        after.get(r#"pigeonhole_http_request_duration_seconds_bucket{le="10",route="poll"}"#)
            >= 2.0,
        "{text}"
    );

    // The delivery lag: one sample per copy stored, in buckets.
    assert!(text.contains("# TYPE pigeonhole_delivery_lag_seconds histogram"));
    assert!(
        text.contains("# HELP pigeonhole_delivery_lag_seconds "),
        "{text}"
    );
    assert_eq!(grew("pigeonhole_delivery_lag_seconds_count"), 2.0, "{text}");
    assert_eq!(
        grew(r#"pigeonhole_delivery_lag_seconds_bucket{le="+Inf"}"#),
        2.0
    );
    let sum = after.get("pigeonhole_delivery_lag_seconds_sum");
    assert!(
        (0.0..60.0).contains(&sum),
        "the lag of two copies delivered just now: {sum}"
    );
    // Every bucket bound the operations doc describes.
    for le in ["0.005", "1", "60", "3600"] {
        assert!(
            after.0.contains_key(&format!(
                r#"pigeonhole_delivery_lag_seconds_bucket{{le="{le}"}}"#
            )),
            "no bucket le={le}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_polls_are_counted() {
    let s = Server::start_with(Config {
        poll_rate_limit: Some("1".into()),
        ..Config::default()
    })
    .await;
    let c = s.new_client().await;
    let (_, before) = scrape(&s).await;
    assert_eq!(s.poll_raw(&c, None, None).await.status(), 204);
    expect_error(s.poll_raw(&c, None, None).await, 429, "rate_limited").await;
    let (text, after) = scrape(&s).await;
    assert_eq!(
        after.delta(&before, r#"pigeonhole_polls_total{outcome="rate_limited"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        after.delta(&before, r#"pigeonhole_polls_total{outcome="empty"}"#),
        1.0
    );
    assert_eq!(
        after.delta(
            &before,
            r#"pigeonhole_http_requests_total{route="poll",status="429"}"#
        ),
        1.0
    );
}
