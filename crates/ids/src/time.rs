//! Instants passed into the core: the core never reads a clock.

use std::fmt;
use std::time::Duration;

/// Milliseconds since the Unix epoch, as given by the adapter that owns the clock.
///
/// Core crates take a `Timestamp` as a parameter instead of reading the time, so
/// that state machines are deterministic and tests need no sleeping.
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
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch itself (1970-01-01T00:00:00Z). Not to be confused with
    /// [`Epoch`](crate::Epoch), the fencing token.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// An instant from milliseconds since the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(&self) -> u64 {
        self.0
    }

    /// This instant plus `d`, saturating at the far future.
    pub fn saturating_add(&self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(&self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
