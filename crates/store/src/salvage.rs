//! Salvage: copy every readable record of a damaged log into a new one, and say
//! what was lost.
//!
//! Used when SQLite reports the database file itself as damaged
//! ([`StoreError::StorageDamaged`]): a page of the file is unreadable, so the log can
//! neither be replayed nor have a damaged tail set aside. The damaged files are
//! never written: salvage copies them into a private work directory first and reads
//! the copy in two passes.
//!
//! 1. Through SQLite (read-only, tolerating a file cut short): the log in order of
//!    sequence number, skipping over the ranges of rows that cannot be reached by
//!    probing past them; the committed mark; the snapshots, newest first.
//! 2. Only if the first pass missed something: page by page ([`crate::pages`]),
//!    including the WAL's committed frames, for the records the first pass could
//!    not read. A record found this way is taken only if its CRC-32 holds, it is
//!    not on the freelist, it is not a record that was quarantined, it is not past
//!    the committed mark, and no other copy of the same sequence number disagrees.
//!
//! The new log holds the readable records in their original order, numbered
//! without gaps (a log must be dense), and the newest readable snapshot placed
//! after the last record it covers; the report lists the lost sequence numbers in
//! the original numbering.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::corruption::record_crc;
use crate::log::{EventLog, SnapshotRead};
use crate::pages::{Cell, Col, Pages};
use crate::sqlite::{
    blob_column, crc_column, read_snapshot_on, snapshot_crc, snapshot_seqs_on, sync_dir,
};
use crate::{Durability, Seq, SkippedSnapshot, SqliteLog, StoreError, verify};

/// The work directory inside the destination, removed at the end.
const WORK: &str = ".salvage-work";
/// Written in a data directory while a salvaged log replaces the damaged one.
const SWAP_MARKER: &str = "salvage-swap";
/// Where [`salvage_in_place`] builds the new log before it takes the old one's place.
const SWAP_TMP: &str = "salvage.tmp";
#[cfg(test)]
pub(crate) const SWAP_MARKER_FOR_TESTS: &str = SWAP_MARKER;
#[cfg(test)]
pub(crate) const SWAP_TMP_FOR_TESTS: &str = SWAP_TMP;
/// Records appended to the new log per transaction.
const BATCH: usize = 10_000;
/// Lost ranges listed by the report's `Display` (all are in [`SalvageReport::lost`]).
const MAX_RANGES_SHOWN: usize = 50;
/// Combinations of candidate chunks tried when reassembling one snapshot from pages.
const MAX_COMBINATIONS: usize = 16;

/// How far a salvage has got, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SalvageProgress {
    /// Copying the damaged files into the work directory.
    Copying,
    /// Reading records through SQLite.
    Reading {
        /// Records read so far.
        records: u64,
    },
    /// Reading the file page by page.
    Scanning {
        /// The page reached.
        page: u32,
        /// Pages in the file.
        pages: u32,
    },
    /// Writing the new log.
    Writing {
        /// Records written so far.
        records: u64,
        /// Records to write.
        of: u64,
    },
}

impl fmt::Display for SalvageProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Copying => write!(f, "copying the damaged files"),
            Self::Reading { records } => write!(f, "read {records} record(s) through SQLite"),
            Self::Scanning { page, pages } => write!(f, "scanned page {page} of {pages}"),
            Self::Writing { records, of } => write!(f, "wrote {records} of {of} record(s)"),
        }
    }
}

/// The snapshot copied into the new log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SalvagedSnapshot {
    /// Its sequence number in the damaged log.
    pub original_upto: Seq,
    /// Its sequence number in the new log (lower if records before it were lost).
    pub new_upto: Seq,
    /// Its size.
    pub bytes: u64,
}

/// What [`salvage`] copied and what it lost.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SalvageReport {
    /// The damaged database file (never written).
    pub source: PathBuf,
    /// The new database file.
    pub dest: PathBuf,
    /// Records copied into the new log.
    pub records_read: u64,
    /// How many of them only the page-by-page pass could read.
    pub records_from_pages: u64,
    /// Records of the damaged log that could not be read (or failed their checksum).
    pub records_lost: u64,
    /// The lost sequence numbers as inclusive ranges, in the damaged log's numbering.
    pub lost: Vec<(Seq, Seq)>,
    /// The last record the damaged log is known to have held.
    pub end: Seq,
    /// Whether [`end`](Self::end) comes from the log's committed mark. When it does
    /// not, records after it may have been lost without a trace.
    pub end_known: bool,
    /// The snapshot copied, if one was readable.
    pub snapshot: Option<SalvagedSnapshot>,
    /// Snapshots newer than the one copied that could not be read.
    pub snapshots_lost: Vec<SkippedSnapshot>,
    /// True when a record was lost before a later one that was kept, so the new
    /// log's sequence numbers differ from the damaged log's after that point.
    pub renumbered: bool,
    /// Anything else worth knowing (which passes ran, what was odd).
    pub notes: Vec<String>,
}

