//! A single self-overwriting status line on stderr, shown only when stderr is
//! a terminal. Cleared before anything else is printed and when dropped.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::time::Instant;

pub struct StatusLine {
    enabled: bool,
    shown: bool,
}

impl StatusLine {
    /// Enabled when stderr is a terminal.
    pub fn stderr() -> StatusLine {
        StatusLine {
            enabled: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn show(&mut self, text: &str) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{text}");
            let _ = err.flush();
            self.shown = true;
        }
    }

    pub fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }

    /// Sleeps `delay`. On a terminal the status line counts down meanwhile,
    /// `text(whole seconds left)` redrawn each time the number changes.
    pub async fn countdown(&mut self, delay: Duration, text: impl Fn(u64) -> String) {
        if !self.enabled {
            tokio::time::sleep(delay).await;
            return;
        }
        let end = Instant::now() + delay;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let whole = left.as_secs_f64().ceil().max(1.0) as u64;
            self.show(&text(whole));
            // Wake when the displayed number changes.
            let tick = left.saturating_sub(Duration::from_secs(whole - 1));
            tokio::time::sleep(tick.max(Duration::from_millis(1))).await;
        }
    }

    /// Prints a line on stderr without garbling the status line.
    pub fn note(&mut self, text: &str) {
        self.clear();
        eprintln!("{text}");
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        self.clear();
    }
}

/// True for the characters that must never reach a terminal as they are:
/// Unicode categories Cc (controls: C0, DEL, C1, so escape sequences, tabs
/// and newlines) and Cf (format: bidi overrides and isolates, zero-width
/// spaces and joiners, the byte-order mark, tag characters …), which can
/// rewrite the screen or make one name look like another.
pub fn unprintable(c: char) -> bool {
    use unicode_general_category::{get_general_category, GeneralCategory};
    matches!(
        get_general_category(c),
        GeneralCategory::Control | GeneralCategory::Format
    )
}

/// Text that came from the network, made safe for a terminal: every control
/// or format character (see [`unprintable`]) is shown escaped, `\u{1b}`,
/// so it can neither act on the terminal nor hide, and an operator sees
/// that it was there.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if unprintable(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// JSON text (from `serde_json`) with the control and format characters it
/// leaves raw inside strings (DEL, C1 controls, Cf) written as `\uXXXX`
/// escapes: the same JSON value, but safe to print on a terminal. serde_json
/// already escapes U+0000–U+001F inside strings, so a raw newline is layout.
pub fn json_for_terminal(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c != '\n' && unprintable(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_neutralised() {
        assert_eq!(printable("a\x1b[2Jb\nc"), "a\\u{1b}[2Jb\\u{a}c");
        assert_eq!(printable("café ✓ 日本"), "café ✓ 日本");
        // C1 CSI, DEL, and format characters: bidi override and isolate,
        // zero-width space and joiner, BOM, soft hyphen, a tag character.
        assert_eq!(printable("x\u{9b}31m\u{7f}"), "x\\u{9b}31m\\u{7f}");
        assert_eq!(printable("admin\u{202e}txt.exe"), "admin\\u{202e}txt.exe");
        for c in [
            '\u{2066}',
            '\u{200b}',
            '\u{200d}',
            '\u{feff}',
            '\u{ad}',
            '\u{e0041}',
        ] {
            let shown = printable(&format!("a{c}b"));
            assert!(!shown.contains(c), "U+{:04X}: {shown:?}", c as u32);
            assert!(shown.starts_with("a\\u{"), "{shown:?}");
        }
        // A variation selector (Mn) and a no-break space (Zs) are left alone.
        assert_eq!(printable("❤\u{fe0f}\u{a0}x"), "❤\u{fe0f}\u{a0}x");
    }

    #[test]
    fn json_stays_the_same_value_without_raw_escapes() {
        let value = serde_json::json!({
            "name": "evil\u{1b}[2J\u{9b}\u{202e}\u{e0041}\u{7f}é",
            "n": [1, 2],
        });
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let shown = json_for_terminal(&pretty);
        assert!(
            shown.chars().all(|c| c == '\n' || !unprintable(c)),
            "{shown:?}"
        );
        assert!(
            shown.contains("\\u009b") && shown.contains("\\u202e"),
            "{shown}"
        );
        assert!(
            shown.contains("\\udb40\\udc41"),
            "astral: a surrogate pair: {shown}"
        );
        assert!(shown.contains('é'), "other text stays as it is: {shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, value);
    }
}
