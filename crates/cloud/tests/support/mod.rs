//! Scripted Links for the Cloud's integration tests: a Link credential, the
//! authenticated WebSocket request, a one-database hello and its `helloAck`.
//! Each test file uses part of it (`mod support;`).
#![allow(dead_code, clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;

use futures_util::{SinkExt as _, StreamExt as _};
use halo_ids::{Environment, HaloGuid, LinkGuid, PmsType};
use halo_protocol::{CatalogueInfo, CloudToLink, DatabaseInfo, Hello, LinkToCloud};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;

/// Issues a Stage Link credential for `practice` (a D4w parent CRN) through the
/// admin API; returns its key.
pub(crate) async fn link_credential(
    addr: SocketAddr,
    admin: &str,
    label: &str,
    practice: &str,
) -> String {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/admin/link-credentials"))
        .bearer_auth(admin)
        .json(&json!({"label": label, "environment": "stage",
                      "practices": [format!("D4w:{practice}")]}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let body: serde_json::Value = resp.json().await.unwrap();
    body["key"].as_str().unwrap().to_owned()
}

/// The upgrade request to `addr`'s `/link/ws`, carrying `token`.
pub(crate) fn link_ws_request(addr: SocketAddr, token: &str) -> Request {
    let mut request = format!("ws://{addr}/link/ws")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A Stage Link's hello announcing one D4w database: `site`, practice `crn`
/// (named `practice`), offering the default catalogue `d4w` if `catalogue`.
pub(crate) fn one_database_hello(
    link: LinkGuid,
    site: HaloGuid,
    crn: &str,
    practice: &str,
    catalogue: bool,
) -> LinkToCloud {
    let catalogues = if catalogue {
        vec![CatalogueInfo {
            name: "d4w".into(),
            is_default: true,
        }]
    } else {
        Vec::new()
    };
    LinkToCloud::Hello(Hello {
        link_guid: link,
        environment: Environment::Stage,
        link_version: "1".into(),
        protocol_version: halo_protocol::PROTOCOL_VERSION,
        databases: vec![DatabaseInfo {
            halo_guid: site,
            pms_type: PmsType::D4w,
            parent_crn: crn.parse().unwrap(),
            branch_crns: Vec::new(),
            practice_name: practice.to_owned(),
            pms_version: "1".into(),
            catalogues,
            is_demo: false,
        }],
    })
}

/// Sends `message` as one text frame.
pub(crate) async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    message: &LinkToCloud,
) {
    ws.send(Message::text(halo_protocol::encode(message).unwrap()))
        .await
        .unwrap();
}

/// Sends `hello` and returns the Cloud's first answer, which must be a `helloAck`.
pub(crate) async fn say_hello<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    hello: &LinkToCloud,
) -> CloudToLink {
    send(ws, hello).await;
    let Some(Ok(Message::Text(ack))) = ws.next().await else {
        panic!("no answer to the hello");
    };
    let ack = halo_protocol::decode::<CloudToLink>(&ack).unwrap();
    assert!(matches!(ack, CloudToLink::HelloAck { .. }), "{ack:?}");
    ack
}

/// A `halo-cloud` process; killed when dropped, so a failing assertion never leaves
/// it behind.
pub(crate) struct CloudProcess(pub(crate) std::process::Child);

impl CloudProcess {
    /// Kills the process (SIGKILL) and reaps it.
    pub(crate) fn sigkill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for CloudProcess {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Starts `command` (a `halo-cloud serve` command line; its stdout is piped here) and
/// waits for its readiness line: the process and the address it listens on.
pub(crate) fn start_cloud(mut command: std::process::Command) -> (CloudProcess, String) {
    use std::io::BufRead as _;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start halo-cloud");
    let stdout = child.stdout.take().expect("stdout");
    let cloud = CloudProcess(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("readiness line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (cloud, addr)
}