impl SalvageReport {
    /// True when every record of the damaged log was copied.
    pub fn is_complete(&self) -> bool {
        self.records_lost == 0 && self.end_known
    }
}

impl fmt::Display for SalvageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "salvaged {} into {}",
            self.source.display(),
            self.dest.display()
        )?;
        writeln!(
            f,
            "records: {} read ({} of them page by page), {} lost",
            self.records_read, self.records_from_pages, self.records_lost
        )?;
        if self.end_known {
            writeln!(f, "the damaged log was committed up to {}", self.end)?;
        } else {
            writeln!(
                f,
                "the damaged log's committed mark is unreadable: its last readable record is {}, and records after it may be lost without a count",
                self.end
            )?;
        }
        if !self.lost.is_empty() {
            let mut ranges: Vec<String> = self
                .lost
                .iter()
                .take(MAX_RANGES_SHOWN)
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}..={b}")
                    }
                })
                .collect();
            if self.lost.len() > MAX_RANGES_SHOWN {
                ranges.push(format!(
                    "and {} more range(s)",
                    self.lost.len() - MAX_RANGES_SHOWN
                ));
            }
            writeln!(f, "lost records: {}", ranges.join(", "))?;
        }
        if self.renumbered {
            writeln!(
                f,
                "records after the first lost one are numbered on without gaps in the new log"
            )?;
        }
        match &self.snapshot {
            Some(s) => writeln!(
                f,
                "snapshot: the newest readable one, at {}, copied ({} bytes, at {} in the new log)",
                s.original_upto, s.bytes, s.new_upto
            )?,
            None => writeln!(f, "snapshot: none readable")?,
        }
        for s in &self.snapshots_lost {
            writeln!(f, "lost {s}")?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        if self.is_complete() {
            writeln!(f, "nothing was lost")?;
        }
        Ok(())
    }
}

/// What [`salvage_in_place`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InPlaceSalvage {
    /// The salvage.
    pub report: SalvageReport,
    /// The directory the damaged files were moved to (they are kept, never deleted).
    pub set_aside: PathBuf,
}

fn io(path: &Path, kind: std::io::ErrorKind, msg: &str) -> StoreError {
    StoreError::io(path, std::io::Error::new(kind, msg.to_owned()))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Refuses a data directory whose swap to a salvaged log was interrupted.
pub(crate) fn refuse_pending_swap(dir: &Path) -> Result<(), StoreError> {
    if dir.join(SWAP_MARKER).exists() {
        return Err(StoreError::SalvagePending {
            dir: dir.display().to_string(),
        });
    }
    Ok(())
}

/// Finishes an interrupted [`salvage_in_place`]: the marker is written only once
/// the salvaged log is complete and the damaged files are linked aside, so the
/// swap can always be rolled forward. Returns whether there was one.
pub(crate) fn finish_pending_swap(dir: &Path) -> Result<bool, StoreError> {
    let marker = dir.join(SWAP_MARKER);
    if !marker.exists() {
        return Ok(false);
    }
    let tmp = dir.join(SWAP_TMP);
    let new_db = tmp.join(SqliteLog::FILE_NAME);
    let db = dir.join(SqliteLog::FILE_NAME);
    if new_db.exists() {
        // The damaged WAL must not be applied to the new file; it is kept aside.
        for suffix in ["-wal", "-shm"] {
            let p = with_suffix(&db, suffix);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&p, e)),
            }
        }
        std::fs::rename(&new_db, &db).map_err(|e| StoreError::io(&db, e))?;
        sync_dir(dir)?;
    }
    match std::fs::remove_dir_all(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(&tmp, e)),
    }
    std::fs::remove_file(&marker).map_err(|e| StoreError::io(&marker, e))?;
    sync_dir(dir)?;
    Ok(true)
}

