//! Property tests over generated event sequences: the invariants hold at every step,
//! and replaying the log from empty gives the live registry.

use std::collections::HashMap;

use halo_authority::{Epoch, GroupKey};
use halo_ids::{Crn, Environment, HaloGuid, PmsId, PmsType, Timestamp};
use proptest::prelude::*;

use super::fixture::{h, l};
use crate::{Change, CrnLookup, Event, LogEntry, Registry, SiteIdentity, TenancyError};

const LINKS: u128 = 4;
const CRNS: [&str; 6] = ["A1", "B2", "C3", "D4", "E5", "F6"];

fn crn_of(i: usize) -> Crn {
    CRNS[i % CRNS.len()].parse().unwrap()
}

/// An abstract step, resolved against the registry's current state when it is
/// applied, so that most steps name sites that exist and fit (and some do not).
#[derive(Debug, Clone)]
pub(super) enum Op {
    Register(u128, Environment),
    /// Attach a fresh database (or, with `Some`, re-attach the n-th site) via a Link.
    Attach(u128, Option<usize>, SiteIdentity),
    Ready(usize, bool),
    Remove(usize, bool),
    Uninstall(u128),
    Reinstall(usize, bool),
    Heartbeat(u128),
    Branches(usize, bool, Vec<Crn>),
    Promote(usize),
}

fn arb_identity() -> impl Strategy<Value = SiteIdentity> {
    (
        0..CRNS.len(),
        prop::collection::vec(0..CRNS.len(), 0..2),
        0..6u8,
        0..8u8,
    )
        .prop_map(|(parent, branches, demo, pms)| SiteIdentity {
            pms_type: if pms == 0 {
                PmsType::Zedmed
            } else {
                PmsType::D4w
            },
            parent_crn: crn_of(parent),
            branch_crns: branches.into_iter().map(crn_of).collect(),
            practice_name: format!("Practice {parent}"),
            pms_version: "9.6".into(),
            catalogues: vec![],
            is_demo: demo == 0,
        })
}

/// `true` one time in eight: the step uses a wrong Link.
fn wrong() -> impl Strategy<Value = bool> {
    (0..8u8).prop_map(|r| r == 0)
}

pub(super) fn arb_op() -> impl Strategy<Value = Op> {
    let link = 1..=LINKS;
    let idx = 0..64usize;
    prop_oneof![
        2 => (link.clone(), 0..4u8).prop_map(|(k, e)| Op::Register(
            k,
            if e == 0 { Environment::Production } else { Environment::Stage },
        )),
        14 => (link.clone(), prop::option::weighted(0.1, idx.clone()), arb_identity())
            .prop_map(|(k, again, id)| Op::Attach(k, again, id)),
        4 => (idx.clone(), wrong()).prop_map(|(i, w)| Op::Ready(i, w)),
        2 => (idx.clone(), wrong()).prop_map(|(i, w)| Op::Remove(i, w)),
        1 => link.clone().prop_map(Op::Uninstall),
        2 => (idx.clone(), wrong()).prop_map(|(i, w)| Op::Reinstall(i, w)),
        3 => link.prop_map(Op::Heartbeat),
        2 => (idx.clone(), wrong(), prop::collection::vec(0..CRNS.len(), 0..3))
            .prop_map(|(i, w, b)| Op::Branches(i, w, b.into_iter().map(crn_of).collect())),
        4 => idx.prop_map(Op::Promote),
    ]
}

