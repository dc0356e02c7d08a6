//! The state machine: one function per event, each checking everything before it
//! changes anything, so that a refused event leaves the registry untouched.

use std::collections::BTreeSet;
use std::sync::Arc;

use compact_str::CompactString;
use smallvec::SmallVec;

use halo_authority::{AuthorityEvent, GroupKey, GroupState};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};

use crate::registry::{BranchTable, Group, GroupEntry, GroupTable, Map, Promotion, SiteTable};
use crate::site::{BranchList, NO_POSITION, SiteFlags};
use crate::{
    Catalogue, Change, Event, Link, LinkStatus, Registry, Site, SiteIdentity, SiteStatus,
    TenancyError, TextField, TextRule,
};

/// Longest Link version, in characters.
const MAX_VERSION: usize = 64;
/// Longest practice name, in characters.
const MAX_PRACTICE_NAME: usize = 200;
/// Longest catalogue name, in characters.
const MAX_CATALOGUE_NAME: usize = 128;
/// Longest actor name, in characters.
const MAX_ACTOR: usize = 200;
/// Longest promotion reason, in characters.
const MAX_REASON: usize = 1000;

/// The changes of one event: most events have one or two, kept inline so that
/// applying an event allocates nothing for them.
pub(crate) type Changes = SmallVec<[Change; 2]>;

pub(crate) fn apply(
    reg: &mut Registry,
    event: &Event,
    now: Timestamp,
) -> Result<Changes, TenancyError> {
    match event {
        Event::LinkRegistered {
            link,
            environment,
            version,
        } => link_registered(reg, *link, *environment, version, now),
        Event::SiteAttached {
            link,
            halo_guid: site,
            identity,
        } => database_attached(reg, *link, *site, identity, now),
        Event::SiteReady {
            link,
            halo_guid: site,
        } => database_ready(reg, *link, *site, now),
        Event::SiteRemoved {
            link,
            halo_guid: site,
        } => database_removed(reg, *link, *site),
        Event::LinkUninstalled { link } => link_uninstalled(reg, *link),
        Event::Reinstalled {
            link,
            previous,
            halo_guid: site,
        } => reinstalled(reg, *link, *previous, *site, now),
        Event::Heartbeat { link } => heartbeat(reg, *link, now),
        Event::BranchCrnsChanged {
            link,
            halo_guid: site,
            branch_crns,
        } => branch_crns_changed(reg, *link, *site, branch_crns),
        Event::Promoted {
            halo_guid: site,
            actor,
            reason,
        } => promoted(reg, *site, actor, reason, now),
    }
}

// ---------------------------------------------------------------------------------
// Checks (read-only).

fn check_text(
    field: TextField,
    text: &str,
    max: usize,
    required: bool,
) -> Result<(), TenancyError> {
    let fail = |rule| Err(TenancyError::InvalidText { field, rule });
    if required && text.trim().is_empty() {
        return fail(TextRule::Blank);
    }
    // A text of at most `max` bytes has at most `max` characters: count only longer ones.
    if text.len() > max && text.chars().count() > max {
        return fail(TextRule::TooLong { max });
    }
    if text.chars().any(char::is_control) {
        return fail(TextRule::ControlCharacter);
    }
    Ok(())
}

fn live_link(reg: &Registry, link: LinkGuid) -> Result<&Link, TenancyError> {
    live_link_at(reg, link).map(|(_, l)| l)
}

/// A live Link and its position in the Link table (so that the handler changes it
/// without looking it up again).
fn live_link_at(reg: &Registry, link: LinkGuid) -> Result<(usize, &Link), TenancyError> {
    let at = reg
        .links
        .position(&link)
        .ok_or(TenancyError::UnknownLink(link))?;
    let l = reg.links.at(at).ok_or(TenancyError::UnknownLink(link))?;
    if l.status != LinkStatus::Active {
        return Err(TenancyError::LinkUninstalled(link));
    }
    Ok((at, l))
}

