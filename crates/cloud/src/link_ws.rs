//! The WebSocket endpoint Links connect to: authenticate the Link's credential,
//! register what its hello announces (durably, before the ack), attach its router
//! session, then shuttle jobs out and results in until the socket closes. Closing
//! detaches the session, which fails the Link's in-flight queries at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt as _, StreamExt as _};
use halo_ids::{LinkGuid, PmsId, Timestamp};
use halo_policy::{ExecutionMode, KeyHash};
use halo_protocol::{
    Allowlist, CloudToLink, DatabaseInfo, DatabaseRejection, Hello, LinkToCloud, MAX_FRAME_BYTES,
    QueryErrorKind, QueryFailed, QueryJob, QueryResult,
};
use halo_router::{Handoff, Job, LinkSession, QueryFailure, QueryId, QueryOutput, RouteError};
use halo_tenancy::{Catalogue, Registration, SiteIdentity, SiteRegistration};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::app::AppState;
use crate::clock::now;
use crate::error::{ApiError, link_authentication_error};
use crate::extract::bearer;
use crate::record::CredentialEvent;

/// How long a Link has to say hello after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The read buffer of a Link's WebSocket, in bytes. tungstenite fills its whole read
/// buffer with zeros before every read, so its default (128 KiB) made every idle
/// Link cost 128 KiB of resident memory. A frame larger than this still arrives
/// whole: the buffer grows to the frame's length once its header is read, and each
/// read takes up to this many bytes.
pub const LINK_READ_BUFFER_BYTES: usize = 4 * 1024;

/// How long a Link refused at the session cap is asked to wait (`Retry-After`).
const SESSION_CAP_RETRY_AFTER_MS: u64 = 5_000;

/// The cap on concurrent Link sessions ([`crate::HttpLimits::max_link_sessions`]):
/// a place is taken before the WebSocket upgrade and held until the session ends.
#[derive(Debug)]
pub struct SessionCap(Arc<Semaphore>, usize);

impl SessionCap {
    /// Room for `max` sessions at once (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self(Arc::new(Semaphore::new(max)), max)
    }

    /// Places taken now: sessions open or opening (one atomic load).
    pub fn taken(&self) -> usize {
        self.1.saturating_sub(self.0.available_permits())
    }

    /// A place for one more session, or `None` at the cap.
    fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.0).try_acquire_owned().ok()
    }

    /// Places free now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// `GET /link/ws`: upgrade a Link's connection, after checking its credential.
pub async fn link_ws(
    State(app): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let token = bearer(&headers).ok_or_else(|| {
        ApiError::unauthorized("link credential required (Authorization: Bearer)")
    })?;
    let token_hash = KeyHash::of(token);
    app.state
        .check_credential(&token_hash)
        .map_err(|e| link_authentication_error(&e))?;
    let Some(place) = app.link_sessions.try_take() else {
        tracing::warn!("link session cap reached: connection refused");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this cloud node serves as many link sessions as it may; retry later",
        )
        .with_retry_after_ms(SESSION_CAP_RETRY_AFTER_MS));
    };
    Ok(ws
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(LINK_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            if let Err(reason) = session(app, socket, token_hash).await {
                tracing::warn!(%reason, "link session ended");
            }
            drop(place);
        }))
}

/// Tells live Link sessions to re-check their credential (after a revocation or a
/// rotation); the ones whose credential no longer admits them close within moments.
///
/// Each session listens on a `Notify` of its own, registered under its Link from
/// its hello on, before its credential is checked (so no kick is missed: a kick
/// with nobody waiting leaves a permit). A kick wakes only that Link's sessions, and
/// an idle session's wake-ups (its heartbeats) touch no lock shared with the others
/// (a broadcast receiver, polled on every wake-up, locked the channel's one mutex).
#[derive(Debug, Default)]
pub struct Kicks {
    listeners: parking_lot::Mutex<BTreeMap<(LinkGuid, u64), Arc<Notify>>>,
    next: AtomicU64,
}

impl Kicks {
    /// Asks `link`'s live sessions, if any, to re-check their credential.
    pub fn kick(&self, link: LinkGuid) {
        // No listener means no live session: nothing to close.
        let listeners = self.listeners.lock();
        for notify in listeners
            .range((link, 0)..=(link, u64::MAX))
            .map(|(_, n)| n)
        {
            notify.notify_one();
        }
    }

    /// Registers one session of `link`; it stops listening when the guard drops.
    fn listen(&self, link: LinkGuid) -> KickListener<'_> {
        let key = (link, self.next.fetch_add(1, Ordering::Relaxed));
        let notify = Arc::new(Notify::new());
        self.listeners.lock().insert(key, Arc::clone(&notify));
        KickListener {
            kicks: self,
            key,
            notify,
        }
    }

    /// Sessions listening now (tests).
    #[cfg(test)]
    fn listening(&self) -> usize {
        self.listeners.lock().len()
    }
}

/// One session's registration in [`Kicks`].
struct KickListener<'k> {
    kicks: &'k Kicks,
    key: (LinkGuid, u64),
    notify: Arc<Notify>,
}

impl Drop for KickListener<'_> {
    fn drop(&mut self) {
        self.kicks.listeners.lock().remove(&self.key);
    }
}

async fn send(socket: &mut WebSocket, msg: &CloudToLink) -> Result<(), String> {
    let text = halo_protocol::encode(msg).map_err(|e| e.to_string())?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|e| format!("send: {e}"))
}

/// Writes `msg` to an attached session's outbox, owning it (boxed by its caller, so
/// that the message lives in the box).
async fn send_owned(outbox: &Outbox, msg: CloudToLink) -> Result<(), String> {
    let text = halo_protocol::encode(&msg).map_err(|e| e.to_string())?;
    outbox.send(Message::Text(text.into())).await
}

/// The most jobs written to a Link before one flush.
const MAX_JOBS_PER_WRITE: usize = 32;

/// Writes `msg` without flushing, on a turn at the outbox.
async fn feed(socket: &mut Writing<'_, WsSink>, msg: &CloudToLink) -> Result<(), String> {
    let text = halo_protocol::encode(msg).map_err(|e| e.to_string())?;
    socket.feed(Message::Text(text.into())).await
}

