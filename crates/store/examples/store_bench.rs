//! Throughput, recovery time and on-disk size of the SQLite store.
//!
//! Run: `cargo run --release -p halo-store --example store_bench [-- RECORDS [DIR]]`
//! (RECORDS defaults to 1 000 000; DIR to a fresh temp dir on the system temp disk).
//! Every figure is printed next to its baseline measured in the same run.
//!
//! Latest run (2026-11-27, shared 2-core VM, ext4 on virtio, other builds running;
//! fsync latency there swings from 0.05 to 6 ms with the other IO, so the
//! single-append figures are the noisiest), 1 000 000 records of 167 bytes JSON:
//!
//! | measure | value | baseline | ratio |
//! | --- | --- | --- | --- |
//! | single append, fsync'd | 165/s (6.1 ms) | unsynced 10 400/s | 63x slower |
//! | batched append, 1000/txn, fsync'd | 114 785 records/s | single fsync'd | 696x faster |
//! | log on disk | 187 B/record | JSON 167 B/record | 1.12x |
//! | recover 1M events, no snapshot | 2.32 s | in-memory JSON parse 1.15 s | 2.0x |
//! | scan + CRC only | 0.88 s | in-memory JSON parse 1.15 s | 0.76x |
//! | write 1M-site snapshot (277 MB) | 4.9 s | - | - |
//! | snapshot on disk | 277 B/site | JSON 277 B/site | 1.00x |
//! | recover from 1M-site snapshot | 2.22 s | in-memory JSON parse 1.85 s | 1.20x |
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use halo_store::{Durability, EventLog, Seq, SqliteLog, Store, StoreConfig};
use serde::{Deserialize, Serialize};

/// A tenancy-like event, about 150 bytes of JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    v: u8,
    kind: String,
    halo_guid: String,
    link_guid: String,
    crn: String,
    at: u64,
}

/// A site as a snapshot would hold it, about 230 bytes of JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Site {
    halo_guid: String,
    link_guid: String,
    pms_type: String,
    crn: String,
    practice_name: String,
    status: String,
    authoritative: bool,
    epoch: u64,
    catalogues: Vec<String>,
    last_heard: u64,
}

type State = Vec<Site>;

fn guid(i: u64, salt: u64) -> String {
    let a = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    let b = a.rotate_left(17).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b & 0xfff,
        b >> 16
    )
}

fn event(i: u64) -> Event {
    Event {
        v: 1,
        kind: "siteRegistered".to_owned(),
        halo_guid: guid(i, 1),
        link_guid: guid(i / 4, 2),
        crn: format!("C{:07}", i % 10_000_000),
        at: 1_764_000_000_000 + i,
    }
}

