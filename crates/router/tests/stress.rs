//! Multi-thread stress test: route while promoting and removing sites, and check that
//! no query is ever dispatched to a non-authoritative or removed site, or with a stale
//! epoch.
//!
//! The check is exact, not statistical: the writer bumps a sequence number (SeqCst)
//! after each change is fully published, and a router thread reads it before routing.
//! A job stamped (site, epoch) is correct only if the writer had published "site holds
//! authority at epoch" and had not yet published anything superseding it (another
//! holder, a new epoch, the site's removal) when the route began.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};
use halo_policy::{ExecutionMode, Grants, IntegratorId, ReadAccess, extract_components};
use halo_router::{Command, QueryOutput, RouteError, RouteRequest, Router, RouterConfig};
use halo_tenancy::{Catalogue, Event, GroupKey, Registry, SiteIdentity};

const GROUPS: u32 = 6;
const MEMBERS: u32 = 2;
const GENERATIONS: u32 = 40;
const WRITER_STEPS: usize = 3000;
const KEY: &str = "stress-key";
const NOW: Timestamp = Timestamp::from_millis(1_000_000);

fn link(member: u32) -> LinkGuid {
    LinkGuid::from_u128(1 + u128::from(member)).expect("non-nil")
}

/// The site of `member` in `group`, in its `generation` (a re-added database gets a
/// new Halo GUID).
fn site(group: u32, member: u32, generation: u32) -> HaloGuid {
    HaloGuid::from_u128(
        0x10_0000
            + u128::from(group) * 0x1_0000
            + u128::from(member) * 0x1000
            + u128::from(generation),
    )
    .expect("non-nil")
}

fn group_of(halo: HaloGuid) -> u32 {
    ((halo.as_uuid().as_u128() - 0x10_0000) / 0x1_0000) as u32
}

fn crn(group: u32) -> Crn {
    format!("G{group}").parse().expect("valid crn")
}

fn group_key(group: u32) -> GroupKey {
    GroupKey::new(Environment::Stage, PmsId::new(PmsType::D4w, crn(group)))
}

fn attach(link: LinkGuid, site: HaloGuid, group: u32) -> [Event; 2] {
    [
        Event::SiteAttached {
            link,
            halo_guid: site,
            identity: SiteIdentity {
                pms_type: PmsType::D4w,
                parent_crn: crn(group),
                branch_crns: Vec::new(),
                practice_name: format!("Group {group}"),
                pms_version: "1".into(),
                catalogues: vec![Catalogue {
                    name: "d4w".into(),
                    is_default: true,
                }],
                is_demo: false,
            },
        },
        Event::SiteReady {
            link,
            halo_guid: site,
        },
    ]
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(n)) as u32
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park_timeout(Duration::from_millis(10));
    }
}

/// What the writer published, in order: per group, (seq, holder, epoch) after each
/// change; per site, the seq of its removal.
#[derive(Default)]
struct History {
    groups: HashMap<u32, Vec<(u64, Option<HaloGuid>, u64)>>,
    removed: HashMap<HaloGuid, u64>,
}

impl History {
    fn record(&mut self, registry: &Registry, seq: u64) {
        for g in 0..GROUPS {
            let (holder, epoch) = registry
                .group(&group_key(g))
                .map(|gr| (gr.holder(), gr.epoch().get()))
                .unwrap_or((None, 0));
            let entries = self.groups.entry(g).or_default();
            if entries.last().map(|e| (e.1, e.2)) != Some((holder, epoch)) {
                entries.push((seq, holder, epoch));
            }
        }
    }

    /// Whether a route that began at `start` could correctly dispatch to `halo` at
    /// `epoch`.
    fn valid(&self, start: u64, halo: HaloGuid, epoch: u64) -> Result<(), String> {
        if let Some(&removed) = self.removed.get(&halo) {
            if removed <= start {
                return Err(format!(
                    "{halo} dispatched after its removal (seq {removed} <= {start})"
                ));
            }
        }
        let entries = &self.groups[&group_of(halo)];
        for (i, &(_, holder, e)) in entries.iter().enumerate() {
            if holder == Some(halo) && e == epoch {
                let superseded = entries.get(i + 1).map_or(u64::MAX, |next| next.0);
                if superseded <= start {
                    return Err(format!(
                        "{halo} at epoch {epoch} dispatched after it was superseded (seq {superseded} <= {start})"
                    ));
                }
                return Ok(());
            }
        }
        Err(format!("{halo} never held authority at epoch {epoch}"))
    }
}

