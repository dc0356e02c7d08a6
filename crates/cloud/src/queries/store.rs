//! The durable home of async queries, their result pages, registered queries and the
//! webhook outbox: the [`JobStore`] trait, and [`SqliteJobStore`], its embedded
//! engine (a file of its own, `jobs.sqlite`, beside the event log; WAL,
//! `synchronous=FULL`, so a write returns only once durable).
//!
//! **Several Cloud nodes.** Everything a node decides alone goes through this
//! trait: [`super::pg_store::PgJobStore`] implements the same methods over the
//! cluster's PostgreSQL, and the two operations where nodes could race are
//! compare-and-set in the store itself:
//! [`JobStore::claim_occurrence`] (a registered query's next occurrence is fired by
//! the one node whose update of `next_at` from the value it read succeeds) and
//! [`JobStore::claim_delivery`] (one node takes a due webhook delivery by moving its
//! `next_at` forward from the value it read). An async query is run by the node
//! that accepted it (its runner dispatches from the stored key hash); in a cluster
//! the store records that node as the query's owner under a lease, and a surviving
//! node adopts the unfinished queries of a node whose lease lapsed
//! ([`JobStore::adopt_lapsed`]).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    /// The engine failed (IO, full disk, damaged file).
    #[error("job store: {0}")]
    Engine(String),
    /// A stored record does not decode.
    #[error("job store: a stored record does not decode: {0}")]
    Decode(String),
    /// The shared store cannot be reached (lost connection, no answer within the
    /// deadline); the write may or may not have happened. Retry later.
    #[error("job store unavailable: {0}")]
    Unavailable(String),
    /// Another node took this async query over (this node's lease lapsed): the
    /// write was refused and this node must stop running it.
    #[error("job store: query {0} is owned by another node")]
    NotOwner(String),
}

impl From<rusqlite::Error> for JobStoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Engine(e.to_string())
    }
}

impl From<serde_json::Error> for JobStoreError {
    fn from(e: serde_json::Error) -> Self {
        Self::Decode(e.to_string())
    }
}

/// One page of a stored result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageMeta {
    /// From 1.
    pub page_number: u32,
    /// Index (from 0) of the page's first row.
    pub row_start: u64,
    /// Rows in the page.
    pub rows: u64,
    /// Bytes of the page's JSON.
    pub size: u64,
}

/// A webhook waiting to be delivered (or dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The notification id (`X-Halo-Id`, the payload's `id`).
    pub id: String,
    /// The integrator whose secret signs it.
    pub integrator: String,
    /// Where it goes (templates already filled in).
    pub url: String,
    /// The raw JSON body, signed as is.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (ms since the Unix epoch).
    pub next_at: u64,
    /// Why the last attempt failed, if one did.
    pub last_error: Option<String>,
    /// When it was queued (ms).
    pub created_at: u64,
}

