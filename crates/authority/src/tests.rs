//! Unit tests of the election rules, and a property test over event sequences.

use halo_ids::{HaloGuid, LinkGuid};
use proptest::prelude::*;

use crate::{AuthorityError, AuthorityEvent, Epoch, GroupState, elect};

fn h(n: u128) -> HaloGuid {
    HaloGuid::from_u128(n).unwrap()
}

fn l(n: u128) -> LinkGuid {
    LinkGuid::from_u128(n).unwrap()
}

fn join(site: u128, link: u128) -> AuthorityEvent {
    AuthorityEvent::Joined {
        halo_guid: h(site),
        eligible: true,
        link: l(link),
    }
}

fn promote(site: u128) -> AuthorityEvent {
    AuthorityEvent::Promoted {
        halo_guid: h(site),
        actor: "support:alice".into(),
        reason: "server migration".into(),
    }
}

fn group(events: &[AuthorityEvent]) -> GroupState {
    let mut g = GroupState::new();
    for e in events {
        g.apply(e).unwrap();
    }
    g
}

#[test]
fn first_eligible_site_in_empty_group_becomes_holder() {
    let g = group(&[join(1, 1)]);
    assert_eq!(g.holder(), Some(h(1)));
    assert_eq!(g.epoch(), Epoch::new(1));
}

#[test]
fn later_sites_join_non_authoritative() {
    let g = group(&[join(1, 1), join(2, 2)]);
    assert_eq!(g.holder(), Some(h(1)));
    assert_eq!(g.epoch(), Epoch::new(1));
    assert_eq!(g.member_count(), 2);
}

#[test]
fn ineligible_site_never_becomes_holder_by_joining() {
    let mut g = GroupState::new();
    g.apply(&AuthorityEvent::Joined {
        halo_guid: h(1),
        eligible: false,
        link: l(1),
    })
    .unwrap();
    assert_eq!(g.holder(), None);
    assert_eq!(g.epoch(), Epoch::ZERO);
    g.apply(&join(2, 2)).unwrap();
    assert_eq!(g.holder(), Some(h(2)));
    assert_eq!(
        g.apply(&promote(1)).unwrap_err(),
        AuthorityError::NotEligible(h(1))
    );
}

#[test]
fn holder_leaving_makes_group_vacant_and_bumps_epoch() {
    let g = group(&[
        join(1, 1),
        join(2, 2),
        AuthorityEvent::Left { halo_guid: h(1) },
    ]);
    assert_eq!(g.holder(), None, "a backup is never promoted automatically");
    assert_eq!(g.epoch(), Epoch::new(2));
    assert_eq!(g.vacated_by().map(|m| m.halo_guid), Some(h(1)));
}

#[test]
fn non_holder_leaving_changes_no_epoch() {
    let g = group(&[
        join(1, 1),
        join(2, 2),
        AuthorityEvent::Left { halo_guid: h(2) },
    ]);
    assert_eq!(g.holder(), Some(h(1)));
    assert_eq!(g.epoch(), Epoch::new(1));
}

#[test]
fn joining_a_vacant_group_with_a_waiting_member_does_not_take_authority() {
    let g = group(&[
        join(1, 1),
        join(2, 2),
        AuthorityEvent::Left { halo_guid: h(1) },
        join(3, 3),
    ]);
    assert_eq!(g.holder(), None);
}

#[test]
fn joining_a_group_emptied_by_departures_takes_authority() {
    let g = group(&[
        join(1, 1),
        AuthorityEvent::Left { halo_guid: h(1) },
        join(3, 3),
    ]);
    assert_eq!(g.holder(), Some(h(3)));
    assert_eq!(g.epoch(), Epoch::new(3));
}

#[test]
fn promotion_moves_authority_and_bumps_epoch() {
    let g = group(&[join(1, 1), join(2, 2), promote(2)]);
    assert_eq!(g.holder(), Some(h(2)));
    assert_eq!(g.epoch(), Epoch::new(2));
}

