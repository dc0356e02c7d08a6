//! Recovery time and on-disk size for a large Cloud state.
//!
//! Registers N sites (default 1 000 000; 1 000 per Link, as on multi-tenant
//! clusters) through the Cloud's durable writer, in batches, then reopens the data
//! directory and times recovery, twice: from the log alone, and from a snapshot plus
//! an empty tail. The baseline is applying the same events to an in-memory registry
//! with no log. Prints one JSON line.
//!
//! `cargo run --release -p halo-cloud --example recovery_bench -- [SITES] [--keep DIR]`
//!
//! With `--keep DIR`, the first run leaves its log and snapshot in DIR, and later
//! runs time recovery from that snapshot (on a fresh copy of DIR) and writing the
//! next one, so that two builds can be timed alternately in little time (each with
//! a DIR of its own: the snapshot format may differ). `--recover-only` (with
//! `--keep`) times only the recovery from the kept snapshot, for profiling;
//! `--refresh` (with `--keep`) writes a new snapshot into DIR in this build's format.
#![allow(clippy::unwrap_used)] // a benchmark: any failure aborts the run

use std::sync::Arc;
use std::time::Instant;

use halo_cloud::state::RecoveryTimings;
use halo_cloud::{CloudState, StateConfig};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType, Timestamp};
use halo_router::{Router, RouterConfig};
use halo_tenancy::{AvailabilityConfig, Catalogue, Event, Registry, SiteIdentity};