/// Salvages the damaged log of data directory `dir` in place: copies every
/// readable record into a fresh log ([`salvage`]), moves the damaged files into
/// `dir/damaged-<unix time>/` (kept, never deleted), and puts the fresh log in
/// their place. Safe to interrupt: the next writer open finishes the swap.
///
/// # Errors
/// As [`salvage`]; filesystem failures while setting the damaged files aside.
pub fn salvage_in_place(
    dir: &Path,
    progress: &mut dyn FnMut(SalvageProgress),
) -> Result<InPlaceSalvage, StoreError> {
    refuse_pending_swap(dir)?;
    let tmp = dir.join(SWAP_TMP);
    // A leftover of an attempt interrupted before the swap began: derived data only.
    match std::fs::remove_dir_all(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(&tmp, e)),
    }
    let mut report = salvage(dir, &tmp, progress)?;
    if report.records_read == 0 && report.snapshot.is_none() {
        // Not a log worth putting in its place (perhaps not a halo store at all):
        // starting empty is for an operator to decide.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(
            &report.source,
            std::io::ErrorKind::InvalidData,
            "nothing readable could be salvaged from this file, so it was left in place; restore a backup (or move the file away to start empty)",
        ));
    }
    // Closing a writer checkpoints its WAL, so the new log is one file.
    drop(SqliteLog::open(&tmp)?);
    let tmp_wal = with_suffix(&tmp.join(SqliteLog::FILE_NAME), "-wal");
    if std::fs::metadata(&tmp_wal).is_ok_and(|m| m.len() > 0) {
        return Err(io(
            &tmp_wal,
            std::io::ErrorKind::Other,
            "the salvaged log kept a WAL; not swapping",
        ));
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = dir.join(format!("damaged-{secs}"));
    let mut n = 1;
    while aside.exists() {
        aside = dir.join(format!("damaged-{secs}-{n}"));
        n += 1;
    }
    std::fs::create_dir(&aside).map_err(|e| StoreError::io(&aside, e))?;
    let db = dir.join(SqliteLog::FILE_NAME);
    for suffix in ["", "-wal", "-shm"] {
        let from = with_suffix(&db, suffix);
        if !from.exists() {
            continue;
        }
        let to = with_suffix(&aside.join(SqliteLog::FILE_NAME), suffix);
        // A second name for the same file; a copy where links are not supported.
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| StoreError::io(&to, e))?;
        }
        std::fs::File::open(&to)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::io(&to, e))?;
    }
    sync_dir(&aside)?;
    let marker = dir.join(SWAP_MARKER);
    std::fs::write(
        &marker,
        format!(
            "A salvaged log ({}) is replacing the damaged one, kept in {}.\n",
            tmp.display(),
            aside.display()
        ),
    )
    .and_then(|()| std::fs::File::open(&marker).and_then(|f| f.sync_all()))
    .map_err(|e| StoreError::io(&marker, e))?;
    sync_dir(dir)?;
    finish_pending_swap(dir)?;
    report.dest = db;
    Ok(InPlaceSalvage {
        report,
        set_aside: aside,
    })
}

