//! The registry: all Links, sites and authority groups, and the queries on them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use halo_authority::{Epoch, GroupKey, GroupState};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};

use crate::{
    Availability, AvailabilityConfig, Catalogue, Change, Event, Link, LogEntry, Site, TenancyError,
};

/// Hash maps keyed by identifiers that arrive from the network: foldhash with a
/// per-map random seed.
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Shared copies of values most sites repeat (versions, catalogue lists), so that a
/// million sites hold a million pointers rather than a million copies. Only grows;
/// bounded by the number of distinct values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Interner {
    pub(crate) texts: HashSet<Arc<str>, foldhash::fast::RandomState>,
    pub(crate) catalogues: HashSet<Arc<[Catalogue]>, foldhash::fast::RandomState>,
}

impl Interner {
    pub(crate) fn text(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.texts.get(text) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = text.into();
        self.texts.insert(Arc::clone(&shared));
        shared
    }

    pub(crate) fn catalogues(&mut self, list: &[Catalogue]) -> Arc<[Catalogue]> {
        if let Some(shared) = self.catalogues.get(list) {
            return Arc::clone(shared);
        }
        let shared: Arc<[Catalogue]> = list.into();
        self.catalogues.insert(Arc::clone(&shared));
        shared
    }
}

/// Sites stored densely in attach order, with an index by Halo GUID. Sites are
/// never deleted, so indexes stay valid; this saves the empty buckets a hash map of
/// whole sites would carry (about 150 bytes per site at 1M sites).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SiteTable {
    list: Vec<Site>,
    index: Map<HaloGuid, u32>,
}

impl SiteTable {
    pub(crate) fn get(&self, halo_guid: &HaloGuid) -> Option<&Site> {
        self.index
            .get(halo_guid)
            .and_then(|i| self.list.get(*i as usize))
    }

    pub(crate) fn get_mut(&mut self, halo_guid: &HaloGuid) -> Option<&mut Site> {
        self.index
            .get(halo_guid)
            .and_then(|i| self.list.get_mut(*i as usize))
    }

    /// Adds a new site; the caller has checked that its Halo GUID is new.
    pub(crate) fn insert(&mut self, site: Site) {
        let index = u32::try_from(self.list.len()).expect("fewer than 2^32 sites");
        self.index.insert(site.halo_guid, index);
        self.list.push(site);
    }

    /// Adds a site unless its Halo GUID is already present; says whether it did.
    pub(crate) fn insert_new(&mut self, site: Site) -> bool {
        let index = u32::try_from(self.list.len()).expect("fewer than 2^32 sites");
        match self.index.entry(site.halo_guid) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(index);
                self.list.push(site);
                true
            }
        }
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        self.list.reserve(additional);
        self.index.reserve(additional);
    }

    pub(crate) fn values(&self) -> std::slice::Iter<'_, Site> {
        self.list.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}

/// A promotion by a support operator, as recorded on its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The promoted site.
    pub halo_guid: HaloGuid,
    /// The operator.
    pub actor: Box<str>,
    /// Why.
    pub reason: Box<str>,
    /// When it was applied.
    pub at: Timestamp,
    /// The epoch it started.
    pub epoch: Epoch,
}

/// An authority group as the registry keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub(crate) state: GroupState,
    pub(crate) last_promotion: Option<Box<Promotion>>,
}

impl Group {
    /// The election state: holder, epoch and live members.
    pub fn state(&self) -> &GroupState {
        &self.state
    }

    /// The authoritative site, if any.
    pub fn holder(&self) -> Option<HaloGuid> {
        self.state.holder()
    }

    /// The group's epoch.
    pub fn epoch(&self) -> Epoch {
        self.state.epoch()
    }

    /// The latest promotion in this group, if any.
    pub fn last_promotion(&self) -> Option<&Promotion> {
        self.last_promotion.as_deref()
    }
}

/// Which parent a branch CRN belongs to, and how many live sites claim it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BranchClaim {
    pub(crate) parent: Crn,
    pub(crate) claims: u32,
}

