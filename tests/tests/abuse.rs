//! What a stranger cannot run up: registrations are limited per source
//! address (`REGISTER_RATE_LIMIT`, `REGISTER_RATE_LIMIT_EXEMPT`, the admin
//! token), sends per client (`SEND_RATE_LIMIT`), and a body that is not
//! declared `application/json` is refused with 415 (so a web page cannot
//! have visitors' browsers post to the API without a CORS preflight).

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use support::*;

/// The `Retry-After` of a 429: an integer number of seconds, 1 to 60.
fn retry_after(resp: &Response) -> u64 {
    let value = resp
        .headers()
        .get("retry-after")
        .expect("429 carries Retry-After")
        .to_str()
        .unwrap()
        .to_string();
    let secs: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not an integer of seconds"));
    assert!(
        (1..=60).contains(&secs),
        "Retry-After {secs} is not between 1 and 60 s"
    );
    secs
}

// ---------------------------------------------------------------------------
// Registration limit
// ---------------------------------------------------------------------------

/// A server limiting registrations to `limit` per minute, with an exempt
/// list that does not hold the tests' own address (127.0.0.1).
async fn register_limited(limit: u32) -> Server {
    Server::start_with(
        Config::default()
            .with_env("REGISTER_RATE_LIMIT", &limit.to_string())
            .with_env("REGISTER_RATE_LIMIT_EXEMPT", "10.0.0.0/8"),
    )
    .await
}

async fn register_fresh(s: &Server, admin_token: Option<&str>) -> Response {
    let mut rb = s
        .request(Method::POST, &format!("{API}/clients/register"))
        .json(&json!({"fingerprint": random_fingerprint()}));
    if let Some(t) = admin_token {
        rb = rb.header("X-Admin-Token", t);
    }
    rb.send().await.expect("register request")
}

