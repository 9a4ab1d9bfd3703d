//! Poll rate limiting (POLL_RATE_LIMIT per minute per client).

mod support;

use std::time::Instant;

use reqwest::StatusCode;
use support::*;

/// The most polls a token bucket of `per_minute` may let through in a burst
/// that took `since.elapsed()`: the full bucket, what refilled meanwhile (at
/// least a second's worth), and one for rounding. A slower backend refills
/// more during the burst.
fn burst_bound(per_minute: u64, since: Instant) -> u64 {
    let refilled = (since.elapsed().as_secs_f64() * per_minute as f64 / 60.0).ceil() as u64;
    per_minute + refilled.max(per_minute / 60) + 1
}

fn limited(rate: &str) -> Config {
    Config {
        poll_rate_limit: Some(rate.into()),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn polls_over_the_limit_get_429_with_retry_after() {
    let s = Server::start_with(limited("5")).await;
    let a = s.new_client().await;
    let b = s.new_client().await;

    for i in 0..5 {
        let resp = s.poll_raw(&a, None, None).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "poll {} of 5", i + 1);
    }
    let resp = s.poll_raw(&a, None, None).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = resp
        .headers()
        .get("retry-after")
        .expect("429 carries Retry-After")
        .to_str()
        .unwrap()
        .to_string();
    let secs: u64 = retry
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {retry:?} is not an integer of seconds"));
    assert!(
        (1..=60).contains(&secs),
        "Retry-After {secs} is not between 1 and 60 s for a 5/min limit"
    );
    expect_error(resp, 429, "rate_limited").await;

    // Still limited right after.
    expect_error(s.poll_raw(&a, Some(0), None).await, 429, "rate_limited").await;

    // The limit is per client: B is unaffected.
    for _ in 0..5 {
        assert_eq!(
            s.poll_raw(&b, None, None).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    expect_error(s.poll_raw(&b, None, None).await, 429, "rate_limited").await;

    // Other endpoints are not rate limited by polls.
    assert_eq!(s.ack(&a, 0).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bucket_refills_over_time() {
    // 60/min: one poll per second refills.
    let s = Server::start_with(limited("60")).await;
    let c = s.new_client().await;
    let mut ok = 0;
    let mut limited_resp = None;
    let started = Instant::now();
    for _ in 0..1000 {
        let resp = s.poll_raw(&c, None, None).await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited_resp = Some(resp);
            break;
        }
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        ok += 1;
    }
    let resp = limited_resp.expect("a burst of polls at 60/min is limited");
    let most = burst_bound(60, started);
    assert!(
        (60..=most).contains(&ok),
        "burst of 60 (at most {most} with refills) allowed, got {ok}"
    );
    let secs: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs >= 1);
    tokio::time::sleep(std::time::Duration::from_secs(secs + 1)).await;
    assert_eq!(
        s.poll_raw(&c, None, None).await.status(),
        StatusCode::NO_CONTENT,
        "after waiting Retry-After seconds the client may poll again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn default_limit_is_120_per_minute() {
    let s = Server::start_with(Config {
        poll_rate_limit: None,
        ..Config::default()
    })
    .await;
    let c = s.new_client().await;
    let mut ok = 0;
    let started = Instant::now();
    let mut limited = false;
    for _ in 0..1000 {
        match s.poll_raw(&c, None, None).await.status() {
            StatusCode::NO_CONTENT => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited = true;
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(limited, "{ok} polls in a burst and none was limited");
    // A token bucket may refill a poll or two while the burst is sent.
    let most = burst_bound(120, started);
    assert!(
        (120..=most).contains(&ok),
        "default limit 120/min: {ok} polls passed (at most {most} with refills)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_disables_the_limit() {
    let s = Server::start_with(limited("0")).await;
    let c = s.new_client().await;
    for i in 0..200 {
        assert_eq!(
            s.poll_raw(&c, None, None).await.status(),
            StatusCode::NO_CONTENT,
            "poll {i} with POLL_RATE_LIMIT=0"
        );
    }
}
