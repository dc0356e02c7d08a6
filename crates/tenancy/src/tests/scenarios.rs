//! The seed document's scenarios and each registration rule.

use std::time::Duration;

use halo_authority::{Epoch, GroupKey};
use halo_ids::{Environment, PmsId, PmsType, Timestamp};

use super::fixture::{Fx, crn, demo_identity, h, identity, l};
use crate::{
    Availability, AvailabilityConfig, Change, CrnLookup, Event, LogEntry, Registry, SiteStatus,
    TenancyError, TenancyErrorClass,
};

const PROD: Environment = Environment::Production;
const STAGE: Environment = Environment::Stage;

fn lookup(fx: &Fx, env: Environment, c: &str) -> CrnLookup {
    fx.reg.lookup_crn(env, PmsType::D4w, crn(c))
}

fn key(env: Environment, c: &str) -> GroupKey {
    GroupKey::new(env, PmsId::new(PmsType::D4w, crn(c)))
}

#[test]
fn single_d4w_server() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    let changes = fx
        .attach(1, 10, identity("AB123", &["AB124", "AB125"]))
        .unwrap();
    assert_eq!(
        changes,
        vec![
            Change::SiteUpserted(h(10)),
            Change::AuthorityChanged {
                group: key(PROD, "AB123"),
                holder: Some(h(10)),
                epoch: Epoch::new(1),
            },
        ]
    );
    let site = fx.reg.site(h(10)).unwrap();
    assert_eq!(site.status(), SiteStatus::Initialising);
    assert!(site.is_authoritative());
    assert!(!site.is_routable(), "not routable until ready");
    assert_eq!(site.epoch(), Epoch::new(1));
    assert_eq!(site.crn(), crn("AB123"));
    assert_eq!(site.link_guid(), l(1));
    assert_eq!(site.practice_name(), "Practice AB123");
    assert_eq!(site.catalogues()[0].name.as_ref(), "D4W");
    fx.ready(1, 10);
    let site = fx.reg.site(h(10)).unwrap();
    assert_eq!(site.status(), SiteStatus::Active);
    assert!(site.is_routable());
    assert_eq!(lookup(&fx, PROD, "ab123"), CrnLookup::Site(h(10)));
    assert_eq!(lookup(&fx, PROD, "AB124"), CrnLookup::Branch);
    assert_eq!(
        lookup(&fx, STAGE, "AB123"),
        CrnLookup::Unknown,
        "environments never mix"
    );
    assert_eq!(lookup(&fx, PROD, "ZZ9"), CrnLookup::Unknown);
    assert_eq!(
        fx.reg.lookup_crn(PROD, PmsType::Zedmed, crn("AB123")),
        CrnLookup::Unknown
    );
    fx.check_replay();
}

#[test]
fn ready_twice_is_an_invalid_transition() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.attach(1, 10, identity("AB123", &[])).unwrap();
    fx.ready(1, 10);
    let err = fx
        .try_apply(Event::SiteReady {
            link: l(1),
            halo_guid: h(10),
        })
        .unwrap_err();
    assert!(matches!(err, TenancyError::InvalidTransition { .. }));
}

#[test]
fn multi_tenant_cluster_with_one_link_and_many_databases() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    for i in 0..50u128 {
        fx.attach(1, 100 + i, identity(&format!("C{i}"), &[&format!("C{i}B")]))
            .unwrap();
    }
    for i in 0..50u128 {
        assert!(fx.authoritative(100 + i));
        assert_eq!(
            lookup(&fx, PROD, &format!("C{i}")),
            CrnLookup::Site(h(100 + i))
        );
    }
    assert_eq!(fx.reg.link(l(1)).unwrap().sites().len(), 50);

    let changes = fx.apply(Event::Heartbeat { link: l(1) });
    assert_eq!(
        changes,
        vec![Change::LinkHeard {
            link: l(1),
            at: fx.now()
        }]
    );
    assert!(fx.reg.sites().all(|s| s.last_heard() == fx.now()));

    let changes = fx.apply(Event::LinkUninstalled { link: l(1) });
    assert!(changes.contains(&Change::LinkUninstalled(l(1))));
    assert!(
        fx.reg
            .sites()
            .all(|s| s.status() == SiteStatus::Uninstalled && !s.is_authoritative())
    );
    assert_eq!(lookup(&fx, PROD, "C7"), CrnLookup::Unknown);
    assert_eq!(lookup(&fx, PROD, "C7B"), CrnLookup::Unknown);
    fx.check_replay();
}

