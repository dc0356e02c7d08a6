//! SIGKILL of a real `halo-cloud` process during async work, three times over.
//! Afterwards every query it accepted (201) ends in a terminal status that can be
//! read, the results of the successful ones stay readable, and every one of them
//! was notified by a webhook that verifies (none lost, none unsigned). Every query
//! here is a read, so every one of them, queued, executing or uploading when its
//! Cloud was killed, is dispatched again by the next process and ends successful.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use halo_ids::{Environment, HaloGuid};
use halo_link::demo::generate;
use halo_link::{Agent, AgentHandle, LinkConfig};
use reqwest::Method;
use serde_json::{Value, json};

use crate::fixture::{INTEGRATOR, practice};
use crate::processes::{Client, CloudProcess, free_port};
use crate::webhooks::{SECRET, assert_payload, receiver};

const TERMINAL_WAIT: Duration = Duration::from_secs(90);

async fn wait_terminal(client: &Client, key: &str, path: &str) -> Value {
    let deadline = Instant::now() + TERMINAL_WAIT;
    loop {
        if let Ok((200, body)) = client.call(Method::GET, key, path, None).await {
            let s = body["status"].as_str().unwrap_or_default().to_owned();
            if !["initialising", "queued", "executing", "uploading"].contains(&s.as_str()) {
                return body;
            }
        }
        assert!(Instant::now() < deadline, "{path} not terminal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the Link of `config`, waits for it to attach and pairs the integrator with
/// its practice (SMILE01); answers the site and the running Link.
async fn start_and_pair(client: &Client, key: &str, config: LinkConfig) -> (HaloGuid, AgentHandle) {
    let agent = Agent::prepare(config).unwrap();
    let site = agent.databases()[0].halo_guid();
    let link = agent.spawn();
    link.wait_connected(1, Duration::from_secs(10))
        .await
        .unwrap();
    let (status, body) = client
        .call(
            Method::POST,
            key,
            "/integrator/pair-site?practiceManagementSiteId=SMILE01&practiceManagementName=D4w",
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    (site, link)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_async_work_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cloud");
    let port = free_port();
    let flags = ["--page-bytes", "16384", "--webhook-retry-base", "100ms"];
    let mut cloud = CloudProcess::start(&data, port, &flags);
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    cloud.wait_ready(&client.http).await;

    let mut p = practice("SMILE01", "Smile Dental");
    p.patients = 300;
    let db = dir.path().join("db.sqlite");
    generate(&db, &p).unwrap();
    let token = client.credential("SMILE01").await;
    let key = client.integrator("SMILE01").await;
    let mut config = LinkConfig::new(
        format!("ws://127.0.0.1:{port}/link/ws"),
        Environment::Stage,
        token,
        dir.path().join("link-state.json"),
        vec![db],
    );
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(200);
    let (site, link) = start_and_pair(&client, &key, config).await;
    let (r, hooks) = receiver(0).await;
    client
        .admin(
            Method::PUT,
            &format!("/admin/integrators/{INTEGRATOR}/webhooks"),
            json!({"url": format!("{hooks}/hooks/{{queryId}}"), "secret": SECRET}),
        )
        .await;

    let queries = [
        "SELECT first_name FROM patients",
        "SELECT a.first_name, b.last_name FROM patients a, patients b",
        "SELECT count(*) FROM patients a, patients b, patients c",
        "SELECT last_name FROM patients WHERE patient_id < 20",
    ];
    let mut accepted: Vec<String> = Vec::new();
    // Queries seen unfinished just before a kill.
    let mut killed_in_flight = 0;
    for round in 0..3u64 {
        for i in 0..8 {
            let body = json!({"command": {"text": queries[i % queries.len()]}});
            let path = format!("/integrator/sites/{site}/queries/async");
            if let Ok((status, created)) = client.call(Method::POST, &key, &path, Some(body)).await
            {
                assert_eq!(status, 201, "{created}");
                accepted.push(created["id"].as_str().unwrap().to_owned());
            }
        }
        // Kill at a different point of the work each round.
        tokio::time::sleep(Duration::from_millis(40 + 120 * round)).await;
        for id in &accepted {
            let path = format!("/integrator/sites/{site}/queries/{id}");
            if let Ok((200, q)) = client.call(Method::GET, &key, &path, None).await {
                if ["queued", "executing", "uploading"]
                    .contains(&q["status"].as_str().unwrap_or(""))
                {
                    killed_in_flight += 1;
                }
            }
        }
        cloud.kill();
        cloud = CloudProcess::start(&data, port, &flags);
        cloud.wait_ready(&client.http).await;
        link.wait_connected(round + 2, Duration::from_secs(30))
            .await
            .unwrap();
    }
    // Work after the last restart runs to the end.
    let path = format!("/integrator/sites/{site}/queries/async");
    let body = json!({"command": {"text": queries[1]}});
    let (status, created) = client
        .call(Method::POST, &key, &path, Some(body))
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    accepted.push(created["id"].as_str().unwrap().to_owned());

    let mut successful = 0;
    let mut statuses = Vec::new();
    for id in &accepted {
        let q = wait_terminal(
            &client,
            &key,
            &format!("/integrator/sites/{site}/queries/{id}"),
        )
        .await;
        statuses.push(q["status"].as_str().unwrap().to_owned());
        if q["status"] == "successful" {
            successful += 1;
            // Every page is readable, and holds the rows it says.
            for page in q["result"]["pages"].as_array().unwrap() {
                let n = page["pageNumber"].as_u64().unwrap();
                let (status, body) = client
                    .call(
                        Method::GET,
                        &key,
                        &format!("/integrator/sites/{site}/queries/{id}/results/{n}"),
                        None,
                    )
                    .await
                    .unwrap();
                assert_eq!(status, 200, "{id} page {n}: {body}");
            }
        } else {
            assert!(
                q["errorMessage"].is_string()
                    || q["status"] == "expiredInQueue"
                    || q["status"] == "initialisationFailedSiteOffline",
                "a failure says why: {q}"
            );
        }
    }
    // Accepted before a kill, completed afterwards: nothing accepted was lost.
    assert_eq!(successful, accepted.len(), "{statuses:?}");
    assert!(
        killed_in_flight > 0,
        "no query was still running at a kill: {statuses:?}"
    );
    eprintln!(
        "crash test: {} accepted, statuses {statuses:?}",
        accepted.len()
    );

    // Every accepted query was notified, signed; nothing unsigned arrived.
    let wanted: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = r.seen.lock().unwrap().clone();
        assert!(
            seen.iter().all(|d| d.verified),
            "an unsigned or stale delivery"
        );
        let notified: HashSet<String> = seen
            .iter()
            .map(|d| {
                assert_payload(d, "async")["queryId"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        let missing: Vec<&&str> = wanted
            .iter()
            .filter(|id| !notified.contains(**id))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not notified: {missing:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    link.kill();
    cloud.kill();
}

/// A query accepted before a kill is decided again when it is dispatched again:
/// its key, revoked while the Cloud was restarting and its Link away, denies it
/// (deny by default), and it ends `executionFailed` with 401 and its webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_dispatched_again_after_a_restart_is_denied_once_its_key_is_revoked() {
    use sha2::Digest as _;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cloud");
    let port = free_port();
    let flags = ["--page-bytes", "512"];
    let mut cloud = CloudProcess::start(&data, port, &flags);
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    cloud.wait_ready(&client.http).await;
    let mut p = practice("SMILE01", "Smile Dental");
    p.patients = 40;
    let db = dir.path().join("db.sqlite");
    generate(&db, &p).unwrap();
    let token = client.credential("SMILE01").await;
    let key = client.integrator("SMILE01").await;
    let link_config = || {
        let mut config = LinkConfig::new(
            format!("ws://127.0.0.1:{port}/link/ws"),
            Environment::Stage,
            token.clone(),
            dir.path().join("link-state.json"),
            vec![db.clone()],
        );
        config.backoff_initial = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(200);
        config
    };
    let (site, link) = start_and_pair(&client, &key, link_config()).await;

    // A long paged read, running when the Cloud is killed.
    let endless =
        "SELECT a.first_name, b.last_name, c.first_name FROM patients a, patients b, patients c";
    let (status, created) = client
        .call(
            Method::POST,
            &key,
            &format!("/integrator/sites/{site}/queries/async"),
            Some(json!({"command": {"text": endless}})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/integrator/sites/{site}/queries/{id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, q) = client.call(Method::GET, &key, &path, None).await.unwrap();
        if q["status"] == "uploading" {
            break;
        }
        assert!(Instant::now() < deadline, "never uploading: {q}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cloud.kill();
    link.kill();

    // The Cloud comes back without the Link; support revokes the key meanwhile.
    cloud = CloudProcess::start(&data, port, &flags);
    cloud.wait_ready(&client.http).await;
    let hash = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    client
        .admin(
            Method::POST,
            "/admin/policy-events",
            json!({"event": "keyRevoked", "integrator": INTEGRATOR, "keyHash": hash}),
        )
        .await;
    // The Link attaches again: the query is dispatched again, and denied.
    let link = Agent::prepare(link_config()).unwrap().spawn();
    link.wait_connected(1, Duration::from_secs(30))
        .await
        .unwrap();
    // Read it with a fresh key of the same integrator (the revoked one is refused).
    let reader = client
        .admin(
            Method::POST,
            &format!("/admin/integrators/{INTEGRATOR}/keys"),
            json!({"environment": "stage"}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let q = wait_terminal(&client, &reader, &path).await;
    assert_eq!(q["status"], "executionFailed", "{q}");
    assert_eq!(q["errorCode"], 401, "{q}");
    link.kill();
    cloud.kill();
}
