//! `GET /metrics`: what the server recorded, in the Prometheus text format,
//! for operators only.
//!
//! The shared crate records through the `metrics` facade
//! (`pigeonhole::metrics` names every metric once); [`install`] makes the
//! Prometheus exporter its recorder at start-up, and this endpoint renders
//! it. The exporter's own HTTP listener is not used (its crate is built
//! without it): the endpoint is one more path of this server, on its port,
//! behind the operator token like the other operator endpoints. A scrape
//! sends it as `X-Operator-Token` or as `Authorization: Bearer <token>`
//! (Prometheus' `authorization` scrape setting).

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pigeonhole::handlers::auth::authorize_operator;
use pigeonhole::http::error_response;
use pigeonhole::metrics::{Kind, ALL};
use pigeonhole::{ApiError, App};
use std::sync::OnceLock;
use std::time::Duration;

pub const PATH: &str = "/metrics";

/// The text format's media type, version 0.0.4.
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram samples are folded into their buckets between
/// scrapes, so they never pile up in memory.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Makes the Prometheus exporter the process's metrics recorder. Call it
/// once, at start-up, inside the Tokio runtime.
pub fn install() -> Result<(), String> {
    let mut builder = PrometheusBuilder::new();
    for metric in ALL.iter().filter(|m| m.kind == Kind::Histogram) {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(metric.name.to_string()), metric.buckets)
            .map_err(|e| format!("metrics: {e}"))?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    pigeonhole::metrics::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let _ = HANDLE.set(handle);
    Ok(())
}

/// The answer for `GET /metrics`; `None` for any other path.
pub fn respond(
    app: &App,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response<Bytes>> {
    if path != PATH {
        return None;
    }
    Some(match render(app, method, headers) {
        Ok(text) => {
            let mut response = Response::new(Bytes::from(text));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => error_response(&error),
    })
}

fn render(app: &App, method: &Method, headers: &HeaderMap) -> Result<String, ApiError> {
    if method != Method::GET {
        return Err(ApiError::method_not_allowed("GET"));
    }
    authorize_operator(app, operator_token(headers))?;
    let handle = HANDLE.get().ok_or_else(ApiError::not_found)?;
    Ok(handle.render())
}

/// `X-Operator-Token`, else the token of `Authorization: Bearer`.
fn operator_token(headers: &HeaderMap) -> Option<&str> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    header("x-operator-token").or_else(|| {
        let (scheme, token) = header("authorization")?.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_token_comes_from_either_header() {
        assert_eq!(operator_token(&headers(&[])), None);
        assert_eq!(
            operator_token(&headers(&[("x-operator-token", " op ")])),
            Some("op")
        );
        assert_eq!(
            operator_token(&headers(&[("authorization", "Bearer op")])),
            Some("op")
        );
        assert_eq!(
            operator_token(&headers(&[("authorization", "bearer  op")])),
            Some("op")
        );
        assert_eq!(
            operator_token(&headers(&[("authorization", "Basic b3A6")])),
            None
        );
        // The dedicated header wins.
        assert_eq!(
            operator_token(&headers(&[
                ("x-operator-token", "a"),
                ("authorization", "Bearer b")
            ])),
            Some("a")
        );
    }
}
