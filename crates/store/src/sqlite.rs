//! The embedded [`EventLog`]: one SQLite file in WAL mode, fsync'd at every commit.
//!
//! Layout of `<dir>/halo.db` (format 1):
//!
//! | table | columns | holds |
//! | --- | --- | --- |
//! | `meta` | `key`, `value` | `format` (1) and `committed_seq` (end of the log as last committed) |
//! | `log` | `seq`, `crc`, `payload` | one row per record; `crc` = CRC-32 of `seq` (u64 LE) then `payload` |
//! | `snapshot` | `upto`, `len`, `chunks`, `crc` | one row per snapshot; `crc` covers `upto`, `len` (u64 LE) and the bytes |
//! | `snapshot_chunk` | `upto`, `idx`, `data` | a snapshot's bytes in 4 MiB chunks |
//! | `quarantine`, `quarantine_snapshot`, `quarantine_snapshot_chunk` | as above plus `reason` | what [`EventLog::quarantine_after`] moved aside |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use rusqlite::config::DbConfig;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::corruption::record_crc;
use crate::log::{EventLog, ReadReport, Rejected, SnapshotRead, Visit};
use crate::{Corruption, CorruptionKind, Seq, StoreError};

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// `PRAGMA application_id` of a halo store ("HALO" in ASCII).
const APPLICATION_ID: i64 = 0x4841_4C4F;

