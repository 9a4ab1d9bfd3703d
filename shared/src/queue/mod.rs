//! The fan-out port: publish hands [`FanoutJob`]s to a [`Queue`], and a
//! worker delivers each job to its recipients. Also the inbound port
//! ([`Inbound`]): on AWS, send announces each stored message on a queue.
//!
//! A job carries the payload sealed under the server's at-rest key, so
//! plaintext never sits in a queue. Jobs are sized to fit one queue message
//! (SQS caps a message at 256 KiB), which is why one publish to many
//! recipients may become several jobs.

mod in_process;
mod inbound;
#[cfg(feature = "aws")]
mod sqs;
#[cfg(feature = "aws")]
mod sqs_inbound;

pub use in_process::InProcessQueue;
pub use inbound::{Inbound, SentNotice};
#[cfg(feature = "aws")]
pub use sqs::SqsQueue;
#[cfg(feature = "aws")]
pub use sqs_inbound::SqsInbound;

use crate::clock::Timestamp;
use crate::crypto::{decode_base64, encode_base64, Sealed};
use crate::domain::ClientId;
use crate::store::Audience;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Bytes one serialized job may take: SQS's 256 KiB less headroom for
/// message attributes and envelope.
pub const MAX_JOB_BYTES: usize = 240 * 1024;

/// A recipient id as it appears in a job's JSON: 36 characters, quotes and
/// comma.
const RECIPIENT_BYTES: usize = 39;

/// Recipients per job at most, so one job's work fits well inside one
/// fan-out invocation (the calculation is in `docs/architecture.md`).
pub const MAX_JOB_RECIPIENTS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Transient failures outlasted the retry budget.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The queue refused the jobs for good (missing queue, bad request).
    #[error("queue refused the jobs: {0}")]
    Refused(String),
    #[error("fan-out failed: {0}")]
    Delivery(String),
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Hands the jobs over for delivery; when this returns `Ok`, each job
    /// will be delivered at least once.
    async fn enqueue(&self, jobs: Vec<FanoutJob>) -> Result<(), QueueError>;
}

/// Deliver one publish's payload to these recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutJob {
    pub publish_id: String,
    pub kind: String,
    /// The plaintext `{"type","payload"}` sealed at rest, bound to the
    /// publish id (see [`FanoutJob::payload_context`]).
    pub payload: Sealed,
    pub recipients: Vec<ClientId>,
    /// From then on the message is not delivered (publish `ttl_secs`).
    pub expires_at: Option<Timestamp>,
    /// Set on a step of a tag or everyone audience: the worker first
    /// enumerates the next page of the audience (and `recipients` is
    /// empty), then delivers to it.
    pub step: Option<AudienceStep>,
    /// When the publish was accepted, carried through audience steps and
    /// hand-ons, so the fan-out can measure the delivery lag. `None` for a
    /// job queued before the field existed.
    pub accepted_at: Option<Timestamp>,
}

/// Where the enumeration of a tag or everyone audience stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceStep {
    pub audience: Audience,
    /// Clients created after the publish was accepted are left out.
    pub registered_by: Timestamp,
    /// The page this step writes.
    pub page: u32,
    /// Where the audience continues (`None`: from the start).
    pub page_token: Option<String>,
    /// Recipients on the pages before this one.
    pub so_far: u64,
}

/// The JSON form of a job, as it travels through a queue.
#[derive(Serialize, Deserialize)]
struct JobWire {
    publish_id: String,
    #[serde(rename = "type")]
    kind: String,
    sealed_payload: String,
    recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<StepWire>,
    /// Milliseconds since the epoch; absent from jobs queued before it was
    /// added, which still parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accepted_at: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct StepWire {
    audience: serde_json::Value,
    registered_by: i64,
    page: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_token: Option<String>,
    so_far: u64,
}

impl FanoutJob {
    /// The at-rest AAD of a publish's payload.
    pub fn payload_context(publish_id: &str) -> String {
        format!("pigeonhole/v1/publish:{publish_id}")
    }

    /// How many recipients one job with this payload may name, so that it
    /// fits a queue message.
    pub fn recipients_per_job(kind: &str, payload: &Sealed) -> usize {
        // Base64 grows the sealed payload by 4/3; 1 KiB covers the rest of
        // the envelope (an audience step's tags and page token included).
        let fixed = payload.to_bytes().len().div_ceil(3) * 4 + kind.len() + 1024;
        (MAX_JOB_BYTES.saturating_sub(fixed) / RECIPIENT_BYTES).clamp(1, MAX_JOB_RECIPIENTS)
    }

