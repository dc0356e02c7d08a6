//! Several Cloud nodes on one PostgreSQL log (see `halo_cloud::cluster`): a change
//! made on one node is followed by the others, concurrent promotions of one group
//! on two nodes elect exactly one, the whole log never shows two holders or an
//! epoch going back, a fresh node starts from the snapshot plus the tail, and a
//! node that loses the database fails closed and recovers.
//!
//! Each test starts its own throw-away server (`halo_test_support::postgres_server`:
//! `initdb` on a temp dir, a free loopback port). Without PostgreSQL's binaries the
//! tests fail with the command that installs them; they never skip.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use halo_cloud::state::{CloudState, StateConfig};
use halo_cloud::{CloudConfig, ClusterConfig, HttpLimits, Record, app};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};
use halo_policy::{IntegratorId, PolicyEvent};
use halo_router::{Router, RouterConfig};
use halo_store::{EventLog as _, PgLog, PgOptions, Seq, StoreError};
use halo_tenancy::{
    AuthorityHistory, AvailabilityConfig, Catalogue, Event, SiteIdentity, TenancyError,
};
use halo_test_support::postgres_server::PgServer;
use tower::ServiceExt as _;

const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);
const ADMIN: &str = "cluster-test-admin-token";

fn cluster(server: &PgServer, node: &str) -> ClusterConfig {
    let mut c = ClusterConfig::new(server.url(), node);
    c.poll_every = Duration::from_millis(100);
    c.timeout = Duration::from_secs(1);
    c
}

fn state_config() -> StateConfig {
    StateConfig {
        data_dir: None,
        snapshot_every: 0,
        availability: AvailabilityConfig::default(),
        accept_damaged_log: false,
    }
}

fn node(server: &PgServer, name: &str) -> CloudState {
    node_with(server, name, 0)
}

fn node_with(server: &PgServer, name: &str, snapshot_every: u64) -> CloudState {
    CloudState::open_cluster(
        &StateConfig {
            snapshot_every,
            ..state_config()
        },
        &cluster(server, name),
        Arc::new(Router::new(RouterConfig::standard())),
    )
    .unwrap()
}

/// One Link with `2 * groups` sites, two per CRN, so each group has a holder and
/// a follower.
fn site_events(link_n: u128, groups: u128) -> Vec<Event> {
    let link = LinkGuid::from_u128(link_n).unwrap();
    let mut events = vec![Event::LinkRegistered {
        link,
        environment: Environment::Stage,
        version: "1".into(),
    }];
    for i in 0..groups * 2 {
        let site = HaloGuid::from_u128(1000 * link_n + i).unwrap();
        events.push(Event::SiteAttached {
            link,
            halo_guid: site,
            identity: SiteIdentity {
                pms_type: PmsType::D4w,
                parent_crn: format!("CRN{}", i / 2).parse::<Crn>().unwrap(),
                branch_crns: Vec::new(),
                practice_name: format!("Practice {i}"),
                pms_version: "15".into(),
                catalogues: vec![Catalogue {
                    name: "d4w".into(),
                    is_default: true,
                }],
                is_demo: false,
            },
        });
        events.push(Event::SiteReady {
            link,
            halo_guid: site,
        });
    }
    events
}

fn grant(i: usize) -> PolicyEvent {
    PolicyEvent::PracticeEnabled {
        integrator: "acme".parse::<IntegratorId>().unwrap(),
        pms_id: PmsId::new(PmsType::D4w, format!("CRN{i}").parse().unwrap()),
    }
}

/// The whole state of a node as JSON (what a snapshot would store).
fn state_of(node: &CloudState) -> serde_json::Value {
    serde_json::to_value(node.capture().wait()).unwrap()
}

/// Waits until `done` holds, polling; panics with `what` after 10 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every record of the shared log, in order. (On a thread of its own: the client
/// blocks, and async tests call this too.)
fn whole_log(server: &PgServer) -> Vec<(Seq, Record)> {
    let url = server.url();
    std::thread::scope(|s| s.spawn(|| read_log(url)).join().unwrap())
}

fn read_log(url: String) -> Vec<(Seq, Record)> {
    let log = PgLog::open(PgOptions::new(url)).unwrap();
    let mut records = Vec::new();
    let report = log
        .read_from(Seq::ZERO, &mut |seq, bytes| {
            records.push((seq, Record::from_log_bytes(bytes).unwrap()));
            Ok(())
        })
        .unwrap();
    assert!(report.stopped_at.is_none(), "{:?}", report.stopped_at);
    records
}