/// Resolves an op against `known`, the sites created so far in creation order. The
/// `i`-th pick prefers recent live sites three times in four, else any site (retired
/// ones included, so that some steps are refused).
pub(super) fn resolve(op: &Op, reg: &Registry, known: &[HaloGuid]) -> Event {
    let pick = |i: usize| -> Option<(HaloGuid, halo_ids::LinkGuid)> {
        let n = known.len();
        if n == 0 {
            return None;
        }
        let owner = |g: HaloGuid| reg.site(g).map(|s| (g, s.link_guid()));
        if i % 4 != 0 {
            let start = n - 1 - (i % n.min(32));
            for probe in 0..16 {
                let g = known[(start + n - probe % n) % n];
                if reg.site(g).is_some_and(|s| s.status().is_live()) {
                    return owner(g);
                }
            }
        }
        owner(known[i % n])
    };
    let other = |k: halo_ids::LinkGuid| (1..=LINKS).map(l).find(|x| *x != k).unwrap_or(k);
    let via = |k: halo_ids::LinkGuid, w: bool| if w { other(k) } else { k };
    let next = h(known.len() as u128 + 1);
    match op.clone() {
        Op::Register(k, environment) => Event::LinkRegistered {
            link: l(k),
            environment,
            version: "1.0".into(),
        },
        Op::Attach(k, again, identity) => {
            let site = again.and_then(pick).map_or(next, |s| s.0);
            Event::SiteAttached {
                link: l(k),
                halo_guid: site,
                identity,
            }
        }
        Op::Ready(i, w) => match pick(i) {
            Some((site, k)) => Event::SiteReady {
                link: via(k, w),
                halo_guid: site,
            },
            None => Event::Heartbeat { link: l(1) },
        },
        Op::Remove(i, w) => match pick(i) {
            Some((site, k)) => Event::SiteRemoved {
                link: via(k, w),
                halo_guid: site,
            },
            None => Event::Heartbeat { link: l(1) },
        },
        Op::Uninstall(k) => Event::LinkUninstalled { link: l(k) },
        Op::Reinstall(i, w) => match pick(i) {
            Some((previous, k)) => Event::Reinstalled {
                link: via(k, w),
                previous,
                halo_guid: next,
            },
            None => Event::Heartbeat { link: l(1) },
        },
        Op::Heartbeat(k) => Event::Heartbeat { link: l(k) },
        Op::Branches(i, w, branch_crns) => match pick(i) {
            Some((site, k)) => Event::BranchCrnsChanged {
                link: via(k, w),
                halo_guid: site,
                branch_crns,
            },
            None => Event::Heartbeat { link: l(1) },
        },
        Op::Promote(i) => match pick(i) {
            Some((site, _)) => Event::Promoted {
                halo_guid: site,
                actor: "support:bob".into(),
                reason: "test".into(),
            },
            None => Event::Heartbeat { link: l(1) },
        },
    }
}

/// Ops with the (mostly increasing) times they are applied at.
pub(super) fn arb_log(max: usize) -> impl Strategy<Value = Vec<(u64, Op)>> {
    prop::collection::vec((0..120_000u64, arb_op()), 1..max).prop_map(|steps| {
        let mut now = 0u64;
        steps
            .into_iter()
            .map(|(dt, op)| {
                // Now and then the clock steps back a little: the model must not care.
                now = if dt < 1_000 {
                    now.saturating_sub(dt)
                } else {
                    now + dt
                };
                (now, op)
            })
            .collect()
    })
}

fn holders(reg: &Registry) -> HashMap<GroupKey, (Option<HaloGuid>, Epoch)> {
    reg.groups()
        .map(|(k, g)| (*k, (g.holder(), g.epoch())))
        .collect()
}

/// Checks the state invariants of one registry.
fn check_state(reg: &Registry) -> Result<(), TestCaseError> {
    let mut authoritative: HashMap<GroupKey, HaloGuid> = HashMap::new();
    for site in reg.sites() {
        let group = reg.group(&site.group_key());
        if site.is_authoritative() {
            prop_assert!(site.status().is_live(), "a retired site is authoritative");
            let previous = authoritative.insert(site.group_key(), site.halo_guid());
            prop_assert!(previous.is_none(), "two authoritative sites in one group");
            prop_assert_eq!(group.and_then(|g| g.holder()), Some(site.halo_guid()));
        }
        if site.status().is_live() {
            let g = group.expect("a live site has a group");
            prop_assert!(g.state().member(site.halo_guid()).is_some());
            prop_assert_eq!(site.epoch(), g.epoch());
        }
        prop_assert_eq!(
            site.is_routable(),
            site.is_authoritative() && site.status() == crate::SiteStatus::Active
        );
    }
    for (key, group) in reg.groups() {
        if let Some(holder) = group.holder() {
            prop_assert_eq!(authoritative.get(key), Some(&holder));
        }
        let lookup = reg.lookup_crn(key.environment, key.pms_type(), key.pms_id.site_id());
        match lookup {
            CrnLookup::Site(site) => {
                prop_assert_eq!(Some(site), group.holder());
                prop_assert!(reg.site(site).is_some_and(|s| s.is_authoritative()));
            }
            CrnLookup::Vacant => {
                prop_assert!(group.holder().is_none() && !group.state().is_empty())
            }
            CrnLookup::DemoRealCrn | CrnLookup::Branch | CrnLookup::Unknown => {
                prop_assert!(
                    group.state().is_empty(),
                    "a live group's crn must resolve to it (a copy never shadows it)"
                );
            }
        }
    }
    Ok(())
}

