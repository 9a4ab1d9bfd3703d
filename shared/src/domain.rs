//! The nouns of the service and the limits that apply to them.

use uuid::Uuid;

/// Largest request body of every endpoint but publish.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest publish body: room for [`MAX_RECIPIENTS`] ids (39 bytes each as
/// JSON) beside a [`MAX_PAYLOAD_BYTES`] payload.
pub const MAX_PUBLISH_BODY_BYTES: usize = 1024 * 1024;
/// Largest poll response body: under Lambda's 6 MB limit on synchronous
/// responses, with room for API Gateway's envelope.
pub const MAX_POLL_BODY_BYTES: usize = 5 * 1024 * 1024;
/// Largest publish payload, measured as compact JSON.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
pub const MAX_RECIPIENTS: usize = 10_000;
pub const MAX_TYPE_CHARS: usize = 64;
pub const MAX_NAME_CHARS: usize = 100;
pub const FINGERPRINT_CHARS: std::ops::RangeInclusive<usize> = 8..=256;
pub const DEFAULT_POLL_LIMIT: u32 = 100;
pub const MAX_POLL_LIMIT: u32 = 500;
pub const DEFAULT_LIST_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 1000;
/// A client counts as online this long after its last authenticated request.
pub const ONLINE_WINDOW_MS: i64 = 120_000;

/// A client's identity: a random (v4) UUID, so ids cannot be guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(Uuid);

impl ClientId {
    pub fn new() -> ClientId {
        ClientId(Uuid::new_v4())
    }

    pub fn parse(text: &str) -> Option<ClientId> {
        Uuid::parse_str(text.trim()).ok().map(ClientId)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for ClientId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Always the lowercase hyphenated form, whatever the client sent.
        self.0.hyphenated().fmt(f)
    }
}

/// A position in one client's message sequence. The first message is 1;
/// 0 means "before everything".
pub type Seq = u64;

/// Checks a message `type`: 1 to 64 characters.
pub fn valid_type(kind: &str) -> bool {
    let chars = kind.chars().count();
    (1..=MAX_TYPE_CHARS).contains(&chars)
}
