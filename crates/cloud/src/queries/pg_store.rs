//! The cluster engine of [`JobStore`]: async queries, result pages, registered
//! queries and the webhook outbox in the PostgreSQL database every Cloud node
//! shares (the one that holds the event log, in tables of their own).
//!
//! Schema (versioned: `halo_jobs_schema_version` lists the migrations applied, in
//! one transaction under an advisory lock, so nodes starting together migrate once;
//! kept apart from the log's `halo_schema_version` so each evolves alone):
//!
//! | table | holds |
//! | --- | --- |
//! | `halo_jobs_queries` | one row per async query: its record (JSON), whether it is unfinished, the node that runs it (`owner`), whether it was just handed over to that node (`handed_over`), when its results expire |
//! | `halo_jobs_pages` | result pages (`bytea`), by query and page number |
//! | `halo_jobs_registered` | registered queries and their next occurrence (`next_at`) |
//! | `halo_jobs_outbox` | webhooks to deliver, and the dead letters |
//! | `halo_jobs_webhook_config` | each integrator's webhook configuration |
//! | `halo_jobs_nodes` | each node's lease on the queries it runs (`alive_until`, database clock) |
//!
//! **Races are decided by the database.** A registered query's occurrence is fired
//! by the one node whose `UPDATE … SET next_at = $next WHERE id = $id AND next_at =
//! $seen` changes a row ([`JobStore::claim_occurrence`]); a due webhook is sent by
//! the one node that moves its `next_at` the same way ([`JobStore::claim_delivery`]).
//! Under PostgreSQL's row locks the second `UPDATE` waits for the first, then sees
//! the new `next_at` and changes nothing.
//!
//! **Async queries are owned.** The node that accepts (or fires) a query owns it
//! (`owner`) and renews a lease ([`JobStore::keep_alive`], every second by default,
//! for [`PgJobOptions::lease`]) while it runs. When a node's lease lapses (it died,
//! or lost the database), a surviving node takes its unfinished queries over in one
//! `UPDATE … RETURNING` ([`JobStore::adopt_lapsed`]), so each is adopted once, and
//! runs them again as a restarted node would (`async_query::recover`). Writes of an
//! owned query's status and pages are fenced: they change nothing and answer
//! [`JobStoreError::NotOwner`] unless this node still owns it, so a node that comes
//! back after being taken over stops rather than overwrite the adopter's work. A node
//! dispatches only while its last renewal is younger than half the lease
//! ([`JobStore::may_dispatch`]), so it stops starting queries well before another
//! node can adopt them.
//!
//! **Queries run beside their Link.** A node dispatches only to a Link attached to
//! it. An owned query still queued whose Link holds a lease on another node is
//! handed over to that node: `UPDATE … SET owner = $holder, handed_over = true
//! WHERE id = $id AND owner = $me` ([`JobStore::hand_over`]), after which the old
//! owner forgets it; the holder takes it, once, in its next lease round
//! ([`JobStore::take_handed_over`]) and runs it (or hands it on if the Link moved
//! again). A query handed to a node that died is adopted like any other of its
//! queries (adoption clears `handed_over`), so at every moment exactly one node may
//! dispatch it.
//!
//! **Lost server.** Every round trip has a deadline ([`PgJobOptions::timeout`]); a
//! connection that fails or times out is dropped and the call answers
//! [`JobStoreError::Unavailable`] (the write may or may not have happened); the next
//! call connects again. Every method is durable on return (PostgreSQL commits with
//! `synchronous_commit` as the server is configured: on by default).
//!
//! The client is tokio-postgres driven by a private runtime; each method blocks the
//! calling thread. Call it from a blocking thread (`queries::blocking`), never from
//! inside an async task.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls};

use super::store::{Delivery, JobStore, JobStoreError, PageMeta};

