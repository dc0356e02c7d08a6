//! Runs one [`QueryJob`] on one SQLite database, with the checks the Link owes.
//!
//! [`execute_with`] is pure with respect to networking, so it is tested directly.
//! In order, it:
//!
//! 1. refuses a job whose Halo GUID is not this database's (`unknownSite`);
//! 2. refuses an epoch older than the highest seen for this database
//!    (`staleEpoch`); the highest epoch is raised atomically (`fetch_max`);
//! 3. refuses an unknown catalogue (`badRequest`);
//! 4. takes a connection **of this database only**: a pooled read-only one, or a
//!    fresh read-write one if the job is `nonQuery` with `allowWrite`;
//! 5. installs SQLite's authorizer, which allows `SELECT`, reads of allowlisted
//!    tables and views (or reads made through an allowlisted view), `count(*)`-style
//!    reads of CTEs and subqueries (no column read), the functions of
//!    [`ALLOWED_FUNCTIONS`] only, and writes to allowlisted tables only for
//!    `nonQuery` with `allowWrite`; everything else (other tables, `sqlite_schema`,
//!    `ATTACH`, `PRAGMA`, DDL, transactions, every other function:
//!    `randomblob`, `zeroblob`, `load_extension`, ...) is denied (`denied`).
//!    The authorizer is installed once per connection and enforces a gate the
//!    executor sets around each job's statement (closed between jobs); the
//!    connection keeps up to 32 compiled statements (`STATEMENT_CACHE`), all
//!    compiled under one allowlist: a job with another allowlist empties the
//!    cache first, so a statement is reused only under the exact allowlist (and
//!    writes flag) it was authorised for. The schema names the authorizer needs
//!    are re-read before any compile in a job (a fresh prepare, or SQLite
//!    re-preparing a cached statement after a schema change: that compile is
//!    refused, the names are read, and it is tried once more); a schema change
//!    also empties the cache;
//! 6. installs a progress handler that interrupts the statement at the deadline
//!    (`timeout`) or on cancel (`cancelled`);
//! 7. streams rows into compact JSON and stops at [`MAX_RESULT_BYTES`]
//!    (`tooLarge`).
//!
//! Every connection is also bounded by [`SqlLimits`] (set when it is opened, before
//! any job runs): no string or blob longer than `max_value_bytes`
//! (`SQLITE_LIMIT_LENGTH`; a query that builds or reads one fails with `tooLarge`),
//! no attached database (`SQLITE_LIMIT_ATTACHED` = 0), double-quoted text is
//! always a name, never a string (as the Cloud's analyser reads it), defensive mode
//! on, and SQLite's heap as a whole is capped at `heap_limit_bytes`
//! (`PRAGMA hard_heap_limit`; a query that needs more fails with a `database`
//! error saying so, and its connection is not reused).
//!
//! Known limitation (fails closed): `SELECT count(*) FROM some_view` is denied
//! when only the view is allowlisted (so is `count` of a rowid-alias column),
//! because SQLite reports the flattened view's base table without naming the view;
//! `count(some_other_column)` works.
//!
//! SQLite has no stored procedures: a job that names a procedure
//! ([`QueryJob::procedure`]) runs the text this database's configured
//! [`Procedures`] hold under that name ("no such procedure" otherwise, a `database`
//! error with SQLite's generic code 1, as "no such table" is), only if the name is in
//! the allowlist's `procedures`, and with the tables the procedure's text names as
//! the authorizer's allowlist (the procedure grant covers them); everything else
//! above holds unchanged.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use halo_ids::{Crn, Epoch, HaloGuid, PmsType};
use halo_protocol::{
    DatabaseInfo, ExecutionMode, MAX_RESULT_BYTES, QueryError, QueryErrorKind, QueryJob,
};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::LinkError;
use crate::identity::DatabaseIdentity;
use crate::procedure::Procedures;

/// The SQL functions a job may call; the authorizer denies every other one.
///
/// Deterministic (or clock-reading), cheap scalar, aggregate and window functions
/// whose results are bounded by [`SqlLimits::max_value_bytes`]:
///
/// - aggregates: `count`, `sum`, `total`, `avg`, `min`, `max`, `group_concat`,
///   `string_agg`;
/// - window functions: `row_number`, `rank`, `dense_rank`, `percent_rank`,
///   `cume_dist`, `ntile`, `lag`, `lead`, `first_value`, `last_value`,
///   `nth_value`;
/// - null handling and branching: `coalesce`, `ifnull`, `nullif`, `iif`, `if`,
///   `likely`, `unlikely`, `likelihood`;
/// - text: `length`, `octet_length`, `lower`, `upper`, `trim`, `ltrim`, `rtrim`,
///   `substr`, `substring`, `replace`, `instr`, `concat`, `concat_ws`, `printf`,
///   `format`, `char`, `unicode`, `hex`, `quote`, `like` (the `LIKE` operator);
/// - numbers and types: `abs`, `round`, `typeof` (`CAST` is not a function);
/// - dates: `date`, `time`, `datetime`, `julianday`, `unixepoch`, `strftime`,
///   `timediff`, `current_date`, `current_time`, `current_timestamp`.
///
/// Denied, among others: `randomblob`, `zeroblob`, `random` (memory and
/// non-determinism), `load_extension`, `readfile`, `writefile`, `edit`,
/// `fts3_tokenizer`, the JSON functions and operators (`json_*`, `->`, `->>`),
/// full-text and R-tree helpers, `glob`, `changes`, `last_insert_rowid`, and the
/// `sqlite_*` introspection functions. The Cloud's analyser treats exactly these
/// names as built-ins: it is the same list, `halo_policy::SQLITE_FUNCTIONS`.
pub const ALLOWED_FUNCTIONS: &[&str] = halo_policy::SQLITE_FUNCTIONS;

