//! The embedded store: one SQLite file in WAL mode.
//!
//! SQLite rather than a key-value engine because its transactions give the
//! sequence guarantee for free (allocate and insert in one write
//! transaction), it survives `kill -9` with WAL, and an operator can inspect
//! the file with the `sqlite3` shell. Tables mirror the DynamoDB design:
//! `clients` keyed by id (holding the cursor, the heads of both sequences and
//! the rate-limit state on the same row, as one DynamoDB item would),
//! `fingerprints` as the lookup, and `inbox`/`outbox` keyed `(client_id, seq)`.
//!
//! One connection behind a mutex serves all requests on the blocking thread
//! pool: SQLite allows one writer at a time anyway, and every statement here
//! is a primary-key lookup.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;

/// 2 added publish idempotency keys and the age indexes cleanup uses;
/// 3 credential generations, retired keys, the send limit and request
/// counters (see [`COLUMNS_ADDED`]).
const SCHEMA_VERSION: i64 = 3;

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
    retired_keys TEXT
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
";

/// Columns added after a table was first created: `CREATE TABLE IF NOT
/// EXISTS` leaves an older database's tables as they are, so these are
/// added to them on open.
const COLUMNS_ADDED: [(&str, &str, &str); 5] = [
    ("clients", "send_tat", "INTEGER"),
    ("clients", "generation", "INTEGER NOT NULL DEFAULT 0"),
    ("clients", "retired_keys", "TEXT"),
    ("inbox", "key_generation", "INTEGER NOT NULL DEFAULT 0"),
    ("outbox", "key_generation", "INTEGER NOT NULL DEFAULT 0"),
];

/// The client columns [`client_from_row`] reads, in its order.
const CLIENT_COLUMNS: &str = "client_id, name, wrapped_key, created_at, generation, retired_keys";

/// Rows one cleanup statement deletes: small enough that a request
/// waiting for the connection waits milliseconds, not seconds.
const PURGE_BATCH: i64 = 500;

fn table(mailbox: Mailbox) -> &'static str {
    match mailbox {
        Mailbox::Inbox => "inbox",
        Mailbox::Outbox => "outbox",
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
        let conn = Connection::open(path).map_err(sql)?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> StoreResult<SqliteStore> {
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
        })
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

fn tat_column(bucket: Bucket) -> &'static str {
    match bucket {
        Bucket::Poll => "poll_tat",
        Bucket::Send => "send_tat",
    }
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

