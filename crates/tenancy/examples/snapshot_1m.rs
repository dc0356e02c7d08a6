//! Snapshot size and speed for a 1 000 000-site registry, against replaying its events.
//!
//! Run (release): `cargo run --release -p halo-tenancy --example snapshot_1m`.
//!
//! Builds the same mix as `benches/registry_build.rs` (100 clusters of 1 000
//! databases, 800 000 single servers, every fifth with two branch CRNs, 100 000
//! backups sharing a CRN; about 3.9 million events). The baseline is recovery by
//! replaying the event log: every event is written as a JSON log line first, then
//! all lines are decoded, then all entries applied, each phase timed on its own.
//! Every phase reports wall time and the CPU time the thread got (on a shared
//! machine, the wall time includes other processes' turns); the JSON line's ratios
//! are of CPU times. Then it times `to_snapshot`, JSON
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
//!
//! 2026-12-01, same kind of VM at load average 5-6.5, CPU times (ratios to the
//! replay's 13.1 s of CPU in the same run), with the binary form and the sort-merge
//! `from_snapshot`:
//!
//! | measurement | result | vs replaying the log |
//! | --- | --- | --- |
//! | binary snapshot | 88 MiB, 92 bytes/site (0.27x the JSON) | |
//! | restore from binary: decode 0.61 s + `from_snapshot` 2.36 s | 2.97 s (5.9 s wall) | 0.23x |
//! | restore from JSON: decode 1.57 s + `from_snapshot` 2.49 s | 4.06 s | 0.31x |
//! | `from_snapshot` vs applying the events | 0.36x (was 0.66x) | |

//!
//! 2026-12-02, same kind of VM at load average 4.4-6.1, CPU times; the baseline is
//! this example built from commit 17a5823, run alternately with this build (two
//! rounds each; the two figures are the rounds):
//!
//! | measurement | this build | baseline | ratio |
//! | --- | --- | --- | --- |
//! | resident per site after applying the log | 331 B | 365 B | 0.91x |
//! | restore from binary: decode + `from_snapshot` | 1.15 s, 1.37 s | 1.65 s, 1.90 s | 0.70x, 0.72x |
//! | `from_snapshot` alone (binary) | 0.91 s, 1.10 s | 1.32 s, 1.54 s | 0.69x, 0.71x |
//! | apply one by one (`Registry::apply`) | 3.19 s, 3.62 s | 3.04 s, 3.30 s | within noise |
//! | `Registry::replay` (sized once, no change vectors) | 2.61 s, 2.57 s | (3.04 s, 3.30 s one by one) | 0.86x, 0.78x |
//! | the index-only floor of the same build | 0.82 s, 0.96 s | | replay = 2.7-3.2x the floor |
//! | JSON decode of the 3.8M log lines | 3.62 s, 4.59 s | 3.90 s, 3.78 s | unchanged code |
//!
//! A third round with the final build (the index grown from the list in order), at
//! load 4.4-4.5: apply one by one 2.71 s against the baseline's 3.28 s (0.82x),
//! `Registry::replay` 2.42 s (0.74x), floor 0.99 s; binary restore 1.38 s against
//! 1.79 s (0.77x); 331 against 365 bytes a site.
//!
//! What the targets meet: restore from a binary snapshot is under 1.5 s of CPU. A
//! build of 2 s and 300 bytes a site are not met: the floor line shows the
//! hash-index work alone at about 0.9 s, and the "memory floor" line shows that
//! the structures the public API returns by reference (`Site` 120 B, `Link` 64 B,
//! `GroupKey` + `Group` 103 B, three indexes) take 291 bytes a site before any
//! branch CRN. Replay of JSON lines at 2M events/s is out of reach: decoding the
//! JSON alone runs at about 1M events/s.
//!
//! The binary log (`LogEntry::write_binary`, as the Cloud writes tenancy records
//! since 2026-12-02, behind its 2-byte record header): the same entries are encoded,
//! decoded alone, and replayed including decoding, once on one thread and once
//! pipelined (a decoding thread hands batches of 4 096 entries through a bounded
//! channel to an applying thread, which hands them back to be freed; wall clock).
//! Both replays size the registry from the records' first bytes
//! (`LogEntry::binary_growth`) and must equal the original. 2026-12-02, six runs at
//! load 2.5–6 (ratios to the JSON figures of the same run):
//!
//! | measurement | result | vs JSON in the same run |
//! | --- | --- | --- |
//! | binary log | 180 MiB, 49.7 bytes/event | 0.25x the JSON lines' 717 MiB |
//! | decode alone | 0.64–1.08 s CPU, 3.5–6.0M events/s | JSON 2.3–3.1 s CPU, 1.2–1.7M/s |
//! | replay incl. decoding, one thread | 2.34–3.02 s CPU, 1.26–1.63M events/CPU-s | 0.45–0.63x the JSON replay's CPU |
//! | pipelined, wall | best 2.85 s = 1.33M events/s (load 4.1), 3.00 s at load 2.9 | |
//!
//! The pipeline is bound by the applying thread (2.0–2.4 s of CPU; the decoding
//! thread 0.3–0.5 s), so on two free cores its wall clock is about the apply
//! thread's CPU, 1.6–1.9M events/s here. Handing applied batches back to the
//! decoding thread to free took the applying thread from 1.0–1.26x to 0.79–0.87x
//! of applying the decoded entries alone. The 2M/s target now hangs on apply.
//!
//! 2026-12-02, evening (PERFORMANCE.md has the detail): `Group` 64 → 48 bytes, dense
//! branch claims and fewer look-ups per event. Alternated with e0ccb93 at load
//! 2.7–3.2, medians of 4: 298 vs 316 bytes a site resident (by-reference floor 262 vs
//! 277); pipelined binary replay 1.91M vs 1.52M events/s, applying thread 1.60 vs
//! 1.92 s of CPU.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Instant;