/// Copies every readable record of the damaged log at `source` (a data directory
/// or a database file), and its newest readable snapshot, into a new log in
/// `dest_dir` (which must not exist or be empty), and reports what was lost. The
/// source is only read, never written. Stop the Cloud first.
///
/// # Errors
/// The source does not exist, `dest_dir` is not empty, or the new log cannot be
/// written. Damage in the source is never an error: it is in the report.
pub fn salvage(
    source: &Path,
    dest_dir: &Path,
    progress: &mut dyn FnMut(SalvageProgress),
) -> Result<SalvageReport, StoreError> {
    let db = if source.is_dir() {
        refuse_pending_swap(source)?;
        source.join(SqliteLog::FILE_NAME)
    } else {
        source.to_path_buf()
    };
    if !db.is_file() {
        return Err(io(&db, std::io::ErrorKind::NotFound, "no halo store here"));
    }
    if dest_dir.exists() {
        let empty = std::fs::read_dir(dest_dir)
            .map_err(|e| StoreError::io(dest_dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(io(
                dest_dir,
                std::io::ErrorKind::AlreadyExists,
                "the salvage destination must be a new or empty directory",
            ));
        }
    }
    let existed = dest_dir.exists();
    let work = dest_dir.join(WORK);
    std::fs::create_dir_all(&work).map_err(|e| StoreError::io(&work, e))?;
    let result = salvage_via(&db, dest_dir, &work, progress);
    // The work directory holds copies only.
    let _ = std::fs::remove_dir_all(&work);
    if result.is_err() {
        // Everything in the destination is this salvage's own partial output (it
        // was new or empty), so a failed salvage leaves nothing half-written.
        if existed {
            for suffix in ["", "-wal", "-shm"] {
                let _ =
                    std::fs::remove_file(with_suffix(&dest_dir.join(SqliteLog::FILE_NAME), suffix));
            }
        } else {
            let _ = std::fs::remove_dir_all(dest_dir);
        }
    }
    result
}

fn salvage_via(
    db: &Path,
    dest_dir: &Path,
    work: &Path,
    progress: &mut dyn FnMut(SalvageProgress),
) -> Result<SalvageReport, StoreError> {
    progress(SalvageProgress::Copying);
    let copy = work.join("damaged.db");
    std::fs::copy(db, &copy).map_err(|e| StoreError::io(db, e))?;
    let wal = with_suffix(db, "-wal");
    let copy_wal = with_suffix(&copy, "-wal");
    let has_wal = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    if has_wal {
        std::fs::copy(&wal, &copy_wal).map_err(|e| StoreError::io(&wal, e))?;
    }
    // Pages are read before SQLite opens the copy (which may add a -shm beside it).
    let pages = Pages::open(&copy, has_wal.then_some(copy_wal.as_path()))
        .map_err(|e| StoreError::io(&copy, e))?;
    let stage = Stage::create(&work.join("stage.db"))?;
    let mut notes = Vec::new();
    let a = sqlite_pass(&copy, &stage, &mut notes, progress)?;
    let mut committed = a.committed;
    let mut records_from_pages = 0;
    let (staged, staged_max) = stage.extent()?;
    let complete =
        a.schema && !a.broken && committed.is_some_and(|c| staged == c && staged_max <= c);
    let mut snapshot = a.snapshot;
    let mut snapshots_lost = a.snapshots_lost;
    let want_snapshots = snapshot.is_none() && (a.listed.is_none() || !snapshots_lost.is_empty());
    if !complete || want_snapshots {
        notes.push(if a.schema {
            "SQLite could not read every part of the file; it was also read page by page".to_owned()
        } else {
            "SQLite cannot read the file's schema; it was read page by page".to_owned()
        });
        notes.extend(pages.notes.iter().cloned());
        let raw = raw_pass(&pages, &stage, &a.quarantined, &mut notes, progress)?;
        if committed.is_none() && !raw.committed.is_empty() {
            let max = raw.committed.iter().copied().max().unwrap_or(0);
            if raw.committed.iter().any(|&c| c != max) {
                notes.push(format!(
                    "several committed marks were found page by page; the highest ({max}) is used"
                ));
            }
            committed = Some(max);
        }
        records_from_pages = stage.adopt_raw(committed, &mut notes)?;
        if want_snapshots {
            let known: HashSet<Seq> = snapshots_lost.iter().map(|s| s.upto).collect();
            let (found, lost) = raw_snapshot(&pages, &raw, committed);
            snapshot = found;
            snapshots_lost.extend(lost.into_iter().filter(|s| {
                !known.contains(&s.upto) && snapshot.as_ref().is_none_or(|(u, _)| s.upto > *u)
            }));
            snapshots_lost.sort_by_key(|s| std::cmp::Reverse(s.upto));
        }
    }
    if a.damaged_rows > 0 {
        notes.push(format!(
            "{} record(s) that SQLite could read failed their checksum or were malformed",
            a.damaged_rows
        ));
    }
    if let Some(q) = a.quarantined.as_ref().filter(|q| !q.is_empty()) {
        notes.push(format!(
            "{} record(s) quarantined earlier stay in the damaged file only (they were never replayed)",
            q.len()
        ));
    }
    if a.older_snapshots > 0 {
        notes.push(format!(
            "{} older intact snapshot(s) were not copied (the newest readable one is enough)",
            a.older_snapshots
        ));
    }
    let (_, staged_max) = stage.extent()?;
    let end = committed.unwrap_or(0).max(staged_max);
    let (written, lost, salvaged_snapshot) = write_new(dest_dir, &stage, snapshot, end, progress)?;
    drop(stage);
    drop(pages);
    let dest = dest_dir.join(SqliteLog::FILE_NAME);
    // Checked through a writer connection: closing it leaves no -wal or -shm.
    let check = verify(&SqliteLog::open_with(dest_dir, Durability::Full)?)?;
    if !check.is_clean() || check.good_records != written {
        return Err(io(
            &dest,
            std::io::ErrorKind::InvalidData,
            &format!("the salvaged log fails its own verification: {check}"),
        ));
    }
    let records_lost = lost.iter().map(|(a, b)| b.get() - a.get() + 1).sum();
    let renumbered = lost.first().is_some_and(|(_, b)| b.get() < staged_max);
    Ok(SalvageReport {
        source: db.to_path_buf(),
        dest,
        records_read: written,
        records_from_pages,
        records_lost,
        lost,
        end: Seq::new(end),
        end_known: committed.is_some(),
        snapshot: salvaged_snapshot,
        snapshots_lost,
        renumbered,
        notes,
    })
}

/// A scratch database of the records found, by original sequence number. Its
/// writes are grouped into transactions of [`BATCH`] rows and never synced: it is
/// thrown away at the end.
struct Stage {
    conn: Connection,
    uncommitted: std::cell::Cell<usize>,
}

impl Stage {
    fn create(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=MEMORY; PRAGMA synchronous=OFF;
             CREATE TABLE rec (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);
             CREATE TABLE raw (seq INTEGER NOT NULL, payload BLOB NOT NULL);
             BEGIN;",
        )?;
        Ok(Stage {
            conn,
            uncommitted: std::cell::Cell::new(0),
        })
    }

    fn wrote(&self) -> Result<(), StoreError> {
        let n = self.uncommitted.get() + 1;
        if n >= BATCH {
            self.conn.execute_batch("COMMIT; BEGIN;")?;
            self.uncommitted.set(0);
        } else {
            self.uncommitted.set(n);
        }
        Ok(())
    }

    fn put(&self, seq: i64, payload: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO rec (seq, payload) VALUES (?1, ?2)")?
            .execute(rusqlite::params![seq, payload])?;
        self.wrote()
    }

    fn has(&self, seq: i64) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM rec WHERE seq = ?1")?
            .query_row([seq], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn put_raw(&self, seq: i64, payload: &[u8]) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT INTO raw (seq, payload) VALUES (?1, ?2)")?
            .execute(rusqlite::params![seq, payload])?;
        self.wrote()
    }

    /// How many records are staged, and the highest sequence number.
    fn extent(&self) -> Result<(u64, u64), StoreError> {
        let (n, max): (i64, Option<i64>) =
            self.conn
                .query_row("SELECT count(*), max(seq) FROM rec", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        Ok((
            u64::try_from(n).unwrap_or(0),
            max.and_then(Seq::from_sql).map_or(0, Seq::get),
        ))
    }

    /// Takes the records found page by page where exactly one version exists and
    /// it is not past `committed`; returns how many were taken.
    fn adopt_raw(
        &self,
        committed: Option<u64>,
        notes: &mut Vec<String>,
    ) -> Result<u64, StoreError> {
        let limit = committed.map_or(i64::MAX, |c| i64::try_from(c).unwrap_or(i64::MAX));
        let conflicts: i64 = self.conn.query_row(
            "SELECT count(*) FROM (SELECT seq FROM raw GROUP BY seq HAVING count(DISTINCT payload) > 1)",
            [],
            |r| r.get(0),
        )?;
        if conflicts > 0 {
            notes.push(format!(
                "{conflicts} sequence number(s) were found page by page in versions that disagree; they count as lost"
            ));
        }
        let beyond: i64 = self.conn.query_row(
            "SELECT count(DISTINCT seq) FROM raw WHERE seq > ?1",
            [limit],
            |r| r.get(0),
        )?;
        if beyond > 0 {
            notes.push(format!(
                "{beyond} record(s) found page by page lie past the committed mark (left over from an earlier history) and were not taken"
            ));
        }
        let taken = self.conn.execute(
            "INSERT OR IGNORE INTO rec (seq, payload)
             SELECT seq, min(payload) FROM raw WHERE seq <= ?1
             GROUP BY seq HAVING count(DISTINCT payload) = 1",
            [limit],
        )?;
        Ok(taken as u64)
    }
}

/// What reading through SQLite found.
struct SqlitePass {
    /// The log table could be queried at all.
    schema: bool,
    /// Some range of rows could not be read.
    broken: bool,
    committed: Option<u64>,
    /// `(seq, crc)` of quarantined records (`None`: unknown).
    quarantined: Option<HashSet<(i64, u32)>>,
    /// Rows read that failed their checks.
    damaged_rows: u64,
    /// The snapshot table's listing (`None`: unreadable).
    listed: Option<Vec<Seq>>,
    snapshot: Option<(Seq, Vec<u8>)>,
    snapshots_lost: Vec<SkippedSnapshot>,
    older_snapshots: usize,
}

enum Stream {
    Done,
    Broken(i64),
}

enum Probe {
    At(i64),
    End,
    Broken,
}

fn probe(conn: &Connection, from: i64) -> Probe {
    match conn
        .query_row(
            "SELECT seq FROM log WHERE seq >= ?1 ORDER BY seq LIMIT 1",
            [from],
            |r| r.get::<_, i64>(0),
        )
        .optional()
    {
        Ok(Some(s)) => Probe::At(s),
        Ok(None) => Probe::End,
        Err(_) => Probe::Broken,
    }
}

/// After reading failed at `at`, the first record past `at` that SQLite can reach
/// again, found by probing further and further ahead and then bisecting; `None` if
/// nothing after `at` can be reached.
fn resume_after(conn: &Connection, at: i64) -> Option<i64> {
    let mut lo = at;
    let mut step: i64 = 1;
    let mut hi = loop {
        let p = at.saturating_add(step);
        match probe(conn, p) {
            Probe::Broken if p == i64::MAX => return None,
            Probe::Broken => {
                lo = p;
                step = step.saturating_mul(2);
            }
            _ => break p,
        }
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if matches!(probe(conn, mid), Probe::Broken) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    loop {
        match probe(conn, hi) {
            Probe::At(s) => return Some(s),
            Probe::End => return None,
            Probe::Broken if hi == i64::MAX => return None,
            Probe::Broken => hi += 1,
        }
    }
}

struct Counts<'a> {
    read: u64,
    damaged: u64,
    progress: &'a mut dyn FnMut(SalvageProgress),
}

/// Reads the log from `from` on, staging every record whose checksum holds.
fn stream(
    conn: &Connection,
    from: i64,
    stage: &Stage,
    counts: &mut Counts<'_>,
) -> Result<Stream, StoreError> {
    let Ok(mut stmt) =
        conn.prepare_cached("SELECT seq, crc, payload FROM log WHERE seq >= ?1 ORDER BY seq")
    else {
        return Ok(Stream::Broken(from));
    };
    let Ok(mut rows) = stmt.query([from]) else {
        return Ok(Stream::Broken(from));
    };
    let mut next = from;
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(Stream::Done),
            Err(_) => return Ok(Stream::Broken(next)),
        };
        let Ok(seq) = row.get::<_, i64>(0) else {
            return Ok(Stream::Broken(next));
        };
        next = seq.saturating_add(1);
        let checked = match (row.get_ref(1), row.get_ref(2)) {
            (Ok(c), Ok(p)) => crc_column(c).ok().zip(blob_column(p, "payload").ok()),
            _ => None,
        };
        match (checked, Seq::from_sql(seq)) {
            (Some((crc, payload)), Some(s)) if s > Seq::ZERO && record_crc(s, payload) == crc => {
                stage.put(seq, payload)?;
                counts.read += 1;
                if counts.read % BATCH as u64 == 0 {
                    (counts.progress)(SalvageProgress::Reading {
                        records: counts.read,
                    });
                }
            }
            _ => counts.damaged += 1,
        }
    }
}

