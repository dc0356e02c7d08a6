//! Fair Links (issue 10, "noisy neighbour"): one Link serving two practices, the
//! first flooded with slow queries; the second practice's immediate query answers
//! within its `maxTimeInQueue`, never after the flood.

use std::time::{Duration, Instant};

use halo_ids::{Environment, HaloGuid};
use halo_link::demo::generate;
use halo_link::{Agent, AgentHandle, LinkConfig};
use serde_json::{Value, json};

use crate::fixture::{Harness, message, practice};

/// A query that keeps SQLite busy far longer than any deadline here (12^10 rows);
/// the Link stops it at its deadline or when its session ends.
const SLOW: &str = "SELECT count(*) FROM patients a, patients b, patients c, patients d, patients e, patients f, patients g, patients h, patients i, patients j";

/// The quiet practice's budget, as in the report: `maxTimeInQueue: 5000`.
const BUDGET_MS: u64 = 5_000;

/// A correctness bound, not a speed benchmark: the answer comes within the
/// budget plus this margin (the flood's queries run for a minute).
const MARGIN: Duration = Duration::from_secs(8);

/// A Link with `workers` workers serving a noisy and a quiet practice, both
/// paired for a Stage integrator. Returns the key and the (noisy, quiet) sites.
async fn two_practices(
    h: &mut Harness,
    workers: usize,
) -> (AgentHandle, String, HaloGuid, HaloGuid) {
    let practices = [
        practice("NOISY01", "Noisy Dental"),
        practice("QUIET01", "Quiet Dental"),
    ];
    let mut paths = Vec::new();
    for (i, p) in practices.iter().enumerate() {
        let path = h.dir.path().join(format!("fair-db{i}.sqlite"));
        generate(&path, p).unwrap();
        paths.push(path);
    }
    let token = h.credential(Environment::Stage, &practices).await;
    let mut config = LinkConfig::new(
        format!("ws://{}/link/ws", h.cloud.addr),
        Environment::Stage,
        token,
        h.dir.path().join("fair-state.json"),
        paths,
    );
    config.max_concurrent_jobs = workers;
    let link = Agent::prepare(config).unwrap();
    let sites: Vec<_> = link
        .databases()
        .iter()
        .map(|db| (db.identity().parent_crn, db.halo_guid()))
        .collect();
    let handle = link.spawn();
    handle
        .wait_connected(1, Duration::from_secs(10))
        .await
        .unwrap();
    let key = h.integrator(Environment::Stage).await;
    for (crn, _) in &sites {
        h.enable_practice(*crn).await;
        assert_eq!(h.pair(&key, *crn).await.0, 200);
    }
    (handle, key, sites[0].1, sites[1].1)
}

/// Sends `n` slow queries to `site` without waiting for their answers.
fn flood(h: &Harness, key: &str, site: HaloGuid, n: usize) {
    for _ in 0..n {
        let request = h
            .http
            .post(h.url(&format!("/integrator/sites/{site}/queries/immediate")))
            .header(halo_cloud::KEY_HEADER, key)
            .json(&json!({
                "maxTimeInQueue": 30_000,
                "command": {"text": SLOW, "executionMode": "scalar"},
            }));
        tokio::spawn(request.send());
    }
}

/// The quiet practice's query: (status, body, time taken).
async fn quiet_query(h: &Harness, key: &str, site: HaloGuid) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body) = h
        .query_body(
            key,
            site,
            json!({
                "maxTimeInQueue": BUDGET_MS,
                "command": {"text": "SELECT first_name FROM patients", "executionMode": "reader"},
            }),
        )
        .await;
    (status, body, started.elapsed())
}

/// Stops the Link first (its session ends, so the flood is cancelled and its
/// queries fail at once), then the Cloud.
async fn finish(h: Harness, link: AgentHandle) {
    link.shutdown().await.unwrap();
    h.cloud.stop().await;
}

/// The report's case, on a Link with one worker: the noisy practice's first slow
/// query holds it for a minute, so the quiet practice's query cannot start; it is
/// answered 503 busy once its `maxTimeInQueue` has passed, not after the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_neighbour_wait_for_a_link_worker_counts_against_max_time_in_queue() {
    let mut h = Harness::start().await;
    let (link, key, noisy, quiet) = two_practices(&mut h, 1).await;
    flood(&h, &key, noisy, 10);
    // Let the flood reach the Link first (if it did not, the quiet query would
    // simply run at once: this sleep can weaken the test, never fail it).
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (status, body, took) = quiet_query(&h, &key, quiet).await;
    assert!(
        took < Duration::from_millis(BUDGET_MS) + MARGIN,
        "answered {status} after {took:?}, past maxTimeInQueue {BUDGET_MS} ms: {body}"
    );
    assert!(matches!(status, 200 | 503), "{status}: {body}");
    if status == 503 {
        assert!(message(&body).contains("busy"), "{body}");
    }
    finish(h, link).await;
}

/// With two workers, the noisy practice may hold only one of them: the quiet
/// practice's query runs at once and succeeds while the flood is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_neighbour_never_holds_every_link_worker() {
    let mut h = Harness::start().await;
    let (link, key, noisy, quiet) = two_practices(&mut h, 2).await;
    flood(&h, &key, noisy, 10);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (status, body, took) = quiet_query(&h, &key, quiet).await;
    assert_eq!(status, 200, "after {took:?}: {body}");
    assert!(
        took < Duration::from_millis(BUDGET_MS) + MARGIN,
        "answered after {took:?}"
    );
    finish(h, link).await;
}
