//! The router: the lock-free route table, the policy cell, and the write side that
//! feeds both from the registry.
//!
//! # Read path
//!
//! `route`, `decide` and `check` take no lock: the table is a left-right pair of plain
//! `HashMap`s (the `left-right` crate): a reader bumps an epoch counter of its own
//! (found through a thread-local handle), reads the copy the pointer names, and bumps
//! the counter again; it writes nothing another thread reads on its path, so two
//! readers never contend, and it never waits. The policy is an `ArcSwap` (lock-free load), the Link's
//! session an `ArcSwapOption`, liveness a relaxed atomic. Past the read path, the
//! dispatch takes no lock either: the per-Link queue is a `std::sync::mpsc` channel
//! (lock-free linked blocks, allocated on the first job, so an idle Link holds none)
//! bounded by an atomic count, the in-flight counter an atomic, the in-flight map a
//! `papaya::HashMap`.
//!
//! # Why left-right
//!
//! Chosen by measurement (`route_bench --sites 1000000 --threads 2`, writer on, every
//! table in the same run; figures in `crates/router/README.md`): its reads are a plain
//! `HashMap` lookup plus two increments of a counter no other reader touches, so they
//! run near the unsynchronised ceiling, where `scc::HashIndex` (the previous table),
//! papaya and DashMap pay for shared state on every read. The price is on the write
//! side and in memory: each change is applied to both copies, each publication waits
//! for readers still in the old copy to leave (they hold it for one lookup), and the
//! table is held twice.
//!
//! # Write path
//!
//! One writer at a time (the `writer` mutex, write side only, holding the table's
//! write handle) publishes whole records, each change followed by a swap of the copies
//! (`publish`), so a change is visible to every reader that starts after it returns.
//! **Invariant:** at every instant the table holds at most one authoritative record per
//! authority group, and a group's epoch in the table never decreases. The writer
//! enforces it itself, whatever order changes come in: before publishing a new
//! holder it publishes the old holder's record demoted (so in between, nobody in the
//! group routes: a short 403, never two holders), and it ignores a record whose epoch
//! is older than one already published for that group.

use std::collections::HashMap as StdHashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;
use halo_authority::{Epoch, GroupKey};
use halo_ids::{HaloGuid, LinkGuid, Timestamp};
use halo_policy::{
    Allowed, Components, Decision, KeyHash, Policy, Request, evaluate, evaluate_stored,
};
use halo_tenancy::{Change, Registry, SiteStatus};

use crate::busy::Busy;
use crate::dispatch::{Dispatch, QueryId};
use crate::error::RouteError;
use crate::groups::Groups;
use crate::job::{Command, Job, Paging};
use crate::link::{Handoff, LinkEntry, LinkSession, Liveness, SessionCore};
use crate::route::{Route, SiteRoute};
use crate::sync::{AtomicU64, Mutex, Ordering, lock};

/// What each copy of the route table holds.
pub(crate) type RouteMap = StdHashMap<HaloGuid, Route, RandomState>;

/// A change to the route table: applied to the copy readers are not using, then,
/// after the swap, replayed on the other.
#[derive(Debug)]
pub(crate) enum RouteOp {
    /// Insert or replace a site's record.
    Upsert(HaloGuid, Route),
    /// Remove a site.
    Remove(HaloGuid),
    /// Replace the whole copy (a bulk load, [`Router::load`]): built once by the
    /// writer, cloned into the first copy, moved into the second.
    Replace(Box<RouteMap>),
}

impl left_right::Absorb<RouteOp> for RouteMap {
    fn absorb_first(&mut self, op: &mut RouteOp, _: &Self) {
        match op {
            RouteOp::Upsert(halo, route) => {
                self.insert(*halo, route.clone());
            }
            RouteOp::Remove(halo) => {
                self.remove(halo);
            }
            RouteOp::Replace(map) => {
                self.clone_from(map);
            }
        }
    }

    fn absorb_second(&mut self, op: RouteOp, _: &Self) {
        match op {
            RouteOp::Upsert(halo, route) => {
                self.insert(halo, route);
            }
            RouteOp::Remove(halo) => {
                self.remove(&halo);
            }
            RouteOp::Replace(map) => {
                *self = *map;
            }
        }
    }

    fn sync_with(&mut self, first: &Self) {
        self.clone_from(first);
    }
}

/// The read side of the route table: one left-right read handle per thread.
struct RouteTable {
    factory: left_right::ReadHandleFactory<RouteMap>,
    readers: thread_local::ThreadLocal<left_right::ReadHandle<RouteMap>>,
}

