//! The browser pages (`clients/browser/`), embedded in the binary: the
//! client page at `/` and `/client.html`, the operators' console at
//! `/console` and `/console.html`, and their module scripts and stylesheets
//! (both pages import the same `pigeonhole.js`). Every other path goes to
//! the API adapter.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method, Response, StatusCode};
use pigeonhole::http::error_response;
use pigeonhole::ApiError;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// A file of `clients/browser/`, embedded in the binary.
macro_rules! browser_file {
    ($name:literal) => {
        include_str!(concat!("../../clients/browser/", $name))
    };
}

/// Every file served, by path. The console lives at `/console` (no trailing
/// slash), so its relative URLs resolve next to the client page's files.
const FILES: &[(&str, &str, &str)] = &[
    ("/", browser_file!("client.html"), HTML),
    ("/client.html", browser_file!("client.html"), HTML),
    ("/client.js", browser_file!("client.js"), JS),
    ("/client.css", browser_file!("client.css"), CSS),
    ("/pigeonhole.js", browser_file!("pigeonhole.js"), JS),
    ("/console", browser_file!("console.html"), HTML),
    ("/console.html", browser_file!("console.html"), HTML),
    ("/console.js", browser_file!("console.js"), JS),
    ("/console-ui.js", browser_file!("console-ui.js"), JS),
    (
        "/console-clients.js",
        browser_file!("console-clients.js"),
        JS,
    ),
    (
        "/console-publish.js",
        browser_file!("console-publish.js"),
        JS,
    ),
    (
        "/console-inbound.js",
        browser_file!("console-inbound.js"),
        JS,
    ),
    ("/console.css", browser_file!("console.css"), CSS),
];

/// No inline script or style, scripts and styles from this origin only; the
/// API may live elsewhere (a deployed API Gateway), hence `connect-src *`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src *; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The response for `path`, or `None` when the path is not one of the pages'
/// files.
pub fn respond(method: &Method, path: &str) -> Option<Response<Bytes>> {
    let &(_, body, content_type) = FILES.iter().find(|(served, _, _)| *served == path)?;
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
    fn serves_the_pages_and_their_files() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/client.html", "text/html"),
            ("/client.js", "text/javascript"),
            ("/pigeonhole.js", "text/javascript"),
            ("/client.css", "text/css"),
            ("/console", "text/html"),
            ("/console.html", "text/html"),
            ("/console.js", "text/javascript"),
            ("/console-ui.js", "text/javascript"),
            ("/console-clients.js", "text/javascript"),
            ("/console-publish.js", "text/javascript"),
            ("/console-inbound.js", "text/javascript"),
            ("/console.css", "text/css"),
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
    fn every_file_a_page_refers_to_is_served() {
        // A file missing here would load from a static server and fail only
        // when served from the binary.
        let mut checked = 0;
        for &(_, body, content_type) in FILES {
            if content_type == CSS {
                continue;
            }
            for quote in ["from './", "src=\"", "href=\""] {
                for (at, _) in body.match_indices(quote) {
                    let rest = &body[at + quote.len()..];
                    let name = &rest[..rest.find(['\'', '"']).unwrap()];
                    if [".js", ".css", ".html"]
                        .iter()
                        .any(|ext| name.ends_with(ext))
                    {
                        let path = format!("/{name}");
                        assert!(
                            respond(&Method::GET, &path).is_some(),
                            "{path} is referred to but not served"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 12, "only {checked} references found");
    }

    #[test]
    fn leaves_other_paths_to_the_api_and_refuses_other_methods() {
        assert!(respond(&Method::GET, "/api/v1/health").is_none());
        assert!(respond(&Method::GET, "/favicon.ico").is_none());
        assert!(respond(&Method::GET, "/console/").is_none());
        let response = respond(&Method::POST, "/").unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()["allow"], "GET, HEAD");
        let response = respond(&Method::DELETE, "/console").unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn the_pages_have_no_inline_script_or_style() {
        for (path, script) in [("/", "client.js"), ("/console", "console.js")] {
            let (_, html, _) = FILES.iter().find(|(p, _, _)| *p == path).unwrap();
            assert!(html.contains(&format!(
                r#"<script type="module" src="{script}"></script>"#
            )));
            assert_eq!(html.matches("<script").count(), 1, "{path}");
            assert!(!html.contains("style="), "{path}");
            assert!(!html.contains("<style"), "{path}");
        }
    }
}
