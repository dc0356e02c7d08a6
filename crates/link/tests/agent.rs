//! The Link against a tiny fake Cloud on loopback: hello, jobs, heartbeats,
//! reconnects, cancel, shutdown, multi-tenancy and fair scheduling.

// Test helpers panic on purpose; the handshake callback type is tungstenite's.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use halo_ids::{Crn, Environment, Epoch, HaloGuid};
use halo_link::demo::{DemoPractice, generate};
use halo_link::{Agent, AgentHandle, LinkConfig};
use halo_protocol::{
    Allowlist, CloudToLink, ExecutionMode, Hello, LinkToCloud, QueryErrorKind, QueryJob, decode,
    encode,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// One accepted Link session.
struct Session {
    ws: WebSocketStream<TcpStream>,
    authorization: Option<String>,
    hello: Hello,
}

impl Session {
    async fn send(&mut self, msg: &CloudToLink) {
        self.ws
            .send(Message::text(encode(msg).unwrap()))
            .await
            .unwrap();
    }

    /// The next message, heartbeats included; `None` when the Link went away.
    async fn next_any(&mut self) -> Option<LinkToCloud> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("link silent")
            {
                Some(Ok(Message::Text(t))) => return Some(decode(t.as_str()).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next answer to a job, skipping heartbeats.
    async fn answer(&mut self) -> LinkToCloud {
        loop {
            match self.next_any().await.expect("link went away") {
                LinkToCloud::Heartbeat(_) => {}
                other => return other,
            }
        }
    }
}

/// A fake Cloud: accepts WebSockets, records the bearer header, reads the hello and
/// acknowledges it, then hands the session to the test.
struct FakeCloud {
    url: String,
    sessions: mpsc::Receiver<Session>,
}

impl FakeCloud {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/link/ws", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let seen = Arc::new(Mutex::new(None));
                    let seen2 = Arc::clone(&seen);
                    let callback =
                        move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                              resp| {
                            *seen2.lock().unwrap() = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            Ok(resp)
                        };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await
                    else {
                        return;
                    };
                    let hello = match ws.next().await {
                        Some(Ok(Message::Text(t))) => match decode::<LinkToCloud>(t.as_str()) {
                            Ok(LinkToCloud::Hello(h)) => h,
                            other => panic!("expected hello, got {other:?}"),
                        },
                        other => panic!("expected hello, got {other:?}"),
                    };
                    let ack = CloudToLink::HelloAck {
                        rejected: vec![],
                        heartbeat_interval_ms: Some(200),
                    };
                    ws.send(Message::text(encode(&ack).unwrap())).await.unwrap();
                    let authorization = seen.lock().unwrap().take();
                    let _ = tx
                        .send(Session {
                            ws,
                            authorization,
                            hello,
                        })
                        .await;
                });
            }
        });
        Self { url, sessions: rx }
    }

    async fn session(&mut self) -> Session {
        tokio::time::timeout(WAIT, self.sessions.recv())
            .await
            .expect("no link connected in time")
            .expect("server stopped")
    }
}

/// A demo database with a `halo_marker` table holding `marker`.
fn tenant_db(dir: &Path, crn: &str, marker: &str) -> PathBuf {
    let path = dir.join(format!("{crn}.sqlite"));
    let mut spec = DemoPractice::new(crn.parse::<Crn>().unwrap(), format!("Practice {crn}"));
    spec.patients = 3;
    generate(&path, &spec).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("CREATE TABLE halo_marker (tenant TEXT NOT NULL); ", [])
        .unwrap();
    conn.execute("INSERT INTO halo_marker VALUES (?1)", [marker])
        .unwrap();
    path
}

fn link_config(url: &str, dir: &Path, dbs: Vec<PathBuf>) -> LinkConfig {
    let mut c = LinkConfig::new(
        url,
        Environment::Stage,
        "link-secret",
        dir.join("state.json"),
        dbs,
    );
    c.backoff_initial = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.max_concurrent_jobs = 256;
    c
}