/// Resource limits applied to every connection the executor opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlLimits {
    /// Longest string or blob, in bytes, a query may build or read
    /// (`SQLITE_LIMIT_LENGTH`). Default 16 MiB: twice the largest result.
    pub max_value_bytes: u32,
    /// Most memory SQLite may hold at once, in bytes (`PRAGMA hard_heap_limit`).
    /// The limit is SQLite's, so it covers **all** connections of the process
    /// together, and it can only be lowered while the process runs (the lowest
    /// value any database was opened with wins). Default 256 MiB.
    pub heap_limit_bytes: u64,
}

impl SqlLimits {
    /// The default longest value: 16 MiB.
    pub const DEFAULT_MAX_VALUE_BYTES: u32 = 16 * 1024 * 1024;
    /// The default heap limit: 256 MiB.
    pub const DEFAULT_HEAP_LIMIT_BYTES: u64 = 256 * 1024 * 1024;
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            max_value_bytes: Self::DEFAULT_MAX_VALUE_BYTES,
            heap_limit_bytes: Self::DEFAULT_HEAP_LIMIT_BYTES,
        }
    }
}

/// Progress-handler period in SQLite virtual-machine instructions.
const PROGRESS_OPS: i32 = 1000;

/// One database served by the Link: where it is, who it is, and its epoch fence.
#[derive(Debug)]
pub struct Database {
    halo_guid: HaloGuid,
    path: PathBuf,
    identity: DatabaseIdentity,
    /// Highest epoch seen in a job (an [`Epoch`]'s number). Only grows
    /// (`fetch_max`); read by the state saver, written by job threads.
    highest_epoch: AtomicU64,
    /// Idle read-only connections of *this* database only (never shared across
    /// databases), with no hooks installed. At most [`POOL_MAX`].
    pool: Mutex<Vec<PooledConn>>,
    /// Limits set on every connection when it is opened.
    limits: SqlLimits,
    /// The named procedures this database offers.
    procedures: Procedures,
}

/// Idle read-only connections kept per database.
const POOL_MAX: usize = 4;

/// A connection with the schema names it last read, its authorizer's [`Gate`] and
/// the allowlist its cached statements were compiled under.
#[derive(Debug)]
struct PooledConn {
    conn: Connection,
    schema_version: i64,
    schema: Arc<HashSet<String>>,
    /// What the authorizer (installed once, when the connection is opened) enforces.
    gate: Arc<Mutex<Gate>>,
    /// Whether job statements go through the connection's statement cache (pooled
    /// read-only connections; a read-write one serves one job and is closed).
    caches: bool,
    /// The allowlist every statement in the connection's cache was compiled under
    /// (`None`: the cache is empty).
    cached_for: Option<Allowed>,
}

impl PooledConn {
    fn open(path: &Path, writes: bool, limits: SqlLimits) -> Result<Self, QueryError> {
        let flags = OpenFlags::SQLITE_OPEN_NO_MUTEX
            | if writes {
                OpenFlags::SQLITE_OPEN_READ_WRITE
            } else {
                OpenFlags::SQLITE_OPEN_READ_ONLY
            };
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| QueryError::new(QueryErrorKind::Internal, format!("cannot open: {e}")))?;
        apply_limits(&conn, limits)?;
        // Installed once and never removed: installing an authorizer expires every
        // prepared statement, which would empty the statement cache at each job.
        // While no job runs, the gate is closed and nothing compiles.
        let gate = Arc::new(Mutex::new(Gate::default()));
        {
            let gate = Arc::clone(&gate);
            conn.authorizer(Some(move |ctx: AuthContext<'_>| match gate.lock() {
                Ok(mut gate) => gate.authorize(&ctx),
                Err(_) => Authorization::Deny,
            }));
        }
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self {
            conn,
            schema_version: -1,
            schema: Arc::new(HashSet::new()),
            gate,
            caches: !writes,
            cached_for: None,
        })
    }

    /// Sets the gate to `mode`, clearing any denial left from before.
    fn set_gate(&self, mode: GateMode) {
        if let Ok(mut gate) = self.gate.lock() {
            *gate = Gate {
                mode,
                denial: None,
                needs_schema: false,
            };
        }
    }

    /// Re-reads the table and view names if the schema changed, under the gate's
    /// [`GateMode::Internal`] (which lets through exactly these two reads); empties
    /// the statement cache when it did change. Leaves the gate closed.
    fn refresh_schema(&mut self) -> Result<(), QueryError> {
        self.set_gate(GateMode::Internal);
        let read = (|| {
            let version: i64 = self
                .conn
                .query_row("PRAGMA schema_version", [], |r| r.get(0))
                .map_err(|e| QueryError::new(QueryErrorKind::Internal, e.to_string()))?;
            if version != self.schema_version {
                self.conn.flush_prepared_statement_cache();
                self.cached_for = None;
                self.schema = Arc::new(schema_names(&self.conn)?);
                self.schema_version = version;
            }
            Ok(())
        })();
        self.set_gate(GateMode::Closed);
        read
    }

    /// Opens the gate for one job's statement under `allowed`. The schema names
    /// are attached only if `schema_read` (they were read during this job);
    /// otherwise the first authorizer call of a compile asks for them
    /// ([`Gate::needs_schema`]) and is refused. Empties the statement cache if its
    /// statements were compiled under another allowlist.
    fn open_gate(&mut self, allowed: &Allowed, schema_read: bool) {
        if self.cached_for.as_ref() != Some(allowed) {
            self.conn.flush_prepared_statement_cache();
            self.cached_for = Some(allowed.clone());
        }
        self.set_gate(GateMode::Job {
            allowed: allowed.clone(),
            schema: schema_read.then(|| Arc::clone(&self.schema)),
        });
    }
}

