//! An idle Link session holds no per-traffic buffers: the Cloud's whole cost of an
//! attached Link that sends only heartbeats (its WebSocket with a 4 KiB read buffer,
//! session task, router session, registry entries, credential binding) stays a few
//! KiB. tungstenite's default read buffer alone is 128 KiB per session, and a
//! bounded job queue about 100 KB. Counted by a global allocator over real TCP and
//! WebSocket sessions on loopback (client and Cloud in this one process; the
//! clients use a 1 KiB read buffer, so the count is dominated by the Cloud).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::alloc::System;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use halo_cloud::{CloudConfig, HttpLimits, app};
use halo_ids::{Environment, HaloGuid, LinkGuid, PmsType};
use halo_protocol::{CatalogueInfo, CloudToLink, DatabaseInfo, Hello, LinkToCloud};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;
use serde_json::json;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
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

async fn credential(http: &reqwest::Client, addr: std::net::SocketAddr, i: usize) -> String {
    let resp = http
        .post(format!("http://{addr}/admin/link-credentials"))
        .bearer_auth(ADMIN)
        .json(
            &json!({"label": format!("idle {i}"), "environment": "stage",
                      "practices": [format!("D4w:IDLE{i}")]}),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let body: serde_json::Value = resp.json().await.unwrap();
    body["key"].as_str().unwrap().to_owned()
}

async fn attach(addr: std::net::SocketAddr, i: usize, token: &str) -> Ws {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}/link/ws")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let config = WebSocketConfig::default().read_buffer_size(1024);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .unwrap();
    let hello = LinkToCloud::Hello(Hello {
        link_guid: LinkGuid::from_u128(1000 + i as u128).unwrap(),
        environment: Environment::Stage,
        link_version: "1".into(),
        protocol_version: halo_protocol::PROTOCOL_VERSION,
        databases: vec![DatabaseInfo {
            halo_guid: HaloGuid::from_u128(2000 + i as u128).unwrap(),
            pms_type: PmsType::D4w,
            parent_crn: format!("IDLE{i}").parse().unwrap(),
            branch_crns: vec![],
            practice_name: format!("Idle {i}"),
            pms_version: "1".into(),
            catalogues: vec![CatalogueInfo {
                name: "d4w".into(),
                is_default: true,
            }],
            is_demo: false,
        }],
    });
    ws.send(Message::text(halo_protocol::encode(&hello).unwrap()))
        .await
        .unwrap();
    let Some(Ok(Message::Text(ack))) = ws.next().await else {
        panic!("no answer to the hello");
    };
    assert!(matches!(
        halo_protocol::decode::<CloudToLink>(&ack).unwrap(),
        CloudToLink::HelloAck { .. }
    ));
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
    let http = reqwest::Client::new();
    let mut tokens = Vec::new();
    for i in 0..=LINKS {
        tokens.push(credential(&http, cloud.addr, i).await);
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