/// A live site owned by `link`.
fn live_owned_site(reg: &Registry, link: LinkGuid, site: HaloGuid) -> Result<&Site, TenancyError> {
    live_owned_site_at(reg, link, site).map(|(_, s)| s)
}

/// A live site owned by `link`, and its position in the site table.
fn live_owned_site_at(
    reg: &Registry,
    link: LinkGuid,
    site: HaloGuid,
) -> Result<(usize, &Site), TenancyError> {
    live_owned_site_hinted(reg, link, site, NO_POSITION)
}

/// The position of the site with this Halo GUID: `hint` if the site is there,
/// otherwise looked up.
fn site_at(sites: &SiteTable, halo_guid: &HaloGuid, hint: u32) -> Option<usize> {
    let hinted = hint as usize;
    if hint != NO_POSITION && sites.at(hinted).is_some_and(|s| s.halo_guid == *halo_guid) {
        return Some(hinted);
    }
    sites.position(halo_guid)
}

/// Records that Link `l` serves the site at `at` of the site table.
fn serve(l: &mut Link, halo_guid: HaloGuid, at: usize) {
    if l.sites.is_empty() {
        l.first_site_at = u32::try_from(at).unwrap_or(NO_POSITION);
    }
    l.sites.push(halo_guid);
}

/// [`live_owned_site_at`], trying `hint` as the site's position first.
fn live_owned_site_hinted(
    reg: &Registry,
    link: LinkGuid,
    site: HaloGuid,
    hint: u32,
) -> Result<(usize, &Site), TenancyError> {
    let at = site_at(&reg.sites, &site, hint).ok_or(TenancyError::UnknownSite(site))?;
    let s = reg.sites.at(at).ok_or(TenancyError::UnknownSite(site))?;
    if s.link != link {
        return Err(TenancyError::SiteOwnedByOtherLink(site));
    }
    if !s.status().is_live() {
        return Err(TenancyError::SiteRetired {
            halo_guid: site,
            status: s.status(),
        });
    }
    Ok((at, s))
}

/// Branch CRNs sorted, without duplicates and without the parent itself.
fn normalise_branches(parent: Crn, branches: &[Crn]) -> BranchList {
    if branches.is_empty() {
        return BranchList::default();
    }
    let mut out: SmallVec<[Crn; 2]> = branches.iter().copied().filter(|b| *b != parent).collect();
    out.sort_unstable();
    out.dedup();
    BranchList::from(out.as_slice())
}

/// The validated details of a database (texts borrowed from the event).
struct Details<'a> {
    branch_crns: BranchList,
    practice_name: CompactString,
    pms_version: &'a str,
    catalogues: &'a [Catalogue],
}

fn check_details(identity: &SiteIdentity) -> Result<Details<'_>, TenancyError> {
    check_text(
        TextField::PracticeName,
        &identity.practice_name,
        MAX_PRACTICE_NAME,
        false,
    )?;
    check_text(
        TextField::PmsVersion,
        &identity.pms_version,
        MAX_VERSION,
        false,
    )?;
    let mut defaults = 0;
    for (i, c) in identity.catalogues.iter().enumerate() {
        check_text(TextField::CatalogueName, &c.name, MAX_CATALOGUE_NAME, true)?;
        if identity.catalogues[..i]
            .iter()
            .any(|d| d.name.eq_ignore_ascii_case(&c.name))
        {
            return Err(TenancyError::DuplicateCatalogue);
        }
        defaults += usize::from(c.is_default);
    }
    if defaults > 1 {
        return Err(TenancyError::SeveralDefaultCatalogues);
    }
    Ok(Details {
        branch_crns: normalise_branches(identity.parent_crn, &identity.branch_crns),
        practice_name: CompactString::from(identity.practice_name.as_str()),
        pms_version: &identity.pms_version,
        catalogues: &identity.catalogues,
    })
}

fn key(environment: Environment, pms_type: PmsType, crn: Crn) -> GroupKey {
    GroupKey::new(environment, PmsId::new(pms_type, crn))
}

