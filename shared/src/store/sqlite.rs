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

const SCHEMA_VERSION: i64 = 1;

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
";

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

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let conn = Connection::open(path).map_err(backend)?;
        Self::init(conn)
    }

    fn init(conn: Connection) -> StoreResult<SqliteStore> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        // WAL + NORMAL: a committed transaction survives the process being
        // killed (the WAL is in the OS's hands); only a power cut can lose
        // the last few commits.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(backend)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "database schema version {version} is newer than this build understands ({SCHEMA_VERSION})"
            )));
        }
        conn.execute_batch(SCHEMA).map_err(backend)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(backend)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` on the blocking pool with the connection.
    async fn with_conn<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a half-applied
            // transaction (SQLite rolls it back), so a poisoned lock is safe
            // to keep using.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(backend)?
    }
}

fn client_record(
    id: &str,
    name: Option<String>,
    wrapped_key: Vec<u8>,
    created_at: i64,
) -> StoreResult<ClientRecord> {
    Ok(ClientRecord {
        id: ClientId::parse(id).ok_or_else(|| StoreError::Corrupt(format!("client id {id:?}")))?,
        name,
        wrapped_key,
        created_at: Timestamp(created_at),
    })
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
                .map_err(backend)?;
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
                .map_err(backend)?;
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
                .map_err(backend)?;
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
                    "INSERT INTO {} (client_id, seq, kind, nonce, ciphertext, tag, created_at, dedup_key, dedup_digest)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
                ],
            )
            .map_err(backend)?;
            tx.execute(
                &format!(
                    "UPDATE clients SET {} = ?2 WHERE client_id = ?1",
                    head_column(which)
                ),
                params![client, seq as i64],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(Appended::Stored { seq })
        })
        .await
    }

    async fn read(
        &self,
        which: Mailbox,
        id: ClientId,
        after: Seq,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT seq, kind, nonce, ciphertext, tag, created_at FROM {}
                     WHERE client_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                    table(which)
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![id.to_string(), after as i64, i64::from(limit)],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, Vec<u8>>(3)?,
                            r.get::<_, Vec<u8>>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    },
                )
                .map_err(backend)?;
            let mut messages = Vec::new();
            for row in rows {
                let (seq, kind, nonce, ciphertext, tag, created_at) = row.map_err(backend)?;
                let corrupt = || StoreError::Corrupt(format!("message {seq} of {id}"));
                messages.push(StoredMessage {
                    seq: seq as Seq,
                    kind,
                    body: Sealed {
                        ciphertext,
                        nonce: nonce.try_into().map_err(|_| corrupt())?,
                        tag: tag.try_into().map_err(|_| corrupt())?,
                    },
                    created_at: Timestamp(created_at),
                });
            }
            Ok(messages)
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
                .map_err(backend)?;
            let existing = tx
                .query_row(
                    "SELECT c.client_id, c.name, c.wrapped_key, c.created_at
                     FROM fingerprints f JOIN clients c ON c.client_id = f.client_id
                     WHERE f.fingerprint_hash = ?1",
                    params![fingerprint.as_slice()],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
                .optional()
                .map_err(backend)?;
            if let Some((id, name, key, created_at)) = existing {
                return Ok(Registration {
                    client: client_record(&id, name, key, created_at)?,
                    created: false,
                });
            }
            let id = candidate.id.to_string();
            tx.execute(
                "INSERT INTO clients (client_id, name, wrapped_key, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, candidate.name, candidate.wrapped_key, candidate.created_at.millis()],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO fingerprints (fingerprint_hash, client_id) VALUES (?1, ?2)",
                params![fingerprint.as_slice(), id],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(Registration {
                client: candidate,
                created: true,
            })
        })
        .await
    }

    async fn touch_client(
        &self,
        id: ClientId,
        now: Timestamp,
        limit: Option<PollRateLimit>,
    ) -> StoreResult<Touch> {
        use crate::rate_limit::Decision;
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let client = id.to_string();
            let row = tx
                .query_row(
                    "SELECT name, wrapped_key, created_at, acked, inbox_head, poll_tat
                     FROM clients WHERE client_id = ?1",
                    params![client],
                    |r| {
                        Ok((
                            r.get::<_, Option<String>>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, Option<i64>>(5)?,
                        ))
                    },
                )
                .optional()
                .map_err(backend)?;
            let Some((name, wrapped_key, created_at, acked, head, tat)) = row else {
                return Ok(Touch::UnknownClient);
            };
            let new_tat = match limit.map(|l| l.decide(tat.map(Timestamp), now)) {
                Some(Decision::Deny { retry_after }) => {
                    return Ok(Touch::RateLimited { retry_after })
                }
                Some(Decision::Allow { new_tat }) => Some(new_tat.millis()),
                None => tat,
            };
            tx.execute(
                "UPDATE clients SET last_seen_at = MAX(COALESCE(last_seen_at, 0), ?2), poll_tat = ?3
                 WHERE client_id = ?1",
                params![client, now.millis(), new_tat],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(Touch::Known(ClientState {
                record: client_record(&client, name, wrapped_key, created_at)?,
                acked: acked as Seq,
                head: head as Seq,
            }))
        })
        .await
    }

    async fn load_clients(&self, ids: &[ClientId]) -> StoreResult<Vec<ClientRecord>> {
        let ids: Vec<String> = ids.iter().map(ClientId::to_string).collect();
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT client_id, name, wrapped_key, created_at FROM clients WHERE client_id = ?1",
                )
                .map_err(backend)?;
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                let row = stmt
                    .query_row(params![id], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    })
                    .optional()
                    .map_err(backend)?;
                if let Some((id, name, key, created_at)) = row {
                    found.push(client_record(&id, name, key, created_at)?);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn acknowledge(
        &self,
        id: ClientId,
        upto: Seq,
        now: Timestamp,
    ) -> StoreResult<AckOutcome> {
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let client = id.to_string();
            let row: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT acked, inbox_head FROM clients WHERE client_id = ?1",
                    params![client],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            let Some((acked, head)) = row else {
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
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
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
            let (after_created, after_id) = after.unwrap_or((i64::MIN, String::new()));
            let mut stmt = conn
                .prepare_cached(
                    "SELECT client_id, name, created_at, last_seen_at FROM clients
                     WHERE (created_at, client_id) > (?1, ?2)
                     ORDER BY created_at, client_id LIMIT ?3",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![after_created, after_id, i64::from(limit) + 1],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                        ))
                    },
                )
                .map_err(backend)?;
            let mut clients = Vec::new();
            for row in rows {
                let (id, name, created_at, last_seen) = row.map_err(backend)?;
                clients.push(ClientSummary {
                    id: ClientId::parse(&id)
                        .ok_or_else(|| StoreError::Corrupt(format!("client id {id:?}")))?,
                    name,
                    created_at: Timestamp(created_at),
                    last_seen_at: last_seen.map(Timestamp),
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

    async fn purge_acknowledged(&self, created_before: Timestamp) -> StoreResult<u64> {
        self.with_conn(move |conn| {
            let removed = conn
                .execute(
                    "DELETE FROM inbox WHERE created_at < ?1
                     AND seq <= (SELECT acked FROM clients WHERE clients.client_id = inbox.client_id)",
                    params![created_before.millis()],
                )
                .map_err(backend)?;
            Ok(removed as u64)
        })
        .await
    }
}
