//! Frozen fixtures of the Cloud's stored formats: the log record (`Record`: tenancy,
//! policy and credential events) and the snapshot (`Snapshot`). A log or snapshot
//! written by an older build must keep loading, so these files are never edited by
//! hand and never rewritten for a compatible change:
//!
//! - `fixtures/records_v1.jsonl`: one record per line, as the store holds them, at
//!   least one of each kind and every credential event variant (issued with and
//!   without a scope, bound, scope extended, revoked with and without an actor,
//!   rotated);
//! - `fixtures/records_v1.bin`: the same records as this build writes them (tenancy
//!   records in the compact binary form, the others JSON), each as a 4-byte
//!   little-endian length and the record's bytes; a log may hold both forms;
//! - `fixtures/snapshot_v1.json`: the snapshot of the state those records build;
//!   `snapshot_v2.json` the same with version-2 grants; `snapshot_v3.json` the same
//!   with the registry in its compact binary form (base64); `snapshot_v4.json` the
//!   same with the audit trail (`audit`: how far it read the log, and its entries
//!   in their binary form, base64); `snapshot_v5.json` the same with both binary
//!   parts LZ4-compressed (`lz4:` and base64).
//!
//! The tests decode both, check that this build still writes them byte for byte (as
//! JSON values), and recover a real `CloudState` from a store holding them: once by
//! replaying the records, once from the snapshot, each giving the expected state.
//!
//! When a format version changes, add `*_v2` fixtures next to these (keep the v1
//! files and their tests) and bless the new ones:
//! `HALO_BLESS_FIXTURES=1 cargo test -p halo-cloud --test formats`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use halo_cloud::record::{BINARY_RECORD, RECORD_VERSION, RecordCodec};
use halo_cloud::state::SNAPSHOT_VERSION;
use halo_cloud::{CloudState, CredentialEvent, Record, Snapshot, StateConfig};
use halo_credentials::{CredentialError, Scope, ScopeKind};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};
use halo_policy::{IntegratorId, KeyHash, PolicyEvent, authorise_practice};
use halo_router::{Router, RouterConfig};
use halo_store::{EventLog, Json, SqliteLog, Store, StoreConfig};
use halo_tenancy::{AvailabilityConfig, Catalogue, Event, LogEntry, SiteIdentity, SiteStatus};

const RECORDS: &str = include_str!("fixtures/records_v1.jsonl");
const RECORDS_BIN: &[u8] = include_bytes!("fixtures/records_v1.bin");
const SNAPSHOT: &str = include_str!("fixtures/snapshot_v1.json");
const SNAPSHOT_V2: &str = include_str!("fixtures/snapshot_v2.json");
const SNAPSHOT_V3: &str = include_str!("fixtures/snapshot_v3.json");
const SNAPSHOT_V4: &str = include_str!("fixtures/snapshot_v4.json");
const SNAPSHOT_V5: &str = include_str!("fixtures/snapshot_v5.json");

const KEY: &str = "formats-production-key";

fn link() -> LinkGuid {
    "6f9619ff-8b86-d011-b42d-00c04fc964ff".parse().unwrap()
}

fn site() -> HaloGuid {
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301".parse().unwrap()
}

fn pms_id(crn: &str) -> PmsId {
    PmsId::new(PmsType::D4w, crn.parse::<Crn>().unwrap())
}

fn acme() -> IntegratorId {
    "acme".parse().unwrap()
}

/// The token hashes of the scenario's credentials.
fn token(name: &str) -> KeyHash {
    KeyHash::of(&format!("lnk_formats_{name}"))
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(1_700_000_000_000 + ms)
}

fn tenancy(ms: u64, event: Event) -> Record {
    Record::Tenancy(LogEntry::new(at(ms), event))
}

fn policy(ms: u64, event: PolicyEvent) -> Record {
    Record::Policy {
        version: RECORD_VERSION,
        at: at(ms),
        event,
    }
}

fn credential(ms: u64, event: CredentialEvent) -> Record {
    Record::Credential {
        version: RECORD_VERSION,
        at: at(ms),
        event,
    }
}

