//! The async path (issue 12): async queries with paged results, registered
//! (scheduled) queries, and the webhooks that tell integrators a query finished.
//!
//! Everything accepted lives in a [`store::JobStore`] before it is acknowledged;
//! results arrive from the Link page by page (`halo_protocol::StreamJob`) through
//! the [`hub::StreamHub`], so neither the Link nor the Cloud holds more of a result
//! than a few pages.

pub mod async_query;
pub mod docs;
pub mod hub;
pub mod pages;
pub mod pg_store;
pub mod record;
pub mod registered;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::app::AppState;
use crate::clock::now;
use store::{JobStore, JobStoreError, SqliteJobStore};

/// Settings of the async path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConfig {
    /// How long an async query may run once it left the queue (its deadline is
    /// `maxTimeInQueue` plus this). Default 1 hour.
    pub execution_limit: Duration,
    /// How long results stay readable after a query finished; then pages answer 410.
    /// Default 24 hours.
    pub retention: Duration,
    /// The most bytes of JSON rows per result page (at most 8 MiB). Default 4 MiB.
    pub page_bytes: u64,
    /// Pages the Link may send before the Cloud has stored them. Default 2.
    pub window: u32,
    /// The first webhook retry waits about this long; later ones back off
    /// exponentially with jitter. Default 5 s.
    pub webhook_retry_base: Duration,
    /// The longest wait between two webhook attempts. Default 30 min.
    pub webhook_retry_max: Duration,
    /// Attempts before a delivery is dead-lettered. Default 10.
    pub webhook_attempts: u32,
    /// Time one delivery attempt may take. Default 5 s.
    pub webhook_timeout: Duration,
    /// How often the background work (retention, scheduler, outbox) runs. Default 250 ms.
    pub tick: Duration,
    /// Extra root certificates (PEM, one or more per entry) that `https://` webhook
    /// receivers may chain to, besides the web PKI's roots (Mozilla's, built in).
    /// Default none. `halo-cloud serve --webhook-ca-file`.
    pub webhook_roots: Vec<Vec<u8>>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            execution_limit: Duration::from_secs(3600),
            retention: Duration::from_secs(24 * 3600),
            page_bytes: 4 * 1024 * 1024,
            window: 2,
            webhook_retry_base: Duration::from_secs(5),
            webhook_retry_max: Duration::from_secs(30 * 60),
            webhook_attempts: 10,
            webhook_timeout: Duration::from_secs(5),
            tick: Duration::from_millis(250),
            webhook_roots: Vec::new(),
        }
    }
}

/// The async path's state: its settings, its store and the page hub.
#[derive(Debug)]
pub struct Jobs {
    /// Settings.
    pub config: JobsConfig,
    /// The durable store.
    pub store: Arc<dyn JobStore>,
    /// Where pages meet their runner.
    pub hub: hub::StreamHub,
    /// Queries a previous process accepted and [`async_query::recover`] queued
    /// again; [`spawn_background`] runs them.
    pub(crate) resume: std::sync::Mutex<Vec<record::AsyncRecord>>,
    /// The queries this process runs now: async query id to its registered query
    /// and the signal that cancels it.
    pub(crate) running: std::sync::Mutex<std::collections::HashMap<String, Running>>,
}

/// A query this process runs now.
#[derive(Debug)]
pub(crate) struct Running {
    /// The registered query it is an occurrence of.
    pub(crate) registered: Option<String>,
    /// Notified to cancel it (a stored permit: a cancel before the runner waits
    /// is not lost).
    pub(crate) cancel: Arc<tokio::sync::Notify>,
}

impl Jobs {
    /// The registered queries (ids, each once) whose occurrences this process runs
    /// now.
    pub(crate) fn running_registered(&self) -> Vec<String> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ids: Vec<String> = running
            .values()
            .filter_map(|r| r.registered.clone())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Cancels the running occurrences of a registered query: each stops at its
    /// Link (if it runs there) and ends `executionFailed`. Returns how many.
    pub(crate) fn cancel_occurrences(&self, registered: &str) -> usize {
        let running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut n = 0;
        for r in running.values() {
            if r.registered.as_deref() == Some(registered) {
                r.cancel.notify_one();
                n += 1;
            }
        }
        n
    }
}

impl Jobs {
    /// Opens the store (`<data_dir>/jobs.sqlite`, or in memory without a directory),
    /// then takes over every query a previous process accepted and did not finish:
    /// queued again to run when [`spawn_background`] starts, or ended with a clear
    /// status (see [`async_query::recover`]).
    ///
    /// # Errors
    /// [`JobStoreError`] when the store cannot be opened or recovered.
    pub fn open(data_dir: Option<&Path>, config: JobsConfig) -> Result<Self, JobStoreError> {
        let store: Arc<dyn JobStore> = match data_dir {
            Some(dir) => Arc::new(SqliteJobStore::open(&dir.join("jobs.sqlite"))?),
            None => Arc::new(SqliteJobStore::in_memory()?),
        };
        Self::with_store(store, config)
    }

