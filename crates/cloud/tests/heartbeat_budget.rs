//! The node's heartbeat budget (`HttpLimits::heartbeat_budget`): the interval a
//! Link's `helloAck` asks for grows with the Links attached, sessions asked earlier
//! are asked again at their next beat, and availability follows the interval each
//! Link was asked for while its session lasts. Real TCP and WebSocket on loopback.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use halo_cloud::{CloudConfig, HttpLimits, app};
use halo_ids::{HaloGuid, LinkGuid, Timestamp};
use halo_protocol::{CloudToLink, Heartbeat, LinkToCloud};
use halo_router::RouterConfig;
use halo_tenancy::{Availability, AvailabilityConfig};
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "heartbeat-budget-admin-token";
const WAIT: Duration = Duration::from_secs(10);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn link(i: usize) -> LinkGuid {
    LinkGuid::from_u128(100 + i as u128).unwrap()
}

fn site(i: usize) -> HaloGuid {
    HaloGuid::from_u128(200 + i as u128).unwrap()
}

async fn cloud(
    availability: AvailabilityConfig,
    link_heartbeat: Duration,
    heartbeat_budget: u32,
) -> halo_cloud::RunningCloud {
    halo_cloud::start(CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: None,
        admin_token: ADMIN.to_owned(),
        router: RouterConfig::standard(),
        availability,
        snapshot_every: 0,
        accept_damaged_log: false,
        max_databases_per_link: app::MAX_DATABASES_PER_LINK,
        http: HttpLimits {
            link_heartbeat,
            heartbeat_budget,
            ..HttpLimits::default()
        },
    })
    .await
    .unwrap()
}

/// Connects Link `i` with a credential of its own and says hello; the session and
/// the interval its `helloAck` asks for.
async fn attach(addr: SocketAddr, i: usize) -> (Ws, Duration) {
    let crn = format!("BEAT{i}");
    let token = support::link_credential(addr, ADMIN, &format!("beat {i}"), &crn).await;
    let request = support::link_ws_request(addr, &token);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let hello = support::one_database_hello(link(i), site(i), &crn, &format!("Beat {i}"), false);
    support::send(&mut ws, &hello).await;
    let every = asked(&mut ws).await;
    (ws, every)
}

/// The interval of the next `helloAck` the session receives.
async fn asked(ws: &mut Ws) -> Duration {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no helloAck in time");
        let Some(Ok(Message::Text(text))) = frame else {
            continue;
        };
        match halo_protocol::decode::<CloudToLink>(&text).unwrap() {
            CloudToLink::HelloAck {
                heartbeat_interval_ms: Some(ms),
                ..
            } => return Duration::from_millis(ms),
            other => panic!("expected a helloAck, got {other:?}"),
        }
    }
}

async fn beat(ws: &mut Ws, i: usize) {
    let beat = LinkToCloud::Heartbeat(Heartbeat {
        at: Timestamp::from_millis(1),
        databases: vec![site(i)],
    });
    ws.send(Message::text(halo_protocol::encode(&beat).unwrap()))
        .await
        .unwrap();
}

