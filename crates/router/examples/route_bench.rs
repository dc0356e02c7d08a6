//! Routing throughput of the router's lock-free table against `RwLock<HashMap>`,
//! `DashMap` and an unsynchronised frozen `HashMap` (the ceiling), in one run.
//!
//! ```text
//! cargo run --release -p halo-router --example route_bench -- --sites 100000 --threads 2 --secs 5
//! ```
//!
//! Prints one JSON line: decisions per second for `router`, `rwlock`, `dashmap` and
//! the candidate tables `leftright` (the `left-right` crate: two `HashMap` copies)
//! and `papaya` (each with the writer running: 10 000 registry changes per second
//! plus heartbeats) and `ceiling` (no writer), with the ratios the issue targets
//! (`*_vs_ceiling`, `*_vs_dashmap`) and the load average before and after, then a
//! second line with the same rates per second of CPU time the reader threads got
//! (`"per_cpu_second":true`), which a busy shared machine distorts far less; `writer_cost`, the fraction of router throughput lost to the
//! writer (against a router run without it, `router_no_writer`); and
//! `visibility_p99_us`, the p99 time from the start of a change's publication to a
//! reader seeing it (readers look every 64 decisions, which is included). The
//! `lookup_*` fields repeat the comparison for the table alone (resolve plus the
//! status/authority check, no policy), which the full decision's policy cost hides.
//! The second line also has two floors, frozen like the ceiling: `floor_leftright`
//! and `floor_papaya` read the ceiling's map inside left-right's and papaya's reader
//! protocol, so `*_vs_floor` says how far a table is from what its protocol alone
//! allows, and `floor_*_vs_ceiling` what the protocol costs.
//! Tables are measured in interleaved one-second rounds (`--secs` in total per table),
//! in an order rotated every round, so background load drifts over all of them alike. Add `--no-writer` to run
//! every table without the writer, `--candidates` to also print a second line
//! comparing candidate lock-free tables (papaya, scc::HashIndex, arc-swap snapshot).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;
use halo_ids::HaloGuid;
use halo_router::Route;

use halo_test_support::routing_harness::{Fixture, Op, Rng, Table, fixture, measure, quantile};

/// Length of one measurement round per table, in seconds.
const ROUND_SECS: f64 = 1.0;

