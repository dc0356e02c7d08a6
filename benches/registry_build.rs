//! Building a 1 000 000-site tenancy registry by applying events, and the cost of
//! single events on a registry of that size.
//!
//! Run: `cargo bench -p halo-benches --bench registry_build`.
//!
//! Before criterion runs, a one-shot build applies about 3.9 million events (Link
//! registrations, 1 000 000 `SiteAttached`, 1 000 000 `SiteReady`, one
//! heartbeat per Link) for this mix: 100 multi-tenant clusters of 1 000 databases,
//! 800 000 single servers (every fifth with two branch CRNs) and 100 000 backup
//! servers sharing a CRN with a single server. It prints the wall time, events per
//! second, and memory per site measured as the growth of the process's resident set
//! (`VmRSS`, Linux only; an upper bound, as it includes allocator slack). The
//! workspace forbids `unsafe`, so there is no counting global allocator here.
//! The one-shot baseline is inserting the same 1 000 000 identities into a plain
//! `HashMap<HaloGuid, SiteIdentity>`, measured in the same run.
//!
//! Criterion then measures one attach on the 1M registry, one heartbeat, and building
//! a 10 000-site registry, against `baseline_hashmap_insert_10k`; and snapshotting
//! that 10 000-site registry (`to_snapshot_10k_sites`) and restoring it
//! (`from_snapshot_10k_sites`), against building it by events
//! (`apply_build_10k_sites`). Snapshot JSON size and time at 1M sites:
//! `cargo run --release -p halo-tenancy --example snapshot_1m`.
//!
//! Results, 2026-11-27, 2-core VM shared with five other builds (load average 6, so
//! absolute times are noisy; ratios are to baselines measured in the same run):
//!
//! | measurement | result | baseline ratio |
//! | --- | --- | --- |
//! | one-shot 1M sites, 3.8M events | 10.5 s (2.8 µs/event); 6.5 s in a quieter run | 3.9x (6.9x quieter run) the plain 1M map insert |
//! | memory, RSS growth per site | 695 bytes (663 MiB for 1M sites, 0.9M Links, 0.9M groups) | 1.6x the plain map's 431 bytes |
//! | `apply_build_10k_sites` | 27 ms | 12.6x `baseline_hashmap_insert_10k` (2.1 ms) |
//! | `to_snapshot_10k_sites` (`--quick`, later run) | 1.49 ms | 0.055x `apply_build_10k_sites` (26.9 ms, same run) |
//! | `from_snapshot_10k_sites` (`--quick`, later run) | 7.0 ms | 0.26x `apply_build_10k_sites` (3.8x faster) |
//! | `attach_on_1m_registry` | 3.4 µs | |
//! | `heartbeat_on_1m_registry` (1-site Link) | 83 ns | |
//! | `heartbeat_1000_site_cluster_on_1m_registry` | 14 µs | |
//!
//! 2026-12-02, same kind of VM at load average 4.7 (`--quick`), after the compact
//! `Site` (120 bytes), `Link` (64 bytes) and branch claims (32 bytes):
//!
//! | measurement | result | baseline ratio |
//! | --- | --- | --- |
//! | one-shot 1M sites, 3.8M events | 7.0 s wall (loaded; 2.6-3.3 s of CPU in `snapshot_1m`) | 4.5x the plain 1M map insert (1.55 s) |
//! | memory, RSS growth per site | 331 bytes (365 before, same VM) | 2.1x the plain map's 160 bytes |
//! | `apply_build_10k_sites` | 16.5 ms | 4.3x `baseline_hashmap_insert_10k` (3.8 ms) |
//! | `to_snapshot_10k_sites` | 0.67 ms | |
//! | `from_snapshot_10k_sites` | 7.6 ms | 0.46x `apply_build_10k_sites` |
//! | `heartbeat_on_1m_registry` (1-site Link) | 286 ns | |
//! | `heartbeat_1000_site_cluster_on_1m_registry` | 25 µs | |
//! | `attach_on_1m_registry` | 5.4 µs | |

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group};
use halo_ids::{Environment, HaloGuid, Timestamp};
use halo_tenancy::{Event, Registry, SiteIdentity};