/// Statements kept compiled per pooled connection.
const STATEMENT_CACHE: usize = 32;

/// What a connection's authorizer lets compile right now.
#[derive(Debug, Default)]
struct Gate {
    mode: GateMode,
    /// The first reason a job's statement was denied.
    denial: Option<String>,
    /// Set when a job's statement began to compile (a fresh prepare, or SQLite
    /// re-preparing a cached statement after a schema change) before this job had
    /// read the schema names: that compile was refused; the executor reads them
    /// and tries once more.
    needs_schema: bool,
}

/// See [`Gate`].
#[derive(Debug, Default)]
enum GateMode {
    /// Nothing compiles (no job is running).
    #[default]
    Closed,
    /// The executor's own reads of the schema version and the schema names.
    Internal,
    /// One job's statement.
    Job {
        allowed: Allowed,
        /// The schema names read during this job; `None` until then.
        schema: Option<Arc<HashSet<String>>>,
    },
}

impl Gate {
    fn authorize(&mut self, ctx: &AuthContext<'_>) -> Authorization {
        let verdict = match &self.mode {
            GateMode::Closed => Err("no job is running on this connection".to_owned()),
            GateMode::Internal => internal_check(ctx),
            GateMode::Job {
                allowed,
                schema: Some(schema),
            } => allowed.check(schema, ctx),
            GateMode::Job { schema: None, .. } => {
                self.needs_schema = true;
                return Authorization::Deny;
            }
        };
        match verdict {
            Ok(()) => Authorization::Allow,
            Err(reason) => {
                self.denial.get_or_insert(reason);
                Authorization::Deny
            }
        }
    }
}

/// What [`GateMode::Internal`] allows: `PRAGMA schema_version` (read, not set) and
/// `SELECT lower(name) FROM sqlite_schema ...`.
fn internal_check(ctx: &AuthContext<'_>) -> Result<(), String> {
    let ok = match ctx.action {
        AuthAction::Select => true,
        AuthAction::Pragma {
            pragma_name,
            pragma_value: None,
        } => pragma_name.eq_ignore_ascii_case("schema_version"),
        AuthAction::Read { table_name, .. } => {
            table_name.eq_ignore_ascii_case("sqlite_master")
                || table_name.eq_ignore_ascii_case("sqlite_schema")
        }
        AuthAction::Function { function_name } => function_name.eq_ignore_ascii_case("lower"),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err("not one of the link's own schema reads".to_owned())
    }
}

/// Sets `limits` and the safety switches on a fresh connection (before any
/// authorizer is installed: the heap limit is a pragma).
fn apply_limits(conn: &Connection, limits: SqlLimits) -> Result<(), QueryError> {
    use rusqlite::config::DbConfig;
    use rusqlite::limits::Limit;
    let internal = |e: rusqlite::Error| {
        QueryError::new(
            QueryErrorKind::Internal,
            format!("cannot set connection limits: {e}"),
        )
    };
    let length = i32::try_from(limits.max_value_bytes).unwrap_or(i32::MAX);
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, length)
        .map_err(internal)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)
        .map_err(internal)?;
    // Double-quoted text is a name, as the Cloud's analyser reads it, never a string.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DML, false)
        .map_err(internal)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .map_err(internal)?;
    // Process-wide, and it can only go down: see `SqlLimits::heap_limit_bytes`.
    let heap = i64::try_from(limits.heap_limit_bytes).unwrap_or(i64::MAX);
    conn.query_row(&format!("PRAGMA hard_heap_limit = {heap}"), [], |_| Ok(()))
        .map_err(internal)?;
    Ok(())
}

/// A connection lent to one job; returned to the pool, hooks removed, on drop
/// (unless it ran out of memory).
struct Lease<'a> {
    conn: Option<PooledConn>,
    pool: Option<&'a Mutex<Vec<PooledConn>>>,
    /// Set when SQLite ran out of memory: the connection is closed, not pooled.
    discard: std::cell::Cell<bool>,
}

impl Lease<'_> {
    fn conn(&self) -> &PooledConn {
        self.conn
            .as_ref()
            .expect("the connection is taken only in drop")
    }

    fn conn_mut(&mut self) -> &mut PooledConn {
        self.conn
            .as_mut()
            .expect("the connection is taken only in drop")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let (Some(pooled), Some(pool)) = (self.conn.take(), self.pool) else {
            return;
        };
        if self.discard.get() {
            return;
        }
        pooled.set_gate(GateMode::Closed);
        pooled.conn.progress_handler(0, None::<fn() -> bool>);
        if pooled.conn.is_autocommit() {
            if let Ok(mut idle) = pool.lock() {
                if idle.len() < POOL_MAX {
                    idle.push(pooled);
                }
            }
        }
    }
}

