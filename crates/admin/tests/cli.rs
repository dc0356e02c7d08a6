//! End to end: the `halo-admin` binary against a Cloud running in this process, with
//! a real Link attached. Every admin operation is driven through the CLI, in the
//! onboarding order, and each answer is checked through the Cloud itself.

use std::process::Output;
use std::time::Duration;

use halo_cloud::{CloudConfig, HttpLimits, RunningCloud};
use halo_link::demo::{DemoPractice, generate};
use halo_link::{Agent, LinkConfig};
use halo_router::RouterConfig;
use halo_tenancy::AvailabilityConfig;
use serde_json::Value;

const TOKEN: &str = "admin-cli-test-token-0123456789";

async fn cloud() -> RunningCloud {
    halo_cloud::start(CloudConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: None,
        admin_token: TOKEN.to_owned(),
        router: RouterConfig::standard(),
        availability: AvailabilityConfig::default(),
        snapshot_every: 0,
        accept_damaged_log: false,
        max_databases_per_link: halo_cloud::app::MAX_DATABASES_PER_LINK,
        http: HttpLimits::default(),
    })
    .await
    .expect("cloud starts")
}

/// Runs `halo-admin` with `args` against `url`, with `token` in the environment.
async fn run(url: &str, token: Option<&str>, args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_halo-admin"));
    cmd.args(args)
        .env("HALO_CLOUD_URL", url)
        .env_remove("HALO_ADMIN_TOKEN")
        .env_remove("HALO_ADMIN_ACTOR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(token) = token {
        cmd.env("HALO_ADMIN_TOKEN", token);
    }
    let mut child = cmd.spawn().expect("halo-admin runs");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.expect("write stdin");
    }
    drop(input);
    child.wait_with_output().await.expect("halo-admin ends")
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn admin(url: &str, args: &[&str]) -> Ran {
    admin_with(url, Some(TOKEN), args, None).await
}