fn marker_job(query_id: u64, halo_guid: HaloGuid) -> CloudToLink {
    CloudToLink::QueryJob(QueryJob {
        query_id,
        halo_guid,
        epoch: Epoch::new(1),
        timeout_ms: 5_000,
        queue_timeout_ms: None,
        catalogue: None,
        mode: ExecutionMode::Reader,
        command: "SELECT tenant FROM halo_marker".into(),
        procedure: None,
        parameters: vec![],
        allowlist: Allowlist {
            tables: vec!["halo_marker".into()],
            procedures: vec![],
            allow_write: false,
        },
    })
}

fn marker_of(answer: &LinkToCloud) -> (u64, String) {
    match answer {
        LinkToCloud::QueryResult(r) => {
            let rows: serde_json::Value = serde_json::from_slice(&r.json().unwrap()).unwrap();
            (r.query_id, rows[0]["tenant"].as_str().unwrap().to_owned())
        }
        other => panic!("expected a result, got {other:?}"),
    }
}

async fn start(cloud: &mut FakeCloud, dir: &Path, dbs: Vec<PathBuf>) -> (AgentHandle, Session) {
    let link = Agent::prepare(link_config(&cloud.url, dir, dbs)).unwrap();
    let handle = link.spawn();
    let session = cloud.session().await;
    handle.wait_connected(1, WAIT).await.unwrap();
    (handle, session)
}

#[tokio::test]
async fn hello_job_and_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let a = tenant_db(dir.path(), "AB1", "alpha");
    let b = tenant_db(dir.path(), "AB2", "beta");
    let (handle, mut s) = start(&mut cloud, dir.path(), vec![a, b]).await;

    assert_eq!(s.authorization.as_deref(), Some("Bearer link-secret"));
    assert_eq!(s.hello.link_guid, handle.link_guid());
    assert_eq!(s.hello.environment, Environment::Stage);
    assert_eq!(s.hello.protocol_version, halo_protocol::PROTOCOL_VERSION);
    let crns: Vec<String> = s
        .hello
        .databases
        .iter()
        .map(|d| d.parent_crn.to_string())
        .collect();
    assert_eq!(crns, ["AB1", "AB2"]);

    let beta = s.hello.databases[1].halo_guid;
    s.send(&marker_job(42, beta)).await;
    let answer = s.answer().await;
    assert_eq!(marker_of(&answer), (42, "beta".to_owned()));

    // Heartbeats list every served site.
    let beat = loop {
        if let Some(LinkToCloud::Heartbeat(h)) = s.next_any().await {
            break h;
        }
    };
    assert_eq!(beat.databases.len(), 2);
    assert!(beat.databases.contains(&beta));

    handle.shutdown().await.unwrap();
    assert!(s.next_any().await.is_none(), "shutdown closes the socket");
}