fn sqlite_pass(
    db: &Path,
    stage: &Stage,
    notes: &mut Vec<String>,
    progress: &mut dyn FnMut(SalvageProgress),
) -> Result<SqlitePass, StoreError> {
    let mut pass = SqlitePass {
        schema: false,
        broken: false,
        committed: None,
        quarantined: None,
        damaged_rows: 0,
        listed: None,
        snapshot: None,
        snapshots_lost: Vec::new(),
        older_snapshots: 0,
    };
    let conn = match Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            notes.push(format!("SQLite cannot open the file: {e}"));
            return Ok(pass);
        }
    };
    // Reads a file whose header counts more pages than it holds (cut short).
    let _ = conn.execute_batch("PRAGMA writable_schema=ON; PRAGMA query_only=ON;");
    pass.schema = conn.prepare("SELECT seq FROM log WHERE 0").is_ok();
    if !pass.schema {
        return Ok(pass);
    }
    pass.committed = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'committed_seq'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .and_then(|v| u64::try_from(v).ok());
    pass.quarantined = (|| -> rusqlite::Result<HashSet<(i64, u32)>> {
        let mut stmt = conn.prepare("SELECT seq, crc FROM quarantine")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))
        })?;
        let mut set = HashSet::new();
        for row in rows {
            if let (Some(seq), Some(crc)) = row? {
                if let Ok(crc) = u32::try_from(crc) {
                    set.insert((seq, crc));
                }
            }
        }
        Ok(set)
    })()
    .ok();
    let mut counts = Counts {
        read: 0,
        damaged: 0,
        progress,
    };
    let mut from = 1i64;
    loop {
        match stream(&conn, from, stage, &mut counts)? {
            Stream::Done => break,
            Stream::Broken(at) => {
                pass.broken = true;
                match resume_after(&conn, at) {
                    Some(s) => from = s,
                    None => break,
                }
            }
        }
    }
    pass.damaged_rows = counts.damaged;
    pass.listed = snapshot_seqs_on(&conn).ok();
    for upto in pass.listed.clone().unwrap_or_default() {
        if pass.snapshot.is_some() {
            pass.older_snapshots += 1;
            continue;
        }
        let reason = match read_snapshot_on(&conn, upto) {
            Ok(SnapshotRead::Valid(bytes)) => {
                if pass.committed.is_none_or(|c| upto.get() <= c) {
                    pass.snapshot = Some((upto, bytes));
                    continue;
                }
                "it is ahead of the log's committed mark".to_owned()
            }
            Ok(SnapshotRead::Damaged(reason)) => reason,
            Err(e) => e.to_string(),
        };
        pass.snapshots_lost.push(SkippedSnapshot { upto, reason });
    }
    Ok(pass)
}