use halo_ids::Timestamp;
use halo_tenancy::{LogEntry, Registry, RegistrySnapshot};

use halo_test_support::machine;
use halo_test_support::million::{self, SITES};

/// What one phase took: wall time and the CPU time the thread got.
#[derive(Clone, Copy)]
struct Took {
    wall: f64,
    cpu: f64,
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Took) {
    let cpu = machine::thread_cpu_ns();
    let t = Instant::now();
    let out = f();
    let wall = t.elapsed().as_secs_f64();
    (
        out,
        Took {
            wall,
            cpu: machine::cpu_secs_since(cpu),
        },
    )
}

fn main() {
    let load_before = machine::load1();
    // The log as JSON lines, written before the clock starts.
    let mut log: Vec<u8> = Vec::new();
    let mut events = 0u64;
    for (n, event) in million::events().enumerate() {
        let at = Timestamp::from_millis(1_700_000_000_000 + n as u64);
        serde_json::to_writer(&mut log, &LogEntry::new(at, event)).unwrap();
        log.push(b'\n');
        events += 1;
    }
    let log_bytes = log.len() as u64;
    // Replay baseline: decode every line, then apply every entry.
    let (entries, decode) = timed(|| {
        log.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<LogEntry>(l).unwrap())
            .collect::<Vec<_>>()
    });
    drop(log);
    let rss0 = machine::rss_bytes();
    let (reg, apply) = timed(|| {
        let mut reg = Registry::new();
        for entry in &entries {
            reg.apply(&entry.event, entry.at).unwrap();
        }
        reg
    });
    let resident = machine::rss_bytes().saturating_sub(rss0);
    assert_eq!(reg.site_count(), SITES as usize);
    let by_reference = by_reference_floor(&reg);
    // The Cloud keeps a second copy for readers (`halo-cloud`'s state.rs): a clone,
    // measured while the decoded log is still held, so that it cannot reuse its room.
    let rss0 = machine::rss_bytes();
    let (readers, clone) = timed(|| reg.clone());
    let readers_resident = machine::rss_bytes().saturating_sub(rss0);
    drop(readers);
    println!(
        "registry: {:.0} bytes/site resident (RSS growth while applying); a clone (the \
         Cloud's readers' copy) {:.0} bytes/site, {:.2}s",
        resident as f64 / f64::from(SITES),
        readers_resident as f64 / f64::from(SITES),
        clone.wall
    );
    // The same log through `Registry::replay` (sized from the log once, no change
    // vectors), and the floor: only the hash-index work the registry cannot skip.
    let (replayed, replay_path) = timed(|| Registry::replay(&entries).unwrap());
    assert!(
        replayed == reg,
        "Registry::replay differs from applying one by one"
    );
    drop(replayed);
    let floor = index_floor(&entries);
    println!(
        "apply: {:.2}s CPU one by one ({:.0} events/s), {:.2}s through Registry::replay; \
         floor (the index inserts and look-ups alone) {:.2}s CPU: apply = {:.1}x the floor; \
         size_of Site {} B, Link {} B, Group {} B",
        apply.cpu,
        events as f64 / apply.cpu,
        replay_path.cpu,
        floor.cpu,
        apply.cpu / floor.cpu,
        std::mem::size_of::<halo_tenancy::Site>(),
        std::mem::size_of::<halo_tenancy::Link>(),
        std::mem::size_of::<halo_tenancy::Group>(),
    );
    println!(
        "memory floor: what the public API hands out by reference (every Site, Link, \
         group key and Group in its table, and the three hash indexes) is {by_reference:.0} \
         bytes/site before any branch CRN; measured {:.0} bytes/site resident",
        resident as f64 / f64::from(SITES),
    );
    let replay = Took {
        wall: decode.wall + apply.wall,
        cpu: decode.cpu + apply.cpu,
    };
    println!(
        "replay baseline: {events} events, log {:.0} MiB ({:.0} bytes/site); \
         JSON decode {:.2}s + apply {:.2}s = {:.2}s (CPU {:.2}s + {:.2}s)",
        log_bytes as f64 / 1048576.0,
        log_bytes as f64 / f64::from(SITES),
        decode.wall,
        apply.wall,
        replay.wall,
        decode.cpu,
        apply.cpu,
    );

    let bin = binary_replay(&entries, &reg, log_bytes, decode.cpu + apply.cpu);
    println!("{}", bin.json_line(events, load_before));

    drop(entries);
    let (snapshot, to_snapshot) = timed(|| reg.to_snapshot());
    let (json, encode) = timed(|| serde_json::to_vec(&snapshot).unwrap());
    drop(snapshot);
    let (decoded, json_decode) =
        timed(|| serde_json::from_slice::<RegistrySnapshot>(&json).unwrap());
    let (restored, from_snapshot) = timed(|| Registry::from_snapshot(decoded).unwrap());
    let t = Instant::now();
    assert!(restored == reg, "restored registry differs");
    let compare = t.elapsed();
    drop(restored);

    // The compact binary form of the same snapshot.
    let (snapshot, _) = timed(|| reg.to_snapshot());
    let (bin, bin_encode) = timed(|| snapshot.to_bytes());
    drop(snapshot);
    let (decoded, bin_decode) = timed(|| RegistrySnapshot::from_bytes(&bin).unwrap());
    let (restored, bin_from_snapshot) = timed(|| Registry::from_snapshot(decoded).unwrap());
    assert!(restored == reg, "registry restored from binary differs");
    drop(restored);
    let bin_restore = Took {
        wall: bin_decode.wall + bin_from_snapshot.wall,
        cpu: bin_decode.cpu + bin_from_snapshot.cpu,
    };
    println!(
        "binary snapshot: {:.0} MiB, {:.0} bytes/site ({:.2}x the JSON); encode {:.2}s; \
         restore: decode {:.2}s + from_snapshot {:.2}s = {:.2}s (CPU {:.2}s + {:.2}s), \
         {:.2}x the JSON restore's CPU",
        bin.len() as f64 / 1048576.0,
        bin.len() as f64 / f64::from(SITES),
        bin.len() as f64 / json.len() as f64,
        bin_encode.wall,
        bin_decode.wall,
        bin_from_snapshot.wall,
        bin_restore.wall,
        bin_decode.cpu,
        bin_from_snapshot.cpu,
        bin_restore.cpu / (json_decode.cpu + from_snapshot.cpu),
    );

    let restore = Took {
        wall: json_decode.wall + from_snapshot.wall,
        cpu: json_decode.cpu + from_snapshot.cpu,
    };
    println!(
        "snapshot: {:.0} MiB JSON, {:.0} bytes/site ({:.2}x the log's size)",
        json.len() as f64 / 1048576.0,
        json.len() as f64 / f64::from(SITES),
        json.len() as f64 / log_bytes as f64
    );
    println!(
        "  write: to_snapshot {:.2}s + JSON encode {:.2}s (CPU {:.2}s + {:.2}s)",
        to_snapshot.wall, encode.wall, to_snapshot.cpu, encode.cpu
    );
    println!(
        "  restore: JSON decode {:.2}s + from_snapshot {:.2}s = {:.2}s (CPU {:.2}s + {:.2}s); \
         {:.1}x faster than replaying the log",
        json_decode.wall,
        from_snapshot.wall,
        restore.wall,
        json_decode.cpu,
        from_snapshot.cpu,
        replay.cpu / restore.cpu,
    );
    println!("  restored == original: checked in {compare:.2?}");
    println!(
        "{{\"bench\":\"snapshot_1m\",\"sites\":{SITES},\"events\":{events},\"load1_before\":{load_before:.2},\"load1_after\":{:.2},\"replay_decode_s\":{:.3},\"replay_apply_s\":{:.3},\"replay_decode_cpu_s\":{:.3},\"replay_apply_cpu_s\":{:.3},\"replay_events_per_cpu_s\":{:.0},\"apply_events_per_cpu_s\":{:.0},\"bytes_per_site\":{:.0},\"readers_copy_bytes_per_site\":{:.0},\"apply_cpu_s\":{:.3},\"snapshot_bytes_per_site\":{:.0},\"to_snapshot_cpu_s\":{:.3},\"encode_cpu_s\":{:.3},\"decode_s\":{:.3},\"from_snapshot_s\":{:.3},\"decode_cpu_s\":{:.3},\"from_snapshot_cpu_s\":{:.3},\"restore_cpu_s\":{:.3},\"from_snapshot_vs_apply_cpu\":{:.3},\"restore_vs_replay_cpu\":{:.3},\"bin_bytes_per_site\":{:.0},\"bin_encode_cpu_s\":{:.3},\"bin_decode_cpu_s\":{:.3},\"bin_from_snapshot_cpu_s\":{:.3},\"bin_restore_s\":{:.3},\"bin_restore_cpu_s\":{:.3},\"bin_restore_vs_json_restore_cpu\":{:.3},\"bin_restore_vs_replay_cpu\":{:.3},\"by_reference_floor_bytes_per_site\":{:.0},\"replay_path_cpu_s\":{:.3},\"floor_cpu_s\":{:.3},\"apply_vs_floor_cpu\":{:.2},\"site_struct_bytes\":{},\"link_struct_bytes\":{},\"group_struct_bytes\":{},\"target_restore_s\":1.5,\"target_replay_events_per_s\":2000000}}",
        machine::load1(),
        decode.wall,
        apply.wall,
        decode.cpu,
        apply.cpu,
        events as f64 / replay.cpu,
        events as f64 / apply.cpu,
        resident as f64 / f64::from(SITES),
        readers_resident as f64 / f64::from(SITES),
        apply.cpu,
        json.len() as f64 / f64::from(SITES),
        to_snapshot.cpu,
        encode.cpu,
        json_decode.wall,
        from_snapshot.wall,
        json_decode.cpu,
        from_snapshot.cpu,
        restore.cpu,
        from_snapshot.cpu / apply.cpu,
        restore.cpu / replay.cpu,
        bin.len() as f64 / f64::from(SITES),
        bin_encode.cpu,
        bin_decode.cpu,
        bin_from_snapshot.cpu,
        bin_restore.wall,
        bin_restore.cpu,
        bin_restore.cpu / restore.cpu,
        bin_restore.cpu / replay.cpu,
        by_reference,
        replay_path.cpu,
        floor.cpu,
        apply.cpu / floor.cpu,
        std::mem::size_of::<halo_tenancy::Site>(),
        std::mem::size_of::<halo_tenancy::Link>(),
        std::mem::size_of::<halo_tenancy::Group>(),
    );
}