#[async_trait]
impl Store for SqliteStore {
    async fn append(
        &self,
        which: Mailbox,
        id: ClientId,
        dedup: Dedup,
        seal: Sealer,
    ) -> StoreResult<Appended> {
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
                .query_row(
                    &format!(
                        "SELECT seq, dedup_digest FROM {} WHERE client_id = ?1 AND dedup_key = ?2",
                        table(which)
                    ),
                    params![client, dedup.key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
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
            tx.execute(
                &format!(
                    "INSERT INTO {} (client_id, seq, kind, nonce, ciphertext, tag, created_at, dedup_key, dedup_digest, key_generation)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    table(which)
                ),
                params![
                    client,
                    seq as i64,
                    message.kind,
                    message.body.nonce.as_slice(),
                    message.body.ciphertext,
                    message.body.tag.as_slice(),
                    message.created_at.millis(),
                    dedup.key,
                    dedup.digest.as_slice(),
                    message.key_generation,
                ],
            )
            .map_err(sql)?;
            tx.execute(
                &format!(
                    "UPDATE clients SET {} = ?2 WHERE client_id = ?1",
                    head_column(which)
                ),
                params![client, seq as i64],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
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
                    "SELECT seq, kind, nonce, ciphertext, tag, created_at, key_generation FROM {}
                     WHERE client_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
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
                    expires_at: None, // TEMP
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
        let ids = ids.to_vec();
        let dedup_key = dedup_key.to_string();
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT 1 FROM {} WHERE client_id = ?1 AND dedup_key = ?2",
                    table(which)
                ))
                .map_err(sql)?;
            let mut found = HashSet::new();
            for id in &ids {
                if stmt
                    .exists(params![id.to_string(), dedup_key])
                    .map_err(sql)?
                {
                    found.insert(*id);
                }
            }
            Ok(found)
        })
        .await
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
        use crate::rate_limit::Decision;
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let client = id.to_string();
            let Some(record) = client_in(&tx, &client)? else {
                return Ok(Touch::UnknownClient);
            };
            if record.generation != generation {
                return Ok(Touch::UnknownClient);
            }
            let (acked, head, poll_tat, send_tat): (i64, i64, Option<i64>, Option<i64>) = tx
                .query_row(
                    "SELECT acked, inbox_head, poll_tat, send_tat FROM clients WHERE client_id = ?1",
                    params![client],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(sql)?;
            let bucket = charge.map_or(Bucket::Poll, |c| c.bucket);
            let tat = match bucket {
                Bucket::Poll => poll_tat,
                Bucket::Send => send_tat,
            };
            let new_tat = match charge.map(|c| c.limit.decide(tat.map(Timestamp), now)) {
                Some(Decision::Deny { retry_after }) => {
                    return Ok(Touch::RateLimited { retry_after })
                }
                Some(Decision::Allow { new_tat }) => Some(new_tat.millis()),
                None => tat,
            };
            tx.execute(
                &format!(
                    "UPDATE clients SET last_seen_at = MAX(COALESCE(last_seen_at, 0), ?2), {} = ?3
                     WHERE client_id = ?1",
                    tat_column(bucket)
                ),
                params![client, now.millis(), new_tat],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(Touch::Known(ClientState {
                record,
                acked: acked as Seq,
                head: head as Seq,
            }))
        })
        .await
    }

    async fn rotate_client(&self, rotation: Rotation) -> StoreResult<Rotated> {
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
            Ok(Rotated::Rotated(rotated))
        })
        .await
    }

    async fn delete_client(&self, id: ClientId) -> StoreResult<Deleted> {
        // One transaction: the token stops working and the data goes at
        // the same instant. A client's messages are bounded by retention,
        // so the transaction stays short.
        self.with_conn(move |conn| {
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
                "DELETE FROM inbox WHERE client_id = ?1",
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
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let client = id.to_string();
            let row: Option<(i64, i64, u32)> = tx
                .query_row(
                    "SELECT acked, inbox_head, generation FROM clients WHERE client_id = ?1",
                    params![client],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(sql)?;
            let Some((acked, head, _)) = row.filter(|r| r.2 == generation) else {
                return Ok(AckOutcome::UnknownClient);
            };
            let (acked, head) = (acked as Seq, head as Seq);
            if upto > head {
                return Ok(AckOutcome::BeyondHead { head });
            }
            let cursor = acked.max(upto);
            tx.execute(
                "UPDATE clients SET acked = ?2, last_seen_at = MAX(COALESCE(last_seen_at, 0), ?3)
                 WHERE client_id = ?1",
                params![client, cursor as i64, now.millis()],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
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
        self.with_conn(move |conn| {
            let (after_created, after_id) = after.clone().unwrap_or((i64::MIN, String::new()));
            let mut stmt = conn
                .prepare_cached(
                    "SELECT client_id, name, created_at, last_seen_at, outbox_head FROM clients
                     WHERE (created_at, client_id) > (?1, ?2)
                     ORDER BY created_at, client_id LIMIT ?3",
                )
                .map_err(sql)?;
            let rows = stmt
                .query_map(
                    params![after_created, after_id, i64::from(limit) + 1],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .map_err(sql)?;
            let mut clients = Vec::new();
            for row in rows {
                let (id, name, created_at, last_seen, sent_head) = row.map_err(sql)?;
                clients.push(ClientSummary {
                    id: ClientId::parse(&id)
                        .ok_or_else(|| StoreError::Corrupt(format!("client id {id:?}")))?,
                    name,
                    created_at: Timestamp(created_at),
                    last_seen_at: last_seen.map(Timestamp),
                    sent_head: sent_head as Seq,
                    tags: Vec::new(), // TEMP
                });
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
        // Small batches, each its own statement, so requests interleave
        // with a long cleanup instead of waiting behind it.
        let acked_before = cutoffs.acked_before.millis();
        let inbox = self
            .purge_in_batches(move |conn| {
                conn.execute(
                    "DELETE FROM inbox WHERE (client_id, seq) IN (
                        SELECT i.client_id, i.seq FROM inbox i
                        JOIN clients c ON c.client_id = i.client_id
                        WHERE i.created_at < ?1 AND i.seq <= c.acked LIMIT ?2)",
                    params![acked_before, PURGE_BATCH],
                )
            })
            .await?;
        let sent_before = cutoffs.sent_before.millis();
        let outbox = self
            .purge_in_batches(move |conn| {
                conn.execute(
                    "DELETE FROM outbox WHERE (client_id, seq) IN (
                        SELECT client_id, seq FROM outbox WHERE created_at < ?1 LIMIT ?2)",
                    params![sent_before, PURGE_BATCH],
                )
            })
            .await?;
        let now = crate::clock::Clock::now(&crate::clock::SystemClock).millis();
        self.purge_in_batches(move |conn| {
            conn.execute(
                "DELETE FROM request_counts WHERE counter IN (
                    SELECT counter FROM request_counts WHERE expires_at < ?1 LIMIT ?2)",
                params![now, PURGE_BATCH],
            )
        })
        .await?;
        let keys_before = cutoffs.keys_before.millis();
        self.purge_in_batches(move |conn| {
            conn.execute(
                "DELETE FROM publish_keys WHERE created_at < ?1",
                params![keys_before],
            )
        })
        .await?;
        Ok(Purged {
            inbox,
            outbox,
            expired: 0, // TEMP
            finished: true,
        })
    }
}

impl SqliteStore {
    /// Repeats one bounded `DELETE` until it deletes nothing; returns the
    /// total.
    async fn purge_in_batches<F>(&self, delete: F) -> StoreResult<u64>
    where
        F: Fn(&Connection) -> rusqlite::Result<usize> + Send + Sync + Clone + 'static,
    {
        let mut total = 0u64;
        loop {
            let delete = delete.clone();
            let removed = self
                .with_conn(move |conn| delete(conn).map_err(sql))
                .await?;
            total += removed as u64;
            if (removed as i64) < PURGE_BATCH {
                return Ok(total);
            }
        }
    }
}
