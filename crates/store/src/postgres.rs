//! The cluster [`EventLog`]: one PostgreSQL database shared by every Cloud node.
//!
//! Records keep the SQLite log's encoding (`seq`, CRC-32 of `seq` (u64 LE) then the
//! payload, the payload bytes) and snapshots keep theirs (CRC-32 of `upto`, `len`
//! then the bytes), so a record reads the same whichever engine stored it.
//!
//! Schema (versioned: `halo_schema_version` lists the migrations applied, each in
//! its own transaction under an advisory lock, so nodes starting together migrate
//! once):
//!
//! | table | columns | holds |
//! | --- | --- | --- |
//! | `halo_log` | `seq` (primary key), `crc`, `payload` | one row per record |
//! | `halo_snapshot` | `upto` (primary key), `len`, `crc`, `data` | one row per snapshot |
//! | `halo_quarantine`, `halo_quarantine_snapshot` | as above plus `reason` | what [`EventLog::quarantine_after`] moved aside |
//! | `link_leases` (version 2) | `link_id` (primary key), `node_id`, `peer_addr`, `expires_at` | which node each Link is attached to ([`PgLeases`]) |
//! | `halo_counters` (version 3) | `key`, `period` (primary key), `total`, `updated_at` | quota and rate-limit totals of the whole cluster ([`PgCounters`]) |
//!
//! **Optimistic append.** [`EventLog::append_at`] appends only if the log still ends
//! where the caller's decision was made: in one transaction it reads the end, refuses
//! with [`StoreError::ConcurrentWriter`] if it moved, and inserts at the next
//! sequence numbers; two nodes racing for the same number both pass the read, and
//! the primary key lets exactly one commit (the other gets a unique violation,
//! reported as the same conflict). The caller catches up and decides again. The
//! commit also `NOTIFY`s [`NOTIFY_CHANNEL`] with the new end, which
//! [`PgListener`] turns into a wake-up for the other nodes.
//!
//! **Lost server.** Every round trip has a deadline ([`PgOptions::timeout`]); a
//! connection that fails or times out is dropped and the call answers
//! [`StoreError::Unavailable`]; the next call connects again. An append that times
//! out may or may not have committed: the caller must treat its outcome as unknown
//! (catch up, then decide again), never as refused.
//!
//! The client is tokio-postgres driven by a private current-thread runtime, so
//! every method blocks the calling thread: call it from a thread of its own (the
//! Cloud's state writer), never from inside an async task.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::runtime::Runtime;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::corruption::record_crc;
use crate::log::{EventLog, ReadReport, Rejected, SnapshotRead, Visit};
use crate::sqlite::snapshot_crc;
use crate::{Corruption, CorruptionKind, Seq, StoreError};

/// The channel each append `NOTIFY`s with the new end of the log.
pub const NOTIFY_CHANNEL: &str = "halo_log";

/// The newest schema version this build knows; a database migrated further is
/// refused ([`StoreError::UnsupportedFormat`]).
pub const PG_SCHEMA_VERSION: i32 = 3;

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`. Never edit one
/// that has shipped; add the next.
const MIGRATIONS: [&str; 3] = [
    "
CREATE TABLE halo_log (
    seq BIGINT PRIMARY KEY CHECK (seq > 0),
    crc BIGINT NOT NULL,
    payload BYTEA NOT NULL
);
CREATE TABLE halo_snapshot (
    upto BIGINT PRIMARY KEY CHECK (upto >= 0),
    len BIGINT NOT NULL,
    crc BIGINT NOT NULL,
    data BYTEA NOT NULL
);
CREATE TABLE halo_quarantine (
    id BIGSERIAL PRIMARY KEY, seq BIGINT, crc BIGINT, payload BYTEA, reason TEXT NOT NULL
);
CREATE TABLE halo_quarantine_snapshot (
    id BIGSERIAL PRIMARY KEY, upto BIGINT, len BIGINT, crc BIGINT, data BYTEA,
    reason TEXT NOT NULL
);
",
    // Version 2: where each Link is attached (`lease::PgLeases`). Never logged:
    // renewals are not events.
    "
CREATE TABLE link_leases (
    link_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    peer_addr TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX link_leases_expires_at ON link_leases (expires_at);
",
    // Version 3: quota and rate-limit counters shared by the nodes
    // (`counters::PgCounters`). Never logged: they change on every query.
    "
CREATE TABLE halo_counters (
    key TEXT NOT NULL,
    period BIGINT NOT NULL,
    total BIGINT NOT NULL CHECK (total >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (key, period)
);
CREATE INDEX halo_counters_updated_at ON halo_counters (updated_at);
",
];

mod blocking;
mod counters;
mod lease;
use blocking::Blocking;
pub use counters::{CounterRound, PgCounters};
pub use lease::{LeaseRound, LiveLease, PgLeases};

/// The advisory lock key that serialises migrations ("HALO").
const MIGRATION_LOCK: i64 = 0x4841_4C4F;

/// How many records one read round trip fetches.
const READ_PAGE: i64 = 10_000;

/// How to reach the database.
#[derive(Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// A libpq-style connection string or `postgres://` URL.
    pub url: String,
    /// The deadline of one connection attempt and of one round trip; past it the
    /// server counts as lost.
    pub timeout: Duration,
}

