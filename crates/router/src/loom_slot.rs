//! Loom models of the in-flight protocols: completion vs timeout vs cancel (exactly one
//! wins, the slot is released once, the waiting task gets the winner's outcome), the
//! job receiver's wake-up, and detach vs route.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p halo-router --release --lib loom_`

use std::future::poll_fn;
use std::sync::Arc as StdArc;
use std::time::Duration;

use halo_ids::Timestamp;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

use crate::dispatch::{Ending, QueryId, Slot};
use crate::error::RouteError;
use crate::link::Waiter;
use crate::outcome::QueryOutput;

fn output() -> QueryOutput {
    QueryOutput {
        data: "WzFd".into(),
        size: 3,
        rows: 1,
        sql_execution: Duration::ZERO,
    }
}

fn slot() -> Arc<Slot> {
    Arc::new(Slot::new(
        QueryId::new(1).expect("non-zero"),
        Timestamp::from_millis(10),
    ))
}

/// Ends the slot as `ending` and counts a release if this call won.
fn end(slot: &Slot, released: &AtomicUsize, ending: Ending) -> bool {
    let outcome = match ending {
        Ending::Completed => Ok(output()),
        Ending::TimedOut => Err(RouteError::Timeout),
        Ending::Cancelled => Err(RouteError::Cancelled),
        Ending::Unreachable => Err(RouteError::Unreachable),
    };
    let won = slot.try_finish(ending, outcome);
    if won {
        released.fetch_add(1, Ordering::AcqRel);
    }
    won
}

#[test]
fn loom_completion_timeout_cancel_exactly_one_wins() {
    loom::model(|| {
        let slot = slot();
        let released = Arc::new(AtomicUsize::new(0));
        let racers: Vec<_> = [Ending::Completed, Ending::TimedOut]
            .into_iter()
            .map(|ending| {
                let (slot, released) = (slot.clone(), released.clone());
                thread::spawn(move || end(&slot, &released, ending))
            })
            .collect();
        let cancelled = end(&slot, &released, Ending::Cancelled);
        let wins: Vec<bool> = racers
            .into_iter()
            .map(|h| h.join().expect("racer"))
            .collect();
        let winners = wins.iter().filter(|w| **w).count() + usize::from(cancelled);
        assert_eq!(winners, 1);
        assert_eq!(released.load(Ordering::Acquire), 1);
        let outcome = slot.take_outcome().expect("the winner stored its outcome");
        match (wins[0], wins[1], cancelled) {
            (true, false, false) => assert_eq!(outcome, Ok(output())),
            (false, true, false) => assert_eq!(outcome, Err(RouteError::Timeout)),
            (false, false, true) => assert_eq!(outcome, Err(RouteError::Cancelled)),
            other => panic!("impossible winners {other:?}"),
        }
    });
}

#[test]
fn loom_waiting_task_is_woken_with_the_winner() {
    loom::model(|| {
        let slot = slot();
        let released = Arc::new(AtomicUsize::new(0));
        let completer = {
            let (slot, released) = (slot.clone(), released.clone());
            thread::spawn(move || end(&slot, &released, Ending::Completed))
        };
        let timer = {
            let (slot, released) = (slot.clone(), released.clone());
            thread::spawn(move || end(&slot, &released, Ending::TimedOut))
        };
        // A lost wake-up would leave this blocked forever, which loom reports.
        let outcome = loom::future::block_on(poll_fn(|cx| slot.poll_outcome(cx.waker())));
        let completed = completer.join().expect("completer");
        let timed_out = timer.join().expect("timer");
        assert!(completed ^ timed_out);
        assert_eq!(released.load(Ordering::Acquire), 1);
        if completed {
            assert_eq!(outcome, Ok(output()));
        } else {
            assert_eq!(outcome, Err(RouteError::Timeout));
        }
    });
}

#[test]
fn loom_job_receiver_never_misses_a_wake_up() {
    // Two producers and a looping consumer: bound preemptions (as tokio's loom suite
    // does) to keep the search to about a minute.
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let waiter = StdArc::new(Waiter::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (waiter, queued) = (waiter.clone(), queued.clone());
                thread::spawn(move || {
                    queued.fetch_add(1, Ordering::SeqCst);
                    waiter.notify();
                })
            })
            .collect();
        let mut taken = 0;
        while taken < 2 {
            loom::future::block_on(poll_fn(|cx| {
                waiter.poll_with(cx, || {
                    queued
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .ok()
                })
            }));
            taken += 1;
        }
        for p in producers {
            p.join().expect("producer");
        }
    });
}

/// The detach/route handshake of `SessionCore` (`register` then `unless_closed`, which
/// both `enqueue` and `hand_off` go through, against `close`): the route inserts its
/// slot, fences and reads `closed`; detach sets `closed`, fences and scans the slots. Whatever the interleaving, the slot ends (nothing hangs) exactly once.
#[test]
fn loom_detach_never_strands_a_routed_query() {
    loom::model(|| {
        let slot = slot();
        let released = Arc::new(AtomicUsize::new(0));
        let present = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let router = {
            let (slot, released, present, closed) = (
                slot.clone(),
                released.clone(),
                present.clone(),
                closed.clone(),
            );
            thread::spawn(move || {
                present.store(true, Ordering::SeqCst);
                loom::sync::atomic::fence(Ordering::SeqCst);
                if closed.load(Ordering::SeqCst) {
                    let _ = end(&slot, &released, Ending::Unreachable);
                }
            })
        };
        closed.store(true, Ordering::SeqCst);
        loom::sync::atomic::fence(Ordering::SeqCst);
        if present.load(Ordering::SeqCst) {
            let _ = end(&slot, &released, Ending::Unreachable);
        }
        router.join().expect("router");
        assert!(slot.is_finished(), "a routed query was stranded by detach");
        assert_eq!(released.load(Ordering::Acquire), 1);
    });
}
