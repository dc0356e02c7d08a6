//! Kill-and-restart test: run the real `halo-cloud` binary, register sites over the
//! Link WebSocket, grant access and move authority in a loop, SIGKILL it at random
//! moments, restart it on the same data directory, and check that every change that
//! was acknowledged to a client survived and that the authority invariants hold.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType};
use halo_protocol::{
    CatalogueInfo, CloudToLink, DatabaseInfo, Hello, LinkToCloud, PROTOCOL_VERSION,
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod support;
use support::{CloudProcess, start_cloud};

const ADMIN: &str = "crash-test-admin-token-0123";
const KILLS: usize = 24;
const CRNS: [&str; 4] = ["CRASH0", "CRASH1", "CRASH2", "CRASH3"];

/// What clients were told succeeded (and what might have, when the kill came mid-call).
#[derive(Debug, Default, Clone)]
struct Acked {
    /// Registered sites and their group CRN.
    sites: BTreeMap<HaloGuid, Crn>,
    /// Practices enabled for the integrator.
    practices: BTreeSet<Crn>,
    /// Per group: the last acknowledged promotion (site, epoch), and whether a later
    /// promotion of the group was in flight at a kill (its outcome is unknown).
    promotions: BTreeMap<Crn, (HaloGuid, u64, bool)>,
    /// The subscription key, once acknowledged.
    key: Option<String>,
    /// The operation in flight, if any.
    in_flight: Option<(Crn, HaloGuid)>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn spawn_cloud(dir: &std::path::Path) -> (CloudProcess, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_halo-cloud"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--snapshot-every",
            "7",
            "--admin-token",
            ADMIN,
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit());
    start_cloud(command)
}

/// An admin call: `None` if the Cloud went away, the status and body otherwise.
async fn call(
    http: &reqwest::Client,
    addr: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Option<(u16, Value)> {
    let resp = http
        .request(method, format!("http://{addr}{path}"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let text = resp.text().await.ok()?;
    Some((
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("json")
        },
    ))
}

/// An admin call that must succeed if it is answered at all.
async fn admin(
    http: &reqwest::Client,
    addr: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Option<Value> {
    let (status, value) = call(http, addr, method, path, body).await?;
    assert!((200..300).contains(&status), "{path}: {status} {value}");
    Some(value)
}

/// Registers one site as a fresh Link; returns once the hello is acknowledged.
async fn register(http: &reqwest::Client, addr: &str, rng: &mut Rng, crn: Crn) -> Option<HaloGuid> {
    let token = admin(
        http,
        addr,
        reqwest::Method::POST,
        "/admin/link-credentials",
        json!({"label": "crash", "environment": "stage", "practices": [format!("D4w:{crn}")]}),
    )
    .await?["key"]
        .as_str()?
        .to_owned();
    let mut request = format!("ws://{addr}/link/ws").into_client_request().ok()?;
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().ok()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.ok()?;
    let halo =
        HaloGuid::from_u128(u128::from(rng.next()) << 64 | u128::from(rng.next()) | 1).ok()?;
    let hello = LinkToCloud::Hello(Hello {
        link_guid: LinkGuid::from_u128(u128::from(rng.next()) << 64 | 1).ok()?,
        environment: Environment::Stage,
        link_version: "crash-test".to_owned(),
        protocol_version: PROTOCOL_VERSION,
        databases: vec![DatabaseInfo {
            halo_guid: halo,
            pms_type: PmsType::D4w,
            parent_crn: crn,
            branch_crns: Vec::new(),
            practice_name: format!("Practice {crn}"),
            pms_version: "1".to_owned(),
            catalogues: vec![CatalogueInfo {
                name: "d4w".to_owned(),
                is_default: true,
            }],
            is_demo: false,
        }],
    });
    let text = halo_protocol::encode(&hello).ok()?;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
        .await
        .ok()?;
    while let Some(Ok(msg)) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            match halo_protocol::decode::<CloudToLink>(&t).ok()? {
                CloudToLink::HelloAck { rejected, .. } => {
                    assert!(rejected.is_empty(), "{rejected:?}");
                    let _ = ws.close(None).await;
                    return Some(halo);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    None
}

/// One client's workload until it is aborted by the kill.
async fn workload(addr: String, acked: Arc<Mutex<Acked>>, seed: u64) {
    let http = reqwest::Client::new();
    let mut rng = Rng(seed | 1);
    if acked.lock().key.is_none() {
        let base = "/admin/integrators/crash-test";
        if admin(
            &http,
            &addr,
            reqwest::Method::POST,
            &format!("{base}/enable"),
            json!({"pmsType": "D4w"}),
        )
        .await
        .is_none()
        {
            return;
        }
        let Some(k) = admin(
            &http,
            &addr,
            reqwest::Method::POST,
            &format!("{base}/keys"),
            json!({"environment": "stage"}),
        )
        .await
        else {
            return;
        };
        acked.lock().key = k["key"].as_str().map(str::to_owned);
    }
    loop {
        let crn: Crn = CRNS[rng.below(CRNS.len() as u64) as usize]
            .parse()
            .expect("crn");
        match rng.below(3) {
            0 => {
                let Some(halo) = register(&http, &addr, &mut rng, crn).await else {
                    return;
                };
                acked.lock().sites.insert(halo, crn);
            }
            1 => {
                let body = json!({"pmsId": format!("D4w:{crn}")});
                if admin(
                    &http,
                    &addr,
                    reqwest::Method::POST,
                    "/admin/integrators/crash-test/practices",
                    body,
                )
                .await
                .is_none()
                {
                    return;
                }
                acked.lock().practices.insert(crn);
            }
            _ => {
                let candidates: Vec<HaloGuid> = acked
                    .lock()
                    .sites
                    .iter()
                    .filter(|(_, c)| **c == crn)
                    .map(|(h, _)| *h)
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let site = candidates[rng.below(candidates.len() as u64) as usize];
                acked.lock().in_flight = Some((crn, site));
                let body = json!({"actor": "crash-test", "reason": "migration"});
                let Some((status, answer)) = call(
                    &http,
                    &addr,
                    reqwest::Method::POST,
                    &format!("/admin/sites/{site}/promote"),
                    body,
                )
                .await
                else {
                    return;
                };
                if status == 409 {
                    // Already the holder: nothing changed.
                    acked.lock().in_flight = None;
                    continue;
                }
                assert_eq!(status, 200, "promote: {answer}");
                let epoch = answer["epoch"].as_u64().expect("epoch");
                let mut a = acked.lock();
                a.in_flight = None;
                a.promotions.insert(crn, (site, epoch, false));
            }
        }
    }
}

async fn verify(addr: &str, acked: &Acked) {
    let http = reqwest::Client::new();
    let mut by_group: BTreeMap<Crn, Vec<(HaloGuid, bool, u64)>> = BTreeMap::new();
    for (halo, crn) in &acked.sites {
        let site = admin(
            &http,
            addr,
            reqwest::Method::GET,
            &format!("/admin/sites/{halo}"),
            Value::Null,
        )
        .await
        .expect("cloud answers");
        let auth = site["site"]["authoritative"].as_bool().expect("flag");
        let epoch = site["epoch"].as_u64().expect("epoch");
        by_group.entry(*crn).or_default().push((*halo, auth, epoch));
    }
    for (crn, sites) in &by_group {
        let holders: Vec<_> = sites.iter().filter(|s| s.1).collect();
        assert!(
            holders.len() <= 1,
            "group {crn} has {} authoritative sites",
            holders.len()
        );
        assert!(!holders.is_empty(), "group {crn} lost its holder");
        if let Some((site, epoch, uncertain)) = acked.promotions.get(crn) {
            let current = sites[0].2;
            assert!(
                current >= *epoch,
                "group {crn}: epoch went back from {epoch} to {current}"
            );
            if !uncertain {
                assert_eq!(
                    holders[0].0, *site,
                    "group {crn}: acknowledged promotion lost"
                );
            }
        }
    }
    verify_audit(&http, addr, acked, &by_group).await;
    if let Some(key) = &acked.key {
        for crn in &acked.practices {
            if !by_group.contains_key(crn) {
                continue;
            }
            let resp = http
                .get(format!(
                    "http://{addr}/integrator/sites?practiceManagementSiteId={crn}&practiceManagementName=D4w"
                ))
                .header("Ocp-Apim-Subscription-Key", key)
                .send()
                .await
                .expect("find sites");
            assert_eq!(
                resp.status().as_u16(),
                200,
                "practice {crn} enablement lost"
            );
        }
    }
}

/// Every audit entry of the trail, newest first, read page by page.
async fn audit_trail(http: &reqwest::Client, addr: &str, query: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = admin(
            http,
            addr,
            reqwest::Method::GET,
            &format!("/admin/audit?limit=200&{query}{cursor}"),
            Value::Null,
        )
        .await
        .expect("cloud answers");
        all.extend(page["entries"].as_array().expect("entries").iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return all,
        }
    }
}

/// The audit trail went down with its changes, in the same batches: ids never
/// repeat, every authority change of a group is there exactly once (its epochs are
/// 1, 2, ... up to the group's current epoch, with no gap), every acknowledged
/// promotion and practice has its entry.
async fn verify_audit(
    http: &reqwest::Client,
    addr: &str,
    acked: &Acked,
    by_group: &BTreeMap<Crn, Vec<(HaloGuid, bool, u64)>>,
) {
    let all = audit_trail(http, addr, "").await;
    let ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().expect("id")).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "audit ids repeat or go back"
    );
    for (crn, sites) in by_group {
        let changes = audit_trail(
            http,
            addr,
            &format!("kind=authorityChanged&practice=D4w:{crn}"),
        )
        .await;
        let mut epochs: Vec<u64> = changes
            .iter()
            .map(|e| e["epoch"].as_u64().expect("epoch"))
            .collect();
        epochs.reverse();
        let current = sites[0].2;
        assert_eq!(
            epochs,
            (1..=current).collect::<Vec<_>>(),
            "group {crn}: the audit trail's authority changes do not match its epoch"
        );
        if let Some((site, epoch, false)) = acked.promotions.get(crn) {
            assert!(
                changes.iter().any(|e| e["epoch"] == *epoch
                    && e["haloGuid"] == site.to_string()
                    && e["actor"] == "crash-test"),
                "group {crn}: acknowledged promotion to epoch {epoch} not in the trail"
            );
        }
    }
    for crn in &acked.practices {
        assert!(
            all.iter()
                .any(|e| e["kind"] == "practiceEnabled" && e["practice"] == format!("D4w:{crn}")),
            "practice {crn}: acknowledged enablement not in the trail"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(42);
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed | 1);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let started = Instant::now();
    for round in 0..KILLS {
        let (mut child, addr) = spawn_cloud(dir.path());
        // The state from before the kill must all be there.
        let before = acked.lock().clone();
        verify(&addr, &before).await;
        let task = tokio::spawn(workload(addr.clone(), Arc::clone(&acked), rng.next()));
        tokio::time::sleep(Duration::from_millis(50 + rng.below(400))).await;
        child.sigkill();
        task.abort();
        let _ = task.await;
        let mut a = acked.lock();
        if let Some((crn, _)) = a.in_flight.take() {
            if let Some(p) = a.promotions.get_mut(&crn) {
                p.2 = true;
            }
        }
        eprintln!(
            "round {round}: {} sites, {} practices, {} groups promoted",
            a.sites.len(),
            a.practices.len(),
            a.promotions.len()
        );
    }
    let (mut child, addr) = spawn_cloud(dir.path());
    let last = acked.lock().clone();
    verify(&addr, &last).await;
    child.sigkill();
    let a = acked.lock();
    assert!(
        a.sites.len() >= 10,
        "the workload did too little to test anything: {a:?}"
    );
    eprintln!("{KILLS} kills in {:?}", started.elapsed());
}