impl fmt::Debug for PgOptions {
    /// Leaves the URL out: it may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PgOptions {
    /// `url` with a 5-second deadline.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The PostgreSQL [`EventLog`]; see the module docs.
pub struct PgLog {
    options: PgOptions,
    rt: Runtime,
    client: RefCell<Option<Client>>,
    /// The end of the log as this handle last saw it (open, append, read).
    last: Cell<Seq>,
}

impl fmt::Debug for PgLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLog")
            .field("options", &self.options)
            .field("last", &self.last.get())
            .field("connected", &self.client.borrow().is_some())
            .finish_non_exhaustive()
    }
}

fn runtime() -> Result<Runtime, StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot start the client runtime: {e}")))
}

/// Maps a driver error: a lost or broken connection is [`StoreError::Unavailable`]
/// (retry later), an error the server answered is [`StoreError::Postgres`].
fn pg_error(e: &tokio_postgres::Error) -> StoreError {
    if e.is_closed() || e.code().is_none() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Postgres(e.to_string())
    }
}

fn to_i64(seq: Seq) -> Result<i64, StoreError> {
    i64::try_from(seq.get()).map_err(|_| StoreError::SeqOverflow)
}

fn from_i64(n: i64) -> Seq {
    Seq::new(u64::try_from(n).unwrap_or(0))
}

async fn connect(options: &PgOptions) -> Result<Client, StoreError> {
    let config: tokio_postgres::Config = options
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Postgres(format!("bad store URL: {e}")))?;
    let mut config = config;
    config.connect_timeout(options.timeout);
    config.application_name("halo-cloud");
    let (client, connection) = tokio::time::timeout(options.timeout, config.connect(NoTls))
        .await
        .map_err(|_| StoreError::Unavailable("connecting timed out".to_owned()))?
        .map_err(|e| pg_error(&e))?;
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away.
        let _ = connection.await;
    });
    Ok(client)
}

impl PgLog {
    /// Connects, applies any missing schema migration, and reads the end of the log.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached,
    /// [`StoreError::UnsupportedFormat`] when the schema is newer than this build,
    /// [`StoreError::Postgres`] for anything else the server refuses.
    pub fn open(options: PgOptions) -> Result<Self, StoreError> {
        let log = PgLog {
            rt: runtime()?,
            client: RefCell::new(None),
            last: Cell::new(Seq::ZERO),
            options,
        };
        log.migrate()?;
        let end = log.end()?;
        log.last.set(end);
        Ok(log)
    }

    /// Another handle on the same database (its own connection), for writing
    /// snapshots from another thread.
    ///
    /// # Errors
    /// As [`PgLog::open`].
    pub fn reopen(&self) -> Result<Self, StoreError> {
        Self::open(self.options.clone())
    }

