//! Link sessions: liveness, the bounded per-Link job queue and the in-flight map.
//!
//! # Atomics and who touches them
//!
//! | field | meaning | writers | ordering | monotone |
//! | --- | --- | --- | --- | --- |
//! | `LinkEntry::last_heard` | ms timestamp of the Link's last heartbeat | the writer (`Router::heard`), the session task (`LinkSession::heard`) | `fetch_max`, Relaxed (a lone timestamp, guards nothing) | yes |
//! | `LinkEntry::session` | the attached session, if any (`ArcSwapOption`) | `attach_link`, `LinkSession` drop | arc-swap (SeqCst) | no |
//! | `SessionCore::in_flight` | reserved slots: queued + executing | `route` (+1), the slot winner (-1) | +1 SeqCst (the busy set's protocol, `busy.rs`), -1 AcqRel | no |
//! | `SessionCore::listed` | the router's busy set holds the session | `route` (false -> true), the sweeper | SeqCst (`busy.rs`) | no |
//! | `SessionCore::queued` | jobs in the channel, live or dead | `enqueue` (+1, -1 when refused), the receiver (-1) | AcqRel | no |
//! | `SessionCore::heartbeat_ms` | the heartbeat interval the session's Link was asked for (0: none yet) | the session task (`LinkSession::set_heartbeat_interval`) | Relaxed (a lone value, guards nothing) | no |
//! | `SessionCore::closed` | the session was detached or replaced | detach only | SeqCst, paired with a SeqCst fence on the route side | yes (false -> true) |
//! | `Waiter::state` | idle / receiver parked / notified | receiver (idle, parked), producers (notified) | AcqRel read-modify-writes only | no |
//!
//! Detach versus route: `route` inserts its slot, issues a SeqCst fence and then reads
//! `closed`; detach stores `closed`, fences, then walks the slot map. So either the
//! route sees `closed` and fails its own slot, or detach sees the slot and fails it;
//! the slot's CAS makes sure only one of them releases it. No query hangs.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use foldhash::fast::RandomState;
use halo_ids::{LinkGuid, Timestamp};

use crate::busy::{Busy, Member};
use crate::dispatch::{Dispatch, Ending, QueryId, QueryOutcome, Slot};
use crate::error::RouteError;
use crate::job::Job;
use crate::outcome::{QueryFailure, QueryOutput};
use std::sync::Arc;

use crate::sync::{
    AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering, fence, lock,
};

/// What the router knows about one Link: its liveness and its session, if attached.
/// Shared (`Arc`) by every route record of the Link's sites, so a heartbeat is one
/// atomic store that every site sees, and nothing is rebuilt.
pub(crate) struct LinkEntry {
    link: LinkGuid,
    /// Milliseconds of the last heartbeat; monotone (`fetch_max`), Relaxed.
    last_heard: AtomicU64,
    /// The attached session; `None` while the Link is disconnected.
    session: ArcSwapOption<SessionCore>,
    /// Queries refused because this Link's queue was full, over all its sessions
    /// (a counter for metrics, Relaxed; shared with each session).
    busy_refusals: Arc<AtomicU64>,
}

impl fmt::Debug for LinkEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkEntry")
            .field("link", &self.link)
            .field("last_heard", &self.last_heard())
            .field("attached", &self.session.load().is_some())
            .finish()
    }
}

