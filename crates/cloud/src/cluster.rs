//! Running the Cloud as several nodes over one PostgreSQL log.
//!
//! Every node holds the whole registry, grants and credentials in memory (as a
//! single node does) and follows the shared log:
//!
//! - **Deciding.** The state writer decides each change against its state as of
//!   log position N and appends only if the log still ends at N
//!   ([`halo_store::EventLog::append_at`]). If another node appended first, the
//!   writer rolls its private state back to the durable one, catches up and decides
//!   again, so a promotion is decided exactly once whichever node took the request:
//!   never two holders, and epochs never go back.
//! - **Following.** A follower thread `LISTEN`s on the log's channel; every append
//!   `NOTIFY`s it, and it asks the writer to catch up by sequence. It also asks on a
//!   timer ([`ClusterConfig::poll_every`]), since notifications are lost while a
//!   connection is down.
//! - **Starting.** A fresh node loads the newest snapshot stored in PostgreSQL and
//!   replays the tail after it.
//! - **Failing closed.** When the database cannot be reached, the node stops
//!   acknowledging changes: writes through the admin API, pairing and Link
//!   sessions (which register sites) are answered 503 with `Retry-After`
//!   ([`fail_closed`]), and changes already queued wait, unacknowledged, until the
//!   database is back. The node recovers by itself: the next successful catch-up
//!   or append marks it available again.
//! - **Links on any node.** Where each Link is attached is a lease in PostgreSQL
//!   ([`crate::lease`]); an immediate query, or an async query's acceptance, that
//!   enters a node not holding its Link's lease is forwarded to the node that does
//!   ([`crate::forward`]).
//! - **Shared async work.** Async queries, result pages, registered-query
//!   schedules and the webhook outbox live in PostgreSQL
//!   ([`crate::queries::pg_store`]). A queued async query runs on the node
//!   holding its Link: the node that owns it hands it over there. Cancelling a
//!   registered query through any node stops its occurrence on the node running
//!   it within a lease round (about a second).
//! - **Shared limits.** Quota and rate-limit counts are added to totals in
//!   PostgreSQL every 250 ms and read back ([`crate::counters`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};

use crate::app::AppState;
use crate::error::ApiError;

/// How a node joins a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The PostgreSQL connection string (`postgres://user@host:port/db` or
    /// `host=... port=... user=... dbname=...`).
    pub store_url: String,
    /// This node's name, in logs and metrics.
    pub node_id: String,
    /// Where other nodes reach this one: its listener, as the other nodes can
    /// address it. Without it (or without a secret) this node takes no forwarded
    /// requests, and forwards none.
    pub peer_addr: Option<SocketAddr>,
    /// The shared secret of the node-to-node channel ([`crate::forward`]).
    pub cluster_secret: Option<crate::forward::ClusterSecret>,
    /// How long a Link lease runs unless renewed.
    pub lease_ttl: Duration,
    /// How often a node renews the leases of its Links (one statement per round).
    pub lease_renew_every: Duration,
    /// How often the node catches up even without a notification.
    pub poll_every: Duration,
    /// How often the node shares its quota and rate-limit counts
    /// ([`crate::counters`]).
    pub counter_sync_every: Duration,
    /// The deadline of one database round trip; past it the node counts the
    /// database as lost and fails closed.
    pub timeout: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    /// Leaves the store URL out: it may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("peer_addr", &self.peer_addr)
            .field("lease_ttl", &self.lease_ttl)
            .field("lease_renew_every", &self.lease_renew_every)
            .field("poll_every", &self.poll_every)
            .field("counter_sync_every", &self.counter_sync_every)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClusterConfig {
    /// A node `node_id` on `store_url`, polling every second, with a 5-second
    /// database deadline, 6-second Link leases renewed every 2 seconds, counters
    /// shared every 250 ms, and no forwarding (no peer address, no secret).
    pub fn new(store_url: impl Into<String>, node_id: impl Into<String>) -> Self {
        ClusterConfig {
            store_url: store_url.into(),
            node_id: node_id.into(),
            peer_addr: None,
            cluster_secret: None,
            lease_ttl: Duration::from_secs(6),
            lease_renew_every: Duration::from_secs(2),
            poll_every: Duration::from_secs(1),
            counter_sync_every: Duration::from_millis(250),
            timeout: Duration::from_secs(5),
        }
    }

    pub(crate) fn pg_options(&self) -> halo_store::PgOptions {
        halo_store::PgOptions {
            url: self.store_url.clone(),
            timeout: self.timeout,
        }
    }
}