#[test]
fn routes_only_to_current_authoritative_sites_while_promoting_and_removing() {
    let router = Arc::new(Router::new(RouterConfig::standard()));
    let mut registry = Registry::new();
    let mut history = History::default();
    let seq = Arc::new(AtomicU64::new(0));

    // Policy: one Stage integrator enabled and paired at every group's practice.
    let acme: IntegratorId = "acme".parse().expect("valid id");
    let mut grants = Grants::default();
    let events = ReadAccess {
        integrator: &acme,
        pms_type: PmsType::D4w,
        environment: Environment::Stage,
        key: KEY,
        catalogues: &["d4w"],
        tables: &["patients"],
    }
    .events((0..GROUPS).map(|g| PmsId::new(PmsType::D4w, crn(g))));
    for e in &events {
        grants.apply(e).expect("valid grant");
    }
    router.set_policy(Arc::new(grants.compile()));

    // Initial sites: every member of every group, generation 0.
    let mut generation = vec![[0u32; MEMBERS as usize]; GROUPS as usize];
    for m in 0..MEMBERS {
        let ev = Event::LinkRegistered {
            link: link(m),
            environment: Environment::Stage,
            version: "1".into(),
        };
        let changes = registry.apply(&ev, NOW).expect("register");
        router.apply_changes(&registry, &changes);
        for g in 0..GROUPS {
            for ev in attach(link(m), site(g, m, 0), g) {
                let changes = registry.apply(&ev, NOW).expect("attach");
                router.apply_changes(&registry, &changes);
            }
        }
    }
    history.record(&registry, seq.load(Ordering::SeqCst));

    let stop = Arc::new(AtomicBool::new(false));
    // The Links: drain jobs, note (query, site, epoch), answer at once.
    let jobs = Arc::new(Mutex::new(HashMap::new()));
    let drainers: Vec<_> = (0..MEMBERS)
        .map(|m| {
            let mut session = router.attach_link(link(m));
            let (stop, jobs) = (stop.clone(), jobs.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match session.try_next_job() {
                        Ok(Some(job)) => {
                            jobs.lock()
                                .expect("jobs")
                                .insert(job.query_id, (job.halo_guid, job.epoch.get()));
                            let _ = session.complete(
                                job.query_id,
                                Ok(QueryOutput {
                                    data: String::new(),
                                    size: 0,
                                    rows: 0,
                                    sql_execution: Duration::ZERO,
                                }),
                            );
                        }
                        Ok(None) => thread::yield_now(),
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();

    // The routers: route to random sites of any generation, note the start seq.
    let components = Arc::new(extract_components("SELECT * FROM Patients").expect("parses"));
    let routers: Vec<_> = (0..2u64)
        .map(|t| {
            let (router, seq, stop, components) = (
                router.clone(),
                seq.clone(),
                stop.clone(),
                components.clone(),
            );
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                let mut routed = Vec::new();
                let mut refused = 0usize;
                while !stop.load(Ordering::Acquire) {
                    let halo = site(
                        rng.below(GROUPS),
                        rng.below(MEMBERS),
                        rng.below(GENERATIONS),
                    );
                    let start = seq.load(Ordering::SeqCst);
                    let request = RouteRequest {
                        key: KEY,
                        caller_ip: None,
                        halo_guid: halo,
                        now: NOW,
                        max_time_in_queue: None,
                        catalogue: None,
                        components: components.clone(),
                        command: Command {
                            text: "SELECT * FROM Patients".into(),
                            mode: ExecutionMode::Reader,
                            parameters: None,
                            procedure: false,
                        },
                    };
                    match router.route(request) {
                        Ok(dispatch) => {
                            routed.push((dispatch.query_id(), start, halo));
                            match block_on(dispatch) {
                                Ok(_) | Err(RouteError::Unreachable) => {}
                                Err(e) => panic!("unexpected failure after dispatch: {e:?}"),
                            }
                        }
                        Err(RouteError::Denied(_)) => refused += 1,
                        Err(e) => panic!("unexpected route error: {e:?}"),
                    }
                }
                (routed, refused)
            })
        })
        .collect();

    // The writer: promotions, removals and re-additions, as fast as it can.
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..WRITER_STEPS {
        let g = rng.below(GROUPS);
        let m = rng.below(MEMBERS);
        let current = site(g, m, generation[g as usize][m as usize]);
        let events: Vec<Event> =
            if rng.below(3) == 0 && generation[g as usize][m as usize] + 1 < GENERATIONS {
                generation[g as usize][m as usize] += 1;
                let next = site(g, m, generation[g as usize][m as usize]);
                let mut evs = vec![Event::SiteRemoved {
                    link: link(m),
                    halo_guid: current,
                }];
                evs.extend(attach(link(m), next, g));
                evs
            } else {
                vec![Event::Promoted {
                    halo_guid: current,
                    actor: "support".into(),
                    reason: "stress".into(),
                }]
            };
        for ev in events {
            let Ok(changes) = registry.apply(&ev, NOW) else {
                continue;
            };
            router.apply_changes(&registry, &changes);
            let s = seq.fetch_add(1, Ordering::SeqCst) + 1;
            if let Event::SiteRemoved {
                halo_guid: site, ..
            } = ev
            {
                history.removed.insert(site, s);
            }
            history.record(&registry, s);
        }
        thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Release);

    let mut total = 0;
    let mut refused_total = 0;
    let outcomes: Vec<_> = routers
        .into_iter()
        .map(|h| h.join().expect("router thread"))
        .collect();
    for d in drainers {
        d.join().expect("drainer");
    }
    let jobs = jobs.lock().expect("jobs");
    for (routed, refused) in outcomes {
        refused_total += refused;
        for (qid, start, requested) in routed {
            // A query cancelled before the Link took it never reached the Link.
            let Some(&(halo, epoch)) = jobs.get(&qid) else {
                continue;
            };
            assert_eq!(halo, requested);
            if let Err(e) = history.valid(start, halo, epoch) {
                panic!("{e}");
            }
            total += 1;
        }
    }
    assert!(total > 100, "too few dispatches checked: {total}");
    assert!(refused_total > 100, "too few refusals: {refused_total}");
}