/// Snapshots are stored in chunks of this many bytes.
const SNAPSHOT_CHUNK: usize = 4 << 20;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, crc INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot (upto INTEGER PRIMARY KEY, len INTEGER NOT NULL,
    chunks INTEGER NOT NULL, crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot_chunk (upto INTEGER NOT NULL, idx INTEGER NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (upto, idx));
CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY, seq INTEGER, crc INTEGER,
    payload BLOB, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine_snapshot (id INTEGER PRIMARY KEY, upto INTEGER, len INTEGER,
    chunks INTEGER, crc INTEGER, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine_snapshot_chunk (upto INTEGER, idx INTEGER, data BLOB);
INSERT OR IGNORE INTO meta (key, value) VALUES ('committed_seq', 0);
";

/// How hard a commit works to survive a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: every commit fsyncs the WAL before `append` returns, so
    /// an acknowledged record survives a process kill *and* a power loss. The only
    /// setting for production.
    Full,
    /// `synchronous=NORMAL`: commits reach the OS but are fsync'd only at
    /// checkpoints. Survives a process kill (SIGKILL) but may lose the last commits
    /// on power loss. For tests and benchmarks only.
    Unsynced,
}

/// The SQLite [`EventLog`]: `<dir>/halo.db` in WAL mode.
///
/// One process writes a data directory at a time; a second writer is detected on
/// its next append ([`StoreError::ConcurrentWriter`]). Readers (backup, verify) may
/// open the same file while the writer runs.
#[derive(Debug)]
pub struct SqliteLog {
    conn: Connection,
    path: PathBuf,
    last: Seq,
    /// The `synchronous` pragma in force (`FULL` or `NORMAL`).
    sync: &'static str,
    /// Held around every write transaction of this process, by this log and by its
    /// [`SnapshotWriter`]s. SQLite's own lock waits by polling and is not fair: a
    /// busy appender can starve a snapshot writer past any timeout. This mutex is
    /// eventually fair (parking_lot hands it over within about 0.5 ms), so the two
    /// take turns, one short transaction each.
    gate: Arc<Mutex<()>>,
    /// How long the last append's commit took (the WAL write and, under
    /// `synchronous=FULL`, its fsync); for metrics.
    last_commit: Option<std::time::Duration>,
}

impl SqliteLog {
    /// The database file's name inside the data directory.
    pub const FILE_NAME: &'static str = "halo.db";

    /// Opens (creating if needed) the log in `dir` with [`Durability::Full`].
    ///
    /// # Errors
    /// The directory cannot be created, the file is not a halo store of a supported
    /// format, or SQLite fails.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, Durability::Full)
    }

    /// Opens (creating if needed) the log in `dir` with the given durability.
    ///
    /// # Errors
    /// As [`SqliteLog::open`].
    pub fn open_with(dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        crate::salvage::finish_pending_swap(dir)?;
        let path = dir.join(Self::FILE_NAME);
        let fresh = !path.exists();
        let mut conn = Connection::open(&path).map_err(|e| damaged(&path, None, e.into()))?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Unsynced => "NORMAL",
        };
        let last = init(&mut conn, sync).map_err(|e| damaged(&path, Some(&conn), e))?;
        if fresh {
            sync_dir(dir)?;
        }
        Ok(SqliteLog {
            conn,
            path,
            last,
            sync,
            gate: Arc::default(),
            last_commit: None,
        })
    }

    /// Opens an existing log read-only, for tools that inspect or back up a data
    /// directory (possibly while its writer runs). Writes through this handle fail.
    ///
    /// # Errors
    /// The file does not exist, is not a halo store of a supported format, or
    /// SQLite fails.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        crate::salvage::refuse_pending_swap(dir)?;
        Self::open_read_only_file(&dir.join(Self::FILE_NAME))
    }

    /// Opens a database file read-only by its own path (for example a backup made
    /// with [`SqliteLog::backup_to`]).
    ///
    /// # Errors
    /// As [`SqliteLog::open_read_only`].
    pub fn open_read_only_file(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        if !path.exists() {
            return Err(StoreError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no halo store here"),
            ));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| damaged(&path, None, e.into()))?;
        let last = (|| {
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            check_format(&conn)?;
            end_of_log(&conn)
        })()
        .map_err(|e| damaged(&path, Some(&conn), e))?;
        Ok(SqliteLog {
            conn,
            path,
            last,
            sync: "FULL",
            gate: Arc::default(),
            last_commit: None,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a consistent, compacted copy of the whole database to `dest` (which
    /// must not exist), while this handle stays usable (`VACUUM INTO`).
    ///
    /// # Errors
    /// `dest` exists or is not UTF-8, or SQLite fails.
    pub fn backup_to(&self, dest: &Path) -> Result<(), StoreError> {
        if dest.exists() {
            return Err(StoreError::io(
                dest,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "backup target exists"),
            ));
        }
        let Some(dest_str) = dest.to_str() else {
            return Err(StoreError::io(
                dest,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "path is not UTF-8"),
            ));
        };
        self.conn
            .execute("VACUUM INTO ?1", [dest_str])
            .map_err(|e| self.damaged(e.into()))?;
        Ok(())
    }

    /// Copies the WAL into the main file and truncates it (`wal_checkpoint(TRUNCATE)`),
    /// so that the data directory is a single file.
    ///
    /// # Errors
    /// SQLite fails.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| self.damaged(e.into()))?;
        Ok(())
    }

    /// How many records the log table holds.
    ///
    /// # Errors
    /// SQLite fails.
    pub fn record_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
            .map_err(|e| self.damaged(e.into()))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// A second connection to the same file for writing snapshots on another
    /// thread (see [`SnapshotWriter`]), with the same durability as this log.
    ///
    /// # Errors
    /// SQLite fails.
    pub fn snapshot_writer(&self) -> Result<SnapshotWriter, StoreError> {
        let conn = Connection::open(&self.path).map_err(|e| self.damaged(e.into()))?;
        (|| {
            // A background writer can afford to wait for another process's lock.
            conn.busy_timeout(std::time::Duration::from_secs(60))?;
            conn.execute_batch(&format!("PRAGMA synchronous={};", self.sync))?;
            check_format(&conn)
        })()
        .map_err(|e| damaged(&self.path, Some(&conn), e))?;
        Ok(SnapshotWriter {
            conn,
            path: self.path.clone(),
            gate: Arc::clone(&self.gate),
        })
    }

    fn committed(&self) -> Result<Seq, StoreError> {
        committed_seq(&self.conn)
    }

    /// Turns SQLite's report of a damaged file into [`StoreError::StorageDamaged`].
    fn damaged(&self, e: StoreError) -> StoreError {
        damaged(&self.path, Some(&self.conn), e)
    }
}