#[tokio::test]
async fn unknown_site_and_stale_epoch_are_refused_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let a = tenant_db(dir.path(), "AB1", "alpha");
    let (handle, mut s) = start(&mut cloud, dir.path(), vec![a]).await;
    let alpha = s.hello.databases[0].halo_guid;

    s.send(&marker_job(1, HaloGuid::from_u128(99).unwrap()))
        .await;
    match s.answer().await {
        LinkToCloud::QueryFailed(f) => {
            assert_eq!(
                (f.query_id, f.error.kind),
                (1, QueryErrorKind::UnknownDatabase)
            );
        }
        other => panic!("{other:?}"),
    }

    let mut job = marker_job(2, alpha);
    if let CloudToLink::QueryJob(j) = &mut job {
        j.epoch = Epoch::new(5);
    }
    s.send(&job).await;
    assert_eq!(marker_of(&s.answer().await).0, 2);
    if let CloudToLink::QueryJob(j) = &mut job {
        j.epoch = Epoch::new(4);
        j.query_id = 3;
    }
    s.send(&job).await;
    match s.answer().await {
        LinkToCloud::QueryFailed(f) => assert_eq!(f.error.kind, QueryErrorKind::StaleEpoch),
        other => panic!("{other:?}"),
    }
    handle.shutdown().await.unwrap();

    // The fence survives a restart through the state file.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("state.json")).unwrap())
            .unwrap();
    let epochs: Vec<u64> = state["databases"]
        .as_object()
        .unwrap()
        .values()
        .map(|d| d["highestEpoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [5]);
    let restarted = Agent::prepare(link_config(
        &cloud.url,
        dir.path(),
        vec![dir.path().join("AB1.sqlite")],
    ))
    .unwrap();
    let db = &restarted.databases()[0];
    assert_eq!(db.halo_guid(), alpha);
    assert_eq!(db.highest_epoch(), Epoch::new(5));
    assert!(db.observe_epoch(Epoch::new(4)).is_err());
}

#[tokio::test]
async fn reconnects_after_the_cloud_drops_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let a = tenant_db(dir.path(), "AB1", "alpha");
    let (handle, s1) = start(&mut cloud, dir.path(), vec![a]).await;
    let first_hello = s1.hello.clone();
    drop(s1); // abrupt: no close frame

    let mut s2 = cloud.session().await;
    handle.wait_connected(2, WAIT).await.unwrap();
    assert_eq!(s2.hello, first_hello, "same identity after reconnect");
    s2.send(&marker_job(7, first_hello.databases[0].halo_guid))
        .await;
    assert_eq!(marker_of(&s2.answer().await), (7, "alpha".to_owned()));

    // And once more, after a polite close.
    s2.ws.close(None).await.unwrap();
    let _s3 = cloud.session().await;
    handle.wait_connected(3, WAIT).await.unwrap();
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn cancel_stops_a_running_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let a = tenant_db(dir.path(), "AB1", "alpha");
    let (handle, mut s) = start(&mut cloud, dir.path(), vec![a]).await;
    let mut job = marker_job(9, s.hello.databases[0].halo_guid);
    if let CloudToLink::QueryJob(j) = &mut job {
        j.command =
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
                .into();
        j.timeout_ms = 60_000;
    }
    s.send(&job).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.send(&CloudToLink::Cancel { query_id: 9 }).await;
    match s.answer().await {
        LinkToCloud::QueryFailed(f) => {
            assert_eq!((f.query_id, f.error.kind), (9, QueryErrorKind::Cancelled));
        }
        other => panic!("{other:?}"),
    }
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_killed_link_drops_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let a = tenant_db(dir.path(), "AB1", "alpha");
    let (handle, mut s) = start(&mut cloud, dir.path(), vec![a]).await;
    handle.kill();
    assert!(s.next_any().await.is_none());
}

