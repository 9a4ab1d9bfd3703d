//! A single self-overwriting status line on stderr, shown only when stderr is
//! a terminal. Cleared before anything else is printed and when dropped.

use std::io::{IsTerminal, Write};

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

/// Replaces control characters (terminal escapes included) in text that came
/// from the network before it reaches a terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_are_neutralised() {
        assert_eq!(super::printable("a\x1b[2Jb\nc"), "a\u{FFFD}[2Jb\u{FFFD}c");
        assert_eq!(super::printable("café ✓"), "café ✓");
    }
}
