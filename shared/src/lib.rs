//! Pigeonhole's core, shared by every way the service runs.
//!
//! The Lambda functions and the local server are thin shells around this
//! crate: they build an [`App`] once and hand HTTP requests to
//! [`http::handle`]. Everything a user can observe — validation, encryption,
//! authentication, rate limiting, sequencing — is decided here, once.
//!
//! Layout:
//! - [`handlers`]: one module per endpoint, transport-agnostic (typed input in,
//!   typed outcome or [`ApiError`] out), plus the fan-out worker.
//! - [`http`]: turns an `http::Request` into a handler call and back.
//! - [`store`] and [`queue`]: the ports, with their adapters.
//! - [`crypto`]: AES-256-GCM sealing, canonical AAD, server-side key derivation.

pub mod app;
#[cfg(feature = "aws")]
pub mod aws;
pub mod clock;
pub mod config;
pub mod cost;
pub mod crypto;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod handlers;
pub mod http;
pub mod maintenance;
pub mod metrics;
pub mod queue;
pub mod rate_limit;
pub mod retry;
pub mod store;

pub use app::App;
pub use error::{ApiError, ErrorCode};
