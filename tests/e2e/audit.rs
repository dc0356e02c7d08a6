//! The audit trail: support actions, authority changes and sampled route denials
//! are recorded, read back through `GET /admin/audit` with filters and paging, and
//! survive a restart.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use halo_ids::Environment;
use serde_json::{Value, json};

use crate::fixture::{ADMIN, Harness, INTEGRATOR, TABLES, practice};

/// An admin call naming its actor and reason in the headers; panics unless it
/// succeeds.
async fn admin_as(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    body: Value,
    actor: &str,
    reason: &str,
) -> Value {
    let resp = h
        .http
        .request(method, h.url(path))
        .bearer_auth(ADMIN)
        .header("X-Halo-Actor", actor)
        .header("X-Halo-Reason", reason)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// `GET /admin/audit?{query}`: status and body.
async fn audit_raw(h: &Harness, query: &str) -> (u16, Value) {
    let resp = h
        .http
        .get(h.url(&format!("/admin/audit?{query}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The entries of one successful audit page.
async fn audit(h: &Harness, query: &str) -> Vec<Value> {
    let (status, body) = audit_raw(h, query).await;
    assert_eq!(status, 200, "{query}: {body}");
    body["entries"].as_array().unwrap().clone()
}

fn kinds(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect()
}

/// Every entry matching `query`, page by page (`limit` each), checking that pages
/// are newest first and never repeat an entry.
async fn walk(h: &Harness, query: &str, limit: usize) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("{query}&limit={limit}&cursor={c}"),
            None => format!("{query}&limit={limit}"),
        };
        let (status, body) = audit_raw(h, &q).await;
        assert_eq!(status, 200, "{q}: {body}");
        let page = body["entries"].as_array().unwrap();
        assert!(page.len() <= limit);
        all.extend(page.iter().cloned());
        match body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats: {ids:?}"
    );
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_actions_are_recorded_filtered_paged_and_survive_a_restart() {
    let mut h = Harness::start().await;
    let link = h
        .link(Environment::Stage, &[practice("AB123", "Smile Co")])
        .await;
    let base = format!("/admin/integrators/{INTEGRATOR}");
    admin_as(
        &h,
        reqwest::Method::POST,
        &format!("{base}/enable"),
        json!({"pmsType": "D4w"}),
        "alice",
        "onboarding ticket 42",
    )
    .await;
    admin_as(
        &h,
        reqwest::Method::PUT,
        &format!("{base}/components"),
        json!({"pmsType": "D4w", "catalogues": ["d4w"], "tables": TABLES}),
        "alice",
        "vendor approval 7",
    )
    .await;
    let key = admin_as(
        &h,
        reqwest::Method::POST,
        &format!("{base}/keys"),
        json!({"environment": "stage"}),
        "bob",
        "first key",
    )
    .await;
    let key = key["key"].as_str().unwrap().to_owned();
    admin_as(
        &h,
        reqwest::Method::POST,
        &format!("{base}/practices"),
        json!({"pmsId": "D4w:AB123"}),
        "alice",
        "practice consented",
    )
    .await;
    let spare = h
        .admin(
            reqwest::Method::POST,
            "/admin/link-credentials",
            json!({"label": "spare", "environment": "stage", "practices": ["D4w:AB123"], "actor": "carol"}),
        )
        .await;
    let spare_id = spare["id"].as_str().unwrap().to_owned();
    h.admin(
        reqwest::Method::POST,
        &format!("/admin/link-credentials/{spare_id}/revoke"),
        json!({"actor": "carol", "reason": "issued by mistake"}),
    )
    .await;

    // One entry per key issued, with who, why, what and where; never the key.
    let issued = audit(&h, "kind=keyIssued").await;
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["actor"], "bob");
    assert_eq!(issued[0]["reason"], "first key");
    assert_eq!(issued[0]["integrator"], INTEGRATOR);
    assert_eq!(issued[0]["environment"], "stage");
    assert!(
        !issued[0].to_string().contains(&key),
        "the key never appears"
    );

    // By actor.
    let alice = audit(&h, "actor=alice").await;
    assert_eq!(
        kinds(&alice),
        vec![
            "practiceEnabled",
            "componentsAuthorised",
            "integratorEnabled"
        ]
    );
    assert_eq!(alice[2]["reason"], "onboarding ticket 42");

    // Credential actions, with the actor and reason of the body.
    let creds = audit(
        &h,
        "kind=credentialIssued,credentialRevoked,credentialBound",
    )
    .await;
    assert_eq!(
        kinds(&creds),
        vec![
            "credentialRevoked",
            "credentialIssued",
            "credentialBound",
            "credentialIssued"
        ]
    );
    assert_eq!(creds[0]["credential"], spare_id);
    assert_eq!(creds[0]["reason"], "issued by mistake");
    assert_eq!(creds[1]["actor"], "carol");
    assert_eq!(
        creds[2]["linkGuid"],
        link.handle.link_guid().to_string(),
        "the binding names its Link"
    );

    // By practice: the support action and the group's first holder.
    let ab = audit(&h, "practice=D4w:AB123").await;
    assert!(kinds(&ab).contains(&"practiceEnabled"), "{ab:?}");
    let first = ab
        .iter()
        .find(|e| e["kind"] == "authorityChanged")
        .expect("the first join is an authority change");
    assert_eq!(first["epoch"], 1);
    assert_eq!(first["haloGuid"], link.sites[0].1.to_string());

    // By time range: [from, to) around the key's entry.
    let at = issued[0]["atMs"].as_u64().unwrap();
    let window = audit(&h, &format!("from={at}&to={}", at + 1)).await;
    assert!(window.iter().any(|e| e["kind"] == "keyIssued"));
    assert!(window.iter().all(|e| e["atMs"].as_u64().unwrap() == at));
    assert!(audit(&h, &format!("from={}", at + 60_000)).await.is_empty());

    // Paging walks every entry once, newest first, and agrees with one big page.
    let everything = audit(&h, "limit=500").await;
    assert!(everything.len() >= 9, "{}", everything.len());
    let walked = walk(&h, "kind=", 3).await;
    assert_eq!(walked, everything);
    let filtered = walk(&h, "actor=alice", 2).await;
    assert_eq!(filtered, alice);

    // A restart reads the same trail back from the log.
    link.handle.shutdown().await.unwrap();
    let h = h.restart().await;
    let again = audit(&h, "limit=500").await;
    assert_eq!(again, everything);
    assert_eq!(audit(&h, "actor=alice").await, alice);
    // And the trail goes on after it: ids keep growing.
    admin_as(
        &h,
        reqwest::Method::POST,
        &format!("{base}/practices"),
        json!({"pmsId": "D4w:ZZ999"}),
        "erin",
        "after the restart",
    )
    .await;
    let after = audit(&h, "limit=1").await;
    assert_eq!(after[0]["actor"], "erin");
    assert!(after[0]["id"].as_u64() > everything[0]["id"].as_u64());
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_changes_and_promotions_are_recorded_with_epochs() {
    let mut h = Harness::start().await;
    let first = h
        .link(
            Environment::Stage,
            &[practice("HARBOUR01", "Harbour Dental")],
        )
        .await;
    let second = h
        .link(
            Environment::Stage,
            &[practice("HARBOUR01", "Harbour Dental")],
        )
        .await;
    let (old, new) = (first.sites[0].1, second.sites[0].1);
    h.admin(
        reqwest::Method::POST,
        &format!("/admin/sites/{new}/promote"),
        json!({"actor": "dave", "reason": "migrated to the new server"}),
    )
    .await;

    let changes = audit(&h, "kind=authorityChanged&practice=D4w:HARBOUR01").await;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0]["epoch"], 2);
    assert_eq!(changes[0]["haloGuid"], new.to_string());
    assert_eq!(changes[0]["actor"], "dave");
    assert_eq!(changes[0]["reason"], "migrated to the new server");
    assert_eq!(changes[1]["epoch"], 1);
    assert_eq!(changes[1]["haloGuid"], old.to_string());
    assert_eq!(changes[1]["environment"], "stage");

    let promoted = audit(&h, "kind=sitePromoted").await;
    assert_eq!(promoted.len(), 1);
    assert_eq!(promoted[0]["haloGuid"], new.to_string());
    assert_eq!(promoted[0]["actor"], "dave");

    // By site: the promotion and the change it caused, nothing of the other site.
    let by_site = audit(&h, &format!("site={new}")).await;
    assert_eq!(kinds(&by_site), vec!["authorityChanged", "sitePromoted"]);
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_denials_are_sampled_and_their_counts_add_up() {
    let mut h = Harness::start().await;
    h.cloud
        .app
        .activity
        .set_sample_window(Duration::from_secs(5));
    let link = h
        .link(Environment::Stage, &[practice("AB123", "Smile Co")])
        .await;
    let key = h.integrator(Environment::Stage).await;
    h.enable_practice(link.sites[0].0).await;
    let (status, body) = h.pair(&key, link.sites[0].0).await;
    assert_eq!(status, 200, "{body}");
    let halo = link.sites[0].1;
    const DENIED: u64 = 12;
    for _ in 0..DENIED {
        let (status, body) = h.query(&key, halo, "SELECT * FROM practice_info").await;
        assert_eq!(status, 403, "{body}");
    }
    for _ in 0..5 {
        let (status, _) = h.query("not-a-key", halo, "SELECT 1").await;
        assert_eq!(status, 401);
    }
    let (status, _) = h.query(&key, halo, "SELECT count(*) FROM patients").await;
    assert_eq!(status, 200, "allowed queries are not audited");

    // The first denial of each pair is written at once (queued, not awaited by
    // the request), with its site.
    let deadline = Instant::now() + Duration::from_secs(5);
    let now = loop {
        let now = audit(&h, "kind=routeDenied").await;
        if now.iter().any(|e| e["code"] == "componentNotAuthorised") {
            break now;
        }
        assert!(Instant::now() < deadline, "no denial was recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mine: Vec<&Value> = now
        .iter()
        .filter(|e| e["code"] == "componentNotAuthorised")
        .collect();
    assert_eq!(mine.len(), 1, "{now:?}");
    assert_eq!(mine[0]["count"], 1);
    assert_eq!(mine[0]["integrator"], INTEGRATOR);
    assert_eq!(mine[0]["haloGuid"], halo.to_string());

    // The rest are counted and written once the window has passed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mine, anonymous) = loop {
        let entries = audit(&h, "kind=routeDenied").await;
        let count = |code: &str| -> (usize, u64) {
            let of: Vec<&Value> = entries.iter().filter(|e| e["code"] == code).collect();
            (
                of.len(),
                of.iter().map(|e| e["count"].as_u64().unwrap()).sum(),
            )
        };
        let (mine, anonymous) = (count("componentNotAuthorised"), count("unknownKey"));
        if mine.1 == DENIED && anonymous.1 == 5 {
            break (mine, anonymous);
        }
        assert!(
            Instant::now() < deadline,
            "denial counts never added up: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        mine.0, 2,
        "sampled: the first denial, then the rest in one entry"
    );
    assert_eq!(anonymous.0, 2);
    let by_integrator = audit(&h, &format!("kind=routeDenied&integrator={INTEGRATOR}")).await;
    assert!(
        by_integrator
            .iter()
            .all(|e| e["code"] == "componentNotAuthorised")
    );
    h.cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_queries_are_checked() {
    let h = Harness::start().await;
    for (query, needle) in [
        ("kind=keyIssued,nope", "unknown audit kind"),
        ("practice=AB123", "practice"),
        ("site=not-a-guid", "site"),
        ("from=yesterday", "from"),
        ("from=2000&to=1000", "from must be before to"),
        ("cursor=abc", "cursor"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("colour=blue", "unknown field"),
    ] {
        let (status, body) = audit_raw(&h, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }
    let resp = h.http.get(h.url("/admin/audit")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = h
        .http
        .get(h.url("/admin/audit"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let ids: HashSet<u64> = audit(&h, "")
        .await
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert!(ids.is_empty(), "a fresh Cloud has an empty trail");
    h.cloud.stop().await;
}
