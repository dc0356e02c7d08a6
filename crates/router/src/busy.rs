//! The sessions that may hold in-flight queries: the only ones the periodic timeout
//! sweep ([`crate::Router::expire_overdue`]) visits. Idle Links cost the sweep nothing,
//! so it stays cheap with tens of thousands of Links attached.
//!
//! # Protocol
//!
//! Each member has a `listed` flag. A producer that has just reserved an in-flight
//! place (`in_flight` +1, a read-modify-write) calls [`Busy::enlist`], which swaps
//! `listed` to true and inserts the member if it was false. Only the sweeper removes:
//! for a member it finds idle, it removes it, swaps `listed` to false, and reads
//! `in_flight` again with a read-modify-write; if that is not zero and it can swap
//! `listed` back to true itself, it re-inserts. Every step is a read-modify-write, so
//! the argument needs only acquire/release: a producer whose swap read true came
//! before the sweeper's swap in `listed`'s order, so its increment happens before the
//! sweeper's second read, which sees it and keeps the member; a producer whose swap
//! read false inserts the member itself, after the sweeper removed it. So a member with
//! queries in flight is always in the set (loom model: `loom_busy.rs`, which failed a
//! first version that used plain loads). One sweeper at a time (`sweeping`).

use std::sync::Arc;

use crate::sync::{AtomicBool, Mutex, Ordering, lock};

/// What the busy set needs to know about a member.
pub(crate) trait Member {
    /// The member's `listed` flag (only [`Busy`] touches it).
    fn listed(&self) -> &AtomicBool;
    /// Whether the member still holds reserved in-flight places: a read-modify-write
    /// (`fetch_add(0)`), which reads the latest value of the counter.
    fn has_in_flight(&self) -> bool;
}

#[cfg(not(loom))]
type Map<T> = papaya::HashMap<usize, Arc<T>, foldhash::fast::RandomState>;
#[cfg(loom)]
type Map<T> = Mutex<std::collections::HashMap<usize, Arc<T>>>;

/// The set of members that may hold in-flight work.
pub(crate) struct Busy<T> {
    map: Map<T>,
    sweeping: Mutex<()>,
}

impl<T> std::fmt::Debug for Busy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Busy").finish_non_exhaustive()
    }
}

impl<T: Member> Busy<T> {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(not(loom))]
            map: papaya::HashMap::with_hasher(foldhash::fast::RandomState::default()),
            #[cfg(loom)]
            map: Mutex::new(std::collections::HashMap::new()),
            sweeping: Mutex::new(()),
        }
    }

    fn key(member: &Arc<T>) -> usize {
        // The address is unique while the set holds the Arc.
        Arc::as_ptr(member) as usize
    }

    fn insert(&self, member: &Arc<T>) {
        #[cfg(not(loom))]
        self.map.pin().insert(Self::key(member), Arc::clone(member));
        #[cfg(loom)]
        lock(&self.map).insert(Self::key(member), Arc::clone(member));
    }

    fn remove(&self, member: &Arc<T>) {
        #[cfg(not(loom))]
        self.map.pin().remove(&Self::key(member));
        #[cfg(loom)]
        lock(&self.map).remove(&Self::key(member));
    }

    /// Puts `member` in the set, after it reserved an in-flight place. Costs one swap
    /// on a cache line the reservation has just written when it is already there.
    pub(crate) fn enlist(&self, member: &Arc<T>) {
        if !member.listed().swap(true, Ordering::SeqCst) {
            self.insert(member);
        }
    }

    /// Calls `visit` on every member in the set and drops the ones that are idle
    /// afterwards; answers the sum of what `visit` returned. A second caller while one
    /// sweeps waits for it.
    pub(crate) fn sweep(&self, mut visit: impl FnMut(&T) -> usize) -> usize {
        let _one_sweeper = lock(&self.sweeping);
        #[cfg(not(loom))]
        let members: Vec<Arc<T>> = self.map.pin().values().cloned().collect();
        #[cfg(loom)]
        let members: Vec<Arc<T>> = lock(&self.map).values().cloned().collect();
        let mut total = 0;
        for member in members {
            total += visit(&member);
            if member.has_in_flight() {
                continue;
            }
            self.remove(&member);
            member.listed().swap(false, Ordering::SeqCst);
            if member.has_in_flight() && !member.listed().swap(true, Ordering::SeqCst) {
                self.insert(&member);
            }
        }
        total
    }

    /// How many members the set holds (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        #[cfg(not(loom))]
        return self.map.len();
        #[cfg(loom)]
        return lock(&self.map).len();
    }
}
