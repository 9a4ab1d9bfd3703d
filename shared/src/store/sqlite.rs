//! The embedded store: one SQLite file in WAL mode.
//!
//! SQLite rather than a key-value engine because its transactions give the
//! sequence guarantee for free (allocate and insert in one write
//! transaction), it survives `kill -9` with WAL, and an operator can inspect
//! the file with the `sqlite3` shell. Tables mirror the DynamoDB design:
//! `clients` keyed by id (holding the cursor, the heads of both sequences and
//! the rate-limit state on the same row, as one DynamoDB item would),
//! `fingerprints` as the lookup, and `inbox`/`outbox` keyed `(client_id, seq)`.
//! Tags live in `client_tags` keyed `(tag, client_id)`, as DynamoDB's tag
//! index is; publish status in `publishes` and `publish_pages`; and
//! `inbox_markers` keeps the idempotency key of an inbox message cleanup
//! removed, as DynamoDB's dedup table outlives the message it marks.
//!
//! One connection behind a mutex serves all requests on the blocking thread
//! pool: SQLite allows one writer at a time anyway, and every statement here
//! is a primary-key lookup.
//!
//! One process owns the file (a lock file next to it says so): it keeps the
//! rows of active clients in memory ([`soft_state`]), so an empty poll is
//! answered without touching the file, and writes last-seen times and rate
//! limits behind, once a [`WRITE_BEHIND`] interval.

mod soft_state;

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use soft_state::{Entry, Soft, SoftState};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Mutex, Weak};
use std::time::Duration;

/// How often last-seen times and rate-limit state reach the file: what a
/// crash may forget of them.
pub const WRITE_BEHIND: Duration = Duration::from_secs(1);

/// Clients whose rows are kept in memory at most (about 300 bytes each):
/// past it, the ones with nothing to write back are dropped and read again
/// at their next poll.
const CACHED_CLIENTS: usize = 100_000;