/// The durable store of the async path. Every write returns once durable.
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Writes (inserts or replaces) an async query's record, as JSON.
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn put_query(&self, id: &str, unfinished: bool, record: &str) -> Result<(), JobStoreError>;

    /// Writes a query's final record and queues its webhooks, in one transaction: a
    /// finished query's notification is never lost, nor sent for an unfinished one.
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails (nothing is written).
    fn finish_query(
        &self,
        id: &str,
        record: &str,
        expires_at: u64,
        webhooks: &[Delivery],
    ) -> Result<(), JobStoreError>;

    /// An async query's record.
    ///
    /// # Errors
    /// [`JobStoreError`] when the read fails.
    fn query(&self, id: &str) -> Result<Option<String>, JobStoreError>;

    /// The records of the queries not finished yet (for recovery at start). A shared
    /// store answers only those this node now owns: it takes over, in the same
    /// statement, the ones its own previous process or a node whose lease lapsed
    /// left, and leaves those of live nodes alone.
    ///
    /// # Errors
    /// [`JobStoreError`] when the read fails.
    fn unfinished_queries(&self) -> Result<Vec<String>, JobStoreError>;

    /// Stores one result page.
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn put_page(&self, id: &str, page: &PageMeta, json: &[u8]) -> Result<(), JobStoreError>;

    /// One result page's JSON.
    ///
    /// # Errors
    /// [`JobStoreError`] when the read fails.
    fn page(&self, id: &str, page_number: u32) -> Result<Option<Vec<u8>>, JobStoreError>;

    /// Deletes a query's pages (a failed query's partial result).
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn delete_pages(&self, id: &str) -> Result<(), JobStoreError>;

    /// Deletes the pages of every finished query whose retention ended at or before
    /// `now`; returns how many queries expired. Their records stay (pages answer 410).
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn expire_results(&self, now: u64) -> Result<usize, JobStoreError>;

    /// Sets an integrator's webhook configuration (JSON).
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn put_webhook_config(&self, integrator: &str, config: &str) -> Result<(), JobStoreError>;

    /// An integrator's webhook configuration (JSON).
    ///
    /// # Errors
    /// [`JobStoreError`] when the read fails.
    fn webhook_config(&self, integrator: &str) -> Result<Option<String>, JobStoreError>;

    /// Deliveries due at `now`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// [`JobStoreError`] when the read fails.
    fn due_deliveries(&self, now: u64, limit: usize) -> Result<Vec<Delivery>, JobStoreError>;

    /// Takes a due delivery for one attempt: moves its `next_at` from `seen` to
    /// `until` (when it is due again if this attempt never reports). `false` if
    /// another taker moved it first (compare-and-set).
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn claim_delivery(&self, id: &str, seen: u64, until: u64) -> Result<bool, JobStoreError>;

    /// Records a failed attempt and when to try again.
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn retry_delivery(
        &self,
        id: &str,
        attempts: u32,
        next_at: u64,
        error: &str,
    ) -> Result<(), JobStoreError>;

    /// Removes a delivered webhook.
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn delivered(&self, id: &str) -> Result<(), JobStoreError>;

    /// Moves a delivery that keeps failing to the dead letters.
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn dead_letter(&self, id: &str, attempts: u32, error: &str) -> Result<(), JobStoreError>;

    /// The dead letters, oldest first.
    ///
    /// # Errors
    /// [`JobStoreError`] when the read fails.
    fn dead_letters(&self) -> Result<Vec<Delivery>, JobStoreError>;

    /// Deliveries still pending (not delivered, not dead).
    ///
    /// # Errors
    /// [`JobStoreError`] when the read fails.
    fn pending_deliveries(&self) -> Result<usize, JobStoreError>;

    /// Writes (inserts or replaces) a registered query's record, with when it next
    /// runs (`None`: never again).
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn put_registered(
        &self,
        id: &str,
        site: &str,
        integrator: &str,
        next_at: Option<u64>,
        record: &str,
    ) -> Result<(), JobStoreError>;

    /// Rewrites a registered query's record, leaving its next occurrence alone (the
    /// scheduler owns it, through [`JobStore::claim_occurrence`]).
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn update_registered(&self, id: &str, record: &str) -> Result<(), JobStoreError>;

    /// A registered query's record and its next occurrence.
    ///
    /// # Errors
    /// [`JobStoreError`] when the read fails.
    fn registered(&self, id: &str) -> Result<Option<(String, Option<u64>)>, JobStoreError>;

    /// The registered queries of an integrator on a site.
    ///
    /// # Errors
    /// [`JobStoreError`] when the read fails.
    fn registered_of(&self, site: &str, integrator: &str) -> Result<Vec<String>, JobStoreError>;

    /// Registered queries whose next occurrence is due at `now`: (id, next_at).
    ///
    /// # Errors
    /// [`JobStoreError`] when the read fails.
    fn due_registered(&self, now: u64) -> Result<Vec<(String, u64)>, JobStoreError>;

    /// Claims one occurrence: moves `next_at` from `seen` to `next` (`None`: no more
    /// occurrences). Exactly one caller wins per occurrence (compare-and-set), so
    /// several nodes sharing the store fire it once.
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn claim_occurrence(
        &self,
        id: &str,
        seen: u64,
        next: Option<u64>,
    ) -> Result<bool, JobStoreError>;

    /// Whether several nodes share this store (then the background work keeps this
    /// node's lease alive and adopts the queries of nodes whose lease lapsed).
    fn shared(&self) -> bool {
        false
    }

    /// Renews this node's lease on the async queries it runs (shared stores).
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn keep_alive(&self) -> Result<(), JobStoreError> {
        Ok(())
    }

    /// Whether this node may dispatch an async query now: false once its lease may
    /// have lapsed (it could not renew it for a while), since another node may then
    /// adopt and run the same query.
    fn may_dispatch(&self) -> bool {
        true
    }

    /// Takes over the unfinished queries of nodes whose lease lapsed (each one by
    /// exactly one node) and returns their records, as [`JobStore::unfinished_queries`]
    /// does at start. A store that only one process uses has none.
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn adopt_lapsed(&self) -> Result<Vec<String>, JobStoreError> {
        Ok(Vec::new())
    }

    /// Hands a queued query this node owns over to node `to` (the node holding its
    /// Link), in one compare-and-set on the owner; `to` runs it once it takes it
    /// ([`JobStore::take_handed_over`]). Only for a query never dispatched.
    ///
    /// # Errors
    /// [`JobStoreError::NotOwner`] when this node no longer owns it (another node
    /// adopted it: this node must stop running it), or the store's failure. A store
    /// that only one process uses hands nothing over ([`JobStoreError::NotOwner`]).
    fn hand_over(&self, id: &str, to: &str) -> Result<(), JobStoreError> {
        let _ = to;
        Err(JobStoreError::NotOwner(id.to_owned()))
    }

    /// Takes the queries other nodes handed over to this one since the last call
    /// (each one once) and returns their records, to run.
    ///
    /// # Errors
    /// [`JobStoreError`] when the write fails.
    fn take_handed_over(&self) -> Result<Vec<String>, JobStoreError> {
        Ok(Vec::new())
    }

    /// The records of the registered queries among `ids` (those that exist), in
    /// one read: a cluster node checks whether the occurrences it runs were
    /// cancelled through another node.
    ///
    /// # Errors
    /// [`JobStoreError`] when the read fails.
    fn registered_records(&self, ids: &[String]) -> Result<Vec<String>, JobStoreError> {
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((record, _)) = self.registered(id)? {
                records.push(record);
            }
        }
        Ok(records)
    }
}

