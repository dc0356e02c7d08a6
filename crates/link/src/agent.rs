//! The running Link: prepares its databases, then keeps a session with the Cloud.
//!
//! [`Agent::prepare`] loads the state file, reads every database's identity, refuses
//! demo databases in Production, logs each served database's Halo GUID and fake
//! CRN, and saves the state. [`Agent::run`] then loops: connect (with
//! `Authorization: Bearer <token>`), hello, heartbeats, jobs; on any failure it
//! reconnects after an exponential backoff with jitter, until shutdown.
//!
//! Jobs run on at most [`LinkConfig::max_concurrent_jobs`] workers. A job that
//! changes nothing and is not paged is first tried on the session loop itself,
//! through [`crate::execute_within`] with a budget of [`INLINE_BUDGET`] (and at most
//! [`INLINE_BUDGET_PER_TURN`] of such tries per turn of the loop): a short query is
//! answered without a hand-off to a blocking thread and back. One the budget stops
//! is run again from the start on tokio's blocking pool through
//! [`crate::execute_with`], as every other job is; every check is the executor's,
//! either way. Jobs beyond that wait in a bounded
//! FIFO queue per database ([`LinkConfig::max_queued_per_database`]; a job beyond it
//! is answered `busy` at once), and free workers serve the databases with jobs
//! waiting round-robin, each database running at most
//! [`LinkConfig::running_per_database`] jobs, so one practice flooding a multi-tenant
//! Link neither holds every worker nor makes another practice wait behind all of its
//! queue. A job that has not started when its queue budget (`queueTimeoutMs`, the
//! integrator's `maxTimeInQueue`) runs out is answered `busy` and never runs; a
//! Cancel takes a waiting job out of its queue at once (answered `cancelled`) and
//! stops a running one. When a session ends (or the Link task is aborted), waiting
//! jobs are dropped and every job still running is cancelled; their answers are
//! dropped, but a stopping job keeps its worker until it has stopped, across
//! sessions. A heartbeat also carries a WebSocket ping when the Cloud has been
//! quiet for a third of [`LinkConfig::silence_limit`] (at least three heartbeat
//! periods); a Cloud silent for the whole limit is taken as gone, so a half-open TCP
//! connection does not leave the Link deaf.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use halo_ids::{Environment, Epoch, HaloGuid, LinkGuid, Timestamp};
use halo_protocol::{
    CloudToLink, Heartbeat, Hello, LinkToCloud, MAX_FRAME_BYTES, PROTOCOL_VERSION, QueryError,
    QueryErrorKind, QueryFailed, QueryJob, QueryResult, decode_cloud_frame, encode,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, error, info, warn};

use crate::executor::{Database, JobControl, execute_with, execute_within};
use crate::metrics::LinkMetrics;
use crate::state::LinkState;
use crate::{LinkConfig, LinkError};

mod fair;
mod paged;

use fair::{FairQueue, Refusal};

/// The longest a job may run on the session loop before it is stopped and run
/// again on a worker ([`crate::execute_within`]): the loop answers nothing else
/// meanwhile (cancels, heartbeats, other jobs).
const INLINE_BUDGET: Duration = Duration::from_micros(500);
/// The most time one turn of the session loop spends on jobs run inline; the jobs
/// started after it is spent go to workers.
const INLINE_BUDGET_PER_TURN: Duration = Duration::from_millis(2);
/// A job is tried inline only with at least this much of the turn's budget left.
const INLINE_MIN: Duration = Duration::from_micros(100);

/// How long the Cloud has to answer a hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest queue budget honoured (a larger one is cut to this).
const MAX_QUEUE_BUDGET: Duration = Duration::from_secs(24 * 3600);
/// How long a TCP + WebSocket connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long data sent to the Cloud may stay unacknowledged before the kernel ends the
/// connection (`TCP_USER_TIMEOUT`): a node that vanished without a reset is noticed
/// this long after the next heartbeat, however long the interval the Cloud asked for.
const UNACKNOWLEDGED_LIMIT: Duration = Duration::from_secs(30);

/// A database the Link did not serve, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedDatabase {
    /// The configured path.
    pub path: PathBuf,
    /// Why it is not served.
    pub reason: String,
}

/// Connection state, observable through [`AgentHandle::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionStatus {
    /// Whether a session is open (hello acknowledged).
    pub connected: bool,
    /// Sessions opened so far (grows by one per successful hello).
    pub sessions: u64,
}

/// The Link agent, prepared (state loaded, databases read) and ready to [`run`](Agent::run).
#[derive(Debug)]
pub struct Agent {
    config: LinkConfig,
    link_guid: LinkGuid,
    databases: Vec<Arc<Database>>,
    by_guid: HashMap<HaloGuid, Arc<Database>>,
    refused: Vec<RefusedDatabase>,
    state: LinkState,
    status: watch::Sender<ConnectionStatus>,
    /// The workers jobs run on, counted overall and per database.
    workers: Arc<Workers>,
    /// Jobs, durations and refusals (served on `metrics_listen`).
    metrics: Arc<LinkMetrics>,
    /// Which of the config's Cloud URLs the next connection tries.
    url_index: usize,
}