/// 2 added publish idempotency keys and the age indexes cleanup uses;
/// 3 credential generations, retired keys, the send limit and request
/// counters; 4 message expiry, the acknowledgement history, tags, publish
/// status records and the markers of removed inbox messages (see
/// [`COLUMNS_ADDED`]).
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clients (
    client_id    TEXT PRIMARY KEY,
    name         TEXT,
    wrapped_key  BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER,
    acked        INTEGER NOT NULL DEFAULT 0,
    inbox_head   INTEGER NOT NULL DEFAULT 0,
    outbox_head  INTEGER NOT NULL DEFAULT 0,
    poll_tat     INTEGER,
    send_tat     INTEGER,
    generation   INTEGER NOT NULL DEFAULT 0,
    retired_keys TEXT,
    ack_history  TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS clients_by_creation ON clients (created_at, client_id);
CREATE TABLE IF NOT EXISTS fingerprints (
    fingerprint_hash BLOB PRIMARY KEY,
    client_id        TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fingerprints_by_client ON fingerprints (client_id);
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
    key_generation INTEGER NOT NULL DEFAULT 0,
    expires_at   INTEGER,
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
    key_generation INTEGER NOT NULL DEFAULT 0,
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
CREATE TABLE IF NOT EXISTS request_counts (
    counter    TEXT PRIMARY KEY,
    count      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client_tags (
    tag       TEXT NOT NULL,
    client_id TEXT NOT NULL,
    PRIMARY KEY (tag, client_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS client_tags_by_client ON client_tags (client_id);
CREATE TABLE IF NOT EXISTS publishes (
    publish_id TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    audience   TEXT NOT NULL,
    expires_at INTEGER,
    pages      INTEGER,
    recipients INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS publishes_by_age ON publishes (created_at);
CREATE TABLE IF NOT EXISTS publish_pages (
    publish_id TEXT NOT NULL,
    number     INTEGER NOT NULL,
    recipients TEXT NOT NULL,
    next       TEXT,
    continued  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (publish_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox_markers (
    client_id    TEXT NOT NULL,
    dedup_key    TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    dedup_digest BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (client_id, dedup_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_markers_by_age ON inbox_markers (created_at);
";

/// Indexes on columns of [`COLUMNS_ADDED`]: created once those exist.
///
/// Cleanup looks for expired messages not yet made tombstones (whose `kind`
/// is empty); the partial index holds only those, so a tombstone drops out
/// of it and each cleanup run reads only what it has to change.
const INDEXES_ON_ADDED_COLUMNS: &str = "
CREATE INDEX IF NOT EXISTS inbox_expiring ON inbox (expires_at)
    WHERE expires_at IS NOT NULL AND kind != '';
";

/// Columns added after a table was first created: `CREATE TABLE IF NOT
/// EXISTS` leaves an older database's tables as they are, so these are
/// added to them on open.
const COLUMNS_ADDED: [(&str, &str, &str); 7] = [
    ("clients", "send_tat", "INTEGER"),
    ("clients", "generation", "INTEGER NOT NULL DEFAULT 0"),
    ("clients", "retired_keys", "TEXT"),
    ("inbox", "key_generation", "INTEGER NOT NULL DEFAULT 0"),
    ("outbox", "key_generation", "INTEGER NOT NULL DEFAULT 0"),
    ("inbox", "expires_at", "INTEGER"),
    ("clients", "ack_history", "TEXT NOT NULL DEFAULT ''"),
];

/// The client columns [`client_from_row`] reads, in its order.
const CLIENT_COLUMNS: &str = "client_id, name, wrapped_key, created_at, generation, retired_keys";

/// The client columns [`summary_from_row`] reads, in its order, from
/// `clients` named `c`.
const SUMMARY_COLUMNS: &str = "c.client_id, c.name, c.created_at, c.last_seen_at, c.outbox_head";

/// Rows one cleanup statement deletes: small enough that a request
/// waiting for the connection waits milliseconds, not seconds.
const PURGE_BATCH: i64 = 500;

fn table(mailbox: Mailbox) -> &'static str {
    match mailbox {
        Mailbox::Inbox => "inbox",
        Mailbox::Outbox => "outbox",
    }
}

/// Finds the message appended to a client's mailbox (`?1`) under a dedup
/// key (`?2`): its sequence number and content digest. For the inbox also
/// the marker cleanup leaves when it removes an acknowledged message, so a
/// fan-out redelivered after cleanup still delivers nothing twice.
fn appended_query(mailbox: Mailbox) -> &'static str {
    match mailbox {
        Mailbox::Inbox => {
            "SELECT seq, dedup_digest FROM inbox WHERE client_id = ?1 AND dedup_key = ?2
             UNION ALL
             SELECT seq, dedup_digest FROM inbox_markers WHERE client_id = ?1 AND dedup_key = ?2
             LIMIT 1"
        }
        Mailbox::Outbox => {
            "SELECT seq, dedup_digest FROM outbox WHERE client_id = ?1 AND dedup_key = ?2"
        }
    }
}

/// Inserts a message: `?1` to `?10` as [`Store::append`] binds them, and
/// for the inbox `?11`, when it expires (only publishes set `ttl_secs`).
fn insert_message(mailbox: Mailbox) -> &'static str {
    match mailbox {
        Mailbox::Inbox => {
            "INSERT INTO inbox (client_id, seq, kind, nonce, ciphertext, tag, created_at,
                                dedup_key, dedup_digest, key_generation, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        }
        Mailbox::Outbox => {
            "INSERT INTO outbox (client_id, seq, kind, nonce, ciphertext, tag, created_at,
                                 dedup_key, dedup_digest, key_generation)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        }
    }
}

/// What a read selects for a message's expiry: sent messages never expire
/// and have no such column.
fn expires_column(mailbox: Mailbox) -> &'static str {
    match mailbox {
        Mailbox::Inbox => "expires_at",
        Mailbox::Outbox => "NULL",
    }
}

fn head_column(mailbox: Mailbox) -> &'static str {
    match mailbox {
        Mailbox::Inbox => "inbox_head",
        Mailbox::Outbox => "outbox_head",
    }
}

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    soft: Arc<SoftState>,
    /// Held while the store is open: a second process on the same file
    /// would not see this one's cached rows, nor this one its writes.
    _owner: File,
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// A SQLite error, classified: contention is worth another attempt.
fn sql(err: rusqlite::Error) -> StoreError {
    match crate::retry::sqlite::classify(&err) {
        crate::retry::Class::Transient => StoreError::Unavailable(err.to_string()),
        crate::retry::Class::Permanent => StoreError::Backend(err.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let owner = own(path)?;
        let conn = Connection::open(path).map_err(sql)?;
        let store = Self::init(conn, owner)?;
        store.write_behind();
        Ok(store)
    }

    fn init(conn: Connection, owner: File) -> StoreResult<SqliteStore> {
        // SQLite waits this long for another connection's write lock;
        // past it, the shared retry policy takes over within the request's
        // budget.
        conn.busy_timeout(std::time::Duration::from_secs(1))
            .map_err(sql)?;
        // WAL + NORMAL: a committed transaction survives the process being
        // killed (the WAL is in the OS's hands); only a power cut can lose
        // the last few commits.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        // Deleted rows are overwritten, not left in free pages: a deleted
        // client's data must be gone from the file (see delete_client).
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(sql)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "database schema version {version} is newer than this build understands ({SCHEMA_VERSION})"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(sql)?;
        for (table, column, declaration) in COLUMNS_ADDED {
            let present: bool = conn
                .query_row(
                    &format!(
                        "SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"
                    ),
                    params![column],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            if !present {
                conn.execute_batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
                ))
                .map_err(sql)?;
            }
        }
        conn.execute_batch(INDEXES_ON_ADDED_COLUMNS).map_err(sql)?;
        if (1..3).contains(&version) {
            // Sends stored before version 3 kept their type in clear; the
            // sealed body has always held it too.
            conn.execute(
                "UPDATE outbox SET kind = ?1 WHERE kind != ?1",
                params![crate::handlers::send::OUTBOX_KIND],
            )
            .map_err(sql)?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            soft: Arc::new(SoftState::new(CACHED_CLIENTS)),
            _owner: owner,
        })
    }

    /// Starts the thread that writes soft state behind; it ends once the
    /// store is dropped (which writes what is left).
    fn write_behind(&self) {
        let (conn, soft) = (Arc::downgrade(&self.conn), Arc::downgrade(&self.soft));
        let spawned = std::thread::Builder::new()
            .name("sqlite-write-behind".into())
            .spawn(move || write_behind_loop(conn, soft));
        if let Err(error) = spawned {
            // Soft state then reaches the file only at the next listing or
            // when the store closes; nothing is lost while it runs.
            tracing::error!(%error, "cannot start the write-behind thread");
        }
    }

    /// Runs `work` on the blocking pool with the connection, again after
    /// a pause when the database was busy (the transaction then rolled
    /// back, so repeating it is safe), until the retry budget runs out.
    async fn with_conn<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&mut Connection) -> StoreResult<T> + Send + Sync + 'static,
    {
        let work = Arc::new(work);
        let mut round = 0;
        loop {
            let (conn, work) = (Arc::clone(&self.conn), Arc::clone(&work));
            let outcome = tokio::task::spawn_blocking(move || {
                // A panic while holding the lock cannot leave a half-applied
                // transaction (SQLite rolls it back), so a poisoned lock is
                // safe to keep using.
                let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                work(&mut guard)
            })
            .await
            .map_err(backend)?;
            match outcome {
                Err(StoreError::Unavailable(cause)) => {
                    if !crate::retry::pause(round).await {
                        return Err(StoreError::Unavailable(format!(
                            "database busy: {cause} (gave up after {} attempts)",
                            round + 1
                        )));
                    }
                    round += 1;
                }
                other => return other,
            }
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = write_back(&mut conn, &self.soft) {
            tracing::warn!(%error, "last-seen times and rate limits not written at close");
        }
    }
}

/// Takes the lock file `<database>.lock`, or says which file is in use.
fn own(path: &Path) -> StoreResult<File> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| backend(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Backend(format!(
            "{} is in use by another process (it holds {})",
            path.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(backend(format!("cannot lock {}: {e}", lock_path.display())))
        }
    }
}

fn write_behind_loop(conn: Weak<Mutex<Connection>>, soft: Weak<SoftState>) {
    loop {
        std::thread::sleep(WRITE_BEHIND);
        let (Some(conn), Some(soft)) = (conn.upgrade(), soft.upgrade()) else {
            return;
        };
        let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = write_back(&mut conn, &soft) {
            // Kept dirty: the next round writes them.
            tracing::warn!(%error, "writing last-seen times and rate limits failed; will retry");
        }
    }
}

/// Writes the soft state of every client whose entry is ahead of the file,
/// in one transaction.
fn write_back(conn: &mut Connection, soft: &SoftState) -> StoreResult<usize> {
    let rows = soft.take_dirty();
    if rows.is_empty() {
        return Ok(0);
    }
    let written = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE clients SET last_seen_at = MAX(COALESCE(last_seen_at, 0), ?2),
                 poll_tat = ?3, send_tat = ?4 WHERE client_id = ?1",
            )?;
            for (
                id,
                Soft {
                    last_seen,
                    poll_tat,
                    send_tat,
                },
            ) in &rows
            {
                update.execute(params![id.to_string(), last_seen, poll_tat, send_tat])?;
            }
        }
        tx.commit()
    })();
    match written {
        Ok(()) => Ok(rows.len()),
        Err(e) => {
            soft.write_failed(rows.into_iter().map(|(id, _)| id));
            Err(sql(e))
        }
    }
}

/// Before a listing: operators see last-seen times as they are, not as
/// they were at the last write-behind. A listing is only a read, so it
/// goes ahead with older times if the write cannot be made.
fn show_last_seen(conn: &mut Connection, soft: &SoftState) {
    if let Err(error) = write_back(conn, soft) {
        tracing::debug!(%error, "listing with last-seen times from the last write-behind");
    }
}