impl RouteTable {
    /// Calls `f` with the copy readers see now (`None` only once the router is gone).
    #[inline]
    fn read<R>(&self, f: impl FnOnce(Option<&RouteMap>) -> R) -> R {
        let handle = self.readers.get_or(|| self.factory.handle());
        match handle.enter() {
            Some(map) => f(Some(&map)),
            None => f(None),
        }
    }

    /// Calls `f` with the record of `halo_guid`, if published.
    #[inline]
    fn with<R>(&self, halo_guid: &HaloGuid, f: impl FnOnce(Option<&Route>) -> R) -> R {
        self.read(|map| f(map.and_then(|m| m.get(halo_guid))))
    }
}

/// The limits the router enforces. The API's published values are
/// [`RouterConfig::standard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Queries queued or running per Link before routing answers "site busy".
    pub link_capacity: usize,
    /// The largest immediate result returned (413 beyond).
    pub max_result_bytes: usize,
    /// How long a query may execute once started (504 beyond).
    pub execution_limit: Duration,
    /// `maxTimeInQueue` when the request gives none.
    pub default_time_in_queue: Duration,
    /// The largest `maxTimeInQueue` a request may ask for.
    pub max_time_in_queue: Duration,
}

impl RouterConfig {
    /// The published API limits: 8 MiB results, 30 s execution, `maxTimeInQueue`
    /// 30 000 ms by default and at most 60 000 ms, and 256 queries in flight per Link.
    pub fn standard() -> Self {
        Self {
            link_capacity: 256,
            max_result_bytes: 8 * 1024 * 1024,
            execution_limit: Duration::from_secs(30),
            default_time_in_queue: Duration::from_millis(30_000),
            max_time_in_queue: Duration::from_millis(60_000),
        }
    }
}

/// The limits one route is taken under ([`Router::route_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLimits {
    /// The largest `maxTimeInQueue` accepted.
    pub max_time_in_queue: Duration,
    /// How long the query may execute once its queue time is over.
    pub execution_limit: Duration,
    /// `Some` for a result sent back in pages.
    pub paging: Option<Paging>,
}

/// An integrator's immediate query, as the router needs it. The adapter parses the
/// command's components once ([`halo_policy::extract_components`]; a command that does
/// not parse is denied before routing) and shares them with the job as its allowlist.
#[derive(Debug, Clone)]
pub struct RouteRequest<'a> {
    /// The `Ocp-Apim-Subscription-Key` header as sent (empty if absent).
    pub key: &'a str,
    /// The caller's address, if known.
    pub caller_ip: Option<IpAddr>,
    /// The site asked for.
    pub halo_guid: HaloGuid,
    /// The instant the request arrived (the core reads no clock).
    pub now: Timestamp,
    /// `maxTimeInQueue`; `None` for the default.
    pub max_time_in_queue: Option<Duration>,
    /// The catalogue named by the request, if any.
    pub catalogue: Option<&'a str>,
    /// The components the command touches.
    pub components: Arc<Components>,
    /// The command (moved into the job).
    pub command: Command,
}

impl RouteRequest<'_> {
    fn policy_request(&self) -> Request<'_> {
        Request {
            key: self.key,
            halo_guid: self.halo_guid,
            mode: self.command.mode,
            catalogue: self.catalogue,
            components: &self.components,
            caller_ip: self.caller_ip,
            now: self.now,
        }
    }
}

/// What the read path decided for a request: the record it resolved and what the
/// policy allowed. Returned by [`Router::check`] (and used by [`Router::route`]).
#[derive(Debug, Clone)]
pub struct Authorised {
    route: Route,
    allowed: Allowed,
}

impl Authorised {
    /// The resolved record.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// What the policy allowed.
    pub fn allowed(&self) -> &Allowed {
        &self.allowed
    }
}

/// Write-side bookkeeping, behind the writer mutex (never touched by readers).
struct WriterState {
    /// The table's write handle.
    table: left_right::WriteHandle<RouteMap, RouteOp>,
    /// Holders and epochs as published.
    authority: Authority,
}

/// What the writer remembers of each group, to keep the table's invariants: one
/// entry per group ever published (see `groups.rs`).
#[derive(Default)]
struct Authority {
    groups: Groups,
}

impl Authority {
    /// Forgets `halo_guid` as the holder of `group`, if it is.
    fn release(&mut self, group: &GroupKey, halo_guid: HaloGuid) {
        if let Some(slot) = self.groups.get_mut(group) {
            if slot.holder == Some(halo_guid) {
                slot.holder = None;
            }
        }
    }
}