/// The CRN rules for a site with routing CRN `crn` and these branch CRNs, ignoring
/// the site `exclude` (the site itself, or the install it replaces). Gives the
/// position of the group of `crn` if there is one (for [`Plan::elect_at`]).
fn check_crns(
    reg: &Registry,
    environment: Environment,
    pms_type: PmsType,
    crn: Crn,
    demo: bool,
    branches: &[Crn],
    exclude: Option<HaloGuid>,
) -> Result<Option<usize>, TenancyError> {
    let parent_key = key(environment, pms_type, crn);
    if reg.branches.contains_key(&parent_key) {
        return Err(TenancyError::CrnIsBranch(crn));
    }
    let parent_at = reg.groups.position(&parent_key);
    if let Some(group) = parent_at.and_then(|i| reg.groups.at(i)).map(|e| &e.group) {
        let clash = group
            .state
            .members()
            .filter(|m| Some(m.halo_guid) != exclude)
            .any(|m| demo || reg.sites.get(&m.halo_guid).is_some_and(Site::is_demo));
        if clash {
            return Err(TenancyError::FakeCrnCollision(crn));
        }
    }
    if demo {
        // A demo copy's branch CRNs are copies too: kept, never indexed.
        return Ok(parent_at);
    }
    for branch in branches {
        let branch_key = key(environment, pms_type, *branch);
        if let Some(group) = reg.groups.get(&branch_key).map(|e| &e.group) {
            if group.state.members().any(|m| Some(m.halo_guid) != exclude) {
                return Err(TenancyError::BranchIsParent(*branch));
            }
        }
        if let Some(claim) = reg.branches.get(&branch_key) {
            if reg.branch_parent(claim) != Some(crn) {
                return Err(TenancyError::BranchClaimedByOtherParent(*branch));
            }
        }
    }
    Ok(parent_at)
}

/// Authority changes worked out on copies of the groups they touch, each with its
/// position in the group table if it exists (groups are never deleted, so the
/// position still holds when the plan is committed).
#[derive(Default)]
struct Plan {
    groups: SmallVec<[(GroupKey, GroupState, Option<usize>); 1]>,
}

impl Plan {
    fn elect(
        &mut self,
        reg: &Registry,
        key: GroupKey,
        event: &AuthorityEvent,
    ) -> Result<(), TenancyError> {
        let at = if self.groups.iter().any(|(k, _, _)| *k == key) {
            None
        } else {
            reg.groups.position(&key)
        };
        self.elect_at(reg, key, at, event)
    }

    /// [`Plan::elect`] for a group whose position was just looked up: `at` is
    /// [`Dense::position`](crate::registry::Dense::position) of `key`.
    fn elect_at(
        &mut self,
        reg: &Registry,
        key: GroupKey,
        at: Option<usize>,
        event: &AuthorityEvent,
    ) -> Result<(), TenancyError> {
        let index = match self.groups.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                let state = at
                    .and_then(|i| reg.groups.at(i))
                    .map(|e| e.group.state.clone())
                    .unwrap_or_default();
                self.groups.push((key, state, at));
                self.groups.len() - 1
            }
        };
        self.groups[index].1.apply(event)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Commit helpers (infallible).

fn push_site_change(changes: &mut Changes, site: HaloGuid) {
    if !changes.contains(&Change::SiteUpserted(site))
        && !changes.contains(&Change::SiteRetired(site))
    {
        changes.push(Change::SiteUpserted(site));
    }
}

