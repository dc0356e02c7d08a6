//! The compact representations: room per site, and that packing loses nothing.

use std::mem::size_of;

use halo_ids::{Crn, Environment, PmsType};
use proptest::prelude::*;

use crate::SiteStatus;
use crate::site::{BranchList, SiteFlags};

/// A million sites, Links and groups: a field added carelessly grows the registry
/// by megabytes. These bounds are the layouts' sizes today.
#[test]
fn hot_structures_keep_their_size() {
    assert!(
        size_of::<crate::Site>() <= 120,
        "Site is {} bytes",
        size_of::<crate::Site>()
    );
    assert!(
        size_of::<crate::Link>() <= 64,
        "Link is {} bytes",
        size_of::<crate::Link>()
    );
    assert!(size_of::<BranchList>() <= 8);
    let claim = size_of::<(crate::GroupKey, crate::registry::BranchClaim)>();
    assert!(claim <= 32, "a branch claim is {claim} bytes");
    // 900 000 groups in the 1M-site mix: 72 bytes each with the key (was 88).
    let group = size_of::<crate::registry::GroupEntry>();
    assert!(group <= 72, "a group with its key is {group} bytes");
}

/// Every combination of the packed fields reads back as written, and changing the
/// status or the authority flag changes nothing else.
#[test]
fn site_flags_round_trip_every_combination() {
    let statuses = [
        SiteStatus::Initialising,
        SiteStatus::Active,
        SiteStatus::Removed,
        SiteStatus::Uninstalled,
    ];
    for environment in [Environment::Stage, Environment::Production] {
        for pms in PmsType::ALL {
            for demo in [false, true] {
                for status in statuses {
                    for auth in [false, true] {
                        let mut f = SiteFlags::new(environment, pms, demo, status, auth);
                        assert_eq!(f.environment(), environment);
                        assert_eq!(f.pms_type(), pms);
                        assert_eq!(f.is_demo(), demo);
                        assert_eq!(f.status(), status);
                        assert_eq!(f.authoritative(), auth);
                        for next in statuses {
                            f.set_status(next);
                            f.set_authoritative(!auth);
                            assert_eq!(f.status(), next);
                            assert_eq!(f.authoritative(), !auth);
                            assert_eq!(f.environment(), environment);
                            assert_eq!(f.pms_type(), pms);
                            assert_eq!(f.is_demo(), demo);
                            f.set_authoritative(auth);
                        }
                    }
                }
            }
        }
    }
}

fn arb_crns() -> impl Strategy<Value = Vec<Crn>> {
    prop::collection::vec("[A-Z0-9]{1,20}", 0..6)
        .prop_map(|v| v.iter().map(|s| s.parse().unwrap()).collect())
}

proptest! {
    /// A branch list gives back the slice it was made from, however made, and two
    /// lists are equal exactly when their slices are (an empty one holds no block).
    #[test]
    fn branch_list_is_its_slice(a in arb_crns(), b in arb_crns()) {
        let la = BranchList::from(a.as_slice());
        let lb = BranchList::from(b.clone());
        prop_assert_eq!(la.as_slice(), a.as_slice());
        prop_assert_eq!(lb.as_slice(), b.as_slice());
        prop_assert_eq!(la.len(), a.len());
        prop_assert_eq!(la == lb, a == b);
        prop_assert_eq!(BranchList::from(Vec::new()), BranchList::default());
    }
}

mod apply_into {
    use halo_ids::{Environment, HaloGuid, LinkGuid, PmsType, Timestamp};

    use crate::{Change, Event, Registry, SiteIdentity};

    fn attach(link: LinkGuid, n: u128) -> Event {
        Event::SiteAttached {
            link,
            halo_guid: HaloGuid::from_u128(100 + n).unwrap(),
            identity: SiteIdentity {
                pms_type: PmsType::D4w,
                parent_crn: format!("P{n}").parse().unwrap(),
                branch_crns: vec![format!("B{n}").parse().unwrap()],
                practice_name: format!("Practice {n}"),
                pms_version: "9.6".into(),
                catalogues: vec![],
                is_demo: false,
            },
        }
    }

