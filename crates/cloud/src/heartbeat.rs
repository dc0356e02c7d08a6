//! Heartbeats at node scale: the interval each Link is asked for, the availability
//! thresholds that follow it, and the kernel's keepalive on accepted sockets.
//!
//! A heartbeat costs the Cloud one wake-up of the Link's session, about 25–35 µs of
//! CPU (`examples/link_swarm.rs`, a third of it in the kernel). So the node keeps the
//! sum of its Links' heartbeat rates within a budget
//! ([`crate::HttpLimits::heartbeat_budget`], beats per second): a Link attaching
//! while `n` Links are attached is asked, in its `helloAck`, for
//! `max(base, ⌈n / budget⌉ s)`, at most [`MAX_LINK_HEARTBEAT`] (see
//! [`HeartbeatPlan::interval`]). A session asked earlier, when fewer Links were
//! attached, is asked again (a second `helloAck`) at its next beat once the node
//! needs a longer interval, so the sum converges within one beat of each Link,
//! whatever the order in which the Links attached.
//!
//! Availability follows the interval each Link was asked for: while its session is
//! attached, a Link is offline only after [`MISSED_BEATS`] of its own intervals (or
//! the configured threshold, if longer; see [`thresholds`]). A Link that vanishes
//! without closing its connection (power cut, cable pulled) is not left to its long
//! interval: accepted sockets carry TCP keepalive and `TCP_USER_TIMEOUT`
//! ([`keep_alive`]), so the kernel ends such a connection within
//! [`SILENT_PEER_DETECTED_WITHIN`] of its last segment, without waking the Cloud
//! before then; the session ends, and the configured thresholds apply again.

use std::io;
use std::time::Duration;

use halo_tenancy::AvailabilityConfig;
use socket2::{SockRef, TcpKeepalive};

/// Heartbeats an attached Link may miss before it is shown offline.
pub const MISSED_BEATS: u32 = 3;

/// The longest interval the budget asks of a Link (an operator's `--link-heartbeat`
/// may be longer): with the default budget, room for 90 000 Links on one node.
pub const MAX_LINK_HEARTBEAT: Duration = Duration::from_secs(60);

/// Silence (no segment either way) after which the kernel probes a connection:
/// longer than [`MAX_LINK_HEARTBEAT`], so a Link beating on time draws no probes.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(65);

/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Unanswered probes before the kernel drops the connection, when no
/// [`USER_TIMEOUT`] is set (with one, as here, Linux drops the connection at the
/// first probe still unanswered [`USER_TIMEOUT`] after the last segment heard).
pub const KEEPALIVE_RETRIES: u32 = 3;

/// How long data sent (a job, a probe) may stay unacknowledged before the kernel
/// drops the connection (`TCP_USER_TIMEOUT`).
pub const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The most time from a silent peer's last segment to the end of its connection
/// while the Cloud sends it nothing: the first probe after [`KEEPALIVE_IDLE`], and
/// the connection dropped at the next, [`KEEPALIVE_INTERVAL`] later (by then
/// [`USER_TIMEOUT`] has passed with a probe unanswered). With data outstanding (a
/// job sent to a vanished Link), [`USER_TIMEOUT`] after the first unacknowledged
/// send.
pub const SILENT_PEER_DETECTED_WITHIN: Duration =
    Duration::from_secs(KEEPALIVE_IDLE.as_secs() + KEEPALIVE_INTERVAL.as_secs());

/// The node's heartbeat budget: the interval it asks of a Link, from how many Links
/// are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatPlan {
    base: Duration,
    budget_per_s: u32,
}

impl HeartbeatPlan {
    /// Links asked for `base` (`--link-heartbeat`) at least, and the node's beats
    /// kept under `budget_per_s` per second (at least 1).
    pub fn new(base: Duration, budget_per_s: u32) -> Self {
        Self {
            base,
            budget_per_s: budget_per_s.max(1),
        }
    }

    /// The interval to ask of a Link while `attached` Links (itself included) are
    /// attached: `base`, or longer so that `attached` Links beating at it send at
    /// most the budget per second, in whole seconds, at most [`MAX_LINK_HEARTBEAT`]
    /// (never under `base`).
    pub fn interval(&self, attached: usize) -> Duration {
        let attached = u64::try_from(attached).unwrap_or(u64::MAX);
        let needed = Duration::from_secs(attached.div_ceil(u64::from(self.budget_per_s)));
        self.base.max(needed.min(MAX_LINK_HEARTBEAT))
    }

    /// The heartbeats per second the budget allows.
    pub fn budget_per_s(&self) -> u32 {
        self.budget_per_s
    }

