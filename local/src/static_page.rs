//! The browser client (`clients/browser/`), embedded in the binary and served
//! at `/` and `/client.html` with its module scripts and stylesheet. Every
//! other path goes to the API adapter.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method, Response, StatusCode};
use pigeonhole::http::error_response;
use pigeonhole::ApiError;

const HTML: &str = include_str!("../../clients/browser/client.html");
const CLIENT_JS: &str = include_str!("../../clients/browser/client.js");
const PROTOCOL_JS: &str = include_str!("../../clients/browser/pigeonhole.js");
const CSS: &str = include_str!("../../clients/browser/client.css");

/// No inline script or style, scripts and styles from this origin only; the
/// API may live elsewhere (a deployed API Gateway), hence `connect-src *`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src *; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The page's response for `path`, or `None` when the path is not one of the
/// page's files.
pub fn respond(method: &Method, path: &str) -> Option<Response<Bytes>> {
    let (body, content_type) = match path {
        "/" | "/client.html" => (HTML, "text/html; charset=utf-8"),
        "/client.js" => (CLIENT_JS, "text/javascript; charset=utf-8"),
        "/pigeonhole.js" => (PROTOCOL_JS, "text/javascript; charset=utf-8"),
        "/client.css" => (CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        return Some(error_response(&ApiError::method_not_allowed("GET, HEAD")));
    }
    let mut response = Response::new(Bytes::from_static(body.as_bytes()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in [
        ("cache-control", "no-cache"),
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_page_and_its_files() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/client.html", "text/html"),
            ("/client.js", "text/javascript"),
            ("/pigeonhole.js", "text/javascript"),
            ("/client.css", "text/css"),
        ] {
            let response = respond(&Method::GET, path).expect(path);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let headers = response.headers();
            assert!(headers[CONTENT_TYPE].to_str().unwrap().starts_with(kind));
            assert_eq!(headers["cache-control"], "no-cache");
            assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
            assert!(!response.body().is_empty());
        }
    }

    #[test]
    fn leaves_other_paths_to_the_api_and_refuses_other_methods() {
        assert!(respond(&Method::GET, "/api/v1/health").is_none());
        assert!(respond(&Method::GET, "/favicon.ico").is_none());
        let response = respond(&Method::POST, "/").unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()["allow"], "GET, HEAD");
    }

    #[test]
    fn the_page_has_no_inline_script() {
        assert!(HTML.contains(r#"<script type="module" src="client.js"></script>"#));
        assert_eq!(HTML.matches("<script").count(), 1);
        assert!(!HTML.contains("style="));
    }
}