#[test]
fn backup_server_with_the_same_crn_is_not_authoritative() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.link(2, PROD);
    fx.attach(1, 10, identity("AB123", &["AB124"])).unwrap();
    fx.attach(2, 20, identity("AB123", &["AB124"])).unwrap();
    assert!(fx.authoritative(10));
    assert!(!fx.authoritative(20));
    let found: Vec<_> = fx
        .reg
        .sites_by_pms_id(PROD, PmsId::new(PmsType::D4w, crn("AB123")))
        .map(|s| (s.halo_guid(), s.is_authoritative()))
        .collect();
    assert_eq!(found, vec![(h(10), true), (h(20), false)]);
    assert_eq!(lookup(&fx, PROD, "AB123"), CrnLookup::Site(h(10)));

    // The main server goes silent; the backup keeps heartbeating. Authority stays.
    for _ in 0..100 {
        fx.apply(Event::Heartbeat { link: l(2) });
    }
    let cfg = AvailabilityConfig::DEFAULT;
    assert_eq!(
        fx.reg.availability(h(10), fx.now(), &cfg),
        Some(Availability::Offline)
    );
    fx.now += 3_600_000;
    fx.apply(Event::Heartbeat { link: l(2) });
    assert_eq!(
        fx.reg.availability(h(10), fx.now(), &cfg),
        Some(Availability::Unreachable)
    );
    assert_eq!(
        fx.reg.availability(h(20), fx.now(), &cfg),
        Some(Availability::Online)
    );
    assert!(fx.authoritative(10), "being offline never moves authority");
    assert_eq!(lookup(&fx, PROD, "AB123"), CrnLookup::Site(h(10)));

    // Removing the holder leaves the group vacant: the backup is not promoted.
    fx.apply(Event::SiteRemoved {
        link: l(1),
        halo_guid: h(10),
    });
    assert!(!fx.authoritative(20));
    assert_eq!(lookup(&fx, PROD, "AB123"), CrnLookup::Vacant);
    assert_eq!(fx.reg.site(h(10)).unwrap().status(), SiteStatus::Removed);
    fx.check_replay();
}

#[test]
fn server_migration_with_promotion() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.link(2, PROD);
    fx.attach(1, 10, identity("AB123", &[])).unwrap();
    fx.attach(2, 20, identity("AB123", &[])).unwrap();
    let changes = fx.promote(20).unwrap();
    let group = key(PROD, "AB123");
    assert_eq!(
        changes[0],
        Change::AuthorityChanged {
            group,
            holder: Some(h(20)),
            epoch: Epoch::new(2),
        }
    );
    assert!(changes.contains(&Change::SiteUpserted(h(10))));
    assert!(changes.contains(&Change::SiteUpserted(h(20))));
    assert!(!fx.authoritative(10));
    assert!(fx.authoritative(20));
    assert_eq!(fx.reg.site(h(20)).unwrap().epoch(), Epoch::new(2));
    let promotion = fx.reg.last_promotion(&group).unwrap();
    assert_eq!(promotion.halo_guid, h(20));
    assert_eq!(promotion.actor.as_ref(), "support:alice");
    assert_eq!(promotion.epoch, Epoch::new(2));

    // Promoting the holder again, or with no reason, is refused.
    assert!(matches!(
        fx.promote(20).unwrap_err(),
        TenancyError::Authority(_)
    ));
    let err = fx
        .try_apply(Event::Promoted {
            halo_guid: h(10),
            actor: "support:alice".into(),
            reason: "  ".into(),
        })
        .unwrap_err();
    assert_eq!(err.class(), TenancyErrorClass::Invalid);

    // The old server is retired; the new one keeps authority and its epoch.
    fx.apply(Event::SiteRemoved {
        link: l(1),
        halo_guid: h(10),
    });
    assert!(fx.authoritative(20));
    assert_eq!(fx.reg.group(&group).unwrap().epoch(), Epoch::new(2));
    assert!(matches!(
        fx.promote(10).unwrap_err(),
        TenancyError::SiteRetired { .. }
    ));
    fx.check_replay();
}

