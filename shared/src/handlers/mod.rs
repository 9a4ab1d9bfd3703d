//! One module per endpoint. Each takes typed, validated input and returns a
//! typed outcome or an [`ApiError`](crate::ApiError); none knows about HTTP.
//! The HTTP adapter in [`crate::http`] parses requests into these inputs.

pub mod ack;
pub mod audience;
pub mod auth;
pub mod delete_client;
pub mod fanout;
pub mod input;
pub mod list_clients;
pub mod poll;
pub mod publish;
pub mod publish_status;
pub mod register;
pub mod rotate;
pub mod send;
pub mod sent;
#[cfg(feature = "aws")]
pub mod sqs_batch;
pub mod tags;
