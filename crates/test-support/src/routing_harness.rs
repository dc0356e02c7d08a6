//! The routing-throughput harness shared by `halo-router`'s `route_bench` example and
//! `benches/routing.rs`: one fixture, four tables holding the same records, the same
//! route decision over each, and a writer making registry changes plus heartbeats.
//!
//! The four tables (all keyed by Halo GUID with foldhash's randomly seeded hasher):
//! - `router`: the router's own lock-free table ([`Router::decide`]);
//! - `rwlock`: `parking_lot::RwLock<HashMap>`;
//! - `dashmap`: `DashMap`;
//! - `ceiling`: a frozen, unsynchronised `HashMap` (no writer ever), the physical limit
//!   of one hash lookup plus the decision.
//!
//! The decision is [`halo_router::check_route`] in every case: the policy's
//! `evaluate` (key hash, integrator, practice, pairing, authority, components) plus
//! the router's status and authority re-check. Stage, so no rate limit.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use foldhash::fast::RandomState;
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};
use halo_policy::{
    Components, ExecutionMode, Grants, IntegratorId, Policy, ReadAccess, extract_components,
};
use halo_router::{Command, Route, RouteRequest, Router, RouterConfig, SiteRoute, check_route};
use halo_tenancy::{Catalogue, SiteStatus};
use parking_lot::RwLock;

