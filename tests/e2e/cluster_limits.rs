//! Quota counters shared by a cluster's nodes: an integrator's monthly quota
//! holds across two nodes that each run queries for a practice whose Link is
//! attached there (each node alone would admit the whole quota).

use std::time::Duration;

use halo_ids::{Environment, HaloGuid};
use halo_store::{PgCounters, PgOptions};
use reqwest::Method;
use serde_json::json;

use crate::cluster::{Cluster, immediate};
use crate::fixture::INTEGRATOR;
use crate::processes::Client;

const QUOTA: usize = 30;
const PER_ROUND: usize = 5;

/// `n` immediate queries to `site` through `client`, one after the other: how many
/// were admitted (200); every other answer must be the quota's 403.
async fn burst(client: &Client, key: &str, site: HaloGuid, n: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        let (status, _, body) = immediate(client, key, site).await;
        match status {
            200 => admitted += 1,
            403 => assert!(body.contains("quota"), "{body}"),
            other => panic!("{}: {other} {body}", client.base),
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_quota_holds_across_nodes() {
    let cluster = Cluster::start_in(Environment::Production, 2, &["SMILE01", "GRIN02"]).await;
    let (n0, n1) = (&cluster.nodes[0].client, &cluster.nodes[1].client);
    n0.admin(
        Method::POST,
        "/admin/policy-events",
        json!({"event": "quotaSet", "integrator": INTEGRATOR, "perMonth": QUOTA}),
    )
    .await;
    // Both nodes follow the change (they poll every second at worst).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Rounds of 5 queries on each node at once, each node running its own Link's
    // practice, with time for a few counter rounds in between.
    let mut admitted = 0;
    for _ in 0..8 {
        let (a, b) = tokio::join!(
            burst(n0, &cluster.key, cluster.sites[0], PER_ROUND),
            burst(n1, &cluster.key, cluster.sites[1], PER_ROUND),
        );
        admitted += a + b;
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    eprintln!(
        "admitted {admitted} of {} offered, quota {QUOTA}",
        16 * PER_ROUND
    );
    // Unshared, each node would admit the whole quota (60 in all). Shared, the
    // overshoot is at most what the other node admits in one round.
    assert!(
        (QUOTA..=QUOTA + PER_ROUND).contains(&admitted),
        "admitted {admitted} of a quota of {QUOTA}"
    );
    assert_eq!(burst(n0, &cluster.key, cluster.sites[0], 1).await, 0);
    assert_eq!(burst(n1, &cluster.key, cluster.sites[1], 1).await, 0);

    // The cluster's total in PostgreSQL counts every admitted query once.
    let url = cluster.server.url();
    let totals = std::thread::spawn(move || {
        PgCounters::new(PgOptions::new(url))
            .unwrap()
            .exchange(&[])
            .unwrap()
    })
    .join()
    .unwrap();
    let key = format!("quota/i/{INTEGRATOR}");
    let total: u64 = totals
        .totals
        .iter()
        .filter(|(k, _, _)| *k == key)
        .map(|(_, _, t)| *t)
        .sum();
    assert_eq!(total, admitted as u64, "{totals:?}");
}
