//! Grants snapshots: the frozen v1 fixture keeps loading, unknown versions and
//! damaged snapshots are refused. (The round-trip property is in `properties.rs`,
//! with the event generators.)

#![allow(clippy::unwrap_used)]

use halo_ids::{Environment, PmsType};
use halo_policy::{
    GRANTS_SNAPSHOT_VERSION, Grants, GrantsSnapshot, IntegratorId, KeyHash, PolicyError,
    PolicyEvent, RateLimit,
};

const FIXTURE: &str = include_str!("fixtures/grants_snapshot_v1.json");

/// Grants touching every part of the format: an integrator with components,
/// paired and unpaired practices, keys in both environments, limits at both scopes
/// and an allowlist; and one left empty by a disable and a revoked key.
fn rich() -> Grants {
    let alpha: IntegratorId = "alpha".parse().unwrap();
    let beta: IntegratorId = "beta".parse().unwrap();
    let (p1, p2) = ("D4w:P1".parse().unwrap(), "D4w:P2".parse().unwrap());
    let events = [
        PolicyEvent::IntegratorEnabled {
            integrator: alpha.clone(),
            pms_type: PmsType::D4w,
        },
        PolicyEvent::ComponentsAuthorised {
            integrator: alpha.clone(),
            pms_type: PmsType::D4w,
            catalogues: vec!["D4W".into()],
            tables: vec!["patients".into(), "dbo.appointments".into()],
            procedures: vec!["GetPatient".into()],
            allow_write: true,
        },
        PolicyEvent::PracticeEnabled {
            integrator: alpha.clone(),
            pms_id: p1,
        },
        PolicyEvent::SitePaired {
            integrator: alpha.clone(),
            pms_id: p1,
        },
        PolicyEvent::PracticeEnabled {
            integrator: alpha.clone(),
            pms_id: p2,
        },
        PolicyEvent::KeyIssued {
            integrator: alpha.clone(),
            environment: Environment::Stage,
            key_hash: KeyHash::of("k0"),
        },
        PolicyEvent::KeyIssued {
            integrator: alpha.clone(),
            environment: Environment::Production,
            key_hash: KeyHash::of("k1"),
        },
        PolicyEvent::QuotaSet {
            integrator: alpha.clone(),
            pms_id: None,
            per_month: Some(1000),
        },
        PolicyEvent::QuotaSet {
            integrator: alpha.clone(),
            pms_id: Some(p1),
            per_month: Some(50),
        },
        PolicyEvent::RateLimitSet {
            integrator: alpha.clone(),
            pms_id: None,
            limit: Some(RateLimit {
                per_second: 10,
                burst: 20,
            }),
        },
        PolicyEvent::RateLimitSet {
            integrator: alpha.clone(),
            pms_id: Some(p2),
            limit: Some(RateLimit {
                per_second: 2,
                burst: 4,
            }),
        },
        PolicyEvent::IpAllowlistSet {
            integrator: alpha,
            cidrs: vec!["10.1.2.3/8".into(), "2001:db8::/32".into()],
        },
        PolicyEvent::KeyIssued {
            integrator: beta.clone(),
            environment: Environment::Stage,
            key_hash: KeyHash::of("k2"),
        },
        PolicyEvent::KeyRevoked {
            integrator: beta.clone(),
            key_hash: KeyHash::of("k2"),
        },
        PolicyEvent::IntegratorDisabled {
            integrator: beta,
            pms_type: PmsType::Zedmed,
        },
    ];
    let mut grants = Grants::default();
    for e in &events {
        grants.apply(e).unwrap();
    }
    grants
}

/// Rewrites the fixture from [`rich`] when `HALO_BLESS_FIXTURES=1` is set. Do that only
/// when the format version changes (then add a new fixture instead of overwriting the
/// old one): `HALO_BLESS_FIXTURES=1 cargo test -p halo-policy --test snapshot frozen_v1_fixture`.
fn write_grants_snapshot_fixture() {
    let json = serde_json::to_string_pretty(&rich().to_snapshot()).unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/grants_snapshot_v1.json"
    );
    std::fs::write(path, json + "\n").unwrap();
}

#[test]
fn frozen_v1_fixture_still_loads_and_equals_the_replayed_grants() {
    if std::env::var_os("HALO_BLESS_FIXTURES").is_some() {
        write_grants_snapshot_fixture();
        return;
    }
    let snapshot: GrantsSnapshot = serde_json::from_str(FIXTURE).unwrap();
    assert_eq!(snapshot.version(), GRANTS_SNAPSHOT_VERSION);
    let grants = rich();
    assert_eq!(Grants::from_snapshot(snapshot).unwrap(), grants);
    // The writer still writes format v1 exactly (a change needs a new version).
    let written = serde_json::to_value(grants.to_snapshot()).unwrap();
    let frozen: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    assert_eq!(written, frozen);
    assert_eq!(grants.integrator_count(), 2);
}

/// Applies `damage` to the JSON of the rich snapshot and loads it.
fn load_damaged(damage: impl FnOnce(&mut serde_json::Value)) -> Result<Grants, PolicyError> {
    let mut json = serde_json::to_value(rich().to_snapshot()).unwrap();
    damage(&mut json);
    let snapshot: GrantsSnapshot = serde_json::from_value(json).unwrap();
    Grants::from_snapshot(snapshot)
}

fn is_invalid(result: Result<Grants, PolicyError>) -> bool {
    matches!(result, Err(PolicyError::InvalidSnapshot(_)))
}

#[test]
fn unknown_version_is_refused() {
    assert_eq!(
        load_damaged(|j| j["version"] = 2.into()),
        Err(PolicyError::UnsupportedSnapshotVersion(2))
    );
}

#[test]
fn damaged_snapshots_are_refused() {
    assert_eq!(load_damaged(|_| {}), Ok(rich()));
    let alpha = |j: &mut serde_json::Value| j["integrators"][0].clone();
    // An integrator twice.
    assert!(is_invalid(load_damaged(|j| {
        let a = alpha(j);
        j["integrators"].as_array_mut().unwrap().push(a);
    })));
    // A key issued to two integrators.
    assert!(is_invalid(load_damaged(|j| {
        let keys = alpha(j)["keys"].clone();
        j["integrators"][1]["keys"] = keys;
    })));
    // Zero limits, a practice twice, a table twice, host bits in a network.
    assert!(is_invalid(load_damaged(
        |j| j["integrators"][0]["quota"] = 0.into()
    )));
    assert!(is_invalid(load_damaged(|j| {
        j["integrators"][0]["rate"]["burst"] = 0.into();
    })));
    assert!(is_invalid(load_damaged(|j| {
        j["integrators"][0]["practiceQuota"][0][1] = 0.into();
    })));
    assert!(is_invalid(load_damaged(|j| {
        let p = alpha(j)["practices"][0].clone();
        j["integrators"][0]["practices"]
            .as_array_mut()
            .unwrap()
            .push(p);
    })));
    assert!(is_invalid(load_damaged(|j| {
        let t = alpha(j)["components"][0]["tables"][0].clone();
        j["integrators"][0]["components"][0]["tables"]
            .as_array_mut()
            .unwrap()
            .push(t);
    })));
    assert!(is_invalid(load_damaged(|j| {
        j["integrators"][0]["ipAllowlist"][0] = "10.1.2.3/8".into();
    })));
}