/// The subscription key every request presents.
pub const KEY: &str = "bench-stage-key";
/// Sites per Link in the fixture.
pub const SITES_PER_LINK: usize = 100;
/// Registry changes per second the writer makes.
pub const CHANGES_PER_SEC: u64 = 10_000;
/// The site whose record the writer republishes on every tick to measure visibility.
pub const PROBE: usize = 0;

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since the harness started.
pub fn now_ns() -> u64 {
    u64::try_from(ORIGIN.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The sites, the router holding them, and the policy that allows them all.
#[derive(Debug)]
pub struct Fixture {
    /// The router, with every site published and the policy set.
    pub router: Router,
    /// Every site's Halo GUID.
    pub halos: Vec<HaloGuid>,
    /// Every Link's GUID.
    pub links: Vec<LinkGuid>,
    /// The policy (the same snapshot the router holds).
    pub policy: Arc<Policy>,
    /// The components of the benchmark's command.
    pub components: Arc<Components>,
    /// Every site's published record, in `halos` order (built once, so no
    /// measurement pays for it).
    pub records: Vec<(HaloGuid, Route)>,
}

fn halo_of(i: usize) -> HaloGuid {
    // Spread the bits like random GUIDs would be.
    let x = (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    HaloGuid::from_u128(x | 1).expect("odd, so never nil")
}

fn crn_of(i: usize) -> Crn {
    format!("B{i}").parse().expect("valid crn")
}

/// Builds the fixture: `sites` active, authoritative Stage sites (one practice each,
/// 100 per Link), and one integrator enabled and paired at all of them.
pub fn fixture(sites: usize) -> Fixture {
    let router = Router::new(RouterConfig::standard());
    let acme: IntegratorId = "acme".parse().expect("valid id");
    let mut grants = Grants::default();
    let access = ReadAccess {
        integrator: &acme,
        pms_type: PmsType::D4w,
        environment: Environment::Stage,
        key: KEY,
        catalogues: &["d4w"],
        tables: &["patients", "appointments"],
    };
    let head = access.integrator_events();
    for e in &head {
        grants.apply(e).expect("valid grant");
    }
    let catalogues: Arc<[Catalogue]> = Arc::from(vec![Catalogue {
        name: "d4w".into(),
        is_default: true,
    }]);
    let mut halos = Vec::with_capacity(sites);
    let mut links = Vec::new();
    for i in 0..sites {
        let halo = halo_of(i);
        if i % SITES_PER_LINK == 0 {
            links.push(LinkGuid::from_u128(0x5000_0000 + i as u128).expect("non-nil"));
        }
        let link = *links.last().expect("pushed above");
        let pms_id = PmsId::new(PmsType::D4w, crn_of(i));
        for e in access.practice_events(pms_id) {
            grants.apply(&e).expect("valid grant");
        }
        let _ = router.publish(SiteRoute {
            halo_guid: halo,
            link,
            environment: Environment::Stage,
            pms_id,
            status: SiteStatus::Active,
            authoritative: true,
            epoch: halo_ids_epoch(1),
            catalogues: Arc::clone(&catalogues),
        });
        halos.push(halo);
    }
    let policy = Arc::new(grants.compile());
    router.set_policy(Arc::clone(&policy));
    let components = Arc::new(
        extract_components(
            "SELECT p.Name FROM Patients p JOIN Appointments a ON a.PatientId = p.Id",
        )
        .expect("parses"),
    );
    let records = halos
        .iter()
        .map(|h| (*h, router.resolve(*h).expect("published above")))
        .collect();
    Fixture {
        router,
        halos,
        links,
        policy,
        components,
        records,
    }
}

fn halo_ids_epoch(n: u64) -> halo_tenancy::Epoch {
    halo_tenancy::Epoch::new(n)
}

impl Fixture {
    /// A request for `halo` (the benchmark's command, Stage key).
    pub fn request(&self, halo: HaloGuid) -> RouteRequest<'static> {
        RouteRequest {
            key: KEY,
            caller_ip: None,
            halo_guid: halo,
            now: Timestamp::from_millis(1_700_000_000_000),
            max_time_in_queue: None,
            catalogue: None,
            components: Arc::clone(&self.components),
            command: Command {
                text: String::new(),
                mode: ExecutionMode::Reader,
                parameters: None,
                procedure: false,
            },
        }
    }

    /// The published record of every site, in `halos` order.
    pub fn records(&self) -> &[(HaloGuid, Route)] {
        &self.records
    }
}

/// The hash map every baseline uses: foldhash with a random seed.
pub type FastMap = HashMap<HaloGuid, Route, RandomState>;

/// One of the four tables.
#[derive(Debug)]
pub enum Table<'a> {
    /// The router's own table.
    Router(&'a Router),
    /// `parking_lot::RwLock<HashMap>`.
    RwLock(RwLock<FastMap>),
    /// `DashMap`.
    DashMap(DashMap<HaloGuid, Route, RandomState>),
    /// A frozen `HashMap`, never written.
    Ceiling(FastMap),
    /// Candidate: left-right, two `HashMap` copies (readers on one, the writer
    /// applying each change to both).
    LeftRight(Box<LeftRightMap>),
    /// Candidate: `papaya::HashMap`.
    Papaya(papaya::HashMap<HaloGuid, Route, RandomState>),
    /// A floor: the ceiling's frozen map read under a concurrent table's reader
    /// protocol, so the protocol's own cost shows (no table can beat it).
    Floor(Box<Floor>),
}

/// How a [`Floor`] reader announces itself before reading.
#[allow(missing_debug_implementations)]
pub enum Protocol {
    /// `left-right`'s read: bump a per-thread epoch (`fetch_add`), a `SeqCst` fence,
    /// load the shared copy pointer; bump the epoch again after the read.
    LeftRight {
        /// The shared pointer readers load (its value is unused).
        inner: AtomicU64,
        /// Each reader thread's epoch counter.
        epochs: Box<thread_local::ThreadLocal<AtomicU64>>,
    },
    /// papaya's read: a `seize` guard (with its `membarrier`-based light barrier).
    Seize(papaya::HashMap<HaloGuid, Route, RandomState>),
}

/// A frozen `HashMap` (as the ceiling) read under a [`Protocol`]: the cost of the
/// protocol alone, measured against the ceiling in the same run.
pub struct Floor {
    map: FastMap,
    protocol: Protocol,
}

impl std::fmt::Debug for Floor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Floor").finish_non_exhaustive()
    }
}

impl Floor {
    /// The ceiling's map over `records`, read under `protocol`.
    pub fn new(records: &[(HaloGuid, Route)], protocol: Protocol) -> Self {
        let mut map = HashMap::with_capacity_and_hasher(records.len(), RandomState::default());
        map.extend(records.iter().cloned());
        Self { map, protocol }
    }