/// The scenario: a Production Link with one database, an integrator with a key and
/// the practice enabled, and the Link's credentials through their whole life.
fn records() -> Vec<Record> {
    vec![
        tenancy(
            1,
            Event::LinkRegistered {
                link: link(),
                environment: Environment::Production,
                version: "1.4.2".into(),
            },
        ),
        tenancy(
            2,
            Event::SiteAttached {
                link: link(),
                halo_guid: site(),
                identity: SiteIdentity {
                    pms_type: PmsType::D4w,
                    parent_crn: "AB123".parse().unwrap(),
                    branch_crns: vec!["AB124".parse().unwrap()],
                    practice_name: "Smile Dental".into(),
                    pms_version: "9.6.1".into(),
                    catalogues: vec![Catalogue {
                        name: "D4W".into(),
                        is_default: true,
                    }],
                    is_demo: false,
                },
            },
        ),
        tenancy(
            3,
            Event::SiteReady {
                link: link(),
                halo_guid: site(),
            },
        ),
        policy(
            4,
            PolicyEvent::IntegratorEnabled {
                integrator: acme(),
                pms_type: PmsType::D4w,
            },
        ),
        policy(
            5,
            PolicyEvent::ComponentsAuthorised {
                integrator: acme(),
                pms_type: PmsType::D4w,
                catalogues: vec!["D4W".into()],
                tables: vec!["patients".into(), "dbo.appointments".into()],
                procedures: vec![],
                allow_write: false,
            },
        ),
        policy(
            6,
            PolicyEvent::PracticeEnabled {
                integrator: acme(),
                pms_id: pms_id("AB123"),
            },
        ),
        policy(
            7,
            PolicyEvent::KeyIssued {
                integrator: acme(),
                environment: Environment::Production,
                key_hash: KeyHash::of(KEY),
            },
        ),
        // Issued with a scope, bound by the Link's first hello, extended.
        credential(
            8,
            CredentialEvent::Issued {
                token_hash: token("smile"),
                label: "Smile Dental server".into(),
                scope: Some(Scope::practices(
                    Environment::Production,
                    ScopeKind::OnPremises,
                    [pms_id("AB123")],
                )),
                actor: Some("support:ann".into()),
            },
        ),
        credential(
            9,
            CredentialEvent::Bound {
                token_hash: token("smile"),
                link: link(),
            },
        ),
        credential(
            10,
            CredentialEvent::ScopeExtended {
                token_hash: token("smile"),
                practices: vec![pms_id("AB999")],
                actor: "support:ann".into(),
                reason: "second practice moved onto the server".into(),
            },
        ),
        // Issued the way logs from before scopes hold it, revoked the way logs from
        // before actors hold it.
        credential(
            11,
            CredentialEvent::Issued {
                token_hash: token("legacy"),
                label: "old install".into(),
                scope: None,
                actor: None,
            },
        ),
        credential(
            12,
            CredentialEvent::Revoked {
                token_hash: token("legacy"),
                actor: None,
                reason: None,
            },
        ),
        // A Stage demo credential, revoked by support with a reason.
        credential(
            13,
            CredentialEvent::Issued {
                token_hash: token("demo"),
                label: "training laptop".into(),
                scope: Some(Scope::demo_only()),
                actor: Some("support:bob".into()),
            },
        ),
        credential(
            14,
            CredentialEvent::Revoked {
                token_hash: token("demo"),
                actor: Some("support:bob".into()),
                reason: Some("laptop lost".into()),
            },
        ),
        // The Link's credential rotated: the new token takes over binding and scope.
        credential(
            15,
            CredentialEvent::Rotated {
                from: token("smile"),
                to: token("smile2"),
                actor: "support:ann".into(),
                reason: "yearly rotation".into(),
            },
        ),
    ]
}

fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn bless() -> bool {
    std::env::var_os("HALO_BLESS_FIXTURES").is_some()
}

/// A store in `dir` holding `records` as JSON (as every older build wrote them), and
/// a snapshot of their state when given.
fn write_store(dir: &Path, records: &[Record], snapshot: Option<&Snapshot>) {
    write_store_with::<Json>(dir, records, snapshot);
}

