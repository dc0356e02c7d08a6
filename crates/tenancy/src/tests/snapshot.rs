//! Snapshots: round trips over generated registries, equal behaviour afterwards, the
//! frozen v1 fixture, and refusal of damaged snapshots.

use halo_authority::GroupKey;
use halo_ids::{Environment, HaloGuid, PmsId, PmsType, Timestamp};
use proptest::prelude::*;

use super::fixture::{Fx, crn, demo_identity, h, identity, l};
use super::props::{Op, arb_log, arb_op, resolve, run};
use crate::{
    Catalogue, CrnLookup, Event, Registry, RegistrySnapshot, SNAPSHOT_VERSION, TenancyError,
};

pub(super) fn through_json(reg: &Registry) -> Registry {
    let json = serde_json::to_string(&reg.to_snapshot()).unwrap();
    let snapshot: RegistrySnapshot = serde_json::from_str(&json).unwrap();
    Registry::from_snapshot(snapshot).unwrap()
}

/// The sites in creation order, as `props::run` tracked them.
fn known(reg: &Registry) -> Vec<HaloGuid> {
    reg.sites().map(|s| s.halo_guid()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// snapshot -> JSON -> registry gives an equal registry with an equal snapshot,
    /// and the copy then behaves exactly like the original (so the derived indexes
    /// were rebuilt): a few more generated events give equal results on both.
    #[test]
    fn snapshot_round_trips_and_restored_copy_behaves_the_same(
        log in arb_log(200),
        tail in prop::collection::vec((0..120_000u64, arb_op()), 1..6),
    ) {
        let (mut live, _) = run(&log, false)?;
        let snapshot = live.to_snapshot();
        let mut restored = through_json(&live);
        prop_assert_eq!(&restored, &live);
        prop_assert_eq!(restored.to_snapshot(), snapshot);
        let start = log.last().map_or(0, |(at, _)| *at);
        for (dt, op) in &tail {
            let op: &Op = op;
            let event = resolve(op, &live, &known(&live));
            let now = Timestamp::from_millis(start + dt);
            let a = live.apply(&event, now);
            let b = restored.apply(&event, now);
            prop_assert_eq!(&a, &b, "{:?}", event);
            prop_assert_eq!(&restored, &live);
        }
    }
}

/// A registry touching every part of the format: Links in both environments and
/// both states, a backup, branch CRNs, a promotion, a vacant group with the member
/// that vacated it, a demo copy, a removal (an empty group), a reinstall and two
/// catalogue lists.
pub(super) fn rich() -> Fx {
    let mut fx = Fx::new();
    fx.link(1, Environment::Production);
    fx.link(2, Environment::Stage);
    fx.link(3, Environment::Production);
    fx.attach(1, 1, identity("AB1", &["BR1", "BR2"])).unwrap();
    fx.ready(1, 1);
    fx.attach(3, 2, identity("AB1", &["BR1"])).unwrap();
    fx.ready(3, 2);
    fx.promote(2).unwrap();
    fx.apply(Event::LinkUninstalled { link: l(3) });
    fx.attach(2, 3, demo_identity("AB1")).unwrap();
    let mut other = identity("CD2", &[]);
    other.catalogues.push(Catalogue {
        name: "Reports".into(),
        is_default: false,
    });
    other.pms_version = "9.7".into();
    fx.attach(1, 4, other).unwrap();
    fx.apply(Event::SiteRemoved {
        link: l(1),
        halo_guid: h(4),
    });
    fx.attach(1, 5, identity("EF3", &[])).unwrap();
    fx.apply(Event::Reinstalled {
        link: l(1),
        previous: h(5),
        halo_guid: h(6),
    });
    fx.apply(Event::LinkRegistered {
        link: l(2),
        environment: Environment::Stage,
        version: "1.5.0".into(),
    });
    fx.apply(Event::Heartbeat { link: l(1) });
    fx
}

const FIXTURE: &str = include_str!("../../tests/fixtures/snapshot_v1.json");

/// Rewrites the fixture from [`rich`] when `HALO_BLESS_FIXTURES=1` is set. Do that only
/// when the format version changes (then add a new fixture instead of overwriting the
/// old one): `HALO_BLESS_FIXTURES=1 cargo test -p halo-tenancy frozen_v1_fixture`.
fn write_snapshot_fixture() {
    let json = serde_json::to_string_pretty(&rich().reg.to_snapshot()).unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/snapshot_v1.json"
    );
    std::fs::write(path, json + "\n").unwrap();
}

