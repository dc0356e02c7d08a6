//! What the Cloud writes to its durable log: every tenancy, policy and credential
//! event, with the time it was applied, and the audit trail's entries. This is a stored format (versioned).
//!
//! A record is stored as JSON or, for tenancy records since the binary form, as
//! compact binary (`record_bin.rs`): read log bytes with [`Record::from_log_bytes`],
//! which takes both, and write them with [`Record::write_log_bytes`] (or let
//! [`RecordCodec`] do both for the store).

use halo_ids::Timestamp;
use halo_policy::PolicyEvent;
use serde::Serialize;

/// The log format version this build writes.
pub const RECORD_VERSION: u32 = 1;

/// One durable log record.
///
/// Decoded in one pass by a hand-written `Deserialize` (`record_de.rs`), which reads
/// what the derive it replaced read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Record {
    /// A tenancy event (carries its own version and time).
    Tenancy(halo_tenancy::LogEntry),
    /// An access-policy event.
    Policy {
        /// Format version.
        version: u32,
        /// When it was applied.
        at: Timestamp,
        /// The event.
        event: PolicyEvent,
    },
    /// A Link credential event.
    Credential {
        /// Format version.
        version: u32,
        /// When it was applied.
        at: Timestamp,
        /// The event.
        event: CredentialEvent,
    },
    /// An audit trail entry (see [`crate::audit`]); changes nothing on replay.
    /// Written by builds since the audit trail; older logs have none.
    Audit {
        /// Format version ([`crate::audit::AUDIT_VERSION`]).
        version: u32,
        /// When it was recorded.
        at: Timestamp,
        /// Whether it describes the record right after it (a policy, credential or
        /// promotion event), which then needs no entry derived from it.
        #[serde(default, rename = "coversNext")]
        covers_next: bool,
        /// The entry.
        entry: crate::audit::AuditEntry,
    },
}

pub use crate::record_bin::{BINARY_RECORD, RecordCodec, RecordDecodeError};
pub use halo_credentials::CredentialEvent;
