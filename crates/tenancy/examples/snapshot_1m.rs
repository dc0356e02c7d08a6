//! Snapshot size and speed for a 1 000 000-site registry, against replaying its events.
//!
//! Run (release): `cargo run --release -p halo-tenancy --example snapshot_1m`.
//!
//! Builds the same mix as `benches/registry_build.rs` (100 clusters of 1 000
//! databases, 800 000 single servers, every fifth with two branch CRNs, 100 000
//! backups sharing a CRN; about 3.9 million events). The baseline is recovery by
//! replaying the event log: each event is written as a JSON log line and decoded
//! again, and the decode and the apply are timed separately (so the figures include
//! about 50 ns per event of timer overhead). Then it times `to_snapshot`, JSON
//! encoding, JSON decoding and `from_snapshot`, checks that the restored registry
//! equals the original and prints sizes and ratios.
//!
//! Results, 2026-11-27, 2-core VM shared with five other builds (load average ~6;
//! ratios are to the replay measured in the same run):
//!
//! | measurement | result | vs replaying the log (13.3 s) |
//! | --- | --- | --- |
//! | event log, 3.8M JSON lines | 717 MiB, 752 bytes/site | |
//! | snapshot JSON | 331 MiB, 347 bytes/site | 0.46x the log's size |
//! | write: `to_snapshot` 0.37 s + JSON encode 1.13 s | 1.50 s | 0.11x |
//! | restore: JSON decode 1.72 s + `from_snapshot` 2.98 s | 4.70 s | 0.35x (2.8x faster) |
//! | replay: JSON decode 6.35 s + apply 6.97 s | 13.3 s | 1x |

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use halo_ids::Timestamp;
use halo_tenancy::{LogEntry, Registry, RegistrySnapshot};

use halo_test_support::million::{SITES, events};

/// Replays the log through JSON lines: (registry, events, log bytes, decode, apply).
fn replay() -> (Registry, u64, u64, Duration, Duration) {
    let mut reg = Registry::new();
    let (mut decode, mut apply) = (Duration::ZERO, Duration::ZERO);
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut line = Vec::with_capacity(512);
    for (n, event) in events().enumerate() {
        let at = Timestamp::from_millis(1_700_000_000_000 + n as u64);
        line.clear();
        serde_json::to_writer(&mut line, &LogEntry::new(at, event)).unwrap();
        bytes += line.len() as u64 + 1;
        let t = Instant::now();
        let entry: LogEntry = serde_json::from_slice(&line).unwrap();
        let t2 = Instant::now();
        reg.apply(&entry.event, entry.at).unwrap();
        apply += t2.elapsed();
        decode += t2 - t;
        count += 1;
    }
    (reg, count, bytes, decode, apply)
}

fn main() {
    let (reg, events, log_bytes, decode, apply) = replay();
    assert_eq!(reg.site_count(), SITES as usize);
    let replay_total = decode + apply;
    println!(
        "replay baseline: {events} events, log {:.0} MiB ({:.0} bytes/site); \
         JSON decode {decode:.2?} + apply {apply:.2?} = {replay_total:.2?}",
        log_bytes as f64 / 1048576.0,
        log_bytes as f64 / f64::from(SITES)
    );

    let t = Instant::now();
    let snapshot = reg.to_snapshot();
    let to_snapshot = t.elapsed();
    let t = Instant::now();
    let json = serde_json::to_vec(&snapshot).unwrap();
    let encode = t.elapsed();
    drop(snapshot);
    let t = Instant::now();
    let decoded: RegistrySnapshot = serde_json::from_slice(&json).unwrap();
    let json_decode = t.elapsed();
    let t = Instant::now();
    let restored = Registry::from_snapshot(decoded).unwrap();
    let from_snapshot = t.elapsed();
    let t = Instant::now();
    assert!(restored == reg, "restored registry differs");
    let compare = t.elapsed();

    let write = to_snapshot + encode;
    let restore = json_decode + from_snapshot;
    println!(
        "snapshot: {:.0} MiB JSON, {:.0} bytes/site ({:.2}x the log's size)",
        json.len() as f64 / 1048576.0,
        json.len() as f64 / f64::from(SITES),
        json.len() as f64 / log_bytes as f64
    );
    println!(
        "  write: to_snapshot {to_snapshot:.2?} + JSON encode {encode:.2?} = {write:.2?} \
         ({:.2}x replay time)",
        write.as_secs_f64() / replay_total.as_secs_f64()
    );
    println!(
        "  restore: JSON decode {json_decode:.2?} + from_snapshot {from_snapshot:.2?} = \
         {restore:.2?} ({:.2}x replay time, {:.1}x faster)",
        restore.as_secs_f64() / replay_total.as_secs_f64(),
        replay_total.as_secs_f64() / restore.as_secs_f64()
    );
    println!("  restored == original: checked in {compare:.2?}");
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse::<f64>().ok()))
        .unwrap_or(-1.0);
    println!(
        "{{\"bench\":\"snapshot_1m\",\"sites\":{SITES},\"events\":{events},\"load1\":{load1:.2},\"replay_decode_s\":{:.3},\"replay_apply_s\":{:.3},\"replay_events_per_s\":{:.0},\"apply_events_per_s\":{:.0},\"snapshot_bytes_per_site\":{:.0},\"to_snapshot_s\":{:.3},\"encode_s\":{:.3},\"decode_s\":{:.3},\"from_snapshot_s\":{:.3},\"restore_s\":{:.3},\"from_snapshot_vs_apply\":{:.3},\"restore_vs_replay\":{:.3},\"target_restore_s\":1.5,\"target_replay_events_per_s\":2000000}}",
        decode.as_secs_f64(),
        apply.as_secs_f64(),
        events as f64 / replay_total.as_secs_f64(),
        events as f64 / apply.as_secs_f64(),
        json.len() as f64 / f64::from(SITES),
        to_snapshot.as_secs_f64(),
        encode.as_secs_f64(),
        json_decode.as_secs_f64(),
        from_snapshot.as_secs_f64(),
        restore.as_secs_f64(),
        from_snapshot.as_secs_f64() / apply.as_secs_f64(),
        restore.as_secs_f64() / replay_total.as_secs_f64(),
    );
}
