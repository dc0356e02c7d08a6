//! Unit tests: round trips, recovery, corruption detection and fallback.

use std::path::Path;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::corruption::record_crc;
use crate::*;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Ev {
    n: u32,
}

type State = Vec<u32>;
type TestStore = Store<Ev, State>;

const CONFIG: StoreConfig = StoreConfig {
    snapshot_every: 3,
    keep_snapshots: 2,
};

fn open(dir: &Path) -> (TestStore, Recovered<Ev, State>) {
    let log = SqliteLog::open_with(dir, Durability::Unsynced).unwrap();
    Store::with_log(log, CONFIG).unwrap()
}

fn evs(range: std::ops::Range<u32>) -> Vec<Ev> {
    range.map(|n| Ev { n }).collect()
}

/// A second connection to poke at the file the way damage would.
fn raw(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join(SqliteLog::FILE_NAME)).unwrap()
}

fn flip_payload_byte(dir: &Path, seq: i64) {
    let conn = raw(dir);
    let mut payload: Vec<u8> = conn
        .query_row("SELECT payload FROM log WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap();
    let mid = payload.len() / 2;
    payload[mid] ^= 0x01;
    conn.execute(
        "UPDATE log SET payload = ?1 WHERE seq = ?2",
        rusqlite::params![payload, seq],
    )
    .unwrap();
}

fn full(recovered: &Recovered<Ev, State>) -> Vec<u32> {
    let mut all = recovered.snapshot.clone().unwrap_or_default();
    all.extend(recovered.tail.iter().map(|e| e.n));
    all
}

#[test]
fn round_trips_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, rec) = open(dir.path());
        assert!(rec.tail.is_empty() && rec.snapshot.is_none());
        assert_eq!(store.append(&Ev { n: 7 }).unwrap(), Seq::new(1));
        assert_eq!(store.append_batch(&evs(8..12)).unwrap(), Seq::new(5));
        assert_eq!(store.append_batch(&[]).unwrap(), Seq::new(5));
    }
    let (store, rec) = open(dir.path());
    assert_eq!(rec.tail, evs(7..12));
    assert_eq!(rec.report.last_seq, Seq::new(5));
    assert_eq!(rec.report.events_replayed, 5);
    assert!(rec.report.is_complete());
    assert_eq!(store.last_seq(), Seq::new(5));
}

#[test]
fn fully_durable_open_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = TestStore::open(dir.path(), CONFIG).unwrap();
        store.append(&Ev { n: 1 }).unwrap();
    }
    let (_, rec) = TestStore::open(dir.path(), CONFIG).unwrap();
    assert_eq!(rec.tail, evs(1..2));
}

#[test]
fn recovery_is_snapshot_plus_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = open(dir.path());
        let upto = store.append_batch(&evs(0..3)).unwrap();
        assert!(store.snapshot_due());
        store.snapshot(&vec![0, 1, 2], upto).unwrap();
        assert!(!store.snapshot_due());
        store.append_batch(&evs(3..5)).unwrap();
    }
    let (store, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(vec![0, 1, 2]));
    assert_eq!(rec.tail, evs(3..5));
    assert_eq!(rec.report.snapshot_seq, Some(Seq::new(3)));
    assert_eq!(rec.report.events_replayed, 2);
    assert!(rec.report.snapshots_skipped.is_empty());
    assert!(
        !store.snapshot_due(),
        "2 events since the snapshot, due at 3"
    );
}

#[test]
fn keeps_only_the_configured_number_of_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(dir.path());
    let mut state = Vec::new();
    for n in 0..5 {
        let upto = store.append(&Ev { n }).unwrap();
        state.push(n);
        store.snapshot(&state, upto).unwrap();
    }
    assert_eq!(
        store.log().snapshot_seqs().unwrap(),
        vec![Seq::new(5), Seq::new(4)]
    );
}

#[test]
fn snapshot_ahead_of_the_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(dir.path());
    store.append(&Ev { n: 0 }).unwrap();
    let err = store.snapshot(&vec![0], Seq::new(2)).unwrap_err();
    assert!(matches!(err, StoreError::SnapshotAhead { .. }), "{err}");
}