#[test]
fn reinstall_creates_a_new_halo_guid_that_inherits_authority() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.link(2, PROD);
    fx.attach(1, 10, identity("AB123", &["AB124"])).unwrap();
    fx.attach(2, 20, identity("AB123", &["AB124"])).unwrap();
    let changes = fx.apply(Event::Reinstalled {
        link: l(1),
        previous: h(10),
        halo_guid: h(11),
    });
    assert!(changes.contains(&Change::SiteRetired(h(10))));
    assert!(changes.contains(&Change::AuthorityChanged {
        group: key(PROD, "AB123"),
        holder: Some(h(11)),
        epoch: Epoch::new(2),
    }));
    let new = fx.reg.site(h(11)).unwrap();
    assert!(new.is_authoritative());
    assert_eq!(new.crn(), crn("AB123"));
    assert_eq!(new.branch_crns(), &[crn("AB124")]);
    assert_eq!(new.status(), SiteStatus::Initialising);
    assert_eq!(
        fx.reg.site(h(10)).unwrap().status(),
        SiteStatus::Uninstalled
    );
    assert_eq!(fx.reg.successor(h(10)), Some(h(11)));
    assert_eq!(lookup(&fx, PROD, "AB123"), CrnLookup::Site(h(11)));
    assert_eq!(lookup(&fx, PROD, "AB124"), CrnLookup::Branch);

    // Twice, or from another Link, is refused.
    let again = fx.try_apply(Event::Reinstalled {
        link: l(1),
        previous: h(10),
        halo_guid: h(12),
    });
    assert_eq!(again.unwrap_err(), TenancyError::AlreadyReinstalled(h(10)));
    let other = fx.try_apply(Event::Reinstalled {
        link: l(2),
        previous: h(11),
        halo_guid: h(13),
    });
    assert_eq!(
        other.unwrap_err(),
        TenancyError::SiteOwnedByOtherLink(h(11))
    );
    fx.check_replay();
}

#[test]
fn uninstall_then_reinstall_of_the_holder_recovers_authority() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.link(2, PROD);
    fx.attach(1, 10, identity("AB123", &[])).unwrap();
    fx.attach(2, 20, identity("AB123", &[])).unwrap();
    fx.apply(Event::LinkUninstalled { link: l(1) });
    assert_eq!(lookup(&fx, PROD, "AB123"), CrnLookup::Vacant);
    assert!(matches!(
        fx.try_apply(Event::Heartbeat { link: l(1) }).unwrap_err(),
        TenancyError::LinkUninstalled(_)
    ));
    fx.link(1, PROD);
    fx.apply(Event::Reinstalled {
        link: l(1),
        previous: h(10),
        halo_guid: h(11),
    });
    assert!(fx.authoritative(11));
    assert_eq!(
        fx.reg.group(&key(PROD, "AB123")).unwrap().epoch(),
        Epoch::new(3)
    );
    fx.check_replay();
}

#[test]
fn reinstall_of_a_backup_waits_as_non_authoritative() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.link(2, PROD);
    fx.attach(1, 10, identity("AB123", &[])).unwrap();
    fx.attach(2, 20, identity("AB123", &[])).unwrap();
    fx.apply(Event::Reinstalled {
        link: l(2),
        previous: h(20),
        halo_guid: h(21),
    });
    assert!(fx.authoritative(10));
    assert!(!fx.authoritative(21));
}

