//! What the Cloud writes to its durable log: every tenancy, policy and credential
//! event, with the time it was applied. This is a stored format (versioned).

use halo_ids::{LinkGuid, Timestamp};
use halo_policy::{KeyHash, PolicyEvent};
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

/// Changes to the credentials Links authenticate with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum CredentialEvent {
    /// Support issued a Link credential (only its hash is kept).
    Issued {
        /// SHA-256 of the token.
        token_hash: KeyHash,
        /// A label for people (for example the practice or cluster name).
        label: String,
    },
    /// The first Link to use a credential owns it; no other Link GUID may use it.
    Bound {
        /// SHA-256 of the token.
        token_hash: KeyHash,
        /// The Link that owns it.
        link: LinkGuid,
    },
    /// The credential no longer authenticates anyone.
    Revoked {
        /// SHA-256 of the token.
        token_hash: KeyHash,
    },
}