fn site(i: u64) -> Site {
    Site {
        halo_guid: guid(i, 1),
        link_guid: guid(i / 4, 2),
        pms_type: "D4w".to_owned(),
        crn: format!("C{:07}", i % 10_000_000),
        practice_name: format!("Smile Dental Practice {i}"),
        status: "active".to_owned(),
        authoritative: i % 7 != 0,
        epoch: i % 5,
        catalogues: vec!["D4W".to_owned()],
        last_heard: 1_764_000_000_000 + i,
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args
        .first()
        .map_or(1_000_000, |s| s.parse().expect("RECORDS is a number"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = args.get(1).map_or(tmp.path().to_path_buf(), Into::into);
    println!(
        "halo-store bench: {n} records, data under {}",
        root.display()
    );

    // 1. Single appends, fully durable (one fsync'd transaction each) vs unsynced.
    let single_n = 1_000u64;
    let single = {
        let dir = root.join("single");
        let mut log = SqliteLog::open(&dir).unwrap();
        let bytes: Vec<Vec<u8>> = (0..single_n)
            .map(|i| serde_json::to_vec(&event(i)).unwrap())
            .collect();
        let t = Instant::now();
        for b in &bytes {
            log.append(&[b.as_slice()]).unwrap();
        }
        t.elapsed()
    };
    let single_unsynced = {
        let dir = root.join("single-unsynced");
        let mut log = SqliteLog::open_with(&dir, Durability::Unsynced).unwrap();
        let bytes: Vec<Vec<u8>> = (0..single_n)
            .map(|i| serde_json::to_vec(&event(i)).unwrap())
            .collect();
        let t = Instant::now();
        for b in &bytes {
            log.append(&[b.as_slice()]).unwrap();
        }
        t.elapsed()
    };

    // 2. Batched appends of typed events, fully durable, 1000 per transaction.
    let dir = root.join("log");
    let events: Vec<Event> = (0..n).map(event).collect();
    let json_bytes: u64 = events
        .iter()
        .map(|e| serde_json::to_vec(e).unwrap().len() as u64)
        .sum();
    let config = StoreConfig {
        snapshot_every: 0,
        keep_snapshots: 2,
    };
    let batched = {
        let (mut store, _) = Store::<Event, State>::open(&dir, config).unwrap();
        let t = Instant::now();
        for chunk in events.chunks(1_000) {
            store.append_batch(chunk).unwrap();
        }
        let d = t.elapsed();
        store.log().checkpoint().unwrap();
        d
    };
    let log_disk = dir_bytes(&dir);

    // 3. Recovery of the whole log (no snapshot) vs parsing the same JSON in memory.
    let t = Instant::now();
    let (store, recovered) = Store::<Event, State>::open(&dir, config).unwrap();
    let recovery = t.elapsed();
    assert_eq!(recovered.tail.len() as u64, n);
    assert!(recovered.report.is_complete());
    drop(recovered);
    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(n as usize);
    let t = Instant::now();
    store
        .log()
        .read_from(Seq::ZERO, &mut |_, b| {
            payloads.push(b.to_vec());
            Ok(())
        })
        .unwrap();
    let scan = t.elapsed();
    let t = Instant::now();
    let parsed: Vec<Event> = payloads
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect();
    let parse = t.elapsed();
    assert_eq!(parsed.len() as u64, n);
    drop((parsed, payloads, store, events));

    // 4. A snapshot of n sites: write, recover, vs parsing the same JSON in memory.
    let sdir = root.join("snapshot");
    let sites: State = (0..n).map(site).collect();
    let (mut store, _) = Store::<Event, State>::open(&sdir, config).unwrap();
    let upto = store.append(&event(0)).unwrap();
    let t = Instant::now();
    store.snapshot(&sites, upto).unwrap();
    let snap_write = t.elapsed();
    store.log().checkpoint().unwrap();
    drop(store);
    let snap_disk = dir_bytes(&sdir);

    // 5. Appends while a snapshot is written on another thread (StateWriter),
    //    vs the same appends with no snapshot running.
    let (mut store, _) = Store::<Event, State>::open(&sdir, config).unwrap();
    let quiet = append_latencies(&mut store, 200, None);
    let mut writer = store.snapshot_writer().unwrap();
    let upto = store.last_seq();
    let sites_bg: State = (0..n).map(site).collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let bg = std::thread::spawn(move || {
        let result = writer.write(&sites_bg, upto);
        flag.store(true, std::sync::atomic::Ordering::Release);
        result
    });
    let busy = append_latencies(&mut store, usize::MAX, Some(&done));
    bg.join().unwrap().expect("background snapshot");
    store.snapshot_written(upto);
    drop(store);
    let snap_json = serde_json::to_vec(&sites).unwrap();
    drop(sites);
    let t = Instant::now();
    let (_store, recovered) = Store::<Event, State>::open(&sdir, config).unwrap();
    let snap_recovery = t.elapsed();
    assert_eq!(recovered.snapshot.as_ref().map(Vec::len), Some(n as usize));
    drop(recovered);
    let t = Instant::now();
    let parsed: State = serde_json::from_slice(&snap_json).unwrap();
    let snap_parse = t.elapsed();
    assert_eq!(parsed.len() as u64, n);

    let nf = n as f64;
    let (quiet_n, quiet_p50, quiet_max) = quiet;
    let (busy_n, busy_p50, busy_max) = busy;
    println!();
    println!("| measure | value | baseline (same run) | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| single append, fsync'd (1 record/txn) | {:.0} appends/s ({:.2} ms each) | unsynced: {:.0} appends/s | {:.1}x slower |",
        single_n as f64 / secs(single),
        secs(single) * 1e3 / single_n as f64,
        single_n as f64 / secs(single_unsynced),
        secs(single) / secs(single_unsynced)
    );
    println!(
        "| batched append, fsync'd (1000 records/txn, typed) | {:.0} records/s | single fsync'd: {:.0} records/s | {:.0}x faster |",
        nf / secs(batched),
        single_n as f64 / secs(single),
        (nf / secs(batched)) / (single_n as f64 / secs(single))
    );
    println!(
        "| log on disk | {:.0} bytes/record ({:.1} MB) | JSON payload: {:.0} bytes/record | {:.2}x |",
        log_disk as f64 / nf,
        log_disk as f64 / 1e6,
        json_bytes as f64 / nf,
        log_disk as f64 / json_bytes as f64
    );
    println!(
        "| recover {n} events, no snapshot (open + scan + CRC + decode) | {:.2} s | JSON parse of the same bytes in memory: {:.2} s | {:.2}x |",
        secs(recovery),
        secs(parse),
        secs(recovery) / secs(parse)
    );
    println!(
        "| scan + CRC only (no decode) | {:.2} s | JSON parse: {:.2} s | {:.2}x |",
        secs(scan),
        secs(parse),
        secs(scan) / secs(parse)
    );
    println!(
        "| write snapshot of {n} sites (encode + store, fsync'd) | {:.2} s, {:.1} MB JSON | - | - |",
        secs(snap_write),
        snap_json.len() as f64 / 1e6
    );
    println!(
        "| snapshot on disk | {:.0} bytes/site ({:.1} MB) | JSON: {:.0} bytes/site | {:.2}x |",
        snap_disk as f64 / nf,
        snap_disk as f64 / 1e6,
        snap_json.len() as f64 / nf,
        snap_disk as f64 / snap_json.len() as f64
    );
    println!(
        "| fsync'd single append while a {n}-site snapshot is written by another thread | {busy_n} appends, p50 {:.1} ms, max {:.0} ms | no snapshot running ({quiet_n} appends): p50 {:.1} ms, max {:.0} ms | p50 {:.1}x, max {:.1}x |",
        secs(busy_p50) * 1e3,
        secs(busy_max) * 1e3,
        secs(quiet_p50) * 1e3,
        secs(quiet_max) * 1e3,
        secs(busy_p50) / secs(quiet_p50),
        secs(busy_max) / secs(quiet_max)
    );
    println!(
        "| recover from snapshot of {n} sites (open + read + CRC + decode) | {:.2} s | JSON parse of the same bytes in memory: {:.2} s | {:.2}x |",
        secs(snap_recovery),
        secs(snap_parse),
        secs(snap_recovery) / secs(snap_parse)
    );
}

/// Fully durable single appends: `count` of them, or until `until` turns true.
/// Returns (appends, median latency, max latency).
fn append_latencies(
    store: &mut Store<Event, State>,
    count: usize,
    until: Option<&std::sync::atomic::AtomicBool>,
) -> (usize, Duration, Duration) {
    let mut lat = Vec::new();
    let mut i = 0u64;
    while lat.len() < count {
        if until.is_some_and(|f| f.load(std::sync::atomic::Ordering::Acquire)) {
            break;
        }
        let e = event(10_000_000 + i);
        i += 1;
        let t = Instant::now();
        store.append(&e).unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let p50 = lat.get(lat.len() / 2).copied().unwrap_or_default();
    let max = lat.last().copied().unwrap_or_default();
    (lat.len(), p50, max)
}