impl Agent {
    /// Loads state, reads each database's identity and decides which to serve.
    ///
    /// A database that cannot be read is logged and listed in [`Agent::refused`];
    /// so is a demo or de-identified database on a Production Link.
    ///
    /// # Errors
    ///
    /// [`LinkError::Config`] for an invalid config (including a database listed
    /// twice), [`LinkError::State`] if the state file cannot be loaded or saved.
    pub fn prepare(config: LinkConfig) -> Result<Self, LinkError> {
        config.validate()?;
        let mut state = LinkState::load_or_fresh(&config.state_file)?;
        info!(link_guid = %state.link_guid, environment = %config.environment, "halo link starting");
        let mut databases = Vec::new();
        let mut by_guid = HashMap::new();
        let mut refused = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for path in &config.databases {
            let canonical = match std::fs::canonicalize(path) {
                Ok(p) => p,
                Err(e) => {
                    error!(path = %path.display(), error = %e, "database not found; not served");
                    refused.push(RefusedDatabase {
                        path: path.clone(),
                        reason: format!("cannot open: {e}"),
                    });
                    continue;
                }
            };
            let key = canonical.to_string_lossy().into_owned();
            if !seen.insert(key.clone()) {
                return Err(LinkError::Config(format!(
                    "database {} is listed twice",
                    path.display()
                )));
            }
            let identity = match crate::identity::DatabaseIdentity::read(&canonical) {
                Ok(identity) => identity,
                Err(e) => {
                    error!(path = %path.display(), error = %e, "database identity unreadable; not served");
                    refused.push(RefusedDatabase {
                        path: path.clone(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            if config.environment == Environment::Production && identity.is_demo_or_deidentified() {
                error!(
                    path = %path.display(),
                    crn = %identity.parent_crn,
                    practice = %identity.practice_name,
                    "refusing demo or de-identified database on a production link; it is not announced"
                );
                refused.push(RefusedDatabase {
                    path: path.clone(),
                    reason: "demo or de-identified database on a production link".into(),
                });
                continue;
            }
            let halo_guid = state.halo_guid_for(&key);
            let epoch = state
                .databases
                .get(&key)
                .map_or(Epoch::ZERO, |d| d.highest_epoch);
            let db = match Database::open(&canonical, halo_guid, epoch) {
                // The config validated every database's procedures when it loaded.
                Ok(db) => Arc::new(
                    db.with_limits(config.sql_limits)
                        .with_procedures(config.procedures_for(path)?),
                ),
                Err(e) => {
                    error!(path = %path.display(), error = %e, "database unreadable; not served");
                    refused.push(RefusedDatabase {
                        path: path.clone(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            info!(
                halo_guid = %db.halo_guid(),
                fake_crn = %db.fake_crn(),
                parent_crn = %db.identity().parent_crn,
                practice = %db.identity().practice_name,
                demo = db.identity().is_demo_or_deidentified(),
                path = %canonical.display(),
                "serving database"
            );
            by_guid.insert(db.halo_guid(), Arc::clone(&db));
            databases.push(db);
        }
        state.save(&config.state_file)?;
        let (status, _) = watch::channel(ConnectionStatus::default());
        let workers = Arc::new(Workers::new(
            config.max_concurrent_jobs.max(1),
            config.running_per_database(databases.len()),
            by_guid.keys().copied(),
        ));
        Ok(Self {
            config,
            link_guid: state.link_guid,
            databases,
            by_guid,
            refused,
            state,
            status,
            workers,
            metrics: Arc::new(LinkMetrics::default()),
            url_index: 0,
        })
    }

    /// The Link's metrics (also served on the config's `metrics_listen`).
    pub fn metrics(&self) -> &Arc<LinkMetrics> {
        &self.metrics
    }

    /// This install's Link GUID.
    pub fn link_guid(&self) -> LinkGuid {
        self.link_guid
    }

    /// The databases served, in config order.
    pub fn databases(&self) -> &[Arc<Database>] {
        &self.databases
    }

    /// The databases not served, with why.
    pub fn refused(&self) -> &[RefusedDatabase] {
        &self.refused
    }

    /// The hello this Link sends on every connection.
    pub fn hello(&self) -> Hello {
        Hello {
            link_guid: self.link_guid,
            environment: self.config.environment,
            link_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: PROTOCOL_VERSION,
            databases: self.databases.iter().map(|d| d.info()).collect(),
        }
    }

    /// Runs in the background; see [`AgentHandle`].
    pub fn spawn(self) -> AgentHandle {
        let (tx, rx) = oneshot::channel::<()>();
        let status = self.status.subscribe();
        let link_guid = self.link_guid;
        let task = tokio::spawn(self.run(async move {
            let _ = rx.await;
        }));
        AgentHandle {
            link_guid,
            shutdown: Some(tx),
            status,
            task,
        }
    }

    /// Serves until `shutdown` completes, reconnecting as needed.
    ///
    /// # Errors
    ///
    /// Only for failures that retrying cannot fix; connection failures and
    /// refusals are logged and retried with backoff.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), LinkError> {
        let metrics_server = match self.config.metrics_listen {
            Some(addr) => {
                let listener = crate::metrics::bind(addr).await?;
                info!(addr = %addr, "serving metrics at GET /metrics");
                Some(AbortOnDrop(tokio::spawn(crate::metrics::serve(
                    listener,
                    Arc::clone(&self.metrics),
                ))))
            }
            None => None,
        };
        let result = self.reconnect_loop(shutdown).await;
        drop(metrics_server);
        result
    }

    async fn reconnect_loop(mut self, shutdown: impl Future<Output = ()>) -> Result<(), LinkError> {
        let mut shutdown = pin!(shutdown);
        let mut attempt: u32 = 0;
        loop {
            let outcome = self.session(&mut shutdown).await;
            self.status.send_modify(|s| s.connected = false);
            self.metrics.set_connected(false);
            self.persist_epochs();
            match outcome {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Lost { established, error } => {
                    if established {
                        attempt = 0;
                    }
                    warn!(error = %error, "cloud session ended; reconnecting");
                }
            }
            // A Cloud of several nodes: the next connection tries the next node.
            self.url_index = self.url_index.wrapping_add(1);
            let delay = backoff(
                self.config.backoff_initial,
                self.config.backoff_max,
                attempt,
            );
            attempt = attempt.saturating_add(1);
            debug!(
                delay_ms = delay.as_millis() as u64,
                attempt, "waiting before reconnect"
            );
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Saves the highest epochs if any grew.
    fn persist_epochs(&mut self) {
        let mut changed = false;
        for entry in self.state.databases.values_mut() {
            if let Some(db) = self.by_guid.get(&entry.halo_guid) {
                let epoch = db.highest_epoch();
                if epoch > entry.highest_epoch {
                    entry.highest_epoch = epoch;
                    changed = true;
                }
            }
        }
        if changed {
            if let Err(e) = self.state.save(&self.config.state_file) {
                error!(error = %e, "cannot save epochs to the state file");
            }
        }
    }

    /// One connection, from connect to its end.
    async fn session<S: Future<Output = ()>>(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut S>,
    ) -> SessionEnd {
        let lost = |established: bool, error: LinkError| SessionEnd::Lost { established, error };
        let opened = tokio::select! {
            () = shutdown.as_mut() => return SessionEnd::Shutdown,
            opened = self.open() => opened,
        };
        let (ws, mut heartbeat_every) = match opened {
            Ok(opened) => opened,
            Err(e) => return lost(false, e),
        };
        let (mut sink, mut stream) = ws.split();
        info!(link_guid = %self.link_guid, databases = self.databases.len(), "registered with the cloud");
        self.status.send_modify(|s| {
            s.connected = true;
            s.sessions += 1;
        });
        self.metrics.set_connected(true);

        // (query id, frame, whether it is the job's last frame).
        let (done_tx, mut done_rx) = mpsc::channel::<Answer>(64);
        // Credits of the paged jobs (pages the Cloud lets this Link send).
        let mut credits: HashMap<u64, Arc<tokio::sync::Semaphore>> = HashMap::new();
        let mut running = Running::default();
        let mut waiting = FairQueue::new(self.config.max_queued_per_database);
        let mut last_heard = tokio::time::Instant::now();
        // The first beat one interval from now: the hello just went out.
        let mut heartbeat = beat_timer(heartbeat_every);

        // Frames written since the last flush: they leave in one write once nothing
        // else is ready (the `select!` is biased, with the flush last), so the answers
        // to the jobs that arrived in one segment leave in one segment too.
        let mut unflushed = 0_usize;
        let end = loop {
            let next_expiry = waiting.next_expiry();
            tokio::select! {
                biased;
                () = shutdown.as_mut() => {
                    let _ = sink.send(Message::Close(None)).await;
                    break SessionEnd::Shutdown;
                }
                _ = heartbeat.tick() => {
                    let silence_limit = (heartbeat_every * 3).max(self.config.silence_limit);
                    if last_heard.elapsed() > silence_limit {
                        break lost(true, LinkError::Connection(format!(
                            "nothing heard from the cloud for {} s",
                            silence_limit.as_secs()
                        )));
                    }
                    let beat = LinkToCloud::Heartbeat(Heartbeat {
                        at: now(),
                        databases: self.databases.iter().map(|d| d.halo_guid()).collect(),
                    });
                    let frame = match encode(&beat) {
                        Ok(f) => f,
                        Err(e) => break lost(true, e.into()),
                    };
                    // The cloud's WebSocket answers a ping with a pong, proving it
                    // is alive; it is only asked when it has been quiet for a third
                    // of the limit (see [`wants_ping`]). Ping and beat leave in one
                    // write: one segment, one wake-up of the session on the Cloud.
                    let ping = wants_ping(last_heard.elapsed(), silence_limit);
                    let sent = async {
                        if ping {
                            sink.feed(Message::Ping(Default::default())).await?;
                        }
                        sink.feed(Message::text(frame)).await?;
                        sink.flush().await
                    };
                    if let Err(e) = sent.await {
                        break lost(true, LinkError::Connection(e.to_string()));
                    }
                    unflushed = 0;
                    self.persist_epochs();
                }
                Some(answer) = done_rx.recv() => {
                    // Answers that finished meanwhile leave in the same write.
                    let mut answers = vec![settle(answer, &mut running, &mut credits)];
                    while answers.len() < MAX_FRAMES_PER_WRITE {
                        let Ok(answer) = done_rx.try_recv() else { break };
                        answers.push(settle(answer, &mut running, &mut credits));
                    }
                    if let Err(e) = feed_all(&mut sink, answers, &mut unflushed).await {
                        break lost(true, e);
                    }
                }
                () = self.workers.freed.notified() => {
                    let refusals = self.dispatch(&mut waiting, &mut running, (&done_tx, &mut done_rx), &mut credits, Instant::now());
                    if let Err(e) = feed_all(&mut sink, refusals, &mut unflushed).await {
                        break lost(true, e);
                    }
                }
                () = tokio::time::sleep_until(next_expiry.unwrap_or_else(Instant::now)),
                    if next_expiry.is_some() =>
                {
                    let refusals = self.dispatch(&mut waiting, &mut running, (&done_tx, &mut done_rx), &mut credits, Instant::now());
                    if let Err(e) = feed_all(&mut sink, refusals, &mut unflushed).await {
                        break lost(true, e);
                    }
                }
                msg = next_frame(&mut stream) => {
                    last_heard = tokio::time::Instant::now();
                    match msg {
                        Ok(None) => {}
                        Ok(Some(CloudToLink::QueryJob(job))) => {
                            // One instant for both: a job with no queue budget starts
                            // if a worker is free, and is refused otherwise.
                            let now = Instant::now();
                            let mut frames = Vec::new();
                            if let Some(refusal) = self.queue_job(job, None, &mut waiting, &running, now) {
                                frames.push(refusal);
                            }
                            frames.extend(self.dispatch(&mut waiting, &mut running, (&done_tx, &mut done_rx), &mut credits, now));
                            if let Err(e) = feed_all(&mut sink, frames, &mut unflushed).await {
                                break lost(true, e);
                            }
                        }
                        Ok(Some(CloudToLink::StreamJob(stream))) => {
                            let now = Instant::now();
                            let query_id = stream.job.query_id;
                            let paging = paged::Paging::new(&stream);
                            let credit = paging.credits();
                            let mut frames = Vec::new();
                            if let Some(refusal) = self.queue_job(stream.job, Some(paging), &mut waiting, &running, now) {
                                frames.push(refusal);
                            } else {
                                credits.insert(query_id, credit);
                            }
                            frames.extend(self.dispatch(&mut waiting, &mut running, (&done_tx, &mut done_rx), &mut credits, now));
                            if let Err(e) = feed_all(&mut sink, frames, &mut unflushed).await {
                                break lost(true, e);
                            }
                        }
                        Ok(Some(CloudToLink::StreamAck { query_id, pages })) => {
                            if let Some(credit) = credits.get(&query_id) {
                                credit.add_permits(paged::permits(pages, credit));
                            }
                        }
                        Ok(Some(CloudToLink::Cancel { query_id })) => {
                            if let Some(control) = running.get(&query_id) {
                                debug!(query_id, "cancelling job");
                                control.cancel();
                            } else if waiting.remove(query_id).is_some() {
                                debug!(query_id, "cancelled a waiting job");
                                let frame = failed_frame(
                                    query_id,
                                    QueryError::new(QueryErrorKind::Cancelled, "query was cancelled before it started"),
                                );
                                if let Err(e) = sink.send(Message::text(frame)).await {
                                    break lost(true, LinkError::Connection(e.to_string()));
                                }
                            }
                        }
                        Ok(Some(CloudToLink::HelloAck { heartbeat_interval_ms: Some(ms), .. })) => {
                            // The Cloud asks for another interval (its node's heartbeat
                            // budget grew or shrank): the next beat comes one new
                            // interval from now.
                            let every = asked_interval(Some(ms), heartbeat_every);
                            if every != heartbeat_every {
                                info!(every_ms = every.as_millis(), "the cloud asks for another heartbeat interval");
                                heartbeat_every = every;
                                heartbeat = beat_timer(every);
                            }
                        }
                        Ok(Some(other)) => {
                            warn!(message = kind(&other), "unexpected message from the cloud; ignored");
                        }
                        Err(e) => break lost(true, e),
                    }
                }
                flushed = sink.flush(), if unflushed > 0 => {
                    unflushed = 0;
                    if let Err(e) = flushed {
                        break lost(true, LinkError::Connection(e.to_string()));
                    }
                }
            }
        };
        if waiting.len() > 0 {
            debug!(
                dropped = waiting.len(),
                "session ended; waiting jobs dropped"
            );
        }
        drop(waiting);
        for credit in credits.values() {
            credit.close(); // a paged job waiting for credit stops at once
        }
        drop(running); // cancels what is still running
        end
    }

    /// Connects, sends the hello and waits for the ack; returns the socket and the
    /// heartbeat period to use.
    async fn open(&self) -> Result<(WsStream, Duration), LinkError> {
        let urls = 1 + self.config.fallback_cloud_urls.len();
        let url = self
            .config
            .cloud_urls()
            .nth(self.url_index % urls)
            .unwrap_or(self.config.cloud_url.as_str());
        debug!(url, "connecting to the cloud");
        let mut request = url
            .into_client_request()
            .map_err(|e| LinkError::Connection(e.to_string()))?;
        let bearer = format!("Bearer {}", self.config.token)
            .parse()
            .map_err(|_| LinkError::Config("token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", bearer);
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES))
            .read_buffer_size(READ_BUFFER_BYTES);
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true);
        let mut ws = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok((ws, _response))) => ws,
            Ok(Err(e)) => return Err(LinkError::Connection(e.to_string())),
            Err(_) => return Err(LinkError::Connection("connect timed out".into())),
        };
        if let Err(e) = bound_unacknowledged(&ws) {
            warn!(error = %e, "could not bound unacknowledged data on the cloud connection");
        }
        let hello = encode(&LinkToCloud::Hello(self.hello()))?;
        ws.send(Message::text(hello))
            .await
            .map_err(|e| LinkError::Connection(e.to_string()))?;
        let ack = tokio::time::timeout(HELLO_TIMEOUT, next_message(&mut ws))
            .await
            .map_err(|_| LinkError::Connection("no hello ack in time".into()))??;
        match ack {
            CloudToLink::HelloAck {
                rejected,
                heartbeat_interval_ms,
            } => {
                for r in &rejected {
                    error!(halo_guid = %r.halo_guid, reason = %r.reason, "cloud did not register database");
                }
                let every = asked_interval(heartbeat_interval_ms, self.config.heartbeat_interval);
                Ok((ws, every))
            }
            CloudToLink::Refused { reason } => {
                error!(reason = %reason, "cloud refused this link");
                Err(LinkError::Refused(reason))
            }
            other => Err(LinkError::Connection(format!(
                "expected hello ack, got {}",
                kind(&other)
            ))),
        }
    }

    /// Queues a job on its database's queue, or returns the encoded refusal to send
    /// at once. The job's deadline and queue budget count from `now`, its receipt.
    fn queue_job(
        &self,
        job: QueryJob,
        paging: Option<paged::Paging>,
        waiting: &mut FairQueue<Queued>,
        running: &Running,
        now: Instant,
    ) -> Option<String> {
        let query_id = job.query_id;
        let halo_guid = job.halo_guid;
        let refuse = |kind: QueryErrorKind, message: &str| {
            warn!(query_id, %halo_guid, ?kind, message, "job refused");
            self.metrics.refused(match kind {
                QueryErrorKind::UnknownDatabase => "unknownDatabase",
                QueryErrorKind::Busy => "queueFull",
                _ => "duplicateQueryId",
            });
            failed_frame(query_id, QueryError::new(kind, message))
        };
        let Some(db) = self.by_guid.get(&job.halo_guid).cloned() else {
            return Some(refuse(
                QueryErrorKind::UnknownDatabase,
                "this link serves no database with that halo guid",
            ));
        };
        if running.contains_key(&query_id) || waiting.contains(query_id) {
            return Some(refuse(
                QueryErrorKind::BadRequest,
                "query id already running",
            ));
        }
        // An older Cloud sends no queue budget: the whole deadline is then the budget.
        let budget = job
            .queue_timeout_ms
            .unwrap_or(job.timeout_ms)
            .min(job.timeout_ms);
        let budget = Duration::from_millis(budget).min(MAX_QUEUE_BUDGET);
        let start_by = now.checked_add(budget).unwrap_or(now);
        let control = JobControl::for_job(&job);
        let queued = Queued {
            db,
            job,
            control,
            paging,
        };
        match waiting.push(queued.db.halo_guid(), query_id, start_by, queued) {
            Ok(()) => None,
            Err((Refusal::Full, _)) => Some(refuse(
                QueryErrorKind::Busy,
                "the database's queue at this link is full",
            )),
            Err((Refusal::Duplicate, _)) => Some(refuse(
                QueryErrorKind::BadRequest,
                "query id already running",
            )),
        }
    }

    /// Answers the waiting jobs whose queue budget ran out before `now` (`busy`;
    /// they never run), then starts waiting jobs, round-robin across databases, on
    /// the free workers: a job that changes nothing is tried on this loop first
    /// (see the module docs), and its answer returned with the refusals. Returns
    /// the encoded frames to send.
    fn dispatch(
        &self,
        waiting: &mut FairQueue<Queued>,
        running: &mut Running,
        (done, answers): (&mpsc::Sender<Answer>, &mut mpsc::Receiver<Answer>),
        credits: &mut HashMap<u64, Arc<tokio::sync::Semaphore>>,
        now: Instant,
    ) -> Vec<String> {
        let refusals = waiting
            .expire(now)
            .into_iter()
            .map(|(query_id, queued)| {
                self.metrics.refused("expiredInQueue");
                warn!(query_id, halo_guid = %queued.db.halo_guid(), "job did not start within its queue budget");
                failed_frame(
                    query_id,
                    QueryError::new(
                        QueryErrorKind::Busy,
                        "expired in queue: no link worker was free within the job's maxTimeInQueue",
                    ),
                )
            })
            .collect();
        let mut frames: Vec<String> = refusals;
        let mut inline_left = INLINE_BUDGET_PER_TURN;
        while let Some((db, query_id, queued)) = waiting.pop(|db| self.workers.may_run(db)) {
            let worker = self.workers.take(db);
            if queued.paging.is_none() && inline_left >= INLINE_MIN {
                // The answers workers handed over before this worker was freed leave
                // first: on one worker, answers leave in the order the jobs started.
                take_answers(answers, running, credits, &mut frames);
                let started = std::time::Instant::now();
                let answer = run_inline(&queued, INLINE_BUDGET.min(inline_left), &self.metrics);
                inline_left = inline_left.saturating_sub(started.elapsed());
                if let Some(frame) = answer {
                    // This loop goes on dispatching: no wake-up needed.
                    worker.release_here();
                    frames.push(frame);
                    continue;
                }
            }
            running.insert(query_id, queued.control.clone());
            if queued.paging.is_some() {
                paged::launch(queued, worker, done.clone(), Arc::clone(&self.metrics));
            } else {
                launch(queued, worker, done.clone(), Arc::clone(&self.metrics));
            }
        }
        frames
    }
}

/// A worker's answer: (query id, frame, whether it is the job's last frame).
type Answer = (u64, String, bool);

/// Moves every answer the workers have handed over into `frames`, in order,
/// forgetting the jobs whose last frame it is.
fn take_answers(
    answers: &mut mpsc::Receiver<Answer>,
    running: &mut Running,
    credits: &mut HashMap<u64, Arc<tokio::sync::Semaphore>>,
    frames: &mut Vec<String>,
) {
    while let Ok(answer) = answers.try_recv() {
        frames.push(settle(answer, running, credits));
    }
}

/// A worker's answer as a frame to send, forgetting its job when it is the job's
/// last frame.
fn settle(
    (query_id, frame, last): Answer,
    running: &mut Running,
    credits: &mut HashMap<u64, Arc<tokio::sync::Semaphore>>,
) -> String {
    if last {
        running.remove(&query_id);
        credits.remove(&query_id);
    }
    frame
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A job waiting for a worker, with its control (deadline counted from receipt).
struct Queued {
    db: Arc<Database>,
    job: QueryJob,
    control: JobControl,
    /// `Some` for a job whose result goes back in pages.
    paging: Option<paged::Paging>,
}

/// The span every line about a job is logged in: its query id, its site's Halo GUID
/// and the CRN it routes by (the fake CRN for a demo or de-identified copy).
fn job_span(query_id: u64, db: &Database) -> tracing::Span {
    tracing::info_span!(
        "job",
        query_id,
        halo_guid = %db.halo_guid(),
        crn = %routing_crn(db),
    )
}

/// The frame that answers `query_id` with `result`, counted in the metrics
/// (`elapsed`: how long it ran).
fn answer_frame(
    query_id: u64,
    result: Result<crate::JobOutput, QueryError>,
    elapsed: Duration,
    metrics: &LinkMetrics,
) -> String {
    metrics.job(
        match &result {
            Ok(_) => "ok",
            Err(e) => error_kind_name(e.kind),
        },
        elapsed,
    );
    match result {
        Ok(out) => {
            let msg = LinkToCloud::QueryResult(QueryResult::from_json(
                query_id,
                out.rows,
                &out.json,
                out.duration.as_millis() as u64,
            ));
            encode(&msg).unwrap_or_else(|e| {
                failed_frame(
                    query_id,
                    QueryError::new(QueryErrorKind::TooLarge, e.to_string()),
                )
            })
        }
        Err(e) => {
            debug!(query_id, kind = ?e.kind, "job failed");
            failed_frame(query_id, e)
        }
    }
}

/// Tries `queued` on this thread within `budget` ([`crate::execute_within`]): its
/// answer frame, or `None` when it must run on a worker (the budget ran out, the
/// database was busy, or it is a job that writes).
fn run_inline(queued: &Queued, budget: Duration, metrics: &LinkMetrics) -> Option<String> {
    let query_id = queued.job.query_id;
    let _entered = job_span(query_id, &queued.db).entered();
    let started = std::time::Instant::now();
    let tried = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        execute_within(&queued.db, &queued.job, &queued.control, budget)
    }));
    match tried {
        Ok(None) => None,
        Ok(Some(result)) => Some(answer_frame(query_id, result, started.elapsed(), metrics)),
        Err(_) => Some(failed_frame(
            query_id,
            QueryError::new(QueryErrorKind::Internal, "job panicked"),
        )),
    }
}

/// Runs a job on the blocking pool and hands its answer to `done`; its worker is
/// freed once the answer is handed over (or the session is gone), so on one
/// worker answers leave in the order the jobs started.
fn launch(
    queued: Queued,
    worker: Worker,
    done: mpsc::Sender<(u64, String, bool)>,
    metrics: Arc<LinkMetrics>,
) {
    let Queued {
        db, job, control, ..
    } = queued;
    let query_id = job.query_id;
    let span = job_span(query_id, &db);
    // The blocking thread hands the answer over itself: no task in between to wake
    // (one thread hop less each way).
    tokio::task::spawn_blocking(move || {
        let _entered = span.entered();
        let run = || {
            let started = std::time::Instant::now();
            let result = execute_with(&db, &job, &control);
            answer_frame(query_id, result, started.elapsed(), &metrics)
        };
        let frame =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
                failed_frame(
                    query_id,
                    QueryError::new(QueryErrorKind::Internal, "job panicked"),
                )
            });
        // A blocking-pool thread is outside the runtime's async context, so it may
        // wait here (the session loop drains `done`; once the session is gone the
        // send fails at once).
        let _ = done.blocking_send((query_id, frame, true));
        drop(worker);
    });
}

/// The CRN a database's site routes by: the fake CRN of a demo or de-identified
/// copy, else the parent CRN.
fn routing_crn(db: &Database) -> halo_ids::Crn {
    if db.identity().is_demo_or_deidentified() {
        db.fake_crn()
    } else {
        db.identity().parent_crn
    }
}

/// The metric label of an error kind (its wire name).
fn error_kind_name(kind: QueryErrorKind) -> &'static str {
    match kind {
        QueryErrorKind::StaleEpoch => "staleEpoch",
        QueryErrorKind::Timeout => "timeout",
        QueryErrorKind::TooLarge => "tooLarge",
        QueryErrorKind::Denied => "denied",
        QueryErrorKind::Database => "database",
        QueryErrorKind::UnknownDatabase => "unknownDatabase",
        QueryErrorKind::Cancelled => "cancelled",
        QueryErrorKind::BadRequest => "badRequest",
        QueryErrorKind::Busy => "busy",
        QueryErrorKind::Internal => "internal",
        _ => "other",
    }
}

/// The Link's workers in use, overall and per database. Shared by every session:
/// a job still stopping after its session ended keeps its worker until it stops.
/// Only the session loop takes workers (so a check then a take cannot race with
/// another take); a [`Worker`] gives its worker back from any thread.
#[derive(Debug)]
struct Workers {
    max: usize,
    max_per_db: usize,
    busy: AtomicUsize,
    per_db: HashMap<HaloGuid, AtomicUsize>,
    /// Woken when a worker is freed, so waiting jobs can start.
    freed: Notify,
}

impl Workers {
    fn new(max: usize, max_per_db: usize, databases: impl Iterator<Item = HaloGuid>) -> Self {
        Self {
            max: max.max(1),
            max_per_db: max_per_db.max(1),
            busy: AtomicUsize::new(0),
            per_db: databases.map(|db| (db, AtomicUsize::new(0))).collect(),
            freed: Notify::new(),
        }
    }

    /// Whether a job of `db` may start now.
    fn may_run(&self, db: HaloGuid) -> bool {
        self.busy.load(Ordering::Acquire) < self.max
            && self
                .per_db
                .get(&db)
                .is_some_and(|n| n.load(Ordering::Acquire) < self.max_per_db)
    }

    /// Takes a worker for a job of `db` (after [`Workers::may_run`]).
    fn take(self: &Arc<Self>, db: HaloGuid) -> Worker {
        self.busy.fetch_add(1, Ordering::AcqRel);
        if let Some(n) = self.per_db.get(&db) {
            n.fetch_add(1, Ordering::AcqRel);
        }
        Worker {
            workers: Arc::clone(self),
            db,
            wake: true,
        }
    }
}

/// One worker in use; dropping it frees the worker and wakes the session loop.
struct Worker {
    workers: Arc<Workers>,
    db: HaloGuid,
    /// Whether freeing it wakes the session loop (not when the loop frees it).
    wake: bool,
}

impl Worker {
    /// Frees the worker from the session loop itself, which goes on dispatching:
    /// no wake-up of the loop.
    fn release_here(mut self) {
        self.wake = false;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(n) = self.workers.per_db.get(&self.db) {
            n.fetch_sub(1, Ordering::AcqRel);
        }
        self.workers.busy.fetch_sub(1, Ordering::AcqRel);
        if self.wake {
            self.workers.freed.notify_one();
        }
    }
}

/// The read buffer of the Cloud's WebSocket, in bytes. tungstenite fills its whole
/// read buffer with zeros before every read (128 KiB by default: a few µs of memset
/// per frame, twice per job); jobs are small frames. A larger frame still arrives
/// whole: the buffer grows to the frame's length once its header is read.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The most frames written before a flush.
const MAX_FRAMES_PER_WRITE: usize = 32;

/// Writes frames in order into the sink's buffer, counting them in `unflushed`;
/// flushes once [`MAX_FRAMES_PER_WRITE`] are waiting (otherwise the session loop
/// flushes when nothing else is ready).
async fn feed_all<S>(
    sink: &mut S,
    frames: Vec<String>,
    unflushed: &mut usize,
) -> Result<(), LinkError>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let io = |e: tungstenite::Error| LinkError::Connection(e.to_string());
    for frame in frames {
        sink.feed(Message::text(frame)).await.map_err(io)?;
        *unflushed += 1;
        if *unflushed >= MAX_FRAMES_PER_WRITE {
            sink.flush().await.map_err(io)?;
            *unflushed = 0;
        }
    }
    Ok(())
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sets [`UNACKNOWLEDGED_LIMIT`] on the connection's socket.
fn bound_unacknowledged(ws: &WsStream) -> std::io::Result<()> {
    match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => {
            socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(UNACKNOWLEDGED_LIMIT))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod socket_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn the_cloud_connection_bounds_unacknowledged_data() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_tungstenite::accept_async(tcp).await.unwrap()
        });
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/link/ws"))
            .await
            .unwrap();
        let _server_side = server.await.unwrap();
        bound_unacknowledged(&ws).unwrap();
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() else {
            panic!("a ws:// connection is plain TCP");
        };
        let limit = socket2::SockRef::from(tcp).tcp_user_timeout().unwrap();
        assert_eq!(limit, Some(UNACKNOWLEDGED_LIMIT));
    }
}