#[test]
fn branch_crn_rules() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.link(2, PROD);
    fx.attach(1, 10, identity("AB123", &["AB124", "AB124", "AB123"]))
        .unwrap();
    assert_eq!(
        fx.reg.site(h(10)).unwrap().branch_crns(),
        &[crn("AB124")],
        "sorted, deduplicated, without the parent"
    );
    // One branch CRN, two parents: refused.
    assert_eq!(
        fx.attach(2, 20, identity("XY1", &["AB124"])).unwrap_err(),
        TenancyError::BranchClaimedByOtherParent(crn("AB124"))
    );
    // A parent CRN that is a known branch: refused.
    assert_eq!(
        fx.attach(2, 20, identity("AB124", &[])).unwrap_err(),
        TenancyError::CrnIsBranch(crn("AB124"))
    );
    // A branch CRN that is a live parent: refused.
    assert_eq!(
        fx.attach(2, 20, identity("XY1", &["AB123"])).unwrap_err(),
        TenancyError::BranchIsParent(crn("AB123"))
    );
    // The same parent may claim the same branch (a backup server).
    fx.attach(2, 20, identity("AB123", &["AB124"])).unwrap();
    // In Stage the same CRNs are another namespace.
    fx.link(3, STAGE);
    fx.attach(3, 30, identity("XY1", &["AB124"])).unwrap();

    // Changing branches: the old branch is freed once no site claims it.
    fx.apply(Event::BranchCrnsChanged {
        link: l(1),
        halo_guid: h(10),
        branch_crns: vec![crn("AB125")],
    });
    assert_eq!(
        lookup(&fx, PROD, "AB124"),
        CrnLookup::Branch,
        "the backup still claims it"
    );
    fx.apply(Event::SiteRemoved {
        link: l(2),
        halo_guid: h(20),
    });
    assert_eq!(lookup(&fx, PROD, "AB124"), CrnLookup::Unknown);
    assert_eq!(lookup(&fx, PROD, "AB125"), CrnLookup::Branch);
    let err = fx
        .try_apply(Event::BranchCrnsChanged {
            link: l(1),
            halo_guid: h(10),
            branch_crns: vec![crn("XY9"), crn("AB123")],
        })
        .map(|_| ());
    assert!(
        err.is_ok(),
        "the parent itself is dropped from its branches"
    );
    fx.check_replay();
}

#[test]
fn branch_lookup_never_reveals_the_parent() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.attach(1, 10, identity("AB123", &["AB124"])).unwrap();
    let outcome = lookup(&fx, PROD, "AB124");
    assert_eq!(outcome, CrnLookup::Branch);
    assert!(!format!("{outcome:?}").contains("AB123"));
}

#[test]
fn demo_copy_in_stage_gets_its_fake_crn() {
    let mut fx = Fx::new();
    fx.link(1, STAGE);
    fx.link(2, STAGE);
    fx.attach(1, 10, demo_identity("AB123")).unwrap();
    fx.attach(2, 20, demo_identity("AB123")).unwrap();
    let demo = fx.reg.site(h(10)).unwrap();
    assert!(demo.is_demo());
    assert_eq!(demo.crn(), h(10).fake_crn());
    assert_eq!(demo.parent_crn(), crn("AB123"));
    assert!(demo.is_authoritative(), "alone in its fake-CRN group");
    assert!(fx.authoritative(20));
    assert_eq!(
        fx.reg.lookup_crn(STAGE, PmsType::D4w, h(10).fake_crn()),
        CrnLookup::Site(h(10))
    );
    assert_eq!(lookup(&fx, STAGE, "AB123"), CrnLookup::DemoRealCrn);
    // A real Stage database with that CRN is the practice: the copies do not shadow
    // it (and still do not route by the real CRN).
    fx.attach(1, 30, identity("AB123", &[])).unwrap();
    assert_eq!(lookup(&fx, STAGE, "AB123"), CrnLookup::Site(h(30)));
    fx.apply(Event::SiteRemoved {
        link: l(1),
        halo_guid: h(30),
    });
    assert_eq!(
        lookup(&fx, STAGE, "AB123"),
        CrnLookup::DemoRealCrn,
        "no real site holds it any more"
    );
    fx.apply(Event::SiteRemoved {
        link: l(1),
        halo_guid: h(10),
    });
    assert_eq!(lookup(&fx, STAGE, "AB123"), CrnLookup::DemoRealCrn);
    fx.apply(Event::SiteRemoved {
        link: l(2),
        halo_guid: h(20),
    });
    assert_eq!(lookup(&fx, STAGE, "AB123"), CrnLookup::Unknown);
    fx.check_replay();
}