/// As [`write_store`], with the records written by `C`.
fn write_store_with<C: halo_store::EventCodec<Record>>(
    dir: &Path,
    records: &[Record],
    snapshot: Option<&Snapshot>,
) {
    let config = StoreConfig {
        snapshot_every: 0,
        keep_snapshots: 2,
    };
    let (mut store, recovered) =
        Store::<Record, Snapshot, SqliteLog, C>::open(dir, config).unwrap();
    assert!(recovered.tail.is_empty(), "a fresh directory");
    let last = store.append_batch(records).unwrap();
    if let Some(snapshot) = snapshot {
        store.snapshot(snapshot, last).unwrap();
    }
}

fn open_state(dir: &Path) -> CloudState {
    let config = StateConfig {
        data_dir: Some(dir.to_path_buf()),
        snapshot_every: 0,
        availability: AvailabilityConfig::default(),
        accept_damaged_log: false,
    };
    CloudState::open(&config, Arc::new(Router::new(RouterConfig::standard()))).unwrap()
}

/// The state's snapshot, as the Cloud writes it.
fn snapshot_of(state: &CloudState) -> Snapshot {
    let snapshot = state.capture().wait();
    assert_eq!(snapshot.version, SNAPSHOT_VERSION);
    snapshot
}

/// What the scenario leaves, checked through the recovered Cloud state.
fn check_expected_state(state: &CloudState) {
    {
        let registry = state.registry();
        let s = registry.site(site()).expect("the site survives");
        assert_eq!(s.status(), SiteStatus::Active);
        assert!(s.is_authoritative(), "first join into an empty group");
        assert_eq!(s.epoch().get(), 1);
        assert_eq!(s.pms_id(), pms_id("AB123"));
        assert_eq!(s.branch_crns(), ["AB124".parse::<Crn>().unwrap()]);
        assert_eq!(
            halo_policy::Grants::from_snapshot(snapshot_of(state).grants)
                .unwrap()
                .integrator_count(),
            1
        );

        let creds = state.credentials();
        assert_eq!(creds.len(), 4);
        // The rotation moved the binding and the extended scope to the new token.
        let (hash, bound) = creds.of_link(link()).expect("the link is bound");
        assert_eq!(*hash, token("smile2"));
        assert!(!bound.revoked);
        assert_eq!(bound.label, "Smile Dental server");
        let scope = bound.scope.as_ref().expect("scope kept");
        assert_eq!(
            scope.practices.iter().copied().collect::<Vec<_>>(),
            [pms_id("AB123"), pms_id("AB999")]
        );
        let admitted = creds
            .admit(&token("smile2"), link(), Environment::Production)
            .unwrap();
        assert!(!admitted.first_use, "already bound");
        assert_eq!(
            creds
                .admit(&token("smile"), link(), Environment::Production)
                .unwrap_err(),
            CredentialError::Revoked
        );
        assert_eq!(
            creds.check(&token("legacy")).unwrap_err(),
            CredentialError::Revoked
        );
        assert_eq!(
            creds.check(&token("demo")).unwrap_err(),
            CredentialError::Revoked
        );
        let legacy = creds
            .iter()
            .find(|(_, c)| c.label == "old install")
            .unwrap()
            .1;
        assert!(legacy.scope.is_none() && legacy.link.is_none());
    }
    // Published to the router and the policy: the site routes, the key works.
    let route = state
        .router()
        .resolve(site())
        .expect("published to the router");
    assert!(route.is_authoritative());
    let who = authorise_practice(&state.policy(), KEY, None, pms_id("AB123")).unwrap();
    assert_eq!(who.environment(), Environment::Production);
}

/// Rewrites both fixtures from [`records`] (see the module docs for when).
fn write_fixtures() {
    let records = records();
    let mut lines = String::new();
    for r in &records {
        lines.push_str(&serde_json::to_string(r).unwrap());
        lines.push('\n');
    }
    std::fs::write(fixture_path("records_v1.jsonl"), lines).unwrap();
    let mut bin = Vec::new();
    for r in &records {
        let bytes = r.to_log_bytes().unwrap();
        bin.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_le_bytes());
        bin.extend_from_slice(&bytes);
    }
    std::fs::write(fixture_path("records_v1.bin"), bin).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), &records, None);
    let json = serde_json::to_string_pretty(&snapshot_of(&open_state(dir.path()))).unwrap();
    std::fs::write(fixture_path("snapshot_v5.json"), json + "\n").unwrap();
}