/// Issue 6, item 4: one Link serving several databases never runs a job on any
/// database but the one whose Halo GUID the job carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_jobs_each_run_on_their_own_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let markers = ["alpha", "beta", "gamma", "delta"];
    let dbs: Vec<PathBuf> = markers
        .iter()
        .enumerate()
        .map(|(i, m)| tenant_db(dir.path(), &format!("AB{i}"), m))
        .collect();
    let (handle, mut s) = start(&mut cloud, dir.path(), dbs).await;
    let guids: Vec<HaloGuid> = s.hello.databases.iter().map(|d| d.halo_guid).collect();
    let by_crn: HashMap<String, HaloGuid> = s
        .hello
        .databases
        .iter()
        .map(|d| (d.parent_crn.to_string(), d.halo_guid))
        .collect();
    let expected_marker: HashMap<HaloGuid, &str> = markers
        .iter()
        .enumerate()
        .map(|(i, m)| (by_crn[&format!("AB{i}")], *m))
        .collect();

    // A deterministic shuffle of 200 jobs over the four databases.
    let mut expected = HashMap::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for query_id in 0..200u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let guid = guids[(x % guids.len() as u64) as usize];
        expected.insert(query_id, expected_marker[&guid]);
        s.send(&marker_job(query_id, guid)).await;
    }
    let mut seen = HashMap::new();
    while seen.len() < expected.len() {
        let (id, marker) = marker_of(&s.answer().await);
        assert!(
            seen.insert(id, marker).is_none(),
            "query {id} answered twice"
        );
    }
    for (id, marker) in &seen {
        assert_eq!(marker, expected[id], "query {id} ran on the wrong database");
    }
    let per_db: HashMap<&str, usize> = seen.values().fold(HashMap::new(), |mut m, v| {
        *m.entry(v.as_str()).or_default() += 1;
        m
    });
    assert_eq!(per_db.len(), 4, "every database got jobs: {per_db:?}");
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refused_link_does_not_connect_and_retries_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/link/ws", listener.local_addr().unwrap());
    let (tx, mut attempts) = mpsc::channel::<()>(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let _hello = ws.next().await;
            let refused = CloudToLink::Refused {
                reason: "unknown link credential".into(),
            };
            ws.send(Message::text(encode(&refused).unwrap()))
                .await
                .unwrap();
            let _ = ws.close(None).await;
            let _ = tx.send(()).await;
        }
    });
    let a = tenant_db(dir.path(), "AB1", "alpha");
    let handle = Agent::prepare(link_config(&url, dir.path(), vec![a]))
        .unwrap()
        .spawn();
    for _ in 0..3 {
        tokio::time::timeout(WAIT, attempts.recv())
            .await
            .unwrap()
            .unwrap();
    }
    let status = *handle.status().borrow();
    assert!(!status.connected);
    assert_eq!(status.sessions, 0);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn pongs_keep_an_idle_session_open_and_silence_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let a = tenant_db(dir.path(), "AB1", "alpha");
    let mut config = link_config(&cloud.url, dir.path(), vec![a]);
    // Heartbeats come every 200 ms (the ack); a ping goes with a beat once the
    // Cloud has been quiet for 400 ms, so about every other beat.
    config.silence_limit = Duration::from_millis(1_200);
    let handle = Agent::prepare(config).unwrap().spawn();

    // A cloud that keeps reading answers the Link's pings: the session stays up
    // well past the silence limit.
    let mut s = cloud.session().await;
    let until = tokio::time::Instant::now() + Duration::from_millis(3_000);
    while tokio::time::Instant::now() < until {
        assert!(
            s.next_any().await.is_some(),
            "session dropped while the cloud answered"
        );
    }
    assert_eq!(handle.status().borrow().sessions, 1);

    // A cloud that stops reading sends no pongs: the Link gives up and reconnects.
    let _silent = s;
    let _s2 = cloud.session().await;
    handle.wait_connected(2, WAIT).await.unwrap();
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_link_pings_only_a_cloud_quiet_for_a_third_of_the_silence_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let a = tenant_db(dir.path(), "AB1", "alpha");
    let mut config = link_config(&cloud.url, dir.path(), vec![a]);
    // Beats every 200 ms (the ack); a ping once 500 ms have passed unheard.
    config.silence_limit = Duration::from_millis(1_500);
    let handle = Agent::prepare(config).unwrap().spawn();
    let mut s = cloud.session().await;

    // Reading on answers each ping with a pong (tungstenite queues and sends it).
    let (mut beats, mut pings) = (0, 0);
    let until = tokio::time::Instant::now() + Duration::from_millis(3_000);
    while let Ok(frame) = tokio::time::timeout_at(until, s.ws.next()).await {
        match frame {
            Some(Ok(Message::Text(t))) => {
                if let LinkToCloud::Heartbeat(_) = decode(t.as_str()).unwrap() {
                    beats += 1;
                }
            }
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(_)) => {}
            _ => panic!("the link went away"),
        }
    }
    // About one beat in three carries a ping (each one did before): each Cloud
    // node answers its Links' pings, so they cost it a write per ping.
    assert!(beats >= 8, "{beats} beats in 3 s");
    assert!(
        pings >= 2 && pings * 2 <= beats,
        "{pings} pings with {beats} beats"
    );
    assert_eq!(handle.status().borrow().sessions, 1);
    handle.shutdown().await.unwrap();
}

/// Heartbeats the Link sends from now until `window` has passed.
async fn beats_within(s: &mut Session, window: Duration) -> usize {
    let until = tokio::time::Instant::now() + window;
    let mut beats = 0;
    while let Ok(frame) = tokio::time::timeout_at(until, s.ws.next()).await {
        match frame {
            Some(Ok(Message::Text(t))) => {
                if let LinkToCloud::Heartbeat(_) = decode(t.as_str()).unwrap() {
                    beats += 1;
                }
            }
            Some(Ok(_)) => {}
            _ => panic!("the link went away"),
        }
    }
    beats
}