#[test]
fn demo_copy_does_not_shadow_a_practice() {
    let mut fx = Fx::new();
    fx.link(1, STAGE);
    fx.link(2, STAGE);
    // The practice first, then a copy announcing its CRN as the copy's real CRN.
    fx.attach(1, 10, identity("HARBOUR01", &["HARBOUR02"]))
        .unwrap();
    fx.ready(1, 10);
    fx.attach(2, 20, demo_identity("HARBOUR01")).unwrap();
    assert_eq!(lookup(&fx, STAGE, "HARBOUR01"), CrnLookup::Site(h(10)));
    // Nor its branch: a copy whose real CRN is the practice's branch CRN.
    fx.attach(2, 21, demo_identity("HARBOUR02")).unwrap();
    assert_eq!(lookup(&fx, STAGE, "HARBOUR02"), CrnLookup::Branch);
    // A copy announced first does not shadow a practice that joins later.
    fx.attach(2, 22, demo_identity("LATER1")).unwrap();
    assert_eq!(lookup(&fx, STAGE, "LATER1"), CrnLookup::DemoRealCrn);
    fx.attach(1, 11, identity("LATER1", &[])).unwrap();
    assert_eq!(lookup(&fx, STAGE, "LATER1"), CrnLookup::Site(h(11)));
    // A vacant practice (its holder gone, a backup waiting for a promotion) is
    // still the practice.
    fx.attach(2, 23, identity("HARBOUR01", &["HARBOUR02"]))
        .unwrap();
    fx.apply(Event::SiteRemoved {
        link: l(1),
        halo_guid: h(10),
    });
    assert_eq!(lookup(&fx, STAGE, "HARBOUR01"), CrnLookup::Vacant);
    assert_eq!(lookup(&fx, STAGE, "HARBOUR02"), CrnLookup::Branch);
    // Only once no real site holds the CRNs do the copies' real CRNs show.
    fx.apply(Event::SiteRemoved {
        link: l(2),
        halo_guid: h(23),
    });
    assert_eq!(lookup(&fx, STAGE, "HARBOUR01"), CrnLookup::DemoRealCrn);
    assert_eq!(lookup(&fx, STAGE, "HARBOUR02"), CrnLookup::DemoRealCrn);
    fx.check_replay();
}

/// Records every PMS ID `lookup_crn_for` asks about, and answers from `allowed`.
fn told(fx: &Fx, c: &str, allowed: &[PmsId]) -> (CrnLookup, Vec<PmsId>) {
    let mut asked = Vec::new();
    let lookup = fx.reg.lookup_crn_for(STAGE, PmsType::D4w, crn(c), |p| {
        asked.push(p);
        allowed.contains(&p)
    });
    (lookup, asked)
}

fn d4w(c: &str) -> PmsId {
    PmsId::new(PmsType::D4w, crn(c))
}

#[test]
fn branch_crn_is_named_only_to_a_caller_entitled_to_its_parent() {
    let mut fx = Fx::new();
    fx.link(1, STAGE);
    fx.attach(1, 10, identity("HARBOUR01", &["HARBOUR02"]))
        .unwrap();
    let (lookup, asked) = told(&fx, "HARBOUR02", &[d4w("HARBOUR01")]);
    assert_eq!(lookup, CrnLookup::Branch);
    assert_eq!(asked, vec![d4w("HARBOUR01")], "asked about the parent only");
    for allowed in [vec![], vec![d4w("BRIGHT77")], vec![d4w("HARBOUR02")]] {
        assert_eq!(
            told(&fx, "HARBOUR02", &allowed).0,
            CrnLookup::Unknown,
            "{allowed:?}"
        );
    }
    // Routing CRNs and unknown CRNs are what they are, and ask nothing.
    assert_eq!(
        told(&fx, "HARBOUR01", &[]),
        (CrnLookup::Site(h(10)), vec![])
    );
    assert_eq!(told(&fx, "NOBODY1", &[]), (CrnLookup::Unknown, vec![]));
}

