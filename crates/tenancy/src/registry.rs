//! The registry: all Links, sites and authority groups, and the queries on them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use halo_authority::{Epoch, GroupKey, GroupState};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};

use crate::site::Profile;
use crate::{
    Availability, AvailabilityConfig, Catalogue, Change, Event, Link, LogEntry, Site, TenancyError,
};

/// Hash maps keyed by identifiers that arrive from the network: foldhash with a
/// per-map random seed.
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Shared copies of values most sites repeat (versions, catalogue lists), so that a
/// million sites hold a million pointers rather than a million copies. Only grows;
/// bounded by the number of distinct values.
#[derive(Debug, Clone, Default)]
pub(crate) struct Interner {
    pub(crate) texts: HashSet<Arc<str>, foldhash::fast::RandomState>,
    pub(crate) catalogues: HashSet<Arc<[Catalogue]>, foldhash::fast::RandomState>,
    /// (PMS version, catalogue list) pairs as sites hold them: one pointer per site
    /// instead of two. A cache over `texts` and `catalogues`, so not part of equality.
    pub(crate) profiles: HashSet<Arc<Profile>, foldhash::fast::RandomState>,
    /// Link versions as Links hold them (one thin pointer each). A cache over
    /// `texts`, so not part of equality.
    pub(crate) link_versions: HashMap<Arc<str>, Arc<Arc<str>>, foldhash::fast::RandomState>,
    /// The profile interned last: sites attached one after another mostly share it,
    /// so it is compared before anything is hashed. Not part of equality.
    pub(crate) last_profile: Option<Arc<Profile>>,
}

impl PartialEq for Interner {
    fn eq(&self, other: &Self) -> bool {
        self.texts == other.texts && self.catalogues == other.catalogues
    }
}

impl Eq for Interner {}

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

    /// A Link version, interned in `texts`, as one thin pointer.
    pub(crate) fn link_version(&mut self, version: &str) -> Arc<Arc<str>> {
        if let Some(shared) = self.link_versions.get(version) {
            return Arc::clone(shared);
        }
        let text = self.text(version);
        let shared = Arc::new(Arc::clone(&text));
        self.link_versions.insert(text, Arc::clone(&shared));
        shared
    }

    /// The shared profile of a PMS version and a catalogue list (both interned).
    pub(crate) fn profile(&mut self, pms_version: &str, catalogues: &[Catalogue]) -> Arc<Profile> {
        if let Some(last) = &self.last_profile {
            if *last.pms_version == *pms_version && *last.catalogues == *catalogues {
                return Arc::clone(last);
            }
        }
        let shared = self.profile_slow(pms_version, catalogues);
        self.last_profile = Some(Arc::clone(&shared));
        shared
    }

    fn profile_slow(&mut self, pms_version: &str, catalogues: &[Catalogue]) -> Arc<Profile> {
        let wanted = Profile {
            pms_version: self.text(pms_version),
            catalogues: self.catalogues(catalogues),
        };
        if let Some(shared) = self.profiles.get(&wanted) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(wanted);
        self.profiles.insert(Arc::clone(&shared));
        shared
    }
}

/// What a table of [`Dense`] holds: values that carry their own key.
pub(crate) trait Keyed {
    /// The key type.
    type Key: std::hash::Hash + Eq + Copy;
    /// Whether the insertion order is part of the state (compared by equality).
    const ORDERED: bool;
    /// This value's key.
    fn key(&self) -> Self::Key;
}

impl Keyed for Site {
    type Key = HaloGuid;
    const ORDERED: bool = true;
    fn key(&self) -> HaloGuid {
        self.halo_guid
    }
}

impl Keyed for Link {
    type Key = LinkGuid;
    const ORDERED: bool = false;
    fn key(&self) -> LinkGuid {
        self.guid
    }
}