/// The newest schema version of the job tables this build knows; a database
/// migrated further is refused.
pub const PG_JOBS_SCHEMA_VERSION: i32 = 2;

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`. Never edit one
/// that has shipped; add the next.
const MIGRATIONS: [&str; 2] = [
    "
CREATE TABLE halo_jobs_queries (
    id TEXT PRIMARY KEY,
    unfinished BOOLEAN NOT NULL,
    owner TEXT,
    expires_at BIGINT,
    results_expired BOOLEAN NOT NULL DEFAULT false,
    record TEXT NOT NULL
);
CREATE INDEX halo_jobs_queries_unfinished ON halo_jobs_queries (owner) WHERE unfinished;
CREATE INDEX halo_jobs_queries_expiry ON halo_jobs_queries (expires_at)
    WHERE NOT unfinished AND NOT results_expired;
CREATE TABLE halo_jobs_pages (
    query_id TEXT NOT NULL,
    page_number INTEGER NOT NULL,
    row_start BIGINT NOT NULL,
    row_count BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (query_id, page_number)
);
CREATE TABLE halo_jobs_webhook_config (
    integrator TEXT PRIMARY KEY,
    config TEXT NOT NULL
);
CREATE TABLE halo_jobs_outbox (
    id TEXT PRIMARY KEY,
    integrator TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    dead BOOLEAN NOT NULL DEFAULT false,
    last_error TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX halo_jobs_outbox_due ON halo_jobs_outbox (next_at) WHERE NOT dead;
CREATE TABLE halo_jobs_registered (
    id TEXT PRIMARY KEY,
    ord BIGSERIAL,
    site TEXT NOT NULL,
    integrator TEXT NOT NULL,
    next_at BIGINT,
    record TEXT NOT NULL
);
CREATE INDEX halo_jobs_registered_due ON halo_jobs_registered (next_at)
    WHERE next_at IS NOT NULL;
CREATE INDEX halo_jobs_registered_owner ON halo_jobs_registered (site, integrator, ord);
CREATE TABLE halo_jobs_nodes (
    node TEXT PRIMARY KEY,
    alive_until BIGINT NOT NULL
);
",
    "
ALTER TABLE halo_jobs_queries ADD COLUMN handed_over BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX halo_jobs_queries_handed_over ON halo_jobs_queries (owner)
    WHERE unfinished AND handed_over;
",
];

/// The advisory lock key that serialises the job tables' migrations ("HJOB").
const MIGRATION_LOCK: i64 = 0x484A_4F42;

/// The database's clock, in ms since the Unix epoch: leases are compared on one
/// clock, whichever node wrote them.
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// How many connections one node keeps to the database for its job store.
const CONNECTIONS: usize = 4;

/// How to reach the database, and who this node is.
#[derive(Clone, PartialEq, Eq)]
pub struct PgJobOptions {
    /// A libpq-style connection string or `postgres://` URL (as the event log's).
    pub url: String,
    /// The deadline of one connection attempt and of one round trip.
    pub timeout: Duration,
    /// This node's id: the owner of the async queries it accepts.
    pub node: String,
    /// How long this node's claim on its async queries lasts without renewal;
    /// past it another node adopts them. Default 15 s.
    pub lease: Duration,
}

impl fmt::Debug for PgJobOptions {
    /// Leaves the URL out: it may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgJobOptions")
            .field("timeout", &self.timeout)
            .field("node", &self.node)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl PgJobOptions {
    /// Node `node` on `url`, with a 5-second deadline and a 15-second lease.
    pub fn new(url: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: Duration::from_secs(5),
            node: node.into(),
            lease: Duration::from_secs(15),
        }
    }
}

/// The PostgreSQL [`JobStore`]; see the module docs.
pub struct PgJobStore {
    options: PgJobOptions,
    /// Always `Some` until dropped (see the `Drop` impl).
    rt: Option<Runtime>,
    /// A few connections, each used by one call at a time.
    slots: Vec<tokio::sync::Mutex<Option<Client>>>,
    next: AtomicUsize,
    /// When this node last renewed its lease (local monotonic clock).
    renewed: Mutex<Option<Instant>>,
}

impl fmt::Debug for PgJobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgJobStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Drop for PgJobStore {
    /// Stops the client runtime without waiting for it: the last handle on the
    /// store may go away inside an async task (where a blocking shutdown panics).
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn pg_error(e: &tokio_postgres::Error) -> JobStoreError {
    if e.is_closed() || e.code().is_none() {
        JobStoreError::Unavailable(e.to_string())
    } else {
        JobStoreError::Engine(e.to_string())
    }
}

impl From<tokio_postgres::Error> for JobStoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        pg_error(&e)
    }
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

async fn connect(options: &PgJobOptions) -> Result<Client, JobStoreError> {
    let mut config: tokio_postgres::Config = options
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| JobStoreError::Engine(format!("bad store URL: {e}")))?;
    config.connect_timeout(options.timeout);
    config.application_name("halo-cloud-jobs");
    let (client, connection) = tokio::time::timeout(options.timeout, config.connect(NoTls))
        .await
        .map_err(|_| JobStoreError::Unavailable("connecting timed out".to_owned()))?
        .map_err(|e| pg_error(&e))?;
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away.
        let _ = connection.await;
    });
    Ok(client)
}

const DELIVERY_COLUMNS: &str =
    "id, integrator, url, body, attempts, next_at, last_error, created_at";

fn delivery(row: &tokio_postgres::Row) -> Delivery {
    Delivery {
        id: row.get(0),
        integrator: row.get(1),
        url: row.get(2),
        body: row.get(3),
        attempts: u32::try_from(row.get::<_, i32>(4)).unwrap_or(0),
        next_at: u(row.get(5)),
        last_error: row.get(6),
        created_at: u(row.get(7)),
    }
}

