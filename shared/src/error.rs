//! The one error type every endpoint answers with, and its wire form.
//!
//! Handlers return [`ApiError`]; the HTTP adapter renders it as
//! `{"error":{"code":"...","message":"..."}}`. Internal failures are logged
//! where they happen and reach the client only as a bare `internal`.

use http::StatusCode;
use std::time::Duration;

/// The machine-readable error codes of the wire contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    ValidationFailed,
    DecryptionFailed,
    RateLimited,
    IdempotencyKeyReused,
    UnsupportedMediaType,
    RequestTimeout,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::DecryptionFailed => "decryption_failed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidJson => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ValidationFailed
            | ErrorCode::DecryptionFailed
            | ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What `unavailable` asks clients to wait: long enough for throttling to
/// ease, short enough to be the poll schedule's first step.
pub const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// An error a client sees. The message is safe to show: it never carries
/// secrets or internal details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Set for `rate_limited` and `unavailable`: becomes the `Retry-After`
    /// header.
    pub retry_after: Option<Duration>,
    /// Set for `method_not_allowed`: becomes the `Allow` header.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidJson, message)
    }

    /// Every authentication failure looks the same, so that nothing about
    /// which clients exist can be learned from the answer.
    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "missing or invalid credentials")
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationFailed, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message)
    }

    pub fn decryption_failed() -> Self {
        Self::new(
            ErrorCode::DecryptionFailed,
            "the message could not be authenticated with this client's key (wrong key, or tampered ciphertext, tag, nonce or aad)",
        )
    }

    pub fn rate_limited(retry_after: Duration) -> Self {
        Self::too_many("too many polls; retry later", retry_after)
    }

    /// `rate_limited` naming what there was too much of.
    pub fn too_many(message: impl Into<String>, retry_after: Duration) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            ErrorCode::UnsupportedMediaType,
            "request bodies must be JSON, sent with Content-Type: application/json",
        )
    }

    /// A request body that did not arrive in time (servers that read
    /// bodies from the network).
    pub fn request_timeout(after: Duration) -> Self {
        Self::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                after.as_secs()
            ),
        )
    }

    /// A resource (not a path) that does not exist.
    pub fn no_such(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, what)
    }

    /// Storage or the queue stayed unavailable through the retry budget.
    /// The cause is logged here; the client is told to come back.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "storage unavailable; answering 503");
        ApiError {
            retry_after: Some(UNAVAILABLE_RETRY_AFTER),
            ..Self::new(
                ErrorCode::Unavailable,
                "the service is briefly unavailable; retry after the Retry-After delay",
            )
        }
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such endpoint")
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..Self::new(
                ErrorCode::MethodNotAllowed,
                format!("method not allowed; use {allow}"),
            )
        }
    }

    /// The only constructor for 500s: the cause is logged here, never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> Self {
        match err {
            crate::store::StoreError::Unavailable(_) => ApiError::unavailable(&err),
            _ => ApiError::internal(&err),
        }
    }
}

impl From<crate::crypto::MissingKey> for ApiError {
    fn from(err: crate::crypto::MissingKey) -> Self {
        ApiError::internal(&err)
    }
}

impl From<crate::queue::QueueError> for ApiError {
    fn from(err: crate::queue::QueueError) -> Self {
        match err {
            crate::queue::QueueError::Unavailable(_) => ApiError::unavailable(&err),
            _ => ApiError::internal(&err),
        }
    }
}