/// What the page-by-page pass found besides log records.
struct RawPass {
    committed: Vec<u64>,
    /// Snapshot headers: `(upto, len, chunks, crc)`.
    headers: Vec<(Seq, u64, usize, u32)>,
    chunks: HashMap<(i64, i64), Vec<Cell>>,
}

fn raw_pass(
    pages: &Pages,
    stage: &Stage,
    quarantined: &Option<HashSet<(i64, u32)>>,
    notes: &mut Vec<String>,
    progress: &mut dyn FnMut(SalvageProgress),
) -> Result<RawPass, StoreError> {
    let mut raw = RawPass {
        committed: Vec::new(),
        headers: Vec::new(),
        chunks: HashMap::new(),
    };
    let free = pages.free_pages();
    if free.is_none() {
        notes.push(
            "the freelist is unreadable, so unused pages were read too (a record from them is taken only if its checksum holds and no other copy disagrees)"
                .to_owned(),
        );
    }
    if quarantined.is_none() {
        notes.push("the quarantine table is unreadable, so records set aside earlier could not be told apart".to_owned());
    }
    let total = pages.count();
    let mut missing = 0u32;
    let mut quarantined_seen = 0u64;
    for n in 2..=total {
        if n % 1024 == 0 {
            progress(SalvageProgress::Scanning {
                page: n,
                pages: total,
            });
        }
        if free.as_ref().is_some_and(|f| f.contains(&n)) {
            continue;
        }
        let Some(page) = pages.page(n) else {
            missing += 1;
            continue;
        };
        for cell in pages.leaf_cells(n, &page) {
            let Some(cols) = crate::pages::columns(&cell.local) else {
                continue;
            };
            match cols.as_slice() {
                // log: seq (the rowid), crc, payload
                [
                    Col::Null,
                    Col::Int(crc),
                    Col::Blob(_) | Col::Text(_) | Col::Beyond,
                ] => {
                    let (Ok(crc), Some(seq)) = (u32::try_from(*crc), Seq::from_sql(cell.rowid))
                    else {
                        continue;
                    };
                    if seq == Seq::ZERO || stage.has(cell.rowid)? {
                        continue;
                    }
                    let Some(full) = pages.payload(&cell) else {
                        continue;
                    };
                    let decoded = crate::pages::columns(&full);
                    let Some(
                        [
                            Col::Null,
                            Col::Int(_),
                            Col::Blob(payload) | Col::Text(payload),
                        ],
                    ) = decoded.as_deref()
                    else {
                        continue;
                    };
                    if record_crc(seq, payload) != crc {
                        continue;
                    }
                    if quarantined
                        .as_ref()
                        .is_some_and(|q| q.contains(&(cell.rowid, crc)))
                    {
                        quarantined_seen += 1;
                        continue;
                    }
                    stage.put_raw(cell.rowid, payload)?;
                }
                // snapshot header: upto (the rowid), len, chunks, crc
                [Col::Null, Col::Int(len), Col::Int(chunks), Col::Int(crc)] => {
                    if let (Some(upto), Ok(len), Ok(chunks), Ok(crc)) = (
                        Seq::from_sql(cell.rowid),
                        u64::try_from(*len),
                        usize::try_from(*chunks),
                        u32::try_from(*crc),
                    ) {
                        raw.headers.push((upto, len, chunks, crc));
                    }
                }
                // snapshot chunk: upto, idx, data
                [Col::Int(upto), Col::Int(idx), Col::Blob(_) | Col::Beyond] => {
                    raw.chunks.entry((*upto, *idx)).or_default().push(cell);
                }
                // meta: the committed mark
                [Col::Text(b"committed_seq"), Col::Int(v)] => {
                    if let Ok(v) = u64::try_from(*v) {
                        raw.committed.push(v);
                    }
                }
                _ => {}
            }
        }
    }
    progress(SalvageProgress::Scanning {
        page: total,
        pages: total,
    });
    if missing > 0 {
        notes.push(format!("{missing} page(s) are missing or unreadable"));
    }
    if quarantined_seen > 0 {
        notes.push(format!(
            "{quarantined_seen} record(s) found page by page were quarantined earlier and were not taken"
        ));
    }
    raw.headers.sort_unstable_by_key(|&h| std::cmp::Reverse(h));
    raw.headers.dedup();
    Ok(raw)
}