/// Installs the planned group states and mirrors holder and epoch onto the sites.
/// `leaving` are sites that left a group in this event; `fresh` is a site this event
/// inserted and its position in the site table, if any (found without a look-up).
fn commit_plan(
    reg: &mut Registry,
    plan: Plan,
    leaving: &[HaloGuid],
    fresh: Option<(HaloGuid, usize)>,
    changes: &mut Changes,
) {
    let Registry { groups, sites, .. } = reg;
    for (key, state, at) in plan.groups {
        let at = match at.filter(|&i| groups.at(i).is_some_and(|e| e.key == key)) {
            Some(i) => i,
            None => groups.position_or_insert_with(key, || GroupEntry {
                key,
                group: Group::default(),
            }),
        };
        let Some(entry) = groups.at_mut(at) else {
            continue;
        };
        let group = &mut entry.group;
        let changed = group.state.epoch() != state.epoch();
        group.state = state;
        let holder = group.state.holder();
        let epoch = group.state.epoch();
        for member in group.state.members() {
            let site = match fresh {
                Some((new, i)) if new == member.halo_guid => sites.at_mut(i),
                _ => sites.get_mut(&member.halo_guid),
            };
            if let Some(site) = site {
                site.flags
                    .set_authoritative(holder == Some(member.halo_guid));
                site.epoch = epoch;
            }
        }
        for gone in leaving {
            if let Some(site) = sites.get_mut(gone) {
                if site.group_key() == key {
                    site.flags.set_authoritative(false);
                    site.epoch = epoch;
                }
            }
        }
        if changed {
            changes.push(Change::AuthorityChanged {
                group: key,
                holder,
                epoch,
            });
            for member in group.state.members() {
                push_site_change(changes, member.halo_guid);
            }
        }
    }
}

/// Adds the site's CRN claims (branch CRNs, or a demo copy's real CRN). `parent`
/// is the position of the site's group in the group table.
pub(crate) fn claim_crns(
    branches: &mut BranchTable,
    demo_real: &mut Map<GroupKey, BTreeSet<HaloGuid>>,
    site: &Site,
    parent: u32,
) {
    let (environment, pms_type) = (site.environment(), site.pms_type());
    if site.is_demo() {
        demo_real
            .entry(key(environment, pms_type, site.parent_crn))
            .or_default()
            .insert(site.halo_guid);
        return;
    }
    for branch in site.branch_crns() {
        branches.claim(key(environment, pms_type, *branch), parent);
    }
}

/// The position of the site's group, creating it (empty) if it is new: a live site
/// is a member of its group, so it exists, or is about to be made by the same event.
fn group_position(groups: &mut GroupTable, site: &Site) -> u32 {
    if site.is_demo() || site.branch_crns.len() == 0 {
        // No branch claim to name its parent.
        return u32::MAX;
    }
    let key = site.group_key();
    let at = groups.position_or_insert_with(key, || GroupEntry {
        key,
        group: Group::default(),
    });
    u32::try_from(at).unwrap_or(u32::MAX)
}

/// Removes the claims [`claim_crns`] added.
fn release_crns(
    branches: &mut BranchTable,
    demo_real: &mut Map<GroupKey, BTreeSet<HaloGuid>>,
    site: &Site,
) {
    if site.is_demo() {
        let k = key(site.environment(), site.pms_type(), site.parent_crn);
        if let Some(copies) = demo_real.get_mut(&k) {
            copies.remove(&site.halo_guid);
            if copies.is_empty() {
                demo_real.remove(&k);
            }
        }
        return;
    }
    for branch in site.branch_crns() {
        branches.release(&key(site.environment(), site.pms_type(), *branch));
    }
}

/// Inserts a new site with its CRN claims; gives its position in the site table.
fn insert_site(reg: &mut Registry, site: Site) -> usize {
    let parent = group_position(&mut reg.groups, &site);
    claim_crns(&mut reg.branches, &mut reg.demo_real, &site, parent);
    let at = reg.sites.len();
    reg.sites.insert(site);
    at
}

/// Takes a site out of its CRN indexes, changes it, and puts it back.
fn with_claims(reg: &mut Registry, halo_guid: HaloGuid, change: impl FnOnce(&mut Site)) {
    let Registry {
        sites,
        groups,
        branches,
        demo_real,
        ..
    } = reg;
    let Some(site) = sites.get_mut(&halo_guid) else {
        return;
    };
    if site.status().is_live() {
        release_crns(branches, demo_real, site);
    }
    change(site);
    if site.status().is_live() {
        let parent = group_position(groups, site);
        claim_crns(branches, demo_real, site, parent);
    }
}