    /// Calls `f` with the record of `halo`, inside the protocol's read section.
    #[inline]
    pub fn with<R>(&self, halo: &HaloGuid, f: impl FnOnce(Option<&Route>) -> R) -> R {
        match &self.protocol {
            Protocol::LeftRight { inner, epochs } => {
                let epoch = epochs.get_or(|| AtomicU64::new(0));
                epoch.fetch_add(1, Ordering::AcqRel);
                std::sync::atomic::fence(Ordering::SeqCst);
                black_box(inner.load(Ordering::Acquire));
                let r = f(self.map.get(halo));
                epoch.fetch_add(1, Ordering::AcqRel);
                r
            }
            Protocol::Seize(empty) => {
                let guard = empty.guard();
                let r = f(self.map.get(halo));
                drop(guard);
                r
            }
        }
    }
}

/// A change for [`LeftRightMap`]: applied to one copy, then replayed on the other.
#[derive(Debug)]
pub enum LeftRightOp {
    /// Insert or replace a record.
    Upsert(HaloGuid, Route),
}

impl left_right::Absorb<LeftRightOp> for FastMap {
    fn absorb_first(&mut self, op: &mut LeftRightOp, _: &Self) {
        let LeftRightOp::Upsert(halo, route) = op;
        self.insert(*halo, route.clone());
    }

    fn absorb_second(&mut self, op: LeftRightOp, _: &Self) {
        let LeftRightOp::Upsert(halo, route) = op;
        self.insert(halo, route);
    }

    fn sync_with(&mut self, first: &Self) {
        self.clone_from(first);
    }
}

/// The left-right candidate: readers read one of two plain `HashMap`s with no
/// shared write (each thread bumps its own epoch counter, found through a
/// thread-local handle); the writer changes the other copy, swaps, waits for readers
/// to leave the old one, and replays the change there.
pub struct LeftRightMap {
    writer: parking_lot::Mutex<left_right::WriteHandle<FastMap, LeftRightOp>>,
    factory: left_right::ReadHandleFactory<FastMap>,
    readers: thread_local::ThreadLocal<left_right::ReadHandle<FastMap>>,
}

impl std::fmt::Debug for LeftRightMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeftRightMap").finish_non_exhaustive()
    }
}

impl LeftRightMap {
    /// A table holding `records`.
    pub fn new(records: &[(HaloGuid, Route)]) -> Self {
        let mut map = HashMap::with_capacity_and_hasher(records.len(), RandomState::default());
        map.extend(records.iter().cloned());
        let (writer, reader) = left_right::new_from_empty::<FastMap, LeftRightOp>(map);
        Self {
            writer: parking_lot::Mutex::new(writer),
            factory: reader.factory(),
            readers: thread_local::ThreadLocal::new(),
        }
    }

    /// Calls `f` with the record of `halo` (or `None`) in the copy readers see now.
    #[inline]
    pub fn with<R>(&self, halo: &HaloGuid, f: impl FnOnce(Option<&Route>) -> R) -> R {
        let handle = self.readers.get_or(|| self.factory.handle());
        match handle.enter() {
            Some(map) => f(map.get(halo)),
            None => f(None),
        }
    }

    /// Publishes one record (both copies, one swap).
    pub fn upsert(&self, halo: HaloGuid, route: Route) {
        let mut writer = self.writer.lock();
        writer.append(LeftRightOp::Upsert(halo, route));
        writer.publish();
    }
}

impl<'a> Table<'a> {
    /// The four tables over the fixture's records, in report order.
    pub fn all(fx: &'a Fixture) -> [Table<'a>; 4] {
        let records = fx.records();
        let map = || -> FastMap {
            let mut m = HashMap::with_capacity_and_hasher(records.len(), RandomState::default());
            m.extend(records.iter().cloned());
            m
        };
        let dash = DashMap::with_capacity_and_hasher(records.len(), RandomState::default());
        for (h, r) in records {
            dash.insert(*h, r.clone());
        }
        [
            Table::Router(&fx.router),
            Table::RwLock(RwLock::new(map())),
            Table::DashMap(dash),
            Table::Ceiling(map()),
        ]
    }