/// The newest snapshot that reassembles from pages with a good checksum (not past
/// `committed`), and the newer ones that did not.
fn raw_snapshot(
    pages: &Pages,
    raw: &RawPass,
    committed: Option<u64>,
) -> (Option<(Seq, Vec<u8>)>, Vec<SkippedSnapshot>) {
    let mut lost: Vec<SkippedSnapshot> = Vec::new();
    for &(upto, len, chunks, crc) in &raw.headers {
        if committed.is_some_and(|c| upto.get() > c) {
            continue;
        }
        match assemble(pages, raw, upto, len, chunks, crc) {
            Ok(bytes) => return (Some((upto, bytes)), lost),
            Err(reason) => {
                if lost.last().is_none_or(|l| l.upto != upto) {
                    lost.push(SkippedSnapshot { upto, reason });
                }
            }
        }
    }
    (None, lost)
}

fn assemble(
    pages: &Pages,
    raw: &RawPass,
    upto: Seq,
    len: u64,
    chunks: usize,
    crc: u32,
) -> Result<Vec<u8>, String> {
    let key = i64::try_from(upto.get()).map_err(|_| "out of range".to_owned())?;
    let mut candidates: Vec<Vec<Vec<u8>>> = Vec::with_capacity(chunks.min(1024));
    let mut combinations = 1usize;
    for idx in 0..chunks {
        let cells = i64::try_from(idx)
            .ok()
            .and_then(|i| raw.chunks.get(&(key, i)))
            .ok_or_else(|| format!("chunk {idx} of {chunks} not found"))?;
        let mut datas: Vec<Vec<u8>> = Vec::new();
        for cell in cells {
            let Some(full) = pages.payload(cell) else {
                continue;
            };
            if let Some([Col::Int(_), Col::Int(_), Col::Blob(data)]) =
                crate::pages::columns(&full).as_deref()
            {
                if !datas.iter().any(|d| d == data) {
                    datas.push(data.to_vec());
                }
            }
        }
        if datas.is_empty() {
            return Err(format!("chunk {idx} of {chunks} is unreadable"));
        }
        combinations = combinations.saturating_mul(datas.len());
        if combinations > MAX_COMBINATIONS {
            return Err("too many conflicting copies of its chunks".to_owned());
        }
        candidates.push(datas);
    }
    let mut choice = vec![0usize; candidates.len()];
    loop {
        let parts = candidates
            .iter()
            .zip(&choice)
            .map(|(c, &i)| c[i].as_slice());
        let total: u64 = parts.clone().map(|p| p.len() as u64).sum();
        if total == len && snapshot_crc(upto, len, parts.clone()) == crc {
            return Ok(parts.flatten().copied().collect());
        }
        // Next combination (odometer).
        let mut i = 0;
        loop {
            if i == choice.len() {
                return Err("no copy of its chunks matches its checksum".to_owned());
            }
            choice[i] += 1;
            if choice[i] < candidates[i].len() {
                break;
            }
            choice[i] = 0;
            i += 1;
        }
    }
}