async fn admin_with(url: &str, token: Option<&str>, args: &[&str], stdin: Option<&str>) -> Ran {
    let out = run(url, token, args, stdin).await;
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a command that must succeed and returns its stdout.
async fn ok(url: &str, args: &[&str]) -> String {
    let ran = admin(url, args).await;
    assert_eq!(
        ran.code,
        Some(0),
        "{args:?}: stdout {} stderr {}",
        ran.stdout,
        ran.stderr
    );
    ran.stdout
}

async fn ok_json(url: &str, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let out = ok(url, &with_json).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// An integrator call with `key`: status and body.
async fn integrator_get(base: &str, key: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("Ocp-Apim-Subscription-Key", key)
        .send()
        .await
        .expect("integrator call");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_operation_through_the_cli_in_onboarding_order() {
    let cloud = cloud().await;
    let url = format!("http://{}", cloud.addr);
    let dir = tempfile::tempdir().expect("tempdir");

    // A Link credential first, so the Link can attach.
    let issued = ok_json(
        &url,
        &[
            "link-credential",
            "issue",
            "--label",
            "Smile Co server",
            "--environment",
            "stage",
            "--practice",
            "D4w:AB123",
            "--actor",
            "tester",
        ],
    )
    .await;
    let link_key = issued["key"].as_str().expect("key").to_owned();
    let credential_id = issued["id"].as_str().expect("id").to_owned();
    assert!(link_key.starts_with("lnk_"), "{issued}");
    assert!(credential_id.starts_with("lc_"), "{issued}");

    // The practice's database and a backup copy of it: two sites of one practice.
    let mut dbs = Vec::new();
    for name in ["practice.sqlite", "backup.sqlite"] {
        let db = dir.path().join(name);
        generate(
            &db,
            &DemoPractice::new("AB123".parse().expect("crn"), "Smile Co"),
        )
        .expect("demo db");
        dbs.push(db);
    }
    let mut config = LinkConfig::new(
        format!("ws://{}/link/ws", cloud.addr),
        halo_ids::Environment::Stage,
        link_key.clone(),
        dir.path().join("state.json"),
        dbs,
    );
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(200);
    let agent = Agent::prepare(config).expect("link config");
    let guids: Vec<String> = agent
        .databases()
        .iter()
        .map(|db| db.halo_guid().to_string())
        .collect();
    let link = agent.spawn();
    link.wait_connected(1, Duration::from_secs(10))
        .await
        .expect("link connects");

    // The table lists the credential, now bound to the Link.
    let table = ok(&url, &["link-credential", "list"]).await;
    assert!(table.contains(&credential_id), "{table}");
    assert!(table.contains("Smile Co server"), "{table}");
    assert!(table.contains("D4w:AB123"), "{table}");
    let listed = ok_json(&url, &["link-credential", "list"]).await;
    assert!(
        listed[0]["linkId"].is_string(),
        "bound to the Link: {listed}"
    );

    // Onboarding: enable -> components -> practice -> key.
    let out = ok(&url, &["integrator", "enable", "acme"]).await;
    assert!(out.contains("integrator acme enabled for D4w"), "{out}");
    ok(
        &url,
        &[
            "integrator",
            "components",
            "acme",
            "--table",
            "patients,providers",
            "--catalogue",
            "d4w",
        ],
    )
    .await;
    ok(&url, &["integrator", "practice", "acme", "D4w:AB123"]).await;
    let key_table = ok(
        &url,
        &["integrator", "key", "acme", "--environment", "stage"],
    )
    .await;
    assert!(key_table.contains("stg_"), "{key_table}");
    assert!(key_table.contains("shown once"), "{key_table}");
    let key = ok_json(
        &url,
        &["integrator", "key", "acme", "--environment", "stage"],
    )
    .await["key"]
        .as_str()
        .expect("key")
        .to_owned();

    // The key works: the integrator finds the practice's site.
    let (status, sites) = integrator_get(
        &url,
        &key,
        "/integrator/sites?practiceManagementSiteId=AB123&practiceManagementName=D4w",
    )
    .await;
    assert_eq!(status, 200, "{sites}");
    assert_eq!(sites["sites"].as_array().map(Vec::len), Some(2), "{sites}");

    // Sites: the support view, and promoting the copy that is not authoritative.
    let mut holder = None;
    let mut other = None;
    for guid in &guids {
        let shown = ok_json(&url, &["site", "show", guid]).await;
        assert_eq!(shown["site"]["id"], guid.as_str(), "{shown}");
        if shown["site"]["authoritative"] == true {
            holder = Some((guid.clone(), shown["epoch"].as_u64().expect("epoch")));
        } else {
            other = Some(guid.clone());
        }
    }
    let (holder, epoch) = holder.expect("one site holds authority");
    let other = other.expect("one site does not");
    let site = ok(&url, &["site", "show", &holder]).await;
    assert!(site.contains("Smile Co"), "{site}");
    assert!(site.contains("stage"), "{site}");
    let promote = |guid: &str| {
        [
            "site",
            "promote",
            guid,
            "--actor",
            "support",
            "--reason",
            "backup is newer",
        ]
        .map(str::to_owned)
    };
    let again = admin(&url, &promote(&holder).each_ref().map(String::as_str)).await;
    assert_eq!(again.code, Some(1), "{}", again.stdout);
    assert!(
        again.stderr.contains("409") && again.stderr.contains("already authoritative"),
        "{}",
        again.stderr
    );
    let promoted = ok_json(&url, &promote(&other).each_ref().map(String::as_str)).await;
    assert_eq!(promoted["site"]["authoritative"], true, "{promoted}");
    assert_eq!(promoted["epoch"].as_u64(), Some(epoch + 1), "{promoted}");

    // The audit trail, filtered by kind: the promotion with its actor and reason,
    // as JSON and as a table; a bad filter is the Cloud's 400.
    let trail = ok_json(&url, &["audit", "--kind", "sitePromoted", "--limit", "5"]).await;
    let entries = trail["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["actor"] == "support"
            && e["reason"] == "backup is newer"
            && e["haloGuid"] == other.as_str()),
        "{trail}"
    );
    assert!(
        entries.iter().all(|e| e["kind"] == "sitePromoted"),
        "{trail}"
    );
    let table = ok(&url, &["audit", "--kind", "sitePromoted"]).await;
    assert!(
        table.contains("sitePromoted") && table.contains("backup is newer"),
        "{table}"
    );
    let bad_limit = admin(&url, &["audit", "--limit", "0"]).await;
    assert_eq!(bad_limit.code, Some(1), "{}", bad_limit.stderr);
    assert!(bad_limit.stderr.contains("400"), "{}", bad_limit.stderr);

    // Webhooks and their dead letters; a console login link.
    let hooks = ok_json(
        &url,
        &[
            "webhook",
            "set",
            "acme",
            "--webhook-url",
            "http://127.0.0.1:9/halo/{queryId}",
            "--secret",
            "0123456789abcdef0123",
        ],
    )
    .await;
    assert!(hooks.to_string().contains("127.0.0.1:9"), "{hooks}");
    let dead = ok_json(&url, &["webhook", "dead-letters"]).await;
    assert!(dead.is_object(), "{dead}");
    let ticket = ok_json(&url, &["console-ticket"]).await;
    assert!(
        ticket["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/admin/console/login?ticket=")),
        "{ticket}"
    );

    // A policy event as an argument, one on stdin (it takes effect), and one the
    // Cloud refuses.
    ok(
        &url,
        &[
            "policy-event",
            r#"{"event":"quotaSet","integrator":"acme","perMonth":1000}"#,
        ],
    )
    .await;
    let piped = admin_with(
        &url,
        Some(TOKEN),
        &["policy-event"],
        Some(r#"{"event":"practiceDisabled","integrator":"acme","pmsId":"D4w:AB123"}"#),
    )
    .await;
    assert_eq!(piped.code, Some(0), "{}", piped.stderr);
    let (status, _) = integrator_get(
        &url,
        &key,
        "/integrator/sites?practiceManagementSiteId=AB123&practiceManagementName=D4w",
    )
    .await;
    assert_eq!(status, 403, "the piped event took effect");
    let bad = admin(&url, &["policy-event", r#"{"event":"noSuchEvent"}"#]).await;
    assert_eq!(bad.code, Some(1), "{}", bad.stderr);
    assert!(bad.stderr.contains("400"), "{}", bad.stderr);

    // Credentials: scope, rotate, revoke.
    let scoped = ok_json(
        &url,
        &[
            "link-credential",
            "scope",
            &credential_id,
            "--practice",
            "D4w:ZZ9",
            "--actor",
            "support",
            "--reason",
            "cluster takes on ZZ9",
        ],
    )
    .await;
    let practices = scoped["practices"].to_string();
    assert!(practices.contains("D4w:ZZ9"), "{scoped}");
    let rotated = ok_json(
        &url,
        &[
            "link-credential",
            "rotate",
            &credential_id,
            "--actor",
            "support",
            "--reason",
            "rotation",
        ],
    )
    .await;
    let new_id = rotated["id"].as_str().expect("id").to_owned();
    assert_ne!(new_id, credential_id);
    assert_ne!(rotated["key"].as_str(), Some(link_key.as_str()));
    let revoked = ok(
        &url,
        &[
            "link-credential",
            "revoke",
            &new_id,
            "--actor",
            "support",
            "--reason",
            "test over",
        ],
    )
    .await;
    assert!(revoked.contains("revoked"), "{revoked}");
    let listed = ok_json(&url, &["link-credential", "list"]).await;
    let all_revoked = listed
        .as_array()
        .expect("list")
        .iter()
        .all(|c| c["revoked"] == true);
    assert!(all_revoked, "{listed}");

    let _ = link.shutdown().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_status_and_the_clouds_message() {
    let cloud = cloud().await;
    let url = format!("http://{}", cloud.addr);

    let wrong = admin_with(
        &url,
        Some("not-the-token-at-all"),
        &["link-credential", "list"],
        None,
    )
    .await;
    assert_eq!(wrong.code, Some(1));
    assert!(wrong.stderr.contains("401"), "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("invalid admin token"),
        "{}",
        wrong.stderr
    );
    assert!(
        wrong.stderr.contains("HALO_ADMIN_TOKEN"),
        "{}",
        wrong.stderr
    );

    let unknown = admin(
        &url,
        &["site", "show", "3f2504e0-4f89-11d3-9a0c-0305e82c3301"],
    )
    .await;
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("404") && unknown.stderr.contains("site not found"),
        "{}",
        unknown.stderr
    );

    let invalid = admin(&url, &["site", "show", "not-a-guid"]).await;
    assert_eq!(invalid.code, Some(1));
    assert!(
        invalid.stderr.contains("400") && invalid.stderr.contains("halo guid"),
        "{}",
        invalid.stderr
    );

    let no_token = admin_with(&url, None, &["link-credential", "list"], None).await;
    assert_eq!(no_token.code, Some(2));
    assert!(
        no_token.stderr.contains("HALO_ADMIN_TOKEN"),
        "{}",
        no_token.stderr
    );

    let not_json = admin(&url, &["policy-event", "{not json"]).await;
    assert_eq!(not_json.code, Some(2), "{}", not_json.stderr);

    cloud.stop().await;

    // Nothing listens on a port just released.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let down = admin(
        &format!("http://127.0.0.1:{port}"),
        &["link-credential", "list"],
    )
    .await;
    assert_eq!(down.code, Some(3), "{}", down.stderr);
    assert!(
        down.stderr.contains("connection refused") && down.stderr.contains("halo-cloud serve"),
        "{}",
        down.stderr
    );
}
