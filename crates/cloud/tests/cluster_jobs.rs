//! The async path shared by several Cloud nodes through PostgreSQL
//! (`halo_cloud::queries::pg_store`): an async query accepted on one node is read on
//! another, and a registered query fires once per occurrence cluster-wide while
//! every node runs its scheduler.
//!
//! Mostly no Link is attached: each occurrence ends `initialisationFailedSiteOffline`
//! on the node that fired it, which is enough to count occurrences. The stores'
//! races themselves (100 rounds of two nodes claiming one occurrence, one delivery)
//! are in `pg_store`'s unit tests. One test attaches a scripted Link (a real
//! WebSocket) to one node, to show that queries owned by another node are handed
//! over and run beside it, once each.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures_util::{SinkExt as _, StreamExt as _};
use halo_cloud::lease::Placement;
use halo_cloud::{CloudConfig, ClusterConfig, HttpLimits, KEY_HEADER, RunningCloud, app};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};
use halo_policy::{IntegratorId, KeyHash, PolicyEvent};
use halo_protocol::{CloudToLink, LinkToCloud, QueryResult, ResultEnd, ResultPage};
use halo_router::RouterConfig;
use halo_tenancy::{AvailabilityConfig, Catalogue, Event, SiteIdentity};
use halo_test_support::postgres_server::PgServer;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
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
    start_on(server, name, None).await
}

/// A node; with `peer`, listening there and announcing it as its peer address (so
/// that the others see where its Links are and forward to it).
async fn start_on(server: &PgServer, name: &str, peer: Option<SocketAddr>) -> RunningCloud {
    start_tuned(server, name, peer, |_| {}).await
}

/// [`start_on`], with its cluster settings changed by `tune`.
async fn start_tuned(
    server: &PgServer,
    name: &str,
    peer: Option<SocketAddr>,
    tune: impl FnOnce(&mut ClusterConfig),
) -> RunningCloud {
    let mut config = cloud_config();
    if let Some(addr) = peer {
        config.listen = addr;
    }
    let mut cluster = ClusterConfig::new(server.url(), name);
    cluster.peer_addr = peer;
    cluster.cluster_secret = peer.map(|_| {
        halo_cloud::forward::ClusterSecret::new(b"cluster-jobs-secret-0123456789abcdef").unwrap()
    });
    cluster.poll_every = Duration::from_millis(100);
    cluster.timeout = Duration::from_secs(2);
    tune(&mut cluster);
    let jobs = halo_cloud::JobsConfig {
        tick: Duration::from_millis(50),
        ..halo_cloud::JobsConfig::default()
    };
    app::start_cluster(config, jobs, Some(cluster))
        .await
        .unwrap()
}

/// A loopback address free now.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
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