#[tokio::test]
async fn a_second_hello_ack_sets_a_new_heartbeat_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let a = tenant_db(dir.path(), "AB1", "alpha");
    let (handle, mut s) = start(&mut cloud, dir.path(), vec![a]).await;
    // The first ack asked for 200 ms.
    assert!(beats_within(&mut s, Duration::from_millis(1_000)).await >= 3);

    // Asked for 5 s (a Cloud whose heartbeat budget needs it): the next beat is 5 s
    // away (one already on its way may still arrive), and the session stays up.
    s.send(&CloudToLink::HelloAck {
        rejected: vec![],
        heartbeat_interval_ms: Some(5_000),
    })
    .await;
    assert!(beats_within(&mut s, Duration::from_millis(2_000)).await <= 1);

    // Asked for 200 ms again: beats come often again.
    s.send(&CloudToLink::HelloAck {
        rejected: vec![],
        heartbeat_interval_ms: Some(200),
    })
    .await;
    assert!(beats_within(&mut s, Duration::from_millis(6_000)).await >= 3);
    assert_eq!(handle.status().borrow().sessions, 1, "the session was kept");
    handle.shutdown().await.unwrap();
}

// ---- fair scheduling (issue 10, "noisy neighbour") ------------------------------
//
// A blocker is a query that runs until it is cancelled (or its 60 s deadline), so
// a test decides when a worker frees up instead of hoping a query is slow enough.
// With one worker, a job's worker is freed only once its answer is handed over, so
// answers leave in the order jobs started: the orders asserted below do not depend
// on timing.

/// Runs until cancelled (or 60 s).
const ENDLESS: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

fn with_job(mut msg: CloudToLink, edit: impl FnOnce(&mut QueryJob)) -> CloudToLink {
    if let CloudToLink::QueryJob(j) = &mut msg {
        edit(j);
    }
    msg
}

fn blocker(query_id: u64, halo_guid: HaloGuid) -> CloudToLink {
    with_job(marker_job(query_id, halo_guid), |j| {
        j.command = ENDLESS.into();
        j.timeout_ms = 60_000;
    })
}

/// Inserts a row into `halo_marker`: evidence, afterwards, that the job ran.
fn write_job(query_id: u64, halo_guid: HaloGuid) -> CloudToLink {
    with_job(marker_job(query_id, halo_guid), |j| {
        j.mode = ExecutionMode::NonQuery;
        j.command = "INSERT INTO halo_marker VALUES ('written')".into();
        j.allowlist.allow_write = true;
        j.timeout_ms = 60_000;
    })
}

fn marker_rows(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM halo_marker", [], |r| r.get(0))
        .unwrap()
}

/// The next answer, or a failed test if none comes within `WAIT` (heartbeats
/// alone do not count).
async fn answer_soon(s: &mut Session) -> LinkToCloud {
    tokio::time::timeout(WAIT, s.answer())
        .await
        .expect("no answer in time: the job is stuck behind another")
}

fn failure_of(answer: &LinkToCloud) -> (u64, QueryErrorKind, String) {
    match answer {
        LinkToCloud::QueryFailed(f) => (f.query_id, f.error.kind, f.error.message.clone()),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A Link with `workers` workers over two tenant databases (alpha, beta).
async fn two_tenants(
    cloud: &mut FakeCloud,
    dir: &Path,
    workers: usize,
    edit: impl FnOnce(&mut LinkConfig),
) -> (AgentHandle, Session, [HaloGuid; 2], [PathBuf; 2]) {
    let a = tenant_db(dir, "AB1", "alpha");
    let b = tenant_db(dir, "AB2", "beta");
    let mut config = link_config(&cloud.url, dir, vec![a.clone(), b.clone()]);
    config.max_concurrent_jobs = workers;
    edit(&mut config);
    let handle = Agent::prepare(config).unwrap().spawn();
    let s = cloud.session().await;
    handle.wait_connected(1, WAIT).await.unwrap();
    let guid = |crn: &str| {
        s.hello
            .databases
            .iter()
            .find(|d| d.parent_crn.to_string() == crn)
            .unwrap()
            .halo_guid
    };
    let guids = [guid("AB1"), guid("AB2")];
    (handle, s, guids, [a, b])
}

/// One practice floods the only worker's queue; another practice's job is served
/// after at most one of the flood's, not after all of them.
#[tokio::test]
async fn noisy_neighbour_jobs_are_served_round_robin_across_databases() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let (handle, mut s, [alpha, beta], _) = two_tenants(&mut cloud, dir.path(), 1, |_| {}).await;
    s.send(&blocker(1, alpha)).await;
    for id in 10..=17 {
        s.send(&marker_job(id, alpha)).await;
    }
    s.send(&marker_job(20, beta)).await;
    s.send(&marker_job(21, beta)).await;
    s.send(&CloudToLink::Cancel { query_id: 1 }).await;
    let (id, kind, _) = failure_of(&answer_soon(&mut s).await);
    assert_eq!((id, kind), (1, QueryErrorKind::Cancelled));
    let mut order = Vec::new();
    for _ in 0..10 {
        order.push(marker_of(&answer_soon(&mut s).await));
    }
    let ids: Vec<u64> = order.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        [10, 20, 11, 21, 12, 13, 14, 15, 16, 17],
        "round-robin across databases, FIFO within each"
    );
    for (id, marker) in &order {
        let expected = if *id >= 20 { "beta" } else { "alpha" };
        assert_eq!(marker, expected, "query {id} ran on the wrong database");
    }
    handle.shutdown().await.unwrap();
}