#[test]
fn demo_real_crn_is_named_only_to_a_caller_entitled_to_the_practice_or_a_copy() {
    let mut fx = Fx::new();
    fx.link(1, STAGE);
    fx.link(2, STAGE);
    fx.attach(1, 10, demo_identity("DEMO1")).unwrap();
    fx.attach(2, 20, demo_identity("DEMO1")).unwrap();
    let (fake1, fake2) = (h(10).fake_crn(), h(20).fake_crn());
    let fake = |c: halo_ids::Crn| PmsId::new(PmsType::D4w, c);
    for allowed in [
        vec![d4w("DEMO1")],
        vec![fake(fake1)],
        vec![fake(fake2)],
        vec![d4w("BRIGHT77"), fake(fake2)],
    ] {
        assert_eq!(
            told(&fx, "DEMO1", &allowed).0,
            CrnLookup::DemoRealCrn,
            "{allowed:?}"
        );
    }
    let (lookup, asked) = told(&fx, "DEMO1", &[d4w("BRIGHT77")]);
    assert_eq!(lookup, CrnLookup::Unknown);
    assert_eq!(
        asked,
        vec![d4w("DEMO1"), fake(fake1), fake(fake2)],
        "the real CRN, then each live copy in Halo GUID order"
    );
    // A copy that is gone entitles nobody.
    fx.apply(Event::SiteRemoved {
        link: l(2),
        halo_guid: h(20),
    });
    assert_eq!(told(&fx, "DEMO1", &[fake(fake2)]).0, CrnLookup::Unknown);
    assert_eq!(told(&fx, "DEMO1", &[fake(fake1)]).0, CrnLookup::DemoRealCrn);
    // Other environments are other namespaces.
    let prod = fx
        .reg
        .lookup_crn_for(PROD, PmsType::D4w, crn("DEMO1"), |_| true);
    assert_eq!(prod, CrnLookup::Unknown);
}

#[test]
fn demo_copy_in_production_is_refused_and_nothing_changes() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    let before = fx.reg.clone();
    let err = fx.attach(1, 10, demo_identity("AB123")).unwrap_err();
    assert_eq!(err, TenancyError::DemoInProduction);
    assert_eq!(err.class(), TenancyErrorClass::Invalid);
    assert_eq!(fx.reg, before);
    assert!(fx.reg.site(h(10)).is_none());
}

#[test]
fn fake_crn_colliding_with_a_real_crn_is_refused() {
    let mut fx = Fx::new();
    fx.link(1, STAGE);
    let fake = h(10).fake_crn();
    fx.attach(1, 20, identity(fake.as_str(), &[])).unwrap();
    assert_eq!(
        fx.attach(1, 10, demo_identity("AB123")).unwrap_err(),
        TenancyError::FakeCrnCollision(fake)
    );
}

#[test]
fn a_link_cannot_claim_another_links_database() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.link(2, PROD);
    fx.attach(1, 10, identity("AB123", &[])).unwrap();
    assert_eq!(
        fx.attach(2, 10, identity("AB123", &[])).unwrap_err(),
        TenancyError::SiteOwnedByOtherLink(h(10))
    );
    for event in [
        Event::SiteRemoved {
            link: l(2),
            halo_guid: h(10),
        },
        Event::SiteReady {
            link: l(2),
            halo_guid: h(10),
        },
        Event::BranchCrnsChanged {
            link: l(2),
            halo_guid: h(10),
            branch_crns: vec![],
        },
    ] {
        assert_eq!(
            fx.try_apply(event).unwrap_err(),
            TenancyError::SiteOwnedByOtherLink(h(10))
        );
    }
}

