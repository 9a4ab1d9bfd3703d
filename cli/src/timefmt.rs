//! Human-readable times: "2 min ago", "never".

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// How long ago, from a number of elapsed seconds.
pub fn ago(elapsed_secs: i64) -> String {
    match elapsed_secs {
        i64::MIN..=4 => "just now".into(),
        5..=59 => format!("{elapsed_secs} s ago"),
        60..=3599 => format!("{} min ago", elapsed_secs / 60),
        3600..=86_399 => format!("{} h ago", elapsed_secs / 3600),
        _ => format!("{} d ago", elapsed_secs / 86_400),
    }
}

pub fn parse(timestamp: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(timestamp, &Rfc3339).ok()
}

/// "never" for a client never seen, the raw text if it does not parse.
pub fn last_seen(timestamp: Option<&str>, now: OffsetDateTime) -> String {
    match timestamp {
        None => "never".into(),
        Some(ts) => match parse(ts) {
            Some(t) => ago((now - t).whole_seconds()),
            None => ts.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(ago(-30), "just now");
        assert_eq!(ago(0), "just now");
        assert_eq!(ago(4), "just now");
        assert_eq!(ago(5), "5 s ago");
        assert_eq!(ago(59), "59 s ago");
        assert_eq!(ago(60), "1 min ago");
        assert_eq!(ago(150), "2 min ago");
        assert_eq!(ago(3599), "59 min ago");
        assert_eq!(ago(3600), "1 h ago");
        assert_eq!(ago(86_399), "23 h ago");
        assert_eq!(ago(86_400), "1 d ago");
        assert_eq!(ago(86_400 * 40), "40 d ago");
    }

    #[test]
    fn from_timestamps() {
        let now = parse("2026-11-25T23:52:10.000Z").unwrap();
        assert_eq!(last_seen(None, now), "never");
        assert_eq!(
            last_seen(Some("2026-11-25T23:50:01.517Z"), now),
            "2 min ago"
        );
        assert_eq!(last_seen(Some("2026-11-25T23:52:09.000Z"), now), "just now");
        assert_eq!(last_seen(Some("2026-11-24T23:52:10.000Z"), now), "1 d ago");
        assert_eq!(last_seen(Some("garbled"), now), "garbled");
    }
}