use halo_test_support::million::{CLUSTERS, SITES, databases, halo, identity, link};

/// The one-shot 1M log, generated before the clock starts (so the build times
/// applying, not making events), with the time each event is applied at.
fn million_events() -> Vec<(Event, Timestamp)> {
    let mut now = 1_700_000_000_000u64;
    halo_test_support::million::events()
        .map(|e| {
            now += 1;
            (e, Timestamp::from_millis(now))
        })
        .collect()
}

/// Resident set size in bytes (Linux), or 0 where unknown.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The one-minute load average (Linux), or -1 where unknown.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(-1.0)
}

fn one_shot() -> Registry {
    let load1 = load_average();
    let events = million_events();
    let count = events.len() as u64;
    // The registry first, in a fresh process, so that its RSS growth is not hidden
    // by memory the baseline freed; the baseline after it, while it stays alive.
    let rss0 = rss_bytes();
    let t = Instant::now();
    let mut reg = Registry::new();
    for (event, at) in &events {
        reg.apply(event, *at)
            .unwrap_or_else(|e| panic!("{event:?} refused: {e}"));
    }
    let took = t.elapsed();
    let grown = rss_bytes().saturating_sub(rss0);
    assert_eq!(reg.site_count(), SITES as usize);
    drop(events);

    // The Cloud keeps a second copy for readers (`halo-cloud`'s state.rs): a clone.
    let rss0 = rss_bytes();
    let t = Instant::now();
    let readers = reg.clone();
    let clone_took = t.elapsed();
    let clone_grown = rss_bytes().saturating_sub(rss0);
    black_box(&readers);

    // Baseline: the same 1M identities, made before the clock starts, moved into a
    // plain map.
    let identities: Vec<(HaloGuid, SiteIdentity)> = databases()
        .map(|(i, _, identity)| (halo(i), identity))
        .collect();
    let rss0 = rss_bytes();
    let t = Instant::now();
    let mut plain: HashMap<HaloGuid, SiteIdentity> = HashMap::new();
    for (halo, identity) in identities {
        plain.insert(halo, identity);
    }
    let baseline = t.elapsed();
    let plain_rss = rss_bytes().saturating_sub(rss0);
    black_box(&plain);
    drop(plain);
    drop(readers);

    let per_site = grown as f64 / f64::from(SITES);
    println!("registry_build/one_shot_1m: {SITES} sites, {count} events in {took:.2?}");
    println!(
        "  {:.0} events/s, {:.0} ns/event",
        count as f64 / took.as_secs_f64(),
        took.as_nanos() as f64 / count as f64
    );
    println!(
        "  memory: {:.0} MiB resident growth, {per_site:.0} bytes/site (size_of Site = {} bytes)",
        grown as f64 / 1048576.0,
        std::mem::size_of::<halo_tenancy::Site>()
    );
    println!(
        "  readers' copy (a clone, as the Cloud keeps): {clone_took:.2?}, {:.0} bytes/site",
        clone_grown as f64 / f64::from(SITES)
    );
    println!(
        "  baseline: moving the same 1M identities into a HashMap<HaloGuid, SiteIdentity>: \
         {baseline:.2?} (its table alone: {:.0} bytes/site); registry build = {:.1}x baseline time",
        plain_rss as f64 / f64::from(SITES),
        took.as_secs_f64() / baseline.as_secs_f64(),
    );
    println!(
        "{{\"bench\":\"registry_build_1m\",\"sites\":{SITES},\"events\":{count},\"load1\":{load1:.2},\"build_s\":{:.3},\"events_per_s\":{:.0},\"bytes_per_site\":{per_site:.0},\"readers_copy_bytes_per_site\":{:.0},\"readers_copy_s\":{:.3},\"baseline_map_insert_s\":{:.3},\"build_vs_baseline\":{:.2},\"target_build_s\":2.0,\"target_bytes_per_site\":300}}",
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64(),
        clone_grown as f64 / f64::from(SITES),
        clone_took.as_secs_f64(),
        baseline.as_secs_f64(),
        took.as_secs_f64() / baseline.as_secs_f64(),
    );
    reg
}

