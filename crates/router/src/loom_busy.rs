//! Loom model of the busy set (`busy.rs`): a session with queries in flight is always
//! in the set the timeout sweep visits, whatever the interleaving of a route that
//! reserves a place, a completion that releases one, and a sweep.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p halo-router --release --lib loom_`

use std::sync::Arc;

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

use crate::busy::{Busy, Member};

#[derive(Default)]
struct Session {
    in_flight: AtomicUsize,
    listed: AtomicBool,
}

impl Member for Session {
    fn listed(&self) -> &AtomicBool {
        &self.listed
    }

    fn has_in_flight(&self) -> bool {
        self.in_flight.fetch_add(0, Ordering::SeqCst) != 0
    }
}

/// A route: reserve (SeqCst, as `SessionCore::try_reserve`), then enlist.
fn route(busy: &Busy<Session>, session: &Arc<Session>) {
    session.in_flight.fetch_add(1, Ordering::SeqCst);
    busy.enlist(session);
}

#[test]
fn loom_a_session_with_queries_in_flight_stays_in_the_busy_set() {
    loom::model(|| {
        let busy = Arc::new(Busy::new());
        let session = Arc::new(Session::default());
        // One query already in flight, then completed: the session is listed but idle.
        route(&busy, &session);
        session.in_flight.fetch_sub(1, Ordering::AcqRel);

        let sweeper = {
            let busy = Arc::clone(&busy);
            thread::spawn(move || {
                busy.sweep(|_| 0);
            })
        };
        // A new query races the sweep that finds the session idle.
        route(&busy, &session);
        sweeper.join().expect("sweeper");

        assert_eq!(session.in_flight.load(Ordering::SeqCst), 1);
        assert_eq!(
            busy.len(),
            1,
            "a session with a query in flight left the busy set"
        );
        assert!(session.listed.load(Ordering::SeqCst));
    });
}

#[test]
fn loom_two_sweeps_and_a_route_leave_exactly_one_entry() {
    loom::model(|| {
        let busy = Arc::new(Busy::new());
        let session = Arc::new(Session::default());
        route(&busy, &session);
        session.in_flight.fetch_sub(1, Ordering::AcqRel);

        let sweepers: Vec<_> = (0..2)
            .map(|_| {
                let busy = Arc::clone(&busy);
                thread::spawn(move || {
                    busy.sweep(|_| 0);
                })
            })
            .collect();
        route(&busy, &session);
        for s in sweepers {
            s.join().expect("sweeper");
        }
        // Listed exactly when present: no lost entry, no stale flag.
        assert_eq!(busy.len(), 1);
        assert!(session.listed.load(Ordering::SeqCst));
    });
}
