//! A typed client for the HTTP API in `docs/api.md`.
//!
//! Every non-success answer becomes an [`ApiError`]: the server's
//! `{"error": {"code", "message"}}` body when it sent one, plus `Retry-After`
//! (429 `rate_limited`, 503 `unavailable`). Transport failures are
//! [`ApiError::Network`]. Callers decide what is worth retrying with
//! [`ApiError::is_retryable`] and how long to wait with
//! [`ApiError::retry_after`].

use std::net::IpAddr;
use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const PREFIX: &str = "/api/v1";
const USER_AGENT: &str = concat!("pigeonhole-cli/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error status.
    #[error("{code}: {message}{}", retry_hint(*.retry_after))]
    Server {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// The request never got an answer (DNS, connect, TLS, timeout, reset).
    #[error("network: {0}")]
    Network(String),
    /// The server answered something the API does not allow.
    #[error("unexpected response: {0}")]
    Protocol(String),
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

fn retry_hint(retry_after: Option<u64>) -> String {
    match retry_after {
        Some(s) => format!(" (retry after {s} s)"),
        None => String::new(),
    }
}

impl ApiError {
    /// Network errors, 5xx and 429: the same request may well succeed later.
    /// (Only send, with its nonce, and publish, with its `Idempotency-Key`,
    /// may be resent blindly; poll and ack are safe anyway.)
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Network(_) => true,
            ApiError::Server { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// `Retry-After` of a 429 (`rate_limited`; 1 s if the header is missing).
    pub fn rate_limited(&self) -> Option<Duration> {
        match self {
            ApiError::Server {
                status: 429,
                retry_after,
                ..
            } => Some(Duration::from_secs(retry_after.unwrap_or(1).max(1))),
            _ => None,
        }
    }

    /// The HTTP status of a server error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// For a request that changes state on the server: true when the answer
    /// does not say whether the change happened (no answer, a 5xx, or a
    /// success the client could not read).
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ApiError::Network(_) | ApiError::Protocol(_) => true,
            ApiError::Server { status, .. } => *status >= 500,
            ApiError::BadUrl { .. } => false,
        }
    }

    /// How long the server asked us to wait: `Retry-After` of a 429, or of a
    /// 503 (`unavailable`: storage or the queue stayed unavailable) that sent
    /// one. A 503 without the header (say, from a proxy) gives `None`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Server {
                status: 503,
                retry_after: Some(secs),
                ..
            } => Some(Duration::from_secs((*secs).max(1))),
            _ => self.rate_limited(),
        }
    }
}

/// What register returns, and what authenticates a client.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credentials {
    pub client_id: String,
    pub api_token: String,
    pub personal_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("api_token", &"<redacted>")
            .field("personal_token", &"<redacted>")
            .finish()
    }
}

/// The 202 of a publish. `recipients` is the number of distinct ids for
/// `to_client_ids`, and `null` for a tag or everyone audience (the fan-out
/// counts them as it enumerates; the status call shows the count).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishReceipt {
    pub publish_id: String,
    pub recipients: Option<u64>,
}

/// Who a publish is for: exactly one of the API's three audiences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience<'a> {
    /// `to_client_ids` (1–10,000 ids).
    Clients(&'a [String]),
    /// `to_tags` (1–10 tags): every client carrying any of them.
    Tags(&'a [String]),
    /// `"to_all": true`: every client registered when the publish is accepted.
    All,
}

/// The body of `POST /messages/publish`. `ttl_secs` is left out when not
/// given, so a body without it is exactly what older servers accept.
pub fn publish_body(
    audience: Audience<'_>,
    kind: &str,
    payload: &Value,
    ttl_secs: Option<u64>,
) -> Value {
    let mut body = Map::new();
    match audience {
        Audience::Clients(ids) => body.insert("to_client_ids".into(), serde_json::json!(ids)),
        Audience::Tags(tags) => body.insert("to_tags".into(), serde_json::json!(tags)),
        Audience::All => body.insert("to_all".into(), Value::Bool(true)),
    };
    body.insert("type".into(), Value::String(kind.to_string()));
    body.insert("payload".into(), payload.clone());
    if let Some(ttl) = ttl_secs {
        body.insert("ttl_secs".into(), ttl.into());
    }
    Value::Object(body)
}

/// One recipient of a publish, as `GET /messages/publish/{id}?recipients=1`
/// lists it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct RecipientStatus {
    pub client_id: String,
    /// The message's id in the recipient's inbox; `null` until the fan-out
    /// reached it (and for unknown ids).
    pub message_id: Option<u64>,
    /// `pending`, `delivered`, `acknowledged`, `expired` or `unknown`.
    pub status: String,
}