#[test]
fn corrupt_byte_in_the_middle_stops_at_the_last_good_event() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).0.append_batch(&evs(0..10)).unwrap();
    flip_payload_byte(dir.path(), 5);

    let (mut store, rec) = open(dir.path());
    assert_eq!(rec.tail, evs(0..4), "events 1..=4 only");
    let c = rec.report.stopped_at.clone().expect("damage reported");
    assert_eq!(
        (c.last_good, c.at, c.unreplayed),
        (Seq::new(4), Seq::new(5), 6)
    );
    assert!(
        matches!(c.kind, CorruptionKind::ChecksumMismatch { .. }),
        "{c}"
    );
    assert!(c.to_string().contains("checksum mismatch"), "{c}");
    assert_eq!(rec.report.last_seq, Seq::new(4));

    // Writing past unresolved damage is refused, and nothing was deleted.
    assert!(matches!(
        store.append(&Ev { n: 99 }),
        Err(StoreError::Unresolved(_))
    ));
    assert!(matches!(
        store.snapshot(&vec![], Seq::new(4)),
        Err(StoreError::Unresolved(_))
    ));
    assert_eq!(store.log().record_count().unwrap(), 10);

    // The caller resolves it: the bad tail moves to quarantine, appends resume at 5.
    assert_eq!(store.quarantine_unreplayed().unwrap(), 6);
    assert_eq!(store.append(&Ev { n: 99 }).unwrap(), Seq::new(5));
    drop(store);
    let (_, rec) = open(dir.path());
    assert!(rec.report.is_complete());
    assert_eq!(full(&rec), vec![0, 1, 2, 3, 99]);
    let quarantined: i64 = raw(dir.path())
        .query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))
        .unwrap();
    assert_eq!(quarantined, 6);
}

#[test]
fn corrupt_last_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).0.append_batch(&evs(0..10)).unwrap();
    flip_payload_byte(dir.path(), 10);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.tail, evs(0..9));
    let c = rec.report.stopped_at.expect("damage reported");
    assert_eq!(
        (c.last_good, c.at, c.unreplayed),
        (Seq::new(9), Seq::new(10), 1)
    );
}

#[test]
fn altered_checksum_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).0.append_batch(&evs(0..3)).unwrap();
    raw(dir.path())
        .execute("UPDATE log SET crc = crc + 1 WHERE seq = 2", [])
        .unwrap();
    let (_, rec) = open(dir.path());
    assert_eq!(rec.tail, evs(0..1));
    assert!(matches!(
        rec.report.stopped_at.map(|c| c.kind),
        Some(CorruptionKind::ChecksumMismatch { .. })
    ));
}

#[test]
fn mistyped_column_is_reported_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).0.append_batch(&evs(0..3)).unwrap();
    raw(dir.path())
        .execute("UPDATE log SET crc = 'x' WHERE seq = 3", [])
        .unwrap();
    let (_, rec) = open(dir.path());
    assert_eq!(rec.tail, evs(0..2));
    assert!(matches!(
        rec.report.stopped_at.map(|c| c.kind),
        Some(CorruptionKind::Unreadable { .. })
    ));
}

#[test]
fn intact_but_undecodable_event_stops_recovery() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).0.append_batch(&evs(0..4)).unwrap();
    let payload = br#"{"unknown":1}"#.to_vec();
    let crc = record_crc(Seq::new(3), &payload);
    raw(dir.path())
        .execute(
            "UPDATE log SET payload = ?1, crc = ?2 WHERE seq = 3",
            rusqlite::params![payload, i64::from(crc)],
        )
        .unwrap();
    let (_, rec) = open(dir.path());
    assert_eq!(rec.tail, evs(0..2));
    let c = rec.report.stopped_at.expect("damage reported");
    assert_eq!((c.at, c.unreplayed), (Seq::new(3), 2));
    assert!(matches!(c.kind, CorruptionKind::Undecodable { .. }), "{c}");
}