    /// The schema version the database is at.
    ///
    /// # Errors
    /// Connection and server errors.
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        self.run(async |c: &mut Client| {
            let row = c
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM halo_schema_version",
                    &[],
                )
                .await?;
            Ok(row.get::<_, i32>(0))
        })
    }

    /// The end of the log in the database now (not as last seen).
    ///
    /// # Errors
    /// Connection and server errors.
    pub fn end(&self) -> Result<Seq, StoreError> {
        self.run(async |c: &mut Client| {
            let row = c
                .query_one("SELECT coalesce(max(seq), 0) FROM halo_log", &[])
                .await?;
            Ok(row.get::<_, i64>(0))
        })
        .map(from_i64)
    }

    /// Runs `op` with a connected client under the deadline; a lost connection is
    /// dropped so that the next call connects again.
    fn run<T>(
        &self,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        self.run_store(async |c: &mut Client| op(c).await.map_err(|e| pg_error(&e)))
    }

    fn run_store<T>(
        &self,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.client.borrow_mut();
        if slot.as_ref().is_some_and(Client::is_closed) {
            *slot = None;
        }
        let timeout = self.options.timeout;
        let result = self.rt.block_on(async {
            if slot.is_none() {
                *slot = Some(connect(&self.options).await?);
            }
            let Some(client) = slot.as_mut() else {
                return Err(StoreError::Unavailable("not connected".to_owned()));
            };
            match tokio::time::timeout(timeout, op(client)).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "no answer within {timeout:?}"
                ))),
            }
        });
        if matches!(result, Err(StoreError::Unavailable(_))) {
            // The connection's state is unknown (a transaction may be open): start
            // afresh next time.
            *slot = None;
        }
        result
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.run_store(async |c: &mut Client| {
            let tx = c.transaction().await.map_err(|e| pg_error(&e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(|e| pg_error(&e))?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS halo_schema_version (
                    version INTEGER PRIMARY KEY,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await
            .map_err(|e| pg_error(&e))?;
            let at: i32 = tx
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM halo_schema_version",
                    &[],
                )
                .await
                .map_err(|e| pg_error(&e))?
                .get(0);
            if at > PG_SCHEMA_VERSION {
                return Err(StoreError::UnsupportedFormat {
                    found: format!("PostgreSQL schema version {at}"),
                    supported: PG_SCHEMA_VERSION.unsigned_abs(),
                });
            }
            for (version, sql) in (1..).zip(MIGRATIONS.iter()) {
                if version <= at {
                    continue;
                }
                tx.batch_execute(sql).await.map_err(|e| pg_error(&e))?;
                tx.execute(
                    "INSERT INTO halo_schema_version (version) VALUES ($1)",
                    &[&version],
                )
                .await
                .map_err(|e| pg_error(&e))?;
            }
            tx.commit().await.map_err(|e| pg_error(&e))
        })
    }

    fn insert_at(&self, expected: Seq, records: &[&[u8]]) -> Result<Seq, StoreError> {
        let first = expected.checked_next().ok_or(StoreError::SeqOverflow)?;
        let mut seqs = Vec::with_capacity(records.len());
        let mut crcs = Vec::with_capacity(records.len());
        let mut payloads = Vec::with_capacity(records.len());
        let mut seq = first;
        for record in records {
            seqs.push(to_i64(seq)?);
            crcs.push(i64::from(record_crc(seq, record)));
            payloads.push(*record);
            seq = seq.checked_next().ok_or(StoreError::SeqOverflow)?;
        }
        let end = from_i64(*seqs.last().unwrap_or(&to_i64(expected)?));
        let expected_sql = to_i64(expected)?;
        self.run_store(async |c: &mut Client| {
            let tx = c.transaction().await.map_err(|e| pg_error(&e))?;
            let found: i64 = tx
                .query_one("SELECT coalesce(max(seq), 0) FROM halo_log", &[])
                .await
                .map_err(|e| pg_error(&e))?
                .get(0);
            if found != expected_sql {
                return Err(StoreError::ConcurrentWriter {
                    expected,
                    found: from_i64(found),
                });
            }
            let inserted = tx
                .execute(
                    "INSERT INTO halo_log (seq, crc, payload)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
                    &[&seqs, &crcs, &payloads],
                )
                .await;
            match inserted {
                Ok(_) => {}
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    // Another node committed the same sequence numbers first.
                    return Err(StoreError::ConcurrentWriter {
                        expected,
                        found: end,
                    });
                }
                Err(e) => return Err(pg_error(&e)),
            }
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&NOTIFY_CHANNEL, &end.get().to_string()],
            )
            .await
            .map_err(|e| pg_error(&e))?;
            tx.commit().await.map_err(|e| {
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    StoreError::ConcurrentWriter {
                        expected,
                        found: end,
                    }
                } else {
                    pg_error(&e)
                }
            })
        })?;
        self.last.set(end);
        Ok(end)
    }
}

impl EventLog for PgLog {
    fn append(&mut self, records: &[&[u8]]) -> Result<Seq, StoreError> {
        self.append_at(self.last.get(), records)
    }

    fn append_at(&mut self, expected: Seq, records: &[&[u8]]) -> Result<Seq, StoreError> {
        if records.is_empty() {
            return Ok(expected);
        }
        self.insert_at(expected, records)
    }

    fn last_seq(&self) -> Seq {
        self.last.get()
    }

