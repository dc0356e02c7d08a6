//! The router's bulk load ([`Router::load_sites`]) of a large registry, as a start or
//! a recovery runs it: a fresh router, its table built from every site in one
//! publication.
//!
//! ```text
//! cargo run --release -p halo-router --example load_bench -- [SITES] [--rounds N]
//! ```
//!
//! Builds a registry of SITES sites (default 1 000 000; 1 000 per Link, every site
//! ready, each its own practice, as `halo-cloud`'s `recovery_bench`), then loads it
//! into a fresh router `--rounds` times (default 5). Prints one JSON line: the wall
//! time and the process's CPU time (every thread: the load runs two) of each round,
//! and their medians, with the load average before and after. Dropping the router
//! between rounds is not timed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType, Timestamp};
use halo_router::{Router, RouterConfig};
use halo_tenancy::{Catalogue, Event, Registry, SiteIdentity};

/// The process's CPU time (user and system, every thread, finished ones included),
/// in seconds, from `/proc/self/stat` (clock ticks of 10 ms); 0 where unknown.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces: the fields start after its closing bracket.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    ticks(11)
        .zip(ticks(12))
        .map_or(0.0, |(u, s)| (u + s) / 100.0)
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(0.0)
}

fn registry(sites: usize) -> Registry {
    let now = Timestamp::from_millis(1_800_000_000_000);
    let mut registry = Registry::new();
    registry.reserve(sites, sites / 1000 + 1);
    for i in 0..sites {
        let link = LinkGuid::from_u128(1 + (i / 1000) as u128).unwrap();
        if i % 1000 == 0 {
            let event = Event::LinkRegistered {
                link,
                environment: Environment::Production,
                version: "2.4.1".into(),
            };
            registry.apply(&event, now).unwrap();
        }
        let halo_guid = HaloGuid::from_u128(0x1000_0000_0000 + i as u128).unwrap();
        let crn: Crn = format!("P{i:07}").parse().unwrap();
        let attach = Event::SiteAttached {
            link,
            halo_guid,
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
        };
        registry.apply(&attach, now).unwrap();
        registry
            .apply(&Event::SiteReady { link, halo_guid }, now)
            .unwrap();
    }
    registry
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let mut sites = 1_000_000;
    let mut rounds = 5;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or(rounds),
            n => sites = n.parse().expect("SITES is a number"),
        }
    }
    let registry = registry(sites);
    let load_before = load1();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let router = Router::new(RouterConfig::standard());
        let (started, cpu0) = (Instant::now(), process_cpu());
        router.load_sites(&registry);
        wall.push(started.elapsed().as_secs_f64());
        cpu.push(process_cpu() - cpu0);
        assert_eq!(router.site_count(), sites);
        drop(router);
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "{{\"sites\":{sites},\"wall_s\":[{}],\"cpu_s\":[{}],\"wall_median_s\":{:.3},\"cpu_median_s\":{:.3},\"load1_before\":{load_before:.2},\"load1_after\":{:.2}}}",
        list(&wall),
        list(&cpu),
        median(&wall),
        median(&cpu),
        load1(),
    );
}
