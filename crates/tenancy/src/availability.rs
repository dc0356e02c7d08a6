//! Availability, derived from the time a site was last heard from.

use std::time::Duration;

use halo_ids::Timestamp;

/// Whether a site can be reached, derived from its last-heard time. Availability
/// never moves authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Availability {
    /// Heard within [`AvailabilityConfig::offline_after`].
    Online,
    /// Missed heartbeats, but heard within [`AvailabilityConfig::unreachable_after`].
    Offline,
    /// Silent for longer.
    Unreachable,
}

impl Availability {
    /// The API text: `online`, `offline`, `unreachable`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Availability::Online => "online",
            Availability::Offline => "offline",
            Availability::Unreachable => "unreachable",
        }
    }

    /// Derives the availability of something last heard at `last_heard`.
    pub fn derive(last_heard: Timestamp, now: Timestamp, cfg: &AvailabilityConfig) -> Self {
        let silence = now.saturating_since(last_heard);
        if silence < cfg.offline_after {
            Availability::Online
        } else if silence < cfg.unreachable_after {
            Availability::Offline
        } else {
            Availability::Unreachable
        }
    }
}

/// Thresholds for [`Availability`] (the Cloud widens them per Link to its heartbeat interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvailabilityConfig {
    offline_after: Duration,
    unreachable_after: Duration,
}

impl AvailabilityConfig {
    /// Offline after 90 s of silence (three missed 30 s heartbeats), unreachable
    /// after 10 minutes.
    pub const DEFAULT: AvailabilityConfig = AvailabilityConfig {
        offline_after: Duration::from_secs(90),
        unreachable_after: Duration::from_secs(600),
    };

    /// Custom thresholds, or `None` unless `0 < offline_after <= unreachable_after`.
    pub fn new(offline_after: Duration, unreachable_after: Duration) -> Option<Self> {
        (!offline_after.is_zero() && offline_after <= unreachable_after).then_some(Self {
            offline_after,
            unreachable_after,
        })
    }

    /// Silence after which a site is offline.
    pub fn offline_after(&self) -> Duration {
        self.offline_after
    }

    /// Silence after which a site is unreachable.
    pub fn unreachable_after(&self) -> Duration {
        self.unreachable_after
    }
}

impl Default for AvailabilityConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}