fn hear_link(reg: &mut Registry, link: LinkGuid, now: Timestamp) {
    if let Some(l) = reg.links.get_mut(&link) {
        l.last_heard = l.last_heard.max(now);
    }
}

/// Whether `event` would be accepted and change nothing but when the Link and its
/// sites were last heard: a Link's hello repeated with the same environment and
/// version, or a database announced again, live, with the same identity and
/// details. Read-only; see [`Registry::changes_nothing`].
pub(crate) fn changes_nothing(reg: &Registry, event: &Event) -> bool {
    match event {
        Event::LinkRegistered {
            link,
            environment,
            version,
        } => reg.links.get(link).is_some_and(|l| {
            l.status == LinkStatus::Active
                && l.environment == *environment
                && **l.version == **version
        }),
        Event::SiteAttached {
            link,
            halo_guid,
            identity,
        } => site_unchanged(reg, *link, *halo_guid, identity),
        _ => false,
    }
}

fn site_unchanged(
    reg: &Registry,
    link: LinkGuid,
    halo_guid: HaloGuid,
    identity: &SiteIdentity,
) -> bool {
    let Ok(environment) = live_link(reg, link).map(|l| l.environment) else {
        return false;
    };
    let Ok(site) = live_owned_site(reg, link, halo_guid) else {
        return false;
    };
    let Ok(details) = check_details(identity) else {
        return false;
    };
    let same = site.pms_type() == identity.pms_type
        && site.parent_crn == identity.parent_crn
        && site.is_demo() == identity.is_demo
        && site.branch_crns == details.branch_crns
        && site.practice_name == details.practice_name
        && site.pms_version() == details.pms_version
        && site.catalogues() == details.catalogues;
    let routing_crn = if identity.is_demo {
        halo_guid.fake_crn()
    } else {
        identity.parent_crn
    };
    // The same checks `database_attached` makes, so that "changes nothing" never
    // stands in for a refusal.
    same && check_crns(
        reg,
        environment,
        identity.pms_type,
        routing_crn,
        identity.is_demo,
        details.branch_crns.as_slice(),
        Some(halo_guid),
    )
    .is_ok()
}

// ---------------------------------------------------------------------------------
// Handlers.

fn link_registered(
    reg: &mut Registry,
    link: LinkGuid,
    environment: Environment,
    version: &str,
    now: Timestamp,
) -> Result<Changes, TenancyError> {
    check_text(TextField::LinkVersion, version, MAX_VERSION, true)?;
    if let Some(existing) = reg.links.get(&link) {
        let serves = existing
            .sites
            .iter()
            .any(|s| reg.sites.get(s).is_some_and(|s| s.status().is_live()));
        if existing.environment != environment && serves {
            return Err(TenancyError::EnvironmentChanged(link));
        }
    }
    let shared = reg.interned.link_version(version);
    match reg.links.get_mut(&link) {
        Some(entry) => {
            entry.environment = environment;
            entry.status = LinkStatus::Active;
            entry.version = shared;
            entry.last_heard = entry.last_heard.max(now);
        }
        None => reg.links.insert(Link {
            guid: link,
            environment,
            status: LinkStatus::Active,
            last_heard: now,
            version: shared,
            sites: SmallVec::new(),
            first_site_at: NO_POSITION,
        }),
    }
    Ok(smallvec::smallvec![Change::LinkUpserted(link)])
}