impl Database {
    /// A connection for one job: a fresh read-write one for writes (its schema
    /// names read), otherwise a pooled read-only one (opened if none is idle; its
    /// schema names are read when a statement first compiles).
    fn lease(&self, writes: bool) -> Result<Lease<'_>, QueryError> {
        let (mut pooled, pool) = if writes {
            (PooledConn::open(&self.path, true, self.limits)?, None)
        } else {
            let idle = self.pool.lock().ok().and_then(|mut p| p.pop());
            let pooled = match idle {
                Some(p) => p,
                None => PooledConn::open(&self.path, false, self.limits)?,
            };
            (pooled, Some(&self.pool))
        };
        if !pooled.caches {
            pooled.refresh_schema()?;
        }
        Ok(Lease {
            conn: Some(pooled),
            pool,
            discard: std::cell::Cell::new(false),
        })
    }

    /// Reads the identity of the database at `path` and binds it to `halo_guid`.
    ///
    /// # Errors
    ///
    /// [`LinkError::Database`] if the identity cannot be read.
    pub fn open(path: &Path, halo_guid: HaloGuid, highest_epoch: Epoch) -> Result<Self, LinkError> {
        let identity = DatabaseIdentity::read(path)?;
        Ok(Self {
            halo_guid,
            path: path.to_path_buf(),
            identity,
            highest_epoch: AtomicU64::new(highest_epoch.get()),
            pool: Mutex::new(Vec::new()),
            limits: SqlLimits::default(),
            procedures: Procedures::default(),
        })
    }

    /// The same database with `limits` on every connection opened from now on
    /// (call it right after [`Database::open`]).
    #[must_use]
    pub fn with_limits(mut self, limits: SqlLimits) -> Self {
        self.limits = limits;
        if let Ok(idle) = self.pool.get_mut() {
            idle.clear();
        }
        self
    }

    /// The same database offering `procedures` (call it right after
    /// [`Database::open`]).
    #[must_use]
    pub fn with_procedures(mut self, procedures: Procedures) -> Self {
        self.procedures = procedures;
        self
    }

    /// The named procedures this database offers.
    pub fn procedures(&self) -> &Procedures {
        &self.procedures
    }

    /// The limits set on this database's connections.
    pub fn limits(&self) -> SqlLimits {
        self.limits
    }

    /// The database's Halo GUID.
    pub fn halo_guid(&self) -> HaloGuid {
        self.halo_guid
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the database says about itself.
    pub fn identity(&self) -> &DatabaseIdentity {
        &self.identity
    }

    /// The fake CRN derived from the Halo GUID (used for demo copies, in Stage).
    pub fn fake_crn(&self) -> Crn {
        Crn::fake_for(&self.halo_guid)
    }

    /// The highest epoch seen so far.
    pub fn highest_epoch(&self) -> Epoch {
        Epoch::new(self.highest_epoch.load(Ordering::Acquire))
    }

    /// Records `epoch` and refuses it if an newer one was already seen.
    ///
    /// # Errors
    ///
    /// A [`QueryErrorKind::StaleEpoch`] error.
    pub fn observe_epoch(&self, epoch: Epoch) -> Result<(), QueryError> {
        let (epoch, previous) = (
            epoch.get(),
            self.highest_epoch.fetch_max(epoch.get(), Ordering::AcqRel),
        );
        if epoch < previous {
            return Err(QueryError::new(
                QueryErrorKind::StaleEpoch,
                format!("epoch {epoch} is older than epoch {previous} already seen"),
            ));
        }
        Ok(())
    }

    /// The database as announced in the hello.
    pub fn info(&self) -> DatabaseInfo {
        DatabaseInfo {
            halo_guid: self.halo_guid,
            pms_type: PmsType::D4w,
            parent_crn: self.identity.parent_crn,
            branch_crns: self.identity.branch_crns.clone(),
            practice_name: self.identity.practice_name.clone(),
            pms_version: self.identity.pms_version.clone(),
            catalogues: self.identity.catalogues.clone(),
            is_demo: self.identity.is_demo_or_deidentified(),
        }
    }
}

/// A successful execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutput {
    /// Rows returned (reader, scalar) or changed (nonQuery).
    pub rows: u64,
    /// Compact JSON array of row objects, columns in select order.
    pub json: Vec<u8>,
    /// Time spent in the database and building the JSON.
    pub duration: Duration,
}

/// Deadline and cancellation of one running job.
#[derive(Debug, Clone)]
pub struct JobControl {
    deadline: Instant,
    cancelled: Arc<AtomicBool>,
}

impl JobControl {
    /// A control that stops the job at `deadline`.
    pub fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A control whose deadline is the job's `timeout_ms` from now.
    pub fn for_job(job: &QueryJob) -> Self {
        let now = Instant::now();
        let deadline = now
            .checked_add(Duration::from_millis(job.timeout_ms))
            .unwrap_or(now + Duration::from_secs(24 * 3600));
        Self::new(deadline)
    }

    /// Asks the job to stop; it ends with [`QueryErrorKind::Cancelled`].
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// Whether [`JobControl::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn stop_reason(&self) -> Option<QueryError> {
        if self.is_cancelled() {
            Some(QueryError::new(
                QueryErrorKind::Cancelled,
                "query was cancelled",
            ))
        } else if Instant::now() >= self.deadline {
            Some(QueryError::new(
                QueryErrorKind::Timeout,
                "query exceeded its deadline",
            ))
        } else {
            None
        }
    }
}

/// Runs `job` on `db` with the job's own timeout and no cancellation.
///
/// # Errors
///
/// A [`QueryError`] classified as the module docs describe.
pub fn execute(db: &Database, job: &QueryJob) -> Result<JobOutput, QueryError> {
    execute_with(db, job, &JobControl::for_job(job))
}

/// Runs `job` on `db` under `control`.
///
/// # Errors
///
/// A [`QueryError`] classified as the module docs describe.
pub fn execute_with(
    db: &Database,
    job: &QueryJob,
    control: &JobControl,
) -> Result<JobOutput, QueryError> {
    execute_inner(db, job, control, None)
}

