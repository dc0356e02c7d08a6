//! Recovery time and on-disk size for a large Cloud state.
//!
//! Registers N sites (default 1 000 000; 1 000 per Link, as on multi-tenant
//! clusters) through the Cloud's durable writer, in batches, then reopens the data
//! directory and times recovery, twice: from the log alone, and from a snapshot plus
//! an empty tail. The baseline is applying the same events to an in-memory registry
//! with no log. Prints one JSON line.
//!
//! `cargo run --release -p halo-cloud --example recovery_bench -- [SITES]`
#![allow(clippy::unwrap_used)] // a benchmark: any failure aborts the run

use std::sync::Arc;
use std::time::Instant;

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
    (state, started.elapsed().as_secs_f64())
}

fn main() {
    let sites: usize = std::env::args()
        .nth(1)
        .map_or(1_000_000, |a| a.parse().unwrap());
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
    let (state, _) = open(dir.path(), 0);
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
    let log_bytes = dir_size(dir.path());

    let (state, replay_s) = open(dir.path(), 0);
    assert_eq!(state.registry().site_count(), sites);
    let snap_started = Instant::now();
    state.snapshot_now().wait().unwrap();
    let snapshot_s = snap_started.elapsed().as_secs_f64();
    drop(state);
    let total_bytes = dir_size(dir.path());

    let (state, snapshot_recovery_s) = open(dir.path(), 0);
    assert_eq!(state.registry().site_count(), sites);
    println!(
        "{}",
        serde_json::json!({
            "sites": sites,
            "events": events.len(),
            "baseline_apply_s": baseline_s,
            "durable_write_s": write_s,
            "recover_from_log_s": replay_s,
            "write_snapshot_s": snapshot_s,
            "recover_from_snapshot_s": snapshot_recovery_s,
            "log_bytes_per_site": log_bytes as f64 / sites as f64,
            "snapshot_bytes_per_site": (total_bytes - log_bytes) as f64 / sites as f64,
            "recover_from_log_vs_baseline": replay_s / baseline_s,
            "recover_from_snapshot_vs_baseline": snapshot_recovery_s / baseline_s,
        })
    );
}