/// The outcome of looking up a CRN (the "Get Halo GUID" question).
///
/// Precedence, so that a copy never shadows a practice: a CRN that is some live
/// site's routing CRN (a real practice's parent CRN, or a demo copy's fake CRN) is
/// [`Site`](CrnLookup::Site) or [`Vacant`](CrnLookup::Vacant), whatever demo copies
/// claim it as their real CRN; otherwise a branch CRN of a live real site is
/// [`Branch`](CrnLookup::Branch); otherwise a live demo copy's real CRN is
/// [`DemoRealCrn`](CrnLookup::DemoRealCrn); otherwise [`Unknown`](CrnLookup::Unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrnLookup {
    /// A parent (or fake) CRN whose group has an authoritative site: this one.
    Site(HaloGuid),
    /// A parent CRN whose group has live sites but none authoritative (waiting for a
    /// promotion). Nothing may be routed.
    Vacant,
    /// A branch (local) CRN. The parent CRN is needed; it is deliberately not given.
    Branch,
    /// The real, non-unique CRN of a demo or de-identified copy, held by no live real
    /// site; use the copy's fake CRN.
    DemoRealCrn,
    /// No live database has this CRN.
    Unknown,
}

/// The tenancy model: Links, sites (databases), authority groups and CRN indexes.
///
/// Changed only by [`Registry::apply`]. Replaying the same events with the same
/// times from [`Registry::default`] gives an equal registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub(crate) links: Map<LinkGuid, Link>,
    /// Sites in attach order; never removed (retired sites stay readable).
    pub(crate) sites: SiteTable,
    pub(crate) groups: Map<GroupKey, Group>,
    /// Branch CRNs of live non-demo sites, keyed by (environment, PMS type, branch CRN).
    pub(crate) branches: Map<GroupKey, BranchClaim>,
    /// Live demo sites by their real CRN, keyed like groups (never empty sets).
    pub(crate) demo_real: Map<GroupKey, BTreeSet<HaloGuid>>,
    /// Previous install → its reinstall.
    pub(crate) successors: Map<HaloGuid, HaloGuid>,
    /// Shared versions and catalogue lists.
    pub(crate) interned: Interner,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event at time `now` and says what changed.
    ///
    /// # Errors
    /// [`TenancyError`] when the event breaks a rule; the registry is then unchanged.
    pub fn apply(&mut self, event: &Event, now: Timestamp) -> Result<Vec<Change>, TenancyError> {
        crate::apply::apply(self, event, now)
    }

    /// Whether applying `event` now would be accepted and change nothing but when
    /// the Link and its sites were last heard: a Link's repeated hello (same
    /// environment and version) and a live database announced again with the same
    /// identity and details. Such an event need not be applied nor logged: every
    /// Link says hello on each reconnection, and after a restart of the Cloud all of
    /// them do at once. Liveness comes from the Link's session, not from the log.
    pub fn changes_nothing(&self, event: &Event) -> bool {
        crate::apply::changes_nothing(self, event)
    }

    /// Builds a registry by applying a log from empty.
    ///
    /// # Errors
    /// [`TenancyError::Replay`] naming the first entry that failed, or that had an
    /// unsupported format version.
    pub fn replay<'a>(
        entries: impl IntoIterator<Item = &'a LogEntry>,
    ) -> Result<Self, TenancyError> {
        let mut registry = Self::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let result = if entry.version == 0 || entry.version > crate::EVENT_VERSION {
                Err(TenancyError::UnsupportedVersion(entry.version))
            } else {
                registry.apply(&entry.event, entry.at).map(drop)
            };
            result.map_err(|source| TenancyError::Replay {
                index,
                source: Box::new(source),
            })?;
        }
        Ok(registry)
    }

    /// The site with this Halo GUID (in any status).
    pub fn site(&self, halo_guid: HaloGuid) -> Option<&Site> {
        self.sites.get(&halo_guid)
    }

    /// The Link with this GUID.
    pub fn link(&self, link: LinkGuid) -> Option<&Link> {
        self.links.get(&link)
    }

    /// The authority group with this key.
    pub fn group(&self, key: &GroupKey) -> Option<&Group> {
        self.groups.get(key)
    }

    /// Every site, in attach order.
    pub fn sites(&self) -> impl Iterator<Item = &Site> {
        self.sites.values()
    }

    /// Every Link, in no particular order.
    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.links.values()
    }

    /// Every authority group, in no particular order.
    pub fn groups(&self) -> impl Iterator<Item = (&GroupKey, &Group)> {
        self.groups.iter()
    }

    /// Number of sites (in any status).
    pub fn site_count(&self) -> usize {
        self.sites.len()
    }

    /// The live sites sharing a PMS ID (the data behind "find sites"), in the order
    /// they joined; the authoritative one has [`Site::is_authoritative`] set.
    /// For a demo copy, `pms_id` holds its fake CRN.
    pub fn sites_by_pms_id(
        &self,
        environment: Environment,
        pms_id: PmsId,
    ) -> impl Iterator<Item = &Site> {
        self.groups
            .get(&GroupKey::new(environment, pms_id))
            .into_iter()
            .flat_map(|g| g.state.members())
            .filter_map(|m| self.sites.get(&m.halo_guid))
    }

    /// Trades a CRN for a Halo GUID. A branch CRN, a demo copy's real CRN and an
    /// unknown CRN are distinct outcomes; a branch never reveals its parent.
    ///
    /// A demo copy never shadows a practice: a CRN held by a live site (as its
    /// routing CRN) resolves to that site's group even when demo copies carry it as
    /// their real CRN; [`CrnLookup::DemoRealCrn`] is the answer only where no live
    /// site holds the CRN and it is no branch CRN. A demo copy's real CRN still never
    /// routes to the copy: copies route by their fake CRN only.
    ///
    /// This tells the caller what kind of CRN it named. Before passing that on to an
    /// integrator, use [`Registry::lookup_crn_for`], which hides what the integrator
    /// may not know.
    pub fn lookup_crn(&self, environment: Environment, pms_type: PmsType, crn: Crn) -> CrnLookup {
        let key = GroupKey::new(environment, PmsId::new(pms_type, crn));
        if let Some(group) = self.groups.get(&key) {
            // Checked first: a copy's real CRN must never hide the database that
            // holds it. Groups are keyed by routing CRN, so a demo copy is never a
            // member under its real CRN.
            if !group.state.is_empty() {
                return match group.holder() {
                    Some(holder) => CrnLookup::Site(holder),
                    None => CrnLookup::Vacant,
                };
            }
        }
        if self.branches.contains_key(&key) {
            return CrnLookup::Branch;
        }
        if self.demo_real.contains_key(&key) {
            return CrnLookup::DemoRealCrn;
        }
        CrnLookup::Unknown
    }

    /// [`Registry::lookup_crn`] as told to one integrator: a branch CRN or a demo
    /// copy's real CRN is named as such only when `entitled` holds for a practice
    /// that may know it; otherwise the answer is [`CrnLookup::Unknown`], exactly as
    /// for a CRN no database has, so that the answer is no oracle for another
    /// practice's branches or copies.
    ///
    /// `entitled` is asked about (and only about):
    /// - for a branch CRN, the PMS ID of the parent practice that claims it;
    /// - for a demo copy's real CRN, the PMS ID of that real CRN itself (the
    ///   practice the copies were made from), then the fake-CRN PMS ID of each live
    ///   demo copy carrying it (whoever is enabled for a copy may be told to use the
    ///   fake CRN), in Halo GUID order, stopping at the first that holds.
    ///
    /// The parent and the fake CRNs are never returned. [`CrnLookup::Site`],
    /// [`CrnLookup::Vacant`] and [`CrnLookup::Unknown`] are returned as they are:
    /// whether the caller may use the practice is the policy's question, answered
    /// the same way whether or not the practice has sites.
    pub fn lookup_crn_for(
        &self,
        environment: Environment,
        pms_type: PmsType,
        crn: Crn,
        mut entitled: impl FnMut(PmsId) -> bool,
    ) -> CrnLookup {
        let key = GroupKey::new(environment, PmsId::new(pms_type, crn));
        let lookup = self.lookup_crn(environment, pms_type, crn);
        let told = match lookup {
            CrnLookup::Site(_) | CrnLookup::Vacant | CrnLookup::Unknown => return lookup,
            CrnLookup::Branch => self
                .branches
                .get(&key)
                .is_some_and(|claim| entitled(PmsId::new(pms_type, claim.parent))),
            CrnLookup::DemoRealCrn => {
                entitled(PmsId::new(pms_type, crn))
                    || self.demo_real.get(&key).is_some_and(|copies| {
                        copies
                            .iter()
                            .any(|halo_guid| entitled(PmsId::new(pms_type, halo_guid.fake_crn())))
                    })
            }
        };
        if told { lookup } else { CrnLookup::Unknown }
    }

    /// The availability of a site at `now`, from its last-heard time.
    pub fn availability(
        &self,
        halo_guid: HaloGuid,
        now: Timestamp,
        cfg: &AvailabilityConfig,
    ) -> Option<Availability> {
        self.sites
            .get(&halo_guid)
            .map(|s| Availability::derive(s.last_heard, now, cfg))
    }

    /// The Halo GUID that replaced `previous` on reinstall, if any.
    pub fn successor(&self, previous: HaloGuid) -> Option<HaloGuid> {
        self.successors.get(&previous).copied()
    }
}