/// Why a session ended.
enum SessionEnd {
    Shutdown,
    Lost { established: bool, error: LinkError },
}

fn failed_frame(query_id: u64, error: QueryError) -> String {
    encode(&LinkToCloud::QueryFailed(QueryFailed { query_id, error }))
        .expect("a failure message is far below the frame limit")
}

/// The next protocol message; pings, pongs and unknown frame types are skipped.
async fn next_message<S>(stream: &mut S) -> Result<CloudToLink, LinkError>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        if let Some(msg) = next_frame(stream).await? {
            return Ok(msg);
        }
    }
}

/// Whether a heartbeat also carries a ping: when nothing has been heard from the
/// Cloud for a third of `silence_limit` (at least one heartbeat period). A Cloud
/// that answers is then heard at least twice per limit; a pong to every beat would
/// cost each Cloud node a write and a wake-up of the Link per beat, across all its
/// Links.
fn wants_ping(silent_for: Duration, silence_limit: Duration) -> bool {
    silent_for >= silence_limit / 3
}

/// A heartbeat timer whose first tick comes `every` from now; a late tick delays the
/// ones after it rather than bunching them.
fn beat_timer(every: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

/// The heartbeat interval a `helloAck` asks for (at least 100 ms), or `otherwise`
/// when it asks for none.
fn asked_interval(heartbeat_interval_ms: Option<u64>, otherwise: Duration) -> Duration {
    heartbeat_interval_ms.map_or(otherwise, |ms| Duration::from_millis(ms.max(100)))
}

/// The next frame: `Some` for a protocol message, `None` for a ping or pong.
/// Cancel-safe (one `next()` per call).
async fn next_frame<S>(stream: &mut S) -> Result<Option<CloudToLink>, LinkError>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    {
        match stream.next().await {
            None => Err(LinkError::Connection("connection closed".into())),
            Some(Err(e)) => Err(LinkError::Connection(e.to_string())),
            Some(Ok(Message::Text(text))) => Ok(Some(decode_cloud_frame(text.as_str())?)),
            Some(Ok(Message::Close(frame))) => Err(LinkError::Connection(format!(
                "closed by the cloud{}",
                frame.map(|f| format!(": {}", f.reason)).unwrap_or_default()
            ))),
            Some(Ok(Message::Binary(_))) => {
                Err(LinkError::Connection("unexpected binary frame".into()))
            }
            Some(Ok(_)) => Ok(None),
        }
    }
}