#[test]
fn frozen_v1_fixture_still_loads_and_equals_the_replayed_scenario() {
    if std::env::var_os("HALO_BLESS_FIXTURES").is_some() {
        write_snapshot_fixture();
        return;
    }
    let snapshot: RegistrySnapshot = serde_json::from_str(FIXTURE).unwrap();
    assert_eq!(snapshot.version(), SNAPSHOT_VERSION);
    let fx = rich();
    fx.check_replay();
    let loaded = Registry::from_snapshot(snapshot).unwrap();
    // The fixture predates the sites' creation times (the one field added to v1
    // since, optional): it loads with them unknown, and equals the scenario but for
    // them.
    assert!(loaded.sites().all(|s| s.created_at().is_none()));
    let mut written = serde_json::to_value(fx.reg.to_snapshot()).unwrap();
    let created = without_created(&mut written);
    assert_eq!(created, fx.reg.sites().count(), "every site has its time");
    let expected = Registry::from_snapshot(serde_json::from_value(written.clone()).unwrap());
    assert_eq!(loaded, expected.unwrap());
    // The writer still writes format v1 exactly, plus `created` (a change needs a
    // new version).
    let frozen: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    assert_eq!(written, frozen);
    // What the scenario set up survives: vacancy, promotion record, demo, successor.
    let ab1 = GroupKey::new(
        Environment::Production,
        PmsId::new(PmsType::D4w, crn("AB1")),
    );
    let group = loaded.group(&ab1).unwrap();
    assert_eq!(group.holder(), None);
    assert_eq!(group.state().vacated_by().map(|m| m.halo_guid), Some(h(2)));
    assert_eq!(loaded.last_promotion(&ab1).map(|p| p.halo_guid), Some(h(2)));
    assert_eq!(
        loaded.lookup_crn(Environment::Production, PmsType::D4w, crn("BR2")),
        CrnLookup::Branch
    );
    assert_eq!(
        loaded.lookup_crn(Environment::Stage, PmsType::D4w, crn("AB1")),
        CrnLookup::DemoRealCrn
    );
    assert_eq!(loaded.successor(h(5)), Some(h(6)));
    assert!(loaded.site(h(6)).unwrap().is_authoritative());
    assert_eq!(
        loaded.link(l(1)).unwrap().sites(),
        &[h(1), h(4), h(5), h(6)]
    );
}