/// A client's row as [`soft_state`] keeps it, within a transaction.
fn entry_in(tx: &rusqlite::Transaction<'_>, id: &str) -> StoreResult<Option<Entry>> {
    let Some(record) = client_in(tx, id)? else {
        return Ok(None);
    };
    let (acked, head, last_seen, poll_tat, send_tat): (
        i64,
        i64,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    ) = tx
        .query_row(
            "SELECT acked, inbox_head, last_seen_at, poll_tat, send_tat FROM clients
             WHERE client_id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .map_err(sql)?;
    Ok(Some(Entry {
        record,
        acked: acked as Seq,
        head: head as Seq,
        soft: Soft {
            last_seen,
            poll_tat,
            send_tat,
        },
        dirty: false,
    }))
}

/// A client record from a row that starts with [`CLIENT_COLUMNS`].
fn client_from_row(row: &rusqlite::Row<'_>) -> StoreResult<ClientRecord> {
    let id: String = row.get(0).map_err(sql)?;
    let retired: Option<String> = row.get(5).map_err(sql)?;
    Ok(ClientRecord {
        id: ClientId::parse(&id).ok_or_else(|| StoreError::Corrupt(format!("client id {id:?}")))?,
        name: row.get(1).map_err(sql)?,
        wrapped_key: row.get(2).map_err(sql)?,
        created_at: Timestamp(row.get(3).map_err(sql)?),
        generation: row.get(4).map_err(sql)?,
        retired_keys: match retired {
            Some(text) => RetiredKey::decode_all(&text)?,
            None => Vec::new(),
        },
    })
}

/// The client's current record, within a transaction.
fn client_in(tx: &rusqlite::Transaction<'_>, id: &str) -> StoreResult<Option<ClientRecord>> {
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = ?1"
        ))
        .map_err(sql)?;
    let mut rows = stmt.query(params![id]).map_err(sql)?;
    match rows.next().map_err(sql)? {
        Some(row) => Ok(Some(client_from_row(row)?)),
        None => Ok(None),
    }
}

/// An operator's view of a client from a row that starts with
/// [`SUMMARY_COLUMNS`], with its tags.
fn summary_from_row(conn: &Connection, row: &rusqlite::Row<'_>) -> StoreResult<ClientSummary> {
    let id: String = row.get(0).map_err(sql)?;
    Ok(ClientSummary {
        id: parse_client_id(&id)?,
        name: row.get(1).map_err(sql)?,
        created_at: Timestamp(row.get(2).map_err(sql)?),
        last_seen_at: row.get::<_, Option<i64>>(3).map_err(sql)?.map(Timestamp),
        sent_head: row.get::<_, i64>(4).map_err(sql)? as Seq,
        tags: tags_of(conn, &id)?,
    })
}

/// A client's tags, sorted.
fn tags_of(conn: &Connection, client: &str) -> StoreResult<Vec<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT tag FROM client_tags WHERE client_id = ?1 ORDER BY tag")
        .map_err(sql)?;
    let tags = stmt
        .query_map(params![client], |r| r.get(0))
        .map_err(sql)?
        .collect::<Result<Vec<String>, _>>()
        .map_err(sql)?;
    Ok(tags)
}

/// The client a fingerprint hash is registered to, within a transaction.
fn fingerprint_owner(
    tx: &rusqlite::Transaction<'_>,
    fingerprint: &[u8; 32],
) -> StoreResult<Option<String>> {
    tx.query_row(
        "SELECT client_id FROM fingerprints WHERE fingerprint_hash = ?1",
        params![fingerprint.as_slice()],
        |r| r.get(0),
    )
    .optional()
    .map_err(sql)
}

fn encode_page_token(created_at: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

fn decode_page_token(token: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    let (created_at, id) = text.split_once(':')?;
    let id = ClientId::parse(id)?;
    Some((created_at.parse().ok()?, id.to_string()))
}

/// A page token of [`Store::list_tagged`]: the last client id listed.
fn encode_tagged_token(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("tagged:{id}"))
}

fn decode_tagged_token(token: &str) -> Option<String> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    let id = ClientId::parse(text.strip_prefix("tagged:")?)?;
    Some(id.to_string())
}

/// Where an enumeration of everyone continues: after this creation time
/// and client id.
fn encode_everyone_token(created_at: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("all:{created_at}:{id}"))
}

fn decode_everyone_token(token: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    let (created_at, id) = text.strip_prefix("all:")?.split_once(':')?;
    Some((created_at.parse().ok()?, ClientId::parse(id)?.to_string()))
}

/// Where an enumeration of tags continues: at the tag with this index in
/// the audience's list, after this client id (empty: from its start).
fn encode_tags_token(index: usize, after: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("tags:{index}:{after}"))
}

fn decode_tags_token(token: &str, tag_count: usize) -> Option<(usize, String)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    let (index, after) = text.strip_prefix("tags:")?.split_once(':')?;
    let index: usize = index.parse().ok()?;
    if index >= tag_count {
        return None;
    }
    if after.is_empty() {
        return Some((index, String::new()));
    }
    Some((index, ClientId::parse(after)?.to_string()))
}

/// Up to `limit` clients created by `registered_by`, in creation order
/// after `after`.
fn everyone_page(
    conn: &Connection,
    registered_by: Timestamp,
    limit: u32,
    after: &(i64, String),
) -> StoreResult<AudiencePage> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT client_id, created_at FROM clients
             WHERE (created_at, client_id) > (?1, ?2) AND created_at <= ?3
             ORDER BY created_at, client_id LIMIT ?4",
        )
        .map_err(sql)?;
    let rows = stmt
        .query_map(
            params![
                after.0,
                after.1,
                registered_by.millis(),
                i64::from(limit) + 1
            ],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )
        .map_err(sql)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql)?;
    let more = rows.len() > limit as usize;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = match page.last() {
        Some((id, created_at)) if more => Some(encode_everyone_token(*created_at, id)),
        _ => None,
    };
    Ok(AudiencePage {
        recipients: page
            .iter()
            .map(|(id, _)| parse_client_id(id))
            .collect::<StoreResult<_>>()?,
        next,
    })
}