/// What a node shares between its writer, its follower and its handlers.
#[derive(Debug, Default)]
pub struct ClusterHealth {
    /// False while the database cannot be reached.
    available: AtomicBool,
    /// Appends refused because another node appended first (each one retried).
    conflicts: AtomicU64,
    /// Records applied from other nodes.
    followed: AtomicU64,
}

impl ClusterHealth {
    pub(crate) fn new() -> Self {
        ClusterHealth {
            available: AtomicBool::new(true),
            ..ClusterHealth::default()
        }
    }

    /// Whether the node can reach the database now (it acknowledges changes only
    /// then).
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    pub(crate) fn set_available(&self, now: bool) {
        let was = self.available.swap(now, Ordering::AcqRel);
        if was != now {
            if now {
                tracing::info!("the cluster store is reachable again; acknowledging changes");
            } else {
                tracing::error!("the cluster store is unreachable; failing closed");
            }
        }
    }

    /// How many appends lost a race to another node and were decided again.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    pub(crate) fn conflicted(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// How many records this node applied from other nodes.
    pub fn followed(&self) -> u64 {
        self.followed.load(Ordering::Relaxed)
    }

    pub(crate) fn add_followed(&self, n: u64) {
        self.followed.fetch_add(n, Ordering::Relaxed);
    }
}

/// How long a client is asked to wait while the node cannot reach the database.
pub const UNAVAILABLE_RETRY_AFTER_MS: u64 = 2_000;

/// Whether a request would change the shared state (and so must not be accepted
/// while the database is lost): admin writes, pairing, and Link sessions.
fn changes_state(method: &Method, path: &str) -> bool {
    if path == "/link/ws" {
        return true;
    }
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    !read
        && (path.starts_with("/admin/")
            || path == "/integrator/pair-site"
            || path == "/integrator/pairSite")
}

/// Middleware: while this node cannot reach the cluster store, answers requests
/// that would change the shared state with 503 and `Retry-After`, rather than
/// queue a change it cannot acknowledge. A single node (SQLite) never refuses.
pub async fn fail_closed(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let down = app
        .state
        .cluster()
        .is_some_and(|health| !health.available());
    if down && changes_state(request.method(), request.uri().path()) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this cloud node cannot reach its store; retry later",
        )
        .with_retry_after_ms(UNAVAILABLE_RETRY_AFTER_MS)
        .into_response();
    }
    next.run(request).await
}

/// The follower: waits for a notification or the poll interval, then asks the
/// writer to catch up; until `stop` is set.
pub(crate) fn follow(config: &ClusterConfig, stop: &Arc<AtomicBool>, mut wake: impl FnMut()) {
    let mut listener = match halo_store::PgListener::new(config.pg_options()) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the cluster listener; following by polling only");
            None
        }
    };
    while !stop.load(Ordering::Acquire) {
        match listener.as_mut().map(|l| l.wait(config.poll_every)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "cluster listener: connection lost; polling");
                std::thread::sleep(config.poll_every);
            }
            None => std::thread::sleep(config.poll_every),
        }
        if stop.load(Ordering::Acquire) {
            break;
        }
        wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_are_refused_while_the_store_is_lost() {
        assert!(changes_state(&Method::POST, "/admin/sites/x/promote"));
        assert!(changes_state(
            &Method::PUT,
            "/admin/integrators/a/components"
        ));
        assert!(changes_state(&Method::GET, "/link/ws"));
        assert!(changes_state(&Method::POST, "/integrator/pair-site"));
        assert!(!changes_state(&Method::GET, "/admin/sites/x"));
        assert!(!changes_state(&Method::GET, "/integrator/sites"));
        assert!(!changes_state(
            &Method::POST,
            "/integrator/sites/x/queries/immediate"
        ));
    }
}