type Written = (u64, Vec<(Seq, Seq)>, Option<SalvagedSnapshot>);

/// Writes the staged records, in order and without gaps, and the snapshot after
/// the last record it covers, into a new log in `dest_dir`; returns how many were
/// written, the lost ranges up to `end`, and where the snapshot went.
fn write_new(
    dest_dir: &Path,
    stage: &Stage,
    snapshot: Option<(Seq, Vec<u8>)>,
    end: u64,
    progress: &mut dyn FnMut(SalvageProgress),
) -> Result<Written, StoreError> {
    let mut log = SqliteLog::open_with(dest_dir, Durability::Full)?;
    if log.last_seq() != Seq::ZERO || !log.snapshot_seqs()?.is_empty() {
        return Err(io(
            log.path(),
            std::io::ErrorKind::AlreadyExists,
            "the salvage destination already holds a log",
        ));
    }
    let (of, _) = stage.extent()?;
    let mut pending = snapshot;
    let mut placed = None;
    let mut lost = Vec::new();
    let mut expected = 1u64;
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut written = 0u64;
    let mut flush = |log: &mut SqliteLog, batch: &mut Vec<Vec<u8>>| -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let slices: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        log.append(&slices)?;
        written += batch.len() as u64;
        batch.clear();
        progress(SalvageProgress::Writing {
            records: written,
            of,
        });
        Ok(())
    };
    let place = |log: &mut SqliteLog,
                 pending: &mut Option<(Seq, Vec<u8>)>|
     -> Result<Option<SalvagedSnapshot>, StoreError> {
        let Some((upto, bytes)) = pending.take() else {
            return Ok(None);
        };
        let new_upto = log.last_seq();
        log.write_snapshot(new_upto, &bytes)?;
        Ok(Some(SalvagedSnapshot {
            original_upto: upto,
            new_upto,
            bytes: bytes.len() as u64,
        }))
    };
    let mut stmt = stage
        .conn
        .prepare("SELECT seq, payload FROM rec ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let seq = Seq::from_sql(row.get(0)?).map_or(0, Seq::get);
        let payload: Vec<u8> = row.get(1)?;
        if seq > expected {
            lost.push((Seq::new(expected), Seq::new(seq - 1)));
        }
        expected = seq.saturating_add(1);
        if pending.as_ref().is_some_and(|(upto, _)| seq > upto.get()) {
            flush(&mut log, &mut batch)?;
            placed = place(&mut log, &mut pending)?;
        }
        batch.push(payload);
        if batch.len() >= BATCH {
            flush(&mut log, &mut batch)?;
        }
    }
    flush(&mut log, &mut batch)?;
    if pending.is_some() {
        placed = place(&mut log, &mut pending)?;
    }
    if end >= expected {
        lost.push((Seq::new(expected), Seq::new(end)));
    }
    log.checkpoint()?;
    Ok((written, lost, placed))
}
