//! In-flight queries: the query id, the slot a result lands in, and the `Dispatch` future.
//!
//! # The slot protocol
//!
//! A [`Slot`] is shared by the caller's [`Dispatch`], the Link session's in-flight map
//! and, through it, the sweeper and the detach path. Its `state` byte starts at
//! `PENDING` and is moved **once** by a compare-and-swap to one terminal state
//! (`COMPLETED`, `TIMED_OUT`, `CANCELLED`, `UNREACHABLE`). The thread whose CAS wins:
//!
//! 1. stores the outcome in `cell` (under the cell's mutex),
//! 2. takes the registered waker from the same cell and wakes it after unlocking,
//! 3. releases the in-flight slot (removes it from the session's map and decrements the
//!    session's `in_flight` counter; see `link.rs`).
//!
//! Every loser does nothing, so the release happens exactly once on every path
//! (completion, timeout, cancellation, detach). `state` is written with `AcqRel` CAS
//! and is monotone: it never returns to `PENDING`. The waker and the outcome share one
//! mutex, so a poll either sees the outcome or leaves a waker the winner will take:
//! there is no lost wake-up. The cell's mutex is never taken on the route read path.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use halo_ids::{HaloGuid, Timestamp};

use crate::error::RouteError;
use crate::link::SessionCore;
use crate::outcome::QueryOutput;
use std::sync::Arc;

use crate::sync::{AtomicU8, Mutex, Ordering, lock};

/// Identifies one routed query for its whole life. Unique within one [`crate::Router`]
/// (a counter, never reused while the router lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueryId(NonZeroU64);

impl QueryId {
    /// Wraps a raw id, as it comes back from a Link. `None` for zero.
    pub fn new(raw: u64) -> Option<Self> {
        NonZeroU64::new(raw).map(Self)
    }

    /// The raw value (what goes on the wire to the Link).
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0.get())
    }
}

/// How a query ended, as far as the slot is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Ending {
    /// The Link sent a result (or a failure) back.
    Completed = 1,
    /// The deadline passed first.
    TimedOut = 2,
    /// The caller gave up (dropped or cancelled the `Dispatch`).
    Cancelled = 3,
    /// The Link session went away first.
    Unreachable = 4,
}

const PENDING: u8 = 0;

/// What a finished query yields to its caller.
pub(crate) type QueryOutcome = Result<QueryOutput, RouteError>;

#[derive(Default)]
struct Cell {
    outcome: Option<QueryOutcome>,
    waker: Option<Waker>,
}