#[test]
fn reattach_updates_details_but_not_identity() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.attach(1, 10, identity("AB123", &[])).unwrap();
    let mut updated = identity("AB123", &["AB124"]);
    updated.practice_name = "Smile Dental".into();
    updated.pms_version = "9.7".into();
    assert_eq!(
        fx.attach(1, 10, updated).unwrap(),
        vec![Change::SiteUpserted(h(10))]
    );
    let site = fx.reg.site(h(10)).unwrap();
    assert_eq!(site.practice_name(), "Smile Dental");
    assert_eq!(site.pms_version(), "9.7");
    assert_eq!(lookup(&fx, PROD, "AB124"), CrnLookup::Branch);
    assert_eq!(
        fx.attach(1, 10, identity("ZZ1", &[])).unwrap_err(),
        TenancyError::IdentityChanged(h(10))
    );
}

#[test]
fn unknown_links_and_sites_are_refused() {
    let mut fx = Fx::new();
    assert_eq!(
        fx.attach(1, 10, identity("AB123", &[])).unwrap_err(),
        TenancyError::UnknownLink(l(1))
    );
    assert_eq!(
        fx.promote(10).unwrap_err(),
        TenancyError::UnknownSite(h(10))
    );
    assert_eq!(
        fx.promote(10).unwrap_err().class(),
        TenancyErrorClass::NotFound
    );
}

#[test]
fn environment_change_is_refused_while_serving() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.attach(1, 10, identity("AB123", &[])).unwrap();
    let err = fx
        .try_apply(Event::LinkRegistered {
            link: l(1),
            environment: STAGE,
            version: "1.5".into(),
        })
        .unwrap_err();
    assert_eq!(err, TenancyError::EnvironmentChanged(l(1)));
    // A version upgrade is fine.
    fx.apply(Event::LinkRegistered {
        link: l(1),
        environment: PROD,
        version: "1.5".into(),
    });
    assert_eq!(fx.reg.link(l(1)).unwrap().version(), "1.5");
}

#[test]
fn text_and_catalogue_rules() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    let mut bad = identity("AB123", &[]);
    bad.practice_name = "x".repeat(201);
    assert!(matches!(
        fx.attach(1, 10, bad).unwrap_err(),
        TenancyError::InvalidText { .. }
    ));
    let mut bad = identity("AB123", &[]);
    bad.practice_name = "a\u{0}b".into();
    assert!(matches!(
        fx.attach(1, 10, bad).unwrap_err(),
        TenancyError::InvalidText { .. }
    ));
    let mut bad = identity("AB123", &[]);
    bad.catalogues.push(bad.catalogues[0].clone());
    assert_eq!(
        fx.attach(1, 10, bad).unwrap_err(),
        TenancyError::DuplicateCatalogue
    );
    let mut bad = identity("AB123", &[]);
    bad.catalogues.push(crate::Catalogue {
        name: "Other".into(),
        is_default: true,
    });
    assert_eq!(
        fx.attach(1, 10, bad).unwrap_err(),
        TenancyError::SeveralDefaultCatalogues
    );
}

#[test]
fn heartbeats_update_last_heard_only() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.attach(1, 10, identity("AB123", &[])).unwrap();
    let mut before = fx.reg.clone();
    fx.apply(Event::Heartbeat { link: l(1) });
    let heard = fx.now();
    assert_eq!(fx.reg.site(h(10)).unwrap().last_heard(), heard);
    assert_eq!(fx.reg.link(l(1)).unwrap().last_heard(), heard);
    // Everything else is as before.
    before.sites.get_mut(&h(10)).unwrap().last_heard = heard;
    before.links.get_mut(&l(1)).unwrap().last_heard = heard;
    assert_eq!(fx.reg, before);
}

#[test]
fn availability_thresholds_are_configurable() {
    let mut fx = Fx::new();
    fx.link(1, PROD);
    fx.attach(1, 10, identity("AB123", &[])).unwrap();
    let heard = fx.now();
    let cfg = AvailabilityConfig::new(Duration::from_secs(10), Duration::from_secs(60)).unwrap();
    let at = |secs: u64| Timestamp::from_millis(heard.as_millis() + secs * 1000);
    let check = |secs, want| assert_eq!(fx.reg.availability(h(10), at(secs), &cfg), Some(want));
    check(0, Availability::Online);
    check(9, Availability::Online);
    check(10, Availability::Offline);
    check(59, Availability::Offline);
    check(60, Availability::Unreachable);
    assert_eq!(fx.reg.availability(h(99), at(0), &cfg), None);
    assert!(AvailabilityConfig::new(Duration::from_secs(60), Duration::from_secs(10)).is_none());
    assert!(AvailabilityConfig::new(Duration::ZERO, Duration::from_secs(10)).is_none());
    // A clock that goes backwards never makes a site look older.
    assert_eq!(
        fx.reg
            .availability(h(10), Timestamp::UNIX_EPOCH, &AvailabilityConfig::DEFAULT),
        Some(Availability::Online)
    );
}