/// Values stored densely in insertion order, with an index of positions (4 bytes a
/// slot) hashed by each value's own key. Sites, Links and groups are never deleted,
/// so their positions stay valid (the branch table alone removes, with
/// [`Dense::swap_remove`]). Against a hash map of whole values this saves the empty buckets' room
/// (about 150 bytes per site at 1M sites) and the key stored twice.
#[derive(Clone)]
pub(crate) struct Dense<T> {
    list: Vec<T>,
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl<T> Default for Dense<T> {
    fn default() -> Self {
        Self {
            list: Vec::new(),
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Dense<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.list.iter()).finish()
    }
}

/// Equal when they hold equal values: in the same order where the order is part of
/// the state ([`Keyed::ORDERED`]: sites, whose attach order snapshots keep), as sets
/// otherwise (links and groups, whose insertion order a snapshot does not keep).
impl<T: Keyed + PartialEq> PartialEq for Dense<T> {
    fn eq(&self, other: &Self) -> bool {
        if T::ORDERED {
            return self.list == other.list;
        }
        self.len() == other.len()
            && self
                .list
                .iter()
                .all(|v| other.get(&v.key()).is_some_and(|o| o == v))
    }
}

impl<T: Keyed + Eq> Eq for Dense<T> {}

impl<T: Keyed> Dense<T> {
    /// The position of the value with `key` (stable unless [`Dense::swap_remove`]
    /// moves it).
    pub(crate) fn position(&self, key: &T::Key) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        let list = &self.list;
        self.index
            .find(hash, |&i| {
                list.get(i as usize).is_some_and(|v| v.key() == *key)
            })
            .map(|&i| i as usize)
    }

    pub(crate) fn get(&self, key: &T::Key) -> Option<&T> {
        self.position(key).and_then(|i| self.list.get(i))
    }

    /// The value at a position [`Dense::position`] gave.
    pub(crate) fn at(&self, position: usize) -> Option<&T> {
        self.list.get(position)
    }

    /// The value at a position [`Dense::position`] gave, mutably; its key must not
    /// change.
    pub(crate) fn at_mut(&mut self, position: usize) -> Option<&mut T> {
        self.list.get_mut(position)
    }

    pub(crate) fn get_mut(&mut self, key: &T::Key) -> Option<&mut T> {
        self.position(key).and_then(|i| self.list.get_mut(i))
    }

    /// Adds a new value; the caller has checked that its key is new.
    pub(crate) fn insert(&mut self, value: T) {
        let _ = self.insert_new(value);
    }

    /// Adds a value unless its key is already present; says whether it did.
    pub(crate) fn insert_new(&mut self, value: T) -> bool {
        let len = self.list.len();
        // An existing value's position is below `len`; a new one goes at `len`.
        self.position_or_insert_with(value.key(), || value) == len
    }

    /// Removes the value at `at` (a position [`Dense::position`] gave); the last
    /// value moves into its place. Only for a table whose positions nobody keeps
    /// (branch claims): sites, Links and groups are never removed.
    pub(crate) fn swap_remove(&mut self, at: usize) {
        let Self {
            list,
            index,
            hasher,
        } = self;
        let Some(key) = list.get(at).map(Keyed::key) else {
            return;
        };
        if let Ok(slot) = index.find_entry(hasher.hash_one(key), |&i| i as usize == at) {
            slot.remove();
        }
        let last = list.len() - 1;
        if at != last {
            // The last value moves into the gap: its slot is pointed there.
            if let Some(moved) = list.get(last).map(Keyed::key) {
                if let Some(slot) = index.find_mut(hasher.hash_one(moved), |&i| i as usize == last)
                {
                    *slot = at as u32;
                }
            }
        }
        list.swap_remove(at);
    }

    /// Gives the index room for one more, as hashbrown would (the next power of two
    /// of slots), but rebuilt from the list in order: the keys are read front to
    /// back, where hashbrown's own rehash reads each one at its random position.
    fn grow(&mut self) {
        let Self {
            list,
            index,
            hasher,
        } = self;
        let rehash = |&j: &u32| list.get(j as usize).map_or(0, |v| hasher.hash_one(v.key()));
        let mut grown = hashbrown::HashTable::with_capacity(index.capacity() + 1);
        for (v, i) in list.iter().zip(0u32..) {
            grown.insert_unique(hasher.hash_one(v.key()), i, rehash);
        }
        *index = grown;
    }

