//! The binary snapshot form: round trips over generated registries (equal to the
//! JSON form's), the frozen binary fixture, old JSON snapshots read into the same
//! registry, and damaged bytes refused without a panic.

use proptest::prelude::*;

use super::props::{arb_log, run};
use super::snapshot::{rich, through_json};
use crate::{Registry, RegistrySnapshot, TenancyError};

fn through_bytes(reg: &Registry) -> Registry {
    let bytes = reg.to_snapshot().to_bytes();
    Registry::from_snapshot(RegistrySnapshot::from_bytes(&bytes).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// snapshot -> bytes -> snapshot is the identity, the bytes are canonical (equal
    /// registries, equal bytes), and the restored registry equals the original and
    /// the one restored through JSON.
    #[test]
    fn binary_round_trips_like_json(log in arb_log(200)) {
        let (live, _) = run(&log, false)?;
        let snapshot = live.to_snapshot();
        let bytes = snapshot.to_bytes();
        prop_assert!(RegistrySnapshot::is_binary(&bytes));
        let decoded = RegistrySnapshot::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&decoded, &snapshot);
        let restored = Registry::from_snapshot(decoded).unwrap();
        prop_assert_eq!(&restored, &live);
        prop_assert_eq!(restored.to_snapshot().to_bytes(), bytes);
        prop_assert_eq!(&through_json(&live), &restored);
    }

    /// Any damage to the bytes is refused with a typed error or decodes to some
    /// snapshot; it never panics, and `from_snapshot` then checks it like JSON.
    #[test]
    fn damaged_bytes_never_panic(
        log in arb_log(40),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let (live, _) = run(&log, false)?;
        let bytes = live.to_snapshot().to_bytes();
        let mut damaged = bytes.clone();
        for (at, value) in &flips {
            let i = at.index(damaged.len());
            damaged[i] = *value;
        }
        if let Ok(snapshot) = RegistrySnapshot::from_bytes(&damaged) {
            let _ = Registry::from_snapshot(snapshot);
        }
        let shorter = &bytes[..cut.index(bytes.len())];
        prop_assert!(RegistrySnapshot::from_bytes(shorter).is_err());
    }
}

const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/snapshot_v1.bin");
const FIXTURE_V2: &[u8] = include_bytes!("../../tests/fixtures/snapshot_v2.bin");
const JSON_FIXTURE: &str = include_str!("../../tests/fixtures/snapshot_v1.json");

/// The scenario's registry as a snapshot written before sites had creation times.
fn rich_without_created() -> Registry {
    let mut json = serde_json::to_value(rich().reg.to_snapshot()).unwrap();
    for site in json["sites"].as_array_mut().unwrap() {
        assert!(site.as_object_mut().unwrap().remove("created").is_some());
    }
    Registry::from_snapshot(serde_json::from_value(json).unwrap()).unwrap()
}

/// Rewrites the layout-2 fixture from [`rich`] when `HALO_BLESS_FIXTURES=1` is set.
/// Do that only when the byte layout changes (then add a new fixture beside the old).
#[test]
fn frozen_binary_fixtures_still_load_and_equal_the_json_one() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/snapshot_v2.bin"
    );
    if std::env::var_os("HALO_BLESS_FIXTURES").is_some() {
        std::fs::write(path, rich().reg.to_snapshot().to_bytes()).unwrap();
        return;
    }
    let fx = rich();
    // Layout 1 (no creation times) still loads, into the same registry as the old
    // JSON snapshot, with the creation times unknown.
    let from_v1 = RegistrySnapshot::from_bytes(FIXTURE).unwrap();
    let from_json: RegistrySnapshot = serde_json::from_str(JSON_FIXTURE).unwrap();
    assert!(!RegistrySnapshot::is_binary(JSON_FIXTURE.as_bytes()));
    assert_eq!(from_v1, from_json);
    let loaded_v1 = Registry::from_snapshot(from_v1).unwrap();
    assert!(loaded_v1.sites().all(|s| s.created_at().is_none()));
    assert_eq!(loaded_v1, rich_without_created());
    // Layout 2 keeps them.
    let from_v2 = RegistrySnapshot::from_bytes(FIXTURE_V2).unwrap();
    let loaded_v2 = Registry::from_snapshot(from_v2).unwrap();
    assert!(loaded_v2.sites().all(|s| s.created_at().is_some()));
    assert_eq!(loaded_v2, fx.reg);
    // The writer still writes layout 2 exactly.
    assert_eq!(fx.reg.to_snapshot().to_bytes(), FIXTURE_V2);
    assert_eq!(through_bytes(&fx.reg), fx.reg);
    // Much smaller than the JSON.
    assert!(FIXTURE_V2.len() * 2 < serde_json::to_vec(&fx.reg.to_snapshot()).unwrap().len());
}

#[test]
fn every_truncation_and_trailing_bytes_are_refused() {
    let bytes = rich().reg.to_snapshot().to_bytes();
    for n in 0..bytes.len() {
        assert!(
            matches!(
                RegistrySnapshot::from_bytes(&bytes[..n]),
                Err(TenancyError::InvalidSnapshot { .. })
            ),
            "a snapshot cut at {n} of {} bytes was read",
            bytes.len()
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        RegistrySnapshot::from_bytes(&longer),
        Err(TenancyError::InvalidSnapshot { .. })
    ));
}

#[test]
fn unknown_layouts_and_absurd_counts_are_refused() {
    let bytes = rich().reg.to_snapshot().to_bytes();
    // The layout byte follows the 4-byte magic.
    let mut other = bytes.clone();
    other[4] = 3;
    assert_eq!(
        RegistrySnapshot::from_bytes(&other).unwrap_err(),
        TenancyError::UnsupportedSnapshotVersion(3)
    );
    // JSON is not binary.
    assert!(RegistrySnapshot::from_bytes(b"{\"version\":1}").is_err());
    // A count of 2^63 texts in a few bytes: refused before reserving anything.
    let mut huge = bytes[..6].to_vec();
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(matches!(
        RegistrySnapshot::from_bytes(&huge),
        Err(TenancyError::InvalidSnapshot { .. })
    ));
    // A varint longer than 64 bits.
    let mut long = bytes[..5].to_vec();
    long.extend_from_slice(&[0xff; 11]);
    assert!(matches!(
        RegistrySnapshot::from_bytes(&long),
        Err(TenancyError::InvalidSnapshot { .. })
    ));
}

#[test]
fn a_site_whose_link_is_missing_round_trips_and_is_then_refused() {
    // Binary keeps even an inconsistent snapshot as it was (the Link is written by
    // GUID when the Link table lacks it), so `from_snapshot` decides, as for JSON.
    let mut json = serde_json::to_value(rich().reg.to_snapshot()).unwrap();
    json["sites"][0]["link"] = super::fixture::l(9).to_string().into();
    let snapshot: RegistrySnapshot = serde_json::from_value(json).unwrap();
    let decoded = RegistrySnapshot::from_bytes(&snapshot.to_bytes()).unwrap();
    assert_eq!(decoded, snapshot);
    assert!(matches!(
        Registry::from_snapshot(decoded),
        Err(TenancyError::InvalidSnapshot { .. })
    ));
}