/// Runs a job that changes nothing (a `reader` or `scalar` job) on the calling
/// thread, under `control` and a time `budget` as well: the answer of
/// [`execute_with`] if the job ends within the budget, or `None` if the budget ran
/// out first, SQLite found the database busy (a worker waits for it, up to the
/// job's deadline) or the try failed inside (a worker tries again). `None` means nothing was answered and
/// nothing was changed: the job is to run again, from the start, under `control`
/// alone (on a worker). A `nonQuery` job is never tried here (`None` at once): a
/// write stopped part-way must not run twice. Every check of [`execute_with`]
/// applies unchanged; only the deadline is the earlier of the two.
///
/// The Link's session loop runs short jobs this way, sparing them the hand-off to a
/// blocking thread and back.
pub fn execute_within(
    db: &Database,
    job: &QueryJob,
    control: &JobControl,
    budget: Duration,
) -> Option<Result<JobOutput, QueryError>> {
    if job.mode == ExecutionMode::NonQuery {
        return None;
    }
    let now = Instant::now();
    let tight = JobControl {
        deadline: now
            .checked_add(budget)
            .map_or(control.deadline, |b| b.min(control.deadline)),
        cancelled: Arc::clone(&control.cancelled),
    };
    match execute_inner(db, job, &tight, None) {
        // Stopped by the budget, not by the job's own deadline.
        Err(e) if e.kind == QueryErrorKind::Timeout && Instant::now() < control.deadline => None,
        // Busy or locked: on a worker it would be waited for, up to the deadline.
        // An internal failure (a connection that cannot be opened, a schema read
        // that found the database locked) is left to the worker's try as well.
        Err(e) if is_busy(&e) || e.kind == QueryErrorKind::Internal => None,
        answered => Some(answered),
    }
}

/// Whether `e` is SQLite's `SQLITE_BUSY` or `SQLITE_LOCKED` (any extended code).
fn is_busy(e: &QueryError) -> bool {
    e.kind == QueryErrorKind::Database
        && e.code.is_some_and(|c| {
            let primary = c & 0xff;
            primary == i64::from(rusqlite::ffi::SQLITE_BUSY)
                || primary == i64::from(rusqlite::ffi::SQLITE_LOCKED)
        })
}

/// Where the pages of a paged result go: each page's JSON array of rows and its row
/// count, in order. An error stops the job (for example: the Cloud went away).
pub type PageSink<'a> = &'a mut dyn FnMut(Vec<u8>, u64) -> Result<(), QueryError>;

/// Runs `job` on `db` under `control`, handing the result to `sink` in pages of
/// about `page_bytes` bytes of JSON (whole rows; at least one page, `[]` for an empty
/// result or a `nonQuery`). Only one page is held at a time, so a result has no size
/// limit; a single row over [`MAX_RESULT_BYTES`] is refused as too large. The
/// returned output's `json` is empty.
///
/// # Errors
///
/// As [`execute_with`], or the sink's error.
pub fn execute_paged(
    db: &Database,
    job: &QueryJob,
    control: &JobControl,
    page_bytes: usize,
    sink: PageSink<'_>,
) -> Result<JobOutput, QueryError> {
    let page_bytes = page_bytes.clamp(1, MAX_RESULT_BYTES);
    execute_inner(db, job, control, Some((page_bytes, sink)))
}

fn execute_inner(
    db: &Database,
    job: &QueryJob,
    control: &JobControl,
    pager: Option<(usize, PageSink<'_>)>,
) -> Result<JobOutput, QueryError> {
    if job.halo_guid != db.halo_guid {
        return Err(QueryError::new(
            QueryErrorKind::UnknownDatabase,
            "job is addressed to another database",
        ));
    }
    db.observe_epoch(job.epoch)?;
    if let Some(name) = &job.catalogue {
        if !db
            .identity
            .catalogues
            .iter()
            .any(|c| c.name.eq_ignore_ascii_case(name))
        {
            return Err(QueryError::new(
                QueryErrorKind::BadRequest,
                format!("unknown catalogue {}", excerpt(name)),
            ));
        }
    }
    // A procedure job runs the text configured under its name, with the tables
    // that text names as its allowlist; a text job runs its own command.
    let (sql, tables) = match &job.procedure {
        None => (job.command.as_str(), &job.allowlist.tables),
        Some(name) => {
            let procedure = db.procedures.get(name).ok_or_else(|| QueryError {
                kind: QueryErrorKind::Database,
                code: Some(i64::from(rusqlite::ffi::SQLITE_ERROR)),
                message: format!("no such procedure: {}", excerpt(name)),
            })?;
            let granted = halo_policy::normalise_procedure(name).is_ok_and(|n| {
                job.allowlist
                    .procedures
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(&n))
            });
            if !granted || !job.command.is_empty() {
                return Err(QueryError::new(
                    QueryErrorKind::Denied,
                    format!("procedure {} is not authorised", excerpt(name)),
                ));
            }
            (procedure.text.as_str(), &procedure.tables)
        }
    };
    if sql.contains('\0') {
        // SQLite would stop reading at the NUL: what runs would differ from what
        // the Cloud checked.
        return Err(QueryError::new(
            QueryErrorKind::BadRequest,
            "the command contains a nul character",
        ));
    }
    if let Some(stop) = control.stop_reason() {
        return Err(stop);
    }

    let started = Instant::now();
    let writes = job.mode == ExecutionMode::NonQuery && job.allowlist.allow_write;
    let allowed = Allowed::new(tables, writes);
    let mut lease = db.lease(writes)?;
    let remaining = control.deadline.saturating_duration_since(Instant::now());
    lease
        .conn()
        .conn
        .busy_timeout(remaining.min(Duration::from_secs(5)))
        .map_err(|e| QueryError::new(QueryErrorKind::Internal, e.to_string()))?;
    {
        let control = control.clone();
        lease
            .conn()
            .conn
            .progress_handler(PROGRESS_OPS, Some(move || control.stop_reason().is_some()));
    }
    // The schema names are read (one more read transaction) only when a statement
    // compiles: a cached statement whose schema is unchanged needs none.
    let mut schema_read = !lease.conn().caches;
    let mut pager = pager;
    loop {
        lease.conn_mut().open_gate(&allowed, schema_read);
        let result = run_statement(
            &lease,
            sql,
            job,
            control,
            db.limits,
            pager.as_mut().map(|(bytes, sink)| {
                let sink: &mut dyn FnMut(Vec<u8>, u64) -> Result<(), QueryError> = &mut **sink;
                (*bytes, sink)
            }),
        );
        let needs_schema = lease
            .conn()
            .gate
            .lock()
            .map(|mut g| std::mem::take(&mut g.needs_schema))
            .unwrap_or(false);
        if result.is_err() && needs_schema && !schema_read {
            // Nothing ran: the compile was refused before the statement's first
            // step (SQLite re-prepares a stale statement before it reads a row).
            lease.conn_mut().refresh_schema()?;
            schema_read = true;
            continue;
        }
        return result.map(|(rows, json)| JobOutput {
            rows,
            json,
            duration: started.elapsed(),
        });
    }
}

