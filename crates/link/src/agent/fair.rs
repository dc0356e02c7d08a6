//! Fair scheduling of the jobs of several databases on one Link's workers.
//!
//! [`FairQueue`] keeps one bounded FIFO queue per database and a ring of the
//! databases with jobs waiting. [`FairQueue::pop`] serves the ring round-robin: it
//! takes the oldest job of the first database in turn that may run another job,
//! then moves that database to the back of the ring. So a database that floods the
//! Link with jobs waits its turn like the others, and a job of a quiet database
//! waits for at most one job of each other database ahead of it.
//!
//! Every queued job carries the instant it must have started by (its queue budget);
//! [`FairQueue::expire`] takes out the jobs past it. The queue does no IO and reads
//! no clock: instants are passed in, so its order is tested without timing.

use std::collections::{BTreeSet, HashMap, VecDeque};

use halo_ids::HaloGuid;
use tokio::time::Instant;

/// Why [`FairQueue::push`] refused a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The database already has its limit of jobs waiting.
    Full,
    /// A job with this query id is already queued.
    Duplicate,
}

/// A job waiting for a worker.
#[derive(Debug)]
struct Waiting<T> {
    db: HaloGuid,
    start_by: Instant,
    item: T,
}

/// Per-database FIFO queues served round-robin; see the module docs.
#[derive(Debug)]
pub(super) struct FairQueue<T> {
    /// The waiting jobs by query id.
    jobs: HashMap<u64, Waiting<T>>,
    /// Query ids of each database with jobs waiting, oldest first.
    queues: HashMap<HaloGuid, VecDeque<u64>>,
    /// The databases with jobs waiting, in turn order.
    ring: VecDeque<HaloGuid>,
    /// Waiting jobs by the instant they must start by.
    expiry: BTreeSet<(Instant, u64)>,
    /// Jobs one database may have waiting.
    max_per_db: usize,
}

impl<T> FairQueue<T> {
    /// An empty queue allowing `max_per_db` waiting jobs per database (at least one).
    pub(super) fn new(max_per_db: usize) -> Self {
        Self {
            jobs: HashMap::new(),
            queues: HashMap::new(),
            ring: VecDeque::new(),
            expiry: BTreeSet::new(),
            max_per_db: max_per_db.max(1),
        }
    }

    /// Jobs waiting, all databases together.
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether a job with this query id is waiting.
    pub(super) fn contains(&self, query_id: u64) -> bool {
        self.jobs.contains_key(&query_id)
    }

    /// Queues a job of `db` that must start by `start_by`.
    ///
    /// # Errors
    ///
    /// [`Refusal::Full`] if `db` already has its limit of jobs waiting,
    /// [`Refusal::Duplicate`] if `query_id` is already waiting; the item comes back.
    pub(super) fn push(
        &mut self,
        db: HaloGuid,
        query_id: u64,
        start_by: Instant,
        item: T,
    ) -> Result<(), (Refusal, T)> {
        if self.jobs.contains_key(&query_id) {
            return Err((Refusal::Duplicate, item));
        }
        let queue = self.queues.entry(db).or_default();
        if queue.len() >= self.max_per_db {
            return Err((Refusal::Full, item));
        }
        if queue.is_empty() {
            self.ring.push_back(db);
        }
        queue.push_back(query_id);
        self.expiry.insert((start_by, query_id));
        self.jobs.insert(query_id, Waiting { db, start_by, item });
        Ok(())
    }

    /// The oldest job of the first database in turn for which `may_run` holds; that
    /// database then goes to the back of the turn order.
    pub(super) fn pop(
        &mut self,
        mut may_run: impl FnMut(HaloGuid) -> bool,
    ) -> Option<(HaloGuid, u64, T)> {
        let turn = self.ring.iter().position(|db| may_run(*db))?;
        let db = self.ring.remove(turn)?;
        let queue = self.queues.get_mut(&db)?;
        let query_id = queue.pop_front()?;
        if queue.is_empty() {
            self.queues.remove(&db);
        } else {
            self.ring.push_back(db);
        }
        let waiting = self.jobs.remove(&query_id)?;
        self.expiry.remove(&(waiting.start_by, query_id));
        Some((db, query_id, waiting.item))
    }

    /// Takes a waiting job out (it was cancelled).
    pub(super) fn remove(&mut self, query_id: u64) -> Option<T> {
        let waiting = self.jobs.remove(&query_id)?;
        self.expiry.remove(&(waiting.start_by, query_id));
        if let Some(queue) = self.queues.get_mut(&waiting.db) {
            queue.retain(|id| *id != query_id);
            if queue.is_empty() {
                self.queues.remove(&waiting.db);
                self.ring.retain(|db| *db != waiting.db);
            }
        }
        Some(waiting.item)
    }

