//! Unit tests: config validation, state file, identity, preparation, demo data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use halo_ids::{Crn, Environment};

use crate::demo::{DemoPractice, generate};
use crate::{Agent, LinkConfig, LinkError, LinkState};

fn crn(s: &str) -> Crn {
    s.parse().unwrap()
}

fn demo_db(dir: &Path, name: &str, crn_text: &str, is_demo: bool) -> PathBuf {
    let path = dir.join(name);
    let mut spec = DemoPractice::new(crn(crn_text), format!("Practice {crn_text}"));
    spec.is_demo = is_demo;
    spec.patients = 5;
    spec.branch_crns = vec![(crn(&format!("{crn_text}B")), "Fitzroy".into())];
    generate(&path, &spec).unwrap();
    path
}

fn config(dir: &Path, env: Environment, dbs: Vec<PathBuf>) -> LinkConfig {
    LinkConfig::new(
        "ws://127.0.0.1:9/link",
        env,
        "tok",
        dir.join("state.json"),
        dbs,
    )
}

const GOOD: &str = r#"
cloud_url = "ws://127.0.0.1:8080/link/ws"
environment = "Staging"
token = "abc"
state_file = "state.json"
heartbeat_secs = 3
[[databases]]
path = "a.sqlite"
[[databases]]
path = "/abs/b.sqlite"
"#;

#[test]
fn config_parses_and_resolves_relative_paths() {
    let c = LinkConfig::from_toml(GOOD, Path::new("/etc/halo")).unwrap();
    assert_eq!(c.environment, Environment::Stage);
    assert_eq!(c.state_file, Path::new("/etc/halo/state.json"));
    assert_eq!(
        c.databases,
        vec![
            PathBuf::from("/etc/halo/a.sqlite"),
            PathBuf::from("/abs/b.sqlite")
        ]
    );
    assert_eq!(c.heartbeat_interval, Duration::from_secs(3));
    assert!(
        !format!("{c:?}").contains("abc"),
        "token must not be logged"
    );
}

#[test]
fn one_database_never_gets_every_worker_of_a_shared_link() {
    let mut c = LinkConfig::from_toml(GOOD, Path::new(".")).unwrap();
    assert_eq!(c.max_queued_per_database, 64);
    assert_eq!(
        c.running_per_database(1),
        8,
        "a lone database uses them all"
    );
    assert_eq!(c.running_per_database(2), 7);
    c.max_concurrent_jobs = 1;
    assert_eq!(c.running_per_database(2), 1, "never zero");
    c.max_concurrent_jobs = 4;
    c.max_running_per_database = Some(2);
    assert_eq!(c.running_per_database(3), 2);
    c.max_running_per_database = Some(9);
    assert_eq!(c.running_per_database(3), 4, "capped by the whole link");
    let text = GOOD.replace(
        "heartbeat_secs = 3",
        "max_running_per_database = 3\nmax_queued_per_database = 5",
    );
    let c = LinkConfig::from_toml(&text, Path::new(".")).unwrap();
    assert_eq!(
        (c.max_running_per_database, c.max_queued_per_database),
        (Some(3), 5)
    );
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../link.example.toml");
    LinkConfig::from_toml(text, Path::new(".")).unwrap();
}

#[test]
fn config_errors_name_the_problem() {
    let check = |text: String, needle: &str| match LinkConfig::from_toml(&text, Path::new(".")) {
        Err(LinkError::Config(msg)) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
        other => panic!("expected a config error for {needle}, got {other:?}"),
    };
    check(GOOD.replace("ws://", "http://"), "cloud_url");
    check(GOOD.replace("Staging", "prod"), "environment");
    check(GOOD.replace("\"abc\"", "\"\""), "token");
    check(GOOD.replace("\"abc\"", "\"a b\""), "token");
    check(
        GOOD.replace("heartbeat_secs = 3", "heartbeat_secs = 0"),
        "heartbeat_secs",
    );
    check(
        GOOD.replace("heartbeat_secs = 3", "hartbeat_secs = 3"),
        "hartbeat_secs",
    );
    check(GOOD.replace("token = \"abc\"", ""), "token");
    check(
        GOOD.replace("heartbeat_secs = 3", "silence_secs = 1"),
        "silence_secs",
    );
    check(
        GOOD.replace("heartbeat_secs = 3", "max_queued_per_database = 0"),
        "max_queued_per_database",
    );
    check(
        GOOD.replace("heartbeat_secs = 3", "max_running_per_database = 257"),
        "max_running_per_database",
    );
    check(
        GOOD.split("[[databases]]").next().unwrap().to_owned(),
        "databases",
    );
    check(
        GOOD.replace("Staging", "production")
            .replace("127.0.0.1", "cloud.example.com"),
        "production link needs wss://",
    );
}