fn frozen_records() -> Vec<Record> {
    RECORDS
        .lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", n + 1))
        })
        .collect()
}

#[test]
fn frozen_v1_records_decode_to_the_scenario_and_are_still_written_so() {
    if bless() {
        write_fixtures();
        return;
    }
    let expected = records();
    let frozen = frozen_records();
    assert_eq!(frozen, expected);
    for (line, record) in RECORDS.lines().zip(&expected) {
        let written = serde_json::to_value(record).unwrap();
        let stored: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(written, stored, "this build writes v1 records differently");
    }
    // The fixture covers every kind of record and every credential event.
    let kinds: Vec<String> = RECORDS
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            match v["kind"].as_str() {
                Some("credential") => v["event"]["type"].as_str().unwrap().to_owned(),
                Some(other) => other.to_owned(),
                None => panic!("record without a kind: {l}"),
            }
        })
        .collect();
    for kind in [
        "tenancy",
        "policy",
        "issued",
        "bound",
        "scopeExtended",
        "revoked",
        "rotated",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} record in the fixture"
        );
    }
    assert!(RECORDS.contains(r#""scope":null"#) && RECORDS.contains(r#""actor":null"#));
}

#[test]
fn frozen_v1_records_replay_into_the_expected_cloud_state() {
    if bless() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), &frozen_records(), None);
    let state = open_state(dir.path());
    let report = state.recovery().unwrap();
    assert_eq!(report.snapshot_seq, None);
    assert_eq!(report.events_replayed, records().len() as u64);
    check_expected_state(&state);
}

/// The records of `records_v1.bin`, each as its stored bytes.
fn frozen_binary_records() -> Vec<&'static [u8]> {
    let mut rest = RECORDS_BIN;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        let (record, tail) = tail.split_at(len);
        out.push(record);
        rest = tail;
    }
    out
}

#[test]
fn frozen_binary_records_decode_to_the_scenario_and_are_still_written_so() {
    if bless() {
        return;
    }
    let expected = records();
    let stored = frozen_binary_records();
    assert_eq!(stored.len(), expected.len());
    for (bytes, record) in stored.iter().zip(&expected) {
        assert_eq!(&Record::from_log_bytes(bytes).unwrap(), record);
        assert_eq!(&record.to_log_bytes().unwrap(), bytes, "{record:?}");
        // Tenancy records are binary; the others stay JSON.
        let binary = bytes[0] == BINARY_RECORD;
        assert_eq!(binary, matches!(record, Record::Tenancy(_)), "{record:?}");
        assert!(binary || bytes[0] == b'{');
    }
    assert!(stored.iter().any(|b| b[0] == BINARY_RECORD));
    // The JSON lines still read through the same entry point.
    for (line, record) in RECORDS.lines().zip(&expected) {
        assert_eq!(&Record::from_log_bytes(line.as_bytes()).unwrap(), record);
    }
    // Damage is an error, never a panic: every prefix of every binary record.
    for bytes in stored.iter().filter(|b| b[0] == BINARY_RECORD) {
        for end in 0..bytes.len() {
            assert!(Record::from_log_bytes(&bytes[..end]).is_err());
        }
    }
    assert!(Record::from_log_bytes(&[BINARY_RECORD, 7, 0]).is_err());
}

#[test]
fn a_log_of_json_then_binary_records_replays_into_the_expected_cloud_state() {
    if bless() {
        return;
    }
    // The first record as an older build wrote it, the rest as this build does (the
    // scenario's tenancy records come first; the rest are JSON in both forms).
    let json: Vec<&[u8]> = RECORDS.lines().map(str::as_bytes).collect();
    let bin = frozen_binary_records();
    let mixed: Vec<&[u8]> = json[..1].iter().chain(&bin[1..]).copied().collect();
    assert_eq!(mixed[0][0], b'{');
    assert_eq!((mixed[1][0], mixed[2][0]), (BINARY_RECORD, BINARY_RECORD));
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SqliteLog::open(dir.path()).unwrap();
        log.append(&mixed).unwrap();
    }
    let state = open_state(dir.path());
    let report = state.recovery().unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.events_replayed, records().len() as u64);
    check_expected_state(&state);
}

