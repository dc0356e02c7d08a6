//! The fencing token of an authority group.

use std::fmt;

/// A group's epoch: incremented on every change of holder, never decreased.
///
/// Routes carry the epoch of the holder they target; a Link refuses work stamped
/// with an epoch older than the newest it has seen for that database. Decided by
/// `halo-authority`; defined here so that the protocol and the Link use the same
/// type. Serde writes it as a plain number (the event log, the snapshots, the
/// Cloud ↔ Link protocol and the Link's state file all carry the bare number).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(u64);

impl Epoch {
    /// The epoch of a group that has never had a holder.
    pub const ZERO: Epoch = Epoch(0);

    /// An epoch from its number (for decoding and tests).
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The number inside.
    pub const fn get(&self) -> u64 {
        self.0
    }

    /// The next epoch, or `None` if the counter is exhausted.
    pub fn next(&self) -> Option<Epoch> {
        self.0.checked_add(1).map(Epoch)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}