fn attempts(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl PgJobStore {
    /// Connects, applies any missing migration of the job tables and takes this
    /// node's lease.
    ///
    /// # Errors
    /// [`JobStoreError::Unavailable`] when the server cannot be reached,
    /// [`JobStoreError::Engine`] when it refuses (or its schema is newer than this
    /// build).
    pub fn open(options: PgJobOptions) -> Result<Self, JobStoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("halo-pg-jobs")
            .enable_all()
            .build()
            .map_err(|e| JobStoreError::Engine(format!("cannot start the client runtime: {e}")))?;
        let store = Self {
            options,
            rt: Some(rt),
            slots: (0..CONNECTIONS)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            renewed: Mutex::new(None),
        };
        store.migrate()?;
        store.keep_alive()?;
        Ok(store)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.options.node
    }

    /// The schema version the job tables are at.
    ///
    /// # Errors
    /// Connection and server errors.
    pub fn schema_version(&self) -> Result<i32, JobStoreError> {
        self.run(async |c: &mut Client| {
            let row = c
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM halo_jobs_schema_version",
                    &[],
                )
                .await?;
            Ok(row.get::<_, i32>(0))
        })
    }

    /// Runs `op` with a connection under the deadline; a lost connection is dropped
    /// so that the next call connects again.
    fn run<T>(
        &self,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, JobStoreError>,
    ) -> Result<T, JobStoreError> {
        let timeout = self.options.timeout;
        let Some(rt) = self.rt.as_ref() else {
            return Err(JobStoreError::Unavailable("the store is closed".to_owned()));
        };
        rt.block_on(async {
            // A free connection if there is one, else wait for one in turn.
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let n = self.slots.len();
            let mut slot = None;
            for k in 0..n {
                if let Ok(guard) = self.slots[(start + k) % n].try_lock() {
                    slot = Some(guard);
                    break;
                }
            }
            let mut slot = match slot {
                Some(guard) => guard,
                None => tokio::time::timeout(timeout, self.slots[start % n].lock())
                    .await
                    .map_err(|_| {
                        JobStoreError::Unavailable("no connection free within the deadline".into())
                    })?,
            };
            if slot.as_ref().is_some_and(Client::is_closed) {
                *slot = None;
            }
            if slot.is_none() {
                *slot = Some(connect(&self.options).await?);
            }
            let Some(client) = slot.as_mut() else {
                return Err(JobStoreError::Unavailable("not connected".to_owned()));
            };
            let result = match tokio::time::timeout(timeout, op(client)).await {
                Ok(r) => r,
                Err(_) => Err(JobStoreError::Unavailable(format!(
                    "no answer within {timeout:?}"
                ))),
            };
            if matches!(result, Err(JobStoreError::Unavailable(_))) {
                // The connection's state is unknown (a transaction may be open).
                *slot = None;
            }
            result
        })
    }

    fn migrate(&self) -> Result<(), JobStoreError> {
        self.run(async |c: &mut Client| {
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS halo_jobs_schema_version (
                    version INTEGER PRIMARY KEY,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await?;
            let at: i32 = tx
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM halo_jobs_schema_version",
                    &[],
                )
                .await?
                .get(0);
            if at > PG_JOBS_SCHEMA_VERSION {
                return Err(JobStoreError::Engine(format!(
                    "the job tables are at schema version {at}; this build knows up to {PG_JOBS_SCHEMA_VERSION}"
                )));
            }
            for (version, sql) in (1..).zip(MIGRATIONS.iter()) {
                if version <= at {
                    continue;
                }
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO halo_jobs_schema_version (version) VALUES ($1)",
                    &[&version],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Claims the unfinished queries matching `which` (SQL over `q` and `$1`, this
    /// node) for this node and returns their records.
    fn claim_unfinished(&self, which: &'static str) -> Result<Vec<String>, JobStoreError> {
        let me = self.options.node.clone();
        self.run(async |c: &mut Client| {
            let sql = format!(
                "UPDATE halo_jobs_queries q SET owner = $1, handed_over = false
                 WHERE q.unfinished AND ({which})
                 RETURNING q.record"
            );
            let rows = c.query(&sql, &[&me]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }
}

/// A query's owner has lapsed: it has no live lease (on the database's clock).
macro_rules! lapsed {
    () => {
        "q.owner IS NULL OR NOT EXISTS (SELECT 1 FROM halo_jobs_nodes n
         WHERE n.node = q.owner
         AND n.alive_until > (extract(epoch from clock_timestamp()) * 1000)::bigint)"
    };
}

impl JobStore for PgJobStore {
    fn put_query(&self, id: &str, unfinished: bool, record: &str) -> Result<(), JobStoreError> {
        let me = &self.options.node;
        let n = self.run(async |c: &mut Client| {
            Ok(c.execute(
                "INSERT INTO halo_jobs_queries (id, unfinished, owner, record) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET unfinished = excluded.unfinished,
                     record = excluded.record
                 WHERE halo_jobs_queries.owner IS NOT DISTINCT FROM excluded.owner",
                &[&id, &unfinished, me, &record],
            )
            .await?)
        })?;
        if n == 1 {
            Ok(())
        } else {
            Err(JobStoreError::NotOwner(id.to_owned()))
        }
    }

    fn finish_query(
        &self,
        id: &str,
        record: &str,
        expires_at: u64,
        webhooks: &[Delivery],
    ) -> Result<(), JobStoreError> {
        let me = &self.options.node;
        let expires = i(expires_at);
        self.run(async |c: &mut Client| {
            let tx = c.transaction().await?;
            let n = tx
                .execute(
                    "INSERT INTO halo_jobs_queries (id, unfinished, owner, expires_at, record)
                     VALUES ($1, false, $2, $3, $4)
                     ON CONFLICT (id) DO UPDATE SET unfinished = false,
                         expires_at = excluded.expires_at, record = excluded.record
                     WHERE halo_jobs_queries.owner IS NOT DISTINCT FROM excluded.owner",
                    &[&id, me, &expires, &record],
                )
                .await?;
            if n != 1 {
                // Dropping the transaction rolls it back.
                return Err(JobStoreError::NotOwner(id.to_owned()));
            }
            for w in webhooks {
                tx.execute(
                    "INSERT INTO halo_jobs_outbox (id, integrator, url, body, attempts, next_at, created_at)
                     VALUES ($1, $2, $3, $4, 0, $5, $6) ON CONFLICT (id) DO NOTHING",
                    &[&w.id, &w.integrator, &w.url, &w.body, &i(w.next_at), &i(w.created_at)],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn query(&self, id: &str) -> Result<Option<String>, JobStoreError> {
        self.run(async |c: &mut Client| {
            let row = c
                .query_opt("SELECT record FROM halo_jobs_queries WHERE id = $1", &[&id])
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn unfinished_queries(&self) -> Result<Vec<String>, JobStoreError> {
        self.keep_alive()?;
        // Its own previous process's queries too: this node's lease may still run.
        self.claim_unfinished(concat!("q.owner = $1 OR ", lapsed!()))
    }

    fn put_page(&self, id: &str, page: &PageMeta, json: &[u8]) -> Result<(), JobStoreError> {
        let me = &self.options.node;
        let number = i32::try_from(page.page_number)
            .map_err(|_| JobStoreError::Engine("page number out of range".to_owned()))?;
        let (start, rows) = (i(page.row_start), i(page.rows));
        let n = self.run(async |c: &mut Client| {
            Ok(c.execute(
                "INSERT INTO halo_jobs_pages (query_id, page_number, row_start, row_count, data)
                 SELECT $1, $2, $3, $4, $5
                 WHERE EXISTS (SELECT 1 FROM halo_jobs_queries WHERE id = $1 AND owner = $6)
                 ON CONFLICT (query_id, page_number) DO UPDATE SET row_start = excluded.row_start,
                     row_count = excluded.row_count, data = excluded.data",
                &[&id, &number, &start, &rows, &json, me],
            )
            .await?)
        })?;
        if n == 1 {
            Ok(())
        } else {
            Err(JobStoreError::NotOwner(id.to_owned()))
        }
    }

    fn page(&self, id: &str, page_number: u32) -> Result<Option<Vec<u8>>, JobStoreError> {
        let Ok(number) = i32::try_from(page_number) else {
            return Ok(None);
        };
        self.run(async |c: &mut Client| {
            let row = c
                .query_opt(
                    "SELECT data FROM halo_jobs_pages WHERE query_id = $1 AND page_number = $2",
                    &[&id, &number],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn delete_pages(&self, id: &str) -> Result<(), JobStoreError> {
        let me = &self.options.node;
        let owned = self.run(async |c: &mut Client| {
            let tx = c.transaction().await?;
            // Locks the query's row, so no adoption slips in between.
            let owner: Option<Option<String>> = tx
                .query_opt(
                    "SELECT owner FROM halo_jobs_queries WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await?
                .map(|r| r.get(0));
            let owned = match &owner {
                // A query not stored (yet) has no pages of another node's.
                None => true,
                Some(owner) => owner.as_deref() == Some(me.as_str()),
            };
            if owned {
                tx.execute("DELETE FROM halo_jobs_pages WHERE query_id = $1", &[&id])
                    .await?;
                tx.commit().await?;
            }
            Ok(owned)
        })?;
        if owned {
            Ok(())
        } else {
            Err(JobStoreError::NotOwner(id.to_owned()))
        }
    }

    fn expire_results(&self, now: u64) -> Result<usize, JobStoreError> {
        let now = i(now);
        self.run(async |c: &mut Client| {
            let tx = c.transaction().await?;
            let expired = tx
                .query(
                    "UPDATE halo_jobs_queries SET results_expired = true
                     WHERE NOT unfinished AND NOT results_expired AND expires_at <= $1
                     RETURNING id",
                    &[&now],
                )
                .await?;
            let ids: Vec<String> = expired.iter().map(|r| r.get(0)).collect();
            if !ids.is_empty() {
                tx.execute(
                    "DELETE FROM halo_jobs_pages WHERE query_id = ANY($1)",
                    &[&ids],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(ids.len())
        })
    }

    fn put_webhook_config(&self, integrator: &str, config: &str) -> Result<(), JobStoreError> {
        self.run(async |c: &mut Client| {
            c.execute(
                "INSERT INTO halo_jobs_webhook_config (integrator, config) VALUES ($1, $2)
                 ON CONFLICT (integrator) DO UPDATE SET config = excluded.config",
                &[&integrator, &config],
            )
            .await?;
            Ok(())
        })
    }

    fn webhook_config(&self, integrator: &str) -> Result<Option<String>, JobStoreError> {
        self.run(async |c: &mut Client| {
            let row = c
                .query_opt(
                    "SELECT config FROM halo_jobs_webhook_config WHERE integrator = $1",
                    &[&integrator],
                )
                .await?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn due_deliveries(&self, now: u64, limit: usize) -> Result<Vec<Delivery>, JobStoreError> {
        let (now, limit) = (i(now), i(limit as u64));
        self.run(async |c: &mut Client| {
            let rows = c
                .query(
                    &format!(
                        "SELECT {DELIVERY_COLUMNS} FROM halo_jobs_outbox
                         WHERE NOT dead AND next_at <= $1 ORDER BY next_at LIMIT $2"
                    ),
                    &[&now, &limit],
                )
                .await?;
            Ok(rows.iter().map(delivery).collect())
        })
    }

    fn claim_delivery(&self, id: &str, seen: u64, until: u64) -> Result<bool, JobStoreError> {
        let (seen, until) = (i(seen), i(until));
        self.run(async |c: &mut Client| {
            let n = c
                .execute(
                    "UPDATE halo_jobs_outbox SET next_at = $3
                     WHERE id = $1 AND next_at = $2 AND NOT dead",
                    &[&id, &seen, &until],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn retry_delivery(
        &self,
        id: &str,
        attempts_made: u32,
        next_at: u64,
        error: &str,
    ) -> Result<(), JobStoreError> {
        let (n, next_at) = (attempts(attempts_made), i(next_at));
        self.run(async |c: &mut Client| {
            c.execute(
                "UPDATE halo_jobs_outbox SET attempts = $2, next_at = $3, last_error = $4
                 WHERE id = $1",
                &[&id, &n, &next_at, &error],
            )
            .await?;
            Ok(())
        })
    }

    fn delivered(&self, id: &str) -> Result<(), JobStoreError> {
        self.run(async |c: &mut Client| {
            c.execute("DELETE FROM halo_jobs_outbox WHERE id = $1", &[&id])
                .await?;
            Ok(())
        })
    }

    fn dead_letter(&self, id: &str, attempts_made: u32, error: &str) -> Result<(), JobStoreError> {
        let n = attempts(attempts_made);
        self.run(async |c: &mut Client| {
            c.execute(
                "UPDATE halo_jobs_outbox SET dead = true, attempts = $2, last_error = $3
                 WHERE id = $1",
                &[&id, &n, &error],
            )
            .await?;
            Ok(())
        })
    }

    fn dead_letters(&self) -> Result<Vec<Delivery>, JobStoreError> {
        self.run(async |c: &mut Client| {
            let rows = c
                .query(
                    &format!(
                        "SELECT {DELIVERY_COLUMNS} FROM halo_jobs_outbox WHERE dead
                         ORDER BY created_at, id"
                    ),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(delivery).collect())
        })
    }

    fn pending_deliveries(&self) -> Result<usize, JobStoreError> {
        self.run(async |c: &mut Client| {
            let n: i64 = c
                .query_one("SELECT count(*) FROM halo_jobs_outbox WHERE NOT dead", &[])
                .await?
                .get(0);
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
        let next_at = next_at.map(i);
        self.run(async |c: &mut Client| {
            c.execute(
                "INSERT INTO halo_jobs_registered (id, site, integrator, next_at, record)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET next_at = excluded.next_at,
                     record = excluded.record",
                &[&id, &site, &integrator, &next_at, &record],
            )
            .await?;
            Ok(())
        })
    }

    fn update_registered(&self, id: &str, record: &str) -> Result<(), JobStoreError> {
        self.run(async |c: &mut Client| {
            c.execute(
                "UPDATE halo_jobs_registered SET record = $2 WHERE id = $1",
                &[&id, &record],
            )
            .await?;
            Ok(())
        })
    }

    fn registered(&self, id: &str) -> Result<Option<(String, Option<u64>)>, JobStoreError> {
        self.run(async |c: &mut Client| {
            let row = c
                .query_opt(
                    "SELECT record, next_at FROM halo_jobs_registered WHERE id = $1",
                    &[&id],
                )
                .await?;
            Ok(row.map(|r| (r.get(0), r.get::<_, Option<i64>>(1).map(u))))
        })
    }

    fn registered_of(&self, site: &str, integrator: &str) -> Result<Vec<String>, JobStoreError> {
        self.run(async |c: &mut Client| {
            let rows = c
                .query(
                    "SELECT record FROM halo_jobs_registered WHERE site = $1 AND integrator = $2
                     ORDER BY ord",
                    &[&site, &integrator],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn due_registered(&self, now: u64) -> Result<Vec<(String, u64)>, JobStoreError> {
        let now = i(now);
        self.run(async |c: &mut Client| {
            let rows = c
                .query(
                    "SELECT id, next_at FROM halo_jobs_registered
                     WHERE next_at IS NOT NULL AND next_at <= $1 ORDER BY next_at",
                    &[&now],
                )
                .await?;
            Ok(rows.iter().map(|r| (r.get(0), u(r.get(1)))).collect())
        })
    }

    fn claim_occurrence(
        &self,
        id: &str,
        seen: u64,
        next: Option<u64>,
    ) -> Result<bool, JobStoreError> {
        let (seen, next) = (i(seen), next.map(i));
        self.run(async |c: &mut Client| {
            let n = c
                .execute(
                    "UPDATE halo_jobs_registered SET next_at = $3 WHERE id = $1 AND next_at = $2",
                    &[&id, &seen, &next],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn keep_alive(&self) -> Result<(), JobStoreError> {
        let me = &self.options.node;
        let lease = ms(self.options.lease);
        let asked = Instant::now();
        self.run(async |c: &mut Client| {
            c.execute(
                &format!(
                    "INSERT INTO halo_jobs_nodes (node, alive_until) VALUES ($1, {DB_NOW_MS} + $2)
                     ON CONFLICT (node) DO UPDATE SET alive_until = excluded.alive_until"
                ),
                &[me, &lease],
            )
            .await?;
            Ok(())
        })?;
        // The lease runs from when the renewal was sent at the latest.
        *self
            .renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(asked);
        Ok(())
    }

    fn may_dispatch(&self) -> bool {
        let renewed = *self
            .renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        renewed.is_some_and(|at| at.elapsed() < self.options.lease / 2)
    }

    fn adopt_lapsed(&self) -> Result<Vec<String>, JobStoreError> {
        if !self.may_dispatch() {
            // This node's own lease may be lapsing: adopting now could take work
            // that another node adopts too.
            return Ok(Vec::new());
        }
        self.claim_unfinished(lapsed!())
    }

    fn hand_over(&self, id: &str, to: &str) -> Result<(), JobStoreError> {
        let me = &self.options.node;
        if to == me.as_str() {
            return Err(JobStoreError::Engine(
                "a query cannot be handed over to the node that owns it".to_owned(),
            ));
        }
        let n = self.run(async |c: &mut Client| {
            Ok(c.execute(
                "UPDATE halo_jobs_queries SET owner = $2, handed_over = true
                 WHERE id = $1 AND owner = $3 AND unfinished",
                &[&id, &to, me],
            )
            .await?)
        })?;
        if n == 1 {
            Ok(())
        } else {
            Err(JobStoreError::NotOwner(id.to_owned()))
        }
    }

    fn registered_records(&self, ids: &[String]) -> Result<Vec<String>, JobStoreError> {
        self.run(async |c: &mut Client| {
            let rows = c
                .query(
                    "SELECT record FROM halo_jobs_registered WHERE id = ANY($1)",
                    &[&ids],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn take_handed_over(&self) -> Result<Vec<String>, JobStoreError> {
        if !self.may_dispatch() {
            // Left for the next round, or for the node that adopts them.
            return Ok(Vec::new());
        }
        let me = &self.options.node;
        self.run(async |c: &mut Client| {
            let rows = c
                .query(
                    "UPDATE halo_jobs_queries SET handed_over = false
                     WHERE owner = $1 AND unfinished AND handed_over
                     RETURNING record",
                    &[me],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }
}

impl crate::cluster::ClusterConfig {
    /// The job store's options for this node: the log's database and deadline, the
    /// node id as the owner of its async queries, the default lease.
    pub(crate) fn job_options(&self) -> PgJobOptions {
        PgJobOptions {
            timeout: self.timeout,
            ..PgJobOptions::new(self.store_url.clone(), self.node_id.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Barrier};

    use halo_test_support::postgres_server::PgServer;

    use super::*;
    use crate::queries::store::behaviour;

    fn node(server: &PgServer, name: &str) -> PgJobStore {
        let mut options = PgJobOptions::new(server.url(), name);
        options.timeout = Duration::from_secs(2);
        PgJobStore::open(options).unwrap()
    }

    fn short_lease(server: &PgServer, name: &str, lease: Duration) -> PgJobStore {
        let mut options = PgJobOptions::new(server.url(), name);
        options.timeout = Duration::from_secs(2);
        options.lease = lease;
        PgJobStore::open(options).unwrap()
    }

    #[test]
    fn the_shared_behaviour_holds_on_postgres() {
        let server = PgServer::start();
        let store = node(&server, "a");
        assert_eq!(store.schema_version().unwrap(), PG_JOBS_SCHEMA_VERSION);
        behaviour::an_occurrence_is_claimed_once(&store);
        behaviour::a_finished_query_queues_its_webhook_atomically_and_results_expire(&store);
        behaviour::deliveries_and_webhook_config(&store);
        // A second node on the same database migrates nothing and sees it all.
        let other = node(&server, "b");
        assert_eq!(other.schema_version().unwrap(), PG_JOBS_SCHEMA_VERSION);
        assert_eq!(other.registered("r1").unwrap().unwrap().1, Some(2000));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let server = PgServer::start();
        let store = node(&server, "a");
        store
            .run(async |c: &mut Client| {
                c.execute(
                    "INSERT INTO halo_jobs_schema_version (version) VALUES ($1)",
                    &[&(PG_JOBS_SCHEMA_VERSION + 1)],
                )
                .await?;
                Ok(())
            })
            .unwrap();
        let err = PgJobStore::open(PgJobOptions::new(server.url(), "b")).unwrap_err();
        assert!(err.to_string().contains("schema version"), "{err}");
    }

    /// Runs `claim` on two nodes at once, `rounds` times; answers how many won each
    /// round.
    fn race(
        a: Arc<PgJobStore>,
        b: Arc<PgJobStore>,
        rounds: u64,
        prepare: impl Fn(&PgJobStore, u64),
        claim: impl Fn(&PgJobStore, u64) -> bool + Send + Sync + Copy + 'static,
    ) -> Vec<usize> {
        let mut winners = Vec::new();
        for round in 0..rounds {
            prepare(&a, round);
            let barrier = Arc::new(Barrier::new(2));
            let handles: Vec<_> = [Arc::clone(&a), Arc::clone(&b)]
                .into_iter()
                .map(|store| {
                    let barrier = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        barrier.wait();
                        claim(&store, round)
                    })
                })
                .collect();
            let won = handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|w| *w)
                .count();
            winners.push(won);
        }
        winners
    }

    #[test]
    fn two_nodes_racing_for_an_occurrence_fire_it_once_each_time() {
        let server = PgServer::start();
        let (a, b) = (Arc::new(node(&server, "a")), Arc::new(node(&server, "b")));
        a.put_registered("r", "s", "i", Some(1000), "{}").unwrap();
        let winners = race(
            a,
            b,
            100,
            |_, _| {},
            // Both read occurrence `round`, both try to move it on.
            |store, round| {
                let seen = 1000 + round * 10;
                store.claim_occurrence("r", seen, Some(seen + 10)).unwrap()
            },
        );
        assert_eq!(winners, vec![1; 100]);
    }

    #[test]
    fn two_nodes_racing_for_a_delivery_take_it_once_each_time() {
        let server = PgServer::start();
        let (a, b) = (Arc::new(node(&server, "a")), Arc::new(node(&server, "b")));
        let winners = race(
            a,
            b,
            100,
            |store, round| {
                let id = format!("q{round}");
                store.put_query(&id, true, "{}").unwrap();
                let hook = Delivery {
                    id: format!("w{round}"),
                    integrator: "i".into(),
                    url: "http://x".into(),
                    body: "{}".into(),
                    attempts: 0,
                    next_at: 5,
                    last_error: None,
                    created_at: 5,
                };
                store.finish_query(&id, "{}", 100, &[hook]).unwrap();
                let due = store.due_deliveries(5, 1000).unwrap();
                assert!(due.iter().any(|d| d.id == format!("w{round}")));
            },
            // Both saw it due at 5 (`due_deliveries`), both try to take it.
            |store, round| {
                store
                    .claim_delivery(&format!("w{round}"), 5, 10_000)
                    .unwrap()
            },
        );
        assert_eq!(winners, vec![1; 100]);
    }

    #[test]
    fn a_query_accepted_on_one_node_is_read_on_another() {
        let server = PgServer::start();
        let (a, b) = (node(&server, "a"), node(&server, "b"));
        a.put_query("q", true, "{\"status\":\"queued\"}").unwrap();
        assert_eq!(
            b.query("q").unwrap().as_deref(),
            Some("{\"status\":\"queued\"}")
        );
        let page = PageMeta {
            page_number: 1,
            row_start: 0,
            rows: 2,
            size: 9,
        };
        let bytes: Vec<u8> = (0..=255u8).collect();
        a.put_page("q", &page, &bytes).unwrap();
        a.finish_query("q", "{\"status\":\"successful\"}", u64::MAX, &[])
            .unwrap();
        assert_eq!(
            b.query("q").unwrap().as_deref(),
            Some("{\"status\":\"successful\"}")
        );
        assert_eq!(b.page("q", 1).unwrap(), Some(bytes));
        // Node b did not take it over: node a is alive and it finished anyway.
        assert!(b.unfinished_queries().unwrap().is_empty());
    }

    #[test]
    fn a_lapsed_nodes_queries_are_adopted_once_and_it_is_fenced_off() {
        let server = PgServer::start();
        let lease = Duration::from_secs(3);
        let a = short_lease(&server, "a", lease);
        let b = Arc::new(short_lease(&server, "b", Duration::from_secs(30)));
        let c = Arc::new(short_lease(&server, "c", Duration::from_secs(30)));
        for n in 0..20 {
            a.put_query(&format!("q{n}"), true, &format!("{{\"n\":{n}}}"))
                .unwrap();
        }
        a.put_query("done", false, "{}").unwrap();
        // While a renews its lease, nobody adopts its queries.
        a.keep_alive().unwrap();
        assert!(a.may_dispatch());
        assert!(b.adopt_lapsed().unwrap().is_empty());
        assert!(c.unfinished_queries().unwrap().is_empty());
        // a stops renewing (it died, or lost the database).
        std::thread::sleep(lease + Duration::from_millis(300));
        assert!(
            !a.may_dispatch(),
            "a must stop dispatching before its lease lapses"
        );
        b.keep_alive().unwrap();
        c.keep_alive().unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let adopters: Vec<_> = [Arc::clone(&b), Arc::clone(&c)]
            .into_iter()
            .map(|store| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    store.adopt_lapsed().unwrap()
                })
            })
            .collect();
        let mut adopted: Vec<String> = adopters
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        adopted.sort();
        let mut expected: Vec<String> = (0..20).map(|n| format!("{{\"n\":{n}}}")).collect();
        expected.sort();
        // Each unfinished query adopted by exactly one node; the finished one by none.
        assert_eq!(adopted, expected);
        assert!(b.adopt_lapsed().unwrap().is_empty());
        assert!(c.adopt_lapsed().unwrap().is_empty());
        // a comes back: its writes to the queries it lost change nothing.
        a.keep_alive().unwrap();
        let page = PageMeta {
            page_number: 1,
            row_start: 0,
            rows: 1,
            size: 2,
        };
        assert!(matches!(
            a.put_query("q0", true, "{\"stale\":1}"),
            Err(JobStoreError::NotOwner(_))
        ));
        assert!(matches!(
            a.put_page("q0", &page, b"[]"),
            Err(JobStoreError::NotOwner(_))
        ));
        assert!(matches!(
            a.delete_pages("q0"),
            Err(JobStoreError::NotOwner(_))
        ));
        let hook = Delivery {
            id: "stale-hook".into(),
            integrator: "i".into(),
            url: "http://x".into(),
            body: "{}".into(),
            attempts: 0,
            next_at: 5,
            last_error: None,
            created_at: 5,
        };
        assert!(matches!(
            a.finish_query("q0", "{\"stale\":2}", 1, &[hook]),
            Err(JobStoreError::NotOwner(_))
        ));
        assert_eq!(b.query("q0").unwrap().as_deref(), Some("{\"n\":0}"));
        assert_eq!(
            b.pending_deliveries().unwrap(),
            0,
            "no webhook for a fenced end"
        );
        assert_eq!(b.page("q0", 1).unwrap(), None);
        // Nor does a take them back when it restarts.
        assert!(a.unfinished_queries().unwrap().is_empty());
    }

    #[test]
    fn a_handed_over_query_is_taken_once_and_its_old_owner_is_fenced_off() {
        let server = PgServer::start();
        let a = node(&server, "a");
        let b = short_lease(&server, "b", Duration::from_secs(3));
        let c = short_lease(&server, "c", Duration::from_secs(30));
        a.put_query("q", true, "{\"n\":1}").unwrap();
        assert!(b.take_handed_over().unwrap().is_empty());
        a.hand_over("q", "b").unwrap();
        // Handed over once: a owns it no more, and its writes change nothing.
        assert!(matches!(
            a.hand_over("q", "c"),
            Err(JobStoreError::NotOwner(_))
        ));
        assert!(matches!(
            a.put_query("q", true, "{\"stale\":1}"),
            Err(JobStoreError::NotOwner(_))
        ));
        // The holder takes it once; nobody else does.
        assert!(c.take_handed_over().unwrap().is_empty());
        b.keep_alive().unwrap();
        assert_eq!(b.take_handed_over().unwrap(), vec!["{\"n\":1}".to_owned()]);
        assert!(b.take_handed_over().unwrap().is_empty());
        assert!(a.take_handed_over().unwrap().is_empty());
        // Handed on again (its Link moved), to a node that dies before taking it:
        // it is adopted like any other of that node's queries, once, and the
        // adopter does not run it a second time as handed over.
        b.put_query("q", true, "{\"n\":2}").unwrap();
        b.hand_over("q", "a").unwrap();
        b.put_query("r", true, "{\"n\":3}").unwrap();
        b.hand_over("r", "c").unwrap();
        drop(a);
        let a_lapses = node(&server, "a-watch");
        assert!(
            a_lapses.adopt_lapsed().unwrap().is_empty(),
            "a's lease still runs"
        );
        c.keep_alive().unwrap();
        // c's own handed-over query is c's already; a's lapses in 15 s: shorten it.
        c.run(async |conn: &mut Client| {
            conn.execute(
                "UPDATE halo_jobs_nodes SET alive_until = 0 WHERE node = 'a'",
                &[],
            )
            .await?;
            Ok(())
        })
        .unwrap();
        assert_eq!(c.adopt_lapsed().unwrap(), vec!["{\"n\":2}".to_owned()]);
        assert_eq!(c.take_handed_over().unwrap(), vec!["{\"n\":3}".to_owned()]);
        assert!(c.take_handed_over().unwrap().is_empty());
        // b's lease lapses too: nothing of its is left to adopt.
        std::thread::sleep(Duration::from_millis(3300));
        assert!(c.adopt_lapsed().unwrap().is_empty());
        assert!(matches!(
            b.hand_over("q", "c"),
            Err(JobStoreError::NotOwner(_))
        ));
        assert!(matches!(
            c.hand_over("q", "c"),
            Err(JobStoreError::Engine(_))
        ));
    }

    #[test]
    fn a_node_that_restarts_takes_back_its_own_queries() {
        let server = PgServer::start();
        let first = node(&server, "a");
        first.put_query("q", true, "{}").unwrap();
        drop(first);
        let other = node(&server, "b");
        // a's lease still runs: b leaves the query alone, a's new process takes it.
        assert!(other.adopt_lapsed().unwrap().is_empty());
        let again = node(&server, "a");
        assert_eq!(again.unfinished_queries().unwrap(), vec!["{}".to_owned()]);
    }

    #[test]
    fn a_lost_server_answers_unavailable_and_the_store_reconnects() {
        let mut server = PgServer::start();
        let mut options = PgJobOptions::new(server.url(), "a");
        options.timeout = Duration::from_millis(500);
        let store = PgJobStore::open(options).unwrap();
        store.put_query("q", true, "{}").unwrap();
        server.pause();
        assert!(matches!(
            store.query("q"),
            Err(JobStoreError::Unavailable(_))
        ));
        server.resume();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match store.query("q") {
                Ok(found) => {
                    assert_eq!(found.as_deref(), Some("{}"));
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "still failing: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
