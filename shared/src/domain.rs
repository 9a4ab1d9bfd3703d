//! The nouns of the service and the limits that apply to them.

use unicode_general_category::{get_general_category, GeneralCategory};
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
/// Tags one client may carry.
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 64;
/// Tags one publish may name (`to_tags`).
pub const MAX_AUDIENCE_TAGS: usize = 10;
/// The longest `ttl_secs` a publish may ask for: 30 days.
pub const MAX_TTL_SECS: u64 = 30 * 86_400;
/// How long a publish's delivery status stays readable: as long as the
/// idempotency markers it is computed from.
pub const PUBLISH_STATUS_DAYS: i64 = 15;
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

/// Checks a tag: 1 to 64 characters of `a-z 0-9 _ . -`.
pub fn valid_tag(tag: &str) -> bool {
    (1..=MAX_TAG_CHARS).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
}

/// Checks a message `type`: 1 to 64 characters.
pub fn valid_type(kind: &str) -> bool {
    let chars = kind.chars().count();
    (1..=MAX_TYPE_CHARS).contains(&chars)
}

/// The first character of `text` that must not appear in text a person
/// reads (a client's `name`, and later tags): Unicode general categories Cc
/// (controls: C0, DEL, C1, so terminal escapes, tabs and newlines) and Cf
/// (format: bidi overrides and isolates, zero-width spaces and joiners,
/// the byte-order mark, the soft hyphen, ...). Such characters let data
/// rewrite an operator's terminal or disguise one name as another.
pub fn unprintable_char(text: &str) -> Option<char> {
    text.chars().find(|&c| {
        matches!(
            get_general_category(c),
            GeneralCategory::Control | GeneralCategory::Format
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_format_characters_are_unprintable() {
        for c in [
            '\0',
            '\u{7}',
            '\t',
            '\n',
            '\r',
            '\u{1b}',
            '\u{7f}',
            '\u{85}',
            '\u{9b}',
            '\u{ad}',
            '\u{600}',
            '\u{61c}',
            '\u{180e}',
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{202a}',
            '\u{202b}',
            '\u{202c}',
            '\u{202d}',
            '\u{202e}',
            '\u{2060}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{feff}',
            '\u{fff9}',
            '\u{e0001}',
            '\u{e0041}',
        ] {
            let text = format!("ab{c}cd");
            assert_eq!(unprintable_char(&text), Some(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn ordinary_text_is_printable() {
        for text in [
            "",
            "laptop",
            "Zoë's phone 📱",
            "Ñandú — café ☕ (2)",
            "日本語のノート",
            "עברית عربي",
            "flag 🇫🇷 and thumbs 👍🏽",
            // A variation selector (Mn) and a no-break space (Zs) are fine.
            "❤\u{fe0f}\u{a0}x",
        ] {
            assert_eq!(unprintable_char(text), None, "{text:?}");
        }
        assert_eq!(unprintable_char("a\u{202e}b\u{7}"), Some('\u{202e}'));
    }

    #[test]
    fn type_length_is_in_characters() {
        assert!(valid_type(&"é".repeat(MAX_TYPE_CHARS)));
        assert!(!valid_type(""));
        assert!(!valid_type(&"t".repeat(MAX_TYPE_CHARS + 1)));
    }
}