/// What [`Registry::lookup_crn`] must answer, worked out from the sites alone, with
/// the PMS IDs entitled to be told a branch or demo real CRN.
fn expected_lookup(
    reg: &Registry,
    environment: Environment,
    pms_type: PmsType,
    crn: Crn,
) -> (CrnLookup, Vec<PmsId>) {
    let live: Vec<_> = reg
        .sites()
        .filter(|s| {
            s.status().is_live() && s.environment() == environment && s.pms_type() == pms_type
        })
        .collect();
    let holders: Vec<_> = live.iter().filter(|s| s.crn() == crn).collect();
    if !holders.is_empty() {
        let lookup = holders
            .iter()
            .find(|s| s.is_authoritative())
            .map_or(CrnLookup::Vacant, |s| CrnLookup::Site(s.halo_guid()));
        return (lookup, Vec::new());
    }
    let parents: Vec<PmsId> = live
        .iter()
        .filter(|s| !s.is_demo() && s.branch_crns().contains(&crn))
        .map(|s| PmsId::new(pms_type, s.parent_crn()))
        .collect();
    if !parents.is_empty() {
        return (CrnLookup::Branch, parents);
    }
    let copies: Vec<PmsId> = live
        .iter()
        .filter(|s| s.is_demo() && s.parent_crn() == crn)
        .map(|s| s.pms_id())
        .collect();
    if !copies.is_empty() {
        let mut entitled = vec![PmsId::new(pms_type, crn)];
        entitled.extend(copies);
        return (CrnLookup::DemoRealCrn, entitled);
    }
    (CrnLookup::Unknown, Vec::new())
}

/// Every CRN of the test universe, in both environments and both PMS types: the
/// lookup matches the model (so a copy never shadows a practice), and
/// `lookup_crn_for` names a branch or demo real CRN to exactly the entitled callers,
/// and to everyone else answers as for an unknown CRN.
fn check_lookups(reg: &Registry) -> Result<(), TestCaseError> {
    for environment in Environment::ALL {
        for pms_type in [PmsType::D4w, PmsType::Zedmed] {
            for crn in (0..CRNS.len()).map(crn_of) {
                let (expected, entitled) = expected_lookup(reg, environment, pms_type, crn);
                let lookup = reg.lookup_crn(environment, pms_type, crn);
                prop_assert_eq!(lookup, expected, "{:?} {:?} {}", environment, pms_type, crn);
                let told = |allowed: &dyn Fn(PmsId) -> bool| {
                    reg.lookup_crn_for(environment, pms_type, crn, allowed)
                };
                let hidden = match lookup {
                    CrnLookup::Branch | CrnLookup::DemoRealCrn => CrnLookup::Unknown,
                    other => other,
                };
                prop_assert_eq!(told(&|p| !entitled.contains(&p)), hidden);
                prop_assert_eq!(told(&|_| false), hidden);
                for p in &entitled {
                    prop_assert_eq!(told(&|q| q == *p), lookup);
                }
            }
        }
    }
    Ok(())
}

/// Whether `event` may move a group's holder from `before` to `after`.
fn holder_change_allowed(
    reg_before: &Registry,
    event: &Event,
    before: Option<HaloGuid>,
    after: Option<HaloGuid>,
) -> bool {
    match event {
        Event::SiteAttached {
            halo_guid: site, ..
        } => before.is_none() && after == Some(*site) && reg_before.site(*site).is_none(),
        Event::SiteRemoved {
            halo_guid: site, ..
        } => before == Some(*site) && after.is_none(),
        Event::LinkUninstalled { link } => {
            after.is_none()
                && before
                    .is_some_and(|b| reg_before.site(b).is_some_and(|s| s.link_guid() == *link))
        }
        Event::Promoted {
            halo_guid: site, ..
        } => after == Some(*site),
        Event::Reinstalled {
            previous,
            halo_guid: site,
            ..
        } => {
            (after == Some(*site) && (before.is_none() || before == Some(*previous)))
                || (after.is_none() && before == Some(*previous))
        }
        _ => false,
    }
}

/// `reg` with every heard time set to zero.
fn unheard(reg: &Registry) -> Registry {
    let mut reg = reg.clone();
    let sites: Vec<HaloGuid> = reg.sites().map(|s| s.halo_guid()).collect();
    for site in sites {
        if let Some(s) = reg.sites.get_mut(&site) {
            s.last_heard = Timestamp::UNIX_EPOCH;
        }
    }
    for link in reg.links.values_mut() {
        link.last_heard = Timestamp::UNIX_EPOCH;
    }
    reg
}

