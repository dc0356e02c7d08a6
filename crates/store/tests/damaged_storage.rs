//! Page-level damage to the log (issue 10): a `halo.db` cut short by one page, or
//! with byte 100 (the first b-tree page header) flipped. SQLite then reports the
//! whole file as malformed; the store must name the file and say the storage is
//! damaged, `halo-store salvage` must copy every readable record into a new log
//! without touching the input, and `halo-store ... | head` must exit quietly.

use halo_test_support::damage::{flip_byte_100, truncate_one_page};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use halo_store::{
    Durability, EventLog, Seq, SnapshotRead, SqliteLog, StoreError, salvage, salvage_in_place,
    verify,
};

const RECORDS: u64 = 2000;
const SNAPSHOT_AT: u64 = 1500;

fn payload(n: u64) -> Vec<u8> {
    format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(150)).into_bytes()
}

fn snapshot_state() -> Vec<u8> {
    (0..10_000u32).flat_map(u32::to_le_bytes).collect()
}

/// A real log: RECORDS records with a snapshot at SNAPSHOT_AT, closed cleanly.
fn build_log(dir: &Path) {
    let mut log = SqliteLog::open_with(dir, Durability::Unsynced).expect("open");
    for chunk in (1..=RECORDS).collect::<Vec<_>>().chunks(100) {
        let records: Vec<Vec<u8>> = chunk.iter().map(|&n| payload(n)).collect();
        let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let last = log.append(&slices).expect("append");
        if last == Seq::new(SNAPSHOT_AT) {
            log.write_snapshot(last, &snapshot_state())
                .expect("snapshot");
        }
    }
}

fn db(dir: &Path) -> PathBuf {
    dir.join(SqliteLog::FILE_NAME)
}

/// Every file in `dir` (not recursing) with its contents.
fn snapshot_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

/// Every record of the log in `dir`, in order.
fn records(dir: &Path) -> Vec<Vec<u8>> {
    let log = SqliteLog::open_read_only(dir).expect("open salvaged");
    let mut out = Vec::new();
    let read = log
        .read_from(Seq::ZERO, &mut |_, p| {
            out.push(p.to_vec());
            Ok(())
        })
        .expect("read");
    assert!(read.stopped_at.is_none(), "{:?}", read.stopped_at);
    out
}

fn assert_storage_damaged(e: &StoreError, file: &Path) {
    assert!(
        matches!(e, StoreError::StorageDamaged { path, .. } if Path::new(path) == file),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("storage damaged"), "{msg}");
    assert!(msg.contains("not just one record"), "{msg}");
    assert!(msg.contains("halo-store salvage"), "{msg}");
}

#[test]
fn page_truncation_is_reported_as_damaged_storage_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    truncate_one_page(&db(dir.path()));
    let damaged = std::fs::read(db(dir.path())).expect("read");

    let e = SqliteLog::open_read_only(dir.path()).expect_err("read-only open");
    assert_storage_damaged(&e, &db(dir.path()));
    let e = SqliteLog::open(dir.path()).expect_err("writer open");
    assert_storage_damaged(&e, &db(dir.path()));
    assert_eq!(
        std::fs::read(db(dir.path())).expect("read"),
        damaged,
        "a failed open leaves the damaged file as it was"
    );
}

#[test]
fn flipped_header_byte_is_reported_as_damaged_storage_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    flip_byte_100(&db(dir.path()));
    let e = SqliteLog::open_read_only(dir.path()).expect_err("read-only open");
    assert_storage_damaged(&e, &db(dir.path()));
    let e = SqliteLog::open(dir.path()).expect_err("writer open");
    assert_storage_damaged(&e, &db(dir.path()));
}

#[test]
fn page_truncation_salvage_copies_every_readable_record_and_never_writes_the_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    truncate_one_page(&db(dir.path()));
    let before = snapshot_dir(dir.path());
    let out = tempfile::tempdir().expect("tempdir");
    let new_dir = out.path().join("salvaged");
    let mut calls = 0;
    let report = salvage(dir.path(), &new_dir, &mut |_| calls += 1).expect("salvage");

    assert_eq!(
        snapshot_dir(dir.path()),
        before,
        "the input is never written"
    );
    assert!(calls > 0, "progress is reported");
    assert!(report.end_known, "{report}");
    assert_eq!(report.end, Seq::new(RECORDS), "{report}");
    assert_eq!(
        report.records_read + report.records_lost,
        RECORDS,
        "{report}"
    );
    // One page of 4 KiB holds at most ~20 of these records.
    assert!(report.records_lost <= 25, "{report}");
    let got = records(&new_dir);
    assert_eq!(got.len() as u64, report.records_read);
    let lost: Vec<u64> = report
        .lost
        .iter()
        .flat_map(|(a, b)| a.get()..=b.get())
        .collect();
    let expected: Vec<Vec<u8>> = (1..=RECORDS)
        .filter(|n| !lost.contains(n))
        .map(payload)
        .collect();
    assert!(
        got == expected,
        "salvaged records differ from the originals"
    );
    // The snapshot was written long before the cut page; it survives.
    let snapshot = report.snapshot.clone().expect("snapshot salvaged");
    assert_eq!(snapshot.original_upto, Seq::new(SNAPSHOT_AT), "{report}");
    let log = SqliteLog::open_read_only(&new_dir).expect("open");
    assert_eq!(
        log.read_snapshot(snapshot.new_upto).expect("read"),
        SnapshotRead::Valid(snapshot_state())
    );
    assert!(verify(&log).expect("verify").is_clean());
    let text = report.to_string();
    assert!(text.contains("records:"), "{text}");
    if report.records_lost > 0 {
        assert!(text.contains("lost records: #"), "{text}");
    }
}

