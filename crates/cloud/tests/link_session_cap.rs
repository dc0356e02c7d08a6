//! The cap on Link sessions (`HttpLimits::max_link_sessions`): at the cap a Link is
//! answered 503 with `Retry-After` before the upgrade; a session that ends frees its
//! place. Real TCP and WebSocket on loopback.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use halo_cloud::{CloudConfig, HttpLimits, app};
use halo_ids::{HaloGuid, LinkGuid};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;
use tokio_tungstenite::tungstenite::Error as WsError;

const ADMIN: &str = "link-session-cap-admin-token";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn credential(addr: SocketAddr, i: usize) -> String {
    support::link_credential(addr, ADMIN, &format!("cap {i}"), &format!("CAP{i}")).await
}

async fn connect(addr: SocketAddr, token: &str) -> Result<Ws, WsError> {
    tokio_tungstenite::connect_async(support::link_ws_request(addr, token))
        .await
        .map(|(ws, _)| ws)
}

async fn hello(ws: &mut Ws, i: usize) {
    let hello = support::one_database_hello(
        LinkGuid::from_u128(100 + i as u128).unwrap(),
        HaloGuid::from_u128(200 + i as u128).unwrap(),
        &format!("CAP{i}"),
        &format!("Cap {i}"),
        false,
    );
    support::say_hello(ws, &hello).await;
}

#[tokio::test]
async fn at_the_cap_a_link_is_told_to_retry_and_a_closed_session_frees_its_place() {
    let cloud = halo_cloud::start(CloudConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: None,
        admin_token: ADMIN.to_owned(),
        router: RouterConfig::standard(),
        availability: AvailabilityConfig::default(),
        snapshot_every: 0,
        accept_damaged_log: false,
        max_databases_per_link: app::MAX_DATABASES_PER_LINK,
        http: HttpLimits {
            max_link_sessions: 2,
            ..HttpLimits::default()
        },
    })
    .await
    .unwrap();
    let addr = cloud.addr;
    let mut tokens = Vec::new();
    for i in 0..3 {
        tokens.push(credential(addr, i).await);
    }
    let mut first = connect(addr, &tokens[0]).await.unwrap();
    hello(&mut first, 0).await;
    let mut second = connect(addr, &tokens[1]).await.unwrap();
    hello(&mut second, 1).await;

    match connect(addr, &tokens[2]).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        Err(other) => panic!("expected 503, got {other}"),
        Ok(_) => panic!("a third session was admitted over a cap of two"),
    }
    // A wrong credential is still told so first, cap or not.
    match connect(addr, "lnk_not_a_credential").await {
        Err(WsError::Http(response)) => assert_eq!(response.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }

    first.close(None).await.unwrap();
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cloud.app.link_sessions.available() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed session kept its place"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut third = connect(addr, &tokens[2]).await.unwrap();
    hello(&mut third, 2).await;
    drop((second, third));
    cloud.stop().await;
}
