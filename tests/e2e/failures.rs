//! Failure paths: every one answers quickly with the right status, none hangs.

use std::time::{Duration, Instant};

use halo_ids::Environment;
use halo_router::RouterConfig;
use serde_json::json;

use crate::fixture::{Harness, message, practice};

/// A query that keeps SQLite busy for many seconds (12^8 rows).
const SLOW: &str = "SELECT count(*) FROM patients a, patients b, patients c, patients d, patients e, patients f, patients g, patients h";

async fn paired() -> (Harness, crate::fixture::TestLink, String) {
    let mut h = Harness::start_with(RouterConfig {
        execution_limit: Duration::from_secs(2),
        ..RouterConfig::standard()
    })
    .await;
    let link = h
        .link(Environment::Stage, &[practice("FAIL01", "Failing Dental")])
        .await;
    let key = h.integrator(Environment::Stage).await;
    h.enable_practice(link.sites[0].0).await;
    assert_eq!(h.pair(&key, link.sites[0].0).await.0, 200);
    (h, link, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorised_components_and_writes_are_403() {
    let (h, link, key) = paired().await;
    let halo = link.sites[0].1;
    for sql in [
        "SELECT * FROM practice_info",
        "SELECT first_name FROM patients UNION SELECT practice_name FROM practice_info",
        "SELECT * FROM patients; DELETE FROM patients",
        "DROP TABLE patients",
        "ATTACH DATABASE 'x.db' AS x",
    ] {
        let (status, body) = h.query(&key, halo, sql).await;
        assert_eq!(status, 403, "{sql}: {body}");
    }
    // A command the analyser cannot parse is a bad request (400), as Halo answers
    // malformed SQL: garbage, and SQLite forms the analyser does not read.
    for sql in ["this is not sql", "PRAGMA table_info(patients)"] {
        let (status, body) = h.query(&key, halo, sql).await;
        assert_eq!(status, 400, "{sql}: {body}");
        assert!(message(&body).starts_with("command refused: "), "{body}");
    }
    let (status, body) = h
        .query_body(&key, halo, json!({"command": {"text": "UPDATE patients SET email = ''", "executionMode": "nonQuery"}}))
        .await;
    assert_eq!(status, 403, "{body}");
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_result_is_413() {
    let (h, link, key) = paired().await;
    // About 9 MiB of JSON from a small table: a cross join of patients.
    let sql = "SELECT a.email, b.email, c.email, a.suburb FROM patients a, patients b, patients c, patients d, providers e";
    let (status, body) = h.query(&key, link.sites[0].1, sql).await;
    assert_eq!(status, 413, "{}", message(&body));
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_query_is_504() {
    let (h, link, key) = paired().await;
    let started = Instant::now();
    let (status, body) = h
        .query_body(
            &key,
            link.sites[0].1,
            json!({"maxTimeInQueue": 0, "command": {"text": SLOW, "executionMode": "scalar"}}),
        )
        .await;
    assert_eq!(status, 504, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_killed_mid_query_is_503_quickly() {
    let (h, link, key) = paired().await;
    let halo = link.sites[0].1;
    let url = h.url(&format!("/integrator/sites/{halo}/queries/immediate"));
    let client = h.http.clone();
    let key2 = key.clone();
    let query = tokio::spawn(async move {
        let started = Instant::now();
        let resp = client
            .post(url)
            .header(halo_cloud::KEY_HEADER, key2)
            .json(
                &json!({"maxTimeInQueue": 0, "command": {"text": SLOW, "executionMode": "scalar"}}),
            )
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    link.handle.kill();
    let (status, _) = query.await.unwrap();
    assert_eq!(status, 503);
    assert!(
        killed_at.elapsed() < Duration::from_secs(3),
        "took {:?} after the kill",
        killed_at.elapsed()
    );
    // And with no Link at all, the site is unreachable at once.
    let (status, _) = h.query(&key, halo, "SELECT 1").await;
    assert_eq!(status, 503);
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_key_on_production_site_is_401() {
    let mut h = Harness::start().await;
    let link = h
        .link(
            Environment::Production,
            &[practice("PROD01", "Production Dental")],
        )
        .await;
    let stage_key = h.integrator(Environment::Stage).await;
    let (crn, halo) = link.sites[0];
    h.enable_practice(crn).await;
    let (status, body) = h
        .query(&stage_key, halo, "SELECT first_name FROM patients")
        .await;
    assert_eq!(status, 401, "{body}");
    // A Stage key does not even find the Production site: no site in its
    // environment, an empty list.
    let (status, body) = h
        .get(
            &stage_key,
            &format!("/integrator/sites?practiceManagementSiteId={crn}&practiceManagementName=D4w"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sites"], json!([]), "{body}");
    h.cloud.stop().await;
}
