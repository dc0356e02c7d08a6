//! Decoding the Cloud's log records: the one-pass `Record` decoder against serde's
//! internally tagged derive it replaced (kept here as the baseline), on the same
//! JSON lines in the same run. Prints one JSON line.
//!
//! `cargo run --release -p halo-cloud --example record_decode_bench -- [RECORDS]`
#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark: any failure aborts the run

use std::time::Instant;

use halo_cloud::Record;
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType, Timestamp};
use halo_tenancy::{Catalogue, Event, LogEntry, SiteIdentity};
use serde::Deserialize;

/// The derive the decoder replaced (tenancy records only are decoded here).
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum Derived {
    Tenancy(LogEntry),
}

fn lines(n: usize) -> Vec<Vec<u8>> {
    let at = Timestamp::from_millis(1_800_000_000_000);
    (0..n)
        .map(|i| {
            let link = LinkGuid::from_u128(1 + (i / 1000) as u128).unwrap();
            let halo_guid = HaloGuid::from_u128(0x1000_0000_0000 + i as u128).unwrap();
            let event = if i % 2 == 0 {
                Event::SiteAttached {
                    link,
                    halo_guid,
                    identity: SiteIdentity {
                        pms_type: PmsType::D4w,
                        parent_crn: format!("P{i:07}").parse::<Crn>().unwrap(),
                        branch_crns: Vec::new(),
                        practice_name: format!("Practice number {i}"),
                        pms_version: "D4W 15.4.2".into(),
                        catalogues: vec![Catalogue {
                            name: "d4w".into(),
                            is_default: true,
                        }],
                        is_demo: false,
                    },
                }
            } else if i % 1000 == 1 {
                Event::LinkRegistered {
                    link,
                    environment: Environment::Production,
                    version: "2.4.1".into(),
                }
            } else {
                Event::SiteReady { link, halo_guid }
            };
            serde_json::to_vec(&Record::Tenancy(LogEntry::new(at, event))).unwrap()
        })
        .collect()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(500_000, |a| a.parse().unwrap());
    let lines = lines(n);
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t = Instant::now();
        let ours: u64 = lines
            .iter()
            .map(|l| match serde_json::from_slice::<Record>(l).unwrap() {
                Record::Tenancy(entry) => entry.at.as_millis() & 1,
                _ => panic!("not a tenancy record"),
            })
            .sum();
        let ours_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let theirs: u64 = lines
            .iter()
            .map(|l| {
                let Derived::Tenancy(entry) = serde_json::from_slice::<Derived>(l).unwrap();
                entry.at.as_millis() & 1
            })
            .sum();
        let theirs_s = t.elapsed().as_secs_f64();
        assert_eq!(ours, theirs);
        best = (best.0.min(ours_s), best.1.min(theirs_s));
    }
    println!(
        "{{\"bench\":\"record_decode\",\"records\":{n},\"one_pass_records_per_s\":{:.0},\"derive_records_per_s\":{:.0},\"one_pass_vs_derive_speed\":{:.2}}}",
        n as f64 / best.0,
        n as f64 / best.1,
        best.1 / best.0
    );
}