    /// A table of `values` in this order, or `None` if two share a key. Built for
    /// a bulk load (a snapshot): the index is filled in the order of the slots the
    /// keys hash to, so that its memory is written front to back rather than at a
    /// million random places.
    pub(crate) fn from_distinct(values: Vec<T>) -> Option<Self> {
        let mut table = Self::default();
        let n = values.len();
        u32::try_from(n).ok()?;
        table.list = values;
        let Self {
            list,
            index,
            hasher,
        } = &mut table;
        index.reserve(n, |&i| {
            list.get(i as usize).map_or(0, |v| hasher.hash_one(v.key()))
        });
        // hashbrown starts probing at the hash's low bits, masked to the slot count
        // (a power of two: its capacity is 7/8 of it).
        let slots = (index.capacity() * 8 / 7 + 1).next_power_of_two() as u64;
        let mut order: Vec<(u64, u64, u32)> = list
            .iter()
            .zip(0u32..)
            .map(|(v, i)| {
                let hash = hasher.hash_one(v.key());
                (hash & (slots - 1), hash, i)
            })
            .collect();
        order.sort_unstable_by_key(|e| e.0);
        for (_, hash, i) in order {
            let key = list.get(i as usize)?.key();
            match index.entry(
                hash,
                |&j| list.get(j as usize).is_some_and(|v| v.key() == key),
                |&j| list.get(j as usize).map_or(0, |v| hasher.hash_one(v.key())),
            ) {
                hashbrown::hash_table::Entry::Occupied(_) => return None,
                hashbrown::hash_table::Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
        }
        Some(table)
    }

    /// The position of the value with `key`, inserting `make()` first if there is
    /// none: one walk of the index either way. `make()` must return a value with
    /// this key.
    pub(crate) fn position_or_insert_with(
        &mut self,
        key: T::Key,
        make: impl FnOnce() -> T,
    ) -> usize {
        if self.index.len() >= self.index.capacity() {
            self.grow();
        }
        let Self {
            list,
            index,
            hasher,
        } = self;
        let position = u32::try_from(list.len()).expect("fewer than 2^32 entries");
        match index.entry(
            hasher.hash_one(key),
            |&i| list.get(i as usize).is_some_and(|v| v.key() == key),
            |&i| list.get(i as usize).map_or(0, |v| hasher.hash_one(v.key())),
        ) {
            hashbrown::hash_table::Entry::Occupied(slot) => *slot.get() as usize,
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(position);
                list.push(make());
                position as usize
            }
        }
    }

    pub(crate) fn reserve(&mut self, additional: usize) {
        let Self {
            list,
            index,
            hasher,
        } = self;
        index.reserve(additional, |&i| {
            list.get(i as usize).map_or(0, |v| hasher.hash_one(v.key()))
        });
        list.reserve_exact(additional);
    }

    /// The values in insertion order, as a slice (position `i` is the `i`-th inserted).
    pub(crate) fn as_slice(&self) -> &[T] {
        &self.list
    }

    pub(crate) fn values(&self) -> std::slice::Iter<'_, T> {
        self.list.iter()
    }

    /// Values, mutably; a value's key must not change.
    #[cfg(test)]
    pub(crate) fn values_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.list.iter_mut()
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}

/// An authority group with its key, as the group table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub(crate) key: GroupKey,
    pub(crate) group: Group,
}

impl Keyed for GroupEntry {
    type Key = GroupKey;
    const ORDERED: bool = false;
    fn key(&self) -> GroupKey {
        self.key
    }
}

/// Groups in creation order, indexed by key (groups are never deleted: an empty one
/// keeps its epoch).
pub(crate) type GroupTable = Dense<GroupEntry>;