/// Waits until the node's Link sessions number `n`.
async fn sessions(cloud: &halo_cloud::RunningCloud, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while cloud.app.link_sessions.taken() != n {
        assert!(tokio::time::Instant::now() < deadline, "sessions never {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_interval_asked_grows_with_the_links_attached_and_earlier_links_are_asked_again() {
    // One beat per second for the whole node.
    let cloud = cloud(AvailabilityConfig::default(), Duration::from_secs(1), 1).await;
    let addr = cloud.addr;
    let (mut first, every) = attach(addr, 0).await;
    assert_eq!(every, Duration::from_secs(1));
    let (second, every) = attach(addr, 1).await;
    assert_eq!(every, Duration::from_secs(2));
    let (third, every) = attach(addr, 2).await;
    assert_eq!(every, Duration::from_secs(3));
    let router = cloud.app.state.router();
    assert_eq!(
        router.liveness(link(2)).unwrap().heartbeat,
        Some(Duration::from_secs(3))
    );

    // The first Link, asked for 1 s when it was alone, is asked for 3 s at its
    // next beat: three Links then send one beat per second in all.
    beat(&mut first, 0).await;
    assert_eq!(asked(&mut first).await, Duration::from_secs(3));
    assert_eq!(
        router.liveness(link(0)).unwrap().heartbeat,
        Some(Duration::from_secs(3))
    );
    // Asked once: the next beat draws no second helloAck.
    beat(&mut first, 0).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), first.next())
            .await
            .is_err(),
        "asked again for the same interval"
    );

    // Alone again: 1 s would do, at most half of 3 s, so it is asked for 1 s.
    drop((second, third));
    sessions(&cloud, 1).await;
    beat(&mut first, 0).await;
    assert_eq!(asked(&mut first).await, Duration::from_secs(1));
    drop(first);
    cloud.stop().await;
}

#[tokio::test]
async fn availability_follows_the_interval_each_link_was_asked_for() {
    // Offline after 10 s of silence by configuration; Links asked for 30 s.
    let cfg = AvailabilityConfig::new(Duration::from_secs(10), Duration::from_secs(200)).unwrap();
    let cloud = cloud(cfg, Duration::from_secs(30), 1_500).await;
    let (ws, every) = attach(cloud.addr, 0).await;
    assert_eq!(every, Duration::from_secs(30));
    let state = &cloud.app.state;
    let heard = state.router().liveness(link(0)).unwrap().last_heard;
    let at = |secs: u64| Timestamp::from_millis(heard.as_millis() + secs * 1_000);
    let availability = |secs: u64| {
        let registry = state.registry();
        state.availability_of(registry.site(site(0)).unwrap(), at(secs))
    };
    // Between beats, and up to three missed beats: online.
    assert_eq!(availability(20), Availability::Online);
    assert_eq!(availability(89), Availability::Online);
    // Three intervals of silence: offline; then unreachable as configured.
    assert_eq!(availability(91), Availability::Offline);
    assert_eq!(availability(201), Availability::Unreachable);

    // The session ends (a vanished Link's connection, once the kernel's keepalive
    // gives up): the configured thresholds apply again, whatever it was asked.
    drop(ws);
    sessions(&cloud, 0).await;
    assert_eq!(state.router().liveness(link(0)).unwrap().heartbeat, None);
    assert_eq!(availability(5), Availability::Online);
    assert_eq!(availability(20), Availability::Offline);
    cloud.stop().await;
}

/// The kernel timer of the Cloud's end of a loopback connection, from
/// `/proc/net/tcp`: `local` is the Cloud's port, `remote` the peer's.
fn timer_of(local: u16, remote: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (l, r, timer) = (fields.get(1)?, fields.get(2)?, fields.get(5)?);
        (port(l)? == local && port(r)? == remote)
            .then(|| u8::from_str_radix(timer.split(':').next()?, 16).ok())
            .flatten()
    })
}

#[tokio::test]
async fn the_clouds_end_of_a_link_connection_keeps_alive() {
    if !std::path::Path::new("/proc/net/tcp").exists() {
        return; // not Linux: the option is still set, there is no table to read
    }
    let cloud = cloud(AvailabilityConfig::default(), Duration::from_secs(5), 1_500).await;
    let (ws, _) = attach(cloud.addr, 0).await;
    let peer = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap().port(),
        _ => unreachable!("plain ws"),
    };
    // Timer 2 is the keepalive timer, armed on an idle connection only when
    // SO_KEEPALIVE is on (0: no timer).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match timer_of(cloud.addr.port(), peer) {
            Some(2) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "no keepalive timer on the cloud's socket: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(ws);
    cloud.stop().await;
}