#[test]
fn flipped_header_byte_salvage_recovers_every_record_page_by_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    flip_byte_100(&db(dir.path()));
    let before = snapshot_dir(dir.path());
    let out = tempfile::tempdir().expect("tempdir");
    let report = salvage(&db(dir.path()), out.path(), &mut |_| {}).expect("salvage");

    assert_eq!(
        snapshot_dir(dir.path()),
        before,
        "the input is never written"
    );
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.records_read, RECORDS, "{report}");
    assert_eq!(
        report.records_from_pages, RECORDS,
        "SQLite cannot read the schema, so every record came from the pages: {report}"
    );
    assert!(report.to_string().contains("nothing was lost"), "{report}");
    let expected: Vec<Vec<u8>> = (1..=RECORDS).map(payload).collect();
    assert!(records(out.path()) == expected, "salvaged records differ");
    let snapshot = report.snapshot.clone().expect("snapshot salvaged");
    assert_eq!(
        (snapshot.original_upto, snapshot.new_upto),
        (Seq::new(SNAPSHOT_AT), Seq::new(SNAPSHOT_AT))
    );
    let log = SqliteLog::open_read_only(out.path()).expect("open");
    assert_eq!(
        log.read_snapshot(Seq::new(SNAPSHOT_AT)).expect("read"),
        SnapshotRead::Valid(snapshot_state())
    );
}

#[test]
fn flipped_header_byte_after_a_crash_salvages_the_records_still_in_the_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    let crashed = tempfile::tempdir().expect("tempdir");
    let tiny = |n: u64| n.to_string().into_bytes();
    {
        // Checkpointed up to RECORDS; three more (tiny, so page 1 does not change)
        // live only in the WAL when the files are copied, as a SIGKILL leaves them.
        let mut log = SqliteLog::open_with(dir.path(), Durability::Unsynced).expect("open");
        log.checkpoint().expect("checkpoint");
        for n in RECORDS + 1..=RECORDS + 3 {
            log.append(&[&tiny(n)]).expect("append");
        }
        for name in ["halo.db", "halo.db-wal"] {
            std::fs::copy(dir.path().join(name), crashed.path().join(name)).expect("copy");
        }
    }
    flip_byte_100(&db(crashed.path()));
    let out = tempfile::tempdir().expect("tempdir");
    let report = salvage(crashed.path(), out.path(), &mut |_| {}).expect("salvage");
    assert!(report.is_complete(), "{report}");
    assert_eq!(
        report.records_from_pages,
        RECORDS + 3,
        "SQLite cannot read page 1, so all came page by page, the WAL's included: {report}"
    );
    let expected: Vec<Vec<u8>> = (1..=RECORDS)
        .map(payload)
        .chain((RECORDS + 1..=RECORDS + 3).map(tiny))
        .collect();
    assert!(records(out.path()) == expected, "salvaged records differ");
}

#[test]
fn salvage_refuses_a_destination_that_is_not_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    flip_byte_100(&db(dir.path()));
    let e = salvage(dir.path(), dir.path(), &mut |_| {}).expect_err("same dir");
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    let intact = tempfile::tempdir().expect("tempdir");
    build_log(intact.path());
    let e = salvage(dir.path(), intact.path(), &mut |_| {}).expect_err("existing log");
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    assert_eq!(records(intact.path()).len() as u64, RECORDS);
}