#[test]
fn a_log_this_build_writes_replays_into_the_expected_cloud_state() {
    if bless() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_store_with::<RecordCodec>(dir.path(), &records(), None);
    let state = open_state(dir.path());
    let report = state.recovery().unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.events_replayed, records().len() as u64);
    check_expected_state(&state);
}

/// A tenancy record of a format version this build does not know stops recovery
/// (in either record form) instead of being applied as if it were understood.
#[test]
fn a_tenancy_record_of_an_unknown_version_stops_recovery() {
    let mut log = records();
    let Record::Tenancy(entry) = &mut log[0] else {
        panic!("the scenario starts with a tenancy record");
    };
    let unknown = halo_tenancy::EVENT_VERSION + 1;
    entry.version = unknown;
    for binary in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        if binary {
            write_store_with::<RecordCodec>(dir.path(), &log, None);
        } else {
            write_store(dir.path(), &log, None);
        }
        let config = StateConfig {
            data_dir: Some(dir.path().to_path_buf()),
            snapshot_every: 0,
            availability: AvailabilityConfig::default(),
            accept_damaged_log: false,
        };
        let opened = CloudState::open(&config, Arc::new(Router::new(RouterConfig::standard())));
        let Err(error) = opened else {
            panic!("recovered past a record of version {unknown} (binary: {binary})");
        };
        assert!(
            error.to_string().contains("version"),
            "binary: {binary}: {error}"
        );
    }
}

/// Recovers a Cloud from `frozen` as its only snapshot and checks the state.
fn recover_from_snapshot(frozen: &str) -> CloudState {
    let snapshot: Snapshot = serde_json::from_str(frozen).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), &frozen_records(), Some(&snapshot));
    let state = open_state(dir.path());
    let report = state.recovery().unwrap();
    assert!(report.snapshot_seq.is_some(), "recovered from the snapshot");
    assert!(report.snapshots_skipped.is_empty(), "{report}");
    assert_eq!(report.events_replayed, 0);
    check_expected_state(&state);
    state
}

#[test]
fn frozen_v1_snapshot_loads_into_the_expected_cloud_state() {
    if bless() {
        return;
    }
    let snapshot: Snapshot = serde_json::from_str(SNAPSHOT).unwrap();
    assert_eq!(snapshot.version, 1);
    recover_from_snapshot(SNAPSHOT);
}

#[test]
fn frozen_v2_snapshot_loads_into_the_expected_cloud_state() {
    if bless() {
        return;
    }
    let snapshot: Snapshot = serde_json::from_str(SNAPSHOT_V2).unwrap();
    assert_eq!(snapshot.version, 2);
    // The registry as a JSON object, as formats 1 and 2 wrote it.
    let frozen: serde_json::Value = serde_json::from_str(SNAPSHOT_V2).unwrap();
    assert!(frozen["registry"].is_object());
    let state = recover_from_snapshot(SNAPSHOT_V2);
    // Written again in the current format, it holds the same state.
    let written = serde_json::to_string(&snapshot_of(&state)).unwrap();
    let again: Snapshot = serde_json::from_str(&written).unwrap();
    assert_eq!(again.registry, snapshot.registry);
}

#[test]
fn frozen_v3_snapshot_loads_into_the_expected_cloud_state() {
    if bless() {
        return;
    }
    let snapshot: Snapshot = serde_json::from_str(SNAPSHOT_V3).unwrap();
    assert_eq!(snapshot.version, 3);
    assert!(snapshot.audit.is_none(), "format 3 holds no audit trail");
    let frozen: serde_json::Value = serde_json::from_str(SNAPSHOT_V3).unwrap();
    assert!(frozen["registry"].is_string(), "the binary form, as base64");
    let v2: Snapshot = serde_json::from_str(SNAPSHOT_V2).unwrap();
    assert_eq!(snapshot.registry, v2.registry, "the same registry as v2");
    let state = recover_from_snapshot(SNAPSHOT_V3);
    // Without a copy in the snapshot, the trail is rebuilt from the whole log.
    assert_eq!(audit_of(&state), replayed_audit());
    let written = serde_json::to_string(&snapshot_of(&state)).unwrap();
    let again: Snapshot = serde_json::from_str(&written).unwrap();
    assert_eq!(again.registry, snapshot.registry);
}

