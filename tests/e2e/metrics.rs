//! The Cloud's `/metrics`: behind the admin token, in the Prometheus text format,
//! with the metric names operators alert on, and counters that move with traffic.

use std::time::Duration;

use halo_ids::Environment;
use halo_router::RouterConfig;
use serde_json::json;

use crate::fixture::{ADMIN, Harness, practice};

/// A query that keeps SQLite busy for seconds (12^8 rows).
const SLOW: &str = "SELECT count(*) FROM patients a, patients b, patients c, patients d, patients e, patients f, patients g, patients h";

async fn scrape(h: &Harness) -> String {
    let resp = h
        .http
        .get(h.url("/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    resp.text().await.unwrap()
}

/// The value of the sample `series`: its name and labels as written (e.g.
/// `halo_links_attached` or `halo_route_denials_total{code="notPaired"}`).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn sample(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_admin_token() {
    let h = Harness::start().await;
    let anonymous = h.http.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = h
        .http
        .get(h.url("/metrics"))
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_requests_denials_links_and_the_log() {
    let mut h = Harness::start_with(RouterConfig {
        link_capacity: 1,
        execution_limit: Duration::from_secs(2),
        ..RouterConfig::standard()
    })
    .await;
    let before = scrape(&h).await;
    for name in [
        "halo_links_attached",
        "halo_routable_sites",
        "halo_log_events_since_snapshot",
        "# TYPE halo_log_append_duration_seconds histogram",
        "# TYPE halo_log_fsync_duration_seconds histogram",
        "# TYPE halo_link_queue_depth gauge",
        "# TYPE halo_link_busy_refusals_total counter",
    ] {
        assert!(before.contains(name), "{name} missing:\n{before}");
    }
    assert_eq!(sample(&before, "halo_links_attached"), 0.0);
    let appends_before = value(&before, "halo_log_fsync_duration_seconds_count").unwrap_or(0.0);

    let link = h
        .link(Environment::Stage, &[practice("METR01", "Metric Dental")])
        .await;
    let key = h.integrator(Environment::Stage).await;
    let (crn, halo) = link.sites[0];
    h.enable_practice(crn).await;

    // Not paired yet: a denial with its code.
    let (status, _) = h.query(&key, halo, "SELECT first_name FROM patients").await;
    assert_eq!(status, 403);
    assert_eq!(h.pair(&key, crn).await.0, 200);
    let (status, body) = h.query(&key, halo, "SELECT first_name FROM patients").await;
    assert_eq!(status, 200, "{body}");

    let after = scrape(&h).await;
    for name in [
        "# TYPE halo_http_requests_total counter",
        "# TYPE halo_http_request_duration_seconds histogram",
        "# TYPE halo_route_denials_total counter",
    ] {
        assert!(after.contains(name), "{name} missing:\n{after}");
    }
    assert_eq!(sample(&after, "halo_links_attached"), 1.0);
    assert_eq!(sample(&after, "halo_routable_sites"), 1.0);
    assert_eq!(
        sample(&after, r#"halo_route_denials_total{code="notPaired"}"#),
        1.0
    );
    let query_op = "POST /integrator/sites/{site_id}/queries/immediate";
    assert_eq!(
        sample(
            &after,
            &format!(r#"halo_http_requests_total{{operation="{query_op}",status="200"}}"#)
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            &format!(r#"halo_http_requests_total{{operation="{query_op}",status="403"}}"#)
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            &format!(r#"halo_http_request_duration_seconds_count{{operation="{query_op}"}}"#)
        ),
        2.0
    );
    // The Link's hello, the grants and the pairing were logged, each batch fsync'd.
    let appends_after = sample(&after, "halo_log_fsync_duration_seconds_count");
    assert!(
        appends_after >= appends_before + 4.0,
        "{appends_before} -> {appends_after}"
    );
    assert!(sample(&after, "halo_log_events_since_snapshot") >= 4.0);

    // Busy: one slow query fills the Link's one place, the next is refused.
    let link_guid = h
        .admin(
            reqwest::Method::GET,
            &format!("/admin/sites/{halo}"),
            json!(null),
        )
        .await["linkId"]
        .as_str()
        .unwrap()
        .to_owned();
    let slow = {
        let url = h.url(&format!("/integrator/sites/{halo}/queries/immediate"));
        let client = h.http.clone();
        let key = key.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .header(halo_cloud::KEY_HEADER, key)
                .json(&json!({"maxTimeInQueue": 0, "command": {"text": SLOW, "executionMode": "scalar"}}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let queue = format!(r#"halo_link_queue_depth{{link_guid="{link_guid}"}}"#);
    let mut depth = 0.0;
    for _ in 0..100 {
        depth = value(&scrape(&h).await, &queue).unwrap_or(0.0);
        if depth >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(depth, 1.0, "the slow query is queued or running");
    let (status, body) = h.query(&key, halo, "SELECT first_name FROM patients").await;
    assert_eq!(status, 503, "{body}");
    let busy = scrape(&h).await;
    assert_eq!(
        sample(
            &busy,
            &format!(r#"halo_link_busy_refusals_total{{link_guid="{link_guid}"}}"#)
        ),
        1.0
    );
    assert_eq!(
        sample(&busy, r#"halo_route_failures_total{kind="busy"}"#),
        1.0
    );
    assert_eq!(slow.await.unwrap(), 504);

    // The snapshot's age appears once one is written.
    assert!(value(&busy, "halo_snapshot_age_seconds").is_none());
    h.cloud.app.state.snapshot_now().await.unwrap();
    let snapped = scrape(&h).await;
    assert!(sample(&snapped, "halo_snapshot_age_seconds") < 60.0);
    assert_eq!(sample(&snapped, "halo_log_events_since_snapshot"), 0.0);

    drop(link);
    h.cloud.stop().await;
}

/// The Link's own metrics on its `metrics_listen` address: jobs by outcome, their
/// durations, and refusals when its queue is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_serves_jobs_durations_and_refusals() {
    let h = Harness::start().await;
    let dir = h.dir.path();
    let spec = practice("LMET01", "Link Metric Dental");
    let db = dir.join("link-metrics.sqlite");
    halo_link::demo::generate(&db, &spec).unwrap();
    let token = h.credential(Environment::Stage, &[spec]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = halo_link::LinkConfig::new(
        format!("ws://{}/link/ws", h.cloud.addr),
        Environment::Stage,
        token,
        dir.join("link-metrics-state.json"),
        vec![db],
    );
    config.max_concurrent_jobs = 1;
    config.max_queued_per_database = 1;
    config.metrics_listen = Some(metrics_addr);
    let agent = halo_link::Agent::prepare(config).unwrap();
    let halo = agent.databases()[0].halo_guid();
    let crn = agent.databases()[0].identity().parent_crn;
    let link = agent.spawn();
    link.wait_connected(1, Duration::from_secs(10))
        .await
        .unwrap();
    let key = h.integrator(Environment::Stage).await;
    h.enable_practice(crn).await;
    assert_eq!(h.pair(&key, crn).await.0, 200);

    let scrape_link = || async {
        let resp = reqwest::get(format!("http://{metrics_addr}/metrics"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    };
    let before = scrape_link().await;
    assert_eq!(sample(&before, "halo_link_connected"), 1.0);
    assert!(
        before.contains("# TYPE halo_link_job_duration_seconds histogram"),
        "{before}"
    );

    let (status, body) = h.query(&key, halo, "SELECT first_name FROM patients").await;
    assert_eq!(status, 200, "{body}");
    // One slow job runs, one waits, the third finds the queue full: busy.
    let slow = |h: &Harness| {
        let url = h.url(&format!("/integrator/sites/{halo}/queries/immediate"));
        let client = h.http.clone();
        let key = key.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .header(halo_cloud::KEY_HEADER, key)
                .json(&json!({"maxTimeInQueue": 5000, "command": {"text": SLOW, "executionMode": "scalar"}}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let first = slow(&h);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = slow(&h);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = h.query(&key, halo, "SELECT first_name FROM patients").await;
    assert_eq!(status, 503, "{body}");

    let after = scrape_link().await;
    assert_eq!(sample(&after, r#"halo_link_jobs_total{outcome="ok"}"#), 1.0);
    assert!(sample(&after, "halo_link_job_duration_seconds_count") >= 1.0);
    assert_eq!(
        sample(&after, r#"halo_link_refusals_total{reason="queueFull"}"#),
        1.0
    );
    let missing = reqwest::get(format!("http://{metrics_addr}/other"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let _ = link.shutdown().await;
    let _ = (first.await, second.await);
    h.cloud.stop().await;
}