/// A client of the test's PostgreSQL server, to read what the nodes wrote.
async fn sql(server: &PgServer) -> tokio_postgres::Client {
    let (db, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db
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
    let db = sql(&server).await;
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

/// A command the scripted Link never answers.
const HANGS: &str = "SELECT last_name FROM patients";

/// How long the scripted Link takes to answer a job.
const JOB_TAKES: Duration = Duration::from_millis(2500);

/// The paged jobs a scripted Link received, by command text.
type Jobs = Arc<Mutex<HashMap<String, usize>>>;

/// A credential, issued on `node`, for [`seed`]'s Link.
async fn link_token(node: &RunningCloud) -> String {
    let request = Request::builder()
        .method("POST")
        .uri("/admin/link-credentials")
        .header(header::AUTHORIZATION, "Bearer cluster-jobs-admin")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"label": "scripted", "environment": "stage", "practices": ["D4w:CRN0"]})
                .to_string(),
        ))
        .unwrap();
    let response = halo_cloud::routes(Arc::clone(&node.app))
        .oneshot(request)
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Attaches a scripted Link to `node` over a real WebSocket: [`seed`]'s Link,
/// serving its site, with `token`. It answers every paged job with one page of one
/// row after [`JOB_TAKES`] (longer than a lease round, so that a query started
/// twice would be seen) and every immediate job at once with one row, except
/// [`HANGS`], never answered; counts the jobs by command text (and the cancels, as
/// `cancel`) and sends a heartbeat every second.
async fn attach_link(node: &RunningCloud, token: &str, jobs: Jobs) -> tokio::task::JoinHandle<()> {
    let ws_request = support::link_ws_request(node.addr, token);
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request).await.unwrap();
    let site = HaloGuid::from_u128(7000).unwrap();
    let hello = support::one_database_hello(
        LinkGuid::from_u128(7).unwrap(),
        site,
        "CRN0",
        "Practice",
        true,
    );
    match support::say_hello(&mut ws, &hello).await {
        CloudToLink::HelloAck { rejected, .. } => assert!(rejected.is_empty(), "{rejected:?}"),
        other => panic!("unexpected {other:?}"),
    }
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel::<Vec<LinkToCloud>>();
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        loop {
            let out = tokio::select! {
                Some(out) = answered.recv() => out,
                _ = beat.tick() => {
                    let at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap();
                    vec![LinkToCloud::Heartbeat(halo_protocol::Heartbeat {
                        at: Timestamp::from_millis(u64::try_from(at.as_millis()).unwrap()),
                        databases: vec![site],
                    })]
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        match halo_protocol::decode::<CloudToLink>(&text).unwrap() {
                            CloudToLink::StreamJob(job) => {
                                let id = job.job.query_id;
                                *jobs.lock().entry(job.job.command.clone()).or_default() += 1;
                                if job.job.command == HANGS {
                                    continue;
                                }
                                let answers = answers.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(JOB_TAKES).await;
                                    let rows = br#"[{"first_name":"Ann"}]"#;
                                    let _ = answers.send(vec![
                                        LinkToCloud::ResultPage(ResultPage::from_json(id, 1, 0, 1, rows)),
                                        LinkToCloud::ResultEnd(ResultEnd {
                                            query_id: id,
                                            rows: 1,
                                            pages: 1,
                                            size: rows.len() as u64,
                                            duration_ms: 1,
                                        }),
                                    ]);
                                });
                                Vec::new()
                            }
                            CloudToLink::QueryJob(job) => {
                                *jobs.lock().entry(job.command.clone()).or_default() += 1;
                                let rows = br#"[{"first_name":"Ann"}]"#;
                                vec![LinkToCloud::QueryResult(QueryResult::from_json(
                                    job.query_id, 1, rows, 1,
                                ))]
                            }
                            CloudToLink::Cancel { .. } => {
                                *jobs.lock().entry("cancel".to_owned()).or_default() += 1;
                                Vec::new()
                            }
                            _ => Vec::new(),
                        }
                    }
                    Some(Ok(_)) => Vec::new(),
                    _ => return,
                },
            };
            for msg in out {
                if ws
                    .send(Message::text(halo_protocol::encode(&msg).unwrap()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
}

/// The owner of an async query's row.
async fn owner(db: &tokio_postgres::Client, id: &str) -> Option<String> {
    db.query_one("SELECT owner FROM halo_jobs_queries WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_owned_away_from_their_link_are_handed_over_and_run_there_once() {
    let server = PgServer::start();
    let db = sql(&server).await;
    let a = start_on(&server, "a", Some(free_addr())).await;
    let site = seed(&a).await;
    let queries = format!("/integrator/sites/{site}/queries");
    // Accepted on a while no node holds the Link: a owns it and it waits.
    let (status, created) = call(
        &a,
        "POST",
        &format!("{queries}/async"),
        Some(json!({"command": command(), "maxTimeInQueue": 60_000})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let accepted = created["id"].as_str().unwrap().to_owned();
    assert_eq!(owner(&db, &accepted).await.as_deref(), Some("a"));
    // A query left by a node that died: a adopts it (the only node alive).
    let mut record: Value = serde_json::from_str(
        &db.query_one(
            "SELECT record FROM halo_jobs_queries WHERE id = $1",
            &[&accepted],
        )
        .await
        .unwrap()
        .get::<_, String>(0),
    )
    .unwrap();
    let adopted = uuid::Uuid::new_v4().to_string();
    record["id"] = json!(adopted);
    record["command"]["text"] = json!("SELECT first_name FROM patients");
    db.execute(
        "INSERT INTO halo_jobs_queries (id, unfinished, owner, record) VALUES ($1, true, 'ghost', $2)",
        &[&adopted, &record.to_string()],
    )
    .await
    .unwrap();
    eventually("a adopts the dead node's query", async || {
        owner(&db, &adopted).await.as_deref() == Some("a")
    })
    .await;
    // Node b starts and the Link attaches there, not to a.
    let b = start_on(&server, "b", Some(free_addr())).await;
    eventually("node b follows the site and the key", async || {
        call(&b, "GET", &format!("/integrator/sites/{site}"), None)
            .await
            .0
            == StatusCode::OK
    })
    .await;
    let jobs = Jobs::default();
    let link = attach_link(&b, &link_token(&b).await, Arc::clone(&jobs)).await;
    for id in [&accepted, &adopted] {
        let path = format!("{queries}/{id}");
        eventually("the query succeeds, as either node sees it", async || {
            call(&a, "GET", &path, None).await.1["status"] == "successful"
        })
        .await;
        assert_eq!(
            call(&a, "GET", &path, None).await,
            call(&b, "GET", &path, None).await
        );
        // It ran beside the Link, and its page is read on either node.
        assert_eq!(owner(&db, id).await.as_deref(), Some("b"));
        for node in [&a, &b] {
            let (status, page) = call(node, "GET", &format!("{path}/results/1"), None).await;
            assert_eq!(status, StatusCode::OK, "{page}");
        }
    }
    // Once each, and never again (a, which owned them, did not run them too).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expected: HashMap<String, usize> = [
        ("SELECT * FROM patients".to_owned(), 1),
        ("SELECT first_name FROM patients".to_owned(), 1),
    ]
    .into();
    assert_eq!(*jobs.lock(), expected);
    link.abort();
    a.stop().await;
    b.stop().await;
}

/// The node holding a live lease of [`seed`]'s Link, as the database says.
async fn lease_holder(db: &tokio_postgres::Client) -> Option<String> {
    db.query_opt(
        "SELECT node_id FROM link_leases WHERE link_id = $1 AND expires_at > now()",
        &[&LinkGuid::from_u128(7).unwrap().to_string()],
    )
    .await
    .unwrap()
    .map(|row| row.get(0))
}

/// Moves the scripted Link to `to`: its session ends where it was, it attaches to
/// `to`, and returns once `to` holds its lease.
async fn move_link(
    link: tokio::task::JoinHandle<()>,
    token: &str,
    to: &RunningCloud,
    name: &str,
    jobs: &Jobs,
    db: &tokio_postgres::Client,
) -> tokio::task::JoinHandle<()> {
    link.abort();
    eventually("the link's lease is released", async || {
        lease_holder(db).await.is_none()
    })
    .await;
    let link = attach_link(to, token, Arc::clone(jobs)).await;
    eventually("the link's new node holds its lease", async || {
        lease_holder(db).await.as_deref() == Some(name)
    })
    .await;
    link
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forward_that_finds_its_lease_stale_reads_the_leases_again_at_once() {
    let server = PgServer::start();
    let db = sql(&server).await;
    // Leases of a minute: a node that read one goes on believing it for that long.
    let long = |cluster: &mut ClusterConfig| cluster.lease_ttl = Duration::from_secs(60);
    let b = start_tuned(&server, "b", Some(free_addr()), long).await;
    let c = start_tuned(&server, "c", Some(free_addr()), long).await;
    let site = seed(&b).await;
    let jobs = Jobs::default();
    let token = link_token(&b).await;
    let link = attach_link(&b, &token, Arc::clone(&jobs)).await;
    eventually("b holds the link's lease", async || {
        lease_holder(&db).await.as_deref() == Some("b")
    })
    .await;
    // a reads the others' leases when it starts, then only once a minute: without
    // reading them again when a forward fails, it would go on sending to b, as
    // the lease it read says.
    let a = start_tuned(&server, "a", Some(free_addr()), |cluster| {
        cluster.lease_renew_every = Duration::from_secs(60);
        cluster.lease_ttl = Duration::from_secs(120);
    })
    .await;
    for node in [&a, &c] {
        eventually("the node follows the site and the key", async || {
            call(node, "GET", &format!("/integrator/sites/{site}"), None)
                .await
                .0
                == StatusCode::OK
        })
        .await;
    }
    let immediate = format!("/integrator/sites/{site}/queries/immediate");
    let body = json!({"command": command()});
    let leases = &a.app.forwarding.as_ref().unwrap().leases;
    eventually("a has read b's lease", async || {
        matches!(leases.placement(LinkGuid::from_u128(7).unwrap()),
            Placement::Remote { node_id, .. } if node_id == "b")
    })
    .await;
    let (status, answer) = call(&a, "POST", &immediate, Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "forwarded to b: {answer}");
    // The Link moves to c; b is alive but no longer holds it (it answers so).
    let link = move_link(link, &token, &c, "c", &jobs, &db).await;
    let (status, answer) = call(&a, "POST", &immediate, Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "sent to b, then to c: {answer}");
    // The Link moves back to b and c stops: the connection to c is refused.
    let link = move_link(link, &token, &b, "b", &jobs, &db).await;
    c.stop().await;
    // The re-read is one round trip to PostgreSQL under the node's 5 s deadline; with
    // every test of this file running its own nodes and server on a loaded 2-core
    // machine it can miss that deadline once, and the query is then refused (503,
    // never run). A few tries within seconds still tell the re-read from its absence:
    // without it `a` would keep sending to `c` until its next round, a minute away.
    let started = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let (status, answer) = call(&a, "POST", &immediate, Some(body.clone())).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert!(
            tries < 4 && started.elapsed() < Duration::from_secs(30),
            "c refused, never sent to b: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Each ran once at the Link.
    assert_eq!(jobs.lock().get("SELECT * FROM patients"), Some(&3));
    link.abort();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registered_query_cancelled_on_one_node_stops_its_occurrence_on_another() {
    let server = PgServer::start();
    let db = sql(&server).await;
    let a = start_on(&server, "a", Some(free_addr())).await;
    let b = start_on(&server, "b", Some(free_addr())).await;
    let site = seed(&a).await;
    eventually("node b follows the site and the key", async || {
        call(&b, "GET", &format!("/integrator/sites/{site}"), None)
            .await
            .0
            == StatusCode::OK
    })
    .await;
    let jobs = Jobs::default();
    let link = attach_link(&b, &link_token(&b).await, Arc::clone(&jobs)).await;
    // a knows the Link is on b, so b fires the occurrences.
    let leases = &a.app.forwarding.as_ref().unwrap().leases;
    eventually("a has read b's lease", async || {
        matches!(leases.placement(LinkGuid::from_u128(7).unwrap()),
            Placement::Remote { node_id, .. } if node_id == "b")
    })
    .await;
    let registered = format!("/integrator/sites/{site}/queries/registered");
    let (status, created) = call(
        &a,
        "POST",
        &registered,
        Some(json!({
            "name": "hangs",
            "registeredQueryType": "query",
            "frequency": 600,
            "duration": 1200,
            "registerCommand": {"command": {"text": HANGS, "type": "text", "executionMode": "reader"}},
        })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let occurrence = async || -> Option<(String, Value)> {
        let row = db
            .query_opt(
                "SELECT owner, record FROM halo_jobs_queries WHERE record::jsonb ->> 'registeredId' = $1",
                &[&id],
            )
            .await
            .unwrap()?;
        Some((
            row.get(0),
            serde_json::from_str(&row.get::<_, String>(1)).unwrap(),
        ))
    };
    eventually("the occurrence runs at the Link, on b", async || {
        occurrence()
            .await
            .is_some_and(|(owner, record)| owner == "b" && record["status"] == "executing")
    })
    .await;
    assert_eq!(jobs.lock().get(HANGS), Some(&1));
    // Cancelled through a: b stops it.
    let (status, _) = call(&a, "DELETE", &format!("{registered}/{id}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually("the occurrence ends cancelled", async || {
        occurrence()
            .await
            .is_some_and(|(_, record)| record["status"] == "executionFailed")
    })
    .await;
    let (_, record) = occurrence().await.unwrap();
    assert_eq!(record["error"]["code"], 409, "{record}");
    eventually("the Link is told to stop it", async || {
        jobs.lock().get("cancel") == Some(&1)
    })
    .await;
    link.abort();
    a.stop().await;
    b.stop().await;
}
