//! Links on any node of a cluster: three real `halo-cloud` processes on one
//! throw-away PostgreSQL, two in-process Links. Queries entering every node reach
//! every practice (forwarded to the node holding the Link's lease); `kill -9` of
//! the node carrying a Link makes immediate queries answer 503 with `Retry-After`
//! until the Link is attached to another node (within 10 s), then they succeed
//! again; no acknowledged change is lost; the whole log never shows two holders.
//! And a forwarded request without the cluster's signature is refused.

use std::time::{Duration, Instant};

use base64::Engine as _;

use halo_cloud::Record;
use halo_ids::HaloGuid;
use halo_store::{EventLog as _, PgLog, PgOptions, Seq};
use halo_tenancy::AuthorityHistory;
use hmac::{Hmac, Mac as _};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::cluster::{Cluster, QUERY, SECRET, immediate, until_ok};
use crate::processes::Client;

/// An async query to `site` accepted through `entry`, followed through `reader`
/// until it ends: it must succeed and its first page must be readable there.
async fn async_through(entry: &Client, reader: &Client, key: &str, site: HaloGuid) {
    let body = json!({"command": {"text": QUERY, "executionMode": "reader", "type": "text"}});
    let path = format!("/integrator/sites/{site}/queries/async");
    let (status, created) = entry
        .call(Method::POST, key, &path, Some(body))
        .await
        .unwrap();
    assert!(
        (200..300).contains(&status),
        "{}: {status} {created}",
        entry.base
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let path = format!("/integrator/sites/{site}/queries/{id}");
        let (status, query) = reader.call(Method::GET, key, &path, None).await.unwrap();
        assert_eq!(status, 200, "{}: {query}", reader.base);
        let now = query["status"].as_str().unwrap_or_default().to_owned();
        if !["initialising", "queued", "executing", "uploading"].contains(&now.as_str()) {
            break query;
        }
        assert!(Instant::now() < deadline, "{id} still {now} after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "successful", "{}: {done}", entry.base);
    let page = format!("/integrator/sites/{site}/queries/{id}/results/1");
    let (status, rows) = reader.call(Method::GET, key, &page, None).await.unwrap();
    assert_eq!(status, 200, "{}: {rows}", reader.base);
    let data = base64::engine::general_purpose::STANDARD
        .decode(rows["data"].as_str().unwrap_or_default())
        .unwrap();
    let rows: Value = serde_json::from_slice(&data).unwrap();
    assert!(
        rows.as_array()
            .is_some_and(|r| !r.is_empty() && r[0].get("first_name").is_some()),
        "{rows}"
    );
}

fn whole_log(url: String) -> Vec<(Seq, Record)> {
    std::thread::spawn(move || {
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
    })
    .join()
    .unwrap()
}

/// Replays the whole log and checks, after every event, that no group has two
/// authoritative sites and no epoch went back (`halo_tenancy::AuthorityHistory`).
/// Returns how many sites it saw attached.
pub(crate) fn check_authority(url: String) -> usize {
    let mut history = AuthorityHistory::new();
    for (seq, record) in whole_log(url) {
        if let Record::Tenancy(entry) = record {
            history
                .check(seq.get(), &entry.event, entry.at)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    usize::try_from(history.attachments()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_on_any_node_survive_a_node_killed() {
    let mut c = Cluster::start(3, &["SMILE01", "GRIN02"]).await;
    // Every practice through every node (forwarded where its Link is elsewhere;
    // a node learns a lease within one renewal round).
    for node in &c.nodes {
        for site in &c.sites {
            until_ok(&node.client, &c.key, *site, Duration::from_secs(10)).await;
        }
    }
    // Async queries too: accepted through every node (forwarded to, and run by,
    // the node holding the Link), followed and read through the next node.
    for (n, node) in c.nodes.iter().enumerate() {
        for site in &c.sites {
            let reader = &c.nodes[(n + 1) % c.nodes.len()].client;
            async_through(&node.client, reader, &c.key, *site).await;
        }
    }
    // A change acknowledged by node 0 just before it dies.
    let issued = c.nodes[0].client.credential("SMILE01").await;
    let listed = c.nodes[0]
        .client
        .admin(Method::GET, "/admin/link-credentials", Value::Null)
        .await;
    let credentials = listed.to_string().matches("\"id\"").count();
    assert!(credentials >= 3, "{listed}");
    assert!(!issued.is_empty());

    // kill -9 the node carrying the first Link.
    let killed_at = Instant::now();
    c.nodes[0].process.take().unwrap().kill();
    // Immediately: the other nodes answer 503 with Retry-After (the Link waits 2 s
    // before it reconnects), never anything else, then succeed within 10 s.
    let mut gap = Vec::new();
    for node in &c.nodes[1..] {
        let (status, retry, body) = immediate(&node.client, &c.key, c.sites[0]).await;
        gap.push(status);
        assert!(
            status == 503 && retry,
            "{}: {status} {body}",
            node.client.base
        );
    }
    for node in &c.nodes[1..] {
        until_ok(&node.client, &c.key, c.sites[0], Duration::from_secs(10)).await;
    }
    let moved = killed_at.elapsed();
    assert!(
        moved < Duration::from_secs(10),
        "the link took {moved:?} to move"
    );
    // The other Link was never on the dead node: still served everywhere, by the
    // session it opened first; the first Link opened a second one elsewhere.
    for node in &c.nodes[1..] {
        until_ok(&node.client, &c.key, c.sites[1], Duration::from_secs(10)).await;
    }
    assert_eq!(c.sessions(1), 1);
    assert!(c.sessions(0) >= 2, "{}", c.sessions(0));
    // Nothing acknowledged was lost: the survivors list the credential node 0 issued.
    for node in &c.nodes[1..] {
        let listed = node
            .client
            .admin(Method::GET, "/admin/link-credentials", Value::Null)
            .await;
        assert_eq!(
            listed.to_string().matches("\"id\"").count(),
            credentials,
            "{listed}"
        );
    }
    // The whole log: two sites attached, never two holders, epochs never back.
    assert_eq!(check_authority(c.server.url()), 2);
    eprintln!("503s in the gap: {gap:?}; the link moved in {moved:?}");
}

fn signature(secret: &str, fields: [&str; 6], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for field in std::iter::once("halo-forward-v1").chain(fields) {
        mac.update(&(field.len() as u64).to_le_bytes());
        mac.update(field.as_bytes());
    }
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_request_needs_the_cluster_signature() {
    let c = Cluster::start(3, &["SMILE01", "GRIN02"]).await;
    let site = c.sites[1];
    // Node 1 holds the second Link's lease; wait until it serves it.
    let owner = &c.nodes[1].client;
    until_ok(owner, &c.key, site, Duration::from_secs(10)).await;
    let path = format!("/integrator/sites/{site}/queries/immediate");
    let body = json!({"command": {"text": QUERY}}).to_string();
    let send = |secret: Option<&str>, at: String, node: &str| {
        let mut req = owner
            .http
            .post(format!("{}{path}", owner.base))
            .header(halo_cloud::KEY_HEADER, &c.key)
            .header("content-type", "application/json")
            .header("x-halo-forwarded-by", node)
            .header("x-halo-forwarded-for", "10.1.2.3")
            .header("x-halo-forwarded-at", &at)
            .body(body.clone());
        if let Some(secret) = secret {
            let sig = signature(
                secret,
                ["POST", &path, node, "10.1.2.3", &at, &c.key],
                body.as_bytes(),
            );
            req = req.header("x-halo-forward-signature", sig);
        }
        req.send()
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .to_string()
    };
    // No signature, a wrong secret, a stale timestamp: refused.
    for (secret, at) in [
        (None, now()),
        (Some("another-secret-of-enough-length-0123456789"), now()),
        (Some(SECRET), "1000".to_owned()),
    ] {
        let resp = send(secret, at, "n0").await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 401, "{secret:?}: {text}");
    }
    // A body changed after signing: refused.
    let at = now();
    let sig = signature(
        SECRET,
        ["POST", &path, "n0", "10.1.2.3", &at, &c.key],
        b"{}",
    );
    let resp = owner
        .http
        .post(format!("{}{path}", owner.base))
        .header(halo_cloud::KEY_HEADER, &c.key)
        .header("content-type", "application/json")
        .header("x-halo-forwarded-by", "n0")
        .header("x-halo-forwarded-for", "10.1.2.3")
        .header("x-halo-forwarded-at", &at)
        .header("x-halo-forward-signature", sig)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Signed with the cluster's secret: run (so the refusals above were the
    // signature's doing), with the policy evaluated again on this node.
    let resp = send(Some(SECRET), now(), "n0").await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    // Even correctly signed, a forwarded request with a wrong key is denied here.
    let at = now();
    let sig = signature(
        SECRET,
        ["POST", &path, "n0", "10.1.2.3", &at, "wrong-key"],
        body.as_bytes(),
    );
    let resp = owner
        .http
        .post(format!("{}{path}", owner.base))
        .header(halo_cloud::KEY_HEADER, "wrong-key")
        .header("content-type", "application/json")
        .header("x-halo-forwarded-by", "n0")
        .header("x-halo-forwarded-for", "10.1.2.3")
        .header("x-halo-forwarded-at", &at)
        .header("x-halo-forward-signature", sig)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // A node that does not hold the Link never forwards a forwarded request again.
    let other = &c.nodes[2].client;
    let at = now();
    let sig = signature(
        SECRET,
        ["POST", &path, "n0", "10.1.2.3", &at, &c.key],
        body.as_bytes(),
    );
    let resp = other
        .http
        .post(format!("{}{path}", other.base))
        .header(halo_cloud::KEY_HEADER, &c.key)
        .header("content-type", "application/json")
        .header("x-halo-forwarded-by", "n0")
        .header("x-halo-forwarded-for", "10.1.2.3")
        .header("x-halo-forwarded-at", &at)
        .header("x-halo-forward-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_loses_the_database_stops_routing_to_its_links_and_recovers() {
    let mut c = Cluster::start(3, &["SMILE01", "GRIN02"]).await;
    let own = &c.nodes[0].client;
    until_ok(own, &c.key, c.sites[0], Duration::from_secs(10)).await;
    c.server.pause();
    // Node 0 cannot renew the first Link's lease: once it would have lapsed (6 s
    // after the last renewal) node 0 stops routing to its own Link, with 503 and
    // Retry-After, never anything else.
    let paused = Instant::now();
    loop {
        let (status, retry, body) = immediate(own, &c.key, c.sites[0]).await;
        if status == 503 {
            assert!(retry, "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            paused.elapsed() < Duration::from_secs(20),
            "node 0 still routes to its link {:?} after losing the database",
            paused.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stopped = paused.elapsed();
    c.server.resume();
    // It recovers by itself: the Link is attached again (to whichever node) and
    // every node serves both practices.
    for node in &c.nodes {
        for site in &c.sites {
            until_ok(&node.client, &c.key, *site, Duration::from_secs(30)).await;
        }
    }
    eprintln!("node 0 stopped routing {stopped:?} after the database was paused");
    assert_eq!(check_authority(c.server.url()), 2);
}