/// The SQLite engine of [`JobStore`].
#[derive(Debug)]
pub struct SqliteJobStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS async_queries (
    id TEXT PRIMARY KEY,
    unfinished INTEGER NOT NULL,
    expires_at INTEGER,
    results_expired INTEGER NOT NULL DEFAULT 0,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS async_unfinished ON async_queries(unfinished) WHERE unfinished = 1;
CREATE TABLE IF NOT EXISTS result_pages (
    query_id TEXT NOT NULL,
    page_number INTEGER NOT NULL,
    row_start INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (query_id, page_number)
);
CREATE TABLE IF NOT EXISTS webhook_config (
    integrator TEXT PRIMARY KEY,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    integrator TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    dead INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(dead, next_at);
CREATE TABLE IF NOT EXISTS registered_queries (
    id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    integrator TEXT NOT NULL,
    next_at INTEGER,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS registered_due ON registered_queries(next_at);
";

impl SqliteJobStore {
    /// Opens (creating if needed) the store at `path`.
    ///
    /// # Errors
    /// [`JobStoreError`] when the file cannot be opened or set up.
    pub fn open(path: &Path) -> Result<Self, JobStoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| JobStoreError::Engine(e.to_string()))?;
        }
        Self::setup(Connection::open(path)?)
    }

    /// A store in memory (nothing survives the process).
    ///
    /// # Errors
    /// [`JobStoreError`] when SQLite cannot be set up.
    pub fn in_memory() -> Result<Self, JobStoreError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Self, JobStoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, JobStoreError>,
    ) -> Result<T, JobStoreError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| JobStoreError::Engine("a writer panicked".to_owned()))?;
        f(&mut conn)
    }
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn delivery(row: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        id: row.get(0)?,
        integrator: row.get(1)?,
        url: row.get(2)?,
        body: row.get(3)?,
        attempts: row.get(4)?,
        next_at: u(row.get(5)?),
        last_error: row.get(6)?,
        created_at: u(row.get(7)?),
    })
}

const DELIVERY_COLUMNS: &str =
    "id, integrator, url, body, attempts, next_at, last_error, created_at";