/// Up to `limit` clients carrying `tags`, tag by tag from `start` (a tag's
/// index and the client id to continue after), each client under the
/// first of the tags it carries. Filtered clients count towards `limit`,
/// so one call reads a bounded stretch of the tag index.
fn tags_page(
    conn: &Connection,
    tags: &[String],
    registered_by: Timestamp,
    limit: u32,
    start: (usize, String),
) -> StoreResult<AudiencePage> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT t.client_id, c.created_at FROM client_tags t
             JOIN clients c ON c.client_id = t.client_id
             WHERE t.tag = ?1 AND t.client_id > ?2 ORDER BY t.client_id LIMIT ?3",
        )
        .map_err(sql)?;
    let (mut index, mut after) = start;
    let mut budget = limit as usize;
    let mut recipients = Vec::new();
    while index < tags.len() && budget > 0 {
        // One more than the budget, to know whether the tag goes on.
        let rows = stmt
            .query_map(params![tags[index], after, budget as i64 + 1], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(sql)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql)?;
        let more = rows.len() > budget;
        for (id, created_at) in rows.into_iter().take(budget) {
            budget -= 1;
            if created_at <= registered_by.millis() && !carries_any(conn, &id, &tags[..index])? {
                recipients.push(parse_client_id(&id)?);
            }
            after = id;
        }
        if more {
            return Ok(AudiencePage {
                recipients,
                next: Some(encode_tags_token(index, &after)),
            });
        }
        index += 1;
        after = String::new();
    }
    Ok(AudiencePage {
        recipients,
        next: (index < tags.len()).then(|| encode_tags_token(index, "")),
    })
}

