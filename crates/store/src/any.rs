//! One log type for a program that picks its engine at start-up.

use crate::log::{EventLog, ReadReport, SnapshotRead, Visit};
use crate::{Seq, SnapshotWriter, SqliteLog, StoreError};

/// Either engine's [`EventLog`], chosen at run time (the Cloud's `--store`).
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyLog {
    /// The embedded default: one SQLite file.
    Sqlite(SqliteLog),
    /// A PostgreSQL database shared by several nodes.
    #[cfg(feature = "postgres")]
    Postgres(crate::PgLog),
}

/// Delegates one call to whichever engine is inside.
macro_rules! each {
    ($self:expr, $log:ident => $call:expr) => {
        match $self {
            AnyLog::Sqlite($log) => $call,
            #[cfg(feature = "postgres")]
            AnyLog::Postgres($log) => $call,
        }
    };
}

impl AnyLog {
    /// True when several processes may append to this log at once (so appends
    /// must name the position they were decided on, [`EventLog::append_at`]).
    pub fn is_shared(&self) -> bool {
        !matches!(self, AnyLog::Sqlite(_))
    }

    /// A snapshot writer with its own connection, for another thread.
    ///
    /// # Errors
    /// The engine cannot open a second connection.
    pub fn snapshot_sink(&self) -> Result<SnapshotSink, StoreError> {
        Ok(match self {
            AnyLog::Sqlite(log) => SnapshotSink::Sqlite(log.snapshot_writer()?),
            #[cfg(feature = "postgres")]
            AnyLog::Postgres(log) => SnapshotSink::Postgres(log.reopen()?),
        })
    }
}

/// Writes snapshots beside a log, from a thread of its own.
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotSink {
    /// SQLite's [`SnapshotWriter`].
    Sqlite(SnapshotWriter),
    /// A second PostgreSQL connection.
    #[cfg(feature = "postgres")]
    Postgres(crate::PgLog),
}

impl SnapshotSink {
    /// Stores a snapshot of the state after every record up to `upto`.
    ///
    /// # Errors
    /// [`StoreError::SnapshotAhead`]; storage failures.
    pub fn write(&mut self, upto: Seq, state: &[u8]) -> Result<(), StoreError> {
        match self {
            SnapshotSink::Sqlite(w) => w.write(upto, state),
            #[cfg(feature = "postgres")]
            SnapshotSink::Postgres(log) => log.write_snapshot(upto, state),
        }
    }

    /// Deletes all but the newest `keep` snapshots.
    ///
    /// # Errors
    /// Storage failures.
    pub fn retain(&mut self, keep: usize) -> Result<u64, StoreError> {
        match self {
            SnapshotSink::Sqlite(w) => w.retain(keep),
            #[cfg(feature = "postgres")]
            SnapshotSink::Postgres(log) => log.retain_snapshots(keep),
        }
    }
}

impl EventLog for AnyLog {
    fn append(&mut self, records: &[&[u8]]) -> Result<Seq, StoreError> {
        each!(self, log => log.append(records))
    }

    fn append_at(&mut self, expected: Seq, records: &[&[u8]]) -> Result<Seq, StoreError> {
        each!(self, log => log.append_at(expected, records))
    }

    fn last_seq(&self) -> Seq {
        each!(self, log => log.last_seq())
    }

    fn last_commit_time(&self) -> Option<std::time::Duration> {
        each!(self, log => log.last_commit_time())
    }

    fn read_from(&self, after: Seq, f: &mut Visit<'_>) -> Result<ReadReport, StoreError> {
        each!(self, log => log.read_from(after, f))
    }

    fn write_snapshot(&mut self, upto: Seq, state: &[u8]) -> Result<(), StoreError> {
        each!(self, log => log.write_snapshot(upto, state))
    }

    fn snapshot_seqs(&self) -> Result<Vec<Seq>, StoreError> {
        each!(self, log => log.snapshot_seqs())
    }

    fn read_snapshot(&self, upto: Seq) -> Result<SnapshotRead, StoreError> {
        each!(self, log => log.read_snapshot(upto))
    }

    fn retain_snapshots(&mut self, keep: usize) -> Result<u64, StoreError> {
        each!(self, log => log.retain_snapshots(keep))
    }

    fn quarantine_after(&mut self, last_good: Seq, reason: &str) -> Result<u64, StoreError> {
        each!(self, log => log.quarantine_after(last_good, reason))
    }
}