/// Whether SQLite's tokenizer and Rust's `str::trim` agree on where `sql` starts
/// and ends. The statement cache looks statements up by trimmed text (with Rust's
/// notion of whitespace, wider than SQLite's): a text they disagree on is
/// compiled as it is, uncached, so what runs is always the text that was sent.
fn trims_alike(sql: &str) -> bool {
    const SQLITE_SPACE: &[char] = &[' ', '\t', '\n', '\x0c', '\r'];
    sql.trim().len() == sql.trim_matches(SQLITE_SPACE).len()
}

/// Compiles (or takes from the connection's cache) and runs one job's statement
/// under the gate [`PooledConn::open_gate`] set. Returns the rows and their JSON
/// (empty when `pager` took the pages).
fn run_statement(
    lease: &Lease<'_>,
    sql: &str,
    job: &QueryJob,
    control: &JobControl,
    limits: SqlLimits,
    pager: Option<(usize, PageSink<'_>)>,
) -> Result<(u64, Vec<u8>), QueryError> {
    let pooled = lease.conn();
    let conn = &pooled.conn;
    let classify = |e: rusqlite::Error| {
        let error = classify(e, &pooled.gate, control, limits);
        if error.code == Some(i64::from(rusqlite::ffi::SQLITE_NOMEM)) {
            lease.discard.set(true);
        }
        error
    };
    // A cached statement was compiled under this very allowlist (the cache is
    // emptied whenever the allowlist or the schema changes, see `open_gate` and
    // `refresh_schema`), and SQLite re-prepares it, under the gate now open, if
    // the schema changed since.
    let mut cached;
    let mut fresh;
    let stmt: &mut rusqlite::Statement<'_> = if pooled.caches && trims_alike(sql) {
        cached = conn.prepare_cached(sql).map_err(classify)?;
        &mut cached
    } else {
        fresh = conn.prepare(sql).map_err(classify)?;
        &mut fresh
    };
    // SQLite compiles blank text and bare comments to no statement at all (a
    // statement with result columns is one).
    if stmt.column_count() == 0 && stmt.expanded_sql().is_none() {
        return Err(QueryError::new(
            QueryErrorKind::BadRequest,
            "the command holds no statement",
        ));
    }
    bind(stmt, &job.parameters)?;

    if let Some((page_bytes, sink)) = pager {
        let rows = match job.mode {
            ExecutionMode::NonQuery => {
                let mut rows = stmt.raw_query();
                while rows.next().map_err(classify)?.is_some() {
                    if let Some(stop) = control.stop_reason() {
                        return Err(stop);
                    }
                }
                drop(rows);
                let changed = conn.changes();
                sink(b"[]".to_vec(), 0)?;
                changed
            }
            ExecutionMode::Reader => {
                write_pages(stmt, usize::MAX, control, &classify, page_bytes, sink)?
            }
            ExecutionMode::Scalar => write_pages(stmt, 1, control, &classify, page_bytes, sink)?,
        };
        return Ok((rows, Vec::new()));
    }
    match job.mode {
        ExecutionMode::NonQuery => {
            let mut rows = stmt.raw_query();
            while rows.next().map_err(classify)?.is_some() {
                if let Some(stop) = control.stop_reason() {
                    return Err(stop);
                }
            }
            drop(rows);
            Ok((conn.changes(), b"[]".to_vec()))
        }
        ExecutionMode::Reader => write_rows(stmt, usize::MAX, control, &classify),
        ExecutionMode::Scalar => write_scalar(stmt, &classify),
    }
}

/// The normalised allowlist the authorizer enforces: what, with the schema names,
/// a compile's every decision depends on, so also what a cached statement is
/// keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowed {
    /// Lower-case table and view names, sorted, without repeats.
    tables: Arc<[String]>,
    writes: bool,
}

impl Allowed {
    fn new(tables: &[String], writes: bool) -> Self {
        let mut tables: Vec<String> = tables.iter().map(|t| t.to_ascii_lowercase()).collect();
        tables.sort_unstable();
        tables.dedup();
        Self {
            tables: tables.into(),
            writes,
        }
    }

    fn table(&self, name: &str) -> bool {
        self.tables
            .binary_search_by(|t| t.bytes().cmp(name.bytes().map(|b| b.to_ascii_lowercase())))
            .is_ok()
    }