fn database_attached(
    reg: &mut Registry,
    link: LinkGuid,
    halo_guid: HaloGuid,
    identity: &SiteIdentity,
    now: Timestamp,
) -> Result<Changes, TenancyError> {
    let (link_at, live) = live_link_at(reg, link)?;
    let environment = live.environment;
    if identity.is_demo && environment == Environment::Production {
        return Err(TenancyError::DemoInProduction);
    }
    let details = check_details(identity)?;
    let routing_crn = if identity.is_demo {
        halo_guid.fake_crn()
    } else {
        identity.parent_crn
    };

    if let Some(existing) = reg.sites.get(&halo_guid) {
        // A re-report of a known database: details may change, identity may not.
        if existing.link != link {
            return Err(TenancyError::SiteOwnedByOtherLink(halo_guid));
        }
        if !existing.status().is_live() {
            return Err(TenancyError::SiteRetired {
                halo_guid,
                status: existing.status(),
            });
        }
        if existing.pms_type() != identity.pms_type
            || existing.parent_crn != identity.parent_crn
            || existing.is_demo() != identity.is_demo
        {
            return Err(TenancyError::IdentityChanged(halo_guid));
        }
        check_crns(
            reg,
            environment,
            identity.pms_type,
            routing_crn,
            identity.is_demo,
            details.branch_crns.as_slice(),
            Some(halo_guid),
        )?;
        let profile = reg
            .interned
            .profile(details.pms_version, details.catalogues);
        with_claims(reg, halo_guid, |site| {
            site.branch_crns = details.branch_crns;
            site.practice_name = details.practice_name;
            site.profile = profile;
            site.last_heard = site.last_heard.max(now);
        });
        hear_link(reg, link, now);
        return Ok(smallvec::smallvec![Change::SiteUpserted(halo_guid)]);
    }

    // The group of the routing CRN, looked up once by the checks.
    let group_at = check_crns(
        reg,
        environment,
        identity.pms_type,
        routing_crn,
        identity.is_demo,
        details.branch_crns.as_slice(),
        None,
    )?;
    let group_key = key(environment, identity.pms_type, routing_crn);
    let mut plan = Plan::default();
    plan.elect_at(
        reg,
        group_key,
        group_at,
        &AuthorityEvent::Joined {
            halo_guid,
            eligible: true,
            link,
        },
    )?;

    let site = Site {
        halo_guid,
        link,
        parent_crn: identity.parent_crn,
        flags: SiteFlags::new(
            environment,
            identity.pms_type,
            identity.is_demo,
            SiteStatus::Initialising,
            false,
        ),
        epoch: halo_authority::Epoch::ZERO,
        last_heard: now,
        created: now,
        branch_crns: details.branch_crns,
        practice_name: details.practice_name,
        profile: reg
            .interned
            .profile(details.pms_version, details.catalogues),
    };
    let site_at = insert_site(reg, site);
    if let Some(l) = reg.links.at_mut(link_at) {
        serve(l, halo_guid, site_at);
        l.last_heard = l.last_heard.max(now);
    }
    let mut changes: Changes = smallvec::smallvec![Change::SiteUpserted(halo_guid)];
    commit_plan(reg, plan, &[], Some((halo_guid, site_at)), &mut changes);
    Ok(changes)
}

fn database_ready(
    reg: &mut Registry,
    link: LinkGuid,
    halo_guid: HaloGuid,
    now: Timestamp,
) -> Result<Changes, TenancyError> {
    let (link_at, l) = live_link_at(reg, link)?;
    let hint = if l.sites.first() == Some(&halo_guid) {
        l.first_site_at
    } else {
        NO_POSITION
    };
    let (site_at, site) = live_owned_site_hinted(reg, link, halo_guid, hint)?;
    if site.status() != SiteStatus::Initialising {
        return Err(TenancyError::InvalidTransition {
            halo_guid,
            from: site.status(),
            to: SiteStatus::Active,
        });
    }
    if let Some(site) = reg.sites.at_mut(site_at) {
        site.flags.set_status(SiteStatus::Active);
        site.last_heard = site.last_heard.max(now);
    }
    if let Some(l) = reg.links.at_mut(link_at) {
        l.last_heard = l.last_heard.max(now);
    }
    Ok(smallvec::smallvec![Change::SiteUpserted(halo_guid)])
}

