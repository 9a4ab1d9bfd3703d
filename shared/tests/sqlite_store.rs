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
    let touched = store.touch_client(id, Timestamp(9), None).await.unwrap();
    assert!(matches!(touched, Touch::Known(_)));
    holder.join().unwrap();

    // Longer than the budget: unavailable (a 503), in time.
    let holder = hold_write_lock(path, Duration::from_millis(3_000));
    let started = Instant::now();
    let touched = pigeonhole::retry::within(
        started + Duration::from_millis(1_500),
        store.touch_client(id, Timestamp(10), None),
    )
    .await;
    assert!(
        matches!(touched, Err(StoreError::Unavailable(_))),
        "{touched:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(2_600));
    holder.join().unwrap();
}