/// Sets up a freshly opened writer connection and returns the end of the log.
fn init(conn: &mut Connection, sync: &str) -> Result<Seq, StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // journal_mode returns a row, so it is read rather than executed.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::UnsupportedFormat {
            found: format!("journal mode {mode} (WAL required)"),
            supported: FORMAT_VERSION,
        });
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA journal_size_limit={};",
        64 << 20
    ))?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let app_id: i64 = tx.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let has_tables: i64 = tx.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if app_id == 0 && has_tables == 0 {
        tx.execute_batch(&format!(
            "PRAGMA application_id={APPLICATION_ID}; {SCHEMA}
             INSERT OR IGNORE INTO meta (key, value) VALUES ('format', {FORMAT_VERSION});"
        ))?;
    }
    tx.commit()?;
    check_format(conn)?;
    end_of_log(conn)
}

/// If `e` is SQLite reporting the file itself as damaged (`SQLITE_CORRUPT`,
/// `SQLITE_NOTADB`), makes it [`StoreError::StorageDamaged`] naming `path`, and
/// tells `conn` not to checkpoint its WAL into the damaged file when it closes (the
/// file is left as it was found, for salvage).
fn damaged(path: &Path, conn: Option<&Connection>, e: StoreError) -> StoreError {
    match e {
        StoreError::Sqlite(ref s) if is_file_corruption(s) => {
            if let Some(conn) = conn {
                // Best effort: failing to set it only means SQLite behaves as usual.
                let _ = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
            }
            StoreError::StorageDamaged {
                path: path.display().to_string(),
                reason: s.to_string(),
            }
        }
        other => other,
    }
}

fn check_format(conn: &Connection) -> Result<(), StoreError> {
    let app_id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if app_id != APPLICATION_ID {
        return Err(StoreError::UnsupportedFormat {
            found: format!("application_id {app_id:#x} is not a halo store"),
            supported: FORMAT_VERSION,
        });
    }
    let format: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
            r.get(0)
        })
        .optional()?;
    match format {
        Some(f) if f == i64::from(FORMAT_VERSION) => Ok(()),
        Some(f) => Err(StoreError::UnsupportedFormat {
            found: format!("format {f}"),
            supported: FORMAT_VERSION,
        }),
        None => Err(StoreError::UnsupportedFormat {
            found: "no format marker".to_owned(),
            supported: FORMAT_VERSION,
        }),
    }
}

fn committed_seq(conn: &Connection) -> Result<Seq, StoreError> {
    let v: i64 = conn.query_row(
        "SELECT value FROM meta WHERE key = 'committed_seq'",
        [],
        |r| r.get(0),
    )?;
    Ok(Seq::from_sql(v).unwrap_or(Seq::ZERO))
}

/// The end of the log: the larger of the highest stored record and the committed
/// mark, so that a truncated tail is never silently reused.
fn end_of_log(conn: &Connection) -> Result<Seq, StoreError> {
    let max: Option<i64> = conn.query_row("SELECT max(seq) FROM log", [], |r| r.get(0))?;
    let max = max.and_then(Seq::from_sql).unwrap_or(Seq::ZERO);
    Ok(max.max(committed_seq(conn)?))
}

#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// SQLite says the file itself is damaged (as opposed to busy, full, ...).
pub(crate) fn is_file_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

pub(crate) fn crc_column(v: ValueRef<'_>) -> Result<u32, String> {
    match v {
        ValueRef::Integer(i) => {
            u32::try_from(i).map_err(|_| format!("checksum {i} is not a 32-bit value"))
        }
        other => Err(format!("checksum column holds {:?}", other.data_type())),
    }
}