    /// The candidate tables over the fixture's records: left-right, papaya.
    pub fn candidates(fx: &'a Fixture) -> [Table<'a>; 2] {
        let records = fx.records();
        let papaya_map =
            papaya::HashMap::with_capacity_and_hasher(records.len(), RandomState::default());
        {
            let pinned = papaya_map.pin();
            for (h, r) in records {
                pinned.insert(*h, r.clone());
            }
        }
        [
            Table::LeftRight(Box::new(LeftRightMap::new(records))),
            Table::Papaya(papaya_map),
        ]
    }

    /// The floors: the ceiling's map under left-right's and under papaya's reader
    /// protocol.
    pub fn floors(fx: &'a Fixture) -> [Table<'a>; 2] {
        let records = fx.records();
        let left_right = Protocol::LeftRight {
            inner: AtomicU64::new(1),
            epochs: Box::default(),
        };
        let seize = Protocol::Seize(papaya::HashMap::with_hasher(RandomState::default()));
        [
            Table::Floor(Box::new(Floor::new(records, left_right))),
            Table::Floor(Box::new(Floor::new(records, seize))),
        ]
    }

    /// The name in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Table::Router(_) => "router",
            Table::RwLock(_) => "rwlock",
            Table::DashMap(_) => "dashmap",
            Table::Ceiling(_) => "ceiling",
            Table::LeftRight(_) => "leftright",
            Table::Papaya(_) => "papaya",
            Table::Floor(f) => match f.protocol {
                Protocol::LeftRight { .. } => "floor_leftright",
                Protocol::Seize(_) => "floor_papaya",
            },
        }
    }

    /// Whether a writer may run against it (the ceiling and the floors are frozen).
    pub fn writable(&self) -> bool {
        !matches!(self, Table::Ceiling(_) | Table::Floor(_))
    }

    /// The route decision for `request`: `true` when allowed.
    #[inline]
    pub fn decide(&self, policy: &Policy, request: &RouteRequest<'_>) -> bool {
        match self {
            Table::Router(r) => r.decide(request).is_ok(),
            Table::RwLock(m) => {
                check_route(policy, m.read().get(&request.halo_guid), request).is_ok()
            }
            Table::DashMap(m) => {
                check_route(policy, m.get(&request.halo_guid).as_deref(), request).is_ok()
            }
            Table::Ceiling(m) => check_route(policy, m.get(&request.halo_guid), request).is_ok(),
            Table::LeftRight(m) => m
                .with(&request.halo_guid, |r| check_route(policy, r, request))
                .is_ok(),
            Table::Papaya(m) => {
                let guard = m.guard();
                check_route(policy, m.get(&request.halo_guid, &guard), request).is_ok()
            }
            Table::Floor(m) => m
                .with(&request.halo_guid, |r| check_route(policy, r, request))
                .is_ok(),
        }
    }

    /// The table alone: resolve `halo` and check the record is active and
    /// authoritative, without the policy (whose cost dominates a full decision).
    #[inline]
    pub fn lookup(&self, halo: HaloGuid) -> bool {
        let ok = |r: Option<&Route>| {
            r.is_some_and(|r| r.is_authoritative() && r.site().status == SiteStatus::Active)
        };
        match self {
            Table::Router(r) => r.with_route(halo, ok),
            Table::RwLock(m) => ok(m.read().get(&halo)),
            Table::DashMap(m) => ok(m.get(&halo).as_deref()),
            Table::Ceiling(m) => ok(m.get(&halo)),
            Table::LeftRight(m) => m.with(&halo, ok),
            Table::Papaya(m) => {
                let guard = m.guard();
                ok(m.get(&halo, &guard))
            }
            Table::Floor(m) => m.with(&halo, ok),
        }
    }

    /// The epoch of `halo`'s record now (for the visibility probe).
    pub fn epoch(&self, halo: HaloGuid) -> u64 {
        let get = |r: Option<&Route>| r.map_or(0, |r| r.epoch().get());
        match self {
            Table::Router(r) => get(r.resolve(halo).as_ref()),
            Table::RwLock(m) => get(m.read().get(&halo)),
            Table::DashMap(m) => get(m.get(&halo).as_deref()),
            Table::Ceiling(m) => get(m.get(&halo)),
            Table::LeftRight(m) => m.with(&halo, get),
            Table::Papaya(m) => {
                let guard = m.guard();
                get(m.get(&halo, &guard))
            }
            Table::Floor(m) => m.with(&halo, get),
        }
    }

    /// Publishes `site` (a registry change) the way this table's writer would.
    pub fn publish(&self, base: &Route, site: SiteRoute) {
        match self {
            Table::Router(r) => {
                let _ = r.publish(site);
            }
            Table::RwLock(m) => {
                let halo = site.halo_guid;
                let record = base.with_site(site);
                m.write().insert(halo, record);
            }
            Table::DashMap(m) => {
                let halo = site.halo_guid;
                m.insert(halo, base.with_site(site));
            }
            Table::Ceiling(_) | Table::Floor(_) => {}
            Table::LeftRight(m) => {
                let halo = site.halo_guid;
                m.upsert(halo, base.with_site(site));
            }
            Table::Papaya(m) => {
                let halo = site.halo_guid;
                m.pin().insert(halo, base.with_site(site));
            }
        }
    }
}