/// The replay figures of the binary log ([`binary_replay`]).
struct BinaryReplay {
    bytes: u64,
    encode: Took,
    decode: Took,
    one_thread: Took,
    pipelined_wall: f64,
    decode_thread_cpu: f64,
    apply_thread_cpu: f64,
    json_replay_cpu: f64,
}

impl BinaryReplay {
    fn json_line(&self, events: u64, load_before: f64) -> String {
        let e = events as f64;
        format!(
            "{{\"bench\":\"snapshot_1m_binary_log\",\"sites\":{SITES},\"events\":{events},\"load1_before\":{load_before:.2},\"load1_after\":{:.2},\"bin_log_bytes_per_event\":{:.1},\"bin_encode_cpu_s\":{:.3},\"bin_decode_cpu_s\":{:.3},\"bin_decode_events_per_cpu_s\":{:.0},\"bin_replay_one_thread_s\":{:.3},\"bin_replay_one_thread_cpu_s\":{:.3},\"bin_replay_events_per_cpu_s\":{:.0},\"bin_replay_pipelined_s\":{:.3},\"bin_replay_pipelined_events_per_s\":{:.0},\"bin_pipeline_decode_cpu_s\":{:.3},\"bin_pipeline_apply_cpu_s\":{:.3},\"bin_replay_vs_json_replay_cpu\":{:.3},\"target_replay_events_per_s\":2000000}}",
            machine::load1(),
            self.bytes as f64 / e,
            self.encode.cpu,
            self.decode.cpu,
            e / self.decode.cpu,
            self.one_thread.wall,
            self.one_thread.cpu,
            e / self.one_thread.cpu,
            self.pipelined_wall,
            e / self.pipelined_wall,
            self.decode_thread_cpu,
            self.apply_thread_cpu,
            self.one_thread.cpu / self.json_replay_cpu,
        )
    }
}

