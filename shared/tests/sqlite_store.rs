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

/// A store in a fresh directory with one client registered: the
/// directory (keep it alive), the database's path, the store, the client.
async fn store_with_client(
    name: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    SqliteStore,
    pigeonhole::domain::ClientId,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    let store = SqliteStore::open(&path).unwrap();
    let id = store
        .register_client([4; 32], store_contract::client(name, Timestamp(5)))
        .await
        .unwrap()
        .client
        .id;
    (dir, path, store, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_database_is_waited_out_within_the_budget() {
    use pigeonhole::store::{AckOutcome, StoreError};
    use std::time::{Duration, Instant};
    let (_dir, path, store, id) = store_with_client("busy").await;

    // An ack is a write that must reach the file before it answers.
    // Longer than SQLite's own busy timeout (1 s), shorter than the budget.
    let holder = hold_write_lock(path.clone(), Duration::from_millis(1_800));
    let acked = store.acknowledge(id, 0, 0, Timestamp(9)).await.unwrap();
    assert_eq!(acked, AckOutcome::Acked { cursor: 0 });
    holder.join().unwrap();

    // Longer than the budget: unavailable (a 503), in time.
    let holder = hold_write_lock(path, Duration::from_millis(3_000));
    let started = Instant::now();
    let acked = pigeonhole::retry::within(
        started + Duration::from_millis(1_500),
        store.acknowledge(id, 0, 0, Timestamp(10)),
    )
    .await;
    assert!(
        matches!(acked, Err(StoreError::Unavailable(_))),
        "{acked:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(2_600));
    holder.join().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_poll_needs_no_write_lock() {
    use pigeonhole::store::Touch;
    use std::time::{Duration, Instant};
    let (_dir, path, store, id) = store_with_client("idle").await;
    assert!(matches!(
        store.touch_client(id, 0, Timestamp(8), None).await.unwrap(),
        Touch::Known(_)
    ));

    // An operator's shell holds the write lock: polls still answer at once.
    let holder = hold_write_lock(path, Duration::from_millis(1_500));
    let started = Instant::now();
    for at in 9..100 {
        let touched = store
            .touch_client(id, 0, Timestamp(at), None)
            .await
            .unwrap();
        assert!(matches!(touched, Touch::Known(_)));
    }
    assert!(started.elapsed() < Duration::from_millis(1_000));
    holder.join().unwrap();
}

#[tokio::test]
async fn one_process_owns_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    let first = SqliteStore::open(&path).unwrap();
    let err = SqliteStore::open(&path)
        .err()
        .expect("a second owner is refused");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(first);
    SqliteStore::open(&path).expect("free again once closed");
}

#[tokio::test]
async fn last_seen_and_rate_limits_are_written_behind_and_kept_at_close() {
    use pigeonhole::rate_limit::PollRateLimit;
    use pigeonhole::store::{Bucket, RateCharge, Touch};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    let charge = Some(RateCharge {
        bucket: Bucket::Poll,
        limit: PollRateLimit::per_minute(2).unwrap(),
    });
    let store = SqliteStore::open(&path).unwrap();
    let id = store
        .register_client([4; 32], store_contract::client("seen", Timestamp(5)))
        .await
        .unwrap()
        .client
        .id;
    for at in [1_000, 2_000] {
        let touched = store.touch_client(id, 0, Timestamp(at), charge).await;
        assert!(matches!(touched.unwrap(), Touch::Known(_)));
    }
    // A listing shows the contact at once, not after the write-behind.
    let listed = store.list_clients(10, None).await.unwrap().unwrap();
    assert_eq!(listed.clients[0].last_seen_at, Some(Timestamp(2_000)));

    // Read back from the file by a new owner: the limit is still spent.
    let reseen = store.touch_client(id, 0, Timestamp(3_000), charge).await;
    assert!(matches!(reseen.unwrap(), Touch::RateLimited { .. }));
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    let refused = store.touch_client(id, 0, Timestamp(3_000), charge).await;
    assert!(
        matches!(refused.unwrap(), Touch::RateLimited { .. }),
        "the limiter's state survives a restart"
    );
    let listed = store.list_clients(10, None).await.unwrap().unwrap();
    assert_eq!(listed.clients[0].last_seen_at, Some(Timestamp(2_000)));
}

#[tokio::test]
async fn soft_state_reaches_the_file_without_a_close() {
    use pigeonhole::store::Touch;
    let (_dir, path, store, id) = store_with_client("seen").await;
    let touched = store.touch_client(id, 0, Timestamp(7_000), None).await;
    assert!(matches!(touched.unwrap(), Touch::Known(_)));
    // Another connection (the sqlite3 shell, or a crash that never closes
    // the store) sees it within the write-behind interval.
    let deadline = std::time::Instant::now() + pigeonhole::store::sqlite::WRITE_BEHIND * 3;
    loop {
        let seen: Option<i64> = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT last_seen_at FROM clients WHERE client_id = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        if seen == Some(7_000) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not written behind: {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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
    // Version 4: old messages never expire; acks keep a history; tags.
    assert_eq!(messages[0].expires_at, None);
    store.acknowledge(id, 0, 1, Timestamp(9)).await.unwrap();
    let states = store.ack_states(&[id]).await.unwrap();
    assert_eq!(
        states[&id].history,
        vec![pigeonhole::store::AckMark {
            cursor: 1,
            at: Timestamp(9)
        }]
    );
    let tags = vec!["eu".to_string()];
    assert_eq!(store.set_tags(id, &tags).await.unwrap(), Some(tags));
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
    // Its tags, and the marker cleanup keeps of a removed message, too.
    let tags = ["door-sensors".to_string()];
    store.set_tags(id, &tags).await.unwrap();
    store_contract::append_expiring(&store, id, "publish:p1", None).await;
    store.acknowledge(id, 0, 1, Timestamp(6)).await.unwrap();
    let purged = store
        .purge(pigeonhole::store::Cutoffs {
            acked_before: Timestamp(i64::MAX),
            sent_before: Timestamp(0),
            keys_before: Timestamp(0),
            now: Timestamp(0),
            publishes_before: Timestamp(0),
        })
        .await
        .unwrap();
    assert_eq!(purged.inbox, 1, "only the marker is left");
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

/// Cleanup forgets publish records, and the markers their status is
/// computed from, once they are older than `publishes_before` (DynamoDB
/// leaves that to its tables' TTL, so this is not in the contract).
#[tokio::test]
async fn purge_forgets_old_publish_records_and_markers() {
    use pigeonhole::store::*;
    use store_contract::T0;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.db");
    let store = SqliteStore::open(&path).unwrap();
    let id = store_contract::registered(&store, "a", T0).await;
    // Created at T0 + 1 and T0 + 2.
    store_contract::append_expiring(&store, id, "publish:old", None).await;
    store_contract::append_expiring(&store, id, "publish:new", None).await;
    store.acknowledge(id, 0, 2, T0).await.unwrap();
    for (publish_id, created_at) in [("old", T0.plus_millis(1)), ("new", T0.plus_millis(2))] {
        store
            .save_publish(&PublishHeader {
                publish_id: publish_id.into(),
                kind: "event".into(),
                created_at,
                audience: Audience::All,
                expires_at: None,
                enumerated: None,
            })
            .await
            .unwrap();
        let page = RecipientPage {
            number: 0,
            recipients: vec![id],
            next: None,
            continued: false,
        };
        store.save_recipient_page(publish_id, page).await.unwrap();
    }

    let purged = store
        .purge(Cutoffs {
            acked_before: T0.plus_millis(1_000),
            sent_before: Timestamp(0),
            keys_before: Timestamp(0),
            now: Timestamp(0),
            publishes_before: T0.plus_millis(2),
        })
        .await
        .unwrap();
    assert_eq!(purged.inbox, 2);
    assert_eq!(store.load_publish("old").await.unwrap(), None);
    let kept = store.load_publish("new").await.unwrap().expect("kept");
    assert_eq!(kept.pages.len(), 1);
    let ids = [id];
    let seqs = |key: &'static str| store.appended_seqs(Mailbox::Inbox, &ids, key);
    assert!(seqs("publish:old").await.unwrap().is_empty());
    assert_eq!(
        seqs("publish:new").await.unwrap(),
        std::collections::HashMap::from([(id, 2)])
    );
    let pages: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM publish_pages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pages, 1, "the old publish's pages went with it");
}

/// More expired messages than one cleanup batch reads, the first batches
/// all acknowledged (left alone): cleanup goes on past them.
#[tokio::test(flavor = "multi_thread")]
async fn tombstoning_goes_on_past_batches_of_acknowledged_messages() {
    use pigeonhole::store::*;
    use store_contract::T0;
    let subject = fresh().await;
    let store = subject.store.as_ref();
    let read = store_contract::registered(store, "read", T0).await;
    let unread = store_contract::registered(store, "unread", T0).await;
    for i in 0..700 {
        let key = format!("m{i}");
        store_contract::append_expiring(store, read, &key, Some(T0.plus_millis(10))).await;
    }
    store.acknowledge(read, 0, 700, T0).await.unwrap();
    for i in 0..300 {
        let key = format!("m{i}");
        store_contract::append_expiring(store, unread, &key, Some(T0.plus_millis(20))).await;
    }
    let purged = store
        .purge(Cutoffs {
            acked_before: Timestamp(0),
            sent_before: Timestamp(0),
            keys_before: Timestamp(0),
            now: T0.plus_millis(100),
            publishes_before: Timestamp(0),
        })
        .await
        .unwrap();
    assert_eq!((purged.expired, purged.inbox), (300, 0));
    let left = store.read(Mailbox::Inbox, unread, 0, 500).await.unwrap();
    assert!(left.iter().all(|m| m.kind.is_empty()));
    let acknowledged = store.read(Mailbox::Inbox, read, 0, 1000).await.unwrap();
    assert_eq!(acknowledged.len(), 700);
    assert!(acknowledged.iter().all(|m| m.kind == "event"));
}

/// One damaged row (here: a retired key an operator's hand edit broke) must
/// not stop a fan-out to everyone else: the lookup leaves it out, as if the
/// client did not exist, and returns the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_row_that_cannot_be_read_is_left_out_of_lookups() {
    let (_dir, path, store, damaged) = store_with_client("damaged").await;
    let healthy = store
        .register_client([5; 32], store_contract::client("healthy", Timestamp(6)))
        .await
        .unwrap()
        .client
        .id;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let changed = conn
        .execute(
            "UPDATE clients SET retired_keys = 'not a retired key' WHERE client_id = ?1",
            [damaged.to_string()],
        )
        .unwrap();
    assert_eq!(changed, 1);

    let found = store.load_clients(&[damaged, healthy]).await.unwrap();
    let ids: Vec<_> = found.iter().map(|c| c.id).collect();
    assert_eq!(ids, [healthy]);
}
