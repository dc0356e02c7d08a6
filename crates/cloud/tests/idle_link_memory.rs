//! An idle Link session holds no per-traffic buffers: the Cloud's whole cost of an
//! attached Link that sends only heartbeats (its WebSocket with a 4 KiB read buffer,
//! session task, router session, registry entries, credential binding) stays a few
//! KiB. tungstenite's default read buffer alone is 128 KiB per session, and a
//! bounded job queue about 100 KB. Counted by a global allocator over real TCP and
//! WebSocket sessions on loopback (client and Cloud in this one process; the
//! clients use a 1 KiB read buffer, so the count is dominated by the Cloud).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::alloc::System;
use std::time::Duration;

use halo_cloud::{CloudConfig, HttpLimits, app};
use halo_ids::{HaloGuid, LinkGuid};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ADMIN: &str = "idle-link-memory-admin-token";
/// What one idle Link may cost, both ends together (this debug build counts about
/// 19.9 KB). Tight on purpose: a session's future is allocated whole for every Link,
/// so a few hundred bytes more in it show here. A wrapper that took the session's
/// future by value (held twice) and the hello's locals kept beside the serving loop
/// made 23.3 KB, which this bound fails.
const IDLE_LINK_BYTES: usize = 21 * 1024;
const LINKS: usize = 20;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn credential(addr: std::net::SocketAddr, i: usize) -> String {
    support::link_credential(addr, ADMIN, &format!("idle {i}"), &format!("IDLE{i}")).await
}

async fn attach(addr: std::net::SocketAddr, i: usize, token: &str) -> Ws {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = support::link_ws_request(addr, token);
    let config = WebSocketConfig::default().read_buffer_size(1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .unwrap();
    let hello = support::one_database_hello(
        LinkGuid::from_u128(1000 + i as u128).unwrap(),
        HaloGuid::from_u128(2000 + i as u128).unwrap(),
        &format!("IDLE{i}"),
        &format!("Idle {i}"),
        true,
    );
    support::say_hello(&mut ws, &hello).await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_link_session_holds_no_traffic_buffers() {
    let cloud = halo_cloud::start(CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: None,
        admin_token: ADMIN.to_owned(),
        router: RouterConfig::standard(),
        availability: AvailabilityConfig::default(),
        snapshot_every: 0,
        accept_damaged_log: false,
        max_databases_per_link: app::MAX_DATABASES_PER_LINK,
        http: HttpLimits::default(),
    })
    .await
    .unwrap();
    let mut tokens = Vec::new();
    for i in 0..=LINKS {
        tokens.push(credential(cloud.addr, i).await);
    }
    // The first Link warms up what every session shares (tables, the writer).
    let first = attach(cloud.addr, 0, &tokens[0]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let region = Region::new(GLOBAL);
    let mut sessions = Vec::new();
    for (i, token) in tokens.iter().enumerate().skip(1) {
        sessions.push(attach(cloud.addr, i, token).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = region.change();
    let held =
        stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated;
    let per_link = held.max(0) as usize / LINKS;
    eprintln!("idle_link_memory: {per_link} bytes per idle Link ({LINKS} Links)");
    assert!(
        per_link <= IDLE_LINK_BYTES,
        "an idle Link holds {per_link} bytes (at most {IDLE_LINK_BYTES}): {stats:?}"
    );
    assert_eq!(
        cloud.app.link_sessions.available(),
        HttpLimits::DEFAULT_MAX_LINK_SESSIONS - LINKS - 1
    );
    drop((first, sessions));
    cloud.stop().await;
}