/// Registers new clients until one is refused; asserts the 429 and
/// returns its `Retry-After` and how many clients were created. The limit
/// counts in fixed one-minute windows: when the window ends in under 5 s,
/// waits for the next one and fills that, so the caller has most of a
/// minute in which every registration is refused.
async fn fill_register_window(s: &Server, limit: u32) -> (u64, u32) {
    let mut created = 0;
    for _ in 0..2 {
        let mut ok = 0;
        let mut refused = None;
        for _ in 0..(2 * limit + 2) {
            let resp = register_fresh(s, None).await;
            if resp.status() == StatusCode::TOO_MANY_REQUESTS {
                refused = Some(resp);
                break;
            }
            assert_eq!(
                resp.status(),
                StatusCode::CREATED,
                "registration {}",
                ok + 1
            );
            ok += 1;
        }
        created += ok;
        let resp = refused.unwrap_or_else(|| {
            panic!("{ok} registrations with REGISTER_RATE_LIMIT={limit} and none was refused")
        });
        // At least the limit (a fresh window), at most twice it (the burst
        // crossed into the next window).
        assert!(
            (limit..=2 * limit).contains(&ok),
            "{ok} registrations passed with REGISTER_RATE_LIMIT={limit}"
        );
        let secs = retry_after(&resp);
        let msg = expect_error(resp, 429, "rate_limited").await;
        assert!(!msg.is_empty());
        if secs >= 5 {
            return (secs, created);
        }
        tokio::time::sleep(Duration::from_secs(secs) + Duration::from_millis(200)).await;
    }
    panic!("the register window ended within 5 s twice in a row");
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_over_the_limit_get_429_with_retry_after() {
    let s = register_limited(3).await;
    let limited_at = Instant::now();
    let (secs, created) = fill_register_window(&s, 3).await;

    // Still refused right after, for a new fingerprint and a known one.
    let resp = register_fresh(&s, None).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let again = retry_after(&resp);
    assert!(
        again <= secs,
        "Retry-After grew from {secs} to {again} within one window"
    );
    expect_error(resp, 429, "rate_limited").await;

    // A valid admin token is never limited (fleet provisioning).
    let known_fp = random_fingerprint();
    let resp = s
        .request(Method::POST, &format!("{API}/clients/register"))
        .header("X-Admin-Token", s.admin_token())
        .json(&json!({"fingerprint": known_fp}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "admin registration");
    let known = Creds::from_json(&json_body(resp).await);
    for i in 0..5 {
        let resp = register_fresh(&s, Some(s.admin_token())).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "admin registration {i}");
        Creds::from_json(&json_body(resp).await);
    }
    let resp = s
        .request(Method::POST, &format!("{API}/clients/register"))
        .header("X-Admin-Token", s.admin_token())
        .json(&json!({"fingerprint": known_fp}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "admin re-registration");
    assert_eq!(Creds::from_json(&json_body(resp).await), known);
    // Without the token, re-registering a known fingerprint is limited too.
    expect_error(
        s.register_raw(&json!({"fingerprint": known_fp})).await,
        429,
        "rate_limited",
    )
    .await;

    // A wrong admin token is an error, not an anonymous registration.
    expect_error(
        register_fresh(&s, Some("wrong-admin-token")).await,
        401,
        "unauthorized",
    )
    .await;
    // The operator token is not the admin token.
    expect_error(
        register_fresh(&s, Some(s.operator_token())).await,
        401,
        "unauthorized",
    )
    .await;

    // Registered clients are not affected: they poll, send and ack.
    assert!(s.poll(&known, None, None).await.is_none());
    let body = send_body(&known, &json!({"type": "t", "payload": 1}), None);
    assert_eq!(
        s.send_raw(&known, &body).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(s.ack(&known, 0).await, 0);

    // Still refused while the window lasts (it had at least 5 s left).
    if limited_at.elapsed() < Duration::from_secs(secs.saturating_sub(1)) {
        expect_error(register_fresh(&s, None).await, 429, "rate_limited").await;
    }
    // The refused registrations created nothing.
    let (clients, _) = s.list_all_clients(1000).await;
    assert_eq!(
        clients.len() as u32,
        created + 1 + 5,
        "{created} anonymous and 6 admin registrations"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_admin_token_on_register_is_401_even_when_not_limited() {
    let s = Server::start().await;
    expect_error(
        register_fresh(&s, Some("wrong-admin-token")).await,
        401,
        "unauthorized",
    )
    .await;
    // An empty one is wrong too.
    let resp = s
        .request(Method::POST, &format!("{API}/clients/register"))
        .header("X-Admin-Token", "")
        .json(&json!({"fingerprint": random_fingerprint()}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "unauthorized").await;
    let (clients, _) = s.list_all_clients(100).await;
    assert!(
        clients.is_empty(),
        "a refused registration created {clients:?}"
    );
    // The right one, and none, both register.
    assert_eq!(
        register_fresh(&s, Some(s.admin_token())).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(register_fresh(&s, None).await.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zero_register_limit_turns_it_off() {
    let s = Server::start_with(
        Config::default()
            .with_env("REGISTER_RATE_LIMIT", "0")
            .with_env("REGISTER_RATE_LIMIT_EXEMPT", "10.0.0.0/8"),
    )
    .await;
    for i in 0..70 {
        assert_eq!(
            register_fresh(&s, None).await.status(),
            StatusCode::CREATED,
            "registration {i} with REGISTER_RATE_LIMIT=0"
        );
    }
}

/// Needs the server to know the TCP peer (`pigeonhole::http::SourceAddr`):
/// 127.0.0.1 is in the exempt list, so nothing is ever limited.
#[tokio::test(flavor = "multi_thread")]
async fn an_exempt_source_is_never_limited() {
    let s = Server::start_with(
        Config::default()
            .with_env("REGISTER_RATE_LIMIT", "2")
            .with_env("REGISTER_RATE_LIMIT_EXEMPT", "192.0.2.0/24, 127.0.0.0/8"),
    )
    .await;
    for i in 0..10 {
        let resp = register_fresh(&s, None).await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "registration {i} from 127.0.0.1, exempt by REGISTER_RATE_LIMIT_EXEMPT: {}",
            resp.text().await.unwrap_or_default()
        );
    }
}

/// The local server exempts loopback by default (`127.0.0.0/8,::1/128`),
/// so a developer's own machine is never slowed down. Needs the server to
/// know the TCP peer, like the test above.
#[tokio::test(flavor = "multi_thread")]
async fn the_local_server_exempts_loopback_by_default() {
    let s = Server::start_with(Config::default().with_env("REGISTER_RATE_LIMIT", "2")).await;
    for i in 0..10 {
        let resp = register_fresh(&s, None).await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "registration {i} from 127.0.0.1 with the default exempt list: {}",
            resp.text().await.unwrap_or_default()
        );
    }
}

// ---------------------------------------------------------------------------
// Send limit
// ---------------------------------------------------------------------------

async fn send_note(s: &Server, c: &Creds, n: u32) -> Response {
    let body = send_body(c, &json!({"type": "note", "payload": n}), None);
    s.send_raw(c, &body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_over_the_limit_get_429_with_retry_after() {
    let s = Server::start_with(Config::default().with_env("SEND_RATE_LIMIT", "2")).await;
    let a = s.new_client().await;
    let b = s.new_client().await;

    let mut ok = 0;
    let mut refused = None;
    for n in 0..10 {
        let resp = send_note(&s, &a, n).await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status(), StatusCode::CREATED, "send {n}");
        ok += 1;
    }
    let resp = refused.expect("a burst of sends at SEND_RATE_LIMIT=2 is limited");
    // A bucket of 2 that refills one every 30 s: a quick burst passes 2.
    assert_eq!(ok, 2, "sends passed with SEND_RATE_LIMIT=2");
    let secs = retry_after(&resp);
    expect_error(resp, 429, "rate_limited").await;
    assert!(
        secs <= 30,
        "Retry-After {secs} s, but a send refills every 30 s"
    );

    // Still limited right after.
    expect_error(send_note(&s, &a, 100).await, 429, "rate_limited").await;

    // Polls and acks are not limited by sends (a bucket of their own).
    s.publish(&[&a.client_id], "note", json!("for a")).await;
    for _ in 0..5 {
        let body = s.poll(&a, None, None).await.expect("a message for a");
        assert_eq!(ids_of(&messages_of(&body)), vec![1]);
    }
    assert_eq!(s.ack(&a, 1).await, 1);
    assert!(s.poll(&a, None, None).await.is_none());

    // The limit is per client: B is unaffected, then limited on its own.
    for n in 0..2 {
        assert_eq!(send_note(&s, &b, n).await.status(), StatusCode::CREATED);
    }
    expect_error(send_note(&s, &b, 2).await, 429, "rate_limited").await;
    // And A is still limited.
    expect_error(send_note(&s, &a, 101).await, 429, "rate_limited").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zero_send_limit_turns_it_off() {
    let s = Server::start_with(Config::default().with_env("SEND_RATE_LIMIT", "0")).await;
    let c = s.new_client().await;
    // More than the default of 60.
    for n in 0..65 {
        assert_eq!(
            send_note(&s, &c, n).await.status(),
            StatusCode::CREATED,
            "send {n} with SEND_RATE_LIMIT=0"
        );
    }
}

// ---------------------------------------------------------------------------
// 415 for a body that is not declared JSON
// ---------------------------------------------------------------------------

/// Content types a body is refused with: the three a web page may post
/// cross-origin without a preflight, a near miss, and none at all.
const NOT_JSON: [Option<&str>; 6] = [
    Some("text/plain"),
    Some("text/plain; charset=utf-8"),
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=x"),
    Some("application/jsonx"),
    None,
];

fn post(
    s: &Server,
    path: &str,
    content_type: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let rb = s
        .request(Method::POST, &format!("{API}{path}"))
        .body(serde_json::to_vec(body).unwrap());
    match content_type {
        Some(ct) => rb.header("content-type", ct),
        None => rb,
    }
}

async fn expect_415(rb: reqwest::RequestBuilder, what: &str, ct: Option<&str>) {
    let resp = rb.send().await.expect("request");
    let got = resp.status();
    assert_eq!(
        got,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{what} with content-type {ct:?}: {}",
        resp.text().await.unwrap_or_default()
    );
    expect_error(resp, 415, "unsupported_media_type").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_not_declared_json_get_415_on_every_post() {
    let s = Server::start().await;
    let c = s.new_client().await;
    s.publish(&[&c.client_id], "note", json!("pending")).await;
    let fp = random_fingerprint();
    let sent = send_body(&c, &json!({"type": "note", "payload": "hello"}), None);
    let publish = json!({"to_client_ids": [c.client_id], "type": "note", "payload": "again"});

    for ct in NOT_JSON {
        expect_415(
            post(&s, "/clients/register", ct, &json!({"fingerprint": fp})),
            "register",
            ct,
        )
        .await;
        expect_415(
            post(&s, "/clients/register", ct, &json!({"fingerprint": fp}))
                .header("X-Admin-Token", s.admin_token()),
            "register with the admin token",
            ct,
        )
        .await;
        expect_415(c.auth(post(&s, "/messages/send", ct, &sent)), "send", ct).await;
        expect_415(
            c.auth(post(
                &s,
                "/messages/ack",
                ct,
                &json!({"last_received_id": 1}),
            )),
            "ack",
            ct,
        )
        .await;
        expect_415(
            post(&s, "/messages/publish", ct, &publish).header("X-Admin-Token", s.admin_token()),
            "publish",
            ct,
        )
        .await;
        expect_415(
            c.auth(post(&s, "/clients/rotate", ct, &json!({}))),
            "rotate",
            ct,
        )
        .await;
    }
    s.settle().await;

    // None of them did anything: the token still works (no rotation), the
    // cursor did not move (no ack), nothing more was delivered (no
    // publish), the send is new (201, not the 200 of a retry), and the
    // fingerprint is unknown (201).
    let body = s.poll(&c, None, None).await.expect("still pending");
    assert_eq!(
        ids_of(&messages_of(&body)),
        vec![1],
        "only the first publish arrived"
    );
    assert_eq!(s.send_raw(&c, &sent).await.status(), StatusCode::CREATED);
    assert_eq!(s.register_status(&fp, None).await.0, 201);
    let (clients, _) = s.list_all_clients(100).await;
    assert_eq!(clients.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_with_parameters_or_in_other_case_is_accepted() {
    let s = Server::start().await;
    for ct in [
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
    ] {
        // register
        let resp = post(
            &s,
            "/clients/register",
            Some(ct),
            &json!({"fingerprint": random_fingerprint()}),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "register with {ct:?}");
        let c = Creds::from_json(&json_body(resp).await);

        // publish
        let resp = post(
            &s,
            "/messages/publish",
            Some(ct),
            &json!({"to_client_ids": [c.client_id], "type": "note", "payload": ct}),
        )
        .header("X-Admin-Token", s.admin_token())
        .send()
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "publish with {ct:?}");
        s.settle().await;

        // send
        let sent = send_body(&c, &json!({"type": "note", "payload": ct}), None);
        let resp = c
            .auth(post(&s, "/messages/send", Some(ct), &sent))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "send with {ct:?}");

        // ack
        let body = s.poll(&c, None, None).await.expect("the publish");
        assert_eq!(
            open_message(&c, &messages_of(&body)[0])["payload"],
            json!(ct)
        );
        let resp = c
            .auth(post(
                &s,
                "/messages/ack",
                Some(ct),
                &json!({"last_received_id": 1}),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "ack with {ct:?}");
        assert_eq!(json_body(resp).await, json!({"cursor": 1}));

        // rotate
        let resp = c
            .auth(post(&s, "/clients/rotate", Some(ct), &json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "rotate with {ct:?}");
        let c2 = Creds::from_json(&json_body(resp).await);
        assert!(s.poll(&c2, None, None).await.is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_body_need_no_content_type() {
    let s = Server::start().await;
    let c = s.new_client().await;
    // GET poll and list, DELETE: no body, no Content-Type, no 415.
    assert!(s.poll(&c, None, None).await.is_none());
    let resp = s.list_clients_raw(s.operator_token(), "").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let other = s.new_client().await;
    s.delete_client(&other.client_id).await;
    // A GET that carries a text/plain header but no body is fine too.
    let resp = s
        .poll_request(&c, "")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}