/// Flushes what a writer dropped mid-write left in the outbox.
async fn flush_outbox<S>(outbox: &Outbox<S>) -> Result<(), String>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let mut socket = outbox.writing().await;
    let flushed = socket.flush().await;
    socket.finish(flushed)
}

/// [`refuse`], for an attached session: its last words, then the close.
async fn refuse_outbox(outbox: &Outbox, reason: String) -> String {
    let refused = CloudToLink::Refused {
        reason: reason.clone(),
    };
    if let Ok(text) = halo_protocol::encode(&refused) {
        let mut socket = outbox.writing().await;
        let _ = socket.send(Message::Text(text.into())).await;
        let closed = socket.close().await;
        let _ = socket.finish(closed);
    }
    reason
}

async fn refuse(socket: &mut WebSocket, reason: String) -> String {
    let _ = send(
        socket,
        &CloudToLink::Refused {
            reason: reason.clone(),
        },
    )
    .await;
    let _ = socket.close().await;
    reason
}

fn identity(db: &DatabaseInfo) -> SiteIdentity {
    SiteIdentity {
        pms_type: db.pms_type,
        parent_crn: db.parent_crn,
        branch_crns: db.branch_crns.iter().map(|b| b.crn).collect(),
        practice_name: db.practice_name.clone(),
        pms_version: db.pms_version.clone(),
        catalogues: db
            .catalogues
            .iter()
            .map(|c| Catalogue {
                name: c.name.as_str().into(),
                is_default: c.is_default,
            })
            .collect(),
        is_demo: db.is_demo,
    }
}

async fn read_hello(socket: &mut WebSocket) -> Result<Hello, String> {
    let frame = tokio::time::timeout(HELLO_TIMEOUT, socket.next())
        .await
        .map_err(|_| "no hello within 10 s".to_owned())?;
    match frame {
        Some(Ok(Message::Text(text))) => match halo_protocol::decode::<LinkToCloud>(&text) {
            Ok(LinkToCloud::Hello(hello)) => Ok(hello),
            Ok(_) => Err("the first message must be a hello".to_owned()),
            Err(e) => Err(format!("bad hello: {e}")),
        },
        _ => Err("connection closed before hello".to_owned()),
    }
}