/// A xorshift generator: cheap enough not to show in the measurement.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; zero is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next index below `n`.
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Publication start times of the probe's epochs, indexed by epoch modulo its length.
#[derive(Debug)]
pub struct ProbeRing {
    starts: Vec<AtomicU64>,
}

impl Default for ProbeRing {
    fn default() -> Self {
        Self::new()
    }
}

impl ProbeRing {
    const LEN: usize = 4096;

    /// An empty ring.
    pub fn new() -> Self {
        Self {
            starts: (0..Self::LEN).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn set(&self, epoch: u64, at: u64) {
        self.starts[epoch as usize % Self::LEN].store(at, Ordering::Release);
    }

    /// When the probe's `epoch` started being published, in [`now_ns`].
    pub fn start(&self, epoch: u64) -> u64 {
        self.starts[epoch as usize % Self::LEN].load(Ordering::Acquire)
    }
}

/// The writer loop, until `stop`: every millisecond, `CHANGES_PER_SEC / 1000`
/// registry changes (a site republished with a new epoch; the probe site first, its
/// publication time noted in `probe`) and a share of the Links' heartbeats (every Link
/// once a second). Catches up if a sleep overshoots. Returns the changes made.
pub fn run_writer(fx: &Fixture, table: &Table<'_>, probe: &ProbeRing, stop: &AtomicBool) -> u64 {
    let records = fx.records();
    let mut epochs = vec![1u64; records.len()];
    let per_tick = (CHANGES_PER_SEC / 1000) as usize;
    let beats_per_tick = fx.links.len().div_ceil(1000).max(1);
    let mut rng = Rng::new(0x5eed_0fc0_ffee);
    let mut next_link = 0usize;
    let started = Instant::now();
    let mut ticks = 0u64;
    let mut changes = 0u64;
    while !stop.load(Ordering::Acquire) {
        let due = started.elapsed().as_millis() as u64;
        while ticks < due {
            ticks += 1;
            for k in 0..per_tick {
                let i = if k == 0 {
                    PROBE
                } else {
                    rng.below(records.len())
                };
                epochs[i] += 1;
                let (_, base) = &records[i];
                let mut site = base.site().clone();
                site.epoch = halo_tenancy::Epoch::new(epochs[i]);
                if i == PROBE {
                    probe.set(epochs[i], now_ns());
                }
                table.publish(base, site);
                changes += 1;
            }
            let at = Timestamp::from_millis(1_700_000_000_000 + ticks);
            for _ in 0..beats_per_tick {
                fx.router.heard(fx.links[next_link % fx.links.len()], at);
                next_link += 1;
            }
        }
        thread::sleep(Duration::from_micros(500));
    }
    changes
}

/// What one measurement found.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    /// Decisions per second, all threads together.
    pub per_sec: f64,
    /// Decisions per second of CPU time the readers actually got, all threads
    /// together (each reader's operations over its own CPU time, summed): on a
    /// shared machine this takes out the turns other processes held the cores.
    pub per_cpu_sec: f64,
    /// Microseconds from the start of a probe publication to a reader seeing it.
    pub visibility_us: Vec<f64>,
    /// Registry changes the writer made.
    pub changes: u64,
}

/// How often (in decisions) a reader looks at the probe site.
const PROBE_EVERY: u64 = 64;

/// What each reader operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The full route decision ([`Table::decide`]).
    Decide,
    /// The table alone ([`Table::lookup`]).
    Lookup,
}