#[test]
fn missing_record_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).0.append_batch(&evs(0..6)).unwrap();
    raw(dir.path())
        .execute("DELETE FROM log WHERE seq = 3", [])
        .unwrap();
    let (_, rec) = open(dir.path());
    assert_eq!(rec.tail, evs(0..2));
    let c = rec.report.stopped_at.expect("damage reported");
    assert_eq!(c.at, Seq::new(3));
    assert_eq!(c.kind, CorruptionKind::Gap { found: Seq::new(4) });
    assert_eq!(c.unreplayed, 3);
}

#[test]
fn removed_tail_is_reported_truncated_and_seqs_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).0.append_batch(&evs(0..6)).unwrap();
    raw(dir.path())
        .execute("DELETE FROM log WHERE seq > 4", [])
        .unwrap();
    let (mut store, rec) = open(dir.path());
    assert_eq!(rec.tail, evs(0..4));
    let c = rec.report.stopped_at.clone().expect("truncation reported");
    assert_eq!(
        c.kind,
        CorruptionKind::Truncated {
            committed: Seq::new(6)
        }
    );
    assert_eq!(c.last_good, Seq::new(4));
    assert!(store.append(&Ev { n: 9 }).is_err());
    assert_eq!(store.quarantine_unreplayed().unwrap(), 0);
    assert_eq!(store.append(&Ev { n: 9 }).unwrap(), Seq::new(5));
}

#[test]
fn damaged_latest_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = open(dir.path());
        let a = store.append_batch(&evs(0..3)).unwrap();
        store.snapshot(&vec![0, 1, 2], a).unwrap();
        let b = store.append_batch(&evs(3..6)).unwrap();
        store.snapshot(&(0..6).collect(), b).unwrap();
        store.append_batch(&evs(6..8)).unwrap();
    }
    // Truncate the latest snapshot's bytes.
    raw(dir.path())
        .execute(
            "UPDATE snapshot_chunk SET data = substr(data, 1, 3) WHERE upto = 6",
            [],
        )
        .unwrap();
    let (_, rec) = open(dir.path());
    assert_eq!(rec.report.snapshot_seq, Some(Seq::new(3)));
    assert_eq!(rec.report.snapshots_skipped.len(), 1);
    assert_eq!(rec.report.snapshots_skipped[0].upto, Seq::new(6));
    assert_eq!(rec.tail, evs(3..8));
    assert!(rec.report.is_complete());
    assert_eq!(full(&rec), (0..8).collect::<Vec<_>>());

    // Garbage in the older one too (same length, wrong bytes): full replay.
    raw(dir.path())
        .execute(
            "UPDATE snapshot_chunk SET data = zeroblob(length(data)) WHERE upto = 3",
            [],
        )
        .unwrap();
    let (_, rec) = open(dir.path());
    assert_eq!(rec.report.snapshot_seq, None);
    assert_eq!(rec.report.snapshots_skipped.len(), 2);
    assert_eq!(rec.tail, evs(0..8));

    // A missing snapshot chunk row is damage too.
    let report = verify(&SqliteLog::open_read_only(dir.path()).unwrap()).unwrap();
    assert!(!report.is_clean());
    assert!(report.log_damage.is_none());
}

#[test]
fn snapshot_that_does_not_decode_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = SqliteLog::open_with(dir.path(), Durability::Unsynced).unwrap();
        let (mut store, _) = Store::<Ev, State, _>::with_log(log, CONFIG).unwrap();
        store.append_batch(&evs(0..2)).unwrap();
        let mut log = SqliteLog::open_with(dir.path(), Durability::Unsynced).unwrap();
        log.write_snapshot(Seq::new(2), b"not json").unwrap();
    }
    let (_, rec) = open(dir.path());
    assert_eq!(rec.report.snapshot_seq, None);
    assert!(
        rec.report.snapshots_skipped[0]
            .reason
            .contains("undecodable")
    );
    assert_eq!(rec.tail, evs(0..2));
}

#[test]
fn large_snapshot_spans_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SqliteLog::open_with(dir.path(), Durability::Unsynced).unwrap();
    log.append(&[b"x"]).unwrap();
    let state: Vec<u8> = (0..(9 << 20)).map(|i| (i % 251) as u8).collect();
    log.write_snapshot(Seq::new(1), &state).unwrap();
    assert_eq!(
        log.read_snapshot(Seq::new(1)).unwrap(),
        SnapshotRead::Valid(state)
    );
    let chunks: i64 = raw(dir.path())
        .query_row("SELECT chunks FROM snapshot", [], |r| r.get(0))
        .unwrap();
    assert_eq!(chunks, 3);
    raw(dir.path())
        .execute("DELETE FROM snapshot_chunk WHERE idx = 1", [])
        .unwrap();
    assert!(matches!(
        log.read_snapshot(Seq::new(1)).unwrap(),
        SnapshotRead::Damaged(_)
    ));
}