/// Where [`publish_into`] reads and writes records: the live table, each change
/// published at once ([`Live`]), or a copy being built for one bulk publication
/// ([`RouteMap`], [`Router::load`]).
trait Records {
    /// The group of `halo_guid`'s current record, if it has one.
    fn group_of(&self, halo_guid: &HaloGuid) -> Option<GroupKey>;
    /// `halo_guid`'s current record demoted, if it has one.
    fn demoted(&self, halo_guid: &HaloGuid) -> Option<Route>;
    /// Makes `route` the record of `halo_guid`.
    fn upsert(&mut self, halo_guid: HaloGuid, route: Route);
    /// Removes `halo_guid`'s record.
    fn remove(&mut self, halo_guid: HaloGuid);
}

/// The live table: every change applied to both copies and made visible at once
/// (readers see the old record or the new one, never neither).
struct Live<'a>(&'a mut left_right::WriteHandle<RouteMap, RouteOp>);

impl Live<'_> {
    /// What `f` makes of `halo_guid`'s published record (the guard is dropped before
    /// returning: a publication waits for every reader, this one included).
    fn peek<R>(&self, halo_guid: &HaloGuid, f: impl FnOnce(&Route) -> R) -> Option<R> {
        self.0.enter().and_then(|map| map.get(halo_guid).map(f))
    }

    fn change(&mut self, op: RouteOp) {
        self.0.append(op);
        self.0.publish();
    }
}

impl Records for Live<'_> {
    fn group_of(&self, halo_guid: &HaloGuid) -> Option<GroupKey> {
        self.peek(halo_guid, |r| r.site().group())
    }

    fn demoted(&self, halo_guid: &HaloGuid) -> Option<Route> {
        self.peek(halo_guid, |r| r.with_authority(false))
    }

    fn upsert(&mut self, halo_guid: HaloGuid, route: Route) {
        self.change(RouteOp::Upsert(halo_guid, route));
    }

    fn remove(&mut self, halo_guid: HaloGuid) {
        self.change(RouteOp::Remove(halo_guid));
    }
}

impl Records for RouteMap {
    fn group_of(&self, halo_guid: &HaloGuid) -> Option<GroupKey> {
        self.get(halo_guid).map(|r| r.site().group())
    }

    fn demoted(&self, halo_guid: &HaloGuid) -> Option<Route> {
        self.get(halo_guid).map(|r| r.with_authority(false))
    }

    fn upsert(&mut self, halo_guid: HaloGuid, route: Route) {
        self.insert(halo_guid, route);
    }

    fn remove(&mut self, halo_guid: HaloGuid) {
        StdHashMap::remove(self, &halo_guid);
    }
}

/// Publishes one live site's record into `records`, keeping the table's invariants
/// (module docs): demotes a previous holder first, drops stale epochs.
fn publish_into(
    authority: &mut Authority,
    records: &mut impl Records,
    site: SiteRoute,
    entry: impl FnOnce(LinkGuid) -> Arc<LinkEntry>,
) -> Published {
    let group = site.group();
    let halo_guid = site.halo_guid;
    // A group never seen has epoch zero, which no record is older than: the slot is
    // only ever added for a record that is published.
    let slot = authority.groups.entry(group).or_default();
    // Only an authoritative record can do harm when stale; a demotion always applies.
    if site.authoritative && site.epoch < slot.newest {
        return Published::Stale;
    }
    slot.newest = slot.newest.max(site.epoch);
    let previous = slot.holder;
    if site.authoritative {
        slot.holder = Some(halo_guid);
    } else if previous == Some(halo_guid) {
        slot.holder = None;
    }
    // The site may have moved group (its PMS ID changed): drop its old holdership.
    if let Some(old_group) = records.group_of(&halo_guid) {
        if old_group != group {
            authority.release(&old_group, halo_guid);
        }
    }
    if site.authoritative {
        if let Some(previous) = previous.filter(|p| *p != halo_guid) {
            if let Some(demoted) = records.demoted(&previous) {
                records.upsert(previous, demoted);
            }
        }
    }
    let entry = entry(site.link);
    records.upsert(halo_guid, Route::new(site, entry));
    Published::Applied
}

/// Removes a site's record from `records`, and its holdership with it.
fn unpublish_from(authority: &mut Authority, records: &mut impl Records, halo_guid: HaloGuid) {
    if let Some(group) = records.group_of(&halo_guid) {
        records.remove(halo_guid);
        authority.release(&group, halo_guid);
    }
}

/// A copy being built from empty by [`Router::load_sites`], each site of the
/// registry visited once: no site has a record before its own visit, so the look-up
/// of its previous record (a miss in a table of a million) is skipped. Records of
/// other sites (a holder to demote) are looked up as usual.
struct Fresh<'a>(&'a mut RouteMap);