/// The jobs of one session; dropping it (session end, shutdown, or the task being
/// aborted) cancels every job still running.
#[derive(Default)]
struct Running(HashMap<u64, JobControl>);

impl std::ops::Deref for Running {
    type Target = HashMap<u64, JobControl>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for control in self.0.values() {
            control.cancel();
        }
    }
}

fn kind(msg: &CloudToLink) -> &'static str {
    match msg {
        CloudToLink::HelloAck { .. } => "helloAck",
        CloudToLink::Refused { .. } => "refused",
        CloudToLink::QueryJob(_) => "queryJob",
        CloudToLink::Cancel { .. } => "cancel",
        CloudToLink::StreamJob(_) => "streamJob",
        CloudToLink::StreamAck { .. } => "streamAck",
    }
}

/// The adapter owns the clock: milliseconds since the Unix epoch.
fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

/// `initial * 2^attempt`, capped at `max`, then a uniform jitter in `[d/2, d]`.
pub(crate) fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
    let full = initial.saturating_mul(factor).min(max);
    let half = full / 2;
    let spread = (full - half).as_millis() as u64;
    let jitter = if spread == 0 {
        0
    } else {
        rand::random_range(0..=spread)
    };
    half + Duration::from_millis(jitter)
}

/// A running Link; stop it with [`AgentHandle::shutdown`] or [`AgentHandle::kill`].
#[derive(Debug)]
pub struct AgentHandle {
    link_guid: LinkGuid,
    shutdown: Option<oneshot::Sender<()>>,
    status: watch::Receiver<ConnectionStatus>,
    task: tokio::task::JoinHandle<Result<(), LinkError>>,
}