    /// `Err(reason)` denies the action. `schema`: lower-case names of the real
    /// tables and views (read before the statement compiled), to tell them from
    /// CTE and subquery names.
    fn check(&self, schema: &HashSet<String>, ctx: &AuthContext<'_>) -> Result<(), String> {
        match ctx.action {
            AuthAction::Select | AuthAction::Recursive => Ok(()),
            AuthAction::Read {
                table_name,
                column_name,
            } => {
                let through_view = ctx.accessor.is_some_and(|v| self.table(v));
                // An empty column name means a FROM item none of whose columns is
                // read (`count(*)`): for a CTE or subquery name that reveals nothing
                // the other callbacks did not authorise.
                let derived =
                    column_name.is_empty() && !schema.contains(&table_name.to_ascii_lowercase());
                if self.table(table_name) || through_view || derived {
                    Ok(())
                } else {
                    Err(format!(
                        "reading table {} is not authorised",
                        excerpt(table_name)
                    ))
                }
            }
            AuthAction::Insert { table_name }
            | AuthAction::Delete { table_name }
            | AuthAction::Update { table_name, .. } => {
                if !self.writes {
                    Err("writes are not authorised for this query".into())
                } else if self.table(table_name) {
                    Ok(())
                } else {
                    Err(format!(
                        "writing table {} is not authorised",
                        excerpt(table_name)
                    ))
                }
            }
            AuthAction::Function { function_name } => {
                if ALLOWED_FUNCTIONS
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(function_name))
                {
                    Ok(())
                } else {
                    Err(format!(
                        "function {} is not allowed",
                        excerpt(function_name)
                    ))
                }
            }
            AuthAction::Pragma { .. } => Err("pragma statements are not allowed".into()),
            AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
                Err("attach and detach are not allowed".into())
            }
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
                Err("transaction control is not allowed".into())
            }
            _ => Err("schema changes and other statements are not allowed".into()),
        }
    }
}

/// Lower-case names of every table and view, plus SQLite's internal tables.
fn schema_names(conn: &Connection) -> Result<HashSet<String>, QueryError> {
    let internal = QueryError::new;
    let mut names: HashSet<String> = [
        "sqlite_schema",
        "sqlite_master",
        "sqlite_temp_schema",
        "sqlite_temp_master",
        "sqlite_sequence",
        "sqlite_stat1",
        "sqlite_stat4",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let mut stmt = conn
        .prepare("SELECT lower(name) FROM sqlite_schema WHERE type IN ('table', 'view')")
        .map_err(|e| internal(QueryErrorKind::Internal, e.to_string()))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| internal(QueryErrorKind::Internal, e.to_string()))?;
    names.extend(rows);
    Ok(names)
}

fn classify(
    e: rusqlite::Error,
    gate: &Mutex<Gate>,
    control: &JobControl,
    limits: SqlLimits,
) -> QueryError {
    if let Some(reason) = gate.lock().ok().and_then(|mut g| g.denial.take()) {
        return QueryError::new(QueryErrorKind::Denied, reason);
    }
    if let rusqlite::Error::MultipleStatement = e {
        return QueryError::new(
            QueryErrorKind::BadRequest,
            "a command holds exactly one statement",
        );
    }
    let failure = match &e {
        rusqlite::Error::SqlInputError { error, .. } => Some(error),
        other => other.sqlite_error(),
    };
    match failure {
        Some(f) => match f.code {
            ErrorCode::OperationInterrupted => control.stop_reason().unwrap_or_else(|| {
                QueryError::new(QueryErrorKind::Timeout, "query was interrupted")
            }),
            ErrorCode::ReadOnly => QueryError::new(
                QueryErrorKind::Denied,
                "the database is read-only for this query",
            ),
            ErrorCode::AuthorizationForStatementDenied => {
                QueryError::new(QueryErrorKind::Denied, "statement not authorised")
            }
            ErrorCode::TooBig => QueryError::new(
                QueryErrorKind::TooLarge,
                format!(
                    "a string or blob exceeds the link's limit of {} bytes",
                    limits.max_value_bytes
                ),
            ),
            ErrorCode::OutOfMemory => QueryError {
                kind: QueryErrorKind::Database,
                code: Some(i64::from(f.extended_code)),
                message: format!(
                    "the query needs more memory than the link allows ({} bytes for SQLite)",
                    limits.heap_limit_bytes
                ),
            },
            _ => QueryError {
                kind: QueryErrorKind::Database,
                code: Some(i64::from(f.extended_code)),
                message: e.to_string(),
            },
        },
        None => QueryError::new(QueryErrorKind::Database, e.to_string()),
    }
}

fn bind(
    stmt: &mut rusqlite::Statement<'_>,
    params: &[serde_json::Value],
) -> Result<(), QueryError> {
    let bad = |m: String| QueryError::new(QueryErrorKind::BadRequest, m);
    let mut position = 0usize;
    for param in params {
        let (index, value) = match param {
            serde_json::Value::Object(map) => {
                let name = map
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| bad("a named parameter needs a string name".into()))?;
                let value = map.get("value").unwrap_or(&serde_json::Value::Null);
                (named_index(stmt, name)?, value)
            }
            value => {
                position += 1;
                if position > stmt.parameter_count() {
                    return Err(bad(format!(
                        "{position} parameters given, the command takes {}",
                        stmt.parameter_count()
                    )));
                }
                (position, value)
            }
        };
        let value = to_sql_value(value)?;
        stmt.raw_bind_parameter(index, value)
            .map_err(|e| bad(format!("cannot bind parameter {index}: {e}")))?;
    }
    Ok(())
}

fn named_index(stmt: &rusqlite::Statement<'_>, name: &str) -> Result<usize, QueryError> {
    let candidates: Vec<String> = if name.starts_with(['@', ':', '$']) {
        vec![name.to_owned()]
    } else {
        ["@", ":", "$"]
            .iter()
            .map(|p| format!("{p}{name}"))
            .collect()
    };
    for candidate in &candidates {
        if let Ok(Some(i)) = stmt.parameter_index(candidate) {
            return Ok(i);
        }
    }
    Err(QueryError::new(
        QueryErrorKind::BadRequest,
        format!("unknown parameter {}", excerpt(name)),
    ))
}