impl Records for Fresh<'_> {
    fn group_of(&self, _: &HaloGuid) -> Option<GroupKey> {
        None
    }

    fn demoted(&self, halo_guid: &HaloGuid) -> Option<Route> {
        self.0.demoted(halo_guid)
    }

    fn upsert(&mut self, halo_guid: HaloGuid, route: Route) {
        self.0.insert(halo_guid, route);
    }

    fn remove(&mut self, halo_guid: HaloGuid) {
        StdHashMap::remove(self.0, &halo_guid);
    }
}

/// Replaces the whole table with `staged` in one swap.
fn publish_replacement(table: &mut left_right::WriteHandle<RouteMap, RouteOp>, staged: RouteMap) {
    table.append(RouteOp::Replace(Box::new(staged)));
    table.publish();
    // Once more, so that the other copy is brought up to date now rather than on
    // the first change after start.
    table.publish();
}

/// A load into an empty table whose registry keeps the invariants (at most one
/// authoritative live site per group, holding the newest epoch among its group's live
/// sites): publishing each site in turn would then apply every one of them as it is
/// (nothing stale, no holder to demote), and leave each group with its holder and
/// newest epoch. So the records go straight into `staged` while another thread
/// computes the groups, checking the invariants as it goes. `None` (and `staged`
/// partly filled) if they do not hold: the caller publishes site by site instead.
fn load_fresh(
    registry: &Registry,
    staged: &mut RouteMap,
    entry_of: &mut impl FnMut(LinkGuid) -> Arc<LinkEntry>,
) -> Option<Groups> {
    let fill = |staged: &mut RouteMap, entry_of: &mut dyn FnMut(LinkGuid) -> Arc<LinkEntry>| {
        for site in registry.sites().filter(|s| s.status().is_live()) {
            let route = SiteRoute::from_site(site);
            let entry = entry_of(route.link);
            staged.insert(route.halo_guid, Route::new(route, entry));
        }
    };
    std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("halo-router-load".into())
            .spawn_scoped(scope, || registry_groups(registry))
        {
            Ok(groups) => {
                fill(staged, entry_of);
                groups.join().ok().flatten()
            }
            // No thread to be had: the same work, one after the other.
            Err(_) => registry_groups(registry).inspect(|_| fill(staged, entry_of)),
        }
    })
}

/// The groups of a registry's live sites (group, site, authoritative, epoch) with
/// their holders and newest epochs, or `None` if a group has two authoritative live
/// sites or a holder older than another of its live sites (see [`load_fresh`]).
pub(crate) fn fresh_groups(
    live: impl Iterator<Item = (GroupKey, HaloGuid, bool, Epoch)>,
    capacity: usize,
) -> Option<Groups> {
    let mut groups = crate::groups::with_capacity(capacity);
    for (group, halo_guid, authoritative, epoch) in live {
        let slot = groups.entry(group).or_default();
        if authoritative {
            if slot.holder.is_some() || epoch < slot.newest {
                return None;
            }
            slot.holder = Some(halo_guid);
        } else if slot.holder.is_some() && epoch > slot.newest {
            return None;
        }
        slot.newest = slot.newest.max(epoch);
    }
    Some(groups)
}

/// [`fresh_groups`] of `registry`'s live sites.
fn registry_groups(registry: &Registry) -> Option<Groups> {
    let live = registry.sites().filter(|s| s.status().is_live()).map(|s| {
        let group = GroupKey::new(s.environment(), s.pms_id());
        (group, s.halo_guid(), s.is_authoritative(), s.epoch())
    });
    fresh_groups(live, registry.groups().size_hint().0)
}

/// One Link's load, as [`Router::link_loads`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLoad {
    /// The Link.
    pub link: LinkGuid,
    /// Whether a session is attached now.
    pub attached: bool,
    /// Queries queued for it or running on it now.
    pub in_flight: usize,
    /// Queries refused because its queue was full, since the router started.
    pub busy_refusals: u64,
}

/// Resolves sites, checks authority and policy, and dispatches queries to Link
/// sessions, without locks on the read path. Share it in an `Arc`.
pub struct Router {
    /// The route table's read side (its write handle is in `writer`).
    routes: RouteTable,
    policy: ArcSwap<Policy>,
    links: papaya::HashMap<LinkGuid, Arc<LinkEntry>, RandomState>,
    /// The sessions that may hold in-flight queries (the timeout sweep's work list).
    busy: Arc<Busy<SessionCore>>,
    next_query: AtomicU64,
    config: RouterConfig,
    writer: Mutex<WriterState>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.site_count())
            .field("links", &self.links.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Whether [`Router::publish`] applied a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The record is now what readers see.
    Applied,
    /// The record was older than what is published for its group and was dropped.
    Stale,
}

