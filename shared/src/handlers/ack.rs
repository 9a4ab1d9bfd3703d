//! `POST /messages/ack`: moves the client's durable cursor forward. Acking
//! an older id changes nothing; acking past the newest message is refused,
//! since it would silently swallow messages not yet written.

use super::auth::ClientAuth;
use super::input::JsonBody;
use crate::domain::Seq;
use crate::error::ApiError;
use crate::store::AckOutcome;
use crate::App;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckInput {
    pub last_received_id: Seq,
}

impl AckInput {
    pub fn from_body(body: &JsonBody) -> Result<Self, ApiError> {
        Ok(AckInput {
            last_received_id: body.unsigned("last_received_id")?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Acked {
    pub cursor: Seq,
}

pub async fn ack(app: &App, client: &ClientAuth, input: AckInput) -> Result<Acked, ApiError> {
    let id = client.id();
    match app
        .store
        .acknowledge(
            id,
            client.generation(),
            input.last_received_id,
            app.clock.now(),
        )
        .await?
    {
        AckOutcome::Acked { cursor } => Ok(Acked { cursor }),
        AckOutcome::BeyondHead { head } => Err(ApiError::validation(format!(
            "last_received_id {} is beyond the newest message ({head})",
            input.last_received_id
        ))),
        AckOutcome::UnknownClient => Err(ApiError::unauthorized()),
    }
}