#[test]
fn promotion_fills_a_vacant_group() {
    let g = group(&[
        join(1, 1),
        join(2, 2),
        AuthorityEvent::Left { halo_guid: h(1) },
        promote(2),
    ]);
    assert_eq!(g.holder(), Some(h(2)));
    assert_eq!(g.epoch(), Epoch::new(3));
    assert!(g.vacated_by().is_none());
}

#[test]
fn bad_promotions_are_refused() {
    let g = group(&[join(1, 1), join(2, 2)]);
    let check = |e: AuthorityEvent, want: AuthorityError| {
        assert_eq!(elect(&g, &e).unwrap_err(), want);
    };
    check(promote(1), AuthorityError::AlreadyHolder(h(1)));
    check(promote(9), AuthorityError::NotMember(h(9)));
    check(
        AuthorityEvent::Promoted {
            halo_guid: h(2),
            actor: " ".into(),
            reason: "x".into(),
        },
        AuthorityError::MissingActor,
    );
    check(
        AuthorityEvent::Promoted {
            halo_guid: h(2),
            actor: "bob".into(),
            reason: "".into(),
        },
        AuthorityError::MissingReason,
    );
    check(join(2, 2), AuthorityError::AlreadyMember(h(2)));
    check(
        AuthorityEvent::Left { halo_guid: h(7) },
        AuthorityError::NotMember(h(7)),
    );
}

#[test]
fn a_refused_event_changes_nothing() {
    let mut g = group(&[join(1, 1), join(2, 2)]);
    let before = g.clone();
    assert!(g.apply(&promote(1)).is_err());
    assert!(g.apply(&join(1, 5)).is_err());
    assert_eq!(g, before);
}

#[test]
fn elect_is_pure() {
    let g = group(&[join(1, 1), join(2, 2)]);
    let before = g.clone();
    let out = elect(&g, &promote(2)).unwrap();
    assert_eq!(out.holder, Some(h(2)));
    assert_eq!(g, before);
}

fn reinstall(previous: u128, site: u128, link: u128) -> AuthorityEvent {
    AuthorityEvent::Reinstalled {
        previous: h(previous),
        halo_guid: h(site),
        link: l(link),
        eligible: true,
    }
}

#[test]
fn reinstall_of_holder_by_its_own_link_inherits_authority() {
    let g = group(&[join(1, 1), join(2, 2), reinstall(1, 10, 1)]);
    assert_eq!(g.holder(), Some(h(10)));
    assert_eq!(g.epoch(), Epoch::new(2));
    assert!(g.member(h(1)).is_none());
}

#[test]
fn reinstall_after_the_holder_left_inherits_if_nobody_held_since() {
    let g = group(&[
        join(1, 1),
        join(2, 2),
        AuthorityEvent::Left { halo_guid: h(1) },
        reinstall(1, 10, 1),
    ]);
    assert_eq!(g.holder(), Some(h(10)));
    assert_eq!(g.epoch(), Epoch::new(3));

    let g = group(&[
        join(1, 1),
        join(2, 2),
        AuthorityEvent::Left { halo_guid: h(1) },
        promote(2),
        reinstall(1, 10, 1),
    ]);
    assert_eq!(g.holder(), Some(h(2)), "a promotion since wins");
}

#[test]
fn reinstall_of_a_backup_joins_non_authoritative() {
    let g = group(&[join(1, 1), join(2, 2), reinstall(2, 20, 2)]);
    assert_eq!(g.holder(), Some(h(1)));
    assert_eq!(g.epoch(), Epoch::new(1));
    assert!(g.member(h(20)).is_some());
}

#[test]
fn reinstall_from_another_link_is_refused() {
    let g = group(&[join(1, 1), join(2, 2)]);
    assert_eq!(
        elect(&g, &reinstall(1, 10, 2)).unwrap_err(),
        AuthorityError::ReinstallFromOtherLink {
            previous: h(1),
            expected: l(1),
        }
    );
}

// ---------------------------------------------------------------------------------
// Property: over arbitrary sequences, holder changes only through the rules.