/// With two workers, one practice may hold only one of them: another practice's
/// job runs at once while the first practice's jobs keep theirs busy.
#[tokio::test]
async fn noisy_neighbour_never_holds_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let (handle, mut s, [alpha, beta], _) = two_tenants(&mut cloud, dir.path(), 2, |_| {}).await;
    s.send(&blocker(1, alpha)).await;
    s.send(&blocker(2, alpha)).await;
    s.send(&marker_job(3, beta)).await;
    assert_eq!(
        marker_of(&answer_soon(&mut s).await),
        (3, "beta".to_owned()),
        "beta's job ran while alpha's blockers held their worker"
    );
    s.send(&CloudToLink::Cancel { query_id: 1 }).await;
    s.send(&CloudToLink::Cancel { query_id: 2 }).await;
    let mut cancelled = Vec::new();
    for _ in 0..2 {
        let (id, kind, _) = failure_of(&answer_soon(&mut s).await);
        assert_eq!(kind, QueryErrorKind::Cancelled);
        cancelled.push(id);
    }
    cancelled.sort_unstable();
    assert_eq!(cancelled, [1, 2]);
    handle.shutdown().await.unwrap();
}

/// `maxTimeInQueue` covers the wait for a Link worker: a job that has not started
/// when its queue budget runs out is answered busy at once, not after the job
/// ahead of it finishes, and never runs. Without a budget (an older Cloud) the
/// whole deadline is the budget.
#[tokio::test]
async fn the_wait_for_a_worker_counts_against_max_time_in_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let (handle, mut s, [alpha, beta], [_, beta_db]) =
        two_tenants(&mut cloud, dir.path(), 1, |_| {}).await;
    s.send(&blocker(1, alpha)).await;
    s.send(&with_job(write_job(2, beta), |j| {
        j.queue_timeout_ms = Some(300)
    }))
    .await;
    s.send(&with_job(write_job(3, beta), |j| {
        j.queue_timeout_ms = None;
        j.timeout_ms = 600;
    }))
    .await;
    for expected in [2, 3] {
        let (id, kind, message) = failure_of(&answer_soon(&mut s).await);
        assert_eq!((id, kind), (expected, QueryErrorKind::Busy), "{message}");
        assert!(message.contains("expired in queue"), "{message}");
    }
    // The blocker is still running: the busy answers did not wait for it.
    s.send(&CloudToLink::Cancel { query_id: 1 }).await;
    let (id, kind, _) = failure_of(&answer_soon(&mut s).await);
    assert_eq!((id, kind), (1, QueryErrorKind::Cancelled));
    // A job with budget to spare still runs once a worker is free.
    s.send(&marker_job(4, beta)).await;
    assert_eq!(
        marker_of(&answer_soon(&mut s).await),
        (4, "beta".to_owned())
    );
    handle.shutdown().await.unwrap();
    assert_eq!(marker_rows(&beta_db), 1, "an expired job never ran");
}

