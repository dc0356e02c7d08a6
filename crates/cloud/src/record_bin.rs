//! The log record's two forms: JSON (every build) and compact binary (since
//! this one), told apart by the first byte.
//!
//! A JSON record is an object, so its first byte is `{` (or JSON whitespace before
//! it). A binary record starts with [`BINARY_RECORD`] (`0x01`, a control byte no
//! JSON text may start with), then a kind byte, then the body:
//!
//! ```text
//! 0x01  layout 1 of the binary record
//! kind  u8: 0 tenancy (the body is halo-tenancy's binary LogEntry, which starts
//!       with the event's variant byte); 1-255 reserved
//! body
//! ```
//!
//! This build writes tenancy records (the millions: heartbeats, registrations) in
//! binary and policy, credential and audit records (a handful a day) in JSON, and
//! reads both forms of every kind, so every log an older build wrote replays
//! unchanged. A build older than this one stops at the first binary record (it
//! cannot decode it; a cluster node aborts rather than fork), so every node of a
//! cluster must run this build or newer before any of them appends (see
//! ARCHITECTURE.md, "Log record forms").

use halo_store::EventCodec;
use halo_tenancy::{BinaryEventError, Event, LogEntry};

use crate::record::Record;

/// The first byte of a binary record (layout 1). No JSON document starts with it.
pub const BINARY_RECORD: u8 = 0x01;

/// The kind byte of a binary tenancy record.
const KIND_TENANCY: u8 = 0;

/// Why bytes are not a log record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordDecodeError {
    /// A JSON record that does not decode.
    #[error("JSON record: {0}")]
    Json(#[from] serde_json::Error),
    /// A binary tenancy record whose body does not decode.
    #[error("binary tenancy record: {0}")]
    Binary(#[from] BinaryEventError),
    /// A binary record of a kind this build does not know (written by a newer one).
    #[error("binary record of unknown kind {0}")]
    UnknownKind(u8),
    /// The record ends after its first byte.
    #[error("binary record without a kind")]
    Truncated,
}

impl Record {
    /// Appends this record as this build writes it to the log: binary for tenancy
    /// records, JSON for the others. [`Record::from_log_bytes`] reads it back equal.
    ///
    /// # Errors
    /// JSON encoding fails (it does not for the types a record holds).
    pub fn write_log_bytes(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        match self {
            Record::Tenancy(entry) => {
                out.push(BINARY_RECORD);
                out.push(KIND_TENANCY);
                entry.write_binary(out);
                Ok(())
            }
            _ => serde_json::to_writer(out, self),
        }
    }

    /// This record as this build writes it ([`Record::write_log_bytes`]).
    ///
    /// # Errors
    /// As [`Record::write_log_bytes`].
    pub fn to_log_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(96);
        self.write_log_bytes(&mut out)?;
        Ok(out)
    }

    /// Reads one log record in either form: binary ([`BINARY_RECORD`] first) or
    /// JSON (what every older build wrote).
    ///
    /// # Errors
    /// [`RecordDecodeError`] for bytes that are neither a whole JSON record nor a
    /// whole binary one. Never panics.
    pub fn from_log_bytes(bytes: &[u8]) -> Result<Record, RecordDecodeError> {
        match bytes.split_first() {
            Some((&BINARY_RECORD, rest)) => match rest.split_first() {
                Some((&KIND_TENANCY, body)) => Ok(Record::Tenancy(LogEntry::from_binary(body)?)),
                Some((&kind, _)) => Err(RecordDecodeError::UnknownKind(kind)),
                None => Err(RecordDecodeError::Truncated),
            },
            _ => Ok(serde_json::from_slice(bytes)?),
        }
    }

    /// Whether `bytes` are, by their first bytes alone, a tenancy record whose event
    /// is not a promotion: the audit index skips those without decoding them.
    /// `false` means "decode to know" (it is never wrong the other way).
    pub fn is_unaudited_tenancy(bytes: &[u8]) -> bool {
        match bytes {
            [BINARY_RECORD, KIND_TENANCY, variant, ..] => *variant != Event::BINARY_PROMOTED,
            _ => {
                bytes.starts_with(br#"{"kind":"tenancy""#)
                    && !bytes.windows(10).any(|w| w == b"\"Promoted\"")
            }
        }
    }
}

/// The Cloud's [`EventCodec`]: writes [`Record::write_log_bytes`], reads
/// [`Record::from_log_bytes`] (both forms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCodec;

impl EventCodec<Record> for RecordCodec {
    fn encode(event: &Record, out: &mut Vec<u8>) -> Result<(), String> {
        event.write_log_bytes(out).map_err(|e| e.to_string())
    }

    fn decode(record: &[u8]) -> Result<Record, String> {
        Record::from_log_bytes(record).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use halo_ids::{HaloGuid, LinkGuid, Timestamp};
    use halo_tenancy::{Event, LogEntry};

    use crate::record::Record;

    fn tenancy(event: Event) -> Record {
        Record::Tenancy(LogEntry::new(Timestamp::from_millis(1), event))
    }

    /// The audit index's skip: every tenancy record but a promotion, in either form;
    /// never a record of another kind.
    #[test]
    fn only_unaudited_tenancy_records_are_skipped_in_either_form() {
        let heartbeat = tenancy(Event::Heartbeat {
            link: LinkGuid::from_u128(1).unwrap(),
        });
        let promoted = tenancy(Event::Promoted {
            halo_guid: HaloGuid::from_u128(2).unwrap(),
            actor: "a".into(),
            reason: "r".into(),
        });
        let policy = Record::Policy {
            version: 1,
            at: Timestamp::from_millis(1),
            event: halo_policy::PolicyEvent::PracticeEnabled {
                integrator: "acme".parse().unwrap(),
                pms_id: "D4w:AB1".parse().unwrap(),
            },
        };
        for (record, skipped) in [(&heartbeat, true), (&promoted, false), (&policy, false)] {
            let json = serde_json::to_vec(record).unwrap();
            let binary = record.to_log_bytes().unwrap();
            assert_eq!(Record::is_unaudited_tenancy(&json), skipped, "{record:?}");
            assert_eq!(Record::is_unaudited_tenancy(&binary), skipped, "{record:?}");
            assert_eq!(&Record::from_log_bytes(&json).unwrap(), record);
            assert_eq!(&Record::from_log_bytes(&binary).unwrap(), record);
        }
        assert!(!Record::is_unaudited_tenancy(&[]));
    }
}
