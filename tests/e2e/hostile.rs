//! A hostile Link client: connects with any credential, says any hello, reads the
//! jobs the Cloud sends and forges any answer. The trust-boundary tests are written
//! against it, so that the next attack is one test away.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType, Timestamp};
use halo_protocol::{
    CatalogueInfo, CloudToLink, DatabaseInfo, Heartbeat, Hello, LinkToCloud, PROTOCOL_VERSION,
    QueryJob, QueryResult,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connected hostile Link.
pub(crate) struct HostileLink {
    ws: Ws,
}

/// A database as a hostile Link announces it, with whatever identity it likes.
pub(crate) fn database(halo: HaloGuid, crn: &str, demo: bool) -> DatabaseInfo {
    DatabaseInfo {
        halo_guid: halo,
        pms_type: PmsType::D4w,
        parent_crn: crn.parse::<Crn>().unwrap(),
        branch_crns: Vec::new(),
        practice_name: format!("Practice {crn}"),
        pms_version: "15.0".to_owned(),
        catalogues: vec![CatalogueInfo {
            name: "d4w".to_owned(),
            is_default: true,
        }],
        is_demo: demo,
    }
}

/// A hello naming any Link GUID and any databases.
pub(crate) fn hello(link: LinkGuid, env: Environment, databases: Vec<DatabaseInfo>) -> Hello {
    Hello {
        link_guid: link,
        environment: env,
        link_version: "hostile".to_owned(),
        protocol_version: PROTOCOL_VERSION,
        databases,
    }
}

/// What the Cloud answered to a hello.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Accepted; the rejected databases with their reasons.
    Ack(Vec<(HaloGuid, String)>),
    /// Refused with this reason.
    Refused(String),
}

impl HostileLink {
    /// Opens the WebSocket with `token`; `Err(status)` when the upgrade is refused.
    pub(crate) async fn connect(addr: std::net::SocketAddr, token: &str) -> Result<Self, u16> {
        let mut request = format!("ws://{addr}/link/ws")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("connect: {e}"),
        }
    }

    /// Connects and says `hello`; panics if the upgrade itself is refused.
    pub(crate) async fn join(
        addr: std::net::SocketAddr,
        token: &str,
        hello: Hello,
    ) -> (Self, Answer) {
        let mut link = Self::connect(addr, token)
            .await
            .unwrap_or_else(|status| panic!("upgrade refused with {status}"));
        let answer = link.hello(hello).await;
        (link, answer)
    }

    /// Sends a hello and reads the answer.
    pub(crate) async fn hello(&mut self, hello: Hello) -> Answer {
        self.send(&LinkToCloud::Hello(hello)).await;
        match self.next(Duration::from_secs(10)).await {
            Some(CloudToLink::HelloAck { rejected, .. }) => Answer::Ack(
                rejected
                    .into_iter()
                    .map(|r| (r.halo_guid, r.reason))
                    .collect(),
            ),
            Some(CloudToLink::Refused { reason }) => Answer::Refused(reason),
            other => panic!("expected an answer to the hello, got {other:?}"),
        }
    }

    /// Sends any message.
    pub(crate) async fn send(&mut self, msg: &LinkToCloud) {
        let text = halo_protocol::encode(msg).unwrap();
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next protocol message within `wait`; `None` on timeout or close.
    pub(crate) async fn next(&mut self, wait: Duration) -> Option<CloudToLink> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match frame {
                Ok(Message::Text(text)) => return Some(halo_protocol::decode(&text).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next job within `wait`.
    pub(crate) async fn next_job(&mut self, wait: Duration) -> Option<QueryJob> {
        match self.next(wait).await? {
            CloudToLink::QueryJob(job) => Some(job),
            other => panic!("expected a job, got {other:?}"),
        }
    }

    /// Answers a query id with forged rows.
    pub(crate) async fn forge(&mut self, query_id: u64, rows: &serde_json::Value) {
        let json = serde_json::to_vec(rows).unwrap();
        let n = rows.as_array().map_or(0, Vec::len) as u64;
        self.send(&LinkToCloud::QueryResult(QueryResult::from_json(
            query_id, n, &json, 1,
        )))
        .await;
    }

    /// Sends a heartbeat for `sites`.
    pub(crate) async fn heartbeat(&mut self, sites: Vec<HaloGuid>) {
        self.send(&LinkToCloud::Heartbeat(Heartbeat {
            at: Timestamp::from_millis(0),
            databases: sites,
        }))
        .await;
    }

    /// Waits until the Cloud ends the session: `Some(reason)` for a refusal before
    /// the close, `Some("")` for a bare close, `None` if still open after `wait`.
    pub(crate) async fn ended_within(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(String::new()),
                Ok(Some(frame)) => frame,
            };
            match frame {
                Ok(Message::Text(text)) => {
                    if let Ok(CloudToLink::Refused { reason }) = halo_protocol::decode(&text) {
                        return Some(reason);
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return Some(String::new()),
                Ok(_) => {}
            }
        }
    }
}