impl Router {
    /// An empty router with the empty policy (which denies everything).
    pub fn new(config: RouterConfig) -> Self {
        let (table, reader) = left_right::new_from_empty::<RouteMap, RouteOp>(
            StdHashMap::with_hasher(RandomState::default()),
        );
        Self {
            routes: RouteTable {
                factory: reader.factory(),
                readers: thread_local::ThreadLocal::new(),
            },
            policy: ArcSwap::from_pointee(Policy::empty()),
            links: papaya::HashMap::with_hasher(RandomState::default()),
            busy: Arc::new(Busy::new()),
            next_query: AtomicU64::new(1),
            config,
            writer: Mutex::new(WriterState {
                table,
                authority: Authority::default(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// How many routable (live) sites the table holds.
    pub fn site_count(&self) -> usize {
        self.routes.read(|map| map.map_or(0, StdHashMap::len))
    }

    // ---- read path -------------------------------------------------------------

    /// The published record of a site, if it is live (lock-free).
    pub fn resolve(&self, halo_guid: HaloGuid) -> Option<Route> {
        self.routes.with(&halo_guid, |r| r.cloned())
    }

    /// Calls `f` with the published record of `halo_guid` (or `None`), without cloning it.
    pub fn with_route<R>(&self, halo_guid: HaloGuid, f: impl FnOnce(Option<&Route>) -> R) -> R {
        self.routes.with(&halo_guid, f)
    }

    /// Runs the read path alone: resolve, status, authority, policy. No side effects
    /// (no rate-limit token is taken, nothing is queued, nothing is cloned but what
    /// the policy's `Allowed` holds).
    ///
    /// # Errors
    /// [`RouteError::Denied`] (unknown 404, inactive 404, not authoritative 403, and
    /// every policy code), or the defence-in-depth [`RouteError::NotActive`] /
    /// [`RouteError::NotAuthoritative`].
    pub fn decide(&self, request: &RouteRequest<'_>) -> Result<Allowed, RouteError> {
        let policy = self.policy.load();
        self.routes.with(&request.halo_guid, |route| {
            check_route(&policy, route, request)
        })
    }

    /// [`Router::decide`], also returning a copy of the record it resolved.
    ///
    /// # Errors
    /// As [`Router::decide`].
    pub fn check(&self, request: &RouteRequest<'_>) -> Result<Authorised, RouteError> {
        let policy = self.policy.load();
        self.routes.with(&request.halo_guid, |route| {
            let allowed = check_route(&policy, route, request)?;
            let route = route.ok_or(RouteError::UnknownSite)?.clone();
            Ok(Authorised { route, allowed })
        })
    }

    /// The policy snapshot readers use now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Publishes a new policy snapshot; readers switch to it without stopping.
    /// Compile it with `Grants::compile_with(&router.policy())` so rate-limit and
    /// quota meters carry over.
    pub fn set_policy(&self, policy: Arc<Policy>) {
        self.policy.store(policy);
    }

    /// Routes an immediate query: the read path ([`Router::check`]), then a
    /// rate-limit token, a query id and a place on the Link session's bounded queue.
    /// Await the returned [`Dispatch`] for the Link's answer.
    ///
    /// # Errors
    /// Everything [`Router::check`] returns, plus [`RouteError::InvalidRequest`]
    /// (`maxTimeInQueue` out of range), [`RouteError::Denied`] (rate limit or quota),
    /// [`RouteError::Unreachable`] (no session attached) and [`RouteError::Busy`]
    /// (the Link's queue is full).
    pub fn route(&self, request: RouteRequest<'_>) -> Result<Dispatch, RouteError> {
        self.route_with(request, self.immediate_limits())
    }

    /// The limits of the immediate path ([`Router::route`], [`Router::route_direct`]).
    fn immediate_limits(&self) -> RouteLimits {
        RouteLimits {
            max_time_in_queue: self.config.max_time_in_queue,
            execution_limit: self.config.execution_limit,
            paging: None,
        }
    }

    /// [`Router::route`] under other limits than the immediate path's: the async
    /// path's longer queue time and deadline, and a paged result.
    ///
    /// # Errors
    /// As [`Router::route`].
    pub fn route_with(
        &self,
        request: RouteRequest<'_>,
        limits: RouteLimits,
    ) -> Result<Dispatch, RouteError> {
        self.route_as(request, limits, None, false).map(|(d, _)| d)
    }

    /// [`Router::route`], except that when the chosen session has an outbox
    /// ([`LinkSession::set_outbox`]) the job is not queued for the session's task but
    /// handed back ([`Handoff`]) with that session's outbox, for the caller to write
    /// there itself (one hand-off between tasks less). Every check, the in-flight
    /// reservation, the slot, the deadline and the detach handshake are exactly
    /// [`Router::route`]'s; without an outbox the job is queued as there (`None`).
    ///
    /// The caller must write the job to the handed-back outbox only, and fail or
    /// drop the [`Dispatch`] if it cannot.
    ///
    /// # Errors
    /// As [`Router::route`].
    pub fn route_direct(
        &self,
        request: RouteRequest<'_>,
    ) -> Result<(Dispatch, Option<Handoff>), RouteError> {
        self.route_as(request, self.immediate_limits(), None, true)
    }

    /// [`Router::route_with`] for work accepted earlier whose key is no longer held
    /// (an async query re-dispatched after a restart): the caller is named by the
    /// hash of the key it presented when the work was accepted, and the policy of now
    /// decides again (`halo_policy::evaluate_stored`); `request.key` is not read.
    ///
    /// # Errors
    /// As [`Router::route`].
    pub fn route_stored(
        &self,
        request: RouteRequest<'_>,
        key_hash: &KeyHash,
        limits: RouteLimits,
    ) -> Result<Dispatch, RouteError> {
        self.route_as(request, limits, Some(key_hash), false)
            .map(|(d, _)| d)
    }

    fn route_as(
        &self,
        request: RouteRequest<'_>,
        limits: RouteLimits,
        stored: Option<&KeyHash>,
        direct: bool,
    ) -> Result<(Dispatch, Option<Handoff>), RouteError> {
        let in_queue = request
            .max_time_in_queue
            .unwrap_or(self.config.default_time_in_queue);
        if in_queue > limits.max_time_in_queue {
            return Err(RouteError::InvalidRequest(
                if limits.max_time_in_queue == self.config.max_time_in_queue {
                    "maxTimeInQueue must be between 0 and 60000 ms"
                } else {
                    "maxTimeInQueue is out of range"
                },
            ));
        }
        let policy = self.policy.load();
        let (allowed, session, catalogue, halo_guid, link, epoch) =
            self.routes.with(&request.halo_guid, |route| {
                let allowed = check_route_as(&policy, route, &request, stored)?;
                let route = route.ok_or(RouteError::UnknownSite)?;
                let session = route
                    .link_entry()
                    .session()
                    .ok_or(RouteError::Unreachable)?;
                let site = route.site();
                let catalogue = match request.catalogue {
                    Some(name) => Some(Box::from(name)),
                    None => site
                        .catalogues
                        .iter()
                        .find(|c| c.is_default)
                        .map(|c| c.name.clone()),
                };
                Ok::<_, RouteError>((
                    allowed,
                    session,
                    catalogue,
                    site.halo_guid,
                    site.link,
                    site.epoch,
                ))
            })?;
        session.submit(
            || {
                policy
                    .take(&allowed, request.now)
                    .map_err(RouteError::Denied)?;
                let raw = self.next_query.fetch_add(1, Ordering::Relaxed);
                let query_id =
                    QueryId::new(raw).expect("the query counter starts at 1 and never wraps");
                let queue_deadline = request.now.saturating_add(in_queue);
                Ok(Job {
                    query_id,
                    halo_guid,
                    link,
                    epoch,
                    queue_deadline,
                    deadline: queue_deadline.saturating_add(limits.execution_limit),
                    catalogue,
                    command: request.command,
                    allowed,
                    allowlist: request.components,
                    paging: limits.paging,
                })
            },
            direct,
        )
    }

    /// The load of every Link the router knows, for metrics: whether a session is
    /// attached, its queries queued or running now, and how many queries were refused
    /// as busy (its queue full) since the router started. Lock-free; each value is
    /// read on its own (a snapshot of each Link, not of all of them at one instant).
    pub fn link_loads(&self) -> Vec<LinkLoad> {
        self.links
            .pin()
            .iter()
            .map(|(link, entry)| {
                let session = entry.session();
                LinkLoad {
                    link: *link,
                    attached: session.as_ref().is_some_and(|s| !s.is_closed()),
                    in_flight: session.as_ref().map_or(0, |s| s.in_flight()),
                    busy_refusals: entry.busy_refusals(),
                }
            })
            .collect()
    }

    /// When a Link was last heard from, if the router knows it.
    pub fn last_heard(&self, link: LinkGuid) -> Option<Timestamp> {
        self.links.pin().get(&link).map(|e| e.last_heard())
    }

    /// When a Link was last heard from and, while it is attached, the heartbeat
    /// interval its session was asked for; `None` if the router does not know it.
    pub fn liveness(&self, link: LinkGuid) -> Option<Liveness> {
        self.links.pin().get(&link).map(|e| e.liveness())
    }

    // ---- sessions --------------------------------------------------------------

    /// Attaches a Link's connection: its sites become reachable, and the returned
    /// session yields their jobs. Attaching a Link that already has a session replaces
    /// it (the old one is detached and its queries fail as unreachable).
    pub fn attach_link(&self, link: LinkGuid) -> LinkSession {
        let entry = self.link_entry(link);
        LinkSession::attach(
            entry,
            self.config.link_capacity,
            self.config.max_result_bytes,
            Arc::clone(&self.busy),
        )
    }

    /// Times out every in-flight query whose deadline is at or before `now`; returns
    /// how many this call timed out. Call it periodically (for example every 100 ms).
    /// It visits only sessions with queries in flight, so idle Links cost it nothing.
    pub fn expire_overdue(&self, now: Timestamp) -> usize {
        self.busy.sweep(|session| session.expire_overdue(now))
    }

    /// How many sessions the timeout sweep would visit now (tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn busy_sessions(&self) -> usize {
        self.busy.len()
    }

    // ---- write path ------------------------------------------------------------

    /// Feeds the registry's changes in: each touched site's record is republished from
    /// the registry's current state, heartbeats update liveness in place. Readers
    /// never stop.
    pub fn apply_changes(&self, registry: &Registry, changes: &[Change]) {
        for change in changes {
            match *change {
                Change::SiteUpserted(halo_guid) | Change::SiteRetired(halo_guid) => {
                    self.refresh(registry, halo_guid);
                }
                Change::AuthorityChanged { group, holder, .. } => {
                    // Demote first: every member other than the new holder, then the holder.
                    if let Some(group) = registry.group(&group) {
                        for member in group.state().members() {
                            if Some(member.halo_guid) != holder {
                                self.refresh(registry, member.halo_guid);
                            }
                        }
                    }
                    if let Some(holder) = holder {
                        self.refresh(registry, holder);
                    }
                }
                Change::LinkHeard { link, at } => self.heard(link, at),
                Change::LinkUpserted(_) | Change::LinkUninstalled(_) => {}
            }
        }
    }

    /// Loads every site of `registry` ([`Router::load_sites`]) and every Link's last
    /// heartbeat as the registry holds it (a start-up path).
    pub fn load(&self, registry: &Registry) {
        self.load_sites(registry);
        for link in registry.links() {
            self.heard(link.link_guid(), link.last_heard());
        }
    }

    /// Loads every site of `registry` (a start-up or recovery path): its live sites
    /// published, the others removed, as [`Router::apply_changes`] would for a
    /// `SiteUpserted` of each, but in one publication: the new contents are built
    /// once, beside the table, under the same invariants (module docs), and replace
    /// the table in one swap. Readers see the table before or after, never between.
    pub fn load_sites(&self, registry: &Registry) {
        let mut writer = lock(&self.writer);
        let writer = &mut *writer;
        let mut staged: RouteMap = writer
            .table
            .enter()
            .map(|map| (*map).clone())
            .unwrap_or_default();
        // Built from empty (a start): each site is visited once, so none has a record
        // before its own (see `Fresh`), and a site that is not live has none to remove.
        let fresh = staged.is_empty();
        staged.reserve(registry.site_count().saturating_sub(staged.len()));
        // From empty with no bookkeeping (a start), the shortcut below makes the
        // groups' table itself, sized.
        let shortcut = fresh && writer.authority.groups.is_empty();
        let reserve_groups = |authority: &mut Authority| {
            let groups = registry.groups().size_hint().0;
            authority
                .groups
                .reserve(groups.saturating_sub(authority.groups.len()));
        };
        if !shortcut {
            reserve_groups(&mut writer.authority);
        }
        let links = self.links.pin();
        // A few Links serve many sites each: their entries are found once, not once a
        // site, and consecutive sites of one Link (the usual attach order) reuse the
        // last one found.
        let mut entries: StdHashMap<LinkGuid, Arc<LinkEntry>, RandomState> =
            StdHashMap::with_hasher(RandomState::default());
        let mut last: Option<(LinkGuid, Arc<LinkEntry>)> = None;
        let mut entry_of = |link: LinkGuid| -> Arc<LinkEntry> {
            if let Some((guid, entry)) = &last {
                if *guid == link {
                    return Arc::clone(entry);
                }
            }
            let entry = Arc::clone(entries.entry(link).or_insert_with(|| {
                Arc::clone(links.get_or_insert_with(link, || Arc::new(LinkEntry::new(link))))
            }));
            last = Some((link, Arc::clone(&entry)));
            entry
        };
        if shortcut {
            if let Some(groups) = load_fresh(registry, &mut staged, &mut entry_of) {
                writer.authority.groups = groups;
                publish_replacement(&mut writer.table, staged);
                return;
            }
            // The registry breaks an invariant the shortcut relies on: publish each
            // site in turn instead, which keeps the table's invariants whatever comes.
            staged.clear();
            reserve_groups(&mut writer.authority);
        }
        for site in registry.sites() {
            if site.status().is_live() {
                let route = SiteRoute::from_site(site);
                let _ = if fresh {
                    publish_into(
                        &mut writer.authority,
                        &mut Fresh(&mut staged),
                        route,
                        &mut entry_of,
                    )
                } else {
                    publish_into(&mut writer.authority, &mut staged, route, &mut entry_of)
                };
            } else if !fresh {
                unpublish_from(&mut writer.authority, &mut staged, site.halo_guid());
            }
        }
        publish_replacement(&mut writer.table, staged);
    }

    fn refresh(&self, registry: &Registry, halo_guid: HaloGuid) {
        match registry.site(halo_guid) {
            Some(site) if site.status().is_live() => {
                let _ = self.publish(SiteRoute::from_site(site));
            }
            _ => self.unpublish(halo_guid),
        }
    }

    /// Records a heartbeat of `link` at `at`: one atomic `fetch_max`, nothing rebuilt.
    /// A known Link (every attached one) costs one lookup: no insert attempt, no
    /// reference count touched.
    pub fn heard(&self, link: LinkGuid, at: Timestamp) {
        let links = self.links.pin();
        match links.get(&link) {
            Some(entry) => entry.heard(at),
            None => links
                .get_or_insert_with(link, || Arc::new(LinkEntry::new(link)))
                .heard(at),
        }
    }

    /// Publishes one site's record (the primitive under [`Router::apply_changes`]).
    /// A record whose status is not live removes the site instead. Keeps the table's
    /// invariants (module docs): demotes a previous holder first, drops stale epochs.
    pub fn publish(&self, site: SiteRoute) -> Published {
        if !site.status.is_live() {
            self.unpublish(site.halo_guid);
            return Published::Applied;
        }
        let mut writer = lock(&self.writer);
        let writer = &mut *writer;
        publish_into(
            &mut writer.authority,
            &mut Live(&mut writer.table),
            site,
            |link| self.link_entry(link),
        )
    }

    /// Removes a site from the table: it resolves as unknown from now on.
    pub fn unpublish(&self, halo_guid: HaloGuid) {
        let mut writer = lock(&self.writer);
        let writer = &mut *writer;
        unpublish_from(
            &mut writer.authority,
            &mut Live(&mut writer.table),
            halo_guid,
        );
    }

    fn link_entry(&self, link: LinkGuid) -> Arc<LinkEntry> {
        let links = self.links.pin();
        Arc::clone(links.get_or_insert_with(link, || Arc::new(LinkEntry::new(link))))
    }
}

/// The decision the read path makes once a record is resolved (or not): the policy
/// first (so a caller without a valid key learns nothing about the site), then, as
/// defence in depth, the record's own status and authority again. Public so the
/// benchmarks run this very decision over other tables.
///
/// # Errors
/// [`RouteError::Denied`] with the policy's code; [`RouteError::NotActive`] or
/// [`RouteError::NotAuthoritative`] if the policy allowed a record that is not
/// routable (it never should).
pub fn check_route(
    policy: &Policy,
    route: Option<&Route>,
    request: &RouteRequest<'_>,
) -> Result<Allowed, RouteError> {
    check_route_as(policy, route, request, None)
}

fn check_route_as(
    policy: &Policy,
    route: Option<&Route>,
    request: &RouteRequest<'_>,
    stored: Option<&KeyHash>,
) -> Result<Allowed, RouteError> {
    let view = route.map(Route::view);
    let decision = match stored {
        None => evaluate(policy, &request.policy_request(), view.as_ref()),
        Some(hash) => evaluate_stored(policy, hash, &request.policy_request(), view.as_ref()),
    };
    match decision {
        Decision::Deny(deny) => Err(RouteError::Denied(deny)),
        Decision::Allow(allowed) => {
            let site = route.ok_or(RouteError::UnknownSite)?.site();
            if site.status != SiteStatus::Active {
                return Err(RouteError::NotActive);
            }
            if !site.authoritative {
                return Err(RouteError::NotAuthoritative);
            }
            if allowed.halo_guid() != site.halo_guid {
                return Err(RouteError::UnknownSite);
            }
            Ok(allowed)
        }
    }
}
