//! What recovery reports when it finds a damaged log or snapshot.

use std::fmt;

use crate::Seq;

/// Where and why reading the log stopped before its end.
///
/// Everything up to and including [`last_good`](Self::last_good) was delivered;
/// nothing at or after [`at`](Self::at) was. Nothing is deleted: the bad record and
/// everything after it stay in the database until a caller decides (see
/// [`Store::quarantine_unreplayed`](crate::Store::quarantine_unreplayed)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// The last record that was verified and delivered ([`Seq::ZERO`] if none).
    pub last_good: Seq,
    /// The first position that could not be delivered: the bad record, or the
    /// missing sequence number of a gap.
    pub at: Seq,
    /// What is wrong there.
    pub kind: CorruptionKind,
    /// How many records stored after `last_good` were not replayed.
    pub unreplayed: u64,
}

/// The kind of damage found in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The record's checksum (CRC-32 over its sequence number and payload) does not
    /// match its contents.
    ChecksumMismatch {
        /// The checksum stored with the record.
        stored: u32,
        /// The checksum of what is there now.
        computed: u32,
    },
    /// A sequence number is missing: the next stored record has `found`.
    Gap {
        /// The sequence number of the next record that is present.
        found: Seq,
    },
    /// The record is intact (checksum good) but its payload is not a valid event
    /// for this build (for example an event type that this version does not know).
    Undecodable {
        /// The decoder's message.
        reason: String,
    },
    /// A row is structurally wrong (NULL or mistyped columns). (SQLite reporting
    /// the file itself as damaged is not one bad record but
    /// [`StoreError::StorageDamaged`](crate::StoreError::StorageDamaged).)
    Unreadable {
        /// What was wrong.
        reason: String,
    },
    /// The log ends before the last sequence number that was acknowledged as
    /// committed: records were removed from its end.
    Truncated {
        /// The last sequence number recorded as committed.
        committed: Seq,
    },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "log record {}: ", self.at)?;
        match &self.kind {
            CorruptionKind::ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )?,
            CorruptionKind::Gap { found } => write!(f, "missing (next stored record is {found})")?,
            CorruptionKind::Undecodable { reason } => write!(f, "undecodable payload: {reason}")?,
            CorruptionKind::Unreadable { reason } => write!(f, "unreadable: {reason}")?,
            CorruptionKind::Truncated { committed } => {
                write!(f, "missing: the log was committed up to {committed}")?
            }
        }
        write!(
            f,
            "; recovery stopped after {}, {} stored record(s) after it were not replayed",
            self.last_good, self.unreplayed
        )
    }
}

/// A snapshot that recovery could not use, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedSnapshot {
    /// The snapshot's sequence number.
    pub upto: Seq,
    /// Why it was skipped (checksum mismatch, missing chunk, undecodable state, ...).
    pub reason: String,
}

impl fmt::Display for SkippedSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "snapshot at {} skipped: {}", self.upto, self.reason)
    }
}

/// CRC-32 of a log record: its sequence number (little-endian) then its payload.
pub(crate) fn record_crc(seq: Seq, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.get().to_le_bytes());
    h.update(payload);
    h.finalize()
}
