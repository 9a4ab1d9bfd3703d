//! The HTTP adapter: `http::Request` in, `http::Response` out.
//!
//! The local server and every Lambda function (whose `lambda_http::Request`
//! is an `http::Request`) call [`handle`], so routing, header parsing, body
//! limits, status codes and the per-request log line are the same
//! everywhere.

mod respond;
mod routes;

pub use respond::error_response;
pub use routes::{Route, BASE_PATH};

use crate::domain::MAX_BODY_BYTES;
use crate::error::ApiError;
use crate::handlers::auth::{
    authenticate_client, authorize_admin, authorize_operator, ClientCredentials,
};
use crate::handlers::input::JsonBody;
use crate::handlers::{
    ack, delete_client, list_clients, poll, publish, publish_status, register, rotate, send, sent,
    tags,
};
use crate::metrics;
use crate::retry;
use crate::App;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use respond::{json_response, no_content};
use std::net::IpAddr;
use std::time::Instant;

/// The address a request came from, as a request extension: the TCP peer
/// on the local server, API Gateway's `requestContext.http.sourceIp` on
/// Lambda. Registration is rate limited by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceAddr(pub IpAddr);

/// Answers one request. Never panics on client input and never fails: every
/// problem becomes an error response.
pub async fn handle(app: &App, request: Request<Bytes>) -> Response<Bytes> {
    handle_within(app, None, request).await
}

/// Answers one request for a deployment that serves a single endpoint (one
/// Lambda function per route): other routes are `not_found` there, except
/// health, which every deployment answers.
pub async fn handle_route(app: &App, route: Route, request: Request<Bytes>) -> Response<Bytes> {
    handle_within(app, Some(route), request).await
}

async fn handle_within(app: &App, only: Option<Route>, request: Request<Bytes>) -> Response<Bytes> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    // Every storage retry inside this request stops in time to answer.
    let response = match retry::within(
        started + retry::REQUEST_BUDGET,
        dispatch(app, only, request),
    )
    .await
    {
        Ok(response) => response,
        Err(error) => error_response(&error),
    };
    let elapsed = started.elapsed();
    // The path only: query strings may carry page tokens, and no header is
    // ever logged, so no secret reaches the log.
    tracing::info!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        latency_ms = (elapsed.as_secs_f64() * 100_000.0).round() / 100.0,
        "request"
    );
    metrics::request(Route::find(&path), response.status().as_u16(), elapsed);
    response
}

