//! Snapshots: the whole registry as one versioned, serde-serialisable value, so that
//! recovery loads a snapshot and replays only the events after it.
//!
//! The snapshot holds only what events decided; everything derived (the Halo GUID
//! index, each Link's site list, branch CRN claims, demo real-CRN counts, group
//! members and holders) is rebuilt by [`Registry::from_snapshot`], which also checks
//! that the parts fit together. Order never depends on hash-map iteration: sites are
//! in attach order, everything else is sorted, so equal registries give equal
//! snapshots. Versions and catalogue lists shared by many sites are written once, in
//! tables that sites refer to by index. The frozen fixture
//! `tests/fixtures/snapshot_v1.json` is loaded by a test.
//!
//! Two encodings of the same value: serde (JSON, readable) and a compact binary form
//! ([`RegistrySnapshot::to_bytes`], [`RegistrySnapshot::from_bytes`]; layout in
//! `snapshot/binary.rs`), which a 1M-site restore reads several times faster.

use std::collections::HashMap;
use std::sync::Arc;

use halo_authority::{Epoch, GroupKey, GroupState, Member};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};
use serde::{Deserialize, Serialize};

use compact_str::CompactString;
use smallvec::SmallVec;

use crate::registry::{Dense, Group, GroupEntry, Promotion};
use crate::site::{BranchList, Profile, SiteFlags};
use crate::{Catalogue, Link, LinkStatus, Registry, Site, SiteStatus, TenancyError};

mod binary;

/// The snapshot format version this build writes (and the only one it reads).
pub const SNAPSHOT_VERSION: u32 = 1;

/// The whole state of a [`Registry`], from [`Registry::to_snapshot`], for
/// [`Registry::from_snapshot`]. Serialise it with serde (JSON: a few hundred bytes
/// per site). Its fields are private: a snapshot is made from a registry or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySnapshot {
    version: u32,
    /// Interned texts (Link and PMS versions), sorted.
    texts: Vec<Box<str>>,
    /// Interned catalogue lists, sorted.
    catalogues: Vec<Box<[Catalogue]>>,
    /// Links, sorted by GUID.
    links: Vec<LinkRecord>,
    /// Sites in attach order.
    sites: Vec<SiteRecord>,
    /// Groups that are empty, vacated or promoted, sorted by key (the others are
    /// rebuilt from their live members).
    groups: Vec<GroupRecord>,
    /// (previous install, its reinstall), sorted.
    successors: Vec<(HaloGuid, HaloGuid)>,
}

impl RegistrySnapshot {
    /// The format version ([`SNAPSHOT_VERSION`] when made by this build).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The number of sites in the snapshot.
    pub fn site_count(&self) -> usize {
        self.sites.len()
    }
}

fn cat_key(c: &Catalogue) -> (&str, bool) {
    (&c.name, c.is_default)
}

fn active() -> LinkStatus {
    LinkStatus::Active
}

