//! Which SQLite failures are worth another attempt, as data.
//!
//! Only contention is: another connection (an operator's `sqlite3` shell,
//! a second process) holding the write lock past the busy timeout.
//! Everything else (a full disk, a corrupt file, a constraint) repeats.

use super::Class;
use rusqlite::ErrorCode;

pub const SQLITE_ERRORS: &[(ErrorCode, Class)] = &[
    (ErrorCode::DatabaseBusy, Class::Transient),
    (ErrorCode::DatabaseLocked, Class::Transient),
    (ErrorCode::ConstraintViolation, Class::Permanent),
    (ErrorCode::DiskFull, Class::Permanent),
    (ErrorCode::DatabaseCorrupt, Class::Permanent),
    (ErrorCode::ReadOnly, Class::Permanent),
];

pub fn classify(error: &rusqlite::Error) -> Class {
    match error.sqlite_error_code() {
        Some(code) => SQLITE_ERRORS
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(Class::Permanent, |(_, class)| *class),
        None => Class::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn contention_is_transient_and_the_rest_is_not() {
        let rows = [
            (rusqlite::ffi::SQLITE_BUSY, Class::Transient),
            (rusqlite::ffi::SQLITE_LOCKED, Class::Transient),
            (rusqlite::ffi::SQLITE_CONSTRAINT, Class::Permanent),
            (rusqlite::ffi::SQLITE_FULL, Class::Permanent),
            (rusqlite::ffi::SQLITE_CORRUPT, Class::Permanent),
            (rusqlite::ffi::SQLITE_READONLY, Class::Permanent),
        ];
        for (code, class) in rows {
            assert_eq!(classify(&error(code)), class, "code {code}");
        }
        assert_eq!(
            classify(&rusqlite::Error::QueryReturnedNoRows),
            Class::Permanent
        );
    }
}