/// The audit trail of a Cloud, oldest first.
fn audit_of(state: &CloudState) -> Vec<halo_cloud::audit::Stored> {
    state.audit().iter().cloned().collect()
}

/// The audit trail a Cloud recovered by replaying the frozen records holds.
fn replayed_audit() -> Vec<halo_cloud::audit::Stored> {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), &frozen_records(), None);
    let trail = audit_of(&open_state(dir.path()));
    assert!(
        !trail.is_empty(),
        "the policy and credential events have entries"
    );
    trail
}

#[test]
fn frozen_v4_snapshot_loads_into_the_expected_cloud_state() {
    if bless() {
        return;
    }
    let snapshot: Snapshot = serde_json::from_str(SNAPSHOT_V4).unwrap();
    assert_eq!(snapshot.version, 4);
    let frozen: serde_json::Value = serde_json::from_str(SNAPSHOT_V4).unwrap();
    assert!(frozen["registry"].is_string(), "the binary form, as base64");
    assert!(
        frozen["audit"]["entries"].is_string(),
        "the binary form, as base64"
    );
    let part = snapshot
        .audit
        .as_ref()
        .expect("format 4 holds the audit trail");
    assert_eq!(
        part.through(),
        records().len() as u64,
        "read through the last record"
    );
    let v3: Snapshot = serde_json::from_str(SNAPSHOT_V3).unwrap();
    let without_created = |r: &halo_tenancy::RegistrySnapshot| {
        let mut v = serde_json::to_value(r).unwrap();
        for site in v["sites"].as_array_mut().unwrap() {
            site.as_object_mut().unwrap().remove("created");
        }
        v
    };
    assert_eq!(
        without_created(&snapshot.registry),
        without_created(&v3.registry),
        "the same registry as v3, but for the sites' creation times (v3's fixture predates them)"
    );
    let expected = replayed_audit();
    assert_eq!(
        part.decode().unwrap().iter().cloned().collect::<Vec<_>>(),
        expected
    );
    let state = recover_from_snapshot(SNAPSHOT_V4);
    assert_eq!(audit_of(&state), expected);
}

#[test]
fn frozen_v5_snapshot_loads_into_the_expected_cloud_state_and_is_still_written_so() {
    if bless() {
        return;
    }
    let snapshot: Snapshot = serde_json::from_str(SNAPSHOT_V5).unwrap();
    assert_eq!(snapshot.version, SNAPSHOT_VERSION);
    let frozen: serde_json::Value = serde_json::from_str(SNAPSHOT_V5).unwrap();
    for part in [&frozen["registry"], &frozen["audit"]["entries"]] {
        assert!(
            part.as_str().unwrap().starts_with("lz4:"),
            "the binary form, compressed"
        );
    }
    let v4: Snapshot = serde_json::from_str(SNAPSHOT_V4).unwrap();
    assert_eq!(snapshot.registry, v4.registry, "the same registry as v4");
    let part = snapshot
        .audit
        .as_ref()
        .expect("format 5 holds the audit trail");
    let v4_part = v4.audit.as_ref().unwrap();
    assert_eq!(
        (part.through(), part.covers_next()),
        (v4_part.through(), v4_part.covers_next())
    );
    let expected = replayed_audit();
    assert_eq!(
        part.decode().unwrap().iter().cloned().collect::<Vec<_>>(),
        expected,
        "the same audit trail as v4"
    );
    let state = recover_from_snapshot(SNAPSHOT_V5);
    assert_eq!(audit_of(&state), expected);
    // The writer still writes this version exactly (a change needs a new version),
    // but for the bytes of the two binary parts: the registry's layout may differ as
    // in v3 (see there), and another release of the compressor may pick other
    // matches; both decode to the same values.
    let mut written = serde_json::to_value(snapshot_of(&state)).unwrap();
    let rewritten: Snapshot = serde_json::from_value(written.clone()).unwrap();
    assert_eq!(rewritten.registry, snapshot.registry);
    assert_eq!(
        rewritten
            .audit
            .as_ref()
            .unwrap()
            .decode()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>(),
        expected
    );
    let mut frozen = frozen;
    for json in [&mut written, &mut frozen] {
        json["registry"].take();
        json["audit"]["entries"].take();
    }
    assert_eq!(written, frozen);
}