impl LinkEntry {
    pub(crate) fn new(link: LinkGuid) -> Self {
        Self {
            link,
            last_heard: AtomicU64::new(0),
            session: ArcSwapOption::empty(),
            busy_refusals: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queries refused so far because this Link's queue was full.
    pub(crate) fn busy_refusals(&self) -> u64 {
        self.busy_refusals.load(Ordering::Relaxed)
    }

    pub(crate) fn link(&self) -> LinkGuid {
        self.link
    }

    /// Records a heartbeat; never moves the time backwards.
    pub(crate) fn heard(&self, at: Timestamp) {
        self.last_heard.fetch_max(at.as_millis(), Ordering::Relaxed);
    }

    pub(crate) fn last_heard(&self) -> Timestamp {
        Timestamp::from_millis(self.last_heard.load(Ordering::Relaxed))
    }

    /// The Link's last-heard time and, while a session is attached, the heartbeat
    /// interval that session was asked for.
    pub(crate) fn liveness(&self) -> Liveness {
        let session = self.session.load();
        Liveness {
            last_heard: self.last_heard(),
            heartbeat: session
                .as_ref()
                .filter(|s| !s.is_closed())
                .and_then(|s| s.heartbeat_interval()),
        }
    }

    /// The attached session, if any (lock-free).
    pub(crate) fn session(&self) -> Option<Arc<SessionCore>> {
        self.session.load_full()
    }
}

/// What the router knows of a Link's liveness ([`crate::Router::liveness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// When the Link was last heard from.
    pub last_heard: Timestamp,
    /// The heartbeat interval the Link's attached session was asked for; `None` while
    /// no session is attached, or before it was asked.
    pub heartbeat: Option<Duration>,
}

/// Parks the single job receiver and wakes it when a job (or a close) arrives.
///
/// One word, `state`, touched only by read-modify-writes (AcqRel), so every access
/// is totally ordered without relying on SeqCst fences:
///
/// - a producer makes its item visible, then `swap(NOTIFIED)`; if the old value was
///   `PARKED` it takes the stored waker and wakes it;
/// - the receiver `swap(IDLE)` (consuming notifications), checks for an item, stores
///   its waker, then CASes `IDLE -> PARKED`; if that fails a producer notified in
///   between, so it checks again instead of parking.
///
/// Either the receiver's check happens after a producer's swap (and so sees its item),
/// or the producer's swap finds `PARKED` (and wakes the waker stored before it).
#[derive(Default)]
pub(crate) struct Waiter {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

const IDLE: u8 = 0;
const PARKED: u8 = 1;
const NOTIFIED: u8 = 2;

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl Waiter {
    /// Called by a producer after it made an item (or the close) visible.
    pub(crate) fn notify(&self) {
        if self.state.swap(NOTIFIED, Ordering::AcqRel) == PARKED {
            let waker = lock(&self.waker).take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Polls `check`, parking `cx`'s waker if it finds nothing.
    pub(crate) fn poll_with<T>(
        &self,
        cx: &mut Context<'_>,
        mut check: impl FnMut() -> Option<T>,
    ) -> Poll<T> {
        loop {
            self.state.swap(IDLE, Ordering::AcqRel);
            if let Some(item) = check() {
                return Poll::Ready(item);
            }
            {
                let mut waker = lock(&self.waker);
                match &mut *waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
            }
            if self
                .state
                .compare_exchange(IDLE, PARKED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
    }
}

type SlotMap = papaya::HashMap<QueryId, Arc<Slot>, RandomState>;

/// The shared half of one attached Link session.
pub(crate) struct SessionCore {
    link: LinkGuid,
    capacity: usize,
    /// Reserved slots (queued + executing); see the module table.
    in_flight: AtomicUsize,
    /// Set once when the session is detached or replaced; see the module docs.
    closed: AtomicBool,
    /// Milliseconds of the heartbeat interval the Link was asked for (0: not yet);
    /// Relaxed, a lone value.
    heartbeat_ms: AtomicU32,
    /// Every in-flight query of this session, by id; a slot leaves when it ends.
    /// Created on the session's first query: an empty `papaya::HashMap` already
    /// holds about 18 KB, more than the rest of an idle session.
    slots: OnceLock<SlotMap>,
    /// Jobs in `tx`, live or dead (cancelled or timed out while queued, not yet
    /// skipped by the receiver); bounded by `2 * capacity` in `enqueue`.
    queued: AtomicUsize,
    /// Unbounded, so that an idle session holds no queue memory: the channel
    /// allocates its first block of slots on the first job (a bounded channel
    /// allocates and touches all of its slots up front, about 100 KB per Link at the
    /// default capacity). `queued` bounds it instead.
    tx: Sender<Job>,
    waiter: Waiter,
    /// The Link's count of busy refusals (see `LinkEntry::busy_refusals`).
    busy_refusals: Arc<AtomicU64>,
    /// Whether the router's busy set holds this session (see `busy.rs`).
    listed: AtomicBool,
    /// The router's busy set, which the timeout sweep visits.
    busy: Arc<Busy<SessionCore>>,
    /// The adapter's writer of this session's connection, once attached
    /// ([`LinkSession::set_outbox`]): jobs routed with [`crate::Router::route_direct`]
    /// are handed back with it instead of queued on `tx`.
    outbox: OnceLock<Outbox>,
}

/// An adapter's writer of one Link session's connection, opaque to the router (which
/// does no IO): [`LinkSession::set_outbox`] attaches it to the session, and
/// [`crate::Router::route_direct`] hands it back with each job routed to that session,
/// so that the caller writes the job to the very connection routing chose.
pub type Outbox = Arc<dyn Any + Send + Sync>;

/// A job handed to its caller to write ([`crate::Router::route_direct`]): the job, and
/// the outbox of the session it was routed to (the only one it may be written to).
pub struct Handoff {
    /// The job to send.
    pub job: Job,
    /// The routed session's outbox ([`LinkSession::set_outbox`]).
    pub outbox: Outbox,
}

impl fmt::Debug for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handoff")
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

impl Member for SessionCore {
    fn listed(&self) -> &AtomicBool {
        &self.listed
    }

    fn has_in_flight(&self) -> bool {
        self.in_flight.fetch_add(0, Ordering::SeqCst) != 0
    }
}

impl fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCore")
            .field("link", &self.link)
            .field("capacity", &self.capacity)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SessionCore {
    fn new(
        link: LinkGuid,
        capacity: usize,
        busy_refusals: Arc<AtomicU64>,
        busy: Arc<Busy<SessionCore>>,
    ) -> (Arc<Self>, Receiver<Job>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let core = Arc::new(Self {
            link,
            capacity,
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            heartbeat_ms: AtomicU32::new(0),
            slots: OnceLock::new(),
            queued: AtomicUsize::new(0),
            tx,
            waiter: Waiter::default(),
            busy_refusals,
            listed: AtomicBool::new(false),
            busy,
            outbox: OnceLock::new(),
        });
        (core, rx)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The heartbeat interval the session's Link was asked for, if it was.
    pub(crate) fn heartbeat_interval(&self) -> Option<Duration> {
        match self.heartbeat_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }

    /// Ends `slot` with `outcome` if nothing ended it first; the winner releases the
    /// in-flight slot. Returns whether this call won.
    pub(crate) fn finish(&self, slot: &Slot, ending: Ending, outcome: QueryOutcome) -> bool {
        if !slot.try_finish(ending, outcome) {
            return false;
        }
        if let Some(slots) = self.slots.get() {
            slots.pin().remove(&slot.query_id());
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Reserves one in-flight place, or says the site is busy.
    /// The increment is SeqCst: the busy set's protocol relies on it (`busy.rs`).
    fn try_reserve(self: &Arc<Self>) -> Result<(), RouteError> {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= self.capacity {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(RouteError::Busy);
        }
        self.busy.enlist(self);
        Ok(())
    }

    /// Puts a new slot for `job` in the session's map, where `close` finds it.
    fn register(&self, job: &Job) -> Arc<Slot> {
        let slot = Arc::new(Slot::new(job.query_id, job.deadline));
        self.slots
            .get_or_init(|| SlotMap::with_hasher(RandomState::default()))
            .pin()
            .insert(job.query_id, Arc::clone(&slot));
        slot
    }

    /// After `slot` is registered: fails it, and says so, if the session closed
    /// meanwhile. Pairs with the fence in `close` (see the module docs): the slot is
    /// in the map before this fence, `closed` is read after it.
    fn unless_closed(&self, slot: &Arc<Slot>) -> Result<(), RouteError> {
        fence(Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            let _ = self.finish(slot, Ending::Unreachable, Err(RouteError::Unreachable));
            return Err(RouteError::Unreachable);
        }
        Ok(())
    }

    /// Puts `job` on the queue and returns the caller's `Dispatch`. The place must
    /// have been reserved with `reserve`; it is released on every error path.
    pub(crate) fn enqueue(self: &Arc<Self>, job: Job) -> Result<Dispatch, RouteError> {
        let slot = self.register(&job);
        let halo_guid = job.halo_guid;
        // Room for `capacity` live jobs plus as many dead ones (cancelled or timed out
        // while queued, not yet skipped by the receiver). The reservation bounds live
        // jobs; the queue is full only when the Link has stopped draining dead ones
        // too: it is busy, not gone.
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity.saturating_mul(2) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = self.finish(&slot, Ending::Cancelled, Err(RouteError::Busy));
            return Err(RouteError::Busy);
        }
        if self.tx.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            let _ = self.finish(&slot, Ending::Unreachable, Err(RouteError::Unreachable));
            return Err(RouteError::Unreachable);
        }
        self.unless_closed(&slot)?;
        self.waiter.notify();
        Ok(Dispatch::new(slot, Arc::clone(self), halo_guid))
    }

    /// Registers `job`'s slot and hands the job back to be written to `outbox` by the
    /// caller, instead of queueing it. The place must have been reserved; it is
    /// released on the error path. The same handshake with `close` as `enqueue`:
    /// the slot is in the map before the fence, `closed` is read after it.
    fn hand_off(
        self: &Arc<Self>,
        job: Job,
        outbox: &Outbox,
    ) -> Result<(Dispatch, Option<Handoff>), RouteError> {
        let slot = self.register(&job);
        let halo_guid = job.halo_guid;
        self.unless_closed(&slot)?;
        let handoff = Handoff {
            job,
            outbox: Arc::clone(outbox),
        };
        Ok((
            Dispatch::new(slot, Arc::clone(self), halo_guid),
            Some(handoff),
        ))
    }

    /// Reserves a place, builds the job and enqueues it; or, with `direct` and an
    /// outbox attached, hands it back to be written by the caller ([`Handoff`]).
    pub(crate) fn submit(
        self: &Arc<Self>,
        make_job: impl FnOnce() -> Result<Job, RouteError>,
        direct: bool,
    ) -> Result<(Dispatch, Option<Handoff>), RouteError> {
        if self.is_closed() {
            return Err(RouteError::Unreachable);
        }
        let submitted = self.try_reserve().and_then(|()| match make_job() {
            Ok(job) => match self.outbox.get().filter(|_| direct) {
                Some(outbox) => self.hand_off(job, outbox),
                None => self.enqueue(job).map(|d| (d, None)),
            },
            Err(e) => {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        });
        if matches!(submitted, Err(RouteError::Busy)) {
            self.busy_refusals.fetch_add(1, Ordering::Relaxed);
        }
        submitted
    }

    /// Fails every in-flight query of this session as unreachable, at once, and wakes
    /// the receiver so it sees the end. Idempotent.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let slots: Vec<Arc<Slot>> = self
            .slots
            .get()
            .map(|slots| slots.pin().values().cloned().collect())
            .unwrap_or_default();
        for slot in slots {
            let _ = self.finish(&slot, Ending::Unreachable, Err(RouteError::Unreachable));
        }
        self.waiter.notify();
    }

    /// Times out every query of this session whose deadline is at or before `now`.
    pub(crate) fn expire_overdue(&self, now: Timestamp) -> usize {
        // Only sessions in the busy set are swept; an idle one still costs one load.
        // A slot is in the map only while its reservation counts here; one reserved
        // after this load is looked at on the next sweep.
        if self.in_flight.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let Some(slots) = self.slots.get() else {
            return 0;
        };
        let overdue: Vec<Arc<Slot>> = slots
            .pin()
            .values()
            .filter(|s| s.deadline() <= now)
            .cloned()
            .collect();
        overdue
            .into_iter()
            .filter(|slot| self.finish(slot, Ending::TimedOut, Err(RouteError::Timeout)))
            .count()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// The receiving side of one Link's session, owned by that Link's connection task.
///
/// Get one from [`crate::Router::attach_link`]; take jobs with [`LinkSession::next_job`]
/// and answer them with [`LinkSession::complete`]. Dropping it (or
/// [`LinkSession::detach`]) detaches the Link: every query still queued or running on
/// it fails at once with [`RouteError::Unreachable`]. Attaching the same Link again
/// replaces (and so detaches) the older session.
pub struct LinkSession {
    core: Arc<SessionCore>,
    entry: Arc<LinkEntry>,
    rx: Receiver<Job>,
    max_result_bytes: usize,
}

impl fmt::Debug for LinkSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSession")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

/// Whether [`LinkSession::complete`] delivered a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The result reached the waiting caller.
    Delivered,
    /// No query of this session has that id any more: it already timed out, was
    /// cancelled, was completed before, or never belonged to this Link. Drop it.
    Late,
}

impl LinkSession {
    pub(crate) fn attach(
        entry: Arc<LinkEntry>,
        capacity: usize,
        max_result_bytes: usize,
        busy: Arc<Busy<SessionCore>>,
    ) -> Self {
        let (core, rx) = SessionCore::new(
            entry.link(),
            capacity,
            Arc::clone(&entry.busy_refusals),
            busy,
        );
        if let Some(old) = entry.session.swap(Some(Arc::clone(&core))) {
            old.close();
        }
        Self {
            core,
            entry,
            rx,
            max_result_bytes,
        }
    }

    /// The Link this session serves.
    pub fn link(&self) -> LinkGuid {
        self.core.link
    }

    /// Records a heartbeat of this session's Link at `at`, as
    /// [`crate::Router::heard`] does, without looking the Link up: the session holds
    /// its entry (a heartbeat touches one atomic, not the table).
    pub fn heard(&self, at: Timestamp) {
        self.entry.heard(at);
    }

    /// Records the heartbeat interval this session's Link was asked for; while the
    /// session is attached, [`crate::Router::liveness`] reports it (availability
    /// allows for it). Whole milliseconds, at least 1 ms, at most `u32::MAX` ms.
    pub fn set_heartbeat_interval(&self, every: Duration) {
        let ms = u32::try_from(every.as_millis()).unwrap_or(u32::MAX).max(1);
        self.core.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Attaches the adapter's writer of this session's connection: from then on,
    /// [`crate::Router::route_direct`] hands each job routed to this session back to
    /// its caller with `outbox`, to be written there, instead of queueing it for
    /// [`LinkSession::next_job`] (every other route still queues). Set once: returns
    /// `false`, keeping the first, if one was attached already.
    pub fn set_outbox(&self, outbox: Outbox) -> bool {
        self.core.outbox.set(outbox).is_ok()
    }

    /// The heartbeat interval last recorded with [`Self::set_heartbeat_interval`].
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.core.heartbeat_interval()
    }

    /// Queries queued or running on this session now.
    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// Whether the session was detached (or replaced by a newer attach of the Link).
    pub fn is_detached(&self) -> bool {
        self.core.is_closed()
    }

    /// Waits for the next job to send to the Link. Resolves to `None` once the session
    /// is detached or replaced. Jobs whose caller already gave up are skipped.
    /// Works on any executor (it needs only a `Waker`).
    pub fn next_job(&mut self) -> NextJob<'_> {
        NextJob { session: self }
    }

    /// The next job if one is queued now, without waiting: `Ok(None)` when the queue
    /// is empty. Jobs whose caller already gave up are skipped.
    ///
    /// # Errors
    /// [`RouteError::Unreachable`] once the session is detached or replaced.
    pub fn try_next_job(&mut self) -> Result<Option<Job>, RouteError> {
        match self.poll_job() {
            Some(Some(job)) => Ok(Some(job)),
            Some(None) => Err(RouteError::Unreachable),
            None => Ok(None),
        }
    }

    /// `None`: nothing now; `Some(None)`: the session ended; `Some(Some(job))`: a job.
    fn poll_job(&mut self) -> Option<Option<Job>> {
        loop {
            if self.core.is_closed() {
                return Some(None);
            }
            match self.rx.try_recv() {
                Ok(job) => {
                    self.core.queued.fetch_sub(1, Ordering::AcqRel);
                    let live = self.core.slots.get().is_some_and(|slots| {
                        slots
                            .pin()
                            .get(&job.query_id)
                            .is_some_and(|s| !s.is_finished())
                    });
                    if live {
                        return Some(Some(job));
                    }
                    // Cancelled or timed out while queued: never send it.
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => return Some(None),
            }
        }
    }

    /// Hands the Link's answer for `query_id` to the waiting caller.
    ///
    /// A result larger than the configured limit (8 MiB by default) becomes
    /// [`RouteError::TooLarge`]. Only this session's own queries can be completed.
    pub fn complete(
        &self,
        query_id: QueryId,
        result: Result<QueryOutput, QueryFailure>,
    ) -> Delivery {
        let Some(slot) = self
            .core
            .slots
            .get()
            .and_then(|slots| slots.pin().get(&query_id).cloned())
        else {
            return Delivery::Late;
        };
        let outcome = match result {
            Ok(out) if out.size > self.max_result_bytes => Err(RouteError::TooLarge {
                size: out.size,
                limit: self.max_result_bytes,
            }),
            Ok(out) => Ok(out),
            Err(failure) => Err(RouteError::Failed(failure)),
        };
        if self.core.finish(&slot, Ending::Completed, outcome) {
            Delivery::Delivered
        } else {
            Delivery::Late
        }
    }

    /// Detaches the Link now (the same as dropping the session).
    pub fn detach(self) {}
}

impl Drop for LinkSession {
    fn drop(&mut self) {
        // Only clear the entry if it still points at this session (a newer attach may
        // have replaced it already).
        let current = self.entry.session.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.core)) {
            let _ = self
                .entry
                .session
                .compare_and_swap(&*current, None::<Arc<SessionCore>>);
        }
        drop(current);
        self.core.close();
    }
}

/// The future returned by [`LinkSession::next_job`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct NextJob<'a> {
    session: &'a mut LinkSession,
}

impl Future for NextJob<'_> {
    type Output = Option<Job>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let session = &mut *self.get_mut().session;
        let core = Arc::clone(&session.core);
        core.waiter.poll_with(cx, || session.poll_job())
    }
}
