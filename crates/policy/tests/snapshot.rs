//! Grants snapshots: the frozen v1 and v2 fixtures keep loading (a v1 pairing as a
//! Stage pairing only), unknown versions and damaged snapshots are refused. (The round-trip property is in `properties.rs`,
//! with the event generators.)

#![allow(clippy::unwrap_used)]

use halo_ids::{Environment, PmsType};
use halo_policy::{
    GRANTS_SNAPSHOT_VERSION, Grants, GrantsSnapshot, IntegratorId, KeyHash, PolicyError,
    PolicyEvent, RateLimit,
};

const FIXTURE_V1: &str = include_str!("fixtures/grants_snapshot_v1.json");
const FIXTURE_V2: &str = include_str!("fixtures/grants_snapshot_v2.json");

/// Grants touching every part of the v1 format: an integrator with components,
/// paired and unpaired practices, keys in both environments, limits at both scopes
/// and an allowlist; and one left empty by a disable and a revoked key. Its one
/// pairing (P1) is a Stage pairing: what a v1 `"paired": true` is read as.
fn rich_v1() -> Grants {
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
        PolicyEvent::PracticePaired {
            integrator: alpha.clone(),
            pms_id: p1,
            environment: Environment::Stage,
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
    apply(Grants::default(), &events)
}

fn apply(mut grants: Grants, events: &[PolicyEvent]) -> Grants {
    for e in events {
        grants.apply(e).unwrap();
    }
    grants
}

/// [`rich_v1`] with what v2 adds: P1 paired in Production too, P2 in Production only.
fn rich() -> Grants {
    let alpha: IntegratorId = "alpha".parse().unwrap();
    let pairing = |pms_id: &str| PolicyEvent::PracticePaired {
        integrator: alpha.clone(),
        pms_id: pms_id.parse().unwrap(),
        environment: Environment::Production,
    };
    apply(rich_v1(), &[pairing("D4w:P1"), pairing("D4w:P2")])
}

/// Writes the current version's fixture from [`rich`] when `HALO_BLESS_FIXTURES=1`
/// is set. Do that only for a new format version, as a new file (older fixtures stay
/// frozen): `HALO_BLESS_FIXTURES=1 cargo test -p halo-policy --test snapshot frozen_v2_fixture`.
fn write_grants_snapshot_fixture() {
    let json = serde_json::to_string_pretty(&rich().to_snapshot()).unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/grants_snapshot_v2.json"
    );
    std::fs::write(path, json + "\n").unwrap();
}

#[test]
fn frozen_v1_fixture_still_loads_with_its_pairing_as_stage_only() {
    let snapshot: GrantsSnapshot = serde_json::from_str(FIXTURE_V1).unwrap();
    assert_eq!(snapshot.version(), 1);
    let grants = Grants::from_snapshot(snapshot).unwrap();
    assert_eq!(grants, rich_v1());
    assert_eq!(grants.integrator_count(), 2);
    // Reading v1 is not writing it: the writer writes the current version.
    assert_eq!(grants.to_snapshot().version(), GRANTS_SNAPSHOT_VERSION);
}

#[test]
fn frozen_v2_fixture_still_loads_and_equals_the_replayed_grants() {
    if std::env::var_os("HALO_BLESS_FIXTURES").is_some() {
        write_grants_snapshot_fixture();
        return;
    }
    let snapshot: GrantsSnapshot = serde_json::from_str(FIXTURE_V2).unwrap();
    assert_eq!(snapshot.version(), GRANTS_SNAPSHOT_VERSION);
    assert_eq!(GRANTS_SNAPSHOT_VERSION, 2);
    let grants = rich();
    assert_eq!(Grants::from_snapshot(snapshot).unwrap(), grants);
    // The writer still writes format v2 exactly (a change needs a new version).
    let written = serde_json::to_value(grants.to_snapshot()).unwrap();
    let frozen: serde_json::Value = serde_json::from_str(FIXTURE_V2).unwrap();
    assert_eq!(written, frozen);
    assert_eq!(
        frozen["integrators"][0]["practices"][0]["pairedIn"],
        serde_json::json!(["stage", "production"])
    );
}

/// A v1 pairing is a Stage pairing in the compiled policy too: a Production key is
/// not paired by it.
#[test]
fn a_v1_pairing_does_not_pair_production() {
    use halo_ids::{HaloGuid, Timestamp};
    use halo_policy::{Decision, DenyCode, ExecutionMode, Request, SiteView, evaluate};
    let snapshot: GrantsSnapshot = serde_json::from_str(FIXTURE_V1).unwrap();
    let policy = Grants::from_snapshot(snapshot).unwrap().compile();
    let components = halo_policy::extract_components("SELECT * FROM patients").unwrap();
    let decide = |key: &str, environment: Environment| {
        let halo = HaloGuid::from_u128(1).unwrap();
        let site = SiteView {
            halo_guid: halo,
            environment,
            pms_id: "D4w:P1".parse().unwrap(),
            authoritative: true,
            active: true,
        };
        let req = Request {
            key,
            halo_guid: halo,
            mode: ExecutionMode::Reader,
            catalogue: None,
            components: &components,
            caller_ip: Some("10.0.0.1".parse().unwrap()),
            now: Timestamp::from_millis(0),
        };
        evaluate(&policy, &req, Some(&site))
    };
    assert!(matches!(
        decide("k0", Environment::Stage),
        Decision::Allow(_)
    ));
    match decide("k1", Environment::Production) {
        Decision::Deny(d) => assert_eq!(d.code(), DenyCode::NotPaired),
        Decision::Allow(a) => panic!("a v1 pairing reached Production: {a:?}"),
    }
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
    for version in [0, 3] {
        assert_eq!(
            load_damaged(|j| j["version"] = version.into()),
            Err(PolicyError::UnsupportedSnapshotVersion(version))
        );
    }
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
    // A v1 pairing in a v2 snapshot, an environment listed twice, a v2 pairing in
    // a v1 snapshot.
    assert!(is_invalid(load_damaged(|j| {
        j["integrators"][0]["practices"][1]["paired"] = true.into();
    })));
    assert!(is_invalid(load_damaged(|j| {
        j["integrators"][0]["practices"][1]["pairedIn"] = serde_json::json!(["stage", "stage"]);
    })));
    assert!(is_invalid(load_damaged(|j| j["version"] = 1.into())));
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