/// Replays the whole log and checks, after every event, that no group has two
/// authoritative sites and no group's epoch went back
/// (`halo_tenancy::AuthorityHistory`). Returns how many promotions it saw.
fn check_authority(server: &PgServer) -> usize {
    let mut history = AuthorityHistory::new();
    for (seq, record) in whole_log(server) {
        if let Record::Tenancy(entry) = record {
            history
                .check(seq.get(), &entry.event, entry.at)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    usize::try_from(history.promotions()).unwrap()
}

#[test]
fn the_pg_log_migrates_once_and_appends_only_at_the_position_decided_on() {
    let server = PgServer::start();
    let mut a = PgLog::open(PgOptions::new(server.url())).unwrap();
    let mut b = PgLog::open(PgOptions::new(server.url())).unwrap();
    assert_eq!(a.schema_version().unwrap(), halo_store::PG_SCHEMA_VERSION);
    assert_eq!(
        a.append_at(Seq::ZERO, &[b"one", b"two"]).unwrap(),
        Seq::new(2)
    );
    // B decided on the empty log: refused, nothing written.
    match b.append_at(Seq::ZERO, &[b"other"]) {
        Err(StoreError::ConcurrentWriter { expected, found }) => {
            assert_eq!((expected, found), (Seq::ZERO, Seq::new(2)));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(b.append_at(Seq::new(2), &[b"three"]).unwrap(), Seq::new(3));
    let mut seen = Vec::new();
    a.read_from(Seq::ZERO, &mut |seq, bytes| {
        seen.push((seq.get(), bytes.to_vec()));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![
            (1, b"one".to_vec()),
            (2, b"two".to_vec()),
            (3, b"three".to_vec())
        ]
    );
    // Snapshots: checksummed, newest first, retained.
    a.write_snapshot(Seq::new(2), b"state at 2").unwrap();
    a.write_snapshot(Seq::new(3), b"state at 3").unwrap();
    assert!(matches!(
        a.write_snapshot(Seq::new(9), b"ahead"),
        Err(StoreError::SnapshotAhead { .. })
    ));
    assert_eq!(a.retain_snapshots(1).unwrap(), 1);
    assert_eq!(b.snapshot_seqs().unwrap(), vec![Seq::new(3)]);
    assert_eq!(
        b.read_snapshot(Seq::new(3)).unwrap(),
        halo_store::SnapshotRead::Valid(b"state at 3".to_vec())
    );
    // Opening again migrates nothing more.
    let c = PgLog::open(PgOptions::new(server.url())).unwrap();
    assert_eq!(c.schema_version().unwrap(), halo_store::PG_SCHEMA_VERSION);
    assert_eq!(c.last_seq(), Seq::new(3));
}

#[test]
fn a_change_made_on_one_node_is_followed_by_the_others() {
    let server = PgServer::start();
    let a = node(&server, "a");
    let b = node(&server, "b");
    let c = node(&server, "c");
    for r in a.apply_tenancy(site_events(7, 5), NOW).wait() {
        r.unwrap();
    }
    a.apply_policy(grant(1), NOW).wait().unwrap();
    eventually("nodes b and c follow node a", || {
        b.registry().site_count() == 10
            && state_of(&b) == state_of(&a)
            && state_of(&c) == state_of(&a)
    });
    // Routing follows too: the followers' routers know every site.
    for site in a.registry().sites() {
        assert!(c.router().resolve(site.halo_guid()).is_some());
    }
    // The router follows too, not only the registry.
    assert_eq!(b.policy().integrator_count(), 1);
    // And back: a change on b reaches a.
    b.apply_policy(grant(2), NOW).wait().unwrap();
    eventually("nodes a and c follow node b", || {
        state_of(&a) == state_of(&b) && state_of(&c) == state_of(&b)
    });
    assert!(b.cluster().unwrap().available());
    assert!(a.cluster().unwrap().followed() > 0);
}

#[test]
fn concurrent_promotions_on_two_nodes_elect_exactly_one_every_time() {
    const ROUNDS: usize = 100;
    let server = PgServer::start();
    let a = Arc::new(node(&server, "a"));
    let b = Arc::new(node(&server, "b"));
    for r in a.apply_tenancy(site_events(7, 1), NOW).wait() {
        r.unwrap();
    }
    eventually("node b has the group", || b.registry().site_count() == 2);
    let (key, sites) = {
        let registry = a.registry();
        let key = registry.sites().next().unwrap().group_key();
        let sites: Vec<HaloGuid> = registry.sites().map(|s| s.halo_guid()).collect();
        (key, sites)
    };
    let mut wins = 0;
    for round in 0..ROUNDS {
        // Promote whichever site is not the holder now, on both nodes at once.
        let holder = a.registry().group(&key).unwrap().holder();
        let target = *sites.iter().find(|s| Some(**s) != holder).unwrap();
        let promote = |n: &Arc<CloudState>| {
            let n = Arc::clone(n);
            std::thread::spawn(move || {
                n.apply_one(
                    Event::Promoted {
                        halo_guid: target,
                        actor: "ops".into(),
                        reason: format!("round {round}"),
                    },
                    NOW,
                )
                .wait()
            })
        };
        let (ra, rb) = (promote(&a), promote(&b));
        let results = [ra.join().unwrap(), rb.join().unwrap()];
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, TenancyError::Authority(_)),
                    "round {round}: the loser is refused by the election, got {e:?}"
                );
            }
        }
        wins += won;
        // Both nodes agree on the new holder before the next round.
        eventually("both nodes see the new holder", || {
            a.registry().group(&key).unwrap().holder() == Some(target)
                && b.registry().group(&key).unwrap().holder() == Some(target)
        });
    }
    assert_eq!(check_authority(&server), wins);
    assert_eq!(state_of(&a), state_of(&b));
    let conflicts = a.cluster().unwrap().conflicts() + b.cluster().unwrap().conflicts();
    assert!(conflicts > 0, "no round raced: the test proves nothing");
}

#[test]
fn a_fresh_node_starts_from_the_snapshot_and_the_tail() {
    let server = PgServer::start();
    let a = node(&server, "a");
    for r in a.apply_tenancy(site_events(7, 3), NOW).wait() {
        r.unwrap();
    }
    a.snapshot_now().wait().unwrap();
    for i in 0..4 {
        a.apply_policy(grant(i), NOW).wait().unwrap();
    }
    let c = node(&server, "c");
    let report = c.recovery().unwrap();
    assert!(report.snapshot_seq.is_some(), "{report}");
    // Four grants, each with its audit record.
    assert_eq!(report.events_replayed, 8, "{report}");
    assert_eq!(state_of(&c), state_of(&a));
    assert_eq!(c.audit().len(), a.audit().len());
}

#[test]
fn snapshots_taken_while_appending_start_a_fresh_node_at_the_right_place() {
    let server = PgServer::start();
    // Snapshots in the background every few records, labelled with the position
    // of the append that triggered them: a wrong label would replay records twice.
    let a = node_with(&server, "a", 3);
    for r in a.apply_tenancy(site_events(7, 2), NOW).wait() {
        r.unwrap();
    }
    for i in 0..30 {
        a.apply_policy(grant(i), NOW).wait().unwrap();
    }
    eventually("a background snapshot is stored", || {
        let log = PgLog::open(PgOptions::new(server.url())).unwrap();
        !log.snapshot_seqs().unwrap().is_empty()
    });
    let fresh = node(&server, "fresh");
    assert!(fresh.recovery().unwrap().snapshot_seq.is_some());
    assert_eq!(state_of(&fresh), state_of(&a));
}

fn cloud_config() -> CloudConfig {
    CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: None,
        admin_token: ADMIN.to_owned(),
        router: RouterConfig::standard(),
        availability: AvailabilityConfig::default(),
        snapshot_every: 0,
        accept_damaged_log: false,
        max_databases_per_link: app::MAX_DATABASES_PER_LINK,
        http: HttpLimits::default(),
    }
}