fn events(sites: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(sites * 3 + sites / 1000 + 1);
    for i in 0..sites {
        let link = LinkGuid::from_u128(1 + (i / 1000) as u128).unwrap();
        if i % 1000 == 0 {
            out.push(Event::LinkRegistered {
                link,
                environment: Environment::Production,
                version: "2.4.1".into(),
            });
        }
        let site = HaloGuid::from_u128(0x1000_0000_0000 + i as u128).unwrap();
        let crn: Crn = format!("P{i:07}").parse().unwrap();
        out.push(Event::SiteAttached {
            link,
            halo_guid: site,
            identity: SiteIdentity {
                pms_type: PmsType::D4w,
                parent_crn: crn,
                branch_crns: Vec::new(),
                practice_name: format!("Practice number {i}"),
                pms_version: "D4W 15.4.2".into(),
                catalogues: vec![Catalogue {
                    name: "d4w".into(),
                    is_default: true,
                }],
                is_demo: false,
            },
        });
        out.push(Event::SiteReady {
            link,
            halo_guid: site,
        });
    }
    out
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn open(dir: &std::path::Path, snapshot_every: u64) -> (CloudState, f64) {
    let (state, took) = open_timed(dir, snapshot_every);
    (state, took.total.as_secs_f64())
}

fn open_timed(dir: &std::path::Path, snapshot_every: u64) -> (CloudState, RecoveryTimings) {
    let started = Instant::now();
    let state = CloudState::open(
        &StateConfig {
            data_dir: Some(dir.to_path_buf()),
            snapshot_every,
            availability: AvailabilityConfig::default(),
            accept_damaged_log: false,
        },
        Arc::new(Router::new(RouterConfig::standard())),
    )
    .unwrap();
    let mut timings = state.recovery_timings();
    timings.total = started.elapsed();
    (state, timings)
}

/// One entry of the router's table: a Halo GUID and its record.
const ROUTE_ENTRY: usize = std::mem::size_of::<(HaloGuid, halo_router::Route)>();

/// A floor for the router's part of a recovery: filling two pre-sized hash tables
/// (left-right's two copies) of `sites` entries the size of the router's, keyed by
/// GUID, with nothing to decide and nothing to look up. Whatever the code does, the
/// table cannot be built faster than its memory can be faulted in and written.
fn route_table_floor(sites: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..2 {
        let mut table: std::collections::HashMap<
            u128,
            [u8; ROUTE_ENTRY - 16],
            foldhash::fast::RandomState,
        > = std::collections::HashMap::with_capacity_and_hasher(sites, Default::default());
        for i in 0..sites {
            table.insert(0x1000_0000_0000 + i as u128, [i as u8; ROUTE_ENTRY - 16]);
        }
        std::hint::black_box(&table);
    }
    started.elapsed().as_secs_f64()
}

/// The phases of one recovery, in seconds.
fn phases(t: &RecoveryTimings) -> serde_json::Value {
    serde_json::json!({
        "read_decode": t.read.as_secs_f64(),
        "audit": t.audit.as_secs_f64(),
        "restore": t.restore.as_secs_f64(),
        "replay": t.replay.as_secs_f64(),
        "publish": t.publish.as_secs_f64(),
        "publish_router": t.router.as_secs_f64(),
        "publish_readers_copy": t.readers_copy.as_secs_f64(),
        "total": t.total.as_secs_f64(),
    })
}

/// Copies every file of `from` into `to` (a log directory is flat).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Writes `events` through the durable writer; returns the seconds it took.
fn write_log(dir: &std::path::Path, events: &[Event], now: Timestamp) -> f64 {
    let (state, _) = open(dir, 0);
    let started = Instant::now();
    for chunk in events.chunks(3000) {
        assert!(
            state
                .apply_tenancy(chunk.to_vec(), now)
                .wait()
                .iter()
                .all(Result::is_ok)
        );
    }
    let write_s = started.elapsed().as_secs_f64();
    drop(state);
    write_s
}

/// Recovers from the log alone, then writes a snapshot; returns both times, and the
/// phases of the recovery.
fn replay_and_snapshot(dir: &std::path::Path, sites: usize) -> (f64, f64, RecoveryTimings) {
    let (state, timings) = open_timed(dir, 0);
    let replay_s = timings.total.as_secs_f64();
    assert_eq!(state.registry().site_count(), sites);
    let started = Instant::now();
    state.snapshot_now().wait().unwrap();
    let snapshot_s = started.elapsed().as_secs_f64();
    drop(state);
    (replay_s, snapshot_s, timings)
}

fn main() {
    let mut sites = 1_000_000;
    let mut keep = None;
    let mut recover_only = false;
    let mut refresh = false;
    let usage = |problem: &str| -> ! {
        eprintln!(
            "recovery_bench: {problem}\nusage: recovery_bench [SITES] [--keep DIR [--recover-only | --refresh]]"
        );
        std::process::exit(2);
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--keep" => match args.next() {
                Some(dir) => keep = Some(std::path::PathBuf::from(dir)),
                None => usage("--keep needs a directory"),
            },
            "--recover-only" => recover_only = true,
            "--refresh" => refresh = true,
            "-h" | "--help" => usage("times recovery of a large Cloud state"),
            n => match n.parse() {
                Ok(n) if n > 0 => sites = n,
                _ => usage(&format!("{n:?} is neither an option nor a site count")),
            },
        }
    }
    if (recover_only || refresh) && keep.is_none() {
        usage("--recover-only and --refresh need --keep DIR, filled by a run before");
    }
    if refresh {
        let kept = keep.expect("--refresh needs --keep DIR, filled by a run before");
        let (state, _) = open(&kept, 0);
        state.snapshot_now().wait().unwrap();
        return;
    }
    if recover_only {
        let kept = keep.expect("--recover-only needs --keep DIR, filled by a run before");
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&kept, dir.path());
        let (state, timings) = open_timed(dir.path(), 0);
        assert_eq!(state.registry().site_count(), sites);
        drop(state);
        println!(
            "{}",
            serde_json::json!({
                "sites": sites,
                "phases": phases(&timings),
                "route_table_floor_s": route_table_floor(sites),
            })
        );
        return;
    }
    let events = events(sites);
    let now = Timestamp::from_millis(1_800_000_000_000);

    let started = Instant::now();
    let mut baseline = Registry::new();
    for e in &events {
        baseline.apply(e, now).unwrap();
    }
    let baseline_s = started.elapsed().as_secs_f64();
    drop(baseline);

    let dir = tempfile::tempdir().unwrap();
    let (mut write_s, mut replay_s, mut replay_phases) = (None, None, None);
    let snapshot_s;
    let mut log_bytes = None;
    let mut snapshot_bytes = None;
    let snapshot_recovery = match &keep {
        None => {
            write_s = Some(write_log(dir.path(), &events, now));
            log_bytes = Some(dir_size(dir.path()));
            let (r, s, p) = replay_and_snapshot(dir.path(), sites);
            (replay_s, snapshot_s, replay_phases) = (Some(r), Some(s), Some(phases(&p)));
            snapshot_bytes = Some(dir_size(dir.path()) - log_bytes.unwrap_or(0));
            let (state, recovered) = open_timed(dir.path(), 0);
            assert_eq!(state.registry().site_count(), sites);
            recovered
        }
        Some(kept) => {
            let done = kept.join(format!("done-{sites}"));
            if !done.exists() {
                std::fs::create_dir_all(kept).unwrap();
                write_s = Some(write_log(kept, &events, now));
                let (r, _, p) = replay_and_snapshot(kept, sites);
                (replay_s, replay_phases) = (Some(r), Some(phases(&p)));
                std::fs::write(&done, b"").unwrap();
            }
            copy_dir(kept, dir.path());
            let (state, recovered) = open_timed(dir.path(), 0);
            assert_eq!(state.registry().site_count(), sites);
            let started = Instant::now();
            state.snapshot_now().wait().unwrap();
            snapshot_s = Some(started.elapsed().as_secs_f64());
            drop(state);
            recovered
        }
    };
    let snapshot_recovery_s = snapshot_recovery.total.as_secs_f64();
    let floor_s = route_table_floor(sites);
    println!(
        "{}",
        serde_json::json!({
            "sites": sites,
            "events": events.len(),
            "baseline_apply_s": baseline_s,
            "durable_write_s": write_s,
            "recover_from_log_s": replay_s,
            "recover_from_log_phases_s": replay_phases,
            "write_snapshot_s": snapshot_s,
            "recover_from_snapshot_s": snapshot_recovery_s,
            "recover_from_snapshot_phases_s": phases(&snapshot_recovery),
            "route_table_floor_s": floor_s,
            "log_bytes_per_site": log_bytes.map(|b| b as f64 / sites as f64),
            "snapshot_bytes_per_site": snapshot_bytes.map(|b| b as f64 / sites as f64),
            "recover_from_log_vs_baseline": replay_s.map(|s| s / baseline_s),
            "recover_from_snapshot_vs_baseline": snapshot_recovery_s / baseline_s,
        })
    );
}
