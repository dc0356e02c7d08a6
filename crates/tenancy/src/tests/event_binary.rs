//! The binary form of a [`LogEntry`]: a frozen fixture still reads, every entry
//! round-trips, and damaged bytes give errors, never panics.

use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType, Timestamp};
use proptest::prelude::*;

use crate::{BinaryEventError, Catalogue, Event, LogEntry, SiteIdentity};

/// `tests/fixtures/events_v1.bin`: the entries of `events_v1.jsonl`, each as a
/// 4-byte little-endian length and its binary form, as the first binary build wrote
/// them.
const FIXTURE_BIN: &[u8] = include_bytes!("../../tests/fixtures/events_v1.bin");
const FIXTURE_JSON: &str = include_str!("../../tests/fixtures/events_v1.jsonl");

fn fixture_records() -> Vec<&'static [u8]> {
    let mut rest = FIXTURE_BIN;
    let mut records = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        let (record, tail) = tail.split_at(len);
        records.push(record);
        rest = tail;
    }
    records
}

fn json_entries() -> Vec<LogEntry> {
    FIXTURE_JSON
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn the_frozen_binary_fixture_reads_as_its_json_twin_and_is_written_the_same() {
    let json = json_entries();
    let records = fixture_records();
    assert_eq!(records.len(), json.len());
    // Every variant is in the fixture.
    let mut variants: Vec<u8> = json.iter().map(|e| e.event.binary_variant()).collect();
    variants.sort_unstable();
    variants.dedup();
    assert_eq!(variants, (0..=8).collect::<Vec<u8>>());
    for (bytes, entry) in records.iter().zip(&json) {
        assert_eq!(&LogEntry::from_binary(bytes).unwrap(), entry);
        // The format is frozen: this build writes the same bytes.
        assert_eq!(&entry.to_binary(), bytes, "{entry:?}");
    }
    // And the binary is much smaller than the JSON.
    assert!(FIXTURE_BIN.len() * 2 < FIXTURE_JSON.len());
}

#[test]
fn values_json_refuses_binary_refuses_too() {
    let entry = LogEntry::new(
        Timestamp::from_millis(5),
        Event::SiteReady {
            link: LinkGuid::from_u128(1).unwrap(),
            halo_guid: HaloGuid::from_u128(2).unwrap(),
        },
    );
    let good = entry.to_binary();
    assert_eq!(LogEntry::from_binary(&good).unwrap(), entry);
    // A nil Halo GUID (the last 16 bytes).
    let mut nil = good.clone();
    let n = nil.len();
    nil[n - 16..].fill(0);
    assert!(matches!(
        LogEntry::from_binary(&nil),
        Err(BinaryEventError::Invalid(_))
    ));
    // An unknown variant.
    let mut unknown = good.clone();
    unknown[0] = 9;
    assert_eq!(
        LogEntry::from_binary(&unknown),
        Err(BinaryEventError::UnknownVariant(9))
    );
    // Trailing bytes.
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        LogEntry::from_binary(&long),
        Err(BinaryEventError::TrailingBytes)
    );
    // A version beyond u32, and a number not in its shortest form.
    let mut huge = vec![2u8, 0x80, 0x80, 0x80, 0x80, 0x10, 5];
    huge.extend_from_slice(&good[3..]);
    assert!(matches!(
        LogEntry::from_binary(&huge),
        Err(BinaryEventError::Invalid(_))
    ));
    let mut padded = vec![2u8, 0x81, 0x00];
    padded.extend_from_slice(&good[2..]);
    assert!(matches!(
        LogEntry::from_binary(&padded),
        Err(BinaryEventError::Invalid(_))
    ));
    // A CRN that parses but is not canonical, an environment and a flag out of range.
    let attached = LogEntry::new(
        Timestamp::from_millis(5),
        Event::SiteAttached {
            link: LinkGuid::from_u128(1).unwrap(),
            halo_guid: HaloGuid::from_u128(2).unwrap(),
            identity: SiteIdentity {
                pms_type: PmsType::D4w,
                parent_crn: "AB1".parse().unwrap(),
                branch_crns: vec![],
                practice_name: String::new(),
                pms_version: String::new(),
                catalogues: vec![],
                is_demo: true,
            },
        },
    );
    let good = attached.to_binary();
    let crn_at = good.windows(3).position(|w| w == b"AB1").unwrap();
    let mut lower = good.clone();
    lower[crn_at] = b'a';
    assert!(matches!(
        LogEntry::from_binary(&lower),
        Err(BinaryEventError::Invalid(_))
    ));
    let mut flag = good.clone();
    *flag.last_mut().unwrap() = 2;
    assert!(matches!(
        LogEntry::from_binary(&flag),
        Err(BinaryEventError::Invalid(_))
    ));
    let mut pms = good.clone();
    pms[crn_at - 2] = 3;
    assert!(matches!(
        LogEntry::from_binary(&pms),
        Err(BinaryEventError::Invalid(_))
    ));
    let registered = LogEntry::new(
        Timestamp::from_millis(5),
        Event::LinkRegistered {
            link: LinkGuid::from_u128(1).unwrap(),
            environment: Environment::Production,
            version: "1".into(),
        },
    )
    .to_binary();
    let mut env = registered.clone();
    env[3 + 16] = 2;
    assert!(matches!(
        LogEntry::from_binary(&env),
        Err(BinaryEventError::Invalid(_))
    ));
    let mut utf8 = registered.clone();
    *utf8.last_mut().unwrap() = 0xff;
    assert!(matches!(
        LogEntry::from_binary(&utf8),
        Err(BinaryEventError::Invalid(_))
    ));
}