#[test]
fn snapshot_written_on_another_thread_while_appending() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(dir.path());
    let upto = store.append_batch(&evs(0..3)).unwrap();
    // Big enough to span several chunks (several short transactions).
    let state: State = (0..1_500_000).collect();
    let mut writer = store.snapshot_writer().unwrap();
    let expected = state.clone();
    let bg = std::thread::spawn(move || writer.write(&state, upto));
    // Keep appending for as long as the writer runs, so that the two connections
    // contend for the write lock many times.
    let mut n = 3;
    while n < 40 || !bg.is_finished() {
        store.append(&Ev { n }).unwrap();
        n += 1;
    }
    bg.join().unwrap().unwrap();
    store.snapshot_written(upto);
    assert_eq!(store.log().snapshot_seqs().unwrap(), vec![upto]);
    drop(store);
    let (_, rec) = open(dir.path());
    assert_eq!(rec.snapshot, Some(expected));
    assert_eq!(rec.tail, evs(3..n));
}

#[test]
fn snapshot_writer_refuses_uncommitted_upto() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(dir.path());
    store.append(&Ev { n: 0 }).unwrap();
    let mut writer = store.snapshot_writer().unwrap();
    let err = writer.write(&vec![0], Seq::new(2)).unwrap_err();
    assert!(matches!(err, StoreError::SnapshotAhead { .. }), "{err}");
}

#[test]
fn chunks_of_an_interrupted_snapshot_are_invisible_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(dir.path());
    store.append_batch(&evs(0..5)).unwrap();
    // A crash mid-write leaves chunks without a header.
    raw(dir.path())
        .execute(
            "INSERT INTO snapshot_chunk (upto, idx, data) VALUES (2, 0, x'00')",
            [],
        )
        .unwrap();
    let (_, rec) = open(dir.path());
    assert_eq!(rec.report.snapshot_seq, None);
    assert!(rec.report.snapshots_skipped.is_empty());
    store.snapshot(&(0..5).collect(), Seq::new(5)).unwrap();
    let orphans: i64 = raw(dir.path())
        .query_row(
            "SELECT count(*) FROM snapshot_chunk WHERE upto = 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
}

#[test]
fn second_writer_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = SqliteLog::open_with(dir.path(), Durability::Unsynced).unwrap();
    let mut b = SqliteLog::open_with(dir.path(), Durability::Unsynced).unwrap();
    a.append(&[b"a"]).unwrap();
    let err = b.append(&[b"b"]).unwrap_err();
    assert!(matches!(err, StoreError::ConcurrentWriter { .. }), "{err}");
    let report = verify(&a).unwrap();
    assert_eq!(report.good_records, 1);
}

#[test]
fn foreign_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    raw(dir.path())
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let err = SqliteLog::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedFormat { .. }), "{err}");
}

#[test]
fn backup_recovers_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(dir.path());
    let upto = store.append_batch(&evs(0..4)).unwrap();
    store.snapshot(&vec![0, 1, 2, 3], upto).unwrap();
    store.append(&Ev { n: 4 }).unwrap();

    let moved = tempfile::tempdir().unwrap();
    store
        .log()
        .backup_to(&moved.path().join(SqliteLog::FILE_NAME))
        .unwrap();
    assert!(
        store
            .log()
            .backup_to(&moved.path().join(SqliteLog::FILE_NAME))
            .is_err()
    );
    let (_, rec) = open(moved.path());
    assert_eq!(rec.report.snapshot_seq, Some(Seq::new(4)));
    assert_eq!(full(&rec), vec![0, 1, 2, 3, 4]);
}