    fn read_from(&self, after: Seq, f: &mut Visit<'_>) -> Result<ReadReport, StoreError> {
        let mut last = after;
        let mut delivered = 0u64;
        let mut stop: Option<(Seq, CorruptionKind)> = None;
        'pages: loop {
            let from = to_i64(last)?;
            let rows = self.run(async |c: &mut Client| {
                c.query(
                    "SELECT seq, crc, payload FROM halo_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&from, &READ_PAGE],
                )
                .await
            })?;
            let page = rows.len();
            for row in rows {
                let expected = last.checked_next().ok_or(StoreError::SeqOverflow)?;
                let seq = from_i64(row.get::<_, i64>(0));
                if seq != expected {
                    stop = Some((expected, CorruptionKind::Gap { found: seq }));
                    break 'pages;
                }
                let stored = u32::try_from(row.get::<_, i64>(1)).ok();
                let payload: &[u8] = row.get(2);
                let computed = record_crc(seq, payload);
                if stored != Some(computed) {
                    stop = Some((
                        seq,
                        CorruptionKind::ChecksumMismatch {
                            stored: stored.unwrap_or(0),
                            computed,
                        },
                    ));
                    break 'pages;
                }
                if let Err(Rejected(reason)) = f(seq, payload) {
                    stop = Some((seq, CorruptionKind::Undecodable { reason }));
                    break 'pages;
                }
                last = seq;
                delivered += 1;
            }
            if i64::try_from(page).unwrap_or(i64::MAX) < READ_PAGE {
                break;
            }
        }
        if last > self.last.get() {
            self.last.set(last);
        }
        let stopped_at = match stop {
            Some((at, kind)) => {
                let from = to_i64(last)?;
                let n = self
                    .run(async |c: &mut Client| {
                        let row = c
                            .query_one("SELECT count(*) FROM halo_log WHERE seq > $1", &[&from])
                            .await?;
                        Ok(row.get::<_, i64>(0))
                    })
                    .unwrap_or(0);
                Some(Corruption {
                    last_good: last,
                    at,
                    kind,
                    unreplayed: u64::try_from(n).unwrap_or(0),
                })
            }
            None => None,
        };
        Ok(ReadReport {
            last_delivered: last,
            delivered,
            stopped_at,
        })
    }

    fn write_snapshot(&mut self, upto: Seq, state: &[u8]) -> Result<(), StoreError> {
        let end = self.end()?;
        if upto > end {
            return Err(StoreError::SnapshotAhead { upto, last: end });
        }
        let len = u64::try_from(state.len()).map_err(|_| StoreError::SeqOverflow)?;
        let crc = i64::from(snapshot_crc(upto, len, std::iter::once(state)));
        let (key, len) = (
            to_i64(upto)?,
            i64::try_from(len).map_err(|_| StoreError::SeqOverflow)?,
        );
        self.run(async |c: &mut Client| {
            c.execute(
                "INSERT INTO halo_snapshot (upto, len, crc, data) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (upto) DO UPDATE SET len = excluded.len, crc = excluded.crc,
                     data = excluded.data",
                &[&key, &len, &crc, &state],
            )
            .await
        })
        .map(drop)
    }

    fn snapshot_seqs(&self) -> Result<Vec<Seq>, StoreError> {
        let rows = self.run(async |c: &mut Client| {
            c.query("SELECT upto FROM halo_snapshot ORDER BY upto DESC", &[])
                .await
        })?;
        Ok(rows.iter().map(|r| from_i64(r.get::<_, i64>(0))).collect())
    }

    fn read_snapshot(&self, upto: Seq) -> Result<SnapshotRead, StoreError> {
        let key = to_i64(upto)?;
        let row = self.run(async |c: &mut Client| {
            c.query_opt(
                "SELECT len, crc, data FROM halo_snapshot WHERE upto = $1",
                &[&key],
            )
            .await
        })?;
        let Some(row) = row else {
            return Ok(SnapshotRead::Damaged("no such snapshot".to_owned()));
        };
        let (len, stored, data): (i64, i64, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        let (Ok(len), Ok(stored)) = (u64::try_from(len), u32::try_from(stored)) else {
            return Ok(SnapshotRead::Damaged("header out of range".to_owned()));
        };
        if u64::try_from(data.len()).ok() != Some(len) {
            return Ok(SnapshotRead::Damaged(format!(
                "{} bytes present, header says {len}",
                data.len()
            )));
        }
        let computed = snapshot_crc(upto, len, std::iter::once(data.as_slice()));
        if computed != stored {
            return Ok(SnapshotRead::Damaged(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )));
        }
        Ok(SnapshotRead::Valid(data))
    }

    fn retain_snapshots(&mut self, keep: usize) -> Result<u64, StoreError> {
        let keep = i64::try_from(keep.max(1)).unwrap_or(i64::MAX);
        self.run(async |c: &mut Client| {
            c.execute(
                "DELETE FROM halo_snapshot WHERE upto NOT IN
                    (SELECT upto FROM halo_snapshot ORDER BY upto DESC LIMIT $1)",
                &[&keep],
            )
            .await
        })
    }

    fn quarantine_after(&mut self, last_good: Seq, reason: &str) -> Result<u64, StoreError> {
        let key = to_i64(last_good)?;
        let moved = self.run(async |c: &mut Client| {
            let tx = c.transaction().await?;
            let moved = tx
                .execute(
                    "INSERT INTO halo_quarantine (seq, crc, payload, reason)
                     SELECT seq, crc, payload, $2 FROM halo_log WHERE seq > $1",
                    &[&key, &reason],
                )
                .await?;
            tx.execute("DELETE FROM halo_log WHERE seq > $1", &[&key])
                .await?;
            tx.execute(
                "INSERT INTO halo_quarantine_snapshot (upto, len, crc, data, reason)
                 SELECT upto, len, crc, data, $2 FROM halo_snapshot WHERE upto > $1",
                &[&key, &reason],
            )
            .await?;
            tx.execute("DELETE FROM halo_snapshot WHERE upto > $1", &[&key])
                .await?;
            tx.commit().await?;
            Ok(moved)
        })?;
        self.last.set(last_good);
        Ok(moved)
    }
}