struct Args {
    sites: usize,
    threads: usize,
    secs: f64,
    writer: bool,
    candidates: bool,
    only_candidates: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sites: 100_000,
        threads: 2,
        secs: 3.0,
        writer: true,
        candidates: false,
        only_candidates: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--sites" => {
                args.sites = value("--sites")?
                    .parse()
                    .map_err(|e| format!("--sites: {e}"))?
            }
            "--threads" => {
                args.threads = value("--threads")?
                    .parse()
                    .map_err(|e| format!("--threads: {e}"))?
            }
            "--secs" => {
                args.secs = value("--secs")?
                    .parse()
                    .map_err(|e| format!("--secs: {e}"))?
            }
            "--no-writer" => args.writer = false,
            "--candidates" => args.candidates = true,
            "--only-candidates" => args.only_candidates = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.sites == 0 || args.threads == 0 || args.secs <= 0.0 {
        return Err("--sites, --threads and --secs must be positive".into());
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "route_bench: {e}\nusage: route_bench [--sites N] [--threads T] [--secs S] [--no-writer] [--candidates]"
            );
            std::process::exit(2);
        }
    };
    let fx = fixture(args.sites);
    if args.only_candidates {
        candidates(&fx, args.threads, ROUND_SECS);
        return;
    }
    let tables = Table::all(&fx);
    let extra = Table::candidates(&fx);
    let floors = Table::floors(&fx);
    // Interleave the tables in short rounds so that background load on the machine
    // drifts over all of them alike; sum operations and time over the rounds.
    let rounds = (args.secs / ROUND_SECS).ceil().max(1.0) as usize;
    let slice = args.secs / rounds as f64;
    let mut full = [0.0f64; 9];
    let mut lookup = [0.0f64; 9];
    let mut full_cpu = [0.0f64; 9];
    let mut lookup_cpu = [0.0f64; 9];
    let mut visibility = Vec::new();
    let load_before = load_average();
    // Slots: router, rwlock, dashmap, ceiling, router again without the writer (for
    // `writer_cost`), the candidates left-right and papaya, then the floors (the
    // ceiling's map under left-right's and papaya's reader protocols).
    let slots: Vec<&Table<'_>> = tables
        .iter()
        .chain(std::iter::once(&tables[0]))
        .chain(extra.iter())
        .chain(floors.iter())
        .collect();
    for round in 0..rounds {
        // Rotate the order each round so no table always follows the same one.
        for k in 0..slots.len() {
            let i = (round + k) % slots.len();
            let table = slots[i];
            let writer = args.writer && table.writable() && i != 4;
            let m = measure(&fx, table, args.threads, slice, writer, Op::Decide);
            full[i] += m.per_sec / rounds as f64;
            full_cpu[i] += m.per_cpu_sec / rounds as f64;
            if i == 0 {
                visibility.extend(m.visibility_us);
            }
            let m = measure(&fx, table, args.threads, slice / 2.0, writer, Op::Lookup);
            lookup[i] += m.per_sec / rounds as f64;
            lookup_cpu[i] += m.per_cpu_sec / rounds as f64;
        }
    }
    let load_after = load_average();
    let cost = |with: f64, without: f64| {
        if args.writer {
            1.0 - with / without
        } else {
            0.0
        }
    };
    let p99 = quantile(&mut visibility, 0.99);
    println!(
        "{{\"sites\":{},\"threads\":{},\"secs\":{},\"writer\":{},\"load1_before\":{:.2},\"load1_after\":{:.2},\"router\":{:.0},\"rwlock\":{:.0},\"dashmap\":{:.0},\"ceiling\":{:.0},\"leftright\":{:.0},\"papaya\":{:.0},\"router_no_writer\":{:.0},\"writer_cost\":{:.4},\"visibility_p99_us\":{:.1},\"visibility_samples\":{},\"lookup_router\":{:.0},\"lookup_rwlock\":{:.0},\"lookup_dashmap\":{:.0},\"lookup_ceiling\":{:.0},\"lookup_leftright\":{:.0},\"lookup_papaya\":{:.0},\"lookup_router_no_writer\":{:.0},\"lookup_writer_cost\":{:.4},\"lookup_router_vs_ceiling\":{:.3},\"lookup_router_vs_dashmap\":{:.3},\"lookup_leftright_vs_ceiling\":{:.3},\"lookup_leftright_vs_dashmap\":{:.3},\"lookup_papaya_vs_ceiling\":{:.3},\"lookup_papaya_vs_dashmap\":{:.3},\"router_vs_dashmap\":{:.3},\"leftright_vs_dashmap\":{:.3},\"papaya_vs_dashmap\":{:.3}}}",
        args.sites,
        args.threads,
        args.secs,
        args.writer,
        load_before,
        load_after,
        full[0],
        full[1],
        full[2],
        full[3],
        full[5],
        full[6],
        full[4],
        cost(full[0], full[4]),
        p99,
        visibility.len(),
        lookup[0],
        lookup[1],
        lookup[2],
        lookup[3],
        lookup[5],
        lookup[6],
        lookup[4],
        cost(lookup[0], lookup[4]),
        lookup[0] / lookup[3],
        lookup[0] / lookup[2],
        lookup[5] / lookup[3],
        lookup[5] / lookup[2],
        lookup[6] / lookup[3],
        lookup[6] / lookup[2],
        full[0] / full[2],
        full[5] / full[2],
        full[6] / full[2],
    );
    // The same, per second of CPU time the readers got (see `Measurement::per_cpu_sec`):
    // on a machine whose cores other processes share, the wall-clock rates above
    // mostly measure the share of CPU each run got, these the cost of each operation.
    let names = [
        "router",
        "rwlock",
        "dashmap",
        "ceiling",
        "router_no_writer",
        "leftright",
        "papaya",
        "floor_leftright",
        "floor_papaya",
    ];
    let mut line = format!(
        "{{\"per_cpu_second\":true,\"sites\":{},\"threads\":{},\"writer\":{}",
        args.sites, args.threads, args.writer
    );
    for (i, name) in names.iter().enumerate() {
        line.push_str(&format!(",\"{name}\":{:.0}", full_cpu[i]));
    }
    for (i, name) in names.iter().enumerate() {
        line.push_str(&format!(",\"lookup_{name}\":{:.0}", lookup_cpu[i]));
    }
    for (i, name) in [
        (0usize, "router"),
        (5, "leftright"),
        (6, "papaya"),
        (7, "floor_leftright"),
        (8, "floor_papaya"),
    ] {
        line.push_str(&format!(
            ",\"lookup_{name}_vs_ceiling\":{:.3},\"lookup_{name}_vs_dashmap\":{:.3},\"{name}_vs_dashmap\":{:.3}",
            lookup_cpu[i] / lookup_cpu[3],
            lookup_cpu[i] / lookup_cpu[2],
            full_cpu[i] / full_cpu[2],
        ));
    }
    // How close each table gets to the floor of its own reader protocol.
    for (i, floor, name) in [(0usize, 7usize, "router"), (6, 8, "papaya")] {
        line.push_str(&format!(
            ",\"lookup_{name}_vs_floor\":{:.3},\"{name}_vs_floor\":{:.3}",
            lookup_cpu[i] / lookup_cpu[floor],
            full_cpu[i] / full_cpu[floor],
        ));
    }
    line.push('}');
    println!("{line}");
    if args.candidates {
        candidates(&fx, args.threads, ROUND_SECS);
    }
}

/// The one-minute load average (Linux), or -1 where unknown.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(-1.0)
}

/// Copy-on-write shards: `ArcSwap` snapshots of small maps; a write copies one shard.
struct Sharded {
    shards: Box<[ArcSwap<std::collections::HashMap<HaloGuid, Route, RandomState>>]>,
    mask: u64,
    hasher: RandomState,
}