/// Registers the hello's admitted databases durably; returns the rejections of the
/// Cloud's registry (the scope's own rejections are in `rejected` already). What
/// came of each database is `halo_tenancy::Registration`'s decision.
async fn register(
    app: &AppState,
    hello: &Hello,
    admitted: &[&DatabaseInfo],
    mut rejected: Vec<DatabaseRejection>,
) -> Result<Vec<DatabaseRejection>, String> {
    let registration = Registration::new(
        hello.link_guid,
        hello.environment,
        hello.link_version.clone(),
        admitted.iter().map(|db| (db.halo_guid, identity(db))),
    );
    let results = app.state.apply_registration(&registration, now()).await;
    let outcomes = registration.outcomes(results).map_err(|e| e.to_string())?;
    for (site, outcome) in outcomes {
        match outcome {
            SiteRegistration::Registered | SiteRegistration::AlreadyActive => {}
            SiteRegistration::Refused(e) => {
                tracing::warn!(link = %hello.link_guid, %site, error = %e, "database refused");
                rejected.push(DatabaseRejection {
                    halo_guid: site,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(rejected)
}

/// Checks the hello against the credential: the whole hello (size, binding,
/// environment), then each database against the credential's scope. Returns the
/// admitted databases, the refused ones with why, and whether the credential is
/// used for the first time (its binding must be recorded).
fn admit<'h>(
    app: &AppState,
    token_hash: &KeyHash,
    hello: &'h Hello,
) -> Result<(Vec<&'h DatabaseInfo>, Vec<DatabaseRejection>, bool), String> {
    if hello.databases.len() > app.max_databases_per_link {
        return Err(format!(
            "the hello announces {} databases; this cloud accepts at most {} per link",
            hello.databases.len(),
            app.max_databases_per_link
        ));
    }
    let credentials = app.state.credentials();
    let admission = credentials
        .admit(token_hash, hello.link_guid, hello.environment)
        .map_err(|e| e.to_string())?;
    let mut admitted = Vec::with_capacity(hello.databases.len());
    let mut rejected = Vec::new();
    for db in &hello.databases {
        let pms_id = PmsId::new(db.pms_type, db.parent_crn);
        match admission.scope.admit_database(pms_id, db.is_demo) {
            Ok(()) => admitted.push(db),
            Err(e) => {
                tracing::warn!(link = %hello.link_guid, credential = %admission.id, site = %db.halo_guid, error = %e, "database outside the credential's scope");
                rejected.push(DatabaseRejection {
                    halo_guid: db.halo_guid,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok((admitted, rejected, admission.first_use))
}

async fn session(app: AppState, mut socket: WebSocket, token_hash: KeyHash) -> Result<(), String> {
    // Boxed, and so freed once the Link is attached: the hello, the registration and
    // their writes are not part of the future that every idle session keeps.
    let (link, kicks, mut session) = Box::pin(handshake(&app, &mut socket, &token_hash)).await?;
    // The write half is shared: request tasks write their own jobs to it
    // (`Router::route_direct`), this task everything else; this task alone reads.
    let (sink, mut stream) = socket.split();
    let outbox = Arc::new(Outbox::new(sink));
    session.set_outbox(Arc::clone(&outbox) as halo_router::Outbox);
    // On a cluster node: the Link's lease, held while the session lasts.
    let lease = app.forwarding.as_ref().map(|f| f.leases.attached(link));
    let result = serve(
        &app,
        link,
        &token_hash,
        (&mut stream, &outbox),
        &mut session,
        &kicks,
        lease.as_ref(),
    )
    .await;
    drop(lease);
    tracing::info!(%link, in_flight = session.in_flight(), "link detached");
    drop(session);
    // Detached first (every query in flight fails at once), then the connection is
    // closed: the write half leaves the outbox, which the router may still hold.
    outbox.shut().await;
    result
}

/// The write half of a Link's WebSocket.
type WsSink = SplitSink<WebSocket, Message>;

/// The writer of one Link session's connection, shared by the session's task and by
/// the request tasks that write their own jobs ([`write_handoff`]): one write at a
/// time (an async lock), each message whole (a writer dropped mid-write leaves the
/// rest buffered in the sink, and the session task flushes it).
///
/// Request tasks combine their writes: a job whose task finds the sink taken waits
/// in `waiting`, and the writer holding the sink writes it before its flush, so
/// jobs routed at once leave in one write (the holder yields once before writing,
/// so that they can). Whoever lets go of the sink looks at
/// `waiting` again, so no job is left behind (see [`Outbox::send_combined`]).
pub(crate) struct Outbox<S = WsSink> {
    /// `None` once the session ended.
    sink: tokio::sync::Mutex<Option<S>>,
    /// Jobs left by request tasks that found the sink taken, in arrival order.
    waiting: parking_lot::Mutex<Vec<Message>>,
    /// Woken when a write was left unfinished (its task dropped mid-write) or failed,
    /// or when a turn at the sink that the session task held ended with jobs
    /// waiting: the session task flushes what was left, or ends the session.
    stalled: Notify,
    /// A write failed: the connection is unusable, the session ends.
    failed: AtomicBool,
}

impl<S> Outbox<S>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    fn new(sink: S) -> Self {
        Self {
            sink: tokio::sync::Mutex::new(Some(sink)),
            waiting: parking_lot::Mutex::new(Vec::new()),
            stalled: Notify::new(),
            failed: AtomicBool::new(false),
        }
    }

    /// The sink, for writes that may take turns ([`Writing`]).
    async fn writing(&self) -> Writing<'_, S> {
        Writing::new(self, self.sink.lock().await)
    }

    /// Writes `msg` and flushes.
    async fn send(&self, msg: Message) -> Result<(), String> {
        let mut w = self.writing().await;
        let sent = w.send(msg).await;
        w.finish(sent)
    }

    /// Writes `msg` with the jobs other request tasks left waiting, or leaves it
    /// waiting for the writer that holds the sink now (which writes it before its
    /// flush): `Ok` then means only that a writer will write it. A write that fails
    /// ends the session, and with it every query in flight on it.
    ///
    /// A task that takes the sink yields once before it writes: tokio resumes a
    /// yielded task after the rest of its worker's run queue and a poll for I/O, so
    /// the request tasks that were ready meanwhile leave their jobs for this write.
    ///
    /// No job is stranded: `msg` waits before the sink is tried, and every turn at
    /// the sink looks at `waiting` again once it let go (the `waiting` lock orders
    /// the two looks), taking another turn (a request task) or waking the session
    /// task (a turn of its own).
    async fn send_combined(&self, msg: Message) -> Result<(), String> {
        self.waiting.lock().push(msg);
        let mut first = true;
        loop {
            let Ok(sink) = self.sink.try_lock() else {
                return Ok(());
            };
            let mut w = Writing::new(self, sink);
            if first {
                first = false;
                tokio::task::yield_now().await;
            }
            let flushed = w.flush().await;
            if flushed.is_err() {
                return w.finish(flushed);
            }
            w.done = true;
            drop(w.sink.take());
            if self.waiting.lock().is_empty() {
                return Ok(());
            }
        }
    }

    /// Closes the connection's write half for good; later writes fail.
    async fn shut(&self) {
        let sink = self.sink.lock().await.take();
        drop(sink);
        self.waiting.lock().clear();
    }
}

/// One turn at an [`Outbox`]'s sink. Dropped before [`Writing::finish`] (its task
/// cancelled mid-write), it puts the jobs it took from `waiting` and had not yet
/// written back in front of `waiting`, and wakes the session task to write them and
/// flush what it left. A turn of the session task's that ends with jobs waiting
/// wakes it too (see [`Outbox::send_combined`]).
struct Writing<'a, S> {
    /// `Some` until the turn ends.
    sink: Option<tokio::sync::MutexGuard<'a, Option<S>>>,
    outbox: &'a Outbox<S>,
    /// Jobs taken from `waiting` by [`Writing::flush`], not yet in the sink.
    carried: std::collections::VecDeque<Message>,
    done: bool,
}

impl<'a, S> Writing<'a, S>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    /// A turn at `outbox`'s sink, whose lock `sink` holds.
    fn new(outbox: &'a Outbox<S>, sink: tokio::sync::MutexGuard<'a, Option<S>>) -> Self {
        Self {
            sink: Some(sink),
            outbox,
            carried: std::collections::VecDeque::new(),
            done: false,
        }
    }

    fn sink(&mut self) -> Result<&mut S, String> {
        self.sink
            .as_mut()
            .and_then(|guard| guard.as_mut())
            .ok_or_else(|| "send: the link session ended".to_owned())
    }

    async fn feed(&mut self, msg: Message) -> Result<(), String> {
        self.sink()?
            .feed(msg)
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// Writes the jobs waiting in the outbox, then flushes everything written.
    async fn flush(&mut self) -> Result<(), String> {
        // One look: jobs that wait after it are the next turn's.
        let taken = std::mem::take(&mut *self.outbox.waiting.lock());
        if self.carried.is_empty() {
            self.carried = taken.into(); // the Vec's buffer, not a copy
        } else {
            self.carried.extend(taken);
        }
        // A job leaves `carried` only once the sink took it: `feed` can wait (for
        // room) only before it hands the message over.
        while let Some(msg) = self.carried.front() {
            self.feed(msg.clone()).await?;
            self.carried.pop_front();
        }
        self.sink()?.flush().await.map_err(|e| format!("send: {e}"))
    }

    async fn send(&mut self, msg: Message) -> Result<(), String> {
        self.feed(msg).await?;
        self.flush().await
    }

    async fn close(&mut self) -> Result<(), String> {
        self.sink()?.close().await.map_err(|e| format!("send: {e}"))
    }

    /// Ends the turn with the outcome of its writes: a failure marks the outbox
    /// failed and wakes the session task, which ends the session.
    fn finish(mut self, outcome: Result<(), String>) -> Result<(), String> {
        self.done = true;
        let open = self.sink.as_ref().is_some_and(|guard| guard.is_some());
        if outcome.is_err() && open {
            self.outbox.failed.store(true, Ordering::Release);
            self.outbox.stalled.notify_one();
        }
        outcome
    }
}

impl<S> Drop for Writing<'_, S> {
    fn drop(&mut self) {
        if !self.carried.is_empty() {
            // Other tasks' jobs, not written: back in front, in their order.
            let mut waiting = self.outbox.waiting.lock();
            let later = std::mem::take(&mut *waiting);
            waiting.extend(self.carried.drain(..));
            waiting.extend(later);
        }
        let held = self.sink.take().is_some();
        if !self.done || (held && !self.outbox.waiting.lock().is_empty()) {
            self.outbox.stalled.notify_one();
        }
    }
}

/// Writes a job that routing handed back ([`halo_router::Router::route_direct`]) to
/// the outbox it came with: the connection of the session routing chose, and no
/// other. A job that cannot be put in the protocol's form is refused (never dropped
/// silently); one that cannot be written is unreachable (and the session ends).
///
/// # Errors
/// [`RouteError::Failed`] ([`QueryFailure::Refused`]) or [`RouteError::Unreachable`];
/// the caller then drops its `Dispatch`, which releases the query's place.
pub(crate) async fn write_handoff(handoff: Handoff) -> Result<(), RouteError> {
    let Handoff { job, outbox } = handoff;
    // Only this module attaches outboxes to sessions: any other is a bug, and the job
    // is not sent anywhere.
    let Some(outbox) = outbox.downcast_ref::<Outbox>() else {
        tracing::error!("a link session's outbox is not the cloud's");
        return Err(RouteError::Unreachable);
    };
    let refused = |reason: String| RouteError::Failed(QueryFailure::Refused(reason));
    let job = to_protocol(job, now()).map_err(refused)?;
    let text =
        halo_protocol::encode(&CloudToLink::QueryJob(job)).map_err(|e| refused(e.to_string()))?;
    outbox
        .send_combined(Message::Text(text.into()))
        .await
        .map_err(|_| RouteError::Unreachable)
}

/// A Link's hello, up to its `helloAck`: the Link's credential admits it, its
/// databases are registered, and its session is attached. Refused (the Link is told
/// why, and the reason returned) otherwise.
async fn handshake<'a>(
    app: &'a AppState,
    socket: &mut WebSocket,
    token_hash: &KeyHash,
) -> Result<(LinkGuid, KickListener<'a>, LinkSession), String> {
    let hello = match read_hello(socket).await {
        Ok(h) => h,
        Err(reason) => return Err(refuse(socket, reason).await),
    };
    let link = hello.link_guid;
    // Listen for revocations before the credential is checked, so none is missed.
    let kicks = app.kicks.listen(link);
    let (admitted, rejected, first_use) = match admit(app, token_hash, &hello) {
        Ok(a) => a,
        Err(reason) => return Err(refuse(socket, reason).await),
    };
    if first_use {
        let event = CredentialEvent::Bound {
            token_hash: *token_hash,
            link,
        };
        let bound = app.state.apply_credential(event, now()).await;
        if let Err(e) = bound {
            // Another connection bound it first.
            return Err(refuse(socket, e.to_string()).await);
        }
    }
    let rejected = match register(app, &hello, &admitted, rejected).await {
        Ok(r) => r,
        Err(reason) => return Err(refuse(socket, reason).await),
    };
    // Belt and braces: a revocation applied while registering is also waiting in
    // `kicks`, but this refuses before the session is attached at all.
    if let Err(e) = app.state.check_credential(token_hash) {
        return Err(refuse(socket, e.to_string()).await);
    }
    let session = app.state.router().attach_link(link);
    app.state.heartbeat(link, now());
    // The interval the node's heartbeat budget allows with this many Links; stored
    // before the ack leaves, so availability allows for it from the start.
    let every = app.heartbeats.interval(app.link_sessions.taken());
    session.set_heartbeat_interval(every);
    send(socket, &hello_ack(rejected, every)).await?;
    tracing::info!(%link, databases = admitted.len(), "link attached");
    Ok((link, kicks, session))
}

/// The `helloAck` that asks a Link to beat every `every`; sent again mid-session
/// (with nothing rejected) to ask for another interval.
fn hello_ack(rejected: Vec<DatabaseRejection>, every: Duration) -> CloudToLink {
    CloudToLink::HelloAck {
        rejected,
        heartbeat_interval_ms: Some(every.as_millis().try_into().unwrap_or(u64::MAX)),
    }
}

/// The interval to ask of an attached Link again, if the node's heartbeat budget
/// now needs another one than `asked` ([`crate::heartbeat::HeartbeatPlan::should_reask`]).
fn reask(app: &AppState, asked: Duration) -> Option<Duration> {
    let target = app.heartbeats.interval(app.link_sessions.taken());
    crate::heartbeat::HeartbeatPlan::should_reask(asked, target).then_some(target)
}

async fn serve(
    app: &AppState,
    link: LinkGuid,
    token_hash: &KeyHash,
    (stream, outbox): (&mut SplitStream<WebSocket>, &Outbox),
    session: &mut LinkSession,
    kicks: &KickListener<'_>,
    lease: Option<&crate::lease::Held>,
) -> Result<(), String> {
    // Acknowledgements and cancels of paged results (the async path), made on the
    // first paged job: an idle session holds no channel (its first block of slots is
    // about 6.5 KB).
    let mut controls: Option<Controls> = None;
    // Where this Link's clock goes on each heartbeat: one atomic, no shared lock.
    let clock = app.client_clocks.of(link);
    // Kept across the loop's turns (made again only once it fires), so a turn does
    // not register and unregister a waiter.
    let kicked = kicks.notify.notified();
    tokio::pin!(kicked);
    let lapsed = crate::lease::lapsed(lease);
    tokio::pin!(lapsed);
    let stalled = outbox.stalled.notified();
    tokio::pin!(stalled);
    loop {
        tokio::select! {
            () = &mut lapsed => return Err(crate::lease::LAPSED.to_owned()),
            // Boxed with its message (see `write_jobs`).
            Some(msg) = next_control(&mut controls) => Box::pin(send_owned(outbox, msg)).await?,
            () = &mut kicked => {
                kicked.set(kicks.notify.notified());
                if let Err(e) = app.state.check_credential(token_hash) {
                    // Boxed, as a session's last words (see `write_jobs`).
                    let reason = Box::pin(refuse_outbox(outbox, e.to_string())).await;
                    return Err(reason);
                }
            }
            // A request task's write failed, or was dropped unfinished.
            () = &mut stalled => {
                stalled.set(outbox.stalled.notified());
                if outbox.failed.load(Ordering::Acquire) {
                    return Err("send: a job's write failed".to_owned());
                }
                Box::pin(flush_outbox(outbox)).await?;
            }
            job = session.next_job() => {
                let Some(job) = job else {
                    return Err("session replaced by a newer connection of the same link".to_owned());
                };
                // Boxed: a job's locals (the job, its protocol form, the write) would
                // otherwise be part of every session's future, idle or not.
                Box::pin(write_jobs(app, outbox, session, &mut controls, job)).await?;
            }
            frame = stream.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(Message::Binary(_))) => return Err("binary frames are not part of the protocol".to_owned()),
                    Some(Err(e)) => return Err(format!("receive: {e}")),
                };
                match halo_protocol::decode_link_frame(&text) {
                    Ok(LinkToCloud::QueryResult(r)) => complete_ok(session, r),
                    Ok(LinkToCloud::QueryFailed(f)) => complete_err(session, f),
                    Ok(LinkToCloud::ResultPage(page)) => {
                        let id = page.query_id;
                        if let Err(e) = app.jobs.hub.page(page) {
                            if let Some(id) = QueryId::new(id) {
                                session.complete(id, Err(QueryFailure::Refused(e.to_string())));
                            }
                        }
                    }
                    Ok(LinkToCloud::ResultEnd(end)) => {
                        let Some(id) = QueryId::new(end.query_id) else { continue };
                        let output = QueryOutput {
                            data: String::new(),
                            size: 0,
                            rows: end.rows,
                            sql_execution: Duration::from_millis(end.duration_ms),
                        };
                        // The end goes to the runner before the slot completes.
                        app.jobs.hub.end(end);
                        session.complete(id, Ok(output));
                    }
                    Ok(LinkToCloud::Heartbeat(beat)) => {
                        // The same atomic as `CloudState::heartbeat`, reached through
                        // the session's own entry (no table lookup per beat).
                        session.heard(now());
                        clock.record(beat.at);
                        // Links attached or left since: ask for another interval if
                        // the node's budget needs one (rarely: two loads otherwise).
                        let asked = session.heartbeat_interval().unwrap_or(app.link_heartbeat);
                        if let Some(every) = reask(app, asked) {
                            session.set_heartbeat_interval(every);
                            Box::pin(send_owned(outbox, hello_ack(Vec::new(), every))).await?;
                        }
                    }
                    Ok(LinkToCloud::Hello(_)) => return Err("a second hello on one connection".to_owned()),
                    Err(e) => return Err(format!("bad frame from link: {e}")),
                }
            }
        }
    }
}

/// Writes `job` and the jobs queued behind it (up to [`MAX_JOBS_PER_WRITE`]) to the
/// Link, then flushes once.
async fn write_jobs(
    app: &AppState,
    outbox: &Outbox,
    session: &mut LinkSession,
    controls: &mut Option<Controls>,
    job: Job,
) -> Result<(), String> {
    let mut socket = outbox.writing().await;
    let written = write_queued(app, &mut socket, session, controls, job).await;
    socket.finish(written)
}

/// [`write_jobs`]' writes, on its turn at the outbox.
async fn write_queued(
    app: &AppState,
    socket: &mut Writing<'_, WsSink>,
    session: &mut LinkSession,
    controls: &mut Option<Controls>,
    job: Job,
) -> Result<(), String> {
    // Jobs queued meanwhile leave in the same write (one flush).
    let mut next = Some(job);
    let mut fed = 0;
    while let Some(job) = next.take() {
        let query_id = job.query_id;
        let paging = job.paging;
        match to_protocol(job, now()) {
            Ok(job) => {
                match paging {
                    None => feed(socket, &CloudToLink::QueryJob(job)).await?,
                    Some(paging) => {
                        let control = controls
                            .get_or_insert_with(tokio::sync::mpsc::unbounded_channel)
                            .0
                            .clone();
                        app.jobs.hub.bind(query_id.get(), control, paging.window);
                        let job = halo_protocol::StreamJob {
                            job,
                            page_bytes: paging.page_bytes,
                            window: paging.window,
                        };
                        feed(socket, &CloudToLink::StreamJob(job)).await?;
                    }
                }
                fed += 1;
            }
            // Never dropped silently: the integrator is told.
            Err(reason) => {
                session.complete(query_id, Err(QueryFailure::Refused(reason)));
            }
        }
        if fed < MAX_JOBS_PER_WRITE {
            // A detached session answers `None` at the next `next_job`.
            next = session.try_next_job().ok().flatten();
        }
    }
    socket.flush().await
}

/// A session's control channel: its sender (cloned into the hub per paged job) and
/// its receiver.
type Controls = (
    tokio::sync::mpsc::UnboundedSender<CloudToLink>,
    tokio::sync::mpsc::UnboundedReceiver<CloudToLink>,
);

/// The next control message, or never while the session has no channel.
async fn next_control(controls: &mut Option<Controls>) -> Option<CloudToLink> {
    match controls {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Completes a query with the Link's result. Its `data` is checked (base64 of as many
/// bytes as `size` says) and then forwarded as it came: the integrator API answers
/// the same base64, so it is never decoded into a copy nor encoded again.
fn complete_ok(session: &LinkSession, r: QueryResult) {
    let Some(id) = QueryId::new(r.query_id) else {
        return;
    };
    let outcome = match readable(&r) {
        Ok(size) => Ok(QueryOutput {
            data: r.data,
            size,
            rows: r.rows,
            sql_execution: Duration::from_millis(r.duration_ms),
        }),
        Err(e) => Err(QueryFailure::Refused(format!("unreadable result: {e}"))),
    };
    session.complete(id, outcome);
}

/// The byte length of the JSON behind a result's `data`, if `data` is base64 of
/// exactly `size` bytes.
fn readable(r: &QueryResult) -> Result<usize, String> {
    let json = r.json().map_err(|e| e.to_string())?;
    if json.len() as u64 != r.size {
        return Err(format!(
            "{} bytes of rows where the link declared {}",
            json.len(),
            r.size
        ));
    }
    Ok(json.len())
}

fn complete_err(session: &LinkSession, f: QueryFailed) {
    let Some(id) = QueryId::new(f.query_id) else {
        return;
    };
    session.complete(id, Err(failure(f)));
}

fn failure(f: QueryFailed) -> QueryFailure {
    let e = f.error;
    match e.kind {
        QueryErrorKind::StaleEpoch => QueryFailure::StaleEpoch,
        QueryErrorKind::Timeout => QueryFailure::Expired,
        QueryErrorKind::Database => QueryFailure::Database {
            error_type: "sqlite".to_owned(),
            error_code: e.code.map(|c| c.to_string()).unwrap_or_default(),
            message: e.message,
        },
        QueryErrorKind::TooLarge => QueryFailure::TooLarge,
        QueryErrorKind::Denied => QueryFailure::Denied(e.message),
        // The database's queue at the Link is full, or the job did not start within
        // its queue budget (`maxTimeInQueue`): 503, retry later.
        QueryErrorKind::Busy => {
            tracing::debug!(query_id = f.query_id, reason = %e.message, "link answered busy");
            QueryFailure::Busy
        }
        _ => QueryFailure::Refused(e.message),
    }
}

/// The wire form of a routed job; `Err` when its parameters are not a JSON array
/// (they were forwarded as opaque text), so that they are never silently dropped.
fn to_protocol(job: Job, now: Timestamp) -> Result<QueryJob, String> {
    let parameters = match job.command.parameters.as_deref() {
        None => Vec::new(),
        Some(text) => serde_json::from_str::<Vec<serde_json::Value>>(text)
            .map_err(|e| format!("command.parameters must be a JSON array: {e}"))?,
    };
    // Milliseconds from `now` until a deadline; zero once it has passed.
    let millis_until = |deadline: Timestamp| {
        u64::try_from(deadline.saturating_since(now).as_millis()).unwrap_or(u64::MAX)
    };
    // A procedure travels by name only: the Link runs the text it holds for it.
    let (command, procedure) = if job.command.procedure {
        (String::new(), Some(job.command.text))
    } else {
        (job.command.text, None)
    };
    Ok(QueryJob {
        query_id: job.query_id.get(),
        halo_guid: job.halo_guid,
        epoch: job.epoch,
        timeout_ms: millis_until(job.deadline),
        // `maxTimeInQueue` covers the wait for a Link worker too.
        queue_timeout_ms: Some(millis_until(job.queue_deadline)),
        catalogue: job.catalogue.map(String::from),
        mode: job.command.mode,
        command,
        procedure,
        parameters,
        allowlist: Allowlist {
            tables: job.allowlist.tables().map(str::to_owned).collect(),
            procedures: job.allowlist.procedures().map(str::to_owned).collect(),
            allow_write: job.command.mode == ExecutionMode::NonQuery,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn link(n: u128) -> LinkGuid {
        LinkGuid::from_u128(n).unwrap()
    }

    /// Whether `listener` has a kick waiting (without waiting for one).
    fn kicked(listener: &KickListener<'_>) -> bool {
        use futures_util::FutureExt as _;
        listener.notify.notified().now_or_never().is_some()
    }

    #[test]
    fn a_kick_reaches_every_session_of_its_link_and_no_other() {
        let kicks = Kicks::default();
        let (a1, a2, b) = (
            kicks.listen(link(1)),
            kicks.listen(link(1)),
            kicks.listen(link(2)),
        );
        // Kicked before anyone waits: the permit is kept, the kick is not missed.
        kicks.kick(link(1));
        assert!(kicked(&a1) && kicked(&a2));
        assert!(!kicked(&b), "another link's session was kicked");
        // A permit is used once.
        assert!(!kicked(&a1));
        // A kick for a link with no session is a no-op.
        kicks.kick(link(3));
        assert!(!kicked(&b));
    }

    /// A sink that buffers what it is sent and flushes it only once `open` (or fails
    /// every flush with `broken`).
    #[derive(Default)]
    struct Gate {
        buffered: Vec<Message>,
        sent: Vec<Message>,
        open: bool,
        broken: bool,
        /// Opens the gate from outside while a writer holds the sink.
        opened: Arc<AtomicBool>,
        /// While set, the sink takes no message (`poll_ready` waits).
        full: Arc<AtomicBool>,
        /// Flushes that sent something: the writes a real socket would make.
        writes: usize,
        /// Every how many flushes one waits a turn first (woken at once): a socket
        /// that is sometimes not ready. 0: never.
        pending_every: usize,
        polls: usize,
    }

    impl Sink<Message> for Gate {
        type Error = axum::Error;

        fn poll_ready(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), axum::Error>> {
            if self.full.load(Ordering::Acquire) {
                return std::task::Poll::Pending;
            }
            self.polls += 1;
            if self.pending_every > 0 && self.polls % (self.pending_every + 2) == 0 {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(Ok(()))
        }

        fn start_send(mut self: std::pin::Pin<&mut Self>, msg: Message) -> Result<(), axum::Error> {
            self.buffered.push(msg);
            Ok(())
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), axum::Error>> {
            if self.broken {
                return std::task::Poll::Ready(Err(axum::Error::new("broken pipe")));
            }
            if !self.open && !self.opened.load(Ordering::Acquire) {
                return std::task::Poll::Pending;
            }
            self.polls += 1;
            if self.pending_every > 0 && self.polls % self.pending_every == 0 {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            let buffered = std::mem::take(&mut self.buffered);
            self.writes += usize::from(!buffered.is_empty());
            self.sent.extend(buffered);
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), axum::Error>> {
            self.poll_flush(cx)
        }
    }

    fn stalled(outbox: &Outbox<Gate>) -> bool {
        use futures_util::FutureExt as _;
        outbox.stalled.notified().now_or_never().is_some()
    }

    #[test]
    fn a_writer_dropped_mid_write_leaves_its_message_for_the_session_task() {
        use futures_util::FutureExt as _;
        let outbox = Outbox::new(Gate::default());
        // A request task's write, cancelled while its flush waits on the socket.
        let mut write = Box::pin(outbox.send(Message::Text("job 1".into())));
        assert!(write.as_mut().now_or_never().is_none());
        drop(write);
        assert!(stalled(&outbox), "the session task was not told to flush");
        assert!(!outbox.failed.load(Ordering::Acquire));
        // The turn is over (the next writer is not blocked) and the message is whole,
        // buffered; the session task's flush sends it.
        outbox.sink.try_lock().unwrap().as_mut().unwrap().open = true;
        assert_eq!(flush_outbox(&outbox).now_or_never(), Some(Ok(())));
        let sink = outbox.sink.try_lock().unwrap();
        assert_eq!(sink.as_ref().unwrap().sent, [Message::Text("job 1".into())]);
        drop(sink);
        // A write that finishes leaves nothing for the session task.
        assert_eq!(
            outbox.send(Message::Text("job 2".into())).now_or_never(),
            Some(Ok(()))
        );
        assert!(!stalled(&outbox));
    }

    fn texts(outbox: &Outbox<Gate>) -> Vec<String> {
        let sink = outbox.sink.try_lock().unwrap();
        let sent = &sink.as_ref().unwrap().sent;
        sent.iter()
            .map(|m| match m {
                Message::Text(t) => t.as_str().to_owned(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn writes(outbox: &Outbox<Gate>) -> usize {
        outbox.sink.try_lock().unwrap().as_ref().unwrap().writes
    }

    #[test]
    fn jobs_routed_while_the_sink_is_taken_leave_together_in_its_holders_next_write() {
        use futures_util::FutureExt as _;
        let gate = Gate::default();
        let opened = Arc::clone(&gate.opened);
        let outbox = Outbox::new(gate);
        // A request task takes the sink and lets the ready tasks run (its first poll
        // ends at the yield); then its flush waits on the socket.
        let mut first = Box::pin(outbox.send_combined(Message::Text("job 1".into())));
        assert!(first.as_mut().now_or_never().is_none());
        assert!(first.as_mut().now_or_never().is_none());
        assert!(outbox.waiting.lock().is_empty(), "job 1 was not written");
        // Two more find it taken: they leave their jobs and are done at once.
        for text in ["job 2", "job 3"] {
            let sent = outbox
                .send_combined(Message::Text(text.into()))
                .now_or_never();
            assert_eq!(sent, Some(Ok(())), "a request task waited for the sink");
        }
        opened.store(true, Ordering::Release);
        assert_eq!(first.as_mut().now_or_never(), Some(Ok(())));
        drop(first);
        assert_eq!(texts(&outbox), ["job 1", "job 2", "job 3"]);
        assert_eq!(
            writes(&outbox),
            2,
            "jobs 2 and 3 did not leave in one write"
        );
        assert!(!stalled(&outbox), "nothing was left for the session task");
    }

    #[test]
    fn a_result_is_forwarded_only_as_base64_of_its_declared_size() {
        let ok = QueryResult::from_json(1, 1, br#"[{"a":1}]"#, 0);
        assert_eq!(readable(&ok), Ok(9));
        let not_base64 = QueryResult {
            data: "not base64!".into(),
            ..ok.clone()
        };
        assert!(readable(&not_base64).is_err());
        let wrong_size = QueryResult {
            size: 8,
            ..ok.clone()
        };
        assert!(readable(&wrong_size).unwrap_err().contains("declared 8"));
    }

    #[test]
    fn jobs_routed_while_the_holder_yields_leave_in_its_first_write() {
        use futures_util::FutureExt as _;
        let outbox = Outbox::new(Gate {
            open: true,
            ..Gate::default()
        });
        // The holder yields before its flush: the tasks that run meanwhile leave
        // their jobs, and one write carries all of them.
        let mut first = Box::pin(outbox.send_combined(Message::Text("job 1".into())));
        assert!(first.as_mut().now_or_never().is_none());
        for text in ["job 2", "job 3"] {
            let sent = outbox
                .send_combined(Message::Text(text.into()))
                .now_or_never();
            assert_eq!(sent, Some(Ok(())), "a request task waited for the sink");
        }
        assert_eq!(first.as_mut().now_or_never(), Some(Ok(())));
        assert_eq!(texts(&outbox), ["job 1", "job 2", "job 3"]);
        assert_eq!(writes(&outbox), 1, "the jobs did not leave in one write");
        assert!(!stalled(&outbox), "nothing was left for the session task");
    }

    #[test]
    fn a_job_left_waiting_on_the_session_tasks_turn_is_written_by_it() {
        use futures_util::FutureExt as _;
        let outbox = Outbox::new(Gate {
            open: true,
            ..Gate::default()
        });
        // Left while the session task's turn is on, before its flush: that flush
        // takes it along.
        let mut turn = outbox.writing().now_or_never().unwrap();
        assert_eq!(
            outbox
                .send_combined(Message::Text("job 1".into()))
                .now_or_never(),
            Some(Ok(()))
        );
        let flushed = turn.flush().now_or_never().unwrap();
        assert_eq!(turn.finish(flushed), Ok(()));
        assert_eq!(texts(&outbox), ["job 1"]);
        assert!(!stalled(&outbox));
        // Left after that flush: the turn's end wakes the session task, whose flush
        // writes it.
        let mut turn = outbox.writing().now_or_never().unwrap();
        let flushed = turn.flush().now_or_never().unwrap();
        assert_eq!(
            outbox
                .send_combined(Message::Text("job 2".into()))
                .now_or_never(),
            Some(Ok(()))
        );
        assert_eq!(turn.finish(flushed), Ok(()));
        assert!(stalled(&outbox), "the job was left behind");
        assert_eq!(flush_outbox(&outbox).now_or_never(), Some(Ok(())));
        assert_eq!(texts(&outbox), ["job 1", "job 2"]);
    }

    #[test]
    fn a_combining_writer_dropped_mid_write_leaves_its_jobs_and_the_waiting_ones_to_the_session_task()
     {
        use futures_util::FutureExt as _;
        let outbox = Outbox::new(Gate::default());
        let mut first = Box::pin(outbox.send_combined(Message::Text("job 1".into())));
        assert!(first.as_mut().now_or_never().is_none());
        assert_eq!(
            outbox
                .send_combined(Message::Text("job 2".into()))
                .now_or_never(),
            Some(Ok(()))
        );
        drop(first);
        assert!(stalled(&outbox), "the session task was not told to flush");
        outbox.sink.try_lock().unwrap().as_mut().unwrap().open = true;
        assert_eq!(flush_outbox(&outbox).now_or_never(), Some(Ok(())));
        assert_eq!(texts(&outbox), ["job 1", "job 2"]);
    }

    #[test]
    fn a_combining_writer_dropped_before_writing_the_jobs_it_took_puts_them_back() {
        use futures_util::FutureExt as _;
        let gate = Gate {
            open: true,
            ..Gate::default()
        };
        let full = Arc::clone(&gate.full);
        let outbox = Outbox::new(gate);
        // Two jobs left while the session task's turn is on.
        let turn = outbox.writing().now_or_never().unwrap();
        for text in ["job 1", "job 2"] {
            let sent = outbox
                .send_combined(Message::Text(text.into()))
                .now_or_never();
            assert_eq!(sent, Some(Ok(())));
        }
        drop(turn);
        assert!(stalled(&outbox));
        // A request task takes the sink and all three jobs, and waits for room in
        // the sink before the first; then it is dropped.
        full.store(true, Ordering::Release);
        let mut third = Box::pin(outbox.send_combined(Message::Text("job 3".into())));
        assert!(third.as_mut().now_or_never().is_none()); // the yield
        assert!(third.as_mut().now_or_never().is_none());
        assert!(
            outbox.waiting.lock().is_empty(),
            "the writer did not take the jobs"
        );
        drop(third);
        assert!(stalled(&outbox), "the session task was not told");
        full.store(false, Ordering::Release);
        assert_eq!(flush_outbox(&outbox).now_or_never(), Some(Ok(())));
        assert_eq!(texts(&outbox), ["job 1", "job 2", "job 3"]);
    }

    /// Many request tasks on a multi-threaded runtime write jobs while the session
    /// task writes its own and flushes when woken, on a socket that is sometimes not
    /// ready, and every fifth write is cancelled after its first poll: every job
    /// leaves exactly once (a job stranded in `waiting`, or dropped with a cancelled
    /// writer's turn, would never arrive).
    #[test]
    fn combined_writes_lose_no_job_under_contention() {
        const TASKS: usize = 8;
        const JOBS: usize = 400;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap();
        for round in 0..20 {
            let outbox = Arc::new(Outbox::new(Gate {
                open: true,
                pending_every: 3 + round % 4,
                ..Gate::default()
            }));
            let done = Arc::new(AtomicBool::new(false));
            let sent = runtime.block_on(async {
                let session = {
                    let outbox = Arc::clone(&outbox);
                    let done = Arc::clone(&done);
                    tokio::spawn(async move {
                        let mut n = 0_usize;
                        while !done.load(Ordering::Acquire) {
                            n += 1;
                            if n % 50 == 0 {
                                let text = format!("control {n}");
                                outbox.send(Message::Text(text.into())).await.unwrap();
                            }
                            let woken = tokio::time::timeout(
                                Duration::from_micros(200),
                                outbox.stalled.notified(),
                            )
                            .await;
                            if woken.is_ok() {
                                flush_outbox(&outbox).await.unwrap();
                            }
                        }
                    })
                };
                let writers: Vec<_> = (0..TASKS)
                    .map(|t| {
                        let outbox = Arc::clone(&outbox);
                        tokio::spawn(async move {
                            for n in 0..JOBS {
                                let msg = Message::Text(format!("job {t}.{n}").into());
                                if n % 5 == 0 {
                                    // A request task cancelled after its first poll:
                                    // its job is left, or taken, and still written.
                                    use futures_util::FutureExt as _;
                                    let polled = outbox.send_combined(msg).now_or_never();
                                    assert!(!matches!(polled, Some(Err(_))));
                                } else {
                                    outbox.send_combined(msg).await.unwrap();
                                }
                                if n % 7 == 0 {
                                    tokio::task::yield_now().await;
                                }
                            }
                        })
                    })
                    .collect();
                for w in writers {
                    w.await.unwrap();
                }
                done.store(true, Ordering::Release);
                session.await.unwrap();
                // The session task's last look, as its loop would make when woken.
                if stalled(&outbox) {
                    flush_outbox(&outbox).await.unwrap();
                }
                texts(&outbox)
            });
            let jobs: Vec<&String> = sent.iter().filter(|t| t.starts_with("job")).collect();
            let unique: std::collections::HashSet<&&String> = jobs.iter().collect();
            assert_eq!(unique.len(), jobs.len(), "a job was written twice");
            assert_eq!(
                jobs.len(),
                TASKS * JOBS,
                "round {round}: jobs were left behind"
            );
            // Each task's jobs leave in the order it wrote them.
            for t in 0..TASKS {
                let prefix = format!("job {t}.");
                let order: Vec<usize> = jobs
                    .iter()
                    .filter_map(|j| j.strip_prefix(&prefix))
                    .map(|n| n.parse().unwrap())
                    .collect();
                assert!(
                    order.windows(2).all(|w| w[0] < w[1]),
                    "task {t} out of order"
                );
            }
        }
    }

    #[test]
    fn a_failed_write_ends_the_session_and_writes_after_the_end_fail() {
        use futures_util::FutureExt as _;
        let outbox = Outbox::new(Gate {
            broken: true,
            ..Gate::default()
        });
        let sent = outbox.send(Message::Text("job".into())).now_or_never();
        assert!(matches!(sent, Some(Err(_))));
        assert!(outbox.failed.load(Ordering::Acquire), "the session goes on");
        assert!(stalled(&outbox));
        // Once the session ended, writes fail at once and touch nothing.
        let outbox = Outbox::new(Gate {
            open: true,
            ..Gate::default()
        });
        outbox.shut().now_or_never().unwrap();
        let sent = outbox.send(Message::Text("late job".into())).now_or_never();
        assert!(matches!(sent, Some(Err(_))));
        assert!(!outbox.failed.load(Ordering::Acquire));
    }

    #[test]
    fn a_session_that_ends_stops_listening() {
        let kicks = Kicks::default();
        let a = kicks.listen(link(1));
        {
            let _b = kicks.listen(link(1));
            assert_eq!(kicks.listening(), 2);
        }
        assert_eq!(kicks.listening(), 1);
        drop(a);
        assert_eq!(kicks.listening(), 0);
    }
}
