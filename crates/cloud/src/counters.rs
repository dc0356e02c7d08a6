//! Quota and rate-limit counters shared by a cluster's nodes.
//!
//! Each node keeps admitting on its own lock-free counters (`Policy::take`). A
//! thread of its own, every [`ClusterConfig::counter_sync_every`], drains what this
//! node admitted since its last round, adds it to the cluster's totals in
//! PostgreSQL and reads back the totals the other nodes changed, in one statement
//! (`halo_store::PgCounters`); `halo_policy::SharedCounters` then raises each quota
//! to the cluster's count and charges each rate limit the other nodes' tokens.
//!
//! Accuracy with `N` nodes and a round every `Δ` (250 ms by default): a quota can
//! be exceeded by what the other nodes admit in one round, at most about
//! `(N − 1) × per-node rate × Δ`; a rate limit by that plus `(N − 1) × burst`. A
//! round that fails keeps its counts for the next one. A node that cannot reach
//! the database counts on its own, but only until its Link leases lapse (6 s),
//! after which it routes nothing ([`crate::lease`]).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use halo_policy::{CounterTotal, SharedCounters};
use halo_router::Router;

use crate::cluster::ClusterConfig;

/// Starts the counter thread of a node. It ends by itself once the router is
/// dropped.
///
/// # Errors
/// The thread or the database client cannot start.
pub(crate) fn start(config: &ClusterConfig, router: &Arc<Router>) -> Result<(), std::io::Error> {
    let db = halo_store::PgCounters::new(config.pg_options())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let router = Arc::downgrade(router);
    let every = config.counter_sync_every;
    let node = config.node_id.clone();
    std::thread::Builder::new()
        .name(format!("halo-counters-{}", config.node_id))
        .spawn(move || run(db, &router, every, &node))?;
    Ok(())
}

fn run(mut db: halo_store::PgCounters, router: &Weak<Router>, every: Duration, node: &str) {
    let mut shared = SharedCounters::new();
    let mut failing_since: Option<Instant> = None;
    loop {
        std::thread::sleep(every);
        let Some(router) = router.upgrade() else {
            return;
        };
        let policy = router.policy();
        drop(router);
        let sent = shared.drain(&policy);
        let deltas: Vec<(String, u64, u64)> = sent
            .iter()
            .map(|d| (d.key.clone(), d.period, d.delta))
            .collect();
        match db.exchange(&deltas) {
            Ok(round) => {
                let totals: Vec<CounterTotal> = round
                    .totals
                    .into_iter()
                    .map(|(key, period, total)| CounterTotal { key, period, total })
                    .collect();
                shared.absorb(&policy, &sent, &totals, crate::clock::now());
                if failing_since.take().is_some() {
                    tracing::info!(node, "shared counters reachable again");
                }
            }
            Err(e) => {
                // Logged once per outage; the counts are sent with the next round.
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    tracing::warn!(node, error = %e, "cannot share quota and rate-limit counters");
                }
            }
        }
    }
}