pub(super) fn run(
    log: &[(u64, Op)],
    check_steps: bool,
) -> Result<(Registry, Vec<LogEntry>), TestCaseError> {
    let mut reg = Registry::new();
    let mut applied = Vec::new();
    let mut known = Vec::new();
    for (step, (at, op)) in log.iter().enumerate() {
        let event = &resolve(op, &reg, &known);
        let now = Timestamp::from_millis(*at);
        let before = check_steps.then(|| reg.clone());
        let unchanged = check_steps && reg.changes_nothing(event);
        let result = reg.apply(event, now);
        if unchanged {
            // The Cloud neither applies nor logs such an event: it must be accepted
            // and change nothing but the heard times.
            prop_assert!(
                result.is_ok(),
                "{:?} changes nothing, yet {:?}",
                event,
                result
            );
            if let Some(before) = &before {
                prop_assert_eq!(
                    unheard(&reg),
                    unheard(before),
                    "{:?} changed the registry",
                    event
                );
            }
        }
        if result.is_ok() {
            applied.push(LogEntry::new(now, event.clone()));
            if let Event::SiteAttached {
                halo_guid: site, ..
            }
            | Event::Reinstalled {
                halo_guid: site, ..
            } = event
            {
                if *site == h(known.len() as u128 + 1) {
                    known.push(*site);
                }
            }
        }
        let Some(before) = before else { continue };
        match result {
            Err(err) => {
                prop_assert_eq!(&reg, &before, "refused event changed the registry: {}", err);
                if let TenancyError::Authority(_) = err {
                    // Only promotions should be refused by the election; the registry
                    // checks everything else first.
                    prop_assert!(matches!(event, Event::Promoted { .. }), "{:?}", event);
                }
            }
            Ok(changes) => {
                check_state(&reg)?;
                // The lookup model scans every site: every few steps, and at the end.
                if step % 4 == 0 || step + 1 == log.len() {
                    check_lookups(&reg)?;
                }
                let old = holders(&before);
                let new = holders(&reg);
                for (key, (old_holder, old_epoch)) in &old {
                    prop_assert!(new.contains_key(key), "a group disappeared");
                    let (new_holder, new_epoch) = new[key];
                    prop_assert!(new_epoch >= *old_epoch, "epoch went back");
                    if new_holder != *old_holder {
                        prop_assert_eq!(new_epoch.get(), old_epoch.get() + 1);
                        prop_assert!(
                            holder_change_allowed(&before, event, *old_holder, new_holder),
                            "holder of {:?} moved {:?} -> {:?} by {:?}",
                            key,
                            old_holder,
                            new_holder,
                            event
                        );
                        let expected = Change::AuthorityChanged {
                            group: *key,
                            holder: new_holder,
                            epoch: new_epoch,
                        };
                        prop_assert!(changes.contains(&expected), "missing {:?}", expected);
                    } else {
                        prop_assert_eq!(
                            new_epoch,
                            *old_epoch,
                            "epoch moved without a holder change"
                        );
                    }
                }
                for (key, (new_holder, new_epoch)) in &new {
                    if !old.contains_key(key) && new_holder.is_some() {
                        prop_assert_eq!(new_epoch.get(), 1);
                        prop_assert!(holder_change_allowed(&before, event, None, *new_holder));
                    }
                }
                if let Event::Heartbeat { link } = event {
                    prop_assert_eq!(
                        changes,
                        vec![Change::LinkHeard {
                            link: *link,
                            at: now
                        }]
                    );
                }
            }
        }
    }
    Ok((reg, applied))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// At most one authoritative site per group, epochs only grow, the holder changes
    /// only through the rules, and a refused event changes nothing: at every step.
    #[test]
    fn invariants_hold_at_every_step(log in arb_log(400)) {
        run(&log, true)?;
    }

    /// Replaying the log of applied events (also through JSON) gives the live registry.
    #[test]
    fn replaying_the_log_gives_the_live_registry(log in arb_log(1000)) {
        let (live, applied) = run(&log, false)?;
        let replayed = Registry::replay(&applied).unwrap();
        prop_assert_eq!(&replayed, &live);
        let json: Vec<String> = applied.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
        let decoded: Vec<LogEntry> = json.iter().map(|j| serde_json::from_str(j).unwrap()).collect();
        prop_assert_eq!(Registry::replay(&decoded).unwrap(), live);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(250))]

    /// The history checker passes every history the registry produces, and its
    /// incremental view of the holders equals a full scan after every event.
    #[test]
    fn the_history_checker_agrees_with_a_full_scan(log in arb_log(400)) {
        let (_, applied) = run(&log, false)?;
        let mut history = crate::AuthorityHistory::new();
        for (i, entry) in applied.iter().enumerate() {
            history.check(i as u64, &entry.event, entry.at).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut scanned: HashMap<GroupKey, std::collections::HashSet<HaloGuid>> = HashMap::new();
            for site in history.registry().sites().filter(|s| s.is_authoritative()) {
                scanned.entry(site.group_key()).or_default().insert(site.halo_guid());
            }
            prop_assert_eq!(history.tracked_holders(), scanned);
        }
        prop_assert_eq!(history.events(), applied.len() as u64);
    }
}