#[test]
fn verify_reports_clean_and_damaged_logs() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).0.append_batch(&evs(0..5)).unwrap();
    let report = verify(&SqliteLog::open_read_only(dir.path()).unwrap()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.good_records, 5);
    flip_payload_byte(dir.path(), 2);
    let report = verify(&SqliteLog::open_read_only(dir.path()).unwrap()).unwrap();
    assert!(!report.is_clean());
    assert!(report.to_string().contains("DAMAGED"), "{report}");
}

/// A temp dir on tmpfs where there is one (fsyncs cost nothing there), so that
/// 1000 property cases stay fast; elsewhere the usual temp dir.
fn fast_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<u32>),
    Snapshot,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u32>(), 0..4).prop_map(Op::Append),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Any interleaving of appends, snapshots and reopenings recovers exactly the
    /// appended events, in order.
    #[test]
    fn recovers_exactly_what_was_appended(ops in proptest::collection::vec(op(), 0..12)) {
        let dir = fast_tempdir();
        let (mut store, _) = open(dir.path());
        let mut model: Vec<u32> = Vec::new();
        for op in ops {
            match op {
                Op::Append(ns) => {
                    let batch: Vec<Ev> = ns.iter().map(|&n| Ev { n }).collect();
                    let seq = store.append_batch(&batch).unwrap();
                    model.extend(ns);
                    prop_assert_eq!(seq.get(), model.len() as u64);
                }
                Op::Snapshot => store.snapshot(&model, store.last_seq()).unwrap(),
                Op::Reopen => {
                    drop(store);
                    let (s, rec) = open(dir.path());
                    prop_assert!(rec.report.is_complete());
                    prop_assert_eq!(full(&rec), model.clone());
                    store = s;
                }
            }
        }
        drop(store);
        let (_, rec) = open(dir.path());
        prop_assert!(rec.report.is_complete());
        prop_assert_eq!(rec.report.last_seq.get(), model.len() as u64);
        prop_assert_eq!(full(&rec), model);
    }
}

/// Page-level damage: helpers reading the file the way salvage does.
mod page_damage {
    use super::*;
    use crate::pages::{Col, Pages};

    fn payload(n: u64) -> Vec<u8> {
        format!("{{\"n\":{n},\"pad\":\"{}\"}}", "y".repeat(120)).into_bytes()
    }

    fn build(dir: &Path, n: u64) -> SqliteLog {
        let mut log = SqliteLog::open_with(dir, Durability::Unsynced).unwrap();
        let records: Vec<Vec<u8>> = (1..=n).map(payload).collect();
        for chunk in records.chunks(50) {
            let slices: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            log.append(&slices).unwrap();
        }
        log
    }

    /// The log records on each table leaf page, by page number.
    fn log_pages(pages: &Pages) -> Vec<(u32, Vec<u64>)> {
        let mut out = Vec::new();
        for n in 2..=pages.count() {
            let Some(page) = pages.page(n) else { continue };
            let seqs: Vec<u64> = pages
                .leaf_cells(n, &page)
                .iter()
                .filter(|c| {
                    matches!(
                        crate::pages::columns(&c.local).as_deref(),
                        Some([Col::Null, Col::Int(_), Col::Blob(_)])
                    )
                })
                .map(|c| c.rowid as u64)
                .collect();
            if !seqs.is_empty() {
                out.push((n, seqs));
            }
        }
        out
    }

    fn page_size(file: &Path) -> u64 {
        let b = std::fs::read(file).unwrap();
        u64::from(u16::from_be_bytes([b[16], b[17]]))
    }

    fn zero_page(file: &Path, n: u32) {
        let ps = page_size(file);
        let mut bytes = std::fs::read(file).unwrap();
        let at = (u64::from(n) - 1) * ps;
        bytes[at as usize..(at + ps) as usize].fill(0);
        std::fs::write(file, bytes).unwrap();
    }