/// Sites in attach order, indexed by Halo GUID.
pub(crate) type SiteTable = Dense<Site>;

/// Links in registration order, indexed by Link GUID.
pub(crate) type LinkTable = Dense<Link>;

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

/// An authority group as the registry keeps it. Its last promotion, which few groups
/// have, is kept beside the group table ([`Registry::last_promotion`]), so that a
/// million groups do not each carry room for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub(crate) state: GroupState,
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
}

/// Which parent a branch CRN belongs to, and how many live sites claim it.
///
/// The parent is the position of its group in the group table (groups are never
/// deleted, so positions stay valid; the branch has the same environment and PMS
/// type): 4 bytes rather than a 21-byte CRN, 32 bytes an entry with its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BranchClaim {
    pub(crate) parent: u32,
    pub(crate) claims: u32,
}

/// A branch key with its claim, as the branch table holds it.
impl Keyed for (GroupKey, BranchClaim) {
    type Key = GroupKey;
    const ORDERED: bool = false;
    fn key(&self) -> GroupKey {
        self.0
    }
}

/// Branch claims stored densely (32 bytes each, in claim order but for removals)
/// in a [`Dense`] table: a hash map of whole entries would leave its empty buckets'
/// 32 bytes each unused. A removed claim's place is taken by the last one
/// ([`Dense::swap_remove`]), so positions are not stable and nothing outside keeps
/// them.
#[derive(Clone, Default)]
pub(crate) struct BranchTable(Dense<(GroupKey, BranchClaim)>);

impl fmt::Debug for BranchTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl BranchTable {
    /// The claim on this branch key.
    pub(crate) fn get(&self, key: &GroupKey) -> Option<&BranchClaim> {
        self.0.get(key).map(|e| &e.1)
    }

    /// Whether some live site claims this branch key.
    pub(crate) fn contains_key(&self, key: &GroupKey) -> bool {
        self.0.position(key).is_some()
    }

    /// Counts one more claim on `key`, made for the parent at `parent` if new.
    pub(crate) fn claim(&mut self, key: GroupKey, parent: u32) {
        let at = self
            .0
            .position_or_insert_with(key, || (key, BranchClaim { parent, claims: 0 }));
        if let Some(entry) = self.0.at_mut(at) {
            entry.1.claims += 1;
        }
    }

    /// Counts one claim on `key` fewer, removing the entry at zero.
    pub(crate) fn release(&mut self, key: &GroupKey) {
        let Some(at) = self.0.position(key) else {
            return;
        };
        let Some(entry) = self.0.at_mut(at) else {
            return;
        };
        entry.1.claims = entry.1.claims.saturating_sub(1);
        if entry.1.claims == 0 {
            self.0.swap_remove(at);
        }
    }

    /// How many branch keys are claimed.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Every claim, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&GroupKey, &BranchClaim)> {
        self.0.values().map(|(k, c)| (k, c))
    }
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
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub(crate) links: LinkTable,
    /// Sites in attach order; never removed (retired sites stay readable).
    pub(crate) sites: SiteTable,
    pub(crate) groups: GroupTable,
    /// Branch CRNs of live non-demo sites, keyed by (environment, PMS type, branch CRN).
    pub(crate) branches: BranchTable,
    /// Live demo sites by their real CRN, keyed like groups (never empty sets).
    pub(crate) demo_real: Map<GroupKey, BTreeSet<HaloGuid>>,
    /// Previous install → its reinstall.
    pub(crate) successors: Map<HaloGuid, HaloGuid>,
    /// The latest promotion of each group that had one (groups are never deleted).
    pub(crate) promotions: Map<GroupKey, Promotion>,
    /// Shared versions and catalogue lists.
    pub(crate) interned: Interner,
}