/// The meeting point of one in-flight query (see the module docs for the protocol).
pub(crate) struct Slot {
    query_id: QueryId,
    deadline: Timestamp,
    /// `PENDING` or the `Ending` that won; written once by CAS (AcqRel), monotone.
    state: AtomicU8,
    /// The outcome and the waiting task's waker; only the CAS winner writes the outcome.
    cell: Mutex<Cell>,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("query_id", &self.query_id)
            .field("deadline", &self.deadline)
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Slot {
    pub(crate) fn new(query_id: QueryId, deadline: Timestamp) -> Self {
        Self {
            query_id,
            deadline,
            state: AtomicU8::new(PENDING),
            cell: Mutex::new(Cell::default()),
        }
    }

    pub(crate) fn query_id(&self) -> QueryId {
        self.query_id
    }

    pub(crate) fn deadline(&self) -> Timestamp {
        self.deadline
    }

    /// Whether some ending has already won.
    pub(crate) fn is_finished(&self) -> bool {
        self.state.load(Ordering::Acquire) != PENDING
    }

    /// Tries to end the query with `outcome`. Returns `true` for the single winner,
    /// which must then release the in-flight slot; `false` (and drops `outcome`) if
    /// another ending won first.
    #[must_use = "the winner must release the in-flight slot"]
    pub(crate) fn try_finish(&self, ending: Ending, outcome: QueryOutcome) -> bool {
        if self
            .state
            .compare_exchange(PENDING, ending as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let waker = {
            let mut cell = lock(&self.cell);
            cell.outcome = Some(outcome);
            cell.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Takes the outcome if it is there, else registers `waker` to be woken when it is.
    pub(crate) fn poll_outcome(&self, waker: &Waker) -> Poll<QueryOutcome> {
        let mut cell = lock(&self.cell);
        if let Some(outcome) = cell.outcome.take() {
            return Poll::Ready(outcome);
        }
        match &mut cell.waker {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        Poll::Pending
    }

    /// Takes the outcome if one is stored (after this thread lost or won a race).
    pub(crate) fn take_outcome(&self) -> Option<QueryOutcome> {
        lock(&self.cell).outcome.take()
    }
}

/// A routed query that is in flight: await it for the Link's answer.
///
/// It resolves exactly once, to the first of: the Link's result
/// ([`crate::LinkSession::complete`]), a timeout ([`Dispatch::expire`] or the sweeper
/// [`crate::Router::expire_overdue`]), cancellation ([`Dispatch::cancel`], or dropping
/// it), or the Link session going away ([`RouteError::Unreachable`]). Whichever comes
/// first releases the in-flight slot; the others do nothing.
///
/// The core reads no clock, so a `Dispatch` times out only when told to: the adapter
/// either wraps the await in its runtime's timeout and calls [`Dispatch::expire`] when
/// it fires, or relies on a periodic [`crate::Router::expire_overdue`] sweep (or both).
#[must_use = "dropping a Dispatch cancels the query"]
pub struct Dispatch {
    slot: Arc<Slot>,
    session: Arc<SessionCore>,
    halo_guid: HaloGuid,
    /// Set once the outcome has been handed out, so `Drop` and a second poll are no-ops.
    done: bool,
}

impl fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("query_id", &self.slot.query_id)
            .field("halo", &self.halo_guid)
            .field("deadline", &self.slot.deadline)
            .field("done", &self.done)
            .finish()
    }
}

impl Dispatch {
    pub(crate) fn new(slot: Arc<Slot>, session: Arc<SessionCore>, halo_guid: HaloGuid) -> Self {
        Self {
            slot,
            session,
            halo_guid,
            done: false,
        }
    }

    /// The id the Link will answer with.
    pub fn query_id(&self) -> QueryId {
        self.slot.query_id
    }

    /// The site the query went to.
    pub fn halo_guid(&self) -> HaloGuid {
        self.halo_guid
    }

    /// When the query times out (queue time plus the execution limit).
    pub fn deadline(&self) -> Timestamp {
        self.slot.deadline
    }

    /// Times the query out now, unless something else ended it first, and returns
    /// the outcome that won: [`RouteError::Timeout`] if the timeout won, otherwise the
    /// result (or error) that beat it. Call this when the adapter's own timer fires.
    ///
    /// # Errors
    /// [`RouteError::Timeout`], or whatever error ended the query first.
    pub fn expire(mut self) -> Result<QueryOutput, RouteError> {
        self.done = true;
        if self
            .session
            .finish(&self.slot, Ending::TimedOut, Err(RouteError::Timeout))
        {
            // This thread stored the timeout; hand it back directly.
            let _ = self.slot.take_outcome();
            return Err(RouteError::Timeout);
        }
        self.slot.take_outcome().unwrap_or(Err(RouteError::Timeout))
    }

    /// Cancels the query (the caller went away). Dropping the `Dispatch` does the same.
    /// Returns `true` if the cancellation won, `false` if the query had already ended.
    pub fn cancel(mut self) -> bool {
        self.done = true;
        self.session
            .finish(&self.slot, Ending::Cancelled, Err(RouteError::Cancelled))
    }
}

impl Future for Dispatch {
    type Output = Result<QueryOutput, RouteError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.done {
            // Polled after it resolved: the outcome was handed out already.
            return Poll::Ready(Err(RouteError::Cancelled));
        }
        match this.slot.poll_outcome(cx.waker()) {
            Poll::Ready(outcome) => {
                this.done = true;
                Poll::Ready(outcome)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Dispatch {
    fn drop(&mut self) {
        if !self.done && !self.slot.is_finished() {
            let _ = self
                .session
                .finish(&self.slot, Ending::Cancelled, Err(RouteError::Cancelled));
        }
    }
}