    /// `apply_into` appends what `apply` returns, after what the buffer held, and a
    /// refused event appends nothing and changes nothing.
    #[test]
    fn apply_into_appends_what_apply_returns() {
        let link = LinkGuid::from_u128(1).unwrap();
        let now = Timestamp::from_millis(5);
        let events = vec![
            Event::LinkRegistered {
                link,
                environment: Environment::Stage,
                version: "1.0".into(),
            },
            attach(link, 1),
            attach(link, 2),
            Event::Heartbeat { link },
            Event::SiteRemoved {
                link,
                halo_guid: HaloGuid::from_u128(101).unwrap(),
            },
        ];
        let (mut a, mut b) = (Registry::new(), Registry::new());
        let mut buffer = vec![Change::LinkUpserted(link)];
        let mut expected = buffer.clone();
        for e in &events {
            expected.extend(a.apply(e, now).unwrap());
            b.apply_into(e, now, &mut buffer).unwrap();
            assert_eq!(buffer, expected);
            assert_eq!(a, b);
        }
        let before = b.clone();
        let refused = attach(LinkGuid::from_u128(9).unwrap(), 3);
        assert!(b.apply_into(&refused, now, &mut buffer).is_err());
        assert_eq!(buffer, expected);
        assert_eq!(b, before);
    }

    /// A registry that made room first ends equal to one that did not.
    #[test]
    fn reserving_changes_nothing_but_room() {
        let link = LinkGuid::from_u128(1).unwrap();
        let now = Timestamp::from_millis(5);
        let mut a = Registry::new();
        let mut b = Registry::new();
        b.reserve(1000, 10);
        for r in [&mut a, &mut b] {
            r.apply(
                &Event::LinkRegistered {
                    link,
                    environment: Environment::Stage,
                    version: "1.0".into(),
                },
                now,
            )
            .unwrap();
            for n in 0..50 {
                r.apply(&attach(link, n), now).unwrap();
            }
        }
        assert_eq!(a, b);
        assert_eq!(b.site_count(), 50);
    }
}

mod bulk_load {
    use proptest::prelude::*;

    use crate::registry::{Dense, Keyed};

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Item {
        key: u64,
        value: u32,
    }

    impl Keyed for Item {
        type Key = u64;
        const ORDERED: bool = true;
        fn key(&self) -> u64 {
            self.key
        }
    }

    proptest! {
        /// A table loaded in bulk is the table inserted one by one: the same values
        /// in the same order, each found at its position; keys that repeat refuse it.
        #[test]
        fn bulk_load_equals_one_by_one(keys in prop::collection::vec(0u64..5_000, 0..3_000)) {
            let items: Vec<Item> = keys
                .iter()
                .zip(0u32..)
                .map(|(&key, value)| Item { key, value })
                .collect();
            let mut one_by_one = Dense::default();
            let mut distinct = true;
            for item in &items {
                distinct &= one_by_one.insert_new(item.clone());
            }
            match Dense::from_distinct(items.clone()) {
                None => prop_assert!(!distinct, "distinct keys refused"),
                Some(bulk) => {
                    prop_assert!(distinct, "a repeated key accepted");
                    prop_assert!(bulk == one_by_one);
                    for (i, item) in items.iter().enumerate() {
                        prop_assert_eq!(bulk.position(&item.key), Some(i));
                        prop_assert_eq!(bulk.get(&item.key), Some(item));
                    }
                    prop_assert_eq!(bulk.position(&5_001), None);
                }
            }
        }
    }
}

mod branch_table {
    use std::collections::HashMap;

    use halo_authority::GroupKey;
    use halo_ids::{Environment, PmsId, PmsType};
    use proptest::prelude::*;

    use crate::registry::BranchTable;