/// A 200 of `GET /messages/publish/{publish_id}`: how far a publish got.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct PublishStatus {
    pub publish_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created_at: String,
    /// `{"to_client_ids": n}`, `{"to_tags": [...]}` or `{"to_all": true}`.
    pub audience: Value,
    #[serde(default)]
    pub expires_at: Option<String>,
    /// `null` while a tag or everyone audience is still being enumerated.
    #[serde(default)]
    pub recipients: Option<u64>,
    /// Recipients whose inbox holds (or held) the message, acknowledged
    /// ones included.
    pub delivered: u64,
    pub acknowledged: u64,
    pub expired: u64,
    pub unknown: u64,
    pub pending: u64,
    /// `queued`, `delivering` or `done`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_status: Option<Vec<RecipientStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

impl PublishStatus {
    /// The recipients still to acknowledge: known once the audience is
    /// enumerated, `None` before. Counted as what is left of `recipients`
    /// after the settled ones (acknowledged, expired, unknown) and the
    /// pending ones, which holds whether or not `delivered` counts the
    /// expired copies.
    pub fn unacknowledged(&self) -> Option<u64> {
        let settled = self.acknowledged + self.expired + self.unknown + self.pending;
        self.recipients.map(|n| n.saturating_sub(settled))
    }

    /// Done and every delivered copy acknowledged or expired: nothing more
    /// will change.
    pub fn finished(&self) -> bool {
        self.state == "done" && self.unacknowledged() == Some(0)
    }
}

/// The 200 of `PUT /operators/clients/{client_id}/tags`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ClientTags {
    pub id: String,
    pub tags: Vec<String>,
}

/// The body of `POST /messages/send`. Kept whole so a retry resends exactly
/// the same bytes (the server deduplicates by nonce).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SendBody {
    pub ciphertext: String,
    pub nonce: String,
    pub tag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aad: Option<Map<String, Value>>,
}

/// One message as delivered by poll (still encrypted).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Delivered {
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub ciphertext: String,
    pub nonce: String,
    pub tag: String,
    #[serde(default)]
    pub aad: Option<Value>,
    pub created_at: String,
}

/// A 200 poll. `next_cursor` is what to acknowledge: it moves past every id
/// the page covered, expired ones included, so it can be above the last
/// message's id, and a page whose messages all expired has no messages at
/// all, only a `next_cursor`.
#[derive(Debug, Clone, Deserialize)]
pub struct PollPage {
    pub messages: Vec<Delivered>,
    pub next_cursor: u64,
}

impl PollPage {
    /// How far this page takes a client: `next_cursor`, or the last
    /// message's id if that were higher (which the API does not allow).
    pub fn reach(&self) -> u64 {
        let last = self.messages.last().map_or(0, |m| m.id);
        self.next_cursor.max(last)
    }
}

