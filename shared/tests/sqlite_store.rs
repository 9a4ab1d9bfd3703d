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