fn small_events(n: u32) -> Vec<Event> {
    let mut events = vec![Event::LinkRegistered {
        link: link(0),
        environment: Environment::Production,
        version: "1.4.2".into(),
    }];
    for i in 0..n {
        events.push(Event::SiteAttached {
            link: link(0),
            halo_guid: halo(i),
            identity: identity(i, 0),
        });
    }
    events
}

fn single_events(c: &mut Criterion, reg: &mut Registry) {
    let mut g = c.benchmark_group("registry_build");
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(20);
    let mut now = 1_800_000_000_000u64;

    g.bench_function("baseline_hashmap_insert_10k", |b| {
        let ids: Vec<(HaloGuid, SiteIdentity)> =
            (0..10_000).map(|i| (halo(i), identity(i, 0))).collect();
        b.iter_batched(
            || ids.clone(),
            |ids| {
                let mut m = HashMap::new();
                for (k, v) in ids {
                    m.insert(k, v);
                }
                m
            },
            BatchSize::LargeInput,
        )
    });
    let events = small_events(10_000);
    g.bench_function("apply_build_10k_sites", |b| {
        b.iter(|| {
            let mut r = Registry::new();
            for e in &events {
                r.apply(e, Timestamp::from_millis(1)).unwrap();
            }
            r
        })
    });
    // Snapshots of the same 10k-site registry (JSON is measured by the tenancy
    // crate's `snapshot_1m` example, as this package has no JSON dependency).
    let mut small = Registry::new();
    for e in &events {
        small.apply(e, Timestamp::from_millis(1)).unwrap();
    }
    g.bench_function("to_snapshot_10k_sites", |b| b.iter(|| small.to_snapshot()));
    let snapshot = small.to_snapshot();
    g.bench_function("from_snapshot_10k_sites", |b| {
        b.iter_batched(
            || snapshot.clone(),
            |s| Registry::from_snapshot(s).unwrap(),
            BatchSize::LargeInput,
        )
    });

    if reg.site_count() > 0 {
        let heartbeat = Event::Heartbeat {
            link: link(CLUSTERS + 5),
        };
        g.bench_function("heartbeat_on_1m_registry", |b| {
            b.iter(|| {
                now += 1;
                reg.apply(&heartbeat, Timestamp::from_millis(now)).unwrap()
            })
        });
        let big_cluster = Event::Heartbeat { link: link(0) };
        g.bench_function("heartbeat_1000_site_cluster_on_1m_registry", |b| {
            b.iter(|| {
                now += 1;
                reg.apply(&big_cluster, Timestamp::from_millis(now))
                    .unwrap()
            })
        });
        let mut next = SITES;
        g.bench_function("attach_on_1m_registry", |b| {
            b.iter(|| {
                next += 1;
                now += 1;
                let e = Event::SiteAttached {
                    link: link(0),
                    halo_guid: halo(next),
                    identity: identity(next, 0),
                };
                reg.apply(&e, Timestamp::from_millis(now)).unwrap()
            })
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    // The one-shot 1M build runs only under `cargo bench`, not as a smoke test.
    let mut reg = if std::env::args().any(|a| a == "--bench") {
        one_shot()
    } else {
        Registry::new()
    };
    single_events(c, &mut reg);
}

criterion_group!(registry, benches);

fn main() {
    registry();
    Criterion::default().configure_from_args().final_summary();
}
