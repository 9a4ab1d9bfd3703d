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
    Publish,
    Send,
    Poll,
    Ack,
    ListClients,
}

impl Route {
    pub const ALL: [Route; 8] = [
        Route::Health,
        Route::HealthUnversioned,
        Route::Register,
        Route::Publish,
        Route::Send,
        Route::Poll,
        Route::Ack,
        Route::ListClients,
    ];

    /// The full path, base path included.
    pub fn path(self) -> &'static str {
        match self {
            Route::Health => "/api/v1/health",
            Route::HealthUnversioned => "/health",
            Route::Register => "/api/v1/clients/register",
            Route::Publish => "/api/v1/messages/publish",
            Route::Send => "/api/v1/messages/send",
            Route::Poll => "/api/v1/messages/poll",
            Route::Ack => "/api/v1/messages/ack",
            Route::ListClients => "/api/v1/operators/clients",
        }
    }

    pub fn method(self) -> Method {
        match self {
            Route::Register | Route::Publish | Route::Send | Route::Ack => Method::POST,
            Route::Health | Route::HealthUnversioned | Route::Poll | Route::ListClients => {
                Method::GET
            }
        }
    }

    /// The secrets the endpoint needs. A deployment of one endpoint (a
    /// Lambda function) is given these and no others.
    pub fn secrets(self) -> &'static [Secret] {
        match self {
            Route::Health | Route::HealthUnversioned => &[],
            Route::Register | Route::Send | Route::Poll | Route::Ack => &[Secret::MasterKey],
            Route::Publish => &[Secret::AdminToken, Secret::MasterKey],
            Route::ListClients => &[Secret::OperatorTokens],
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

    /// The `Allow` header value for this route.
    pub fn allow(self) -> &'static str {
        if self.method() == Method::POST {
            "POST"
        } else {
            "GET"
        }
    }

    /// The route for a request path; one trailing slash is forgiven.
    pub fn find(path: &str) -> Option<Route> {
        let path = match path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p,
            _ => path,
        };
        Route::ALL.into_iter().find(|r| r.path() == path)
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
        assert!(Route::ALL
            .iter()
            .all(|r| r.path().starts_with(BASE_PATH) || *r == Route::HealthUnversioned));
    }
}