fn database_removed(
    reg: &mut Registry,
    link: LinkGuid,
    halo_guid: HaloGuid,
) -> Result<Changes, TenancyError> {
    live_link(reg, link)?;
    let site = live_owned_site(reg, link, halo_guid)?;
    let mut plan = Plan::default();
    plan.elect(reg, site.group_key(), &AuthorityEvent::Left { halo_guid })?;
    with_claims(reg, halo_guid, |site| {
        site.flags.set_status(SiteStatus::Removed)
    });
    let mut changes: Changes = smallvec::smallvec![Change::SiteRetired(halo_guid)];
    commit_plan(reg, plan, &[halo_guid], None, &mut changes);
    Ok(changes)
}

fn link_uninstalled(reg: &mut Registry, link: LinkGuid) -> Result<Changes, TenancyError> {
    let l = live_link(reg, link)?;
    let leaving: Vec<HaloGuid> = l
        .sites
        .iter()
        .copied()
        .filter(|s| reg.sites.get(s).is_some_and(|s| s.status().is_live()))
        .collect();
    let mut plan = Plan::default();
    for halo_guid in &leaving {
        if let Some(site) = reg.sites.get(halo_guid) {
            plan.elect(
                reg,
                site.group_key(),
                &AuthorityEvent::Left {
                    halo_guid: *halo_guid,
                },
            )?;
        }
    }
    let mut changes = Changes::with_capacity(leaving.len() + 1);
    for halo_guid in &leaving {
        with_claims(reg, *halo_guid, |site| {
            site.flags.set_status(SiteStatus::Uninstalled)
        });
        changes.push(Change::SiteRetired(*halo_guid));
    }
    if let Some(l) = reg.links.get_mut(&link) {
        l.status = LinkStatus::Uninstalled;
    }
    changes.push(Change::LinkUninstalled(link));
    commit_plan(reg, plan, &leaving, None, &mut changes);
    Ok(changes)
}

fn reinstalled(
    reg: &mut Registry,
    link: LinkGuid,
    previous: HaloGuid,
    halo_guid: HaloGuid,
    now: Timestamp,
) -> Result<Changes, TenancyError> {
    let environment = live_link(reg, link)?.environment;
    let prev = reg
        .sites
        .get(&previous)
        .ok_or(TenancyError::UnknownSite(previous))?;
    if prev.link != link {
        return Err(TenancyError::SiteOwnedByOtherLink(previous));
    }
    if prev.status() == SiteStatus::Removed {
        return Err(TenancyError::SiteRetired {
            halo_guid: previous,
            status: prev.status(),
        });
    }
    if reg.successors.contains_key(&previous) {
        return Err(TenancyError::AlreadyReinstalled(previous));
    }
    if let Some(existing) = reg.sites.get(&halo_guid) {
        return Err(if existing.link != link {
            TenancyError::SiteOwnedByOtherLink(halo_guid)
        } else {
            TenancyError::DuplicateSite(halo_guid)
        });
    }
    if prev.environment() != environment {
        return Err(TenancyError::EnvironmentChanged(link));
    }
    let was_live = prev.status().is_live();
    let routing_crn = if prev.is_demo() {
        halo_guid.fake_crn()
    } else {
        prev.parent_crn
    };
    check_crns(
        reg,
        environment,
        prev.pms_type(),
        routing_crn,
        prev.is_demo(),
        prev.branch_crns(),
        Some(previous),
    )?;
    let new_key = key(environment, prev.pms_type(), routing_crn);
    let mut plan = Plan::default();
    if prev.is_demo() {
        // A demo copy's fake CRN comes from its Halo GUID, so the reinstall lands in
        // a new group of its own.
        if was_live {
            plan.elect(
                reg,
                prev.group_key(),
                &AuthorityEvent::Left {
                    halo_guid: previous,
                },
            )?;
        }
        plan.elect(
            reg,
            new_key,
            &AuthorityEvent::Joined {
                halo_guid,
                eligible: true,
                link,
            },
        )?;
    } else {
        plan.elect(
            reg,
            new_key,
            &AuthorityEvent::Reinstalled {
                previous,
                halo_guid,
                link,
                eligible: true,
            },
        )?;
    }

    let site = Site {
        halo_guid,
        link,
        parent_crn: prev.parent_crn,
        flags: SiteFlags::new(
            environment,
            prev.pms_type(),
            prev.is_demo(),
            SiteStatus::Initialising,
            false,
        ),
        epoch: halo_authority::Epoch::ZERO,
        last_heard: now,
        created: now,
        branch_crns: prev.branch_crns.clone(),
        practice_name: prev.practice_name.clone(),
        profile: Arc::clone(&prev.profile),
    };
    let mut changes = Changes::new();
    if was_live {
        with_claims(reg, previous, |s| {
            s.flags.set_status(SiteStatus::Uninstalled)
        });
        changes.push(Change::SiteRetired(previous));
    }
    let site_at = insert_site(reg, site);
    reg.successors.insert(previous, halo_guid);
    if let Some(l) = reg.links.get_mut(&link) {
        serve(l, halo_guid, site_at);
        l.last_heard = l.last_heard.max(now);
    }
    changes.push(Change::SiteUpserted(halo_guid));
    commit_plan(
        reg,
        plan,
        &[previous],
        Some((halo_guid, site_at)),
        &mut changes,
    );
    Ok(changes)
}