fn is_active(status: &LinkStatus) -> bool {
    *status == LinkStatus::Active
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkRecord {
    guid: LinkGuid,
    env: Environment,
    #[serde(default = "active", skip_serializing_if = "is_active")]
    status: LinkStatus,
    heard: Timestamp,
    /// Index into `texts`.
    ver: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteRecord {
    #[serde(rename = "halo")]
    halo_guid: HaloGuid,
    link: LinkGuid,
    env: Environment,
    pms: PmsType,
    /// The parent CRN (for a demo copy, the real one).
    #[serde(rename = "crn")]
    parent_crn: Crn,
    #[serde(default, rename = "demo", skip_serializing_if = "is_false")]
    is_demo: bool,
    status: SiteStatus,
    #[serde(default, skip_serializing_if = "is_false")]
    auth: bool,
    epoch: Epoch,
    heard: Timestamp,
    /// When the site was first registered; absent in snapshots written before it
    /// was recorded (and then unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<Timestamp>,
    #[serde(
        default,
        rename = "branches",
        skip_serializing_if = "<[Crn]>::is_empty"
    )]
    branch_crns: Box<[Crn]>,
    name: CompactString,
    /// Index into `texts`.
    ver: u32,
    /// Index into `catalogues`.
    cats: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupRecord {
    env: Environment,
    pms_id: PmsId,
    epoch: Epoch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vacated_by: Option<Member>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    promotion: Option<PromotionRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromotionRecord {
    #[serde(rename = "site")]
    halo_guid: HaloGuid,
    actor: Box<str>,
    reason: Box<str>,
    at: Timestamp,
    epoch: Epoch,
}

/// Index of each distinct value in a sorted table.
fn table_index<'a, T: ?Sized + Eq + std::hash::Hash + 'a>(
    table: impl Iterator<Item = &'a T>,
) -> HashMap<&'a T, u32, foldhash::fast::RandomState> {
    table
        .enumerate()
        .map(|(i, v)| (v, u32::try_from(i).unwrap_or(u32::MAX)))
        .collect()
}

/// Finds `value` in a table, appending it if missing. Every version and catalogue
/// list a site or Link holds comes from the interner, so the append is a safety net.
fn lookup<T: Eq + std::hash::Hash + ?Sized>(
    index: &HashMap<&T, u32, foldhash::fast::RandomState>,
    extra: &mut Vec<Box<T>>,
    base: usize,
    value: &T,
) -> u32
where
    Box<T>: for<'x> From<&'x T>,
{
    if let Some(i) = index.get(value) {
        return *i;
    }
    if let Some(i) = extra.iter().position(|v| **v == *value) {
        return u32::try_from(base + i).unwrap_or(u32::MAX);
    }
    extra.push(Box::from(value));
    u32::try_from(base + extra.len() - 1).unwrap_or(u32::MAX)
}

/// A group key as two integers whose order is a total order on keys: the bytes
/// (environment, PMS type, CRN zero-padded: CRNs hold no zero byte) read big-endian,
/// so that sorting compares integers rather than byte strings.
type GroupSortKey = (u128, u64);

fn group_sort_key(key: &GroupKey) -> GroupSortKey {
    let mut out = [0u8; 24];
    out[0] = binary::env_code(key.environment);
    out[1] = binary::pms_code(key.pms_id.pms_type());
    for (dst, src) in out[2..2 + Crn::MAX_LEN]
        .iter_mut()
        .zip(key.pms_id.site_id().as_str().bytes())
    {
        *dst = src;
    }
    let (high, low) = out.split_at(16);
    let mut high_bytes = [0u8; 16];
    high_bytes.copy_from_slice(high);
    let mut low_bytes = [0u8; 8];
    low_bytes.copy_from_slice(low);
    (
        u128::from_be_bytes(high_bytes),
        u64::from_be_bytes(low_bytes),
    )
}

/// A GUID as an integer with the same order as its bytes.
fn guid_key(bytes: &[u8; 16]) -> u128 {
    u128::from_be_bytes(*bytes)
}

fn invalid(what: &'static str) -> TenancyError {
    TenancyError::InvalidSnapshot { what }
}

impl Registry {
    /// The whole registry as a [`RegistrySnapshot`]. Equal registries give equal
    /// snapshots, and [`Registry::from_snapshot`] gives back an equal registry.
    pub fn to_snapshot(&self) -> RegistrySnapshot {
        let mut texts: Vec<&str> = self.interned.texts.iter().map(|t| &**t).collect();
        texts.sort_unstable();
        let mut catalogues: Vec<&[Catalogue]> =
            self.interned.catalogues.iter().map(|c| &**c).collect();
        catalogues.sort_unstable_by(|a, b| a.iter().map(cat_key).cmp(b.iter().map(cat_key)));
        let text_index = table_index(texts.iter().copied());
        let catalogue_index = table_index(catalogues.iter().copied());
        let (text_base, catalogue_base) = (texts.len(), catalogues.len());
        let mut extra_texts: Vec<Box<str>> = Vec::new();
        let mut extra_catalogues: Vec<Box<[Catalogue]>> = Vec::new();

        let mut links: Vec<LinkRecord> = self
            .links
            .values()
            .map(|l| LinkRecord {
                guid: l.guid,
                env: l.environment,
                status: l.status,
                heard: l.last_heard,
                ver: lookup(&text_index, &mut extra_texts, text_base, &l.version),
            })
            .collect();
        links.sort_unstable_by_key(|l| l.guid);

        let sites = self
            .sites
            .values()
            .map(|s| SiteRecord {
                halo_guid: s.halo_guid,
                link: s.link,
                env: s.environment(),
                pms: s.pms_type(),
                parent_crn: s.parent_crn,
                is_demo: s.is_demo(),
                status: s.status(),
                auth: s.is_authoritative(),
                epoch: s.epoch,
                heard: s.last_heard,
                created: s.created_at(),
                branch_crns: s.branch_crns().into(),
                name: s.practice_name.clone(),
                ver: lookup(
                    &text_index,
                    &mut extra_texts,
                    text_base,
                    &s.profile.pms_version,
                ),
                cats: lookup(
                    &catalogue_index,
                    &mut extra_catalogues,
                    catalogue_base,
                    &s.profile.catalogues,
                ),
            })
            .collect();

        let mut groups: Vec<GroupRecord> = self
            .groups()
            .filter(|(key, g)| {
                // A group with live members and nothing else to say is rebuilt from
                // its members (they carry its epoch).
                g.state.is_empty()
                    || g.state.vacated_by().is_some()
                    || self.promotions.contains_key(key)
            })
            .map(|(key, g)| GroupRecord {
                env: key.environment,
                pms_id: key.pms_id,
                epoch: g.state.epoch(),
                vacated_by: g.state.vacated_by().copied(),
                promotion: self.promotions.get(key).map(|p| PromotionRecord {
                    halo_guid: p.halo_guid,
                    actor: p.actor.clone(),
                    reason: p.reason.clone(),
                    at: p.at,
                    epoch: p.epoch,
                }),
            })
            .collect();
        groups.sort_unstable_by_key(|g| (g.env, g.pms_id));

        let mut successors: Vec<(HaloGuid, HaloGuid)> =
            self.successors.iter().map(|(p, s)| (*p, *s)).collect();
        successors.sort_unstable();

        RegistrySnapshot {
            version: SNAPSHOT_VERSION,
            texts: texts
                .into_iter()
                .map(Box::from)
                .chain(extra_texts)
                .collect(),
            catalogues: catalogues
                .into_iter()
                .map(Box::from)
                .chain(extra_catalogues)
                .collect(),
            links,
            sites,
            groups,
            successors,
        }
    }

    /// Rebuilds a registry from a snapshot, with every derived index, and checks that
    /// its parts fit together (references resolve, no duplicates, at most one
    /// authoritative live site per group, live sites carry their group's epoch).
    ///
    /// # Errors
    /// [`TenancyError::UnsupportedSnapshotVersion`] for a format this build does not
    /// read; [`TenancyError::InvalidSnapshot`] for a damaged or inconsistent one.
    pub fn from_snapshot(snapshot: RegistrySnapshot) -> Result<Registry, TenancyError> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(TenancyError::UnsupportedSnapshotVersion(snapshot.version));
        }
        let RegistrySnapshot {
            version: _,
            texts: snapshot_texts,
            catalogues: snapshot_catalogues,
            mut links,
            sites,
            groups,
            successors,
        } = snapshot;
        let mut reg = Registry::new();
        let texts: Vec<Arc<str>> = snapshot_texts
            .iter()
            .map(|t| reg.interned.text(t))
            .collect();
        let catalogues: Vec<Arc<[Catalogue]>> = snapshot_catalogues
            .iter()
            .map(|c| reg.interned.catalogues(c))
            .collect();
        let text = |i: u32| {
            texts
                .get(i as usize)
                .cloned()
                .ok_or_else(|| invalid("a version index is out of range"))
        };
        // Sites share a few (version, catalogues) pairs: one profile each.
        let mut profiles: HashMap<(u32, u32), Arc<Profile>, foldhash::fast::RandomState> =
            HashMap::default();
        let site_count = u32::try_from(sites.len()).map_err(|_| invalid("too many sites"))?;

        // A million random hash look-ups (each site's Link, each live site's group)
        // cost more than everything else here: cache misses. So both are found by
        // sorting and merging instead, and each table is filled in one pass, its
        // hash index written in slot order (`Dense::from_distinct`).

        // Sites in attach order; each live one is noted under its group's key.
        let mut live: Vec<(GroupSortKey, u32)> = Vec::with_capacity(sites.len());
        let mut placed: Vec<Site> = Vec::with_capacity(sites.len());
        // Consecutive sites mostly share one (version, catalogues) pair.
        let mut last_profile: Option<((u32, u32), Arc<Profile>)> = None;
        for (s, i) in sites.into_iter().zip(0..site_count) {
            let profile = match &last_profile {
                Some((pair, p)) if *pair == (s.ver, s.cats) => Arc::clone(p),
                _ => {
                    let p = match profiles.get(&(s.ver, s.cats)) {
                        Some(p) => Arc::clone(p),
                        None => {
                            let p = Arc::new(Profile {
                                pms_version: text(s.ver)?,
                                catalogues: catalogues
                                    .get(s.cats as usize)
                                    .cloned()
                                    .ok_or_else(|| invalid("a catalogue index is out of range"))?,
                            });
                            let p = match reg.interned.profiles.get(&p) {
                                Some(shared) => Arc::clone(shared),
                                None => {
                                    reg.interned.profiles.insert(Arc::clone(&p));
                                    p
                                }
                            };
                            profiles.insert((s.ver, s.cats), Arc::clone(&p));
                            p
                        }
                    };
                    last_profile = Some(((s.ver, s.cats), Arc::clone(&p)));
                    p
                }
            };
            let site = Site {
                halo_guid: s.halo_guid,
                link: s.link,
                parent_crn: s.parent_crn,
                flags: SiteFlags::new(s.env, s.pms, s.is_demo, s.status, s.auth),
                epoch: s.epoch,
                last_heard: s.heard,
                created: s.created.unwrap_or(Timestamp::UNIX_EPOCH),
                branch_crns: BranchList::from(&*s.branch_crns),
                practice_name: s.name,
                profile,
            };
            if site.status().is_live() {
                live.push((group_sort_key(&site.group_key()), i));
            } else if site.is_authoritative() {
                return Err(invalid("a retired site is authoritative"));
            }
            placed.push(site);
        }
        reg.sites = Dense::from_distinct(placed).ok_or_else(|| invalid("a site appears twice"))?;

        // Links, by GUID (as the writer sorts them), each with the sites it serves in
        // attach order: the sites' (Link, position) pairs sorted as integers.
        if !links.is_sorted_by_key(|l| l.guid) {
            links.sort_unstable_by_key(|l| l.guid);
        }
        if links.windows(2).any(|w| w[0].guid == w[1].guid) {
            return Err(invalid("a link appears twice"));
        }
        let placed = reg.sites.as_slice();
        let mut served: Vec<(u128, u32)> = placed
            .iter()
            .zip(0..site_count)
            .map(|(s, i)| (guid_key(s.link.as_bytes()), i))
            .collect();
        served.sort_unstable();
        let mut next = served.iter().peekable();
        let mut made: Vec<Link> = Vec::with_capacity(links.len());
        for l in links {
            let mut serves = SmallVec::new();
            let mut first_site_at = crate::site::NO_POSITION;
            let wanted = guid_key(l.guid.as_bytes());
            while let Some(&&(guid, i)) = next.peek() {
                match guid.cmp(&wanted) {
                    std::cmp::Ordering::Less => {
                        return Err(invalid("a site names an unknown link"));
                    }
                    std::cmp::Ordering::Equal => {
                        let site = placed
                            .get(i as usize)
                            .ok_or_else(|| invalid("a site index is out of range"))?;
                        if serves.is_empty() {
                            first_site_at = i;
                        }
                        serves.push(site.halo_guid);
                        next.next();
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
            let version = text(l.ver)?;
            let link = Link {
                guid: l.guid,
                environment: l.env,
                status: l.status,
                last_heard: l.heard,
                version: reg.interned.link_version(&version),
                sites: serves,
                first_site_at,
            };
            made.push(link);
        }
        reg.links = Dense::from_distinct(made).ok_or_else(|| invalid("a link appears twice"))?;
        if next.next().is_some() {
            return Err(invalid("a site names an unknown link"));
        }
        drop(served);

        // Groups: the written ones (empty, vacated or promoted) merged with the live
        // sites' keys, both sorted; a group with live members and nothing else to say
        // was not written, and its epoch is its members'.
        let mut written: Vec<(GroupSortKey, GroupRecord)> = groups
            .into_iter()
            .map(|g| (group_sort_key(&GroupKey::new(g.env, g.pms_id)), g))
            .collect();
        written.sort_unstable_by_key(|a| a.0);
        if written.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(invalid("a group appears twice"));
        }
        live.sort_unstable();
        // Exactly as many groups as distinct keys (an index sized for every live
        // site would be twice as large at a million sites).
        let live_groups = live.chunk_by(|a, b| a.0 == b.0).count();
        let mut made: Vec<GroupEntry> = Vec::with_capacity(written.len() + live_groups);
        let placed = reg.sites.as_slice();
        let mut written = written.into_iter().peekable();
        let mut at = 0;
        loop {
            let next_live = live.get(at).map(|e| e.0);
            let next_written = written.peek().map(|e| e.0);
            let sort_key = match (next_live, next_written) {
                (None, None) => break,
                (Some(k), None) | (None, Some(k)) => k,
                (Some(a), Some(b)) => a.min(b),
            };
            let record = match next_written {
                Some(k) if k == sort_key => written.next().map(|(_, g)| g),
                _ => None,
            };
            let from = at;
            while live.get(at).is_some_and(|e| e.0 == sort_key) {
                at += 1;
            }
            let run = live.get(from..at).unwrap_or_default();
            let first = run.first().and_then(|&(_, i)| placed.get(i as usize));
            let (key, epoch) = match (&record, first) {
                (Some(g), _) => (GroupKey::new(g.env, g.pms_id), g.epoch),
                (None, Some(site)) => (site.group_key(), site.epoch),
                (None, None) => break,
            };
            let mut holder = None;
            let mut members: SmallVec<[Member; 1]> = SmallVec::with_capacity(run.len());
            for &(_, i) in run {
                let site = placed
                    .get(i as usize)
                    .ok_or_else(|| invalid("a site index is out of range"))?;
                if site.epoch != epoch {
                    return Err(invalid("a live site is not at its group's epoch"));
                }
                if site.is_authoritative() {
                    if holder.is_some() {
                        return Err(invalid("two authoritative sites in one group"));
                    }
                    holder = Some(site.halo_guid);
                }
                // Tenancy sites are always eligible (see `apply`).
                members.push(Member {
                    halo_guid: site.halo_guid,
                    link: site.link,
                    eligible: true,
                });
            }
            let (vacated_by, promotion) = match record {
                Some(g) => {
                    if g.vacated_by.is_none() && g.promotion.is_none() && !members.is_empty() {
                        // The writer leaves such a group out; keeping it makes two
                        // encodings.
                        return Err(invalid("a group that needs no record has one"));
                    }
                    (g.vacated_by, g.promotion)
                }
                None => (None, None),
            };
            let state = GroupState::from_parts(holder, epoch, vacated_by, members)
                .map_err(TenancyError::Authority)?;
            if let Some(p) = promotion {
                reg.promotions.insert(
                    key,
                    Promotion {
                        halo_guid: p.halo_guid,
                        actor: p.actor,
                        reason: p.reason,
                        at: p.at,
                        epoch: p.epoch,
                    },
                );
            }
            let position = u32::try_from(made.len()).unwrap_or(u32::MAX);
            made.push(GroupEntry {
                key,
                group: Group { state },
            });
            // The live members' CRN claims, now that their group has a position.
            for &(_, i) in run {
                if let Some(site) = placed.get(i as usize) {
                    crate::apply::claim_crns(&mut reg.branches, &mut reg.demo_real, site, position);
                }
            }
        }
        reg.groups = Dense::from_distinct(made).ok_or_else(|| invalid("a group appears twice"))?;
        drop(live);

        reg.successors.reserve(successors.len());
        for (previous, next) in successors {
            if reg.sites.get(&previous).is_none() || reg.sites.get(&next).is_none() {
                return Err(invalid("a reinstall names an unknown site"));
            }
            if reg.successors.insert(previous, next).is_some() {
                return Err(invalid("a site was reinstalled twice"));
            }
        }
        Ok(reg)
    }
}
