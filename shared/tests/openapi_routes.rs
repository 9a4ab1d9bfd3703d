//! openapi.yaml documents exactly the routes the adapter serves, with the
//! same methods. The router is the source of truth; this keeps the
//! description from drifting.

use pigeonhole::http::Route;
use std::collections::BTreeSet;

/// `(method, path)` pairs from the `paths:` section. The file is ours and
/// kept in block style, so a line scan is enough: paths at two spaces of
/// indentation, operations at four.
fn documented_routes() -> BTreeSet<(String, String)> {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml"))
        .expect("openapi.yaml");
    let mut routes = BTreeSet::new();
    let mut in_paths = false;
    let mut current: Option<String> = None;
    for line in spec.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line.trim_end() == "paths:";
            current = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(path) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            current = Some(format!("/{path}"));
        } else if let (Some(path), Some(method)) = (
            &current,
            line.strip_prefix("    ").and_then(|m| m.strip_suffix(':')),
        ) {
            if ["get", "post", "put", "patch", "delete", "head", "options"].contains(&method) {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[test]
fn openapi_describes_every_route_and_nothing_else() {
    let served: BTreeSet<(String, String)> = Route::ALL
        .iter()
        .map(|r| (r.method().to_string(), r.path().to_string()))
        .collect();
    assert_eq!(documented_routes(), served);
}