impl JobStore for SqliteJobStore {
    fn put_query(&self, id: &str, unfinished: bool, record: &str) -> Result<(), JobStoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO async_queries (id, unfinished, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET unfinished = ?2, record = ?3",
                params![id, unfinished, record],
            )?;
            Ok(())
        })
    }

    fn finish_query(
        &self,
        id: &str,
        record: &str,
        expires_at: u64,
        webhooks: &[Delivery],
    ) -> Result<(), JobStoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO async_queries (id, unfinished, expires_at, record) VALUES (?1, 0, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET unfinished = 0, expires_at = ?2, record = ?3",
                params![id, i(expires_at), record],
            )?;
            for w in webhooks {
                tx.execute(
                    "INSERT OR IGNORE INTO outbox (id, integrator, url, body, attempts, next_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6)",
                    params![w.id, w.integrator, w.url, w.body, i(w.next_at), i(w.created_at)],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn query(&self, id: &str) -> Result<Option<String>, JobStoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT record FROM async_queries WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn unfinished_queries(&self) -> Result<Vec<String>, JobStoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT record FROM async_queries WHERE unfinished = 1")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
    }

    fn put_page(&self, id: &str, page: &PageMeta, json: &[u8]) -> Result<(), JobStoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO result_pages (query_id, page_number, row_start, rows, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, page.page_number, i(page.row_start), i(page.rows), json],
            )?;
            Ok(())
        })
    }

    fn page(&self, id: &str, page_number: u32) -> Result<Option<Vec<u8>>, JobStoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT data FROM result_pages WHERE query_id = ?1 AND page_number = ?2",
                params![id, page_number],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn delete_pages(&self, id: &str) -> Result<(), JobStoreError> {
        self.with(|c| {
            c.execute("DELETE FROM result_pages WHERE query_id = ?1", [id])?;
            Ok(())
        })
    }

    fn expire_results(&self, now: u64) -> Result<usize, JobStoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM result_pages WHERE query_id IN (SELECT id FROM async_queries
                 WHERE unfinished = 0 AND results_expired = 0 AND expires_at <= ?1)",
                [i(now)],
            )?;
            let n = tx.execute(
                "UPDATE async_queries SET results_expired = 1
                 WHERE unfinished = 0 AND results_expired = 0 AND expires_at <= ?1",
                [i(now)],
            )?;
            tx.commit()?;
            Ok(n)
        })
    }

    fn put_webhook_config(&self, integrator: &str, config: &str) -> Result<(), JobStoreError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO webhook_config (integrator, config) VALUES (?1, ?2)",
                params![integrator, config],
            )?;
            Ok(())
        })
    }

    fn webhook_config(&self, integrator: &str) -> Result<Option<String>, JobStoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT config FROM webhook_config WHERE integrator = ?1",
                [integrator],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    fn due_deliveries(&self, now: u64, limit: usize) -> Result<Vec<Delivery>, JobStoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM outbox WHERE dead = 0 AND next_at <= ?1
                 ORDER BY next_at LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![i(now), i(limit as u64)], delivery)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn claim_delivery(&self, id: &str, seen: u64, until: u64) -> Result<bool, JobStoreError> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE outbox SET next_at = ?3 WHERE id = ?1 AND next_at = ?2 AND dead = 0",
                params![id, i(seen), i(until)],
            )?;
            Ok(n == 1)
        })
    }

    fn retry_delivery(
        &self,
        id: &str,
        attempts: u32,
        next_at: u64,
        error: &str,
    ) -> Result<(), JobStoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET attempts = ?2, next_at = ?3, last_error = ?4 WHERE id = ?1",
                params![id, attempts, i(next_at), error],
            )?;
            Ok(())
        })
    }

    fn delivered(&self, id: &str) -> Result<(), JobStoreError> {
        self.with(|c| {
            c.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    fn dead_letter(&self, id: &str, attempts: u32, error: &str) -> Result<(), JobStoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE outbox SET dead = 1, attempts = ?2, last_error = ?3 WHERE id = ?1",
                params![id, attempts, error],
            )?;
            Ok(())
        })
    }

    fn dead_letters(&self) -> Result<Vec<Delivery>, JobStoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM outbox WHERE dead = 1 ORDER BY created_at"
            ))?;
            let rows = stmt.query_map([], delivery)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn pending_deliveries(&self) -> Result<usize, JobStoreError> {
        self.with(|c| {
            let n: i64 = c.query_row("SELECT count(*) FROM outbox WHERE dead = 0", [], |r| {
                r.get(0)
            })?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    fn put_registered(
        &self,
        id: &str,
        site: &str,
        integrator: &str,
        next_at: Option<u64>,
        record: &str,
    ) -> Result<(), JobStoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO registered_queries (id, site, integrator, next_at, record)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET next_at = ?4, record = ?5",
                params![id, site, integrator, next_at.map(i), record],
            )?;
            Ok(())
        })
    }

    fn update_registered(&self, id: &str, record: &str) -> Result<(), JobStoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE registered_queries SET record = ?2 WHERE id = ?1",
                params![id, record],
            )?;
            Ok(())
        })
    }

    fn registered(&self, id: &str) -> Result<Option<(String, Option<u64>)>, JobStoreError> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT record, next_at FROM registered_queries WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.map(u))),
            )
            .optional()?)
        })
    }

    fn registered_of(&self, site: &str, integrator: &str) -> Result<Vec<String>, JobStoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT record FROM registered_queries WHERE site = ?1 AND integrator = ?2
                 ORDER BY rowid",
            )?;
            let rows = stmt.query_map(params![site, integrator], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
    }

    fn due_registered(&self, now: u64) -> Result<Vec<(String, u64)>, JobStoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, next_at FROM registered_queries WHERE next_at IS NOT NULL
                 AND next_at <= ?1 ORDER BY next_at",
            )?;
            let rows = stmt.query_map([i(now)], |r| Ok((r.get(0)?, u(r.get(1)?))))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn claim_occurrence(
        &self,
        id: &str,
        seen: u64,
        next: Option<u64>,
    ) -> Result<bool, JobStoreError> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE registered_queries SET next_at = ?3 WHERE id = ?1 AND next_at = ?2",
                params![id, i(seen), next.map(i)],
            )?;
            Ok(n == 1)
        })
    }
}