    /// The earliest instant a waiting job must start by.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.expiry.first().map(|(at, _)| *at)
    }

    /// Takes out every job that had to start before `now`, earliest first.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(u64, T)> {
        let mut expired = Vec::new();
        while let Some(&(at, query_id)) = self.expiry.first() {
            if at >= now {
                break;
            }
            if let Some(item) = self.remove(query_id) {
                expired.push((query_id, item));
            } else {
                self.expiry.remove(&(at, query_id));
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn db(n: u128) -> HaloGuid {
        HaloGuid::from_u128(n).unwrap()
    }

    fn later(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// Pops everything, every database always allowed to run.
    fn drain(q: &mut FairQueue<()>) -> Vec<u64> {
        std::iter::from_fn(|| q.pop(|_| true).map(|(_, id, ())| id)).collect()
    }

    #[test]
    fn a_flooding_database_waits_its_turn() {
        let t0 = Instant::now();
        let mut q = FairQueue::new(64);
        let (noisy, quiet, other) = (db(1), db(2), db(3));
        for id in 1..=10 {
            q.push(noisy, id, later(t0, 60_000), ()).unwrap();
        }
        q.push(quiet, 100, later(t0, 5_000), ()).unwrap();
        q.push(other, 200, later(t0, 5_000), ()).unwrap();
        q.push(quiet, 101, later(t0, 5_000), ()).unwrap();
        assert_eq!(q.len(), 13);
        assert_eq!(
            drain(&mut q),
            [1, 100, 200, 2, 101, 3, 4, 5, 6, 7, 8, 9, 10],
            "round-robin over the databases, FIFO within each"
        );
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_expiry(), None);
    }

    #[test]
    fn a_database_at_its_running_cap_is_skipped_but_keeps_its_turn() {
        let t0 = Instant::now();
        let mut q = FairQueue::new(64);
        let (a, b) = (db(1), db(2));
        for id in 1..=3 {
            q.push(a, id, later(t0, 1_000), ()).unwrap();
        }
        q.push(b, 10, later(t0, 1_000), ()).unwrap();
        q.push(b, 11, later(t0, 1_000), ()).unwrap();
        // `a` may not run more: `b` is served, twice.
        assert_eq!(q.pop(|d| d != a).map(|(d, id, ())| (d, id)), Some((b, 10)));
        assert_eq!(q.pop(|d| d != a).map(|(d, id, ())| (d, id)), Some((b, 11)));
        assert!(q.pop(|d| d != a).is_none(), "only `a` has jobs left");
        // `a` kept its place: it is served as soon as it may run again.
        assert_eq!(drain(&mut q), [1, 2, 3]);
    }

    #[test]
    fn each_database_queue_is_bounded_on_its_own() {
        let t0 = Instant::now();
        let mut q = FairQueue::new(2);
        let (a, b) = (db(1), db(2));
        q.push(a, 1, t0, ()).unwrap();
        q.push(a, 2, t0, ()).unwrap();
        assert_eq!(
            q.push(a, 3, t0, ()).map_err(|(r, ())| r),
            Err(Refusal::Full)
        );
        q.push(b, 4, t0, ()).unwrap();
        assert_eq!(
            q.push(b, 4, t0, ()).map_err(|(r, ())| r),
            Err(Refusal::Duplicate)
        );
        assert_eq!(q.pop(|_| true).map(|(d, id, ())| (d, id)), Some((a, 1)));
        q.push(a, 3, t0, ()).unwrap();
        assert_eq!(drain(&mut q), [4, 2, 3]);
    }

    #[test]
    fn jobs_past_their_queue_budget_expire_and_no_others() {
        let t0 = Instant::now();
        let mut q = FairQueue::new(64);
        let (a, b) = (db(1), db(2));
        q.push(a, 1, later(t0, 300), ()).unwrap();
        q.push(a, 2, later(t0, 100), ()).unwrap();
        q.push(b, 3, later(t0, 200), ()).unwrap();
        q.push(b, 4, later(t0, 900), ()).unwrap();
        assert_eq!(q.next_expiry(), Some(later(t0, 100)));
        assert!(q.expire(later(t0, 100)).is_empty(), "due, not yet past");
        let gone: Vec<u64> = q
            .expire(later(t0, 301))
            .into_iter()
            .map(|(id, ())| id)
            .collect();
        assert_eq!(gone, [2, 3, 1], "earliest first");
        assert_eq!(q.next_expiry(), Some(later(t0, 900)));
        assert_eq!(drain(&mut q), [4]);
    }

    #[test]
    fn a_cancelled_job_leaves_the_queue_and_its_database_the_ring() {
        let t0 = Instant::now();
        let mut q = FairQueue::new(64);
        let (a, b) = (db(1), db(2));
        q.push(a, 1, later(t0, 100), ()).unwrap();
        q.push(b, 2, later(t0, 200), ()).unwrap();
        q.push(b, 3, later(t0, 300), ()).unwrap();
        assert_eq!(q.remove(1), Some(()));
        assert_eq!(q.remove(1), None);
        assert!(!q.contains(1));
        assert_eq!(q.next_expiry(), Some(later(t0, 200)));
        q.push(a, 4, later(t0, 400), ()).unwrap();
        assert_eq!(drain(&mut q), [2, 4, 3], "`a` rejoined at the back");
    }
}