/// Equal when they hold the same state. Branch claims name their parent by its
/// group's position, which depends on the order groups were made (a restored
/// registry makes them in key order): they are compared by the parent they name.
impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        self.links == other.links
            && self.sites == other.sites
            && self.groups == other.groups
            && self.demo_real == other.demo_real
            && self.successors == other.successors
            && self.promotions == other.promotions
            && self.interned == other.interned
            && self.branches.len() == other.branches.len()
            && self.branches.iter().all(|(key, claim)| {
                other.branches.get(key).is_some_and(|theirs| {
                    claim.claims == theirs.claims
                        && self.branch_parent(claim) == other.branch_parent(theirs)
                })
            })
    }
}

impl Eq for Registry {}

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
        crate::apply::apply(self, event, now).map(smallvec::SmallVec::into_vec)
    }

    /// [`Registry::apply`], appending the changes to `changes` instead of returning
    /// a new vector: a writer or a replay that reuses one buffer allocates nothing
    /// per event for them. A refused event appends nothing.
    ///
    /// # Errors
    /// [`TenancyError`] when the event breaks a rule; the registry is then unchanged.
    pub fn apply_into(
        &mut self,
        event: &Event,
        now: Timestamp,
        changes: &mut Vec<Change>,
    ) -> Result<(), TenancyError> {
        changes.extend(crate::apply::apply(self, event, now)?);
        Ok(())
    }

    /// Makes room for `sites` more sites and `links` more Links, so that a build of
    /// known size (a replay, a bulk import) does not grow and rehash its tables on
    /// the way. Groups grow as needed (most sites make one; backups share theirs).
    pub fn reserve(&mut self, sites: usize, links: usize) {
        self.sites.reserve(sites);
        self.links.reserve(links);
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
        let entries: Vec<&LogEntry> = entries.into_iter().collect();
        let mut registry = Self::new();
        // Sized once: an upper bound of the sites and Links the log can make.
        let (mut sites, mut links) = (0, 0);
        for entry in &entries {
            match entry.event {
                Event::SiteAttached { .. } | Event::Reinstalled { .. } => sites += 1,
                Event::LinkRegistered { .. } => links += 1,
                _ => {}
            }
        }
        registry.reserve(sites, links);
        for (index, entry) in entries.into_iter().enumerate() {
            registry
                .replay_entry(entry)
                .map_err(|source| TenancyError::Replay {
                    index,
                    source: Box::new(source),
                })?;
        }
        Ok(registry)
    }

    /// Applies one entry of a log being replayed: refuses a format version this
    /// build does not know, as [`Registry::replay`] does, and keeps none of the
    /// changes (a replay's result is published whole, not change by change).
    ///
    /// # Errors
    /// [`TenancyError::UnsupportedVersion`], or the event's own refusal; the
    /// registry is then unchanged.
    pub fn replay_entry(&mut self, entry: &LogEntry) -> Result<(), TenancyError> {
        entry.check_version()?;
        crate::apply::apply(self, &entry.event, entry.at).map(drop)
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
        self.groups.get(key).map(|e| &e.group)
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
        self.groups.values().map(|e| (&e.key, &e.group))
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
            .flat_map(|g| g.group.state.members())
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
        if let Some(group) = self.groups.get(&key).map(|e| &e.group) {
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
                .and_then(|claim| self.branch_parent(claim))
                .is_some_and(|parent| entitled(PmsId::new(pms_type, parent))),
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

    /// The parent CRN a branch claim names.
    pub(crate) fn branch_parent(&self, claim: &BranchClaim) -> Option<Crn> {
        self.groups
            .as_slice()
            .get(claim.parent as usize)
            .map(|e| e.key.pms_id.site_id())
    }

    /// The latest promotion in the group with this key, if it had one.
    pub fn last_promotion(&self, key: &GroupKey) -> Option<&Promotion> {
        self.promotions.get(key)
    }

    /// The Halo GUID that replaced `previous` on reinstall, if any.
    pub fn successor(&self, previous: HaloGuid) -> Option<HaloGuid> {
        self.successors.get(&previous).copied()
    }
}