/// Each record of the binary log as the Cloud stores it: a 2-byte record header
/// (halo-cloud's `record_bin.rs`) and the entry's binary form.
const RECORD_HEADER: [u8; 2] = [0x01, 0x00];

/// How many entries the decoding thread hands the applying one at a time.
const BATCH: usize = 4096;

/// The same log in the compact binary form the Cloud writes tenancy records in:
/// its size, encoding, decoding alone, and replay including decoding, once on one
/// thread (decode and apply each record in turn) and once pipelined (one thread
/// decodes batches of entries, another applies them, through a bounded channel),
/// timed by the wall clock. Both replays must give `expected`.
fn binary_replay(
    entries: &[LogEntry],
    expected: &Registry,
    json_log_bytes: u64,
    json_replay_cpu: f64,
) -> BinaryReplay {
    // One buffer and the end of each record in it, as the store hands records out.
    let ((buf, ends), encode) = timed(|| {
        let mut buf = Vec::with_capacity(entries.len() * 64);
        let mut ends = Vec::with_capacity(entries.len());
        for entry in entries {
            buf.extend_from_slice(&RECORD_HEADER);
            entry.write_binary(&mut buf);
            ends.push(buf.len());
        }
        (buf, ends)
    });
    let records = || {
        ends.iter().scan(0usize, |start, &end| {
            let record = &buf[*start..end];
            *start = end;
            Some(record)
        })
    };
    let decode_one = |record: &[u8]| {
        let body = record.strip_prefix(RECORD_HEADER.as_slice()).unwrap();
        LogEntry::from_binary(body).unwrap()
    };
    let (decoded, decode) = timed(|| records().map(decode_one).collect::<Vec<_>>());
    assert!(
        decoded == entries,
        "the binary log decodes to other entries"
    );
    drop(decoded);
    // A binary record names its event in its first body byte, so the replay sizes
    // the registry from the log without decoding it (as `Registry::replay` does from
    // decoded entries), then applies each entry with one reused change buffer.
    let sized = || {
        let (mut sites, mut links) = (0, 0);
        for record in records() {
            let (s, l) = LogEntry::binary_growth(&record[RECORD_HEADER.len()..]);
            (sites, links) = (sites + s, links + l);
        }
        let mut reg = Registry::new();
        reg.reserve(sites, links);
        reg
    };
    let (reg, one_thread) = timed(|| {
        let mut reg = sized();
        for record in records() {
            reg.replay_entry(&decode_one(record)).unwrap();
        }
        reg
    });
    assert!(&reg == expected, "the binary replay differs");
    drop(reg);
    let started = Instant::now();
    let (reg, decode_thread_cpu, apply_thread_cpu) = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<LogEntry>>(4);
        // Applied batches come back to the decoding thread, which has time to spare:
        // it frees their entries (their texts) and refills their vectors.
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<LogEntry>>();
        let decoder = s.spawn(move || {
            let cpu = machine::thread_cpu_ns();
            let fresh = || match back_rx.try_recv() {
                Ok(mut done) => {
                    done.clear();
                    done
                }
                Err(_) => Vec::with_capacity(BATCH),
            };
            let mut batch = fresh();
            for record in records() {
                batch.push(decode_one(record));
                if batch.len() == BATCH {
                    tx.send(std::mem::replace(&mut batch, fresh())).unwrap();
                }
            }
            tx.send(batch).unwrap();
            drop(tx);
            // The last batches, as the applying thread finishes them.
            for done in back_rx {
                drop(done);
            }
            machine::cpu_secs_since(cpu)
        });
        let cpu = machine::thread_cpu_ns();
        let mut reg = sized();
        for batch in rx {
            for entry in &batch {
                reg.replay_entry(entry).unwrap();
            }
            // Fails only if the decoding thread has gone, which it does last.
            let _ = back_tx.send(batch);
        }
        drop(back_tx);
        let apply_cpu = machine::cpu_secs_since(cpu);
        (reg, decoder.join().unwrap(), apply_cpu)
    });
    let pipelined_wall = started.elapsed().as_secs_f64();
    assert!(&reg == expected, "the pipelined binary replay differs");
    drop(reg);
    let events = entries.len() as f64;
    println!(
        "binary log: {:.0} MiB ({:.1} bytes/event, {:.2}x the JSON lines); encode {:.2}s CPU; \
         decode {:.2}s CPU ({:.0} events/s); replay incl. decoding on one thread {:.2}s \
         ({:.2}s CPU, {:.0} events/CPU-s, {:.2}x the JSON replay's CPU); pipelined (decode \
         thread + apply thread, batches of {BATCH}) {:.2}s wall = {:.0} events/s \
         (decode thread {:.2}s CPU, apply thread {:.2}s CPU)",
        buf.len() as f64 / 1048576.0,
        buf.len() as f64 / events,
        buf.len() as f64 / json_log_bytes as f64,
        encode.cpu,
        decode.cpu,
        events / decode.cpu,
        one_thread.wall,
        one_thread.cpu,
        events / one_thread.cpu,
        one_thread.cpu / json_replay_cpu,
        pipelined_wall,
        events / pipelined_wall,
        decode_thread_cpu,
        apply_thread_cpu,
    );
    BinaryReplay {
        bytes: buf.len() as u64,
        encode,
        decode,
        one_thread,
        pipelined_wall,
        decode_thread_cpu,
        apply_thread_cpu,
        json_replay_cpu,
    }
}

