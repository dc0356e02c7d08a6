//! A full integrity check of a log, for operators and tools.

use std::fmt;

use crate::log::{EventLog, SnapshotRead};
use crate::{Corruption, Seq, StoreError};

/// The result of [`verify`]: every record and every snapshot checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records that passed their checksum, from the start of the log.
    pub good_records: u64,
    /// The last good record.
    pub last_good: Seq,
    /// The first damage found in the log, if any.
    pub log_damage: Option<Corruption>,
    /// SQLite reported the database file itself as damaged while reading (see
    /// [`StoreError::StorageDamaged`]); reading stopped there.
    pub storage_damage: Option<String>,
    /// Each snapshot, newest first, with its size or why it is damaged.
    pub snapshots: Vec<(Seq, Result<usize, String>)>,
}

impl VerifyReport {
    /// True when the log and every snapshot are intact.
    pub fn is_clean(&self) -> bool {
        self.log_damage.is_none()
            && self.storage_damage.is_none()
            && self.snapshots.iter().all(|(_, s)| s.is_ok())
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "log: {} good record(s), last good {}",
            self.good_records, self.last_good
        )?;
        match (&self.storage_damage, &self.log_damage) {
            (Some(e), _) => writeln!(f, "log: STORAGE DAMAGED after {}: {e}", self.last_good)?,
            (None, Some(c)) => writeln!(f, "log: DAMAGED: {c}")?,
            (None, None) => writeln!(f, "log: intact")?,
        }
        if self.snapshots.is_empty() {
            writeln!(f, "snapshots: none")?;
        }
        for (upto, s) in &self.snapshots {
            match s {
                Ok(len) => writeln!(f, "snapshot at {upto}: intact, {len} bytes")?,
                Err(reason) => writeln!(f, "snapshot at {upto}: DAMAGED: {reason}")?,
            }
        }
        Ok(())
    }
}

/// Checks every record from the start of the log (a log whose older records were
/// never removed) and every snapshot, without decoding payloads.
///
/// # Errors
/// Storage failures only; damage is in the report.
pub fn verify(log: &dyn EventLog) -> Result<VerifyReport, StoreError> {
    let (mut good, mut last) = (0u64, Seq::ZERO);
    let (read, storage_damage) = match log.read_from(Seq::ZERO, &mut |seq, _| {
        good += 1;
        last = seq;
        Ok(())
    }) {
        Ok(read) => (Some(read), None),
        Err(e @ StoreError::StorageDamaged { .. }) => (None, Some(e.to_string())),
        Err(e) => return Err(e),
    };
    let mut snapshots = Vec::new();
    let seqs = match log.snapshot_seqs() {
        Ok(seqs) => seqs,
        Err(StoreError::StorageDamaged { .. }) if storage_damage.is_some() => Vec::new(),
        Err(e) => return Err(e),
    };
    for upto in seqs {
        let state = match log.read_snapshot(upto) {
            Ok(SnapshotRead::Valid(bytes)) => Ok(bytes.len()),
            Ok(SnapshotRead::Damaged(reason)) => Err(reason),
            Err(e @ StoreError::StorageDamaged { .. }) => Err(e.to_string()),
            Err(e) => return Err(e),
        };
        snapshots.push((upto, state));
    }
    Ok(match read {
        Some(read) => VerifyReport {
            good_records: read.delivered,
            last_good: read.last_delivered,
            log_damage: read.stopped_at,
            storage_damage,
            snapshots,
        },
        None => VerifyReport {
            good_records: good,
            last_good: last,
            log_damage: None,
            storage_damage,
            snapshots,
        },
    })
}