fn arb_link() -> impl Strategy<Value = LinkGuid> {
    (1..=u128::MAX).prop_map(|n| LinkGuid::from_u128(n).unwrap())
}

fn arb_halo() -> impl Strategy<Value = HaloGuid> {
    (1..=u128::MAX).prop_map(|n| HaloGuid::from_u128(n).unwrap())
}

fn arb_crn() -> impl Strategy<Value = Crn> {
    "[A-Za-z0-9]{1,20}".prop_map(|s| s.parse().unwrap())
}

fn arb_crns() -> impl Strategy<Value = Vec<Crn>> {
    prop::collection::vec(arb_crn(), 0..4)
}

fn arb_env() -> impl Strategy<Value = Environment> {
    prop_oneof![Just(Environment::Stage), Just(Environment::Production)]
}

fn arb_identity() -> impl Strategy<Value = SiteIdentity> {
    (
        prop::sample::select(PmsType::ALL.to_vec()),
        arb_crn(),
        arb_crns(),
        any::<String>(),
        any::<String>(),
        prop::collection::vec((any::<String>(), any::<bool>()), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(pms_type, parent_crn, branch_crns, practice_name, pms_version, cats, is_demo)| {
                SiteIdentity {
                    pms_type,
                    parent_crn,
                    branch_crns,
                    practice_name,
                    pms_version,
                    catalogues: cats
                        .into_iter()
                        .map(|(name, is_default)| Catalogue {
                            name: name.into(),
                            is_default,
                        })
                        .collect(),
                    is_demo,
                }
            },
        )
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (arb_link(), arb_env(), any::<String>()).prop_map(|(link, environment, version)| {
            Event::LinkRegistered {
                link,
                environment,
                version,
            }
        }),
        (arb_link(), arb_halo(), arb_identity()).prop_map(|(link, halo_guid, identity)| {
            Event::SiteAttached {
                link,
                halo_guid,
                identity,
            }
        }),
        (arb_link(), arb_halo()).prop_map(|(link, halo_guid)| Event::SiteReady { link, halo_guid }),
        (arb_link(), arb_halo())
            .prop_map(|(link, halo_guid)| Event::SiteRemoved { link, halo_guid }),
        arb_link().prop_map(|link| Event::LinkUninstalled { link }),
        (arb_link(), arb_halo(), arb_halo()).prop_map(|(link, previous, halo_guid)| {
            Event::Reinstalled {
                link,
                previous,
                halo_guid,
            }
        }),
        arb_link().prop_map(|link| Event::Heartbeat { link }),
        (arb_link(), arb_halo(), arb_crns()).prop_map(|(link, halo_guid, branch_crns)| {
            Event::BranchCrnsChanged {
                link,
                halo_guid,
                branch_crns,
            }
        }),
        (arb_halo(), any::<String>(), any::<String>()).prop_map(|(halo_guid, actor, reason)| {
            Event::Promoted {
                halo_guid,
                actor,
                reason,
            }
        }),
    ]
}

fn arb_entry() -> impl Strategy<Value = LogEntry> {
    (any::<u32>(), any::<u64>(), arb_event()).prop_map(|(version, at, event)| LogEntry {
        version,
        at: Timestamp::from_millis(at),
        event,
    })
}

proptest! {
    #[test]
    fn every_entry_round_trips(entry in arb_entry()) {
        let bytes = entry.to_binary();
        prop_assert_eq!(bytes[0], entry.event.binary_variant());
        prop_assert_eq!(LogEntry::from_binary(&bytes), Ok(entry));
    }

    #[test]
    fn binary_growth_counts_what_replay_sizes_for(entry in arb_entry()) {
        let expected = match entry.event {
            Event::SiteAttached { .. } | Event::Reinstalled { .. } => (1, 0),
            Event::LinkRegistered { .. } => (0, 1),
            _ => (0, 0),
        };
        prop_assert_eq!(LogEntry::binary_growth(&entry.to_binary()), expected);
    }

    #[test]
    fn every_strict_prefix_is_an_error(entry in arb_entry()) {
        let bytes = entry.to_binary();
        for end in 0..bytes.len() {
            prop_assert!(LogEntry::from_binary(&bytes[..end]).is_err(), "prefix of {} bytes", end);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..160)) {
        // Whatever decodes must write back to the same bytes (one encoding a value).
        if let Ok(entry) = LogEntry::from_binary(&bytes) {
            prop_assert_eq!(entry.to_binary(), bytes);
        }
    }

    #[test]
    fn damaged_entries_never_panic(entry in arb_entry(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = entry.to_binary();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        if let Ok(back) = LogEntry::from_binary(&bytes) {
            prop_assert_eq!(back.to_binary(), bytes);
        }
    }
}
