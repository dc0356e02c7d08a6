//! The cap on Link sessions (`HttpLimits::max_link_sessions`): at the cap a Link is
//! answered 503 with `Retry-After` before the upgrade; a session that ends frees its
//! place. Real TCP and WebSocket on loopback.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use halo_cloud::{CloudConfig, HttpLimits, app};
use halo_ids::{Environment, HaloGuid, LinkGuid, PmsType};
use halo_protocol::{CloudToLink, DatabaseInfo, Hello, LinkToCloud};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const ADMIN: &str = "link-session-cap-admin-token";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn credential(addr: SocketAddr, i: usize) -> String {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/admin/link-credentials"))
        .bearer_auth(ADMIN)
        .json(&json!({"label": format!("cap {i}"), "environment": "stage",
                      "practices": [format!("D4w:CAP{i}")]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let body: serde_json::Value = resp.json().await.unwrap();
    body["key"].as_str().unwrap().to_owned()
}

async fn connect(addr: SocketAddr, token: &str) -> Result<Ws, WsError> {
    let mut request = format!("ws://{addr}/link/ws")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

async fn hello(ws: &mut Ws, i: usize) {
    let hello = LinkToCloud::Hello(Hello {
        link_guid: LinkGuid::from_u128(100 + i as u128).unwrap(),
        environment: Environment::Stage,
        link_version: "1".into(),
        protocol_version: halo_protocol::PROTOCOL_VERSION,
        databases: vec![DatabaseInfo {
            halo_guid: HaloGuid::from_u128(200 + i as u128).unwrap(),
            pms_type: PmsType::D4w,
            parent_crn: format!("CAP{i}").parse().unwrap(),
            branch_crns: vec![],
            practice_name: format!("Cap {i}"),
            pms_version: "1".into(),
            catalogues: vec![],
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
