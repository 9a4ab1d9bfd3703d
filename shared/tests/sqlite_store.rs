//! The embedded SQLite store held to the store contract, plus what only a
//! file-backed store has to show: data survives reopening.

#[macro_use]
mod store_contract;

use pigeonhole::clock::Timestamp;
use pigeonhole::store::sqlite::SqliteStore;
use pigeonhole::store::Store;
use std::sync::Arc;
use store_contract::Subject;

async fn fresh() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("test.db")).unwrap();
    Subject {
        store: Arc::new(store),
        _keep: Box::new(dir),
    }
}

store_contract_tests!(fresh());

#[tokio::test]
async fn data_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    let candidate = store_contract::client("kept", Timestamp(5));
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .register_client([4; 32], candidate.clone())
            .await
            .unwrap();
    }
    let reopened = SqliteStore::open(&path).unwrap();
    let again = reopened
        .register_client([4; 32], store_contract::client("new", Timestamp(6)))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.client, candidate);
}

#[tokio::test]
async fn refuses_a_database_from_a_newer_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    drop(SqliteStore::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteStore::open(&path)
        .err()
        .expect("a newer schema is refused");
    assert!(err.to_string().contains("newer"), "{err}");
}

/// Holds the database's write lock from another connection (an operator's
/// `sqlite3` shell, say) for `hold`.
fn hold_write_lock(
    path: std::path::PathBuf,
    hold: std::time::Duration,
) -> std::thread::JoinHandle<()> {
    let (locked, wait) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked.send(()).unwrap();
        std::thread::sleep(hold);
        conn.execute_batch("COMMIT").unwrap();
    });
    wait.recv().unwrap();
    holder
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_database_is_waited_out_within_the_budget() {
    use pigeonhole::store::{StoreError, Touch};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    let store = SqliteStore::open(&path).unwrap();
    let id = store
        .register_client([4; 32], store_contract::client("busy", Timestamp(5)))
        .await
        .unwrap()
        .client
        .id;

    // Longer than SQLite's own busy timeout (1 s), shorter than the budget.
    let holder = hold_write_lock(path.clone(), Duration::from_millis(1_800));
    let touched = store.touch_client(id, 0, Timestamp(9), None).await.unwrap();
    assert!(matches!(touched, Touch::Known(_)));
    holder.join().unwrap();

    // Longer than the budget: unavailable (a 503), in time.
    let holder = hold_write_lock(path, Duration::from_millis(3_000));
    let started = Instant::now();
    let touched = pigeonhole::retry::within(
        started + Duration::from_millis(1_500),
        store.touch_client(id, 0, Timestamp(10), None),
    )
    .await;
    assert!(
        matches!(touched, Err(StoreError::Unavailable(_))),
        "{touched:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(2_600));
    holder.join().unwrap();
}

/// The schema of version 2, before credential generations existed.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS clients (
    client_id    TEXT PRIMARY KEY,
    name         TEXT,
    wrapped_key  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER,
    acked        INTEGER NOT NULL DEFAULT 0,
    inbox_head   INTEGER NOT NULL DEFAULT 0,
    outbox_head  INTEGER NOT NULL DEFAULT 0,
    poll_tat     INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS clients_by_creation ON clients (created_at, client_id);
CREATE TABLE IF NOT EXISTS fingerprints (
    fingerprint_hash BLOB PRIMARY KEY,
    client_id        TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    client_id    TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    nonce        BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    tag          BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    dedup_key    TEXT NOT NULL,
    dedup_digest BLOB NOT NULL,
    PRIMARY KEY (client_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS inbox_dedup ON inbox (client_id, dedup_key);
CREATE TABLE IF NOT EXISTS outbox (
    client_id    TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    nonce        BLOB NOT NULL,
    ciphertext   BLOB NOT NULL,
    tag          BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    dedup_key    TEXT NOT NULL,
    dedup_digest BLOB NOT NULL,
    PRIMARY KEY (client_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS outbox_dedup ON outbox (client_id, dedup_key);
CREATE INDEX IF NOT EXISTS inbox_by_age ON inbox (created_at);
CREATE INDEX IF NOT EXISTS outbox_by_age ON outbox (created_at);
CREATE TABLE IF NOT EXISTS publish_keys (
    idempotency_key TEXT PRIMARY KEY,
    publish_id      TEXT NOT NULL,
    recipients      INTEGER NOT NULL,
    digest          BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    completed       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
";

#[tokio::test]
async fn a_version_2_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let id = pigeonhole::domain::ClientId::new();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V2).unwrap();
        conn.execute(
            "INSERT INTO clients (client_id, name, wrapped_key, created_at, inbox_head)
             VALUES (?1, 'old', x'00', 5, 1)",
            [id.to_string()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO inbox (client_id, seq, kind, nonce, ciphertext, tag, created_at, dedup_key, dedup_digest)
             VALUES (?1, 1, 'event', zeroblob(12), x'01', zeroblob(16), 5, 'k', x'00')",
            [id.to_string()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO outbox (client_id, seq, kind, nonce, ciphertext, tag, created_at, dedup_key, dedup_digest)
             VALUES (?1, 1, 'battery-report', zeroblob(12), x'01', zeroblob(16), 5, 'k', x'00')",
            [id.to_string()],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    let touched = store.touch_client(id, 0, Timestamp(9), None).await.unwrap();
    let pigeonhole::store::Touch::Known(state) = touched else {
        panic!("the old client is known: {touched:?}");
    };
    assert_eq!((state.record.generation, state.head), (0, 1));
    assert!(state.record.retired_keys.is_empty());
    let messages = store
        .read(pigeonhole::store::Mailbox::Inbox, id, 0, 10)
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].key_generation, 0);
    let sent = store
        .read(pigeonhole::store::Mailbox::Outbox, id, 0, 10)
        .await
        .unwrap();
    assert_eq!(sent[0].kind, "sealed", "a send's type no longer in clear");
    drop(store);
    // Opening again finds the columns in place.
    SqliteStore::open(&path).unwrap();
}

#[tokio::test]
async fn a_deleted_client_leaves_nothing_readable_in_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    let store = SqliteStore::open(&path).unwrap();
    let name = format!("unmistakable-{}", pigeonhole::domain::ClientId::new());
    let id = store
        .register_client([9; 32], store_contract::client(&name, Timestamp(5)))
        .await
        .unwrap()
        .client
        .id;
    let files = || -> Vec<u8> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flat_map(|f| std::fs::read(f.unwrap().path()).unwrap())
            .collect()
    };
    let contains = |haystack: &[u8], needle: &str| {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    assert!(contains(&files(), &name), "the name is stored before");
    assert_eq!(
        store.delete_client(id).await.unwrap(),
        pigeonhole::store::Deleted::Deleted
    );
    let after = files();
    assert!(!contains(&after, &name), "the name is gone from every file");
    assert!(!contains(&after, &id.to_string()), "so is the client id");
}