/// Behaviour every engine shows; run against SQLite here and against PostgreSQL in
/// `pg_store`'s tests.
#[cfg(test)]
pub(crate) mod behaviour {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn an_occurrence_is_claimed_once(store: &dyn JobStore) {
        store
            .put_registered("r1", "s", "i", Some(1000), "{}")
            .unwrap();
        store
            .put_registered("r2", "s", "i", Some(1500), "{\"b\":1}")
            .unwrap();
        store.put_registered("r3", "t", "i", None, "{}").unwrap();
        assert_eq!(store.due_registered(999).unwrap(), vec![]);
        assert_eq!(
            store.due_registered(1000).unwrap(),
            vec![("r1".to_owned(), 1000)]
        );
        assert!(store.claim_occurrence("r1", 1000, Some(2000)).unwrap());
        // A second node that read the same `next_at` loses.
        assert!(!store.claim_occurrence("r1", 1000, Some(2000)).unwrap());
        assert_eq!(store.registered("r1").unwrap().unwrap().1, Some(2000));
        // The last occurrence: no next one.
        assert!(store.claim_occurrence("r2", 1500, None).unwrap());
        assert_eq!(store.registered("r2").unwrap().unwrap().1, None);
        assert!(!store.claim_occurrence("r2", 1500, None).unwrap());
        // Rewriting the record leaves the schedule alone.
        store.update_registered("r1", "{\"c\":2}").unwrap();
        assert_eq!(
            store.registered("r1").unwrap(),
            Some(("{\"c\":2}".to_owned(), Some(2000)))
        );
        // Listed in the order registered, by site and integrator.
        assert_eq!(
            store.registered_of("s", "i").unwrap(),
            vec!["{\"c\":2}".to_owned(), "{\"b\":1}".to_owned()]
        );
        assert_eq!(store.registered_of("s", "j").unwrap(), Vec::<String>::new());
        assert_eq!(store.registered("nope").unwrap(), None);
    }

