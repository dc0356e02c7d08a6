//! Property test of the bulk load ([`Router::load`]): over generated tenancy histories,
//! the table it builds (from empty, and over a table already holding an older state)
//! equals the one built by applying each event's changes as they come, and the
//! writer's bookkeeping it leaves (holders, newest epochs) decides later publications
//! the same way.

#![allow(clippy::unwrap_used)]

use halo_ids::{Environment, HaloGuid, PmsType, Timestamp};
use halo_tenancy::{Catalogue, Event, Registry, SiteIdentity};
use proptest::prelude::*;

use crate::fixture::{crn, halo, link, pms_id};
use crate::groups::GroupSlot;
use crate::router::fresh_groups;
use crate::{Published, Router, RouterConfig, SiteRoute};
use halo_authority::{Epoch, GroupKey};

const SITES: u128 = 8;

#[derive(Debug, Clone)]
enum Op {
    Attach {
        link: u128,
        site: u128,
        practice: u32,
    },
    Ready(u128),
    Remove(u128),
    Promote(u128),
    Uninstall(u128),
    Reinstall {
        previous: u128,
        site: u128,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..4u128, 0..SITES, 0..3u32)
            .prop_map(|(link, site, practice)| Op::Attach { link, site, practice }),
        3 => (0..SITES).prop_map(Op::Ready),
        1 => (0..SITES).prop_map(Op::Remove),
        1 => (0..SITES).prop_map(Op::Promote),
        1 => (1..4u128).prop_map(Op::Uninstall),
        1 => (0..SITES, 0..SITES).prop_map(|(previous, site)| Op::Reinstall { previous, site }),
    ]
}

/// The events an op stands for, given the registry as it is (which Link serves a site).
fn events(registry: &Registry, op: &Op) -> Vec<Event> {
    let served_by = |site: u128| registry.site(halo(site)).map(|s| s.link_guid());
    match *op {
        Op::Attach {
            link: l,
            site,
            practice,
        } => {
            let mut out = Vec::new();
            if registry.link(link(l)).is_none() {
                out.push(Event::LinkRegistered {
                    link: link(l),
                    environment: Environment::Stage,
                    version: "1.0".into(),
                });
            }
            out.push(Event::SiteAttached {
                link: link(l),
                halo_guid: halo(site),
                identity: SiteIdentity {
                    pms_type: PmsType::D4w,
                    parent_crn: crn(practice),
                    branch_crns: Vec::new(),
                    practice_name: format!("Practice {practice}"),
                    pms_version: "1".into(),
                    catalogues: vec![Catalogue {
                        name: "d4w".into(),
                        is_default: true,
                    }],
                    is_demo: false,
                },
            });
            out
        }
        Op::Ready(site) => served_by(site)
            .map(|link| Event::SiteReady {
                link,
                halo_guid: halo(site),
            })
            .into_iter()
            .collect(),
        Op::Remove(site) => served_by(site)
            .map(|link| Event::SiteRemoved {
                link,
                halo_guid: halo(site),
            })
            .into_iter()
            .collect(),
        Op::Promote(site) => vec![Event::Promoted {
            halo_guid: halo(site),
            actor: "support".into(),
            reason: "test".into(),
        }],
        Op::Uninstall(l) => vec![Event::LinkUninstalled { link: link(l) }],
        Op::Reinstall { previous, site } => served_by(previous)
            .map(|link| Event::Reinstalled {
                link,
                previous: halo(previous),
                halo_guid: halo(site),
            })
            .into_iter()
            .collect(),
    }
}

/// What each router resolves for every site that ever existed.
fn table(router: &Router, sites: &[HaloGuid]) -> Vec<Option<SiteRoute>> {
    sites
        .iter()
        .map(|s| router.resolve(*s).map(|r| r.site().clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn load_builds_the_table_that_changes_one_by_one_build(
        ops in prop::collection::vec(op(), 1..40),
        cut in 0usize..40,
    ) {
        let mut registry = Registry::new();
        let one_by_one = Router::new(RouterConfig::standard());
        // Loaded part way through the history, then fed the rest one by one, then
        // loaded again over what it holds (the path for a table that is not empty).
        let reloaded = Router::new(RouterConfig::standard());
        for (i, op) in ops.iter().enumerate() {
            if i == cut {
                reloaded.load(&registry);
            }
            let now = Timestamp::from_millis(1_000_000 + i as u64);
            for event in events(&registry, op) {
                if let Ok(changes) = registry.apply(&event, now) {
                    one_by_one.apply_changes(&registry, &changes);
                    if i >= cut {
                        reloaded.apply_changes(&registry, &changes);
                    }
                }
            }
        }
        reloaded.load(&registry);
        let loaded = Router::new(RouterConfig::standard());
        loaded.load(&registry);

        let sites: Vec<HaloGuid> = registry.sites().map(|s| s.halo_guid()).collect();
        let expected = table(&one_by_one, &sites);
        prop_assert_eq!(&table(&loaded, &sites), &expected);
        prop_assert_eq!(&table(&reloaded, &sites), &expected);
        prop_assert_eq!(loaded.site_count(), one_by_one.site_count());
        prop_assert_eq!(reloaded.site_count(), one_by_one.site_count());

        // The bookkeeping: each published record claims authority once with its
        // group's epoch less one (stale unless the epoch is zero), then once more with
        // it plus one (a promotion: demotes the holder); every router decides alike.
        for site in &sites {
            let Some(current) = one_by_one.resolve(*site).map(|r| r.site().clone()) else {
                continue;
            };
            for epoch in [current.epoch.get().saturating_sub(1), current.epoch.get() + 1] {
                let claim = SiteRoute {
                    authoritative: true,
                    epoch: halo_ids::Epoch::new(epoch),
                    ..current.clone()
                };
                let expected: Published = one_by_one.publish(claim.clone());
                prop_assert_eq!(loaded.publish(claim.clone()), expected);
                prop_assert_eq!(reloaded.publish(claim), expected);
                let now = table(&one_by_one, &sites);
                prop_assert_eq!(&table(&loaded, &sites), &now);
                prop_assert_eq!(&table(&reloaded, &sites), &now);
            }
        }
    }
}

/// The load's shortcut computes the groups only from a registry that keeps the
/// invariants; anything else sends it back to publishing site by site.
#[test]
fn the_shortcut_refuses_a_registry_that_breaks_an_invariant() {
    let group = |n| GroupKey::new(Environment::Stage, pms_id(n));
    let site =
        |n: u128, practice, holds, epoch| (group(practice), halo(n), holds, Epoch::new(epoch));
    let groups = fresh_groups(
        [
            site(1, 1, false, 1),
            site(2, 1, true, 2),
            site(3, 1, false, 2),
            site(4, 2, false, 0),
        ]
        .into_iter(),
        2,
    )
    .unwrap();
    assert_eq!(
        groups.get(&group(1)),
        Some(&GroupSlot {
            holder: Some(halo(2)),
            newest: Epoch::new(2)
        })
    );
    assert_eq!(
        groups.get(&group(2)),
        Some(&GroupSlot {
            holder: None,
            newest: Epoch::ZERO
        })
    );
    assert_eq!(groups.len(), 2);
    // Two holders in one group.
    assert!(fresh_groups([site(1, 1, true, 1), site(2, 1, true, 1)].into_iter(), 1).is_none());
    // A holder older than another live site of its group, in either order.
    assert!(fresh_groups([site(1, 1, false, 3), site(2, 1, true, 2)].into_iter(), 1).is_none());
    assert!(fresh_groups([site(2, 1, true, 2), site(1, 1, false, 3)].into_iter(), 1).is_none());
}