    fn key(n: u8) -> GroupKey {
        GroupKey::new(
            Environment::Stage,
            PmsId::new(PmsType::D4w, format!("B{n}").parse().unwrap()),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Claims and releases in any order leave the table a map of counts would:
        /// each key found with its first parent and its count, removed at zero,
        /// wherever removals moved the other entries.
        #[test]
        fn branch_table_follows_a_map_of_counts(
            ops in prop::collection::vec((any::<bool>(), 0u8..40, 0u32..5), 0..400),
        ) {
            let mut table = BranchTable::default();
            let mut model: HashMap<GroupKey, (u32, u32)> = HashMap::new();
            for (claim, n, parent) in ops {
                let k = key(n);
                if claim {
                    table.claim(k, parent);
                    model.entry(k).or_insert((parent, 0)).1 += 1;
                } else {
                    table.release(&k);
                    if let Some(entry) = model.get_mut(&k) {
                        entry.1 -= 1;
                        if entry.1 == 0 {
                            model.remove(&k);
                        }
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                for m in 0..40 {
                    let k = key(m);
                    let got = table.get(&k).map(|c| (c.parent, c.claims));
                    prop_assert_eq!(got, model.get(&k).copied());
                    prop_assert_eq!(table.contains_key(&k), model.contains_key(&k));
                }
                let listed: HashMap<GroupKey, (u32, u32)> =
                    table.iter().map(|(k, c)| (*k, (c.parent, c.claims))).collect();
                prop_assert_eq!(&listed, &model);
            }
        }
    }
}

mod position_hint {
    use halo_ids::{Environment, HaloGuid, LinkGuid, PmsType, Timestamp};

    use crate::{Event, LogEntry, Registry, SiteIdentity};

    fn link(n: u128) -> LinkGuid {
        LinkGuid::from_u128(n).unwrap()
    }

    fn site(n: u128) -> HaloGuid {
        HaloGuid::from_u128(100 + n).unwrap()
    }

    fn identity(n: u128) -> SiteIdentity {
        SiteIdentity {
            pms_type: PmsType::D4w,
            parent_crn: format!("P{n}").parse().unwrap(),
            branch_crns: vec![],
            practice_name: format!("Practice {n}"),
            pms_version: "9.6".into(),
            catalogues: vec![],
            is_demo: false,
        }
    }

    /// Two Links of one database each, and a third serving two.
    fn log() -> Vec<LogEntry> {
        let mut events = Vec::new();
        for l in 1..=3 {
            events.push(Event::LinkRegistered {
                link: link(l),
                environment: Environment::Stage,
                version: "1.0".into(),
            });
        }
        for (l, s) in [(1, 1), (2, 2), (3, 3), (3, 4)] {
            events.push(Event::SiteAttached {
                link: link(l),
                halo_guid: site(s),
                identity: identity(s),
            });
        }
        events
            .into_iter()
            .zip(1u64..)
            .map(|(e, t)| LogEntry::new(Timestamp::from_millis(t), e))
            .collect()
    }

    /// A Link's remembered position of its first site is only a hint: pointed at
    /// another site's position, a "ready" and a heartbeat still change that Link's
    /// own site, exactly as with the right hint.
    #[test]
    fn a_wrong_site_position_hint_is_not_followed() {
        let right = Registry::replay(&log()).unwrap();
        let mut wrong = right.clone();
        for l in wrong.links.values_mut() {
            l.first_site_at = 0;
        }
        let mut none = right.clone();
        for l in none.links.values_mut() {
            l.first_site_at = crate::site::NO_POSITION;
        }
        let later = [
            Event::SiteReady {
                link: link(2),
                halo_guid: site(2),
            },
            Event::Heartbeat { link: link(2) },
            Event::Heartbeat { link: link(3) },
            Event::SiteReady {
                link: link(1),
                halo_guid: site(2),
            },
        ];
        let mut right = right;
        for (event, t) in later.iter().zip(100u64..) {
            let now = Timestamp::from_millis(t);
            let expected = right.apply(event, now);
            assert_eq!(wrong.apply(event, now), expected, "{event:?}");
            assert_eq!(none.apply(event, now), expected, "{event:?}");
            assert_eq!(wrong, right);
            assert_eq!(none, right);
        }
        let s2 = right.site(site(2)).unwrap();
        assert_eq!(s2.last_heard(), Timestamp::from_millis(101));
        assert_eq!(
            right.site(site(1)).unwrap().last_heard(),
            Timestamp::from_millis(4)
        );
    }
}