    pub(crate) fn a_finished_query_queues_its_webhook_atomically_and_results_expire(
        store: &dyn JobStore,
    ) {
        store.put_query("q", true, "{\"a\":1}").unwrap();
        assert_eq!(store.unfinished_queries().unwrap().len(), 1);
        let page = PageMeta {
            page_number: 1,
            row_start: 0,
            rows: 1,
            size: 2,
        };
        store.put_page("q", &page, b"[]").unwrap();
        let hook = Delivery {
            id: "w".into(),
            integrator: "i".into(),
            url: "http://x".into(),
            body: "{}".into(),
            attempts: 0,
            next_at: 5,
            last_error: None,
            created_at: 5,
        };
        store.finish_query("q", "{\"a\":2}", 100, &[hook]).unwrap();
        assert_eq!(store.query("q").unwrap().as_deref(), Some("{\"a\":2}"));
        assert!(store.unfinished_queries().unwrap().is_empty());
        assert_eq!(store.due_deliveries(4, 10).unwrap().len(), 0);
        assert_eq!(store.due_deliveries(5, 10).unwrap().len(), 1);
        assert!(store.claim_delivery("w", 5, 50).unwrap());
        assert!(!store.claim_delivery("w", 5, 50).unwrap());
        assert_eq!(store.due_deliveries(5, 10).unwrap().len(), 0);
        store.retry_delivery("w", 1, 60, "refused").unwrap();
        let due = store.due_deliveries(60, 10).unwrap();
        assert_eq!(due[0].attempts, 1);
        assert_eq!(due[0].last_error.as_deref(), Some("refused"));
        assert_eq!(store.page("q", 1).unwrap().as_deref(), Some(&b"[]"[..]));
        assert_eq!(store.page("q", 2).unwrap(), None);
        assert_eq!(store.expire_results(99).unwrap(), 0);
        assert_eq!(store.expire_results(100).unwrap(), 1);
        assert_eq!(store.expire_results(100).unwrap(), 0);
        assert_eq!(store.page("q", 1).unwrap(), None);
        assert_eq!(store.pending_deliveries().unwrap(), 1);
        store.dead_letter("w", 10, "boom").unwrap();
        assert_eq!(
            store.dead_letters().unwrap()[0].last_error.as_deref(),
            Some("boom")
        );
        assert!(!store.claim_delivery("w", 60, 70).unwrap());
        assert_eq!(store.pending_deliveries().unwrap(), 0);
    }

    pub(crate) fn deliveries_and_webhook_config(store: &dyn JobStore) {
        assert_eq!(store.webhook_config("i").unwrap(), None);
        store.put_webhook_config("i", "{\"u\":1}").unwrap();
        store.put_webhook_config("i", "{\"u\":2}").unwrap();
        assert_eq!(
            store.webhook_config("i").unwrap().as_deref(),
            Some("{\"u\":2}")
        );
        store.put_query("f", true, "{}").unwrap();
        let hook = |id: &str, at: u64| Delivery {
            id: id.into(),
            integrator: "i".into(),
            url: "http://x".into(),
            body: "{}".into(),
            attempts: 0,
            next_at: at,
            last_error: None,
            created_at: at,
        };
        store
            .finish_query("f", "{}", 10, &[hook("d2", 20), hook("d1", 10)])
            .unwrap();
        // Oldest first, limited.
        let due = store.due_deliveries(100, 1).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id, "d1");
        store.delivered("d1").unwrap();
        assert_eq!(store.pending_deliveries().unwrap(), 1);
        // A failed query's partial pages go.
        store.put_query("g", true, "{}").unwrap();
        let page = PageMeta {
            page_number: 1,
            row_start: 0,
            rows: 3,
            size: 2,
        };
        store.put_page("g", &page, b"[1]").unwrap();
        store.delete_pages("g").unwrap();
        assert_eq!(store.page("g", 1).unwrap(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn an_occurrence_is_claimed_once() {
        behaviour::an_occurrence_is_claimed_once(&SqliteJobStore::in_memory().unwrap());
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_finished_query_queues_its_webhook_atomically_and_results_expire() {
        behaviour::a_finished_query_queues_its_webhook_atomically_and_results_expire(
            &SqliteJobStore::in_memory().unwrap(),
        );
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn deliveries_and_webhook_config() {
        behaviour::deliveries_and_webhook_config(&SqliteJobStore::in_memory().unwrap());
    }
}