    /// Whether a session asked for `asked` should be asked again, now that the node
    /// would ask for `target`: always when the node needs a longer interval (the
    /// budget), and when a much shorter one would do (at most half: quicker
    /// detection once Links have left, without re-asking at every small change).
    pub fn should_reask(asked: Duration, target: Duration) -> bool {
        target > asked || target.saturating_mul(2) <= asked
    }
}

/// The availability thresholds of a Link asked to beat every `heartbeat` (`None`: no
/// session attached, the configured thresholds): offline after [`MISSED_BEATS`]
/// intervals or the configured threshold, whichever is longer; unreachable no
/// sooner than offline.
pub fn thresholds(cfg: &AvailabilityConfig, heartbeat: Option<Duration>) -> AvailabilityConfig {
    let Some(every) = heartbeat else {
        return *cfg;
    };
    let offline = cfg.offline_after().max(every.saturating_mul(MISSED_BEATS));
    let unreachable = cfg.unreachable_after().max(offline);
    AvailabilityConfig::new(offline, unreachable).unwrap_or(*cfg)
}

/// Turns on TCP keepalive ([`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`],
/// [`KEEPALIVE_RETRIES`]) and `TCP_USER_TIMEOUT` ([`USER_TIMEOUT`]) on an accepted
/// socket: a peer that vanished is dropped by the kernel, which sends its probes
/// without waking the Cloud.
///
/// # Errors
///
/// The `setsockopt` that failed.
pub fn keep_alive(stream: &tokio::net::TcpStream) -> io::Result<()> {
    let socket = SockRef::from(stream);
    socket.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES),
    )?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_interval_grows_with_the_links_attached_and_keeps_the_budget() {
        let plan = HeartbeatPlan::new(S(5), 1_500);
        assert_eq!(plan.interval(1), S(5));
        assert_eq!(plan.interval(7_500), S(5));
        assert_eq!(plan.interval(7_501), S(6));
        assert_eq!(plan.interval(15_000), S(10));
        assert_eq!(plan.interval(50_000), S(34));
        // Capped: past 90 000 Links the budget gives way to detection.
        assert_eq!(plan.interval(90_000), S(60));
        assert_eq!(plan.interval(1_000_000), MAX_LINK_HEARTBEAT);
        // Under the cap, `n` Links at the interval asked stay within the budget.
        for n in [1, 10, 1_499, 1_500, 1_501, 9_999, 33_333, 89_999] {
            let rate = n as f64 / plan.interval(n).as_secs_f64();
            assert!(rate <= 1_500.0, "{n} links: {rate} beats/s");
        }
        // An operator's longer base interval is kept, even past the cap.
        assert_eq!(HeartbeatPlan::new(S(90), 1_500).interval(10), S(90));
        // A budget of 0 is read as 1 beat per second.
        assert_eq!(HeartbeatPlan::new(S(1), 0).interval(30), S(30));
    }

    #[test]
    fn a_session_is_asked_again_when_the_node_needs_longer_or_much_shorter() {
        assert!(HeartbeatPlan::should_reask(S(5), S(6)));
        assert!(!HeartbeatPlan::should_reask(S(6), S(6)));
        assert!(!HeartbeatPlan::should_reask(S(10), S(6)));
        assert!(HeartbeatPlan::should_reask(S(10), S(5)));
    }

    #[test]
    fn thresholds_follow_the_interval_asked() {
        let cfg = AvailabilityConfig::new(S(10), S(60)).unwrap();
        assert_eq!(thresholds(&cfg, None), cfg);
        // A short interval: the configured thresholds stand.
        assert_eq!(thresholds(&cfg, Some(S(2))), cfg);
        // 30 s: offline after three missed beats.
        let t = thresholds(&cfg, Some(S(30)));
        assert_eq!(t.offline_after(), S(90));
        assert_eq!(t.unreachable_after(), S(90));
        let t = thresholds(&AvailabilityConfig::DEFAULT, Some(S(60)));
        assert_eq!(t.offline_after(), S(180));
        assert_eq!(t.unreachable_after(), S(600));
    }

    /// What [`keep_alive`] sets on a socket is checked with the other options of an
    /// accepted connection (`crate::serve`'s tests).
    #[test]
    fn probes_start_after_any_interval_and_end_before_offline() {
        // Probes start only after a silence longer than any interval the budget asks,
        // and a vanished Link's connection ends before the default offline threshold.
        assert!(KEEPALIVE_IDLE > MAX_LINK_HEARTBEAT);
        assert!(USER_TIMEOUT <= KEEPALIVE_IDLE);
        assert!(SILENT_PEER_DETECTED_WITHIN <= AvailabilityConfig::DEFAULT.offline_after());
    }
}
