//! Partitions between cluster nodes: three real `halo-cloud` processes, each in a
//! network namespace of its own made by the test (`ip netns`, veth pairs to two
//! bridges in the root namespace), one throw-away PostgreSQL and two in-process
//! Links in the root namespace.
//!
//! Two networks, as in a deployment: the *front* one, where Links and integrators
//! reach the nodes, and the *back* one, where the nodes reach PostgreSQL (on the
//! root side of the back bridge) and each other (`--peer-addr`). A cut is a veth
//! taken down on the root side; a partition between two nodes is a route, in each
//! of their namespaces, to the other's back address through a gateway that does
//! not exist. Both are silent, as a real partition is: packets vanish, nothing
//! answers with a reset.
//!
//! - **A node cut off from everything** (it carries Link 1): the Link notices the
//!   silence and attaches to another node; queries entering the other nodes succeed
//!   again within 10 s. Healed, the node serves again (forwarding to the Link's new
//!   node) and does not take the Link's lease back.
//! - **A node cut off from the back network only** (the Links and integrators still
//!   reach it): it fails closed: once its lease lapses it answers 503 with
//!   `Retry-After` for its Links' sites and closes their sessions, so they attach
//!   elsewhere; every answer it gave locally ended before another node held the
//!   lease. Healed, it serves again by itself.
//! - **Two nodes that cannot reach each other**, both reaching PostgreSQL: a query
//!   entering one for the other's Link gets 503 with `Retry-After`, never a hang and
//!   never another answer; the leases do not move; healed, it succeeds.
//!
//! The whole log is checked at the end as in `cluster_links.rs` (never two holders
//! of a group, epochs never back).
//!
//! Where network namespaces cannot be made (not root, no `ip`), each test prints
//! `skipped: <reason>` on stderr and passes; anything that fails after the first
//! namespace was made fails the test.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use halo_ids::{Environment, HaloGuid};
use halo_link::demo::generate;
use halo_link::{Agent, AgentHandle, LinkConfig};
use halo_store::{PgLeases, PgOptions};
use halo_test_support::postgres_server::PgServer;
use reqwest::Method;
use serde_json::json;

use crate::cluster::{SECRET, immediate, pair_on, until_ok, wait_followed};
use crate::cluster_links::check_authority;
use crate::fixture::{INTEGRATOR, practice};
use crate::processes::{Client, CloudProcess};

/// The port every node listens on, inside its own namespace.
const PORT: u16 = 8080;
const NODES: usize = 3;

/// Runs `ip` with `args`.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("`ip` (iproute2) cannot run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

/// An IPv4 network `a.b.c.d/len` as (address, prefix length).
fn cidr(text: &str) -> Option<(u32, u32)> {
    let (addr, len) = text.split_once('/').unwrap_or((text, "32"));
    Some((u32::from(addr.parse::<Ipv4Addr>().ok()?), len.parse().ok()?))
}

fn overlaps((a, alen): (u32, u32), (b, blen): (u32, u32)) -> bool {
    let len = alen.min(blen);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a & mask == b & mask
}

/// The IPv4 destinations routed anywhere in the root namespace now (the default
/// route aside).
fn routed() -> Vec<(u32, u32)> {
    let out = Command::new("ip")
        .args(["-4", "-o", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    const TYPES: [&str; 9] = [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
    ];
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let first = words.next()?;
            let dest = if TYPES.contains(&first) {
                words.next()?
            } else {
                first
            };
            cidr(dest)
        })
        .collect()
}

/// The test's namespaces, bridges and veth pairs; all removed on drop (also when
/// the test panics). Node `i` is `10.231.k.(10+i)` on the front network and
/// `10.232.k.(10+i)` on the back one; the root side of each bridge is `.1`.
struct Net {
    tag: String,
    k: u8,
    namespaces: Vec<String>,
    /// Root-side veths and bridges.
    links: Vec<String>,
}

/// Which of a node's two veths.
#[derive(Clone, Copy)]
enum Side {
    Front,
    Back,
}

impl Side {
    fn letter(self) -> char {
        match self {
            Side::Front => 'f',
            Side::Back => 'b',
        }
    }
}