/// Runs `threads` readers making route decisions (or lookups) over random sites of
/// `table` for `secs` seconds, with the writer running if `writer`.
pub fn measure(
    fx: &Fixture,
    table: &Table<'_>,
    threads: usize,
    secs: f64,
    writer: bool,
    op: Op,
) -> Measurement {
    let stop = AtomicBool::new(false);
    let probe = ProbeRing::new();
    let probe_halo = fx.halos[PROBE];
    thread::scope(|s| {
        // Without the writer, an idle thread with the writer's wake-up pattern runs
        // instead: on a shared machine the scheduler treats a process with a waking
        // thread differently, and that must not be mistaken for the writer's cost.
        let writer = if writer {
            Some(s.spawn(|| run_writer(fx, table, &probe, &stop)))
        } else {
            s.spawn(|| {
                while !stop.load(Ordering::Acquire) {
                    thread::sleep(Duration::from_micros(500));
                }
            });
            None
        };
        let readers: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, probe) = (&stop, &probe);
                s.spawn(move || {
                    let mut rng = Rng::new(0xdead_beef ^ ((t as u64 + 1) * 0x9e37_79b9));
                    let mut request = fx.request(fx.halos[0]);
                    let mut ops = 0u64;
                    let mut seen = table.epoch(probe_halo);
                    let mut lat = Vec::new();
                    let cpu = crate::machine::thread_cpu_ns();
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..PROBE_EVERY {
                            request.halo_guid = fx.halos[rng.below(fx.halos.len())];
                            match op {
                                Op::Decide => {
                                    black_box(table.decide(&fx.policy, black_box(&request)));
                                }
                                Op::Lookup => {
                                    black_box(table.lookup(black_box(request.halo_guid)));
                                }
                            }
                        }
                        ops += PROBE_EVERY;
                        let e = table.epoch(probe_halo);
                        if e > seen {
                            seen = e;
                            let start = probe.start(e);
                            if start != 0 {
                                lat.push(now_ns().saturating_sub(start) as f64 / 1000.0);
                            }
                        }
                    }
                    let took = started.elapsed();
                    (ops, took, crate::machine::cpu_secs_since(cpu), lat)
                })
            })
            .collect();
        thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Release);
        let mut m = Measurement::default();
        for r in readers {
            let (ops, took, cpu, lat) = r.join().expect("reader thread");
            m.per_sec += ops as f64 / took.as_secs_f64();
            if cpu > 0.0 {
                m.per_cpu_sec += ops as f64 / cpu;
            }
            m.visibility_us.extend(lat);
        }
        m.changes = writer.map_or(0, |w| w.join().expect("writer thread"));
        m
    })
}

/// Makes `iters` decisions split over `threads` scoped threads; returns the wall time
/// (for criterion's `iter_custom`).
pub fn decide_parallel(
    fx: &Fixture,
    table: &Table<'_>,
    threads: usize,
    iters: u64,
    op: Op,
) -> Duration {
    let per_thread = iters.div_ceil(threads as u64);
    let started = Instant::now();
    thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = Rng::new(0xfeed ^ ((t as u64 + 1) * 0x9e37_79b9));
                let mut request = fx.request(fx.halos[0]);
                for _ in 0..per_thread {
                    request.halo_guid = fx.halos[rng.below(fx.halos.len())];
                    match op {
                        Op::Decide => {
                            black_box(table.decide(&fx.policy, black_box(&request)));
                        }
                        Op::Lookup => {
                            black_box(table.lookup(black_box(request.halo_guid)));
                        }
                    }
                }
            });
        }
    });
    started.elapsed()
}

/// The `q`-quantile (0..=1) of `values` (sorted in place); 0 when empty.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let idx = ((values.len() - 1) as f64 * q).round() as usize;
    values[idx]
}