impl Sharded {
    fn new(records: &[(HaloGuid, Route)], per_shard: usize) -> Self {
        let n = (records.len() / per_shard).max(1).next_power_of_two();
        let hasher = RandomState::default();
        let mut maps: Vec<std::collections::HashMap<HaloGuid, Route, RandomState>> = (0..n)
            .map(|_| std::collections::HashMap::with_hasher(RandomState::default()))
            .collect();
        let mask = n as u64 - 1;
        for (h, r) in records {
            maps[(hasher.hash_one(h) & mask) as usize].insert(*h, r.clone());
        }
        Self {
            shards: maps.into_iter().map(ArcSwap::from_pointee).collect(),
            mask,
            hasher,
        }
    }

    fn shard(
        &self,
        h: &HaloGuid,
    ) -> &ArcSwap<std::collections::HashMap<HaloGuid, Route, RandomState>> {
        &self.shards[(self.hasher.hash_one(h) & self.mask) as usize]
    }

    fn ok(&self, h: &HaloGuid) -> bool {
        let shard = self.shard(h).load();
        shard.get(h).is_some_and(|r| r.is_authoritative())
    }

    fn insert(&self, h: HaloGuid, r: Route) {
        let cell = self.shard(&h);
        let mut copy = (**cell.load()).clone();
        copy.insert(h, r);
        cell.store(Arc::new(copy));
    }
}

/// Lookup-only throughput (resolve plus the authority flag; no writer) of the
/// candidate lock-free tables, and the cost of one write to each at this size: the
/// measurement behind the table choice.
fn candidates(fx: &Fixture, threads: usize, secs: f64) {
    let records = fx.records();
    let papaya_map: papaya::HashMap<HaloGuid, Route, RandomState> =
        papaya::HashMap::with_capacity_and_hasher(records.len(), RandomState::default());
    let scc_map: scc::HashIndex<HaloGuid, Route, RandomState> =
        scc::HashIndex::with_capacity_and_hasher(records.len(), RandomState::default());
    let mut plain =
        std::collections::HashMap::with_capacity_and_hasher(records.len(), RandomState::default());
    for (h, r) in records {
        papaya_map.pin().insert(*h, r.clone());
        let _ = scc_map.insert_sync(*h, r.clone());
        plain.insert(*h, r.clone());
    }
    let sharded = Sharded::new(records, 64);
    let snapshot = ArcSwap::from_pointee(plain);

    let run = |lookup: &(dyn Fn(&HaloGuid) -> bool + Sync)| -> f64 {
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let stop = &stop;
                    s.spawn(move || {
                        let mut rng = Rng::new(0xabc ^ (t as u64 + 7));
                        let mut ops = 0u64;
                        let started = Instant::now();
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            for _ in 0..64 {
                                let h = fx.halos[rng.below(fx.halos.len())];
                                black_box(lookup(black_box(&h)));
                            }
                            ops += 64;
                        }
                        ops as f64 / started.elapsed().as_secs_f64()
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_secs_f64(secs));
            stop.store(true, std::sync::atomic::Ordering::Release);
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        })
    };
    let mut rates = [0.0f64; 4];
    let rounds = 3;
    for _ in 0..rounds {
        rates[0] += run(&|h| {
            let g = papaya_map.guard();
            papaya_map.get(h, &g).is_some_and(|r| r.is_authoritative())
        });
        rates[1] += run(&|h| {
            scc_map
                .peek_with(h, |_, r| r.is_authoritative())
                .unwrap_or(false)
        });
        rates[2] += run(&|h| snapshot.load().get(h).is_some_and(|r| r.is_authoritative()));
        rates[3] += run(&|h| sharded.ok(h));
    }
    let (_, base) = &records[1];
    let time_write = |f: &dyn Fn()| {
        let n = 50;
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    let papaya_write = time_write(&|| {
        papaya_map.pin().insert(base.halo_guid(), base.clone());
    });
    let scc_write = time_write(&|| {
        let _ = scc_map.remove_sync(&base.halo_guid());
        let _ = scc_map.insert_sync(base.halo_guid(), base.clone());
    });
    let snap_write = time_write(&|| {
        let mut copy = (**snapshot.load()).clone();
        copy.insert(base.halo_guid(), base.clone());
        snapshot.store(Arc::new(copy));
    });
    let sharded_write = time_write(&|| sharded.insert(base.halo_guid(), base.clone()));
    let r = |x: f64| x / f64::from(rounds);
    println!(
        "{{\"candidates\":true,\"sites\":{},\"threads\":{},\"papaya\":{:.0},\"scc_hashindex\":{:.0},\"arcswap_snapshot\":{:.0},\"arcswap_sharded64\":{:.0},\"papaya_write_us\":{:.2},\"scc_write_us\":{:.2},\"arcswap_snapshot_write_us\":{:.1},\"arcswap_sharded64_write_us\":{:.2}}}",
        fx.halos.len(),
        threads,
        r(rates[0]),
        r(rates[1]),
        r(rates[2]),
        r(rates[3]),
        papaya_write,
        scc_write,
        snap_write,
        sharded_write,
    );
}
