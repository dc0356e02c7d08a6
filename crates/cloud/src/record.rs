//! What the Cloud writes to its durable log: every tenancy, policy and credential
//! event, with the time it was applied. This is a stored format (versioned).

use halo_ids::Timestamp;
use halo_policy::PolicyEvent;
use serde::{Deserialize, Serialize};

/// The log format version this build writes.
pub const RECORD_VERSION: u32 = 1;

/// One durable log record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

pub use halo_credentials::CredentialEvent;
