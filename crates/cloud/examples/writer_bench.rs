//! Durable writes per second through the Cloud's writer, with fsync on, and the
//! memory one copy of the registry takes.
//!
//! Writes: N policy changes (default 2 000) on a fresh data directory, first one
//! caller at a time (each waits for its answer before sending the next: the
//! throughput of a writer that holds a lock across each fsync, as before the writer
//! thread, whatever the number of callers), then from C concurrent callers (default
//! 64), whose changes the writer commits in groups. An append hook counts the
//! appends (one fsync each).
//!
//! Memory: how much the resident set grows when a `Registry` of S sites (default
//! 100 000) is cloned, the cost of the readers' published copy.
//!
//! `cargo run --release -p halo-cloud --example writer_bench -- [N] [C] [S]`
//! Prints one JSON line.
#![allow(clippy::unwrap_used)] // a benchmark: any failure aborts the run

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use halo_cloud::state::AppendHook;
use halo_cloud::{CloudState, StateConfig};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};
use halo_policy::{IntegratorId, PolicyEvent};
use halo_router::{Router, RouterConfig};
use halo_tenancy::{AvailabilityConfig, Catalogue, Event, Registry, SiteIdentity};

/// Resident memory of this process, in bytes (Linux; 0 elsewhere).
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn grant(i: usize) -> PolicyEvent {
    PolicyEvent::PracticeEnabled {
        integrator: "bench".parse::<IntegratorId>().unwrap(),
        pms_id: PmsId::new(PmsType::D4w, format!("W{i:07}").parse().unwrap()),
    }
}

fn open(dir: &std::path::Path, appends: &Arc<AtomicUsize>) -> CloudState {
    let counter = Arc::clone(appends);
    let hook: AppendHook = Arc::new(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    CloudState::open_with_hook(
        &StateConfig {
            data_dir: Some(dir.to_path_buf()),
            snapshot_every: 0,
            availability: AvailabilityConfig::default(),
            accept_damaged_log: false,
        },
        Arc::new(Router::new(RouterConfig::standard())),
        Some(hook),
    )
    .unwrap()
}

fn registry_bytes_per_site(sites: usize) -> f64 {
    let mut registry = Registry::new();
    let link = LinkGuid::from_u128(1).unwrap();
    registry
        .apply(
            &Event::LinkRegistered {
                link,
                environment: Environment::Production,
                version: "2.4.1".into(),
            },
            NOW,
        )
        .unwrap();
    for i in 0..sites {
        let site = HaloGuid::from_u128(0x1000_0000_0000 + i as u128).unwrap();
        let crn: Crn = format!("P{i:07}").parse().unwrap();
        let identity = SiteIdentity {
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
        };
        registry
            .apply(
                &Event::SiteAttached {
                    link,
                    halo_guid: site,
                    identity,
                },
                NOW,
            )
            .unwrap();
        registry
            .apply(
                &Event::SiteReady {
                    link,
                    halo_guid: site,
                },
                NOW,
            )
            .unwrap();
    }
    let before = rss();
    let copy = registry.clone();
    let bytes = rss().saturating_sub(before);
    drop(copy);
    bytes as f64 / sites as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let changes: usize = args.next().map_or(2000, |a| a.parse().unwrap());
    let callers: usize = args.next().map_or(64, |a| a.parse().unwrap());
    let sites: usize = args.next().map_or(100_000, |a| a.parse().unwrap());

    // One caller at a time.
    let dir = tempfile::tempdir().unwrap();
    let appends = Arc::new(AtomicUsize::new(0));
    let state = open(dir.path(), &appends);
    let started = Instant::now();
    for i in 0..changes {
        state.apply_policy(grant(i), NOW).wait().unwrap();
    }
    let serial_s = started.elapsed().as_secs_f64();
    let serial_appends = appends.swap(0, Ordering::Relaxed);
    drop(state);

    // Many callers at once.
    let dir = tempfile::tempdir().unwrap();
    let state = open(dir.path(), &appends);
    let per_caller = changes / callers;
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..callers {
            let state = &state;
            s.spawn(move || {
                for i in 0..per_caller {
                    state
                        .apply_policy(grant(c * per_caller + i), NOW)
                        .wait()
                        .unwrap();
                }
            });
        }
    });
    let concurrent_s = started.elapsed().as_secs_f64();
    let concurrent_appends = appends.swap(0, Ordering::Relaxed);
    drop(state);

    println!(
        "{}",
        serde_json::json!({
            "changes": changes,
            "serial_writes_per_s": changes as f64 / serial_s,
            "serial_appends": serial_appends,
            "callers": callers,
            "concurrent_changes": per_caller * callers,
            "concurrent_writes_per_s": (per_caller * callers) as f64 / concurrent_s,
            "concurrent_appends": concurrent_appends,
            "sites": sites,
            "registry_copy_bytes_per_site": registry_bytes_per_site(sites),
        })
    );
}