pub(crate) fn blob_column<'a>(v: ValueRef<'a>, what: &str) -> Result<&'a [u8], String> {
    match v {
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b),
        other => Err(format!("{what} column holds {:?}", other.data_type())),
    }
}

/// The [`EventLog`] operations, before [`SqliteLog::damaged`] names a damaged file.
impl SqliteLog {
    fn append_raw(&mut self, records: &[&[u8]]) -> Result<Seq, StoreError> {
        if records.is_empty() {
            return Ok(self.last);
        }
        let gate = Arc::clone(&self.gate);
        let _turn = gate.lock();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let committed = committed_seq(&tx)?;
        if committed > self.last {
            return Err(StoreError::ConcurrentWriter {
                expected: self.last,
                found: committed,
            });
        }
        let mut seq = self.last;
        {
            let mut stmt =
                tx.prepare_cached("INSERT INTO log (seq, crc, payload) VALUES (?1, ?2, ?3)")?;
            for record in records {
                seq = seq.checked_next().ok_or(StoreError::SeqOverflow)?;
                let crc = record_crc(seq, record);
                match stmt.execute(params![seq.to_sql()?, i64::from(crc), record]) {
                    Ok(_) => {}
                    Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                        return Err(StoreError::ConcurrentWriter {
                            expected: self.last,
                            found: seq,
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'committed_seq'",
            [seq.to_sql()?],
        )?;
        let committing = std::time::Instant::now();
        tx.commit()?;
        self.last_commit = Some(committing.elapsed());
        self.last = seq;
        Ok(seq)
    }

    fn read_from_raw(&self, after: Seq, f: &mut Visit<'_>) -> Result<ReadReport, StoreError> {
        let mut last = after;
        let mut delivered = 0u64;
        let mut stop: Option<(Seq, CorruptionKind)> = None;
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT seq, crc, payload FROM log WHERE seq > ?1 ORDER BY seq")?;
            let mut rows = stmt.query([after.to_sql()?])?;
            loop {
                let expected = last.checked_next().ok_or(StoreError::SeqOverflow)?;
                let row = match rows.next() {
                    Ok(Some(row)) => row,
                    Ok(None) => break,
                    // SQLite reporting the file as damaged (SQLITE_CORRUPT) is not
                    // one bad record: the tail cannot even be read to be set aside.
                    // The caller gets StorageDamaged (see `damaged`).
                    Err(e) => return Err(e.into()),
                };
                let raw: i64 = row.get(0)?;
                let Some(seq) = Seq::from_sql(raw) else {
                    // `WHERE seq > after` with `after >= 0` never yields a negative seq.
                    break;
                };
                if seq != expected {
                    stop = Some((expected, CorruptionKind::Gap { found: seq }));
                    break;
                }
                let (crc_ref, payload_ref) = (row.get_ref(1)?, row.get_ref(2)?);
                let checked = crc_column(crc_ref)
                    .and_then(|stored| blob_column(payload_ref, "payload").map(|p| (stored, p)));
                let (stored, payload) = match checked {
                    Ok(v) => v,
                    Err(reason) => {
                        stop = Some((seq, CorruptionKind::Unreadable { reason }));
                        break;
                    }
                };
                let computed = record_crc(seq, payload);
                if computed != stored {
                    stop = Some((seq, CorruptionKind::ChecksumMismatch { stored, computed }));
                    break;
                }
                if let Err(Rejected(reason)) = f(seq, payload) {
                    stop = Some((seq, CorruptionKind::Undecodable { reason }));
                    break;
                }
                last = seq;
                delivered += 1;
            }
        }
        let stopped_at = match stop {
            Some((at, kind)) => {
                let n: i64 = self
                    .conn
                    .query_row(
                        "SELECT count(*) FROM log WHERE seq > ?1",
                        [last.to_sql()?],
                        |r| r.get(0),
                    )
                    .unwrap_or(-1);
                Some(Corruption {
                    last_good: last,
                    at,
                    kind,
                    unreplayed: u64::try_from(n).unwrap_or(0),
                })
            }
            None => {
                let committed = self.committed()?;
                (committed > last).then(|| Corruption {
                    last_good: last,
                    at: last.checked_next().unwrap_or(last),
                    kind: CorruptionKind::Truncated { committed },
                    unreplayed: 0,
                })
            }
        };
        Ok(ReadReport {
            last_delivered: last,
            delivered,
            stopped_at,
        })
    }

    fn write_snapshot_raw(&mut self, upto: Seq, state: &[u8]) -> Result<(), StoreError> {
        write_snapshot_on(&mut self.conn, &self.gate, upto, self.last, state)
    }

    fn snapshot_seqs_raw(&self) -> Result<Vec<Seq>, StoreError> {
        snapshot_seqs_on(&self.conn)
    }

    fn retain_snapshots_raw(&mut self, keep: usize) -> Result<u64, StoreError> {
        retain_snapshots_on(&mut self.conn, &self.gate, keep)
    }

    fn quarantine_after_raw(&mut self, last_good: Seq, reason: &str) -> Result<u64, StoreError> {
        let key = last_good.to_sql()?;
        let gate = Arc::clone(&self.gate);
        let _turn = gate.lock();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let moved = tx.execute(
            "INSERT INTO quarantine (seq, crc, payload, reason)
             SELECT seq, crc, payload, ?2 FROM log WHERE seq > ?1 ORDER BY seq",
            params![key, reason],
        )?;
        tx.execute("DELETE FROM log WHERE seq > ?1", [key])?;
        // Snapshots past the new end would otherwise hide the records appended next.
        tx.execute(
            "INSERT INTO quarantine_snapshot (upto, len, chunks, crc, reason)
             SELECT upto, len, chunks, crc, ?2 FROM snapshot WHERE upto > ?1",
            params![key, reason],
        )?;
        tx.execute(
            "INSERT INTO quarantine_snapshot_chunk (upto, idx, data)
             SELECT upto, idx, data FROM snapshot_chunk WHERE upto > ?1",
            [key],
        )?;
        tx.execute("DELETE FROM snapshot_chunk WHERE upto > ?1", [key])?;
        tx.execute("DELETE FROM snapshot WHERE upto > ?1", [key])?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'committed_seq'",
            [key],
        )?;
        tx.commit()?;
        self.last = last_good;
        Ok(moved as u64)
    }
}

impl EventLog for SqliteLog {
    fn append(&mut self, records: &[&[u8]]) -> Result<Seq, StoreError> {
        self.append_raw(records).map_err(|e| self.damaged(e))
    }

    fn last_seq(&self) -> Seq {
        self.last
    }

    fn last_commit_time(&self) -> Option<std::time::Duration> {
        self.last_commit
    }

    fn read_from(&self, after: Seq, f: &mut Visit<'_>) -> Result<ReadReport, StoreError> {
        self.read_from_raw(after, f).map_err(|e| self.damaged(e))
    }

    fn write_snapshot(&mut self, upto: Seq, state: &[u8]) -> Result<(), StoreError> {
        self.write_snapshot_raw(upto, state)
            .map_err(|e| self.damaged(e))
    }

    fn snapshot_seqs(&self) -> Result<Vec<Seq>, StoreError> {
        self.snapshot_seqs_raw().map_err(|e| self.damaged(e))
    }

    fn read_snapshot(&self, upto: Seq) -> Result<SnapshotRead, StoreError> {
        read_snapshot_on(&self.conn, upto).map_err(|e| self.damaged(e))
    }

    fn retain_snapshots(&mut self, keep: usize) -> Result<u64, StoreError> {
        self.retain_snapshots_raw(keep).map_err(|e| self.damaged(e))
    }

    fn quarantine_after(&mut self, last_good: Seq, reason: &str) -> Result<u64, StoreError> {
        self.quarantine_after_raw(last_good, reason)
            .map_err(|e| self.damaged(e))
    }
}

/// Reads and verifies the snapshot at `upto` through `conn`.
pub(crate) fn read_snapshot_on(conn: &Connection, upto: Seq) -> Result<SnapshotRead, StoreError> {
    let key = upto.to_sql()?;
    let head: Option<(i64, i64, i64)> = conn
        .query_row(
            "SELECT len, chunks, crc FROM snapshot WHERE upto = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((len, chunks, stored)) = head else {
        return Ok(SnapshotRead::Damaged("no such snapshot".to_owned()));
    };
    let (Ok(len), Ok(stored)) = (u64::try_from(len), u32::try_from(stored)) else {
        return Ok(SnapshotRead::Damaged("header out of range".to_owned()));
    };
    let Ok(capacity) = usize::try_from(len) else {
        return Ok(SnapshotRead::Damaged(
            "length does not fit in memory".to_owned(),
        ));
    };
    let mut bytes = Vec::with_capacity(capacity.min(1 << 30));
    let mut stmt =
        conn.prepare_cached("SELECT idx, data FROM snapshot_chunk WHERE upto = ?1 ORDER BY idx")?;
    let mut rows = stmt.query([key])?;
    let mut next_idx = 0i64;
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) if is_file_corruption(&e) => {
                return Ok(SnapshotRead::Damaged(format!(
                    "sqlite reports a damaged file: {e}"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let idx: i64 = match row.get_ref(0)? {
            ValueRef::Integer(i) => i,
            _ => {
                return Ok(SnapshotRead::Damaged(
                    "chunk index is not an integer".to_owned(),
                ));
            }
        };
        if idx != next_idx {
            return Ok(SnapshotRead::Damaged(format!("chunk {next_idx} missing")));
        }
        match blob_column(row.get_ref(1)?, "chunk") {
            Ok(b) => bytes.extend_from_slice(b),
            Err(reason) => return Ok(SnapshotRead::Damaged(reason)),
        }
        next_idx += 1;
    }
    if next_idx != chunks {
        return Ok(SnapshotRead::Damaged(format!(
            "{next_idx} of {chunks} chunks present"
        )));
    }
    if u64::try_from(bytes.len()).ok() != Some(len) {
        return Ok(SnapshotRead::Damaged(format!(
            "{} bytes present, header says {len}",
            bytes.len()
        )));
    }
    let computed = snapshot_crc(upto, len, std::iter::once(bytes.as_slice()));
    if computed != stored {
        return Ok(SnapshotRead::Damaged(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    Ok(SnapshotRead::Valid(bytes))
}

/// CRC-32 of a snapshot: `upto` and `len` (u64 LE) then its bytes.
pub(crate) fn snapshot_crc<'a>(
    upto: Seq,
    len: u64,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&upto.get().to_le_bytes());
    h.update(&len.to_le_bytes());
    for part in parts {
        h.update(part);
    }
    h.finalize()
}

pub(crate) fn snapshot_seqs_on(conn: &Connection) -> Result<Vec<Seq>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT upto FROM snapshot ORDER BY upto DESC")?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
    let mut out = Vec::new();
    for row in rows {
        if let Some(seq) = Seq::from_sql(row?) {
            out.push(seq);
        }
    }
    Ok(out)
}

/// Writes a snapshot in short transactions: one per chunk, then the header row,
/// which is what makes it visible. A crash part-way leaves only headerless chunks,
/// which readers never see and [`retain_snapshots_on`] removes. Appends from
/// another connection interleave between the chunks instead of waiting for the
/// whole snapshot.
fn write_snapshot_on(
    conn: &mut Connection,
    gate: &Mutex<()>,
    upto: Seq,
    last: Seq,
    state: &[u8],
) -> Result<(), StoreError> {
    if upto > last {
        return Err(StoreError::SnapshotAhead { upto, last });
    }
    let key = upto.to_sql()?;
    // Every step is an IMMEDIATE transaction: it takes the write lock up front
    // (waiting through the busy timeout) instead of upgrading a read, which in WAL
    // mode fails at once (SQLITE_BUSY_SNAPSHOT) when another connection has just
    // appended.
    {
        let _turn = gate.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM snapshot WHERE upto = ?1", [key])?;
        tx.execute("DELETE FROM snapshot_chunk WHERE upto = ?1", [key])?;
        tx.commit()?;
    }
    let mut chunks = 0i64;
    for chunk in state.chunks(SNAPSHOT_CHUNK) {
        let _turn = gate.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("INSERT INTO snapshot_chunk (upto, idx, data) VALUES (?1, ?2, ?3)")?
            .execute(params![key, chunks, chunk])?;
        tx.commit()?;
        chunks += 1;
    }
    let len = u64::try_from(state.len()).map_err(|_| StoreError::SeqOverflow)?;
    let crc = snapshot_crc(upto, len, std::iter::once(state));
    let _turn = gate.lock();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO snapshot (upto, len, chunks, crc) VALUES (?1, ?2, ?3, ?4)",
        params![
            key,
            i64::try_from(len).map_err(|_| StoreError::SeqOverflow)?,
            chunks,
            i64::from(crc)
        ],
    )?;
    tx.commit()?;
    Ok(())
}

/// Keeps the newest `keep` snapshots, and removes headerless chunks older than the
/// newest snapshot (left by a crash mid-write; a write in progress elsewhere is
/// always newer than every complete snapshot, so it is not touched).
fn retain_snapshots_on(
    conn: &mut Connection,
    gate: &Mutex<()>,
    keep: usize,
) -> Result<u64, StoreError> {
    let _turn = gate.lock();
    let seqs = snapshot_seqs_on(conn)?;
    let doomed: Vec<Seq> = seqs.iter().copied().skip(keep).collect();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for upto in &doomed {
        let key = upto.to_sql()?;
        tx.execute("DELETE FROM snapshot_chunk WHERE upto = ?1", [key])?;
        tx.execute("DELETE FROM snapshot WHERE upto = ?1", [key])?;
    }
    if let Some(newest) = seqs.first() {
        tx.execute(
            "DELETE FROM snapshot_chunk WHERE upto < ?1 AND upto NOT IN (SELECT upto FROM snapshot)",
            [newest.to_sql()?],
        )?;
    }
    tx.commit()?;
    Ok(doomed.len() as u64)
}

/// Writes snapshots through a connection of its own, so that a large snapshot can
/// be stored on another thread while the [`SqliteLog`] keeps appending (each 4 MiB
/// chunk is its own short transaction; the snapshot becomes visible when its header
/// commits, last). Made by [`SqliteLog::snapshot_writer`]. Use one snapshot writer
/// at a time.
#[derive(Debug)]
pub struct SnapshotWriter {
    conn: Connection,
    path: PathBuf,
    gate: Arc<Mutex<()>>,
}

impl SnapshotWriter {
    /// Stores a snapshot of the state after every record up to `upto`, as
    /// [`EventLog::write_snapshot`] does.
    ///
    /// # Errors
    /// [`StoreError::SnapshotAhead`] if `upto` is past the committed end of the log;
    /// storage failures.
    pub fn write(&mut self, upto: Seq, state: &[u8]) -> Result<(), StoreError> {
        let last =
            committed_seq(&self.conn).map_err(|e| damaged(&self.path, Some(&self.conn), e))?;
        write_snapshot_on(&mut self.conn, &self.gate, upto, last, state)
            .map_err(|e| damaged(&self.path, Some(&self.conn), e))
    }

    /// Deletes all but the newest `keep` snapshots, as
    /// [`EventLog::retain_snapshots`] does.
    ///
    /// # Errors
    /// Storage failures.
    pub fn retain(&mut self, keep: usize) -> Result<u64, StoreError> {
        retain_snapshots_on(&mut self.conn, &self.gate, keep)
            .map_err(|e| damaged(&self.path, Some(&self.conn), e))
    }
}
