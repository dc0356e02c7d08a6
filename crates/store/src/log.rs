//! The small trait a storage engine implements: an append-only log of opaque
//! records plus checksummed snapshots.

use crate::{Corruption, Seq, StoreError};

/// An append-only, checksummed log of opaque records with snapshots beside it.
///
/// [`SqliteLog`](crate::SqliteLog) is the embedded implementation; a server database
/// can implement the same trait later. Implementations know nothing about what the
/// records mean.
///
/// Contract:
/// - [`append`](Self::append) is durable before it returns (on SQLite: the WAL is
///   fsync'd at commit) and atomic: either every record of the batch is stored or
///   none is.
/// - Records get dense sequence numbers 1, 2, 3, ...
/// - Every record and every snapshot carries a checksum, verified on every read.
///   Reading stops at the first damaged record and reports it; it never skips over
///   one and never deletes anything.
pub trait EventLog {
    /// Appends `records` in one transaction and returns the sequence number of the
    /// last one (the current end of the log if `records` is empty).
    ///
    /// # Errors
    /// Storage failures, and [`StoreError::ConcurrentWriter`] if someone else
    /// appended since this handle last looked.
    fn append(&mut self, records: &[&[u8]]) -> Result<Seq, StoreError>;

    /// Appends `records` only if the log still ends at `expected` (the position a
    /// decision was made on), as [`append`](Self::append) does.
    ///
    /// # Errors
    /// [`StoreError::ConcurrentWriter`] if the log no longer ends at `expected`
    /// (nothing was written: catch up and decide again); storage failures.
    fn append_at(&mut self, expected: Seq, records: &[&[u8]]) -> Result<Seq, StoreError> {
        let found = self.last_seq();
        if found != expected {
            return Err(StoreError::ConcurrentWriter { expected, found });
        }
        self.append(records)
    }

    /// The sequence number of the last appended record ([`Seq::ZERO`] if none).
    fn last_seq(&self) -> Seq;

    /// How long the commit of the last append took (for SQLite with
    /// `synchronous=FULL`: writing the WAL and its fsync), if the log measures it.
    fn last_commit_time(&self) -> Option<std::time::Duration> {
        None
    }

    /// Calls `f` with every record after `after`, in order, verifying each one
    /// first, and stops at the first damaged record, gap, or record that `f`
    /// rejects.
    ///
    /// # Errors
    /// Storage failures only; damage to a record is reported in
    /// [`ReadReport::stopped_at`]. Damage to the storage itself (a page the engine
    /// cannot read) is [`StoreError::StorageDamaged`]: nothing after it can be
    /// read or set aside in place, only salvaged ([`salvage`](crate::salvage())).
    fn read_from(&self, after: Seq, f: &mut Visit<'_>) -> Result<ReadReport, StoreError>;

    /// Stores a snapshot of the state after applying every record up to `upto`.
    /// Replaces an existing snapshot at the same `upto`.
    ///
    /// # Errors
    /// Storage failures, and [`StoreError::SnapshotAhead`] if `upto` is past the
    /// end of the log.
    fn write_snapshot(&mut self, upto: Seq, state: &[u8]) -> Result<(), StoreError>;

    /// The sequence numbers of the stored snapshots, newest first.
    ///
    /// # Errors
    /// Storage failures.
    fn snapshot_seqs(&self) -> Result<Vec<Seq>, StoreError>;

    /// Reads and verifies the snapshot at `upto`.
    ///
    /// # Errors
    /// Storage failures only; a damaged or missing snapshot is
    /// [`SnapshotRead::Damaged`].
    fn read_snapshot(&self, upto: Seq) -> Result<SnapshotRead, StoreError>;

    /// Deletes all but the newest `keep` snapshots; returns how many were deleted.
    ///
    /// # Errors
    /// Storage failures.
    fn retain_snapshots(&mut self, keep: usize) -> Result<u64, StoreError>;

    /// Moves every record after `last_good` out of the log into a quarantine area
    /// (kept for inspection, never replayed) so that appending can resume at
    /// `last_good + 1`; returns how many records were moved. This is the only
    /// operation that removes records from the log, and only a caller decides to
    /// run it.
    ///
    /// # Errors
    /// Storage failures.
    fn quarantine_after(&mut self, last_good: Seq, reason: &str) -> Result<u64, StoreError>;
}

/// The callback [`EventLog::read_from`] calls with each verified record.
pub type Visit<'a> = dyn FnMut(Seq, &[u8]) -> Result<(), Rejected> + 'a;

/// Returned by a [`EventLog::read_from`] callback to refuse a record (for example a
/// payload that does not decode). Reading stops there and reports
/// [`CorruptionKind::Undecodable`](crate::CorruptionKind::Undecodable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected(pub String);

/// What [`EventLog::read_from`] delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadReport {
    /// The last record delivered (the `after` argument if none was).
    pub last_delivered: Seq,
    /// How many records were delivered.
    pub delivered: u64,
    /// Why reading stopped before the end of the log, if it did.
    pub stopped_at: Option<Corruption>,
}

/// The outcome of reading one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotRead {
    /// The snapshot is intact; here are its bytes.
    Valid(Vec<u8>),
    /// The snapshot is missing or fails its checksum; here is why.
    Damaged(String),
}
