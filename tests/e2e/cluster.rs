//! A cluster on loopback, for the cluster tests (`cluster_links.rs`) and the
//! cluster bench (`tests/examples/cluster_bench.rs`, which includes this file with
//! `fixture.rs` and `processes.rs`): real `halo-cloud` processes on one throw-away
//! PostgreSQL, in-process Links, an integrator paired with every practice.

use std::path::Path;
use std::time::{Duration, Instant};

use halo_ids::{Environment, HaloGuid};
use halo_link::demo::generate;
use halo_link::{Agent, AgentHandle, LinkConfig};
use halo_test_support::postgres_server::PgServer;
use reqwest::Method;
use serde_json::{Value, json};

use crate::fixture::{INTEGRATOR, practice};
use crate::processes::{Client, CloudProcess, free_port};

/// The cluster secret every node reads from its `--cluster-secret-file`.
pub(crate) const SECRET: &str = "cluster-test-secret-0123456789abcdef-0123456789";
/// The immediate query the cluster tests and the bench send.
pub(crate) const QUERY: &str = "SELECT first_name FROM patients";

/// One `halo-cloud serve` node and a client of it.
pub(crate) struct Node {
    /// `None` once the test killed it.
    pub(crate) process: Option<CloudProcess>,
    pub(crate) client: Client,
    pub(crate) port: u16,
}

fn start_node(dir: &Path, server: &PgServer, name: &str, secret: &Path) -> Node {
    let port = free_port();
    let peer = format!("127.0.0.1:{port}");
    let data = dir.join(name);
    let url = pg_url(server);
    let args = [
        "--store",
        url.as_str(),
        "--node-id",
        name,
        "--peer-addr",
        peer.as_str(),
        "--cluster-secret-file",
        secret.to_str().unwrap(),
    ];
    let process = CloudProcess::start(&data, port, &args);
    Node {
        process: Some(process),
        client: Client {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
        },
        port,
    }
}

/// The server as a `postgres://` URL (what `--store` takes).
fn pg_url(server: &PgServer) -> String {
    let conninfo = server.url();
    let port = conninfo
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap();
    format!("postgres://halo@127.0.0.1:{port}/postgres")
}

fn link_url(port: u16) -> String {
    format!("ws://127.0.0.1:{port}/link/ws")
}

/// A Link serving a generated practice `crn`, connecting to the first of `ports`
/// and falling back to the others in turn.
async fn start_link(
    dir: &Path,
    environment: Environment,
    crn: &str,
    token: String,
    ports: &[u16],
) -> (HaloGuid, AgentHandle) {
    let db = dir.join(format!("{crn}.sqlite"));
    generate(&db, &practice(crn, crn)).unwrap();
    let mut config = LinkConfig::new(
        link_url(ports[0]),
        environment,
        token,
        dir.join(format!("{crn}-state.json")),
        vec![db],
    );
    config.fallback_cloud_urls = ports[1..].iter().map(|p| link_url(*p)).collect();
    // Slow enough that the gap after a kill is seen, fast enough to be back in 10 s.
    config.backoff_initial = Duration::from_secs(2);
    config.backoff_max = Duration::from_secs(2);
    let agent = Agent::prepare(config).unwrap();
    let site = agent.databases()[0].halo_guid();
    let link = agent.spawn();
    link.wait_connected(1, Duration::from_secs(20))
        .await
        .unwrap();
    (site, link)
}