#[test]
fn old_event_log_still_loads() {
    let text = include_str!("../../tests/fixtures/events_v1.jsonl");
    let log: Vec<LogEntry> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(log.len(), 13);
    assert!(log.iter().all(|e| e.version == 1));
    let reg = Registry::replay(&log).unwrap();
    let site: halo_ids::HaloGuid = "7e2504e0-4f89-11d3-9a0c-0305e82c3301".parse().unwrap();
    assert!(reg.site(site).unwrap().is_authoritative());
    assert_eq!(
        reg.lookup_crn(PROD, PmsType::D4w, crn("AB123")),
        CrnLookup::Site(site)
    );
    assert_eq!(
        reg.lookup_crn(PROD, PmsType::D4w, crn("AB126")),
        CrnLookup::Branch
    );
    assert_eq!(
        reg.lookup_crn(STAGE, PmsType::BestPractice, crn("DEMO1")),
        CrnLookup::Unknown,
        "the demo's link was uninstalled"
    );
    // And what this build writes reads back the same.
    for entry in &log {
        let json = serde_json::to_string(entry).unwrap();
        let back: LogEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, entry);
    }
}

/// Rust names follow the glossary; the log keeps writing the version-one names.
#[test]
fn renamed_events_and_fields_still_write_version_one_names() {
    let written = |event: Event| {
        let entry = LogEntry::new(Timestamp::from_millis(1), event);
        serde_json::to_value(entry).unwrap()["event"].clone()
    };
    let site = h(2).to_string();
    let attached = written(Event::SiteAttached {
        link: l(1),
        halo_guid: h(2),
        identity: demo_identity("AB1"),
    });
    assert_eq!(attached["type"], "DatabaseAttached");
    assert_eq!(attached["site"], site);
    assert_eq!(attached["identity"]["crn"], "AB1");
    assert_eq!(attached["identity"]["demo"], true);
    for (event, tag) in [
        (
            Event::SiteReady {
                link: l(1),
                halo_guid: h(2),
            },
            "DatabaseReady",
        ),
        (
            Event::SiteRemoved {
                link: l(1),
                halo_guid: h(2),
            },
            "DatabaseRemoved",
        ),
        (
            Event::Reinstalled {
                link: l(1),
                previous: h(3),
                halo_guid: h(2),
            },
            "Reinstalled",
        ),
        (
            Event::BranchCrnsChanged {
                link: l(1),
                halo_guid: h(2),
                branch_crns: vec![],
            },
            "BranchCrnsChanged",
        ),
        (
            Event::Promoted {
                halo_guid: h(2),
                actor: "support:alice".into(),
                reason: "migration".into(),
            },
            "Promoted",
        ),
    ] {
        let json = written(event);
        assert_eq!(json["type"], tag);
        assert_eq!(json["site"], site);
    }
}

#[test]
fn replay_reports_the_failing_entry_and_rejects_unknown_versions() {
    let log = vec![
        LogEntry::new(
            Timestamp::from_millis(1),
            Event::LinkRegistered {
                link: l(1),
                environment: PROD,
                version: "1".into(),
            },
        ),
        LogEntry {
            version: 99,
            at: Timestamp::from_millis(2),
            event: Event::Heartbeat { link: l(1) },
        },
    ];
    match Registry::replay(&log).unwrap_err() {
        TenancyError::Replay { index, source } => {
            assert_eq!(index, 1);
            assert_eq!(*source, TenancyError::UnsupportedVersion(99));
        }
        other => panic!("unexpected {other:?}"),
    }
}