/// Whether a client carries any of `tags` (the audience's earlier tags,
/// under which it was already counted).
fn carries_any(conn: &Connection, client: &str, tags: &[String]) -> StoreResult<bool> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM client_tags WHERE tag = ?1 AND client_id = ?2")
        .map_err(sql)?;
    for tag in tags {
        if stmt.exists(params![tag, client]).map_err(sql)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn parse_client_id(id: &str) -> StoreResult<ClientId> {
    ClientId::parse(id).ok_or_else(|| StoreError::Corrupt(format!("client id {id:?}")))
}

/// How a page keeps its recipients: their ids, comma-separated.
fn encode_recipients(ids: &[ClientId]) -> String {
    ids.iter()
        .map(ClientId::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_recipients(text: &str) -> StoreResult<Vec<ClientId>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',').map(parse_client_id).collect()
}

/// A publish's saved page, if any.
fn recipient_page(
    conn: &Connection,
    publish_id: &str,
    number: u32,
) -> StoreResult<Option<RecipientPage>> {
    let row: Option<(String, Option<String>, bool)> = conn
        .query_row(
            "SELECT recipients, next, continued FROM publish_pages
             WHERE publish_id = ?1 AND number = ?2",
            params![publish_id, number],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sql)?;
    row.map(|(recipients, next, continued)| {
        Ok(RecipientPage {
            number,
            recipients: decode_recipients(&recipients)?,
            next,
            continued,
        })
    })
    .transpose()
}

/// A publish's header, if it is saved (and not yet forgotten).
fn publish_header(conn: &Connection, publish_id: &str) -> StoreResult<Option<PublishHeader>> {
    type Row = (String, i64, String, Option<i64>, Option<u32>, Option<i64>);
    let row: Option<Row> = conn
        .query_row(
            "SELECT kind, created_at, audience, expires_at, pages, recipients FROM publishes
             WHERE publish_id = ?1",
            params![publish_id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .optional()
        .map_err(sql)?;
    let Some((kind, created_at, audience, expires_at, pages, recipients)) = row else {
        return Ok(None);
    };
    let corrupt = || StoreError::Corrupt(format!("audience of publish {publish_id}"));
    let audience = serde_json::from_str(&audience).map_err(|_| corrupt())?;
    Ok(Some(PublishHeader {
        publish_id: publish_id.to_string(),
        kind,
        created_at: Timestamp(created_at),
        audience: Audience::from_json(&audience).ok_or_else(corrupt)?,
        expires_at: expires_at.map(Timestamp),
        enumerated: pages.zip(recipients).map(|(pages, recipients)| Enumerated {
            pages,
            recipients: recipients as u64,
        }),
    }))
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(
        &self,
        which: Mailbox,
        id: ClientId,
        dedup: Dedup,
        seal: Sealer,
    ) -> StoreResult<Appended> {
        let soft = Arc::clone(&self.soft);
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let client = id.to_string();
            let head: Option<i64> = tx
                .query_row(
                    &format!(
                        "SELECT {} FROM clients WHERE client_id = ?1",
                        head_column(which)
                    ),
                    params![client],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            let Some(head) = head else {
                return Ok(Appended::UnknownClient);
            };
            let existing: Option<(i64, Vec<u8>)> = tx
                .query_row(appended_query(which), params![client, dedup.key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(sql)?;
            if let Some((seq, digest)) = existing {
                return Ok(Appended::Duplicate {
                    seq: seq as Seq,
                    same_content: digest == dedup.digest,
                });
            }
            let seq = head as Seq + 1;
            let message = seal(seq)?;
            let (position, created_at) = (seq as i64, message.created_at.millis());
            let (nonce, tag) = (message.body.nonce.as_slice(), message.body.tag.as_slice());
            let (digest, expires_at) = (
                dedup.digest.as_slice(),
                message.expires_at.map(Timestamp::millis),
            );
            let values: [&dyn rusqlite::ToSql; 11] = [
                &client,
                &position,
                &message.kind,
                &nonce,
                &message.body.ciphertext,
                &tag,
                &created_at,
                &dedup.key,
                &digest,
                &message.key_generation,
                &expires_at,
            ];
            // The outbox has no expiry to bind.
            let bound = match which {
                Mailbox::Inbox => &values[..],
                Mailbox::Outbox => &values[..10],
            };
            tx.execute(insert_message(which), bound).map_err(sql)?;
            tx.execute(
                &format!(
                    "UPDATE clients SET {} = ?2 WHERE client_id = ?1",
                    head_column(which)
                ),
                params![client, seq as i64],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            if which == Mailbox::Inbox {
                soft.appended(id, seq);
            }
            Ok(Appended::Stored { seq })
        })
        .await
    }

    async fn read_page(
        &self,
        which: Mailbox,
        id: ClientId,
        after: Seq,
        limit: ReadLimit,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT seq, kind, nonce, ciphertext, tag, created_at, key_generation, {} FROM {}
                     WHERE client_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                    expires_column(which),
                    table(which)
                ))
                .map_err(sql)?;
            let mut rows = stmt
                .query(params![
                    id.to_string(),
                    after as i64,
                    i64::from(limit.count)
                ])
                .map_err(sql)?;
            let mut messages = Vec::new();
            let mut bytes = 0usize;
            while let Some(row) = rows.next().map_err(sql)? {
                let seq: i64 = row.get(0).map_err(sql)?;
                let corrupt = || StoreError::Corrupt(format!("message {seq} of {id}"));
                let ciphertext: Vec<u8> = row.get(3).map_err(sql)?;
                bytes += ciphertext.len();
                if !messages.is_empty() && bytes > limit.bytes {
                    break;
                }
                messages.push(StoredMessage {
                    seq: seq as Seq,
                    kind: row.get(1).map_err(sql)?,
                    body: Sealed {
                        ciphertext,
                        nonce: row
                            .get::<_, Vec<u8>>(2)
                            .map_err(sql)?
                            .try_into()
                            .map_err(|_| corrupt())?,
                        tag: row
                            .get::<_, Vec<u8>>(4)
                            .map_err(sql)?
                            .try_into()
                            .map_err(|_| corrupt())?,
                    },
                    created_at: Timestamp(row.get(5).map_err(sql)?),
                    key_generation: row.get(6).map_err(sql)?,
                    expires_at: row.get::<_, Option<i64>>(7).map_err(sql)?.map(Timestamp),
                });
            }
            Ok(messages)
        })
        .await
    }

    async fn already_appended(
        &self,
        which: Mailbox,
        ids: &[ClientId],
        dedup_key: &str,
    ) -> StoreResult<HashSet<ClientId>> {
        let found = self.appended_seqs(which, ids, dedup_key).await?;
        Ok(found.into_keys().collect())
    }

    async fn register_client(
        &self,
        fingerprint: [u8; 32],
        candidate: ClientRecord,
    ) -> StoreResult<Registration> {
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            if let Some(owner) = fingerprint_owner(&tx, &fingerprint)? {
                if let Some(client) = client_in(&tx, &owner)? {
                    return Ok(Registration {
                        client,
                        created: false,
                    });
                }
            }
            let id = candidate.id.to_string();
            tx.execute(
                "INSERT INTO clients (client_id, name, wrapped_key, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, candidate.name, candidate.wrapped_key, candidate.created_at.millis()],
            )
            .map_err(sql)?;
            tx.execute(
                "INSERT OR REPLACE INTO fingerprints (fingerprint_hash, client_id) VALUES (?1, ?2)",
                params![fingerprint.as_slice(), id],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(Registration {
                client: candidate.clone(),
                created: true,
            })
        })
        .await
    }

    async fn touch_client(
        &self,
        id: ClientId,
        generation: u32,
        now: Timestamp,
        charge: Option<RateCharge>,
    ) -> StoreResult<Touch> {
        if let Some(touched) = self.soft.touch(id, generation, now, charge) {
            return Ok(touched);
        }
        let soft = Arc::clone(&self.soft);
        self.with_conn(move |conn| {
            if soft.is_full() {
                write_back(conn, &soft)?;
                soft.evict_clean();
            }
            // A read: the contact itself is written behind.
            let tx = conn.transaction().map_err(sql)?;
            let Some(entry) = entry_in(&tx, &id.to_string())? else {
                return Ok(Touch::UnknownClient);
            };
            tx.commit().map_err(sql)?;
            Ok(soft.load_and_touch(id, entry, generation, now, charge))
        })
        .await
    }

    async fn rotate_client(&self, rotation: Rotation) -> StoreResult<Rotated> {
        let soft = Arc::clone(&self.soft);
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let client = rotation.id.to_string();
            let Some(record) = client_in(&tx, &client)? else {
                return Ok(Rotated::Stale);
            };
            if record.generation != rotation.from_generation {
                return Ok(Rotated::Stale);
            }
            if let Some(fingerprint) = rotation.fingerprint {
                match fingerprint_owner(&tx, &fingerprint)? {
                    Some(owner) if owner == client => {}
                    Some(_) => return Ok(Rotated::FingerprintTaken),
                    None => {
                        tx.execute(
                            "DELETE FROM fingerprints WHERE client_id = ?1",
                            params![client],
                        )
                        .map_err(sql)?;
                        tx.execute(
                            "INSERT INTO fingerprints (fingerprint_hash, client_id) VALUES (?1, ?2)",
                            params![fingerprint.as_slice(), client],
                        )
                        .map_err(sql)?;
                    }
                }
            }
            let in_use: HashSet<u32> = if record.retired_keys.is_empty() {
                HashSet::new()
            } else {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT DISTINCT i.key_generation FROM inbox i
                         JOIN clients c ON c.client_id = i.client_id
                         WHERE i.client_id = ?1 AND i.seq > c.acked",
                    )
                    .map_err(sql)?;
                let generations = stmt
                    .query_map(params![client], |r| r.get::<_, u32>(0))
                    .map_err(sql)?
                    .collect::<Result<HashSet<u32>, _>>()
                    .map_err(sql)?;
                generations
            };
            let retired = RetiredKey::after_rotation(
                &record,
                rotation.now,
                rotation.keep_retired_since,
                &in_use,
            );
            let rotated = ClientRecord {
                wrapped_key: rotation.wrapped_key.clone(),
                generation: record.generation + 1,
                retired_keys: retired,
                ..record
            };
            tx.execute(
                "UPDATE clients SET wrapped_key = ?2, generation = ?3, retired_keys = ?4,
                 last_seen_at = MAX(COALESCE(last_seen_at, 0), ?5) WHERE client_id = ?1",
                params![
                    client,
                    rotated.wrapped_key,
                    rotated.generation,
                    RetiredKey::encode_all(&rotated.retired_keys),
                    rotation.now.millis()
                ],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            soft.rotated(&rotated);
            Ok(Rotated::Rotated(rotated))
        })
        .await
    }

    async fn delete_client(&self, id: ClientId) -> StoreResult<Deleted> {
        // One transaction: the token stops working and the data goes at
        // the same instant. A client's messages are bounded by retention,
        // so the transaction stays short.
        let soft = Arc::clone(&self.soft);
        self.with_conn(move |conn| {
            // Before the transaction, and while the connection is held: no
            // poll can load the row again until the deletion commits.
            soft.remove(id);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let client = id.to_string();
            let removed = tx
                .execute("DELETE FROM clients WHERE client_id = ?1", params![client])
                .map_err(sql)?;
            if removed == 0 {
                return Ok(Deleted::Unknown);
            }
            for statement in [
                "DELETE FROM fingerprints WHERE client_id = ?1",
                "DELETE FROM client_tags WHERE client_id = ?1",
                "DELETE FROM inbox WHERE client_id = ?1",
                "DELETE FROM inbox_markers WHERE client_id = ?1",
                "DELETE FROM outbox WHERE client_id = ?1",
            ] {
                tx.execute(statement, params![client]).map_err(sql)?;
            }
            tx.commit().map_err(sql)?;
            // The log still holds the rows as they were before the delete:
            // copy it into the file (whose freed pages secure_delete has
            // zeroed) and empty it. Best effort: a busy reader only delays
            // this to the next automatic checkpoint.
            if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                tracing::warn!(client_id = %id, %error, "checkpoint after a deletion failed");
            }
            Ok(Deleted::Deleted)
        })
        .await
    }

    async fn count_request(
        &self,
        key: &str,
        limit: WindowLimit,
        now: Timestamp,
    ) -> StoreResult<Counted> {
        let counter = format!("{key}#{}", limit.window(now));
        self.with_conn(move |conn| {
            let counted = conn
                .execute(
                    "INSERT INTO request_counts (counter, count, expires_at) VALUES (?1, 1, ?3)
                     ON CONFLICT (counter) DO UPDATE SET count = count + 1 WHERE count < ?2",
                    params![counter, limit.limit(), limit.expires_at(now).millis()],
                )
                .map_err(sql)?;
            Ok(if counted == 1 {
                Counted::Allowed
            } else {
                Counted::Full {
                    retry_after: limit.retry_after(now),
                }
            })
        })
        .await
    }

    async fn load_clients(&self, ids: &[ClientId]) -> StoreResult<Vec<ClientRecord>> {
        let ids: Vec<String> = ids.iter().map(ClientId::to_string).collect();
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = ?1"
                ))
                .map_err(sql)?;
            let mut found = Vec::with_capacity(ids.len());
            for id in &ids {
                let mut rows = stmt.query(params![id]).map_err(sql)?;
                if let Some(row) = rows.next().map_err(sql)? {
                    match client_from_row(row) {
                        Ok(record) => found.push(record),
                        Err(error) => {
                            tracing::error!(client_id = %id, %error, "skipping an unreadable client record");
                        }
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    async fn acknowledge(
        &self,
        id: ClientId,
        generation: u32,
        upto: Seq,
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        let soft = Arc::clone(&self.soft);
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let client = id.to_string();
            let row: Option<(i64, i64, u32, String)> = tx
                .query_row(
                    "SELECT acked, inbox_head, generation, ack_history FROM clients
                     WHERE client_id = ?1",
                    params![client],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(sql)?;
            let Some((acked, head, _, history)) = row.filter(|r| r.2 == generation) else {
                return Ok(AckOutcome::UnknownClient);
            };
            let (acked, head) = (acked as Seq, head as Seq);
            if upto > head {
                return Ok(AckOutcome::BeyondHead { head });
            }
            let cursor = acked.max(upto);
            // Only a move is history: a repeated or older ack says nothing
            // about when a message was first acknowledged.
            let history = if cursor > acked {
                let before = AckState::decode_history(&history)?;
                AckState::encode_history(&AckState::after_move(&before, cursor, now))
            } else {
                history
            };
            tx.execute(
                "UPDATE clients SET acked = ?2, ack_history = ?4,
                 last_seen_at = MAX(COALESCE(last_seen_at, 0), ?3)
                 WHERE client_id = ?1",
                params![client, cursor as i64, now.millis(), history],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            soft.acknowledged(id, cursor, now);
            Ok(AckOutcome::Acked { cursor })
        })
        .await
    }

    async fn list_clients(
        &self,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<ClientPage, BadPageToken>> {
        let after = match page_token.map(decode_page_token) {
            Some(None) => return Ok(Err(BadPageToken)),
            Some(Some(position)) => Some(position),
            None => None,
        };
        let soft = Arc::clone(&self.soft);
        self.with_conn(move |conn| {
            show_last_seen(conn, &soft);
            let (after_created, after_id) = after.clone().unwrap_or((i64::MIN, String::new()));
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM clients c
                     WHERE (c.created_at, c.client_id) > (?1, ?2)
                     ORDER BY c.created_at, c.client_id LIMIT ?3"
                ))
                .map_err(sql)?;
            let mut rows = stmt
                .query(params![after_created, after_id, i64::from(limit) + 1])
                .map_err(sql)?;
            let mut clients = Vec::new();
            while let Some(row) = rows.next().map_err(sql)? {
                clients.push(summary_from_row(conn, row)?);
            }
            let next = if clients.len() > limit as usize {
                clients.truncate(limit as usize);
                clients
                    .last()
                    .map(|c| encode_page_token(c.created_at.millis(), &c.id.to_string()))
            } else {
                None
            };
            Ok(Ok(ClientPage { clients, next }))
        })
        .await
    }

    async fn set_tags(&self, id: ClientId, tags: &[String]) -> StoreResult<Option<Vec<String>>> {
        let tags = tags.to_vec();
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let client = id.to_string();
            let known = tx
                .prepare_cached("SELECT 1 FROM clients WHERE client_id = ?1")
                .map_err(sql)?
                .exists(params![client])
                .map_err(sql)?;
            if !known {
                return Ok(None);
            }
            tx.execute(
                "DELETE FROM client_tags WHERE client_id = ?1",
                params![client],
            )
            .map_err(sql)?;
            for tag in &tags {
                tx.execute(
                    "INSERT OR IGNORE INTO client_tags (tag, client_id) VALUES (?1, ?2)",
                    params![tag, client],
                )
                .map_err(sql)?;
            }
            let stored = tags_of(&tx, &client)?;
            tx.commit().map_err(sql)?;
            Ok(Some(stored))
        })
        .await
    }

    async fn list_tagged(
        &self,
        tag: &str,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<ClientPage, BadPageToken>> {
        let after = match page_token.map(decode_tagged_token) {
            Some(None) => return Ok(Err(BadPageToken)),
            Some(Some(id)) => id,
            None => String::new(),
        };
        let tag = tag.to_string();
        let soft = Arc::clone(&self.soft);
        self.with_conn(move |conn| {
            show_last_seen(conn, &soft);
            // The tag's own rows, in client id order: never every client.
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SUMMARY_COLUMNS} FROM client_tags t
                     JOIN clients c ON c.client_id = t.client_id
                     WHERE t.tag = ?1 AND t.client_id > ?2
                     ORDER BY t.client_id LIMIT ?3"
                ))
                .map_err(sql)?;
            let mut rows = stmt
                .query(params![tag, after, i64::from(limit) + 1])
                .map_err(sql)?;
            let mut clients = Vec::new();
            while let Some(row) = rows.next().map_err(sql)? {
                clients.push(summary_from_row(conn, row)?);
            }
            let next = if clients.len() > limit as usize {
                clients.truncate(limit as usize);
                clients
                    .last()
                    .map(|c| encode_tagged_token(&c.id.to_string()))
            } else {
                None
            };
            Ok(Ok(ClientPage { clients, next }))
        })
        .await
    }

    async fn audience_page(
        &self,
        audience: &Audience,
        registered_by: Timestamp,
        limit: u32,
        page_token: Option<&str>,
    ) -> StoreResult<Result<AudiencePage, BadPageToken>> {
        // A page of none would never move on.
        let limit = limit.max(1);
        match audience {
            Audience::Clients { .. } => Err(StoreError::Backend(
                "a to_client_ids audience is not enumerated".into(),
            )),
            Audience::All => {
                let after = match page_token.map(decode_everyone_token) {
                    Some(None) => return Ok(Err(BadPageToken)),
                    Some(Some(after)) => after,
                    None => (i64::MIN, String::new()),
                };
                self.with_conn(move |conn| everyone_page(conn, registered_by, limit, &after))
                    .await
                    .map(Ok)
            }
            Audience::Tags(tags) => {
                let start = match page_token.map(|t| decode_tags_token(t, tags.len())) {
                    Some(None) => return Ok(Err(BadPageToken)),
                    Some(Some(start)) => start,
                    None => (0, String::new()),
                };
                let tags = tags.clone();
                self.with_conn(move |conn| {
                    tags_page(conn, &tags, registered_by, limit, start.clone())
                })
                .await
                .map(Ok)
            }
        }
    }

    async fn save_publish(&self, header: &PublishHeader) -> StoreResult<()> {
        let header = header.clone();
        self.with_conn(move |conn| {
            // A retried publish keeps the first header.
            conn.execute(
                "INSERT INTO publishes
                 (publish_id, kind, created_at, audience, expires_at, pages, recipients)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (publish_id) DO NOTHING",
                params![
                    header.publish_id,
                    header.kind,
                    header.created_at.millis(),
                    header.audience.to_json().to_string(),
                    header.expires_at.map(Timestamp::millis),
                    header.enumerated.map(|e| e.pages),
                    header.enumerated.map(|e| e.recipients as i64),
                ],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn save_recipient_page(
        &self,
        publish_id: &str,
        page: RecipientPage,
    ) -> StoreResult<RecipientPage> {
        let publish_id = publish_id.to_string();
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            tx.execute(
                "INSERT INTO publish_pages (publish_id, number, recipients, next, continued)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (publish_id, number) DO NOTHING",
                params![
                    publish_id,
                    page.number,
                    encode_recipients(&page.recipients),
                    page.next,
                    page.continued
                ],
            )
            .map_err(sql)?;
            let stored = recipient_page(&tx, &publish_id, page.number)?
                .ok_or_else(|| StoreError::Backend("a saved page is missing".into()))?;
            tx.commit().map_err(sql)?;
            Ok(stored)
        })
        .await
    }

    async fn mark_page_continued(&self, publish_id: &str, number: u32) -> StoreResult<()> {
        let publish_id = publish_id.to_string();
        self.with_conn(move |conn| {
            conn.execute(
                "UPDATE publish_pages SET continued = 1 WHERE publish_id = ?1 AND number = ?2",
                params![publish_id, number],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn finish_enumeration(
        &self,
        publish_id: &str,
        enumerated: Enumerated,
    ) -> StoreResult<()> {
        let publish_id = publish_id.to_string();
        self.with_conn(move |conn| {
            // The first count stands, as a page does: a redelivered last
            // step counts the same pages again.
            conn.execute(
                "UPDATE publishes SET pages = ?2, recipients = ?3
                 WHERE publish_id = ?1 AND pages IS NULL",
                params![publish_id, enumerated.pages, enumerated.recipients as i64],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn load_publish(&self, publish_id: &str) -> StoreResult<Option<PublishState>> {
        let publish_id = publish_id.to_string();
        self.with_conn(move |conn| {
            // One read transaction: the pages belong to the header read.
            let tx = conn.transaction().map_err(sql)?;
            let Some(header) = publish_header(&tx, &publish_id)? else {
                return Ok(None);
            };
            let mut stmt = tx
                .prepare_cached(
                    "SELECT number, recipients, next, continued FROM publish_pages
                     WHERE publish_id = ?1 ORDER BY number",
                )
                .map_err(sql)?;
            let mut rows = stmt.query(params![publish_id]).map_err(sql)?;
            let mut pages = Vec::new();
            while let Some(row) = rows.next().map_err(sql)? {
                pages.push(RecipientPage {
                    number: row.get(0).map_err(sql)?,
                    recipients: decode_recipients(&row.get::<_, String>(1).map_err(sql)?)?,
                    next: row.get(2).map_err(sql)?,
                    continued: row.get(3).map_err(sql)?,
                });
            }
            Ok(Some(PublishState { header, pages }))
        })
        .await
    }

    async fn appended_seqs(
        &self,
        which: Mailbox,
        ids: &[ClientId],
        dedup_key: &str,
    ) -> StoreResult<HashMap<ClientId, Seq>> {
        let ids = ids.to_vec();
        let dedup_key = dedup_key.to_string();
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(appended_query(which)).map_err(sql)?;
            let mut found = HashMap::new();
            for id in &ids {
                let seq: Option<i64> = stmt
                    .query_row(params![id.to_string(), dedup_key], |r| r.get(0))
                    .optional()
                    .map_err(sql)?;
                if let Some(seq) = seq {
                    found.insert(*id, seq as Seq);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn ack_states(&self, ids: &[ClientId]) -> StoreResult<HashMap<ClientId, AckState>> {
        let ids = ids.to_vec();
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT acked, ack_history FROM clients WHERE client_id = ?1")
                .map_err(sql)?;
            let mut states = HashMap::new();
            for id in &ids {
                let row: Option<(i64, String)> = stmt
                    .query_row(params![id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(sql)?;
                if let Some((acked, history)) = row {
                    let state = AckState {
                        acked: acked as Seq,
                        history: AckState::decode_history(&history)?,
                    };
                    states.insert(*id, state);
                }
            }
            Ok(states)
        })
        .await
    }

    async fn claim_publish_key(
        &self,
        key: &str,
        record: PublishRecord,
        expired_before: Timestamp,
    ) -> StoreResult<KeyClaim> {
        let key = key.to_string();
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let held = tx
                .query_row(
                    "SELECT publish_id, recipients, digest, created_at, completed
                     FROM publish_keys WHERE idempotency_key = ?1 AND created_at >= ?2",
                    params![key, expired_before.millis()],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, bool>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(sql)?;
            if let Some((publish_id, recipients, digest, created_at, completed)) = held {
                return Ok(KeyClaim::Held {
                    record: PublishRecord {
                        publish_id,
                        recipients: recipients as u64,
                        digest: digest
                            .try_into()
                            .map_err(|_| StoreError::Corrupt("publish key digest".into()))?,
                        created_at: Timestamp(created_at),
                    },
                    completed,
                });
            }
            tx.execute(
                "INSERT OR REPLACE INTO publish_keys
                 (idempotency_key, publish_id, recipients, digest, created_at, completed)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                params![
                    key,
                    record.publish_id,
                    record.recipients as i64,
                    record.digest.as_slice(),
                    record.created_at.millis()
                ],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(KeyClaim::Claimed)
        })
        .await
    }

    async fn complete_publish_key(&self, key: &str) -> StoreResult<()> {
        let key = key.to_string();
        self.with_conn(move |conn| {
            conn.execute(
                "UPDATE publish_keys SET completed = 1 WHERE idempotency_key = ?1",
                params![key],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn purge(&self, cutoffs: Cutoffs) -> StoreResult<Purged> {
        // Small batches, each its own transaction, so requests interleave
        // with a long cleanup instead of waiting behind it.
        let acked_before = cutoffs.acked_before.millis();
        let inbox = self
            .purge_in_batches(move |conn| remove_acknowledged(conn, acked_before))
            .await?;
        let expired = self.tombstone_expired(cutoffs.now).await?;
        let sent_before = cutoffs.sent_before.millis();
        let outbox = self
            .purge_in_batches(move |conn| {
                conn.execute(
                    "DELETE FROM outbox WHERE (client_id, seq) IN (
                        SELECT client_id, seq FROM outbox WHERE created_at < ?1 LIMIT ?2)",
                    params![sent_before, PURGE_BATCH],
                )
                .map_err(sql)
            })
            .await?;
        let now = crate::clock::Clock::now(&crate::clock::SystemClock).millis();
        self.purge_in_batches(move |conn| {
            conn.execute(
                "DELETE FROM request_counts WHERE counter IN (
                    SELECT counter FROM request_counts WHERE expires_at < ?1 LIMIT ?2)",
                params![now, PURGE_BATCH],
            )
            .map_err(sql)
        })
        .await?;
        let keys_before = cutoffs.keys_before.millis();
        self.purge_in_batches(move |conn| {
            conn.execute(
                "DELETE FROM publish_keys WHERE created_at < ?1",
                params![keys_before],
            )
            .map_err(sql)
        })
        .await?;
        // Markers and publish status go together: the status of a publish
        // is computed from its recipients' markers.
        let publishes_before = cutoffs.publishes_before.millis();
        for forget in [
            "DELETE FROM inbox_markers WHERE (client_id, dedup_key) IN (
                SELECT client_id, dedup_key FROM inbox_markers WHERE created_at < ?1 LIMIT ?2)",
            // Pages before their header: a run cut short leaves a header
            // the next run finds again, never pages no header leads to.
            "DELETE FROM publish_pages WHERE (publish_id, number) IN (
                SELECT p.publish_id, p.number FROM publishes h
                JOIN publish_pages p ON p.publish_id = h.publish_id
                WHERE h.created_at < ?1 LIMIT ?2)",
            "DELETE FROM publishes WHERE publish_id IN (
                SELECT publish_id FROM publishes WHERE created_at < ?1 LIMIT ?2)",
        ] {
            self.purge_in_batches(move |conn| {
                conn.execute(forget, params![publishes_before, PURGE_BATCH])
                    .map_err(sql)
            })
            .await?;
        }
        Ok(Purged {
            inbox,
            outbox,
            expired,
            finished: true,
        })
    }
}

/// One batch of removing acknowledged inbox messages created before
/// `acked_before`. Each leaves its idempotency key behind in
/// `inbox_markers`, in the same transaction, so an append retried later
/// (a redelivered fan-out) finds it and a publish's status still counts
/// the delivery.
fn remove_acknowledged(conn: &mut Connection, acked_before: i64) -> StoreResult<usize> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let doomed: Vec<(String, i64)> = tx
        .prepare_cached(
            "SELECT i.client_id, i.seq FROM inbox i
             JOIN clients c ON c.client_id = i.client_id
             WHERE i.created_at < ?1 AND i.seq <= c.acked LIMIT ?2",
        )
        .map_err(sql)?
        .query_map(params![acked_before, PURGE_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    {
        let mut mark = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO inbox_markers
                 (client_id, dedup_key, seq, dedup_digest, created_at)
                 SELECT client_id, dedup_key, seq, dedup_digest, created_at FROM inbox
                 WHERE client_id = ?1 AND seq = ?2",
            )
            .map_err(sql)?;
        let mut remove = tx
            .prepare_cached("DELETE FROM inbox WHERE client_id = ?1 AND seq = ?2")
            .map_err(sql)?;
        for (client, seq) in &doomed {
            mark.execute(params![client, seq]).map_err(sql)?;
            remove.execute(params![client, seq]).map_err(sql)?;
        }
    }
    tx.commit().map_err(sql)?;
    Ok(doomed.len())
}

/// Where a run of [`tombstone_batch`] stopped, in `inbox_expiring` order:
/// expiry, client id, sequence number.
type ExpiryPosition = (i64, String, i64);

/// One batch of turning expired, unacknowledged inbox messages into
/// tombstones, from `after` on. It reads at most [`PURGE_BATCH`] expired
/// messages (acknowledged ones are read and left for
/// [`remove_acknowledged`]), so a batch stays short however many of them
/// are acknowledged. Returns the messages read, the last one's position
/// and how many became tombstones.
fn tombstone_batch(
    conn: &mut Connection,
    now: Timestamp,
    after: &ExpiryPosition,
) -> StoreResult<(usize, Option<ExpiryPosition>, u64)> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let expired: Vec<(ExpiryPosition, bool)> = tx
        .prepare_cached(
            "SELECT i.expires_at, i.client_id, i.seq, i.seq <= c.acked FROM inbox i
             JOIN clients c ON c.client_id = i.client_id
             WHERE i.expires_at <= ?1 AND i.kind != ''
               AND (i.expires_at, i.client_id, i.seq) > (?2, ?3, ?4)
             ORDER BY i.expires_at, i.client_id, i.seq LIMIT ?5",
        )
        .map_err(sql)?
        .query_map(
            params![now.millis(), after.0, after.1, after.2, PURGE_BATCH],
            |r| Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?)),
        )
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)?;
    let mut tombstoned = 0;
    {
        // The position and the dedup key stay (a poll must see the id was
        // used; a retried fan-out must not deliver it again); the body and
        // type go. Nonce and tag keep their lengths, so the row still reads
        // as a message.
        let mut bury = tx
            .prepare_cached(
                "UPDATE inbox SET kind = '', ciphertext = x'', nonce = zeroblob(?3),
                 tag = zeroblob(?4) WHERE client_id = ?1 AND seq = ?2",
            )
            .map_err(sql)?;
        for ((_, client, seq), acknowledged) in &expired {
            if !*acknowledged {
                let (nonce, tag) = (crate::crypto::NONCE_LEN, crate::crypto::TAG_LEN);
                tombstoned += bury
                    .execute(params![client, seq, nonce as i64, tag as i64])
                    .map_err(sql)? as u64;
            }
        }
    }
    tx.commit().map_err(sql)?;
    let last = expired.last().map(|(position, _)| position.clone());
    Ok((expired.len(), last, tombstoned))
}

impl SqliteStore {
    /// Repeats one bounded batch of removals (a `DELETE` with a `LIMIT`, or
    /// [`remove_acknowledged`]) until one removes less than a full batch;
    /// returns the total.
    async fn purge_in_batches<F>(&self, delete: F) -> StoreResult<u64>
    where
        F: Fn(&mut Connection) -> StoreResult<usize> + Send + Sync + Clone + 'static,
    {
        let mut total = 0u64;
        loop {
            let delete = delete.clone();
            let removed = self.with_conn(move |conn| delete(conn)).await?;
            total += removed as u64;
            if (removed as i64) < PURGE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Runs [`tombstone_batch`] until it reads less than a full batch;
    /// returns how many messages became tombstones. Each batch goes on
    /// where the last one stopped, so no message is read twice in a run.
    async fn tombstone_expired(&self, now: Timestamp) -> StoreResult<u64> {
        let mut after: ExpiryPosition = (i64::MIN, String::new(), i64::MIN);
        let mut total = 0u64;
        loop {
            let from = after.clone();
            let (read, last, tombstoned) = self
                .with_conn(move |conn| tombstone_batch(conn, now, &from))
                .await?;
            total += tombstoned;
            match last {
                Some(last) if read as i64 == PURGE_BATCH => after = last,
                _ => return Ok(total),
            }
        }
    }
}