#[derive(Debug)]
pub enum Poll {
    /// 204: nothing newer than the cursor.
    Empty,
    Page(PollPage),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ClientInfo {
    pub id: String,
    pub name: Option<String>,
    pub created_at: String,
    pub last_seen_at: Option<String>,
    pub status: String,
    /// The client's newest sent id (0 when none). `None` from a server
    /// older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_head: Option<u64>,
    /// The client's tags, sorted. `None` from a server older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct ClientsPage {
    pub clients: Vec<ClientInfo>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// One message a client sent, as the admin reads it back: the server has
/// opened its at-rest seal, so `type` and `payload` are plaintext.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SentMessage {
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: Value,
    /// What the client sent as aad (`{"client_id": …}` and any extra
    /// fields; `null` when it sent none).
    #[serde(default)]
    pub aad: Value,
    pub created_at: String,
}

/// A 200 of `GET /clients/{client_id}/sent`.
#[derive(Debug, Clone, Deserialize)]
pub struct SentPage {
    pub messages: Vec<SentMessage>,
    /// The id of the last message: the `after` of the next page.
    pub next_after: u64,
}

#[derive(Debug)]
pub enum Sent {
    /// 204: nothing newer than `after`.
    Empty,
    Page(SentPage),
}

impl SentPage {
    /// Checks a page read with `after` against the API's promises: at least
    /// one message, ids ascending and newer than `after`, `next_after` the
    /// last id. A reader that trusted a page breaking them could print a
    /// message twice or page for ever.
    pub fn check(&self, after: u64) -> Result<(), ApiError> {
        let bad = |what: String| {
            Err(ApiError::Protocol(format!(
                "sent page after {after}: {what}"
            )))
        };
        let Some(last) = self.messages.last() else {
            return bad("200 with no messages".into());
        };
        let mut previous = after;
        for m in &self.messages {
            if m.id <= previous {
                return bad(format!("id {} does not follow {previous}", m.id));
            }
            previous = m.id;
        }
        if self.next_after != last.id {
            return bad(format!(
                "next_after {} is not the last id {}",
                self.next_after, last.id
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Id {
    id: u64,
}

#[derive(Deserialize)]
struct Cursor {
    cursor: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// Trims a user-given server URL to its base: no trailing `/`, no `/api/v1`.
pub fn normalize_url(url: &str) -> Result<String, ApiError> {
    let bad = |reason: &str| ApiError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let mut base = url.trim().trim_end_matches('/').to_string();
    if let Some(stripped) = base.strip_suffix(PREFIX) {
        base = stripped.trim_end_matches('/').to_string();
    }
    let parsed = reqwest::Url::parse(&base).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if parsed.host_str().is_none() {
        return Err(bad("no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("no query or fragment allowed"));
    }
    Ok(base)
}

/// True for the hosts plain `http://` may go to: `localhost`, 127.0.0.0/8
/// and `::1` (brackets allowed), whose traffic never leaves the machine.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => v6.is_loopback(),
        Err(_) => false,
    }
}

/// The host of `url` when it is plain `http://` to a host that is not
/// loopback (see [`is_loopback_host`]): the API token and, in the register
/// and rotate answers, the personal key would cross the network in clear.
/// `None` for `https://` and for loopback.
pub fn insecure_http_host(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url.trim()).ok()?;
    if parsed.scheme() != "http" {
        return None;
    }
    let host = parsed.host_str().unwrap_or_default();
    (!is_loopback_host(host)).then(|| host.to_string())
}

/// `text` as one URL path segment: anything but unreserved characters
/// percent-encoded, so an argument can never reach another path.
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn describe(err: &reqwest::Error) -> String {
    let what = if err.is_timeout() {
        "request timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "cannot read the response"
    } else {
        "request failed"
    };
    // The innermost cause says most (e.g. "Connection refused (os error 111)").
    let mut root: &dyn std::error::Error = err;
    while let Some(next) = root.source() {
        root = next;
    }
    let target = err
        .url()
        .map(|u| format!(" to {}", u.origin().ascii_serialization()))
        .unwrap_or_default();
    format!("{what}{target}: {root}")
}

impl Api {
    pub fn new(url: &str) -> Result<Api, ApiError> {
        let base = normalize_url(url)?;
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ApiError::Network(describe(&e)))?;
        Ok(Api { http, base })
    }

    /// The server base URL (without `/api/v1`).
    pub fn base(&self) -> &str {
        &self.base
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{PREFIX}{path}", self.base)
    }

    fn authed(&self, rb: RequestBuilder, creds: &Credentials) -> RequestBuilder {
        rb.bearer_auth(&creds.api_token)
            .header("X-Client-Id", &creds.client_id)
    }

    async fn execute(rb: RequestBuilder) -> Result<Response, ApiError> {
        rb.send().await.map_err(|e| ApiError::Network(describe(&e)))
    }

    /// Turns a non-success response into an [`ApiError`].
    async fn error_from(resp: Response) -> ApiError {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = match resp.text().await {
            Ok(text) => text,
            Err(e) => return ApiError::Network(describe(&e)),
        };
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => ApiError::Server {
                status,
                code: body.error.code,
                message: body.error.message,
                retry_after,
            },
            Err(_) => {
                let snippet: String = text.trim().chars().take(200).collect();
                ApiError::Server {
                    status,
                    code: format!("http_{status}"),
                    message: if snippet.is_empty() {
                        "the server gave no details".into()
                    } else {
                        snippet
                    },
                    retry_after,
                }
            }
        }
    }

    async fn json<T: DeserializeOwned>(resp: Response) -> Result<T, ApiError> {
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Network(describe(&e)))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Protocol(format!("{status} with an unexpected body: {e}")))
    }

    /// Sends and returns the response when its status is one of `ok`.
    async fn expect(rb: RequestBuilder, ok: &[StatusCode]) -> Result<Response, ApiError> {
        let resp = Self::execute(rb).await?;
        if ok.contains(&resp.status()) {
            Ok(resp)
        } else if resp.status().is_success() {
            Err(ApiError::Protocol(format!(
                "status {} is not one this endpoint returns",
                resp.status()
            )))
        } else {
            Err(Self::error_from(resp).await)
        }
    }

    /// `POST /clients/register`. The flag is true for a new client (201),
    /// false when the fingerprint was already registered (200). With the
    /// admin token the server does not rate limit the request (provisioning
    /// many clients at once).
    pub async fn register(
        &self,
        fingerprint: &str,
        name: Option<&str>,
        admin_token: Option<&str>,
    ) -> Result<(Credentials, bool), ApiError> {
        let body = serde_json::json!({ "fingerprint": fingerprint, "name": name });
        let mut rb = self.http.post(self.endpoint("/clients/register"));
        if let Some(token) = admin_token {
            rb = rb.header("X-Admin-Token", token);
        }
        let rb = rb.json(&body);
        let resp = Self::expect(rb, &[StatusCode::CREATED, StatusCode::OK]).await?;
        let created = resp.status() == StatusCode::CREATED;
        Ok((Self::json(resp).await?, created))
    }

    /// `POST /clients/rotate`: a new `api_token` and personal key for this
    /// client (and, with `fingerprint`, a new fingerprint). From the answer
    /// on the old token is refused; messages not yet acknowledged are
    /// delivered under the new key.
    pub async fn rotate(
        &self,
        creds: &Credentials,
        fingerprint: Option<&str>,
    ) -> Result<Credentials, ApiError> {
        let body = match fingerprint {
            Some(fp) => serde_json::json!({ "fingerprint": fp }),
            None => serde_json::json!({}),
        };
        let rb = self.authed(self.http.post(self.endpoint("/clients/rotate")), creds);
        Self::json(Self::expect(rb.json(&body), &[StatusCode::OK]).await?).await
    }

    /// `DELETE /operators/clients/{id}` (operator): the client, its
    /// messages and its fingerprint are deleted and its token stops working.
    /// An unknown (or already deleted) id is a 404 `not_found`.
    pub async fn delete_client(
        &self,
        operator_token: &str,
        client_id: &str,
    ) -> Result<(), ApiError> {
        let rb = self
            .http
            .delete(self.endpoint(&format!("/operators/clients/{client_id}")))
            .header("X-Operator-Token", operator_token);
        Self::expect(rb, &[StatusCode::NO_CONTENT]).await.map(drop)
    }

    /// `POST /messages/publish` with the admin token: `body` as
    /// [`publish_body`] builds it. With an `idempotency_key`, resending the
    /// same body under the same key returns the original receipt and
    /// publishes nothing new, so the call can be retried safely.
    pub async fn publish(
        &self,
        admin_token: &str,
        idempotency_key: Option<&str>,
        body: &Value,
    ) -> Result<PublishReceipt, ApiError> {
        let mut rb = self
            .http
            .post(self.endpoint("/messages/publish"))
            .header("X-Admin-Token", admin_token);
        if let Some(key) = idempotency_key {
            rb = rb.header("Idempotency-Key", key);
        }
        Self::json(Self::expect(rb.json(body), &[StatusCode::ACCEPTED]).await?).await
    }

    /// `GET /messages/publish/{publish_id}` (admin): the publish's counts
    /// and state. With `recipients: Some((limit, page_token))` also one page
    /// of `recipient_status`. An unknown (or forgotten) publish is a 404
    /// `not_found`.
    pub async fn publish_status(
        &self,
        admin_token: &str,
        publish_id: &str,
        recipients: Option<(u32, Option<&str>)>,
    ) -> Result<PublishStatus, ApiError> {
        let mut rb = self
            .http
            .get(self.endpoint(&format!("/messages/publish/{}", path_segment(publish_id))))
            .header("X-Admin-Token", admin_token);
        if let Some((limit, page_token)) = recipients {
            rb = rb.query(&[("recipients", "1")]).query(&[("limit", limit)]);
            if let Some(token) = page_token {
                rb = rb.query(&[("page_token", token)]);
            }
        }
        Self::json(Self::expect(rb, &[StatusCode::OK]).await?).await
    }

    /// `PUT /operators/clients/{client_id}/tags` (operator): replaces the
    /// client's tags (`[]` clears them) and returns the set as stored,
    /// sorted. An unknown client is a 404 `not_found`.
    pub async fn set_tags(
        &self,
        operator_token: &str,
        client_id: &str,
        tags: &[String],
    ) -> Result<ClientTags, ApiError> {
        let rb = self
            .http
            .put(self.endpoint(&format!(
                "/operators/clients/{}/tags",
                path_segment(client_id)
            )))
            .header("X-Operator-Token", operator_token)
            .json(&serde_json::json!({ "tags": tags }));
        Self::json(Self::expect(rb, &[StatusCode::OK]).await?).await
    }

    /// `POST /messages/send`. Returns the message id, and whether it was
    /// stored now (201) rather than recognised as a retry (200).
    pub async fn send(
        &self,
        creds: &Credentials,
        body: &SendBody,
    ) -> Result<(u64, bool), ApiError> {
        let rb = self.authed(self.http.post(self.endpoint("/messages/send")), creds);
        let resp = Self::expect(rb.json(body), &[StatusCode::CREATED, StatusCode::OK]).await?;
        let created = resp.status() == StatusCode::CREATED;
        Ok((Self::json::<Id>(resp).await?.id, created))
    }

    /// `GET /messages/poll`. `cursor: None` starts from the acked cursor.
    /// A 200 may hold no messages (all it covered expired): acknowledge its
    /// `next_cursor` all the same.
    pub async fn poll(
        &self,
        creds: &Credentials,
        cursor: Option<u64>,
        limit: u32,
    ) -> Result<Poll, ApiError> {
        let mut rb = self.http.get(self.endpoint("/messages/poll"));
        if let Some(c) = cursor {
            rb = rb.query(&[("cursor", c)]);
        }
        let rb = self.authed(rb.query(&[("limit", limit)]), creds);
        let resp = Self::expect(rb, &[StatusCode::OK, StatusCode::NO_CONTENT]).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Poll::Empty);
        }
        let page: PollPage = Self::json(resp).await?;
        if let Some(last) = page.messages.last() {
            if page.next_cursor < last.id {
                return Err(ApiError::Protocol(format!(
                    "poll: next_cursor {} is below the last message's id {}",
                    page.next_cursor, last.id
                )));
            }
        }
        Ok(Poll::Page(page))
    }