#[test]
fn production_allows_wss_and_loopback_ws() {
    let mut c = LinkConfig::new(
        "wss://cloud.example.com/link",
        Environment::Production,
        "t",
        "s.json",
        vec!["a".into()],
    );
    c.validate().unwrap();
    c.cloud_url = "ws://localhost:8080/link".into();
    c.validate().unwrap();
    c.cloud_url = "ws://[::1]:8080/link".into();
    c.validate().unwrap();
    c.cloud_url = "ws://10.0.0.1/link".into();
    assert!(c.validate().is_err());
}

#[test]
fn identity_is_read_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = demo_db(dir.path(), "a.sqlite", "AB123", true);
    let id = crate::DatabaseIdentity::read(&path).unwrap();
    assert_eq!(id.parent_crn, crn("AB123"));
    assert_eq!(id.practice_name, "Practice AB123");
    assert!(id.is_demo && !id.is_deidentified && id.is_demo_or_deidentified());
    assert_eq!(id.branch_crns.len(), 1);
    assert_eq!(id.branch_crns[0].crn, crn("AB123B"));
    assert_eq!(id.branch_crns[0].location, "Fitzroy");
    assert_eq!(id.default_catalogue().unwrap().name, "d4w");
}

#[test]
fn a_broken_identity_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.sqlite");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE practice_info (parent_crn, practice_name, pms_version, is_demo, is_deidentified);
         CREATE TABLE practice_branch (crn, location);",
    )
    .unwrap();
    let err = |conn: &rusqlite::Connection, sql: &str| {
        conn.execute_batch(sql).unwrap();
        match crate::DatabaseIdentity::read(&path) {
            Err(LinkError::Database { reason, .. }) => reason,
            other => panic!("expected a database error, got {other:?}"),
        }
    };
    assert!(err(&conn, "").contains("exactly one row"));
    assert!(
        err(
            &conn,
            "INSERT INTO practice_info VALUES ('AB 1', 'P', 'v', 0, 0)"
        )
        .contains("parent_crn")
    );
    assert!(
        err(
            &conn,
            "INSERT INTO practice_info VALUES ('AB1', 'P', 'v', 0, 0)"
        )
        .contains("exactly one row")
    );
    assert!(crate::DatabaseIdentity::read(&dir.path().join("missing.sqlite")).is_err());
}

#[test]
fn state_survives_restart_and_deleting_it_is_a_reinstall() {
    let dir = tempfile::tempdir().unwrap();
    let a = demo_db(dir.path(), "a.sqlite", "AB1", false);
    let b = demo_db(dir.path(), "b.sqlite", "AB2", false);
    let cfg = config(dir.path(), Environment::Stage, vec![a.clone(), b.clone()]);
    let guids =
        |link: &Agent| -> Vec<_> { link.databases().iter().map(|d| d.halo_guid()).collect() };

    let first = Agent::prepare(cfg.clone()).unwrap();
    let again = Agent::prepare(cfg.clone()).unwrap();
    assert_eq!(first.link_guid(), again.link_guid());
    assert_eq!(guids(&first), guids(&again));
    assert_ne!(guids(&first)[0], guids(&first)[1]);

    std::fs::remove_file(&cfg.state_file).unwrap();
    let reinstalled = Agent::prepare(cfg.clone()).unwrap();
    assert_ne!(first.link_guid(), reinstalled.link_guid());
    for g in guids(&reinstalled) {
        assert!(!guids(&first).contains(&g));
    }
    // No temporary file is left behind.
    assert!(!dir.path().join("state.json.tmp").exists());
}

#[test]
fn a_corrupt_state_file_is_an_error_not_a_silent_reinstall() {
    let dir = tempfile::tempdir().unwrap();
    let a = demo_db(dir.path(), "a.sqlite", "AB1", false);
    let cfg = config(dir.path(), Environment::Stage, vec![a]);
    std::fs::write(&cfg.state_file, "{ not json").unwrap();
    assert!(matches!(Agent::prepare(cfg), Err(LinkError::State { .. })));
}

#[test]
fn state_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let mut s = LinkState::fresh();
    let g = s.halo_guid_for("/x");
    assert_eq!(s.halo_guid_for("/x"), g);
    s.save(&path).unwrap();
    assert_eq!(LinkState::load_or_fresh(&path).unwrap(), s);
}