/// Each database's queue is bounded on its own: beyond it that database's jobs
/// are answered busy at once, and other databases still queue.
#[tokio::test]
async fn a_full_database_queue_is_busy_at_once_and_others_still_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let (handle, mut s, [alpha, beta], _) = two_tenants(&mut cloud, dir.path(), 1, |c| {
        c.max_queued_per_database = 3;
    })
    .await;
    s.send(&blocker(1, alpha)).await;
    for id in 10..=13 {
        s.send(&marker_job(id, alpha)).await;
    }
    let (id, kind, _) = failure_of(&answer_soon(&mut s).await);
    assert_eq!(
        (id, kind),
        (13, QueryErrorKind::Busy),
        "the fourth waiting job"
    );
    s.send(&marker_job(20, beta)).await;
    s.send(&CloudToLink::Cancel { query_id: 1 }).await;
    let (id, kind, _) = failure_of(&answer_soon(&mut s).await);
    assert_eq!((id, kind), (1, QueryErrorKind::Cancelled));
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(marker_of(&answer_soon(&mut s).await).0);
    }
    assert_eq!(ids, [10, 20, 11, 12]);
    handle.shutdown().await.unwrap();
}

/// A Cancel takes a waiting job out of its queue at once; it never runs.
#[tokio::test]
async fn cancel_takes_a_waiting_job_out_of_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let (handle, mut s, [alpha, beta], [_, beta_db]) =
        two_tenants(&mut cloud, dir.path(), 1, |_| {}).await;
    s.send(&blocker(1, alpha)).await;
    s.send(&write_job(2, beta)).await;
    s.send(&CloudToLink::Cancel { query_id: 2 }).await;
    let (id, kind, _) = failure_of(&answer_soon(&mut s).await);
    assert_eq!(
        (id, kind),
        (2, QueryErrorKind::Cancelled),
        "answered while queued"
    );
    s.send(&CloudToLink::Cancel { query_id: 1 }).await;
    let (id, kind, _) = failure_of(&answer_soon(&mut s).await);
    assert_eq!((id, kind), (1, QueryErrorKind::Cancelled));
    s.send(&marker_job(3, beta)).await;
    assert_eq!(marker_of(&answer_soon(&mut s).await).0, 3);
    handle.shutdown().await.unwrap();
    assert_eq!(marker_rows(&beta_db), 1, "the cancelled job never ran");
}

/// When a session ends, running jobs are cancelled (their workers come back for
/// the next session) and waiting jobs are dropped without running.
#[tokio::test]
async fn a_session_end_cancels_running_jobs_and_drops_waiting_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let (handle, mut s1, [alpha, beta], [_, beta_db]) =
        two_tenants(&mut cloud, dir.path(), 1, |_| {}).await;
    s1.send(&blocker(1, alpha)).await;
    s1.send(&write_job(2, beta)).await;
    drop(s1); // abrupt: no close frame
    let mut s2 = cloud.session().await;
    handle.wait_connected(2, WAIT).await.unwrap();
    s2.send(&marker_job(3, alpha)).await;
    assert_eq!(
        marker_of(&answer_soon(&mut s2).await),
        (3, "alpha".to_owned()),
        "the old session's blocker was cancelled and gave its worker back"
    );
    handle.shutdown().await.unwrap();
    assert_eq!(marker_rows(&beta_db), 1, "the dropped job never ran");
}

/// A read that runs past the inline budget (`INLINE_BUDGET`) is stopped on the
/// session loop and run again, from the start, on a worker: its answer is the
/// whole result, and the loop answers a short job meanwhile.
#[tokio::test]
async fn a_read_over_the_inline_budget_runs_on_a_worker_and_answers_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut cloud = FakeCloud::start().await;
    let (handle, mut s, [alpha, beta], _) = two_tenants(&mut cloud, dir.path(), 2, |_| {}).await;
    s.send(&with_job(marker_job(1, alpha), |j| {
        j.command = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                     WHERE x < 2000000) SELECT count(*) AS n FROM c"
            .into();
        j.timeout_ms = 60_000;
    }))
    .await;
    s.send(&marker_job(2, beta)).await;
    assert_eq!(
        marker_of(&answer_soon(&mut s).await),
        (2, "beta".to_owned()),
        "the short job waited behind the long one"
    );
    match answer_soon(&mut s).await {
        LinkToCloud::QueryResult(r) => {
            assert_eq!(r.query_id, 1);
            assert_eq!(r.json().unwrap(), br#"[{"n":2000000}]"#);
        }
        other => panic!("expected the long read's result, got {other:?}"),
    }
    handle.shutdown().await.unwrap();
}