fn arb_event() -> impl Strategy<Value = AuthorityEvent> {
    let site = 1u128..12;
    let link = 1u128..4;
    prop_oneof![
        4 => (site.clone(), any::<bool>(), link.clone()).prop_map(|(s, e, k)| AuthorityEvent::Joined {
            halo_guid: h(s),
            eligible: e || s % 3 != 0,
            link: l(k),
        }),
        3 => site.clone().prop_map(|s| AuthorityEvent::Left { halo_guid: h(s) }),
        2 => site.clone().prop_map(promote),
        2 => (site.clone(), 12u128..40, link).prop_map(|(p, s, k)| reinstall(p, s, k)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn holder_changes_only_through_the_rules(events in prop::collection::vec(arb_event(), 1..300)) {
        let mut g = GroupState::new();
        for e in &events {
            let before = g.clone();
            match g.apply(e) {
                Err(_) => prop_assert_eq!(&g, &before),
                Ok(out) => {
                    prop_assert_eq!(out.holder, g.holder());
                    prop_assert_eq!(out.epoch, g.epoch());
                    // Holder is a live, eligible member.
                    if let Some(holder) = g.holder() {
                        let m = g.member(holder);
                        prop_assert!(m.is_some_and(|m| m.eligible));
                    }
                    // Epoch grows by exactly one iff the holder changed.
                    if g.holder() == before.holder() {
                        prop_assert_eq!(g.epoch(), before.epoch());
                    } else {
                        prop_assert_eq!(g.epoch().get(), before.epoch().get() + 1);
                        let allowed = match e {
                            AuthorityEvent::Joined { halo_guid: site, .. } => {
                                before.holder().is_none()
                                    && g.holder() == Some(*site)
                                    && !before.members().any(|m| m.eligible)
                            }
                            AuthorityEvent::Left { halo_guid: site } => {
                                before.holder() == Some(*site) && g.holder().is_none()
                            }
                            AuthorityEvent::Promoted { halo_guid: site, .. } => g.holder() == Some(*site),
                            AuthorityEvent::Reinstalled { previous, halo_guid: site, link, .. } => {
                                let inherited = g.holder() == Some(*site)
                                    && (before.holder() == Some(*previous)
                                        || (before.holder().is_none()
                                            && before.vacated_by().is_some_and(|m| m.halo_guid == *previous && m.link == *link)));
                                let joined_empty = before.holder().is_none()
                                    && g.holder() == Some(*site)
                                    && !before.members().any(|m| m.eligible && m.halo_guid != *previous);
                                inherited || joined_empty
                            }
                        };
                        prop_assert!(allowed, "holder moved by {:?}: {:?} -> {:?}", e, before.holder(), g.holder());
                    }
                    // Every reachable state can be rebuilt from its parts.
                    let rebuilt = GroupState::from_parts(
                        g.holder(),
                        g.epoch(),
                        g.vacated_by().copied(),
                        g.members().copied().collect::<Vec<_>>(),
                    );
                    prop_assert_eq!(rebuilt.as_ref(), Ok(&g));
                }
            }
        }
    }
}

#[test]
fn from_parts_refuses_inconsistent_groups() {
    let member = |s: u128, eligible: bool| crate::Member {
        halo_guid: h(s),
        link: l(1),
        eligible,
    };
    let bad = |holder: Option<u128>, epoch: u64, vacated: Option<crate::Member>, members| {
        matches!(
            GroupState::from_parts(holder.map(h), Epoch::new(epoch), vacated, members),
            Err(AuthorityError::InconsistentState { .. })
        )
    };
    assert!(bad(None, 1, None, vec![member(1, true), member(1, true)]));
    assert!(bad(Some(2), 1, None, vec![member(1, true)]));
    assert!(bad(Some(1), 1, None, vec![member(1, false)]));
    assert!(bad(Some(1), 0, None, vec![member(1, true)]));
    assert!(bad(
        Some(1),
        2,
        Some(member(3, true)),
        vec![member(1, true)]
    ));
    let ok =
        GroupState::from_parts(Some(h(1)), Epoch::new(3), None, vec![member(1, true)]).unwrap();
    assert_eq!(ok.holder(), Some(h(1)));
    assert_eq!(ok.epoch(), Epoch::new(3));
}