#[test]
fn production_refuses_demo_databases_and_does_not_announce_them() {
    let dir = tempfile::tempdir().unwrap();
    let real = demo_db(dir.path(), "real.sqlite", "AB1", false);
    let demo = demo_db(dir.path(), "demo.sqlite", "AB2", true);
    let deid = dir.path().join("deid.sqlite");
    let mut spec = DemoPractice::new(crn("AB3"), "De-identified copy");
    spec.is_deidentified = true;
    generate(&deid, &spec).unwrap();

    let cfg = LinkConfig::new(
        "wss://cloud.example.com/link",
        Environment::Production,
        "t",
        dir.path().join("state.json"),
        vec![real, demo.clone(), deid.clone()],
    );
    let link = Agent::prepare(cfg).unwrap();
    let hello = link.hello();
    assert_eq!(hello.databases.len(), 1);
    assert_eq!(hello.databases[0].parent_crn, crn("AB1"));
    assert!(!hello.databases[0].is_demo);
    let refused: Vec<_> = link.refused().iter().map(|r| r.path.clone()).collect();
    assert_eq!(refused, vec![demo.clone(), deid]);
    assert!(link.refused()[0].reason.contains("production"));

    // The same databases on a Stage link are all served, demo flagged.
    let stage = Agent::prepare(config(dir.path(), Environment::Stage, vec![demo])).unwrap();
    let hello = stage.hello();
    assert_eq!(hello.databases.len(), 1);
    assert!(hello.databases[0].is_demo);
    assert_eq!(
        stage.databases()[0].fake_crn(),
        Crn::fake_for(&hello.databases[0].halo_guid)
    );
}

#[test]
fn unreadable_databases_are_refused_and_duplicates_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let a = demo_db(dir.path(), "a.sqlite", "AB1", false);
    let link = Agent::prepare(config(
        dir.path(),
        Environment::Stage,
        vec![a.clone(), dir.path().join("missing.sqlite")],
    ))
    .unwrap();
    assert_eq!(link.databases().len(), 1);
    assert_eq!(link.refused().len(), 1);
    let err = Agent::prepare(config(dir.path(), Environment::Stage, vec![a.clone(), a]));
    assert!(matches!(err, Err(LinkError::Config(m)) if m.contains("twice")));
}

#[test]
fn demo_data_is_deterministic_and_realistic() {
    let dir = tempfile::tempdir().unwrap();
    let dump = |name: &str| {
        let path = dir.path().join(name);
        let summary = generate(&path, &DemoPractice::new(crn("XY9"), "Same")).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let rows: Vec<String> = conn
            .prepare(
                "SELECT first_name || ' ' || last_name || ' ' || mobile || ' ' || email FROM patients \
                 UNION ALL SELECT starts_at || status FROM appointments \
                 UNION ALL SELECT item_code || fee_cents FROM treatments",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (summary, rows)
    };
    let (s1, a) = dump("1.sqlite");
    let (s2, b) = dump("2.sqlite");
    assert_eq!((s1, &a), (s2, &b));
    assert_eq!(s1.patients, 40);
    assert_eq!(s1.appointments, 120);
    assert!(s1.treatments > 0);
    assert!(
        a.iter()
            .all(|r| !r.contains('@') || r.contains("@example.com"))
    );
    // Refuses to overwrite.
    assert!(
        generate(
            &dir.path().join("1.sqlite"),
            &DemoPractice::new(crn("XY9"), "x")
        )
        .is_err()
    );
}

#[test]
fn backoff_grows_with_jitter_and_is_capped() {
    let initial = Duration::from_millis(100);
    let max = Duration::from_secs(2);
    for attempt in 0..40 {
        let d = crate::agent::backoff(initial, max, attempt);
        let full = (initial * 2u32.saturating_pow(attempt.min(20))).min(max);
        assert!(
            d >= full / 2 && d <= full,
            "attempt {attempt}: {d:?} vs {full:?}"
        );
    }
}

#[test]
fn several_cloud_urls_are_tried_in_turn_and_each_is_checked() {
    let list = GOOD.replace(
        "cloud_url = \"ws://127.0.0.1:8080/link/ws\"",
        "cloud_urls = [\"ws://127.0.0.1:8080/link/ws\", \"ws://127.0.0.1:8081/link/ws\"]",
    );
    let c = LinkConfig::from_toml(&list, Path::new(".")).unwrap();
    assert_eq!(
        c.cloud_urls().collect::<Vec<_>>(),
        ["ws://127.0.0.1:8080/link/ws", "ws://127.0.0.1:8081/link/ws"]
    );
    // Both keys: cloud_url first.
    let both = GOOD.replace(
        "cloud_url = \"ws://127.0.0.1:8080/link/ws\"",
        "cloud_url = \"ws://127.0.0.1:8080/link/ws\"\ncloud_urls = [\"ws://127.0.0.1:8082/link/ws\"]",
    );
    let c = LinkConfig::from_toml(&both, Path::new(".")).unwrap();
    assert_eq!(c.fallback_cloud_urls, ["ws://127.0.0.1:8082/link/ws"]);
    // Every URL obeys the rules, and at least one is needed.
    let bad = list.replace("ws://127.0.0.1:8081", "http://127.0.0.1:8081");
    assert!(matches!(
        LinkConfig::from_toml(&bad, Path::new(".")),
        Err(LinkError::Config(m)) if m.contains("cloud_url")
    ));
    let none = GOOD.replace("cloud_url = \"ws://127.0.0.1:8080/link/ws\"", "");
    assert!(matches!(
        LinkConfig::from_toml(&none, Path::new(".")),
        Err(LinkError::Config(m)) if m.contains("cloud_url")
    ));
}