/// An immediate query to `site` entering `client`'s node: the status, whether a
/// `Retry-After` came with it, and the body.
pub(crate) async fn immediate(client: &Client, key: &str, site: HaloGuid) -> (u16, bool, String) {
    let resp = client
        .http
        .post(format!(
            "{}/integrator/sites/{site}/queries/immediate",
            client.base
        ))
        .header(halo_cloud::KEY_HEADER, key)
        .json(&json!({"command": {"text": QUERY}}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().contains_key("retry-after");
    (status, retry, resp.text().await.unwrap_or_default())
}

/// Waits until an immediate query to `site` through `client` succeeds; every
/// failure meanwhile must be a 503 with `Retry-After`. Returns how many 503s.
pub(crate) async fn until_ok(
    client: &Client,
    key: &str,
    site: HaloGuid,
    within: Duration,
) -> usize {
    let deadline = Instant::now() + within;
    let mut unavailable = 0;
    loop {
        let (status, retry, body) = immediate(client, key, site).await;
        if status == 200 {
            let rows: Value = serde_json::from_str(&body).unwrap();
            assert!(
                rows.to_string().contains("first_name") || !rows.is_null(),
                "{body}"
            );
            return unavailable;
        }
        assert_eq!(status, 503, "{} {site}: {body}", client.base);
        assert!(
            retry,
            "{} {site}: a 503 without Retry-After: {body}",
            client.base
        );
        unavailable += 1;
        assert!(
            Instant::now() < deadline,
            "{} {site}: still 503 after {within:?}",
            client.base
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pairs the integrator with practice `crn` through `client` (the node its Link
/// registered with, which applied the registration before acknowledging the Link).
pub(crate) async fn pair_on(client: &Client, key: &str, crn: &str) {
    let path =
        format!("/integrator/pair-site?practiceManagementSiteId={crn}&practiceManagementName=D4w");
    let (status, body) = client.call(Method::POST, key, &path, None).await.unwrap();
    assert_eq!(status, 200, "{body}");
}

/// Waits (10 s at most) until every node in `clients` answers the status of every
/// site in `sites` for `key`: they have followed the pairings.
pub(crate) async fn wait_followed(clients: &[&Client], key: &str, sites: &[HaloGuid]) {
    for client in clients {
        for site in sites {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let path = format!("/integrator/sites/{site}");
                if let Ok((200, _)) = client.call(Method::GET, key, &path, None).await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not follow {site}",
                    client.base
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Nodes on one PostgreSQL, a Link per practice, a paired integrator. Fields drop
/// in order: the Links stop, then the nodes, then the server.
pub(crate) struct Cluster {
    /// One per practice, in the order of `sites`.
    pub(crate) links: Vec<AgentHandle>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) server: PgServer,
    /// The integrator's key (Stage unless started with [`Cluster::start_in`]).
    pub(crate) key: String,
    pub(crate) sites: Vec<HaloGuid>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `nodes` nodes (`n0`, `n1`, …) on a fresh PostgreSQL and a Link per practice
    /// of `crns`: the i-th connects to node i (mod `nodes`) first, then to the
    /// following ones in turn. The integrator is paired with every practice and
    /// every node has followed the pairings when this returns.
    pub(crate) async fn start(nodes: usize, crns: &[&str]) -> Cluster {
        Self::start_in(Environment::Stage, nodes, crns).await
    }

    /// As [`Cluster::start`], with Links, credentials and the key in `environment`.
    pub(crate) async fn start_in(environment: Environment, nodes: usize, crns: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let server = PgServer::start();
        let secret = dir.path().join("cluster.secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        // One node first: it migrates the schema.
        let mut started = vec![start_node(dir.path(), &server, "n0", &secret)];
        let http = reqwest::Client::new();
        started[0].process.as_ref().unwrap().wait_ready(&http).await;
        for i in 1..nodes {
            started.push(start_node(dir.path(), &server, &format!("n{i}"), &secret));
        }
        for node in &started[1..] {
            node.process.as_ref().unwrap().wait_ready(&http).await;
        }
        let nodes = started;
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let admin = &nodes[0].client;
        let key = admin.integrator_in(environment, crns[0]).await;
        for crn in &crns[1..] {
            admin
                .admin(
                    Method::POST,
                    &format!("/admin/integrators/{INTEGRATOR}/practices"),
                    json!({"pmsId": format!("D4w:{crn}")}),
                )
                .await;
        }
        let mut sites = Vec::new();
        let mut links = Vec::new();
        for (i, crn) in crns.iter().enumerate() {
            let first = &nodes[i % nodes.len()].client;
            // Issued on the node the Link connects to first (acknowledged there).
            let token = first.credential_in(environment, crn).await;
            let order: Vec<u16> = ports
                .iter()
                .cycle()
                .skip(i)
                .take(ports.len())
                .copied()
                .collect();
            let (site, link) = start_link(dir.path(), environment, crn, token, &order).await;
            // Paired on the node the Link registered with (it applied the
            // registration before acknowledging the Link).
            pair_on(first, &key, crn).await;
            sites.push(site);
            links.push(link);
        }
        // Every node has followed the pairings before the caller starts.
        let clients: Vec<&Client> = nodes.iter().map(|n| &n.client).collect();
        wait_followed(&clients, &key, &sites).await;
        Cluster {
            links,
            nodes,
            server,
            key,
            sites,
            _dir: dir,
        }
    }

    /// How many sessions the i-th Link has opened so far (1 while it has never
    /// moved from the node it first connected to).
    pub(crate) fn sessions(&self, link: usize) -> u64 {
        self.links[link].status().borrow().sessions
    }
}
