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
    /// Each snapshot, newest first, with its size or why it is damaged.
    pub snapshots: Vec<(Seq, Result<usize, String>)>,
}

impl VerifyReport {
    /// True when the log and every snapshot are intact.
    pub fn is_clean(&self) -> bool {
        self.log_damage.is_none() && self.snapshots.iter().all(|(_, s)| s.is_ok())
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "log: {} good record(s), last good {}",
            self.good_records, self.last_good
        )?;
        match &self.log_damage {
            Some(c) => writeln!(f, "log: DAMAGED: {c}")?,
            None => writeln!(f, "log: intact")?,
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
    let read = log.read_from(Seq::ZERO, &mut |_, _| Ok(()))?;
    let mut snapshots = Vec::new();
    for upto in log.snapshot_seqs()? {
        let state = match log.read_snapshot(upto)? {
            SnapshotRead::Valid(bytes) => Ok(bytes.len()),
            SnapshotRead::Damaged(reason) => Err(reason),
        };
        snapshots.push((upto, state));
    }
    Ok(VerifyReport {
        good_records: read.delivered,
        last_good: read.last_delivered,
        log_damage: read.stopped_at,
        snapshots,
    })
}