    /// `POST /messages/ack`; returns the server's cursor after the ack.
    pub async fn ack(&self, creds: &Credentials, last_received_id: u64) -> Result<u64, ApiError> {
        let rb = self.authed(self.http.post(self.endpoint("/messages/ack")), creds);
        let body = serde_json::json!({ "last_received_id": last_received_id });
        let resp = Self::expect(rb.json(&body), &[StatusCode::OK]).await?;
        Ok(Self::json::<Cursor>(resp).await?.cursor)
    }

    /// `GET /clients/{client_id}/sent` (admin): what the client sent after
    /// id `after`, oldest first; `limit: None` leaves the page size to the
    /// server (100). An unknown client is a 404 `not_found`.
    pub async fn sent_page(
        &self,
        admin_token: &str,
        client_id: &str,
        after: u64,
        limit: Option<u32>,
    ) -> Result<Sent, ApiError> {
        let mut rb = self
            .http
            .get(self.endpoint(&format!("/clients/{client_id}/sent")))
            .header("X-Admin-Token", admin_token)
            .query(&[("after", after)]);
        if let Some(limit) = limit {
            rb = rb.query(&[("limit", limit)]);
        }
        let resp = Self::expect(rb, &[StatusCode::OK, StatusCode::NO_CONTENT]).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Sent::Empty);
        }
        let page: SentPage = Self::json(resp).await?;
        page.check(after)?;
        Ok(Sent::Page(page))
    }

    /// One page of `GET /operators/clients`; with `tag`, only the clients
    /// carrying it (`?tag=`, filtered by the server).
    pub async fn clients_page(
        &self,
        operator_token: &str,
        limit: u32,
        page_token: Option<&str>,
        tag: Option<&str>,
    ) -> Result<ClientsPage, ApiError> {
        let mut rb = self
            .http
            .get(self.endpoint("/operators/clients"))
            .header("X-Operator-Token", operator_token)
            .query(&[("limit", limit)]);
        if let Some(tag) = tag {
            rb = rb.query(&[("tag", tag)]);
        }
        if let Some(t) = page_token {
            rb = rb.query(&[("page_token", t)]);
        }
        Self::json(Self::expect(rb, &[StatusCode::OK]).await?).await
    }

    /// Every client (carrying `tag`, if given), walking all pages of
    /// `limit` clients.
    pub async fn all_clients(
        &self,
        operator_token: &str,
        limit: u32,
        tag: Option<&str>,
    ) -> Result<Vec<ClientInfo>, ApiError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .clients_page(operator_token, limit, token.as_deref(), tag)
                .await?;
            all.extend(page.clients);
            match page.next_page_token {
                Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                Some(_) => {
                    return Err(ApiError::Protocol(
                        "the server repeated a page token".into(),
                    ))
                }
                None => return Ok(all),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized() {
        for (given, want) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
            ("http://127.0.0.1:8080/api/v1", "http://127.0.0.1:8080"),
            ("https://x.example/prod/api/v1/", "https://x.example/prod"),
            (" https://x.example/prod ", "https://x.example/prod"),
        ] {
            assert_eq!(normalize_url(given).unwrap(), want, "{given}");
        }
        for bad in [
            "",
            "127.0.0.1:8080",
            "ftp://x",
            "http://x/?a=1",
            "not a url",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn plain_http_is_only_for_loopback() {
        for url in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://localhost:8080/api/v1",
            "http://LOCALHOST.",
            "http://[::1]:8080",
            "https://pigeonhole.example.com",
            "https://192.168.1.10:8443",
            "https://[2001:db8::1]",
        ] {
            assert_eq!(insecure_http_host(url), None, "{url}");
        }
        for (url, host) in [
            ("http://192.168.1.10:8080", "192.168.1.10"),
            ("http://pigeonhole.example.com", "pigeonhole.example.com"),
            ("http://10.0.0.1", "10.0.0.1"),
            ("http://128.0.0.1", "128.0.0.1"),
            ("http://[2001:db8::1]:8080", "[2001:db8::1]"),
            ("http://[::ffff:127.0.0.1]", "[::ffff:7f00:1]"),
            ("http://0.0.0.0:8080", "0.0.0.0"),
            ("http://localhost.example.com", "localhost.example.com"),
            ("http://my-localhost", "my-localhost"),
        ] {
            assert_eq!(insecure_http_host(url).as_deref(), Some(host), "{url}");
        }
        assert!(is_loopback_host("127.255.255.254"));
        assert!(!is_loopback_host("::"));
        assert!(!is_loopback_host(""));
    }

    #[test]
    fn which_failures_leave_a_change_unknown() {
        let server = |status| ApiError::Server {
            status,
            code: "x".into(),
            message: "x".into(),
            retry_after: None,
        };
        assert!(ApiError::Network("reset".into()).outcome_unknown());
        assert!(ApiError::Protocol("garbage".into()).outcome_unknown());
        for status in [500, 502, 503, 504] {
            assert!(server(status).outcome_unknown(), "{status}");
        }
        for status in [400, 401, 404, 415, 422, 429] {
            assert!(!server(status).outcome_unknown(), "{status}");
        }
        assert_eq!(server(401).status(), Some(401));
        assert_eq!(ApiError::Network("x".into()).status(), None);
    }

    #[test]
    fn server_errors_read_like_the_api() {
        let e = ApiError::Server {
            status: 429,
            code: "rate_limited".into(),
            message: "too many polls".into(),
            retry_after: Some(7),
        };
        assert_eq!(
            e.to_string(),
            "rate_limited: too many polls (retry after 7 s)"
        );
        assert_eq!(e.rate_limited(), Some(Duration::from_secs(7)));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.is_retryable());
        let e = ApiError::Server {
            status: 503,
            code: "http_503".into(),
            message: "down".into(),
            retry_after: None,
        };
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), None, "a 503 without Retry-After");
        let e = ApiError::Server {
            status: 503,
            code: "unavailable".into(),
            message: "storage is unavailable".into(),
            retry_after: Some(2),
        };
        assert!(e.is_retryable());
        assert_eq!(e.rate_limited(), None, "503 is not a rate limit");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(
            e.to_string(),
            "unavailable: storage is unavailable (retry after 2 s)"
        );
        assert!(ApiError::Network("reset".into()).is_retryable());
        let e = ApiError::Server {
            status: 422,
            code: "idempotency_key_reused".into(),
            message: "x".into(),
            retry_after: None,
        };
        assert!(!e.is_retryable());
        assert_eq!(e.retry_after(), None);
    }

    #[test]
    fn sent_pages_must_move_forward() {
        let page = |ids: &[u64], next_after: u64| SentPage {
            messages: ids
                .iter()
                .map(|&id| SentMessage {
                    id,
                    kind: "t".into(),
                    payload: Value::Null,
                    aad: Value::Null,
                    created_at: "2026-11-25T12:00:00.000Z".into(),
                })
                .collect(),
            next_after,
        };
        assert!(page(&[3, 4, 7], 7).check(2).is_ok());
        assert!(page(&[1], 1).check(0).is_ok());
        for (ids, next_after, after) in [
            (&[][..], 0, 0),     // 200 without messages
            (&[2, 3][..], 3, 2), // repeats `after`
            (&[3, 5, 4][..], 4, 2),
            (&[3, 3][..], 3, 2),
            (&[3][..], 2, 2), // next_after does not move
            (&[3][..], 9, 2), // …or skips ahead of the page
        ] {
            let err = page(ids, next_after).check(after).unwrap_err();
            assert!(matches!(err, ApiError::Protocol(_)), "{ids:?}: {err:?}");
        }
        let parsed: SentPage = serde_json::from_str(
            r#"{"messages": [{"id": 1, "type": "reply", "payload": {"a": 1},
                "aad": {"client_id": "c"}, "created_at": "2026-11-25T12:00:00.000Z"}],
                "next_after": 1}"#,
        )
        .unwrap();
        assert_eq!(parsed.messages[0].aad["client_id"], "c");
        assert!(parsed.check(0).is_ok());
    }

    #[test]
    fn publish_bodies_name_one_audience() {
        let ids = vec!["3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13".to_string()];
        let payload = serde_json::json!({"text": "hi"});
        assert_eq!(
            publish_body(Audience::Clients(&ids), "greeting", &payload, None),
            serde_json::json!({"to_client_ids": ids, "type": "greeting", "payload": {"text": "hi"}}),
            "no ttl_secs unless asked"
        );
        let tags = vec!["eu".to_string(), "door-sensors".to_string()];
        assert_eq!(
            publish_body(Audience::Tags(&tags), "alarm", &Value::Null, Some(300)),
            serde_json::json!({"to_tags": ["eu", "door-sensors"], "type": "alarm",
                               "payload": null, "ttl_secs": 300})
        );
        assert_eq!(
            publish_body(Audience::All, "t", &payload, None),
            serde_json::json!({"to_all": true, "type": "t", "payload": {"text": "hi"}})
        );
    }

    #[test]
    fn receipts_of_tag_audiences_have_no_count_yet() {
        let r: PublishReceipt =
            serde_json::from_str(r#"{"publish_id": "p", "recipients": null}"#).unwrap();
        assert_eq!(r.recipients, None);
        let r: PublishReceipt =
            serde_json::from_str(r#"{"publish_id": "p", "recipients": 3}"#).unwrap();
        assert_eq!(r.recipients, Some(3));
    }

    #[test]
    fn poll_pages_reach_their_next_cursor() {
        let page: PollPage = serde_json::from_str(r#"{"messages": [], "next_cursor": 9}"#).unwrap();
        assert!(page.messages.is_empty());
        assert_eq!(page.reach(), 9, "a page whose messages all expired");
        let page: PollPage = serde_json::from_value(serde_json::json!({
            "messages": [{"id": 4, "type": "t", "ciphertext": "", "nonce": "", "tag": "",
                          "aad": null, "created_at": "2026-11-25T12:00:00.000Z"}],
            "next_cursor": 6
        }))
        .unwrap();
        assert_eq!(page.reach(), 6, "past the expired ids 5 and 6");
        assert!(
            serde_json::from_str::<PollPage>(r#"{"messages": []}"#).is_err(),
            "next_cursor is required"
        );
    }

    #[test]
    fn a_status_reads_with_or_without_its_recipients() {
        let s: PublishStatus = serde_json::from_str(
            r#"{"publish_id": "p", "type": "alarm", "created_at": "2026-11-25T23:49:50.123Z",
                "audience": {"to_tags": ["eu"]}, "expires_at": null, "recipients": null,
                "delivered": 3, "acknowledged": 1, "expired": 0, "unknown": 0, "pending": 0,
                "state": "delivering"}"#,
        )
        .unwrap();
        assert_eq!((s.recipients, s.unacknowledged()), (None, None));
        assert!(!s.finished());
        assert!(s.recipient_status.is_none());
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(back["type"], "alarm");
        assert!(back.get("recipient_status").is_none() && back.get("next_page_token").is_none());

        let s: PublishStatus = serde_json::from_str(
            r#"{"publish_id": "p", "type": "t", "created_at": "x", "audience": {"to_all": true},
                "expires_at": "y", "recipients": 2, "delivered": 2, "acknowledged": 2,
                "expired": 0, "unknown": 0, "pending": 0, "state": "done",
                "recipient_status": [{"client_id": "c", "message_id": 7, "status": "acknowledged"},
                                     {"client_id": "d", "message_id": null, "status": "unknown"}],
                "next_page_token": "r2"}"#,
        )
        .unwrap();
        assert!(s.finished());
        let rows = s.recipient_status.unwrap();
        assert_eq!(rows[0].message_id, Some(7));
        assert_eq!(rows[1].message_id, None);
        assert_eq!(s.next_page_token.as_deref(), Some("r2"));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(
            path_segment("3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13"),
            "3f2b8c1e-5d4a-4e7b-9c61-0a8d2f7e4b13"
        );
        assert_eq!(path_segment("a/b?c#d e"), "a%2Fb%3Fc%23d%20e");
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let c = Credentials {
            client_id: "id".into(),
            api_token: "pht_x".into(),
            personal_token: "key".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("pht_x") && !shown.contains("key\""),
            "{shown}"
        );
    }
}