impl Net {
    /// Makes the namespaces and networks, or says why namespaces cannot be made
    /// here (the only reason to skip).
    fn create() -> Result<Net, String> {
        // One test at a time, so that two never pick the same subnets.
        static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let _making = MAKING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("hp{}{}", pid % 100_000, char::from(b'a' + (n % 26) as u8));
        let taken = routed();
        let seed = (pid % 200) + 20 + n * 7;
        let k = (0..256u32)
            .map(|i| ((seed + i) % 256) as u8)
            .find(|k| {
                [231u8, 232].iter().all(|net| {
                    let ours = (u32::from(Ipv4Addr::new(10, *net, *k, 0)), 24);
                    !taken.iter().any(|t| t.1 > 0 && overlaps(*t, ours))
                })
            })
            .expect("no free 10.231.k.0/24 and 10.232.k.0/24 subnets");
        let mut net = Net {
            tag,
            k,
            namespaces: Vec::new(),
            links: Vec::new(),
        };
        // Left over by a run of the same process id that was killed: stale.
        for i in 0..NODES {
            let _ = ip(&["link", "del", &net.veth(i, Side::Front)]);
            let _ = ip(&["link", "del", &net.veth(i, Side::Back)]);
            let _ = ip(&["netns", "del", &net.ns(i)]);
        }
        let _ = ip(&["link", "del", &net.bridge(Side::Front)]);
        let _ = ip(&["link", "del", &net.bridge(Side::Back)]);
        // The one step allowed to fail: without it there is nothing to test.
        ip(&["netns", "add", &net.ns(0)])?;
        net.namespaces.push(net.ns(0));
        for i in 1..NODES {
            must(&["netns", "add", &net.ns(i)]);
            net.namespaces.push(net.ns(i));
        }
        for side in [Side::Front, Side::Back] {
            let bridge = net.bridge(side);
            must(&["link", "add", &bridge, "type", "bridge"]);
            net.links.push(bridge.clone());
            let root = format!("{}/24", net.addr(side, 1));
            must(&["addr", "add", &root, "dev", &bridge]);
            must(&["link", "set", &bridge, "up"]);
        }
        for i in 0..NODES {
            let ns = net.ns(i);
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            for side in [Side::Front, Side::Back] {
                let veth = net.veth(i, side);
                let inner = Self::inner(side);
                must(&[
                    "link", "add", &veth, "type", "veth", "peer", "name", inner, "netns", &ns,
                ]);
                net.links.push(veth.clone());
                must(&["link", "set", &veth, "master", &net.bridge(side)]);
                must(&["link", "set", &veth, "up"]);
                let addr = format!("{}/24", net.node(side, i));
                must(&["-n", &ns, "addr", "add", &addr, "dev", inner]);
                must(&["-n", &ns, "link", "set", inner, "up"]);
            }
        }
        Ok(net)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.tag)
    }

    fn bridge(&self, side: Side) -> String {
        format!("{}{}", self.tag, side.letter())
    }

    /// The root side of node `i`'s veth on `side`.
    fn veth(&self, i: usize, side: Side) -> String {
        format!("{}{i}{}", self.tag, side.letter())
    }

    /// The namespace side of a veth.
    fn inner(side: Side) -> &'static str {
        match side {
            Side::Front => "front",
            Side::Back => "back",
        }
    }

    fn addr(&self, side: Side, host: u8) -> Ipv4Addr {
        let net = match side {
            Side::Front => 231,
            Side::Back => 232,
        };
        Ipv4Addr::new(10, net, self.k, host)
    }

    /// Node `i`'s address on `side`.
    fn node(&self, side: Side, i: usize) -> Ipv4Addr {
        self.addr(side, 10 + i as u8)
    }

    /// Takes node `i`'s veth on `side` down (`up: false`) or up again.
    fn set(&self, i: usize, side: Side, up: bool) {
        let state = if up { "up" } else { "down" };
        must(&["link", "set", &self.veth(i, side), state]);
    }

    /// Node `i` and node `j` cannot reach each other's back address (or, with
    /// `cut: false`, can again): each routes the other through a gateway that
    /// does not exist, so packets vanish.
    fn partition(&self, i: usize, j: usize, cut: bool) {
        let nowhere = self.addr(Side::Back, 254).to_string();
        for (from, to) in [(i, j), (j, i)] {
            let dest = format!("{}/32", self.node(Side::Back, to));
            let ns = self.ns(from);
            if cut {
                must(&[
                    "-n", &ns, "route", "add", &dest, "via", &nowhere, "dev", "back",
                ]);
            } else {
                must(&["-n", &ns, "route", "del", &dest]);
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for link in &self.links {
            let _ = ip(&["link", "del", link]);
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A client that opens a connection per request (a pooled one could outlive a
/// cut) and gives up after 20 s (a hung answer fails the test, not the run).
fn client(host: Ipv4Addr) -> Client {
    Client {
        http: reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        base: format!("http://{}", SocketAddr::from((host, PORT))),
    }
}

struct Node {
    process: CloudProcess,
    client: Client,
}

struct Cluster {
    // Dropped in this order: Links, nodes, PostgreSQL, then the network.
    links: Vec<AgentHandle>,
    nodes: Vec<Node>,
    server: PgServer,
    net: Net,
    _dir: tempfile::TempDir,
    key: String,
    sites: Vec<HaloGuid>,
}

fn start_node(net: &Net, i: usize, dir: &std::path::Path, store: &str) -> Node {
    let name = format!("n{i}");
    let ns = net.ns(i);
    let peer = SocketAddr::from((net.node(Side::Back, i), PORT)).to_string();
    let secret = dir.join("cluster.secret");
    let front = net.node(Side::Front, i);
    let process = CloudProcess::start_via(
        &["ip", "netns", "exec", &ns],
        SocketAddr::from(([0, 0, 0, 0], PORT)),
        IpAddr::V4(front),
        &dir.join(&name),
        &[
            "--store",
            store,
            "--node-id",
            &name,
            "--peer-addr",
            &peer,
            "--cluster-secret-file",
            secret.to_str().unwrap(),
            // The Links hear from their node every second: a silent cut is noticed
            // within three.
            "--link-heartbeat",
            "1s",
        ],
    );
    Node {
        process,
        client: client(front),
    }
}

async fn start_link(
    dir: &std::path::Path,
    crn: &str,
    token: String,
    urls: &[String],
) -> (HaloGuid, AgentHandle) {
    let db = dir.join(format!("{crn}.sqlite"));
    generate(&db, &practice(crn, crn)).unwrap();
    let mut config = LinkConfig::new(
        urls[0].clone(),
        Environment::Stage,
        token,
        dir.join(format!("{crn}-state.json")),
        vec![db],
    );
    config.fallback_cloud_urls = urls[1..].to_vec();
    config.backoff_initial = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(1);
    // Three heartbeats (3 s) of silence end a session.
    config.silence_limit = Duration::from_secs(1);
    let agent = Agent::prepare(config).unwrap();
    let site = agent.databases()[0].halo_guid();
    let link = agent.spawn();
    link.wait_connected(1, Duration::from_secs(20))
        .await
        .unwrap();
    (site, link)
}

/// Three nodes in namespaces; Link 1 (SMILE01) first tries n0, Link 2 (GRIN02)
/// n1; an integrator paired with both. `None` where namespaces cannot be made.
async fn cluster() -> Option<Cluster> {
    let started = Instant::now();
    let net = match Net::create() {
        Ok(net) => net,
        Err(why) => {
            eprintln!("skipped: cannot make network namespaces here: {why}");
            return None;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let pg_addr = net.addr(Side::Back, 1);
    let server = PgServer::start_listening_on(
        IpAddr::V4(pg_addr),
        &format!("{}/24", net.addr(Side::Back, 0)),
    );
    let store = format!("postgres://halo@{pg_addr}:{}/postgres", server.port());
    std::fs::write(dir.path().join("cluster.secret"), format!("{SECRET}\n")).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // One node first: it migrates the schema.
    let mut nodes = vec![start_node(&net, 0, dir.path(), &store)];
    nodes[0].process.wait_ready(&http).await;
    for i in 1..NODES {
        nodes.push(start_node(&net, i, dir.path(), &store));
    }
    for node in &nodes[1..] {
        node.process.wait_ready(&http).await;
    }
    let urls: Vec<String> = (0..NODES)
        .map(|i| format!("ws://{}:{PORT}/link/ws", net.node(Side::Front, i)))
        .collect();
    let admin = &nodes[0].client;
    let key = admin.integrator("SMILE01").await;
    admin
        .admin(
            Method::POST,
            &format!("/admin/integrators/{INTEGRATOR}/practices"),
            json!({"pmsId": "D4w:GRIN02"}),
        )
        .await;
    let mut sites = Vec::new();
    let mut links = Vec::new();
    for (i, crn) in ["SMILE01", "GRIN02"].into_iter().enumerate() {
        let token = nodes[i].client.credential(crn).await;
        let order: Vec<String> = urls.iter().cycle().skip(i).take(NODES).cloned().collect();
        let (site, link) = start_link(dir.path(), crn, token, &order).await;
        pair_on(&nodes[i].client, &key, crn).await;
        sites.push(site);
        links.push(link);
    }
    // Every practice through every node (forwarded where its Link is elsewhere).
    let clients: Vec<&Client> = nodes.iter().map(|n| &n.client).collect();
    wait_followed(&clients, &key, &sites).await;
    for node in &nodes {
        for site in &sites {
            until_ok(&node.client, &key, *site, Duration::from_secs(10)).await;
        }
    }
    eprintln!("cluster in namespaces ready in {:?}", started.elapsed());
    Some(Cluster {
        links,
        nodes,
        server,
        net,
        _dir: dir,
        key,
        sites,
    })
}

/// When it was read, and every live lease then (link id to node id).
type Sample = (Instant, HashMap<String, String>);

/// Every live Link lease, sampled every 100 ms by a thread of its own from the
/// root namespace.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Sampler {
    fn start(url: String) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut db = PgLeases::new(PgOptions::new(url)).unwrap();
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                // A renewal of nothing for a node of no name: reads every lease.
                let round = db
                    .renew("lease-sampler", "", &[], Duration::from_secs(1))
                    .unwrap();
                let holders = round
                    .others
                    .into_iter()
                    .map(|l| (l.link_id, l.node_id))
                    .collect();
                samples.push((Instant::now(), holders));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The node holding `link`'s lease now (read once, on a thread of its own: the
/// client blocks).
fn holder(url: &str, link: &str) -> Option<String> {
    let (url, link) = (url.to_owned(), link.to_owned());
    std::thread::spawn(move || {
        let mut db = PgLeases::new(PgOptions::new(url)).unwrap();
        let round = db
            .renew("lease-reader", "", &[], Duration::from_secs(1))
            .unwrap();
        round
            .others
            .into_iter()
            .find(|l| l.link_id == link)
            .map(|l| l.node_id)
    })
    .join()
    .unwrap()
}

/// Waits until `link`'s lease is held by a node other than `not`; returns it.
async fn moved_from(url: &str, link: &str, not: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(node) = holder(url, link).filter(|n| n != not) {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "{link}'s lease still not moved from {not} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Immediate queries to `site` entering `client`'s node every 100 ms until
/// `stop`: when each answer arrived, its status and whether `Retry-After` came.
async fn watch(
    client: Client,
    key: String,
    site: HaloGuid,
    stop: Arc<AtomicBool>,
) -> Vec<(Instant, u16, bool)> {
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (status, retry, body) = immediate(&client, &key, site).await;
        assert!(
            status == 200 || (status == 503 && retry),
            "{}: {status} {body}",
            client.base
        );
        seen.push((Instant::now(), status, retry));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_fails_closed_and_rejoins() {
    let Some(c) = cluster().await else { return };
    let url = c.server.url();
    let link1 = c.links[0].link_guid().to_string();
    let site = c.sites[0];
    assert_eq!(holder(&url, &link1).as_deref(), Some("n0"));
    let sampler = Sampler::start(url.clone());

    // 1. n0, carrying Link 1, cut off from everything.
    let cut = Instant::now();
    c.net.set(0, Side::Front, false);
    c.net.set(0, Side::Back, false);
    for node in &c.nodes[1..] {
        let left = Duration::from_secs(10).saturating_sub(cut.elapsed());
        until_ok(&node.client, &c.key, site, left).await;
        until_ok(&node.client, &c.key, c.sites[1], Duration::from_secs(10)).await;
    }
    let moved = cut.elapsed();
    let h = moved_from(&url, &link1, "n0", Duration::from_secs(1)).await;
    // Healed: n0 serves both practices again (forwarding Link 1's to its node).
    let healed = Instant::now();
    c.net.set(0, Side::Front, true);
    c.net.set(0, Side::Back, true);
    for site in &c.sites {
        until_ok(&c.nodes[0].client, &c.key, *site, Duration::from_secs(20)).await;
    }
    let rejoined = healed.elapsed();
    // It did not take Link 1 back: its lease stayed where the Link went.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(holder(&url, &link1).as_deref(), Some(h.as_str()));

    // 2. The node now carrying Link 1 cut off from the back network only: the
    // Link and the integrators still reach it, PostgreSQL and the peers do not.
    let hi: usize = h[1..].parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch(
        client(c.net.node(Side::Front, hi)),
        c.key.clone(),
        site,
        Arc::clone(&stop),
    ));
    let cut = Instant::now();
    c.net.set(hi, Side::Back, false);
    // Entering the other nodes meanwhile: served (forwarded to h while its lease
    // runs) or refused with Retry-After, promptly, never anything else.
    for (i, node) in c.nodes.iter().enumerate().filter(|(i, _)| *i != hi) {
        let asked = Instant::now();
        let (status, retry, body) = immediate(&node.client, &c.key, site).await;
        assert!(
            status == 200 || (status == 503 && retry),
            "n{i}: {status} {body}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "n{i} took {:?} to answer",
            asked.elapsed()
        );
    }
    let elsewhere = moved_from(&url, &link1, &h, Duration::from_secs(20)).await;
    for (i, node) in c.nodes.iter().enumerate().filter(|(i, _)| *i != hi) {
        for site in &c.sites {
            let served = until_ok(&node.client, &c.key, *site, Duration::from_secs(10)).await;
            eprintln!("n{i}: {served} answers 503 before {site} was served");
        }
    }
    let failed_over = cut.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    // It failed closed: 200s (run beside the Link, while its lease ran), then only
    // 503s with Retry-After; never 200 again while cut off.
    let first_refusal = seen
        .iter()
        .position(|s| s.1 == 503)
        .unwrap_or_else(|| panic!("{h} never stopped routing to Link 1: {seen:?}"));
    assert!(
        seen[first_refusal..].iter().all(|s| s.1 == 503 && s.2),
        "{h} routed again after it stopped: {seen:?}"
    );
    // Every answer it ran locally ended before any other node held the lease.
    let samples = sampler.finish();
    let taken = samples
        .iter()
        .position(|(at, holders)| *at > cut && holders.get(&link1).is_some_and(|n| n != &h))
        .expect("the sampler saw the lease move");
    let before = samples[taken.checked_sub(1).expect("samples before the cut")].0;
    if let Some(last_local) = seen[..first_refusal].last() {
        assert!(
            last_local.0 <= before,
            "{h} answered Link 1's site {:?} after the lease was last seen without another holder",
            last_local.0 - before
        );
    }
    // In phase 1 the lease went from n0 to h and never back to n0.
    let back_to_n0 = samples
        .iter()
        .filter(|(at, _)| *at > healed)
        .any(|(_, holders)| holders.get(&link1).is_some_and(|n| n == "n0"));
    assert!(!back_to_n0, "n0 took Link 1's lease back after healing");

    // Healed: the node serves both practices again by itself.
    let healed2 = Instant::now();
    c.net.set(hi, Side::Back, true);
    for site in &c.sites {
        until_ok(&c.nodes[hi].client, &c.key, *site, Duration::from_secs(20)).await;
    }
    let recovered = healed2.elapsed();
    assert_eq!(check_authority(url), 2);
    eprintln!(
        "cut off: Link 1 moved from n0 to {h} in {moved:?}; n0 rejoined {rejoined:?} after healing; \
         back network cut: {h} answered 503 after {} local answers, Link 1 moved to {elsewhere}, \
         served elsewhere after {failed_over:?}, {h} recovered {recovered:?} after healing",
        first_refusal
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_that_cannot_reach_each_other_answer_retry_later() {
    let Some(c) = cluster().await else { return };
    let url = c.server.url();
    let link1 = c.links[0].link_guid().to_string();
    let link2 = c.links[1].link_guid().to_string();
    assert_eq!(holder(&url, &link1).as_deref(), Some("n0"));
    assert_eq!(holder(&url, &link2).as_deref(), Some("n1"));
    // n0 (Link 1) and n1 (Link 2) cannot reach each other; both reach PostgreSQL
    // and n2.
    c.net.partition(0, 1, true);
    let cut = Instant::now();
    let mut refused = 0;
    while cut.elapsed() < Duration::from_secs(4) {
        // Entering the other one's node: 503 with Retry-After, never anything else.
        for (entry, site) in [(1, c.sites[0]), (0, c.sites[1])] {
            let asked = Instant::now();
            let (status, retry, body) = immediate(&c.nodes[entry].client, &c.key, site).await;
            assert!(
                status == 503 && retry,
                "n{entry} for {site} across the partition: {status} {body}"
            );
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "n{entry} took {:?} to answer 503",
                asked.elapsed()
            );
            refused += 1;
        }
        // Entering the node holding the Link, or one that reaches it: served.
        for (entry, site) in [
            (0, c.sites[0]),
            (2, c.sites[0]),
            (1, c.sites[1]),
            (2, c.sites[1]),
        ] {
            let (status, _, body) = immediate(&c.nodes[entry].client, &c.key, site).await;
            assert_eq!(status, 200, "n{entry} for {site}: {body}");
        }
    }
    // The leases did not move: both nodes still reach PostgreSQL and their Links.
    assert_eq!(holder(&url, &link1).as_deref(), Some("n0"));
    assert_eq!(holder(&url, &link2).as_deref(), Some("n1"));
    // Healed: served across again.
    c.net.partition(0, 1, false);
    until_ok(
        &c.nodes[1].client,
        &c.key,
        c.sites[0],
        Duration::from_secs(10),
    )
    .await;
    until_ok(
        &c.nodes[0].client,
        &c.key,
        c.sites[1],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(check_authority(url), 2);
    eprintln!("{refused} queries across the partition answered 503 with Retry-After");
}