fn heartbeat(reg: &mut Registry, link: LinkGuid, now: Timestamp) -> Result<Changes, TenancyError> {
    let (link_at, _) = live_link_at(reg, link)?;
    let Registry { links, sites, .. } = reg;
    if let Some(l) = links.at_mut(link_at) {
        l.last_heard = l.last_heard.max(now);
        for (n, halo_guid) in l.sites.iter().enumerate() {
            let hint = if n == 0 { l.first_site_at } else { NO_POSITION };
            if let Some(site) = site_at(sites, halo_guid, hint).and_then(|i| sites.at_mut(i)) {
                if site.status().is_live() {
                    site.last_heard = site.last_heard.max(now);
                }
            }
        }
    }
    Ok(smallvec::smallvec![Change::LinkHeard { link, at: now }])
}

fn branch_crns_changed(
    reg: &mut Registry,
    link: LinkGuid,
    halo_guid: HaloGuid,
    branch_crns: &[Crn],
) -> Result<Changes, TenancyError> {
    live_link(reg, link)?;
    let site = live_owned_site(reg, link, halo_guid)?;
    let branches = normalise_branches(site.parent_crn, branch_crns);
    check_crns(
        reg,
        site.environment(),
        site.pms_type(),
        site.crn(),
        site.is_demo(),
        branches.as_slice(),
        Some(halo_guid),
    )?;
    with_claims(reg, halo_guid, |site| site.branch_crns = branches);
    Ok(smallvec::smallvec![Change::SiteUpserted(halo_guid)])
}

fn promoted(
    reg: &mut Registry,
    halo_guid: HaloGuid,
    actor: &str,
    reason: &str,
    now: Timestamp,
) -> Result<Changes, TenancyError> {
    let site = reg
        .sites
        .get(&halo_guid)
        .ok_or(TenancyError::UnknownSite(halo_guid))?;
    if !site.status().is_live() {
        return Err(TenancyError::SiteRetired {
            halo_guid,
            status: site.status(),
        });
    }
    check_text(TextField::Actor, actor, MAX_ACTOR, true)?;
    check_text(TextField::Reason, reason, MAX_REASON, true)?;
    let group_key = site.group_key();
    let mut plan = Plan::default();
    plan.elect(
        reg,
        group_key,
        &AuthorityEvent::Promoted {
            halo_guid,
            actor: actor.to_string(),
            reason: reason.to_string(),
        },
    )?;
    let epoch = plan
        .groups
        .first()
        .map(|(_, g, _)| g.epoch())
        .unwrap_or_default();
    let mut changes = Changes::new();
    commit_plan(reg, plan, &[], None, &mut changes);
    if reg.groups.get(&group_key).is_some() {
        reg.promotions.insert(
            group_key,
            Promotion {
                halo_guid,
                actor: actor.into(),
                reason: reason.into(),
                at: now,
                epoch,
            },
        );
    }
    Ok(changes)
}