async fn dispatch(
    app: &App,
    only: Option<Route>,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, ApiError> {
    let route = Route::find(request.uri().path())
        .filter(|r| only.is_none_or(|o| o == *r || r.is_health()))
        .ok_or_else(ApiError::not_found)?;
    if request.method() != route.method() {
        return Err(ApiError::method_not_allowed(route.allow()));
    }
    let (parts, body) = request.into_parts();
    if body.len() > route.max_body_bytes() {
        return Err(body_too_large(route.max_body_bytes()));
    }
    let headers = &parts.headers;
    if !body.is_empty() && !is_json(headers) {
        return Err(ApiError::unsupported_media_type());
    }
    let query = parts.uri.query();
    let path_param = route.matches(parts.uri.path()).unwrap_or_default();
    match route {
        Route::Health | Route::HealthUnversioned => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        Route::Register => {
            // A wrong admin token is an error, not an anonymous register:
            // provisioning scripts learn of their mistake at once.
            let admin = header(headers, "x-admin-token")
                .map(|token| authorize_admin(app, Some(token)))
                .transpose()?;
            let caller = register::Caller {
                source: parts.extensions.get::<SourceAddr>().map(|s| s.0),
                admin,
            };
            let input = register::RegisterInput::from_body(&JsonBody::parse(&body)?)?;
            let registered = register::register(app, input, caller).await?;
            let status = if registered.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(status, &registered.credentials))
        }
        Route::Rotate => {
            let client = authenticate_client(app, &client_credentials(headers))?;
            let input = rotate::RotateInput::from_body(&JsonBody::parse(&body)?)?;
            Ok(json_response(
                StatusCode::OK,
                &rotate::rotate(app, &client, input).await?,
            ))
        }
        Route::Sent => {
            let admin = authorize_admin(app, header(headers, "x-admin-token"))?;
            let input = sent::SentInput::from_query(query)?;
            match sent::read_sent(app, &admin, path_param, input).await? {
                sent::SentPage::Nothing => Ok(no_content()),
                sent::SentPage::Messages {
                    messages,
                    next_after,
                } => Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"messages": messages, "next_after": next_after}),
                )),
            }
        }
        Route::Publish => {
            let admin = authorize_admin(app, header(headers, "x-admin-token"))?;
            let key = publish::IdempotencyKey::from_header(headers.get("idempotency-key"))?;
            let input = publish::PublishInput::from_body(&JsonBody::parse(&body)?)?;
            let published = publish::publish(app, &admin, input, key).await?;
            Ok(json_response(StatusCode::ACCEPTED, &published))
        }
        Route::PublishStatus => {
            let admin = authorize_admin(app, header(headers, "x-admin-token"))?;
            let input = publish_status::StatusInput::from_query(query)?;
            Ok(json_response(
                StatusCode::OK,
                &publish_status::publish_status(app, &admin, path_param, input).await?,
            ))
        }
        Route::Send => {
            let client = authenticate_client(app, &client_credentials(headers))?;
            let input = send::SendInput::from_body(&JsonBody::parse(&body)?)?;
            let sent = send::send(app, &client, input).await?;
            let status = if sent.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(status, &serde_json::json!({"id": sent.id})))
        }
        Route::Poll => {
            let client = authenticate_client(app, &client_credentials(headers))?;
            let input = poll::PollInput::from_query(query)?;
            match poll::poll(app, &client, input).await? {
                poll::Polled::Nothing => Ok(no_content()),
                poll::Polled::Messages {
                    messages,
                    next_cursor,
                } => Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"messages": messages, "next_cursor": next_cursor}),
                )),
            }
        }
        Route::Ack => {
            let client = authenticate_client(app, &client_credentials(headers))?;
            let input = ack::AckInput::from_body(&JsonBody::parse(&body)?)?;
            Ok(json_response(
                StatusCode::OK,
                &ack::ack(app, &client, input).await?,
            ))
        }
        Route::ListClients => {
            let operator = authorize_operator(app, header(headers, "x-operator-token"))?;
            let input = list_clients::ListInput::from_query(query)?;
            Ok(json_response(
                StatusCode::OK,
                &list_clients::list_clients(app, &operator, input).await?,
            ))
        }
        Route::DeleteClient => {
            let operator = authorize_operator(app, header(headers, "x-operator-token"))?;
            delete_client::delete_client(app, &operator, path_param).await?;
            Ok(no_content())
        }
        Route::SetTags => {
            let operator = authorize_operator(app, header(headers, "x-operator-token"))?;
            let input = tags::TagsInput::from_body(&JsonBody::parse(&body)?)?;
            Ok(json_response(
                StatusCode::OK,
                &tags::set_tags(app, &operator, path_param, input).await?,
            ))
        }
    }
}

/// Whether the body is declared JSON (`application/json`, parameters such
/// as `charset=utf-8` allowed). Requiring it makes every cross-origin POST
/// a preflighted one, so a web page cannot have visitors' browsers post to
/// the API.
fn is_json(headers: &HeaderMap) -> bool {
    header(headers, "content-type").is_some_and(|value| {
        value
            .split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// The body limit for a request path (the strictest, 256 KiB, for paths
/// that are no route): servers that stream bodies stop reading there.
pub fn body_limit(path: &str) -> usize {
    Route::find(path).map_or(MAX_BODY_BYTES, Route::max_body_bytes)
}

/// The error for a body over `limit`; servers that stream bodies use it
/// when they stop reading early.
pub fn body_too_large(limit: usize) -> ApiError {
    ApiError::too_large(format!(
        "request bodies on this endpoint are limited to {limit} bytes"
    ))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn client_credentials(headers: &HeaderMap) -> ClientCredentials {
    let bearer = header(headers, "authorization").and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    ClientCredentials {
        client_id: header(headers, "x-client-id").map(String::from),
        bearer,
    }
}
