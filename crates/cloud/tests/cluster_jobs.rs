//! The async path shared by several Cloud nodes through PostgreSQL
//! (`halo_cloud::queries::pg_store`): an async query accepted on one node is read on
//! another, and a registered query fires once per occurrence cluster-wide while
//! every node runs its scheduler.
//!
//! No Link is attached: each occurrence ends `initialisationFailedSiteOffline` on
//! the node that fired it, which is enough to count occurrences. The stores' races
//! themselves (100 rounds of two nodes claiming one occurrence, one delivery) are
//! in `pg_store`'s unit tests.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use halo_cloud::{CloudConfig, ClusterConfig, HttpLimits, KEY_HEADER, RunningCloud, app};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};
use halo_policy::{IntegratorId, KeyHash, PolicyEvent};
use halo_router::RouterConfig;
use halo_tenancy::{AvailabilityConfig, Catalogue, Event, SiteIdentity};
use halo_test_support::postgres_server::PgServer;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);
const KEY: &str = "cluster-jobs-test-key";

fn cloud_config() -> CloudConfig {
    CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: None,
        admin_token: "cluster-jobs-admin".to_owned(),
        router: RouterConfig::standard(),
        availability: AvailabilityConfig::default(),
        snapshot_every: 0,
        accept_damaged_log: false,
        max_databases_per_link: app::MAX_DATABASES_PER_LINK,
        http: HttpLimits::default(),
    }
}

async fn start(server: &PgServer, name: &str) -> RunningCloud {
    let mut cluster = ClusterConfig::new(server.url(), name);
    cluster.poll_every = Duration::from_millis(100);
    cluster.timeout = Duration::from_secs(2);
    let jobs = halo_cloud::JobsConfig {
        tick: Duration::from_millis(50),
        ..halo_cloud::JobsConfig::default()
    };
    app::start_cluster(cloud_config(), jobs, Some(cluster))
        .await
        .unwrap()
}

fn acme() -> IntegratorId {
    "acme".parse().unwrap()
}

/// One Stage site (no Link connected) that `acme` may read with [`KEY`].
async fn seed(node: &RunningCloud) -> HaloGuid {
    let link = LinkGuid::from_u128(7).unwrap();
    let site = HaloGuid::from_u128(7000).unwrap();
    let crn: Crn = "CRN0".parse().unwrap();
    let events = vec![
        Event::LinkRegistered {
            link,
            environment: Environment::Stage,
            version: "1".into(),
        },
        Event::SiteAttached {
            link,
            halo_guid: site,
            identity: SiteIdentity {
                pms_type: PmsType::D4w,
                parent_crn: crn,
                branch_crns: Vec::new(),
                practice_name: "Practice".into(),
                pms_version: "15".into(),
                catalogues: vec![Catalogue {
                    name: "d4w".into(),
                    is_default: true,
                }],
                is_demo: false,
            },
        },
        Event::SiteReady {
            link,
            halo_guid: site,
        },
    ];
    for r in node.app.state.apply_tenancy(events, NOW).await {
        r.unwrap();
    }
    let pms_id = PmsId::new(PmsType::D4w, crn);
    for event in [
        PolicyEvent::IntegratorEnabled {
            integrator: acme(),
            pms_type: PmsType::D4w,
        },
        PolicyEvent::ComponentsAuthorised {
            integrator: acme(),
            pms_type: PmsType::D4w,
            catalogues: vec!["d4w".into()],
            tables: vec!["patients".into()],
            procedures: Vec::new(),
            allow_write: false,
        },
        PolicyEvent::PracticeEnabled {
            integrator: acme(),
            pms_id,
        },
        PolicyEvent::PracticePaired {
            integrator: acme(),
            pms_id,
            environment: Environment::Stage,
        },
        PolicyEvent::KeyIssued {
            integrator: acme(),
            environment: Environment::Stage,
            key_hash: KeyHash::of(KEY),
        },
    ] {
        node.app.state.apply_policy(event, NOW).await.unwrap();
    }
    site
}

async fn call(
    node: &RunningCloud,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(KEY_HEADER, KEY)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = halo_cloud::routes(Arc::clone(&node.app))
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Both nodes follow the seeded site and key.
async fn seeded_cluster(server: &PgServer) -> (RunningCloud, RunningCloud, HaloGuid) {
    let a = start(server, "a").await;
    let b = start(server, "b").await;
    let site = seed(&a).await;
    let sites = format!("/integrator/sites/{site}");
    eventually("node b follows the site and the key", async || {
        call(&b, "GET", &sites, None).await.0 == StatusCode::OK
    })
    .await;
    (a, b, site)
}

fn command() -> Value {
    json!({"text": "SELECT * FROM patients", "type": "text", "executionMode": "reader"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_async_query_accepted_on_one_node_is_read_on_another() {
    let server = PgServer::start();
    let (a, b, site) = seeded_cluster(&server).await;
    let (status, created) = call(
        &a,
        "POST",
        &format!("/integrator/sites/{site}/queries/async"),
        Some(json!({"command": command(), "maxTimeInQueue": 1500})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/integrator/sites/{site}/queries/{id}");
    // Readable on b at once (it was stored before 201), and b's answer follows a's
    // to the terminal status. No node holds a Link for the site: on a cluster the
    // query waits for one (a Link may be moving), then expires in the queue.
    let (status, seen) = call(&b, "GET", &path, None).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["id"], created["id"]);
    eventually("the query ends, as b sees it", async || {
        call(&b, "GET", &path, None).await.1["status"] == "expiredInQueue"
    })
    .await;
    assert_eq!(
        call(&a, "GET", &path, None).await,
        call(&b, "GET", &path, None).await
    );
    // The status batch reads the same store.
    let (status, batch) = call(
        &b,
        "POST",
        &format!("/integrator/sites/{site}/queries/status"),
        Some(json!({"queryIds": [id]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(batch["results"][0]["status"], "found");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registered_query_fires_once_per_occurrence_with_two_schedulers() {
    let server = PgServer::start();
    let (a, b, site) = seeded_cluster(&server).await;
    let (status, created) = call(
        &a,
        "POST",
        &format!("/integrator/sites/{site}/queries/registered"),
        Some(json!({
            "name": "every second",
            "registeredQueryType": "query",
            "frequency": 1,
            "duration": 4,
            "registerCommand": {"command": command()},
        })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (db, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Occurrences at +0, +1, +2 and +3 s (the next, +4 s, is past the duration).
    eventually("the schedule is over", async || {
        let row = db
            .query_one(
                "SELECT next_at IS NULL FROM halo_jobs_registered WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        row.get::<_, bool>(0)
    })
    .await;
    let occurrences = async || -> (i64, i64) {
        let row = db
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE unfinished) FROM halo_jobs_queries
                 WHERE record::jsonb ->> 'registeredId' = $1",
                &[&id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    eventually("every occurrence ends", async || occurrences().await.1 == 0).await;
    assert_eq!(
        occurrences().await.0,
        4,
        "each occurrence fires once, cluster-wide"
    );
    a.stop().await;
    b.stop().await;
}