    #[test]
    fn wal_frames_are_read_page_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = build(dir.path(), 500);
        log.checkpoint().unwrap();
        for n in 501..=540 {
            log.append(&[&payload(n)]).unwrap();
        }
        let copy = tempfile::tempdir().unwrap();
        for name in ["halo.db", "halo.db-wal"] {
            std::fs::copy(dir.path().join(name), copy.path().join(name)).unwrap();
        }
        let db = copy.path().join("halo.db");
        let wal = copy.path().join("halo.db-wal");
        let seqs = |pages: &Pages| {
            let mut all: Vec<u64> = log_pages(pages).into_iter().flat_map(|(_, s)| s).collect();
            all.sort_unstable();
            all.dedup();
            all
        };
        let with_wal = Pages::open(&db, Some(&wal)).unwrap();
        assert_eq!(seqs(&with_wal), (1..=540).collect::<Vec<_>>());
        let without = Pages::open(&db, None).unwrap();
        assert_eq!(
            seqs(&without),
            (1..=500).collect::<Vec<_>>(),
            "the last records are only in the WAL"
        );
    }

    #[test]
    fn zeroed_leaf_page_in_the_middle_is_storage_damage_and_salvage_reads_past_it() {
        let dir = tempfile::tempdir().unwrap();
        drop(build(dir.path(), 2000));
        let db = dir.path().join("halo.db");
        let pages = Pages::open(&db, None).unwrap();
        let leaves = log_pages(&pages);
        let (page, on_page) = leaves[leaves.len() / 2].clone();
        drop(pages);
        zero_page(&db, page);

        // Opening succeeds (the damage is deep), recovery reading into it does not.
        let err =
            Store::<serde_json::Value, serde_json::Value>::open(dir.path(), CONFIG).unwrap_err();
        assert!(matches!(err, StoreError::StorageDamaged { .. }), "{err}");
        let report = verify(&SqliteLog::open_read_only(dir.path()).unwrap()).unwrap();
        assert!(!report.is_clean());
        assert!(report.storage_damage.is_some(), "{report}");
        assert_eq!(report.good_records, on_page[0] - 1, "{report}");
        assert!(report.to_string().contains("STORAGE DAMAGED"), "{report}");

        let out = tempfile::tempdir().unwrap();
        let salvaged = salvage(dir.path(), out.path(), &mut |_| {}).unwrap();
        let first = *on_page.first().unwrap();
        let last = *on_page.last().unwrap();
        assert_eq!(
            salvaged.lost,
            vec![(Seq::new(first), Seq::new(last))],
            "{salvaged}"
        );
        assert_eq!(salvaged.records_read, 2000 - on_page.len() as u64);
        assert_eq!(
            salvaged.records_from_pages, 0,
            "SQLite itself read past the hole (probing): {salvaged}"
        );
        assert!(salvaged.renumbered, "{salvaged}");
        let log = SqliteLog::open_read_only(out.path()).unwrap();
        let mut got = Vec::new();
        log.read_from(Seq::ZERO, &mut |_, p| {
            got.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        let expected: Vec<Vec<u8>> = (1..=2000)
            .filter(|n| !(first..=last).contains(n))
            .map(payload)
            .collect();
        assert!(got == expected);
    }

    #[test]
    fn interrupted_swap_is_refused_by_readers_and_finished_by_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        drop(build(dir.path(), 300));
        let db = dir.path().join("halo.db");
        let mut bytes = std::fs::read(&db).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&db, &bytes).unwrap();
        // What salvage_in_place has done when it is interrupted after the marker.
        let tmp = dir.path().join(super::super::salvage::SWAP_TMP_FOR_TESTS);
        salvage(dir.path(), &tmp, &mut |_| {}).unwrap();
        let aside = dir.path().join("damaged-1");
        std::fs::create_dir(&aside).unwrap();
        std::fs::hard_link(&db, aside.join("halo.db")).unwrap();
        std::fs::write(
            dir.path()
                .join(super::super::salvage::SWAP_MARKER_FOR_TESTS),
            "test",
        )
        .unwrap();

        let err = SqliteLog::open_read_only(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::SalvagePending { .. }), "{err}");
        let log = SqliteLog::open(dir.path()).unwrap();
        assert_eq!(log.last_seq(), Seq::new(300));
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(aside.join("halo.db")).unwrap(), bytes);
    }

    #[test]
    fn flipped_header_byte_after_a_quarantine_salvages_the_live_history_only() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).0.append_batch(&evs(0..300)).unwrap();
        flip_payload_byte(dir.path(), 51);
        {
            let (mut store, _) = open(dir.path());
            assert_eq!(store.quarantine_unreplayed().unwrap(), 250);
            // Seqs 51..=70 are reused by a different history; the old rows live on
            // in the quarantine table (SQLite empties the pages it frees row by
            // row, so free pages hold none here; see the stale-page tests below).
            store.append_batch(&evs(1000..1020)).unwrap();
        }
        let db = dir.path().join("halo.db");
        let mut bytes = std::fs::read(&db).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&db, &bytes).unwrap();

        let out = tempfile::tempdir().unwrap();
        let report = salvage(dir.path(), out.path(), &mut |_| {}).unwrap();
        assert!(report.is_complete(), "{report}");
        assert_eq!(report.records_read, 70, "{report}");
        let (_, rec) = open(out.path());
        let mut expected: Vec<u32> = (0..50).collect();
        expected.extend(1000..1020);
        assert_eq!(full(&rec), expected, "{report}");
    }

    fn records_of(dir: &Path) -> Vec<Vec<u8>> {
        let log = SqliteLog::open_read_only(dir).unwrap();
        let mut got = Vec::new();
        let read = log
            .read_from(Seq::ZERO, &mut |_, p| {
                got.push(p.to_vec());
                Ok(())
            })
            .unwrap();
        assert!(read.stopped_at.is_none());
        got
    }

    /// Appends to the file at `db` a freelist trunk page and, as its one leaf, a
    /// copy of `stale` (a log leaf page of another history), the way SQLite leaves
    /// a page it freed: unused, but with its old rows still on it.
    fn add_stale_free_page(db: &Path, stale: &[u8], damage_freelist: bool) {
        let mut bytes = std::fs::read(db).unwrap();
        let ps = page_size(db) as usize;
        assert_eq!(bytes.len() % ps, 0);
        let pages = (bytes.len() / ps) as u32;
        let (trunk, leaf) = (pages + 1, pages + 2);
        let mut trunk_page = vec![0u8; ps];
        trunk_page[4..8].copy_from_slice(&1u32.to_be_bytes());
        trunk_page[8..12].copy_from_slice(&leaf.to_be_bytes());
        bytes.extend_from_slice(&trunk_page);
        bytes.extend_from_slice(stale);
        bytes[28..32].copy_from_slice(&leaf.to_be_bytes());
        bytes[32..36].copy_from_slice(&trunk.to_be_bytes());
        let total: u32 = if damage_freelist { 7 } else { 2 };
        bytes[36..40].copy_from_slice(&total.to_be_bytes());
        bytes[100] ^= 0xff;
        std::fs::write(db, bytes).unwrap();
    }

    /// A log leaf page of a log whose payloads differ from `payload`'s.
    fn other_history_page() -> (Vec<u8>, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SqliteLog::open_with(dir.path(), Durability::Unsynced).unwrap();
            for n in 1..=300u64 {
                log.append(&[format!("other history {n}").as_bytes()])
                    .unwrap();
            }
        }
        let db = dir.path().join("halo.db");
        let pages = Pages::open(&db, None).unwrap();
        let (n, seqs) = log_pages(&pages)[1].clone();
        (pages.page(n).unwrap(), seqs)
    }

    #[test]
    fn flipped_header_byte_with_stale_rows_on_a_free_page_salvages_only_live_rows() {
        let dir = tempfile::tempdir().unwrap();
        drop(build(dir.path(), 300));
        let (stale, seqs) = other_history_page();
        assert!(!seqs.is_empty());
        add_stale_free_page(&dir.path().join("halo.db"), &stale, false);
        let out = tempfile::tempdir().unwrap();
        let report = salvage(dir.path(), out.path(), &mut |_| {}).unwrap();
        assert!(report.is_complete(), "{report}");
        let got = records_of(out.path());
        let expected: Vec<Vec<u8>> = (1..=300).map(payload).collect();
        assert!(got == expected, "only the live history: {report}");
    }

    #[test]
    fn flipped_header_byte_with_stale_rows_and_an_unreadable_freelist_loses_rather_than_guesses() {
        let dir = tempfile::tempdir().unwrap();
        drop(build(dir.path(), 300));
        let (stale, seqs) = other_history_page();
        add_stale_free_page(&dir.path().join("halo.db"), &stale, true);
        let out = tempfile::tempdir().unwrap();
        let report = salvage(dir.path(), out.path(), &mut |_| {}).unwrap();
        // The two versions of each of those records disagree: neither is taken.
        let lost: Vec<u64> = report
            .lost
            .iter()
            .flat_map(|(a, b)| a.get()..=b.get())
            .collect();
        assert_eq!(lost, seqs, "{report}");
        assert!(report.to_string().contains("disagree"), "{report}");
        let got = records_of(out.path());
        let expected: Vec<Vec<u8>> = (1..=300)
            .filter(|n| !seqs.contains(n))
            .map(payload)
            .collect();
        assert!(got == expected, "{report}");
    }

    #[test]
    fn flipped_header_byte_and_a_bad_record_loses_only_that_record() {
        let dir = tempfile::tempdir().unwrap();
        drop(build(dir.path(), 300));
        flip_payload_byte(dir.path(), 150);
        let db = dir.path().join("halo.db");
        let mut bytes = std::fs::read(&db).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&db, &bytes).unwrap();
        let out = tempfile::tempdir().unwrap();
        let report = salvage(dir.path(), out.path(), &mut |_| {}).unwrap();
        assert_eq!(
            report.lost,
            vec![(Seq::new(150), Seq::new(150))],
            "{report}"
        );
        let expected: Vec<Vec<u8>> = (1..=300).filter(|&n| n != 150).map(payload).collect();
        assert!(records_of(out.path()) == expected, "{report}");
    }
}