async fn promote(routes: &axum::Router, site: HaloGuid) -> axum::response::Response {
    let request = Request::post(format!("/admin/sites/{site}/promote"))
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"actor":"ops","reason":"test"}"#))
        .unwrap();
    routes.clone().oneshot(request).await.unwrap()
}

async fn eventually_async(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_the_database_fails_closed_and_recovers() {
    let mut server = PgServer::start();
    let app = app::build_cluster(
        &cloud_config(),
        halo_cloud::JobsConfig::default(),
        Some(&cluster(&server, "a")),
    )
    .unwrap();
    let routes = halo_cloud::routes(Arc::clone(&app));
    let health = Arc::clone(app.state.cluster().unwrap());
    app.state
        .apply_tenancy(site_events(7, 1), NOW)
        .await
        .into_iter()
        .for_each(|r| r.unwrap());
    let follower = app
        .state
        .registry()
        .sites()
        .find(|s| !s.is_authoritative())
        .unwrap()
        .halo_guid();

    server.pause();
    eventually_async("the node notices the lost database", || !health.available()).await;
    // Changes are refused, with Retry-After; reads still answer.
    let refused = promote(&routes, follower).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key(header::RETRY_AFTER));
    let read = Request::get(format!("/admin/sites/{follower}"))
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        routes.clone().oneshot(read).await.unwrap().status(),
        StatusCode::OK
    );
    // A change already queued is not acknowledged while the database is away.
    let queued = app.state.apply_policy(grant(0), NOW);
    let queued = tokio::spawn(queued);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !queued.is_finished(),
        "a change was acknowledged without the database"
    );

    server.resume();
    eventually_async("the node recovers by itself", || health.available()).await;
    queued.await.unwrap().unwrap();
    let accepted = promote(&routes, follower).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    // Both changes are in the shared log, once each.
    let log = whole_log(&server);
    let grants = log
        .iter()
        .filter(|(_, r)| matches!(r, Record::Policy { .. }))
        .count();
    assert_eq!(grants, 1);
    assert_eq!(check_authority(&server), 1);
}