/// Bytes per site that the registry's public API fixes: [`Registry::site`],
/// [`Registry::link`] and [`Registry::groups`] return references, so every `Site`,
/// `Link`, `GroupKey` and `Group` lives in a table, each found through a hash index
/// (hashbrown: a power of two of 5-byte slots, at most 7/8 full).
fn by_reference_floor(reg: &Registry) -> f64 {
    use std::mem::size_of;
    let index = |n: usize| ((n * 8 / 7).next_power_of_two() * 5) as f64;
    let (sites, links, groups) = (reg.site_count(), reg.links().count(), reg.groups().count());
    let bytes = (sites * size_of::<halo_tenancy::Site>()) as f64
        + (links * size_of::<halo_tenancy::Link>()) as f64
        + (groups * (size_of::<halo_tenancy::GroupKey>() + size_of::<halo_tenancy::Group>()))
            as f64
        + index(sites)
        + index(links)
        + index(groups);
    bytes / sites as f64
}

/// The floor of a build: the hash-index work no registry of these events can skip,
/// with foldhash tables mapping each key to a position as the registry's do. Each
/// Link registered once (a look-up and an insert), each attach a look-up of its
/// Link, an insert of its Halo GUID and of its group key (a look-up where the group
/// exists), each ready a look-up of its site, each heartbeat a look-up of its Link
/// and a write to each of its sites (by position, as a registry that kept positions
/// could). No checks, no other values, no authority.
fn index_floor(entries: &[LogEntry]) -> Took {
    use halo_ids::{HaloGuid, LinkGuid, PmsId};
    use halo_tenancy::{Event, GroupKey};
    use std::collections::HashMap;
    type M<K> = HashMap<K, u32, foldhash::fast::RandomState>;
    let (_, took) = timed(|| {
        let mut links: M<LinkGuid> = M::default();
        let mut link_sites: Vec<Vec<u32>> = Vec::new();
        let mut sites: M<HaloGuid> = M::default();
        let mut groups: M<GroupKey> = M::default();
        let mut env = Vec::new();
        let mut heard: Vec<u64> = Vec::new();
        let mut touched = 0u64;
        for entry in entries {
            match &entry.event {
                Event::LinkRegistered {
                    link, environment, ..
                } => {
                    let n = links.len() as u32;
                    if *links.entry(*link).or_insert(n) == n {
                        link_sites.push(Vec::new());
                        env.push(*environment);
                    }
                }
                Event::SiteAttached {
                    link,
                    halo_guid,
                    identity,
                } => {
                    let l = links[link];
                    let n = sites.len() as u32;
                    sites.insert(*halo_guid, n);
                    heard.push(entry.at.as_millis());
                    link_sites[l as usize].push(n);
                    let key = GroupKey::new(
                        env[l as usize],
                        PmsId::new(identity.pms_type, identity.parent_crn),
                    );
                    let g = groups.len() as u32;
                    touched += u64::from(*groups.entry(key).or_insert(g));
                }
                Event::SiteReady { halo_guid, .. } => {
                    heard[sites[halo_guid] as usize] = entry.at.as_millis();
                }
                Event::Heartbeat { link } => {
                    for s in &link_sites[links[link] as usize] {
                        heard[*s as usize] = entry.at.as_millis();
                    }
                }
                _ => {}
            }
        }
        std::hint::black_box((touched, heard.len(), groups.len()))
    });
    took
}