    /// Splits one publish, accepted at `accepted_at`, into jobs that each
    /// fit a queue message.
    pub fn plan(
        publish_id: &str,
        kind: &str,
        payload: &Sealed,
        recipients: &[ClientId],
        expires_at: Option<Timestamp>,
        accepted_at: Timestamp,
    ) -> Vec<FanoutJob> {
        recipients
            .chunks(Self::recipients_per_job(kind, payload))
            .map(|chunk| FanoutJob {
                publish_id: publish_id.to_string(),
                kind: kind.to_string(),
                payload: payload.clone(),
                recipients: chunk.to_vec(),
                expires_at,
                step: None,
                accepted_at: Some(accepted_at),
            })
            .collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&JobWire {
            publish_id: self.publish_id.clone(),
            kind: self.kind.clone(),
            sealed_payload: encode_base64(&self.payload.to_bytes()),
            recipients: self.recipients.iter().map(ClientId::to_string).collect(),
            expires_at: self.expires_at.map(Timestamp::millis),
            step: self.step.as_ref().map(|s| StepWire {
                audience: s.audience.to_json(),
                registered_by: s.registered_by.millis(),
                page: s.page,
                page_token: s.page_token.clone(),
                so_far: s.so_far,
            }),
            accepted_at: self.accepted_at.map(Timestamp::millis),
        })
        .expect("serializing a job cannot fail")
    }

    pub fn from_json(text: &str) -> Result<FanoutJob, String> {
        let wire: JobWire = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let payload = decode_base64(&wire.sealed_payload)
            .and_then(|b| Sealed::from_bytes(&b))
            .ok_or("sealed_payload is not a sealed blob")?;
        let recipients = wire
            .recipients
            .iter()
            .map(|r| ClientId::parse(r).ok_or_else(|| format!("recipient {r:?} is not a UUID")))
            .collect::<Result<_, _>>()?;
        let step = match wire.step {
            None => None,
            Some(s) => Some(AudienceStep {
                audience: Audience::from_json(&s.audience).ok_or("step.audience is not one")?,
                registered_by: Timestamp(s.registered_by),
                page: s.page,
                page_token: s.page_token,
                so_far: s.so_far,
            }),
        };
        Ok(FanoutJob {
            publish_id: wire.publish_id,
            kind: wire.kind,
            payload,
            recipients,
            expires_at: wire.expires_at.map(Timestamp),
            step,
            accepted_at: wire.accepted_at.map(Timestamp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{seal, Key};

    #[test]
    fn plans_jobs_that_fit_a_queue_message() {
        let payload = seal(&Key::random(), &vec![b'x'; 64 * 1024], b"");
        let recipients: Vec<ClientId> = (0..10_000).map(|_| ClientId::new()).collect();
        let jobs = FanoutJob::plan("p", "event", &payload, &recipients, None, Timestamp(0));
        assert!(jobs.len() > 1);
        assert!(jobs.iter().all(|j| j.to_json().len() <= MAX_JOB_BYTES));
        assert!(jobs
            .iter()
            .all(|j| j.recipients.len() <= MAX_JOB_RECIPIENTS));
        let all: Vec<ClientId> = jobs.iter().flat_map(|j| j.recipients.clone()).collect();
        assert_eq!(all, recipients);
    }

    #[test]
    fn small_publishes_are_one_job() {
        let payload = seal(&Key::random(), b"{}", b"");
        let recipients = [ClientId::new(), ClientId::new()];
        assert_eq!(
            FanoutJob::plan("p", "t", &payload, &recipients, None, Timestamp(0)).len(),
            1
        );
    }

    #[test]
    fn json_round_trip() {
        let job = FanoutJob {
            publish_id: "pub".into(),
            kind: "event".into(),
            payload: seal(&Key::random(), b"body", b""),
            recipients: vec![ClientId::new()],
            expires_at: None,
            step: None,
            accepted_at: None,
        };
        assert_eq!(FanoutJob::from_json(&job.to_json()).unwrap(), job);
        assert!(!job.to_json().contains("accepted_at"));
        let step = FanoutJob {
            recipients: vec![],
            expires_at: Some(Timestamp(1_700_000_000_000)),
            step: Some(AudienceStep {
                audience: Audience::Tags(vec!["eu".into(), "door".into()]),
                registered_by: Timestamp(1_699_999_999_000),
                page: 3,
                page_token: Some("t0k".into()),
                so_far: 2_000,
            }),
            accepted_at: Some(Timestamp(1_699_999_999_000)),
            ..job
        };
        assert_eq!(FanoutJob::from_json(&step.to_json()).unwrap(), step);
        assert!(FanoutJob::from_json("{}").is_err());
    }

    #[test]
    fn jobs_queued_before_accepted_at_existed_still_parse() {
        let payload = encode_base64(&seal(&Key::random(), b"body", b"").to_bytes());
        let id = ClientId::new();
        let old = format!(
            r#"{{"publish_id":"p","type":"event","sealed_payload":"{payload}","recipients":["{id}"]}}"#
        );
        let job = FanoutJob::from_json(&old).unwrap();
        assert_eq!(job.accepted_at, None);
        assert_eq!(job.recipients, [id]);
        let planned = FanoutJob::plan("p", "event", &job.payload, &[id], None, Timestamp(42));
        let wire: serde_json::Value = serde_json::from_str(&planned[0].to_json()).unwrap();
        assert_eq!(wire["accepted_at"], 42);
        assert_eq!(
            FanoutJob::from_json(&planned[0].to_json()).unwrap(),
            planned[0]
        );
    }
}