impl AgentHandle {
    /// The running Link's GUID.
    pub fn link_guid(&self) -> LinkGuid {
        self.link_guid
    }

    /// A receiver of connection-state changes.
    pub fn status(&self) -> watch::Receiver<ConnectionStatus> {
        self.status.clone()
    }

    /// Waits until at least `sessions` sessions have been opened and one is open.
    ///
    /// # Errors
    ///
    /// [`LinkError::Connection`] if `timeout` passes first or the Link stopped.
    pub async fn wait_connected(&self, sessions: u64, timeout: Duration) -> Result<(), LinkError> {
        let mut rx = self.status.clone();
        let wait = rx.wait_for(|s| s.connected && s.sessions >= sessions);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(LinkError::Connection("link stopped".into())),
            Err(_) => Err(LinkError::Connection("not connected in time".into())),
        }
    }

    /// Closes the session politely (WebSocket close) and waits for the Link to stop.
    ///
    /// # Errors
    ///
    /// What [`Agent::run`] returned, or [`LinkError::Connection`] if its task failed.
    pub async fn shutdown(mut self) -> Result<(), LinkError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(LinkError::Connection(format!("link task failed: {e}"))),
        }
    }

    /// Stops the Link abruptly, as a crash would: the socket is dropped without a
    /// close frame and running jobs are abandoned.
    pub fn kill(self) {
        self.task.abort();
    }
}
