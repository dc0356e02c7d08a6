//! Routing throughput: the router's lock-free table against `RwLock<HashMap>`,
//! `DashMap` and the ceiling (a frozen, unsynchronised `HashMap`), all holding the
//! same records with foldhash's randomly seeded hasher, all running the same route
//! decision (`halo_router::check_route`: policy `evaluate` plus the status/authority
//! re-check; Stage, so no rate limit).
//!
//! Run: `cargo bench -p halo-benches --bench routing` (about two minutes on 2 cores).
//! Groups `routing/<sites>` for 1 000, 100 000 and 1 000 000 sites; benchmarks
//! `<table>/t<threads>/<quiet|writer>`, with 1 and 2 threads, with and without a
//! concurrent writer making 10 000 registry changes per second plus heartbeats (the
//! ceiling never has a writer). `lookup/<table>/t2/writer` isolates the table (resolve
//! plus status/authority, no policy). Each iteration is one decision; with 2 threads
//! the time is wall time for `iters` decisions split over both, so throughput is the
//! aggregate. For one JSON line with every figure of one run, use the example:
//! `cargo run --release -p halo-router --example route_bench -- --sites 100000 --threads 2 --secs 5`.
//!
//! Shared harness: `halo_test_support::routing_harness` (`crates/test-support`). Latest figures: see
//! `crates/router/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use halo_test_support::routing_harness::{
    Op, ProbeRing, Table, decide_parallel, fixture, run_writer,
};

fn routing(c: &mut Criterion) {
    for sites in [1_000usize, 100_000, 1_000_000] {
        let fx = fixture(sites);
        let tables = Table::all(&fx);
        let mut group = c.benchmark_group(format!("routing/{sites}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .throughput(Throughput::Elements(1));
        let mut cases: Vec<(Op, usize, bool)> = Vec::new();
        for threads in [1, 2] {
            for writer in [false, true] {
                cases.push((Op::Decide, threads, writer));
            }
        }
        cases.push((Op::Lookup, 2, true));
        for (op, threads, writer) in cases {
            for table in &tables {
                if writer && !table.writable() && op == Op::Decide {
                    continue;
                }
                let writer = writer && table.writable();
                let name = format!(
                    "{}{}/t{threads}/{}",
                    if op == Op::Lookup { "lookup/" } else { "" },
                    table.name(),
                    if writer { "writer" } else { "quiet" }
                );
                let stop = AtomicBool::new(false);
                let probe = ProbeRing::new();
                thread::scope(|s| {
                    let w = writer.then(|| s.spawn(|| run_writer(&fx, table, &probe, &stop)));
                    group.bench_function(&name, |b| {
                        b.iter_custom(|iters| decide_parallel(&fx, table, threads, iters, op));
                    });
                    stop.store(true, Ordering::Release);
                    if let Some(w) = w {
                        w.join().expect("writer thread");
                    }
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, routing);
criterion_main!(benches);