#[test]
fn a_snapshot_audit_trail_that_cannot_be_used_is_rebuilt_from_the_log() {
    if bless() {
        return;
    }
    let expected = replayed_audit();
    let frozen: serde_json::Value = serde_json::from_str(SNAPSHOT_V4).unwrap();
    // Entries that do not decode; a trail said to reach past the log's end.
    let mut damaged = frozen.clone();
    damaged["audit"]["entries"] = "AAAA".into();
    // (With no entries: were it trusted, the trail would come out empty.)
    let mut ahead = frozen;
    ahead["audit"]["through"] = 1_000_000.into();
    ahead["audit"]["entries"] = "SEFUAQA=".into(); // "HAT" 1, count 0
    for snapshot in [damaged, ahead] {
        let state = recover_from_snapshot(&snapshot.to_string());
        assert_eq!(audit_of(&state), expected);
    }
}

#[test]
fn a_damaged_binary_registry_is_refused_not_loaded() {
    let mut frozen: serde_json::Value = serde_json::from_str(SNAPSHOT_V4).unwrap();
    let text = frozen["registry"].as_str().unwrap().to_owned();
    // Not base64, then base64 of a truncated registry.
    frozen["registry"] = "not base64!".into();
    assert!(serde_json::from_value::<Snapshot>(frozen.clone()).is_err());
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let bytes = engine.decode(&text).unwrap();
    frozen["registry"] = engine.encode(&bytes[..bytes.len() - 1]).into();
    assert!(serde_json::from_value::<Snapshot>(frozen).is_err());
    // Format 5: compressed bytes cut short never load (the store's checksum is what
    // catches a changed byte).
    let mut frozen: serde_json::Value = serde_json::from_str(SNAPSHOT_V5).unwrap();
    let text = frozen["registry"].as_str().unwrap().to_owned();
    let compressed = engine.decode(text.strip_prefix("lz4:").unwrap()).unwrap();
    for cut in [1, compressed.len() / 2, compressed.len() - 1] {
        frozen["registry"] = format!("lz4:{}", engine.encode(&compressed[..cut])).into();
        assert!(serde_json::from_value::<Snapshot>(frozen.clone()).is_err());
    }
}

#[test]
fn records_from_before_scopes_and_actors_still_decode() {
    // Fields added to credential events since version 1 may be absent, and their
    // absence reads safely: no scope (admits nothing), no actor, no reason.
    let hash = token("old").to_string();
    let issued = format!(
        r#"{{"kind":"credential","version":1,"at":1,"event":{{"type":"issued","tokenHash":"{hash}","label":"old"}}}}"#
    );
    let revoked = format!(
        r#"{{"kind":"credential","version":1,"at":2,"event":{{"type":"revoked","tokenHash":"{hash}"}}}}"#
    );
    let expect = |ms, event| Record::Credential {
        version: 1,
        at: Timestamp::from_millis(ms),
        event,
    };
    assert_eq!(
        serde_json::from_str::<Record>(&issued).unwrap(),
        expect(
            1,
            CredentialEvent::Issued {
                token_hash: token("old"),
                label: "old".into(),
                scope: None,
                actor: None,
            }
        )
    );
    assert_eq!(
        serde_json::from_str::<Record>(&revoked).unwrap(),
        expect(
            2,
            CredentialEvent::Revoked {
                token_hash: token("old"),
                actor: None,
                reason: None,
            }
        )
    );
}