/// Removes every site's `created` from a snapshot's JSON; answers how many.
fn without_created(json: &mut serde_json::Value) -> usize {
    json["sites"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .filter_map(|site| site.as_object_mut().unwrap().remove("created"))
        .count()
}

/// A site's creation time is the `now` of its first registration: a re-announcement
/// and readiness leave it, a reinstall's new site has its own, and it survives a
/// snapshot and a replay of the log.
#[test]
fn a_sites_creation_time_is_its_first_registration_and_is_kept() {
    let fx = rich();
    let first = fx.reg.site(h(1)).unwrap().created_at().unwrap();
    assert!(
        first < fx.reg.site(h(1)).unwrap().last_heard(),
        "ready came later"
    );
    // Reinstall: the new site was created when the reinstall was applied.
    let old = fx.reg.site(h(5)).unwrap().created_at().unwrap();
    let new = fx.reg.site(h(6)).unwrap().created_at().unwrap();
    assert!(old < new);
    // A re-announcement later does not move it.
    let mut fx = fx;
    fx.attach(1, 1, identity("AB1", &["BR1", "BR2"])).unwrap();
    assert_eq!(fx.reg.site(h(1)).unwrap().created_at(), Some(first));
    assert!(fx.reg.site(h(1)).unwrap().last_heard() > first);
    // Kept through a snapshot (JSON) and through a replay from the log.
    let restored = through_json(&fx.reg);
    assert_eq!(restored.site(h(1)).unwrap().created_at(), Some(first));
    assert_eq!(restored.site(h(6)).unwrap().created_at(), Some(new));
    fx.check_replay();
    let json = serde_json::to_value(fx.reg.to_snapshot()).unwrap();
    assert_eq!(json["sites"][0]["created"], serde_json::json!(first));
}

/// Applies `damage` to the JSON of the rich snapshot and loads it.
fn load_damaged(damage: impl FnOnce(&mut serde_json::Value)) -> Result<Registry, TenancyError> {
    let mut json = serde_json::to_value(rich().reg.to_snapshot()).unwrap();
    damage(&mut json);
    let snapshot: RegistrySnapshot = serde_json::from_value(json).unwrap();
    Registry::from_snapshot(snapshot)
}

fn is_invalid(result: Result<Registry, TenancyError>) -> bool {
    matches!(
        result,
        Err(TenancyError::InvalidSnapshot { .. } | TenancyError::Authority(_))
    )
}

#[test]
fn unknown_version_is_refused() {
    assert_eq!(
        load_damaged(|j| j["version"] = 2.into()).unwrap_err(),
        TenancyError::UnsupportedSnapshotVersion(2)
    );
    assert_eq!(
        load_damaged(|j| j["version"] = 0.into()).unwrap_err(),
        TenancyError::UnsupportedSnapshotVersion(0)
    );
}

#[test]
fn damaged_snapshots_are_refused() {
    assert!(load_damaged(|_| {}).is_ok());
    // A site twice.
    assert!(is_invalid(load_damaged(|j| {
        let first = j["sites"][0].clone();
        j["sites"].as_array_mut().unwrap().push(first);
    })));
    // A retired site marked authoritative (site 4 was removed).
    assert!(is_invalid(load_damaged(
        |j| j["sites"][3]["auth"] = true.into()
    )));
    // Two authoritative sites in one group (sites 1 and 2 share AB1; 2 is retired, so
    // mark 1 and a copy of 1 under a new GUID).
    assert!(is_invalid(load_damaged(|j| {
        j["sites"][0]["auth"] = true.into();
        let mut twin = j["sites"][0].clone();
        twin["halo"] = h(9).to_string().into();
        j["sites"].as_array_mut().unwrap().push(twin);
    })));
    // An unknown Link, a bad table index, a live site off its group's epoch.
    assert!(is_invalid(load_damaged(
        |j| j["sites"][0]["link"] = l(9).to_string().into()
    )));
    assert!(is_invalid(load_damaged(
        |j| j["sites"][0]["ver"] = 99.into()
    )));
    assert!(is_invalid(load_damaged(
        |j| j["links"][0]["ver"] = 99.into()
    )));
    assert!(is_invalid(load_damaged(
        |j| j["sites"][0]["cats"] = 99.into()
    )));
    assert!(is_invalid(load_damaged(
        |j| j["sites"][0]["epoch"] = 42.into()
    )));
    // A written group at another epoch than its live members, a group twice, and a
    // record for a group that needs none (two encodings of one state).
    assert!(is_invalid(load_damaged(|j| {
        for g in j["groups"].as_array_mut().unwrap() {
            g["epoch"] = 42.into();
        }
    })));
    assert!(is_invalid(load_damaged(|j| {
        let first = j["groups"][0].clone();
        j["groups"].as_array_mut().unwrap().push(first);
    })));
    assert!(is_invalid(load_damaged(|j| {
        let extra = serde_json::json!({"env": "production", "pms_id": "D4w:EF3", "epoch": 2});
        j["groups"].as_array_mut().unwrap().push(extra);
    })));
    // A successor that names an unknown site.
    assert!(is_invalid(load_damaged(
        |j| j["successors"][0][1] = h(9).to_string().into()
    )));
}

#[test]
fn equal_registries_give_equal_snapshots_whatever_the_hash_seeds() {
    // Each map has its own random seed, so two equal registries iterate differently.
    let (a, b) = (rich().reg, rich().reg);
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a.to_snapshot()).unwrap(),
        serde_json::to_string(&b.to_snapshot()).unwrap()
    );
    assert_eq!(through_json(&a), a);
}