/// Wakes a node when another node appends: a connection that `LISTEN`s on
/// [`NOTIFY_CHANNEL`]. Notifications are only a hint (they are lost while the
/// connection is down): the follower also catches up on a timer.
pub struct PgListener {
    options: PgOptions,
    rt: Runtime,
    /// The notifications of the current connection; `None` until connected.
    notes: Option<tokio::sync::mpsc::UnboundedReceiver<Seq>>,
    client: Option<Client>,
}

impl fmt::Debug for PgListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgListener")
            .field("options", &self.options)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl PgListener {
    /// A listener that connects on its first [`wait`](Self::wait).
    ///
    /// # Errors
    /// The client runtime cannot start.
    pub fn new(options: PgOptions) -> Result<Self, StoreError> {
        Ok(PgListener {
            options,
            rt: runtime()?,
            notes: None,
            client: None,
        })
    }

    /// Waits up to `max` for an append notification; answers the newest end of the
    /// log announced (draining the others), or `None` when none came in time.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached or the
    /// connection broke (the next call connects again).
    pub fn wait(&mut self, max: Duration) -> Result<Option<Seq>, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.notes = None;
            let (client, notes) = self.rt.block_on(listen(&self.options))?;
            self.client = Some(client);
            self.notes = Some(notes);
        }
        let Some(notes) = self.notes.as_mut() else {
            return Err(StoreError::Unavailable("not listening".to_owned()));
        };
        let first = self
            .rt
            .block_on(async { tokio::time::timeout(max, notes.recv()).await });
        match first {
            Err(_) => Ok(None),
            Ok(None) => {
                self.client = None;
                self.notes = None;
                Err(StoreError::Unavailable(
                    "the listening connection closed".to_owned(),
                ))
            }
            Ok(Some(mut newest)) => {
                while let Ok(more) = notes.try_recv() {
                    newest = newest.max(more);
                }
                Ok(Some(newest))
            }
        }
    }
}

async fn listen(
    options: &PgOptions,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<Seq>), StoreError> {
    let config: tokio_postgres::Config = options
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Postgres(format!("bad store URL: {e}")))?;
    let mut config = config;
    config.connect_timeout(options.timeout);
    config.application_name("halo-cloud-listener");
    let (client, mut connection) = tokio::time::timeout(options.timeout, config.connect(NoTls))
        .await
        .map_err(|_| StoreError::Unavailable("connecting timed out".to_owned()))?
        .map_err(|e| pg_error(&e))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let seq = n
                    .payload()
                    .parse::<u64>()
                    .map(Seq::new)
                    .unwrap_or(Seq::ZERO);
                if tx.send(seq).is_err() {
                    break;
                }
            }
        }
        // Dropping `tx` tells the waiter that the connection is gone.
    });
    let listening = tokio::time::timeout(
        options.timeout,
        client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")),
    )
    .await
    .map_err(|_| StoreError::Unavailable("LISTEN timed out".to_owned()))?;
    listening.map_err(|e| pg_error(&e))?;
    Ok((client, rx))
}
