//! The cluster's shared counters (`PgCounters`) on a throw-away PostgreSQL: totals
//! add up exactly under concurrent rounds, and each round reads back what the
//! other nodes changed since the previous one.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use halo_store::{PgCounters, PgLog, PgOptions};
use halo_test_support::postgres_server::PgServer;

fn options(server: &PgServer) -> PgOptions {
    PgOptions {
        url: server.url(),
        timeout: Duration::from_secs(5),
    }
}

fn total(round: &halo_store::CounterRound, key: &str, period: u64) -> Option<u64> {
    round
        .totals
        .iter()
        .find(|(k, p, _)| k == key && *p == period)
        .map(|(_, _, t)| *t)
}

#[test]
fn rounds_add_deltas_and_read_back_what_others_changed() {
    let server = PgServer::start();
    drop(PgLog::open(options(&server)).unwrap()); // migrates
    let mut a = PgCounters::new(options(&server)).unwrap();
    let mut b = PgCounters::new(options(&server)).unwrap();

    let first = a.exchange(&[("quota/i/acme".to_owned(), 680, 3)]).unwrap();
    assert_eq!(total(&first, "quota/i/acme", 680), Some(3));
    // b's first round reads every total, and adds its own.
    let seen = b
        .exchange(&[
            ("rate/i/acme".to_owned(), 0, 2),
            ("quota/i/acme".to_owned(), 680, 4),
        ])
        .unwrap();
    assert_eq!(total(&seen, "quota/i/acme", 680), Some(7));
    assert_eq!(total(&seen, "rate/i/acme", 0), Some(2));
    // a, with nothing to add, reads what b changed; another month is its own row.
    let read = a.exchange(&[]).unwrap();
    assert_eq!(total(&read, "quota/i/acme", 680), Some(7));
    assert_eq!(total(&read, "rate/i/acme", 0), Some(2));
    let next = a.exchange(&[("quota/i/acme".to_owned(), 681, 1)]).unwrap();
    assert_eq!(total(&next, "quota/i/acme", 681), Some(1));
    // A fresh handle (a restarted node) reads every total.
    let fresh = PgCounters::new(options(&server))
        .unwrap()
        .exchange(&[])
        .unwrap();
    assert_eq!(fresh.totals.len(), 3, "{fresh:?}");
    // An out-of-range delta is refused and changes nothing.
    assert!(
        a.exchange(&[("quota/i/acme".to_owned(), 680, u64::MAX)])
            .is_err()
    );
    let after = b.exchange(&[]).unwrap();
    let everything = PgCounters::new(options(&server))
        .unwrap()
        .exchange(&[])
        .unwrap();
    assert_eq!(
        total(&everything, "quota/i/acme", 680),
        Some(7),
        "{after:?}"
    );
}

#[test]
fn concurrent_rounds_lose_no_update() {
    let server = PgServer::start();
    drop(PgLog::open(options(&server)).unwrap());
    let nodes: Vec<_> = (0..3)
        .map(|n| {
            let options = options(&server);
            std::thread::spawn(move || {
                let mut c = PgCounters::new(options).unwrap();
                for i in 0..200u64 {
                    // Two rows every node adds to, listed in a different order by
                    // each: rounds must neither deadlock nor lose an update.
                    let mut d = vec![
                        ("rate/i/acme".to_owned(), 0, 1),
                        ("quota/i/acme".to_owned(), 680, 1),
                        (format!("quota/p/D4w:ABC{n}/acme"), 680, i % 3 + 1),
                    ];
                    if (n + i) % 2 == 0 {
                        d.reverse();
                    }
                    c.exchange(&d).unwrap();
                }
            })
        })
        .collect();
    for n in nodes {
        n.join().unwrap();
    }
    let all = PgCounters::new(options(&server))
        .unwrap()
        .exchange(&[])
        .unwrap();
    assert_eq!(total(&all, "rate/i/acme", 0), Some(600));
    assert_eq!(total(&all, "quota/i/acme", 680), Some(600));
    for n in 0..3 {
        // Σ (i % 3 + 1) for i in 0..200 = 399.
        assert_eq!(
            total(&all, &format!("quota/p/D4w:ABC{n}/acme"), 680),
            Some(399)
        );
    }
}