#[test]
fn page_truncation_salvaged_in_place_keeps_the_damaged_file_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    truncate_one_page(&db(dir.path()));
    let damaged = std::fs::read(db(dir.path())).expect("read");
    let done = salvage_in_place(dir.path(), &mut |_| {}).expect("salvage in place");
    assert!(done.set_aside.starts_with(dir.path()));
    assert_eq!(
        std::fs::read(done.set_aside.join("halo.db")).expect("kept"),
        damaged,
        "the damaged file is kept, byte for byte"
    );
    assert_eq!(done.report.dest, db(dir.path()));
    assert_eq!(
        records(dir.path()).len() as u64,
        done.report.records_read,
        "{}",
        done.report
    );
    // The data directory is a working log again.
    let mut log = SqliteLog::open(dir.path()).expect("open");
    let next = log.append(&[b"after"]).expect("append");
    assert_eq!(next.get(), done.report.records_read + 1);
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("salvage"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn halo_store(args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_halo-store"));
    cmd.args(args);
    cmd
}

#[test]
fn page_truncation_verify_command_names_the_file_and_points_to_salvage() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    truncate_one_page(&db(dir.path()));
    let out = halo_store(&["verify".as_ref(), dir.path().as_os_str()])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&db(dir.path()).display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("storage damaged"), "{stderr}");
    assert!(stderr.contains("halo-store salvage"), "{stderr}");
}

#[test]
fn flipped_header_byte_salvage_command_writes_a_log_that_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    flip_byte_100(&db(dir.path()));
    let out_dir = tempfile::tempdir().expect("tempdir");
    let new_dir = out_dir.path().join("new");
    let out = halo_store(&[
        "salvage".as_ref(),
        dir.path().as_os_str(),
        new_dir.as_os_str(),
    ])
    .output()
    .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("nothing was lost"), "{stdout}");
    assert!(stderr.contains("salvage: "), "progress on stderr: {stderr}");
    let out = halo_store(&["verify".as_ref(), new_dir.as_os_str()])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn page_truncation_salvage_command_exits_3_when_records_are_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    truncate_one_page(&db(dir.path()));
    let out_dir = tempfile::tempdir().expect("tempdir");
    let new_dir = out_dir.path().join("new");
    let report = {
        // The same salvage through the library, to know what to expect.
        let probe = tempfile::tempdir().expect("tempdir");
        salvage(dir.path(), &probe.path().join("x"), &mut |_| {}).expect("salvage")
    };
    let out = halo_store(&[
        "salvage".as_ref(),
        dir.path().as_os_str(),
        new_dir.as_os_str(),
    ])
    .output()
    .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = if report.is_complete() { 0 } else { 3 };
    assert_eq!(out.status.code(), Some(expected), "{stdout}");
    assert!(
        stdout.contains(&format!("{} lost", report.records_lost)),
        "{stdout}"
    );
}

/// Runs `halo-store ARGS` with its stdout closed before it writes (as `| head -0`
/// would), and returns its exit status and stderr.
fn with_stdout_closed(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut child = halo_store(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let status = child.wait().expect("wait");
    (status.code(), stderr)
}

#[test]
fn commands_piped_into_a_closed_reader_exit_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    let (code, stderr) = with_stdout_closed(&["verify".as_ref(), dir.path().as_os_str()]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(0), "a clean log still exits 0: {stderr}");

    let out = tempfile::tempdir().expect("tempdir");
    let backup = out.path().join("backup.db");
    let (code, stderr) = with_stdout_closed(&[
        "backup".as_ref(),
        dir.path().as_os_str(),
        backup.as_os_str(),
    ]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(0), "{stderr}");

    flip_byte_100(&db(dir.path()));
    let (code, stderr) = with_stdout_closed(&["verify".as_ref(), dir.path().as_os_str()]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    let new_dir = out.path().join("salvaged");
    let (code, stderr) = with_stdout_closed(&[
        "salvage".as_ref(),
        dir.path().as_os_str(),
        new_dir.as_os_str(),
    ]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn verify_piped_into_head_exits_without_a_panic() {
    // `halo-store verify DIR | head -1`, through a real shell pipeline.
    let dir = tempfile::tempdir().expect("tempdir");
    build_log(dir.path());
    let script = format!(
        "'{}' verify '{}' | (exec 0<&-; sleep 0.2); echo \"status ${{PIPESTATUS[0]}}\" >&2",
        env!("CARGO_BIN_EXE_halo-store"),
        dir.path().display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("status 0"), "{stderr}");
}

#[test]
fn garbage_file_is_never_replaced_by_an_empty_salvage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(db(dir.path()), &garbage).expect("write");
    let e = SqliteLog::open(dir.path()).expect_err("not a database");
    assert!(matches!(e, StoreError::StorageDamaged { .. }), "{e}");
    let e = salvage_in_place(dir.path(), &mut |_| {}).expect_err("nothing to salvage");
    assert!(e.to_string().contains("nothing readable"), "{e}");
    assert_eq!(std::fs::read(db(dir.path())).expect("read"), garbage);
    assert!(!dir.path().join("salvage.tmp").exists());
}