    /// As [`Jobs::open`] on a store already opened (a cluster node's
    /// [`pg_store::PgJobStore`]). Blocks on the store: call it outside async tasks.
    ///
    /// # Errors
    /// [`JobStoreError`] when the store cannot be recovered.
    pub fn with_store(store: Arc<dyn JobStore>, config: JobsConfig) -> Result<Self, JobStoreError> {
        let jobs = Self {
            config,
            store,
            hub: hub::StreamHub::default(),
            resume: std::sync::Mutex::default(),
            running: std::sync::Mutex::default(),
        };
        let resume = async_query::recover(&jobs, now())?;
        *jobs
            .resume
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = resume;
        Ok(jobs)
    }
}

/// Runs `f` on the store from the blocking pool (SQLite waits for fsync).
///
/// # Errors
/// The store's error, or [`JobStoreError::Engine`] if the task panicked.
pub async fn blocking<T: Send + 'static>(
    store: &Arc<dyn JobStore>,
    f: impl FnOnce(&dyn JobStore) -> Result<T, JobStoreError> + Send + 'static,
) -> Result<T, JobStoreError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| JobStoreError::Engine(format!("store task failed: {e}")))?
}

/// Starts the background work: the queries a previous process left unfinished
/// (each waits for its Link), result retention, the registered-query scheduler and
/// the webhook outbox. Runs until the process stops.
pub fn spawn_background(app: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
    let resume = std::mem::take(
        &mut *app
            .jobs
            .resume
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for record in resume {
        async_query::spawn(Arc::clone(app), record, true);
    }
    let tick = app.jobs.config.tick;
    let retention_app = Arc::clone(app);
    let retention = tokio::spawn(async move {
        let mut every = tokio::time::interval(tick);
        loop {
            every.tick().await;
            let now = now().as_millis();
            if let Err(e) =
                blocking(&retention_app.jobs.store, move |s| s.expire_results(now)).await
            {
                tracing::error!(error = %e, "expiring results failed");
            }
        }
    });
    let scheduler_app = Arc::clone(app);
    let scheduler = tokio::spawn(async move {
        let mut every = tokio::time::interval(tick);
        loop {
            every.tick().await;
            registered::fire_due(&scheduler_app).await;
        }
    });
    let outbox_app = Arc::clone(app);
    let outbox = tokio::spawn(async move {
        crate::webhooks::deliver_forever(outbox_app).await;
    });
    let mut tasks = vec![retention, scheduler, outbox];
    if app.jobs.store.shared() {
        tasks.push(tokio::spawn(adopt_forever(Arc::clone(app))));
    }
    tasks
}

/// How often a node of a cluster renews its lease on its async queries and looks
/// for queries whose owner's lease lapsed.
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(1);

/// A cluster node's lease loop: renews this node's lease, then adopts the unfinished
/// queries of nodes whose lease lapsed and runs them as a restarted node would
/// ([`async_query::recover_records`]), and runs the queued queries other nodes
/// handed over to it (it holds their Link).
async fn adopt_forever(app: AppState) {
    let mut every = tokio::time::interval(LEASE_RENEW_EVERY);
    loop {
        every.tick().await;
        let work = Arc::clone(&app);
        let adopted = tokio::task::spawn_blocking(move || {
            work.jobs.store.keep_alive()?;
            let texts = work.jobs.store.adopt_lapsed()?;
            let mut resume = async_query::recover_records(&work.jobs, texts, now())?;
            // Never dispatched (a node hands over only a queued query): run as is.
            for text in work.jobs.store.take_handed_over()? {
                match serde_json::from_str::<record::AsyncRecord>(&text) {
                    Ok(record) => {
                        tracing::info!(query = %record.id, "took over an async query handed to this node");
                        resume.push(record);
                    }
                    Err(e) => tracing::error!(error = %e, "a handed-over async query does not decode"),
                }
            }
            Ok::<_, JobStoreError>(resume)
        })
        .await;
        match adopted {
            Ok(Ok(resume)) => {
                for record in resume {
                    tracing::info!(query = %record.id, "running an async query taken over from another node");
                    async_query::spawn(Arc::clone(&app), record, true);
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "renewing the job lease failed"),
            Err(e) => tracing::error!(error = %e, "the job lease task failed"),
        }
        cancelled_elsewhere(&app).await;
    }
}

/// On a cluster: stops the occurrences this node runs whose registered query was
/// cancelled, through whichever node (the cancel is in the shared store: the
/// registered query's `cancel_requested`). One read per lease round, only while
/// this node runs occurrences.
async fn cancelled_elsewhere(app: &AppState) {
    let ids = app.jobs.running_registered();
    if ids.is_empty() {
        return;
    }
    let texts = match blocking(&app.jobs.store, move |s| s.registered_records(&ids)).await {
        Ok(texts) => texts,
        Err(e) => {
            tracing::warn!(error = %e, "reading the registered queries of running occurrences failed");
            return;
        }
    };
    for text in texts {
        let Ok(record) = serde_json::from_str::<registered::RegisteredRecord>(&text) else {
            continue;
        };
        if record.cancel_requested {
            let stopped = app.jobs.cancel_occurrences(&record.id);
            if stopped > 0 {
                tracing::info!(registered = %record.id, stopped, "registered query cancelled (maybe through another node): its occurrences here stop");
            }
        }
    }
}