fn to_sql_value(value: &serde_json::Value) -> Result<Value, QueryError> {
    Ok(match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Integer(i64::from(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        _ => {
            return Err(QueryError::new(
                QueryErrorKind::BadRequest,
                "parameter values must be null, boolean, number or string",
            ));
        }
    })
}

fn too_large() -> QueryError {
    QueryError::new(
        QueryErrorKind::TooLarge,
        format!("result exceeds {MAX_RESULT_BYTES} bytes"),
    )
}

/// The first value of the first row as one JSON value (`scalar`): `(1, value)`, or
/// `(0, null)` when the command returns no row (or no column).
fn write_scalar(
    stmt: &mut rusqlite::Statement<'_>,
    classify: &dyn Fn(rusqlite::Error) -> QueryError,
) -> Result<(u64, Vec<u8>), QueryError> {
    let has_column = stmt.column_count() > 0;
    let mut rows = stmt.raw_query();
    let Some(row) = rows.next().map_err(classify)? else {
        return Ok((0, b"null".to_vec()));
    };
    if !has_column {
        return Ok((0, b"null".to_vec()));
    }
    let mut out = Vec::with_capacity(32);
    write_value(&mut out, row.get_ref(0).map_err(classify)?);
    if out.len() > MAX_RESULT_BYTES {
        return Err(too_large());
    }
    Ok((1, out))
}

/// Streams at most `limit` rows as a JSON array of objects.
fn write_rows(
    stmt: &mut rusqlite::Statement<'_>,
    limit: usize,
    control: &JobControl,
    classify: &dyn Fn(rusqlite::Error) -> QueryError,
) -> Result<(u64, Vec<u8>), QueryError> {
    let columns: Vec<Vec<u8>> = stmt
        .column_names()
        .iter()
        .map(|n| serde_json::to_vec(n).unwrap_or_else(|_| b"\"?\"".to_vec()))
        .collect();
    let mut out = Vec::with_capacity(256);
    out.push(b'[');
    let mut count = 0u64;
    let mut rows = stmt.raw_query();
    while count < limit as u64 {
        let Some(row) = rows.next().map_err(classify)? else {
            break;
        };
        if count > 0 {
            out.push(b',');
        }
        out.push(b'{');
        for (i, key) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            out.push(b':');
            let value = row.get_ref(i).map_err(classify)?;
            write_value(&mut out, value);
            if out.len() > MAX_RESULT_BYTES {
                return Err(too_large());
            }
        }
        out.push(b'}');
        count += 1;
        if let Some(stop) = control.stop_reason() {
            return Err(stop);
        }
    }
    out.push(b']');
    if out.len() > MAX_RESULT_BYTES {
        return Err(too_large());
    }
    Ok((count, out))
}

/// Streams at most `limit` rows as pages: JSON arrays of whole rows, each handed to
/// `sink` once it reaches `page_bytes` (and the last one at the end; at least one).
/// Returns the number of rows.
fn write_pages(
    stmt: &mut rusqlite::Statement<'_>,
    limit: usize,
    control: &JobControl,
    classify: &dyn Fn(rusqlite::Error) -> QueryError,
    page_bytes: usize,
    sink: PageSink<'_>,
) -> Result<u64, QueryError> {
    let columns: Vec<Vec<u8>> = stmt
        .column_names()
        .iter()
        .map(|n| serde_json::to_vec(n).unwrap_or_else(|_| b"\"?\"".to_vec()))
        .collect();
    let mut out = Vec::with_capacity(page_bytes.min(1 << 20) + 256);
    out.push(b'[');
    let mut count = 0u64;
    let mut in_page = 0u64;
    let mut pages = 0u32;
    let mut rows = stmt.raw_query();
    while count < limit as u64 {
        let Some(row) = rows.next().map_err(classify)? else {
            break;
        };
        let row_start = out.len();
        if in_page > 0 {
            out.push(b',');
        }
        out.push(b'{');
        for (i, key) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            out.push(b':');
            let value = row.get_ref(i).map_err(classify)?;
            write_value(&mut out, value);
            if out.len() - row_start > MAX_RESULT_BYTES {
                return Err(too_large());
            }
        }
        out.push(b'}');
        count += 1;
        in_page += 1;
        if out.len() >= page_bytes {
            out.push(b']');
            sink(
                std::mem::replace(&mut out, Vec::with_capacity(page_bytes.min(1 << 20) + 256)),
                in_page,
            )?;
            out.push(b'[');
            in_page = 0;
            pages += 1;
        }
        if let Some(stop) = control.stop_reason() {
            return Err(stop);
        }
    }
    if in_page > 0 || pages == 0 {
        out.push(b']');
        sink(out, in_page)?;
    }
    Ok(count)
}

fn write_value(out: &mut Vec<u8>, value: ValueRef<'_>) {
    // Writing into a Vec cannot fail.
    let _ = match value {
        ValueRef::Null => out.write_all(b"null"),
        ValueRef::Integer(i) => write!(out, "{i}"),
        ValueRef::Real(f) if f.is_finite() => {
            serde_json::to_writer(&mut *out, &f).map_err(Into::into)
        }
        ValueRef::Real(_) => out.write_all(b"null"),
        ValueRef::Text(t) => {
            serde_json::to_writer(&mut *out, &String::from_utf8_lossy(t)).map_err(Into::into)
        }
        ValueRef::Blob(b) => serde_json::to_writer(
            &mut *out,
            &base64::engine::general_purpose::STANDARD.encode(b),
        )
        .map_err(Into::into),
    };
}

/// At most 40 characters of a caller-supplied name, escaped.
fn excerpt(s: &str) -> String {
    s.chars().take(40).flat_map(char::escape_default).collect()
}

#[cfg(test)]
mod tests;