/// A codec that is not JSON: one byte, the event's number, after a marker byte;
/// it also reads the default JSON form, as a codec that adds a form must.
struct Byte;

impl EventCodec<Ev> for Byte {
    fn encode(event: &Ev, out: &mut Vec<u8>) -> Result<(), String> {
        let n = u8::try_from(event.n).map_err(|_| format!("{} does not fit a byte", event.n))?;
        out.extend_from_slice(&[0xB7, n]);
        Ok(())
    }

    fn decode(record: &[u8]) -> Result<Ev, String> {
        match record {
            [0xB7, n] => Ok(Ev { n: u32::from(*n) }),
            [0xB7, ..] => Err("not one byte after the marker".into()),
            json => <Json as EventCodec<Ev>>::decode(json),
        }
    }
}

#[test]
fn a_store_writes_and_reads_its_events_through_its_codec() {
    let dir = tempfile::tempdir().unwrap();
    {
        // An older build's JSON records first.
        let (mut store, _) = open(dir.path());
        store.append_batch(&evs(0..2)).unwrap();
    }
    let open_byte = |dir: &Path| {
        let log = SqliteLog::open_with(dir, Durability::Unsynced).unwrap();
        Store::<Ev, State, SqliteLog, Byte>::with_log(log, CONFIG).unwrap()
    };
    {
        let (mut store, recovered) = open_byte(dir.path());
        assert_eq!(full(&recovered), vec![0, 1]);
        store.append_batch(&evs(2..4)).unwrap();
        // The codec's refusal is an encoding error and writes nothing.
        let err = store.append(&Ev { n: 300 }).unwrap_err();
        assert!(
            matches!(err, StoreError::Encode { what: "event", .. }),
            "{err}"
        );
        let mut stored = Vec::new();
        store
            .log()
            .read_from(Seq::ZERO, &mut |_, bytes| {
                stored.push(bytes.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(
            stored,
            vec![
                br#"{"n":0}"#.to_vec(),
                br#"{"n":1}"#.to_vec(),
                vec![0xB7, 2],
                vec![0xB7, 3]
            ]
        );
    }
    let (_, recovered) = open_byte(dir.path());
    assert_eq!(full(&recovered), vec![0, 1, 2, 3]);
    assert!(recovered.report.is_complete());
    // The default codec (JSON) stops at the first record it cannot read.
    let (_, recovered) = open(dir.path());
    assert_eq!(full(&recovered), vec![0, 1]);
    let stopped = recovered
        .report
        .stopped_at
        .expect("stopped at the codec's record");
    assert_eq!(stopped.last_good, Seq::new(2));
}
