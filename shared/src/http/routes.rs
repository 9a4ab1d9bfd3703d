//! The route table: every path the API answers, and its one method.

use crate::config::Secret;
use crate::domain::{MAX_BODY_BYTES, MAX_PUBLISH_BODY_BYTES};
use http::Method;

pub const BASE_PATH: &str = "/api/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    /// `/health` outside the base path, for load balancers and probes.
    HealthUnversioned,
    Register,
    /// New credentials for the calling client.
    Rotate,
    /// `/clients/{client_id}/sent`: what a client sent, for the admin.
    Sent,
    Publish,
    /// `/messages/publish/{publish_id}`: how far a publish got.
    PublishStatus,
    Send,
    Poll,
    Ack,
    ListClients,
    /// `/operators/clients/{client_id}`.
    DeleteClient,
    /// `/operators/clients/{client_id}/tags`.
    SetTags,
}

impl Route {
    pub const ALL: [Route; 13] = [
        Route::Health,
        Route::HealthUnversioned,
        Route::Register,
        Route::Rotate,
        Route::Sent,
        Route::Publish,
        Route::PublishStatus,
        Route::Send,
        Route::Poll,
        Route::Ack,
        Route::ListClients,
        Route::DeleteClient,
        Route::SetTags,
    ];

    /// The full path, base path included; a parameter is written
    /// `{name}`, as API Gateway and OpenAPI write it.
    pub fn path(self) -> &'static str {
        match self {
            Route::Health => "/api/v1/health",
            Route::HealthUnversioned => "/health",
            Route::Register => "/api/v1/clients/register",
            Route::Rotate => "/api/v1/clients/rotate",
            Route::Sent => "/api/v1/clients/{client_id}/sent",
            Route::Publish => "/api/v1/messages/publish",
            Route::PublishStatus => "/api/v1/messages/publish/{publish_id}",
            Route::Send => "/api/v1/messages/send",
            Route::Poll => "/api/v1/messages/poll",
            Route::Ack => "/api/v1/messages/ack",
            Route::ListClients => "/api/v1/operators/clients",
            Route::DeleteClient => "/api/v1/operators/clients/{client_id}",
            Route::SetTags => "/api/v1/operators/clients/{client_id}/tags",
        }
    }

    pub fn method(self) -> Method {
        match self {
            Route::Register | Route::Rotate | Route::Publish | Route::Send | Route::Ack => {
                Method::POST
            }
            Route::Health
            | Route::HealthUnversioned
            | Route::Poll
            | Route::ListClients
            | Route::Sent
            | Route::PublishStatus => Method::GET,
            Route::DeleteClient => Method::DELETE,
            Route::SetTags => Method::PUT,
        }
    }

    /// The secrets the endpoint needs. A deployment of one endpoint (a
    /// Lambda function) is given these and no others.
    pub fn secrets(self) -> &'static [Secret] {
        match self {
            Route::Health | Route::HealthUnversioned => &[],
            // The admin token lets fleet provisioning past the limit.
            Route::Register => &[
                Secret::AdminToken,
                Secret::TokenKey,
                Secret::FingerprintKey,
                Secret::WrappingKey,
            ],
            Route::Rotate => &[
                Secret::TokenKey,
                Secret::FingerprintKey,
                Secret::WrappingKey,
            ],
            // Polls re-seal messages sealed before a rotation.
            Route::Poll => &[Secret::TokenKey, Secret::WrappingKey],
            Route::Ack => &[Secret::TokenKey],
            Route::Send => &[Secret::TokenKey, Secret::WrappingKey, Secret::AtRestKey],
            Route::Publish | Route::Sent => &[Secret::AdminToken, Secret::AtRestKey],
            Route::PublishStatus => &[Secret::AdminToken],
            Route::ListClients | Route::DeleteClient | Route::SetTags => &[Secret::OperatorTokens],
        }
    }

    /// The largest request body the endpoint accepts.
    pub fn max_body_bytes(self) -> usize {
        match self {
            Route::Publish => MAX_PUBLISH_BODY_BYTES,
            _ => MAX_BODY_BYTES,
        }
    }

    pub fn is_health(self) -> bool {
        matches!(self, Route::Health | Route::HealthUnversioned)
    }

    /// Whether the endpoint hands work to the fan-out queue.
    pub fn publishes(self) -> bool {
        self == Route::Publish
    }

    /// Whether the endpoint announces what it stores on the inbound queue
    /// (when the deployment turns notifications on).
    pub fn announces(self) -> bool {
        self == Route::Send
    }

    /// The `Allow` header value for this route.
    pub fn allow(self) -> &'static str {
        match self.method() {
            Method::POST => "POST",
            Method::DELETE => "DELETE",
            Method::PUT => "PUT",
            _ => "GET",
        }
    }

    /// The route for a request path; one trailing slash is forgiven.
    pub fn find(path: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.matches(path).is_some())
    }

    /// Whether `path` is this route, and the value of its parameter if it
    /// has one ("" when it has none).
    pub fn matches(self, path: &str) -> Option<&str> {
        let path = match path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p,
            _ => path,
        };
        let pattern = self.path();
        match pattern.split_once('{') {
            None => (pattern == path).then_some(""),
            Some((prefix, rest)) => {
                let suffix = rest.split_once('}').map_or("", |(_, s)| s);
                path.strip_prefix(prefix)
                    .and_then(|p| p.strip_suffix(suffix))
                    .filter(|param| !param.is_empty() && !param.contains('/'))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_routes_and_forgives_a_trailing_slash() {
        assert_eq!(Route::find("/api/v1/messages/poll"), Some(Route::Poll));
        assert_eq!(Route::find("/api/v1/messages/poll/"), Some(Route::Poll));
        assert_eq!(Route::find("/api/v1/messages"), None);
        assert_eq!(Route::find("/"), None);
        let id = "/api/v1/operators/clients/0b6a3c9e-1f7b-4d7e-9a51-6f7a2b1c9d00";
        assert_eq!(Route::find(id), Some(Route::DeleteClient));
        assert_eq!(
            Route::DeleteClient.matches(&format!("{id}/")),
            Some("0b6a3c9e-1f7b-4d7e-9a51-6f7a2b1c9d00")
        );
        assert_eq!(
            Route::find("/api/v1/operators/clients/"),
            Some(Route::ListClients)
        );
        assert_eq!(Route::find("/api/v1/operators/clients/a/b"), None);
        assert_eq!(
            Route::Sent.matches("/api/v1/clients/0b6a3c9e/sent/"),
            Some("0b6a3c9e")
        );
        assert_eq!(
            Route::find("/api/v1/clients/register"),
            Some(Route::Register)
        );
        assert_eq!(Route::find("/api/v1/clients//sent"), None);
        assert_eq!(Route::find(&format!("{id}/tags")), Some(Route::SetTags));
        assert_eq!(
            Route::find("/api/v1/messages/publish/5c1f"),
            Some(Route::PublishStatus)
        );
        assert_eq!(
            Route::find("/api/v1/messages/publish"),
            Some(Route::Publish)
        );
        assert_eq!(Route::find("/api/v1/clients/a/b/sent"), None);
        assert!(Route::ALL
            .iter()
            .all(|r| r.path().starts_with(BASE_PATH) || *r == Route::HealthUnversioned));
    }
}
