//! Unit tests of the router: routing decisions, sessions, dispatch endings.

use std::task::Poll;
use std::time::Duration;

use halo_ids::Timestamp;
use halo_policy::DenyCode;
use halo_tenancy::{Event, Registry};

use crate::fixture::{T0, add_site, block_on, halo, link, policy, poll_once, request};
use crate::{
    Delivery, Published, QueryFailure, QueryOutput, RouteError, Router, RouterConfig, SiteRoute,
};

fn output(bytes: usize) -> QueryOutput {
    QueryOutput {
        data: "x".repeat(bytes),
        size: bytes,
        rows: 1,
        sql_execution: Duration::from_millis(3),
    }
}

/// One Link, one active authoritative site (practice 1), policy allowing it.
fn setup(config: RouterConfig) -> (Router, Registry) {
    let router = Router::new(config);
    let mut registry = Registry::new();
    let changes = add_site(&mut registry, link(1), halo(1), 1);
    router.apply_changes(&registry, &changes);
    router.set_policy(policy([1, 2]));
    (router, registry)
}

fn denied_code(err: RouteError) -> DenyCode {
    match err {
        RouteError::Denied(d) => d.code(),
        other => panic!("expected a policy denial, got {other:?}"),
    }
}

#[test]
fn routes_to_authoritative_site_and_delivers_result() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    let dispatch = router.route(request(halo(1))).unwrap();
    let job = session.try_next_job().unwrap().expect("a queued job");
    assert_eq!(job.query_id, dispatch.query_id());
    assert_eq!(job.halo_guid, halo(1));
    assert_eq!(job.epoch, router.resolve(halo(1)).unwrap().epoch());
    assert_eq!(job.catalogue.as_deref(), Some("d4w"));
    assert_eq!(
        job.queue_deadline,
        T0.saturating_add(Duration::from_secs(30))
    );
    assert_eq!(job.deadline, T0.saturating_add(Duration::from_secs(60)));
    assert_eq!(
        session.complete(job.query_id, Ok(output(10))),
        Delivery::Delivered
    );
    assert_eq!(block_on(dispatch).unwrap(), output(10));
    assert_eq!(session.in_flight(), 0);
}

#[test]
fn wakes_waiting_dispatch_and_job_receiver() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    let dispatch = router.route(request(halo(1))).unwrap();
    let qid = dispatch.query_id();
    let waiter = std::thread::spawn(move || block_on(dispatch));
    let job = block_on(session.next_job()).expect("a job");
    assert_eq!(job.query_id, qid);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(session.complete(qid, Ok(output(1))), Delivery::Delivered);
    assert_eq!(waiter.join().unwrap().unwrap(), output(1));
}

#[test]
fn bad_key_is_401_before_anything_about_the_site() {
    let (router, _) = setup(RouterConfig::standard());
    let _session = router.attach_link(link(1));
    for site in [halo(1), halo(99)] {
        let mut req = request(site);
        req.key = "wrong";
        let err = router.route(req).unwrap_err();
        assert_eq!(denied_code(err), DenyCode::UnknownKey);
    }
}

#[test]
fn unknown_site_is_404() {
    let (router, _) = setup(RouterConfig::standard());
    let err = router.route(request(halo(99))).unwrap_err();
    assert_eq!(denied_code(err), DenyCode::UnknownSite);
}

#[test]
fn non_authoritative_backup_is_403_and_promotion_moves_routing() {
    let (router, mut registry) = setup(RouterConfig::standard());
    let _s1 = router.attach_link(link(1));
    let mut s2 = router.attach_link(link(2));
    // A backup of practice 1 behind another Link joins as non-authoritative.
    let changes = add_site(&mut registry, link(2), halo(2), 1);
    router.apply_changes(&registry, &changes);
    let err = router.route(request(halo(2))).unwrap_err();
    assert_eq!(denied_code(err), DenyCode::SiteNotAuthoritative);
    let before = router.resolve(halo(1)).unwrap().epoch();

    let changes = registry
        .apply(
            &Event::Promoted {
                halo_guid: halo(2),
                actor: "support:alice".into(),
                reason: "migration".into(),
            },
            T0,
        )
        .unwrap();
    router.apply_changes(&registry, &changes);
    assert_eq!(
        denied_code(router.route(request(halo(1))).unwrap_err()),
        DenyCode::SiteNotAuthoritative
    );
    let _d = router.route(request(halo(2))).unwrap();
    let job = s2.try_next_job().unwrap().unwrap();
    assert!(job.epoch > before, "{:?} after {:?}", job.epoch, before);
}

#[test]
fn removed_site_resolves_as_unknown() {
    let (router, mut registry) = setup(RouterConfig::standard());
    let changes = registry
        .apply(
            &Event::SiteRemoved {
                link: link(1),
                halo_guid: halo(1),
            },
            T0,
        )
        .unwrap();
    router.apply_changes(&registry, &changes);
    assert!(router.resolve(halo(1)).is_none());
    assert_eq!(
        denied_code(router.route(request(halo(1))).unwrap_err()),
        DenyCode::UnknownSite
    );
}

#[test]
fn no_session_is_unreachable_503() {
    let (router, _) = setup(RouterConfig::standard());
    let err = router.route(request(halo(1))).unwrap_err();
    assert_eq!(err, RouteError::Unreachable);
}

#[test]
fn full_queue_is_busy_503_and_frees_up() {
    let mut config = RouterConfig::standard();
    config.link_capacity = 2;
    let (router, _) = setup(config);
    let _session = router.attach_link(link(1));
    let a = router.route(request(halo(1))).unwrap();
    let _b = router.route(request(halo(1))).unwrap();
    let err = router.route(request(halo(1))).unwrap_err();
    assert_eq!(err, RouteError::Busy);
    assert!(a.cancel());
    let _c = router.route(request(halo(1))).unwrap();
}

#[test]
fn link_loads_count_queued_queries_and_busy_refusals_across_sessions() {
    let mut config = RouterConfig::standard();
    config.link_capacity = 2;
    let (router, _) = setup(config);
    let session = router.attach_link(link(1));
    let a = router.route(request(halo(1))).unwrap();
    let _b = router.route(request(halo(1))).unwrap();
    assert_eq!(
        router.route(request(halo(1))).unwrap_err(),
        RouteError::Busy
    );
    assert_eq!(
        router.route(request(halo(1))).unwrap_err(),
        RouteError::Busy
    );
    let load = |router: &Router| {
        router
            .link_loads()
            .into_iter()
            .find(|l| l.link == link(1))
            .expect("the link is known")
    };
    let now = load(&router);
    assert!(now.attached);
    assert_eq!(now.in_flight, 2);
    assert_eq!(now.busy_refusals, 2);
    assert!(a.cancel());
    assert_eq!(load(&router).in_flight, 1);
    // A detach empties the queue; the refusals stay counted for the Link.
    drop(session);
    let detached = load(&router);
    assert!(!detached.attached);
    assert_eq!(detached.in_flight, 0);
    let _again = router.attach_link(link(1));
    assert_eq!(load(&router).busy_refusals, 2);
}

#[test]
fn detach_fails_every_in_flight_query_at_once() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    let mut dispatches: Vec<_> = (0..5)
        .map(|_| router.route(request(halo(1))).unwrap())
        .collect();
    // Two were taken by the Link (executing), three still queued.
    let _ = session.try_next_job().unwrap().unwrap();
    let _ = session.try_next_job().unwrap().unwrap();
    for d in &mut dispatches {
        assert!(poll_once(d).is_pending());
    }
    session.detach();
    for d in dispatches {
        assert_eq!(block_on(d).unwrap_err(), RouteError::Unreachable);
    }
    assert_eq!(
        router.route(request(halo(1))).unwrap_err(),
        RouteError::Unreachable
    );
}

#[test]
fn reattach_replaces_the_old_session() {
    let (router, _) = setup(RouterConfig::standard());
    let mut old = router.attach_link(link(1));
    let d = router.route(request(halo(1))).unwrap();
    let mut new = router.attach_link(link(1));
    assert!(old.is_detached());
    assert!(block_on(old.next_job()).is_none());
    assert_eq!(block_on(d).unwrap_err(), RouteError::Unreachable);
    drop(old); // must not detach the newer session
    let d2 = router.route(request(halo(1))).unwrap();
    let job = new.try_next_job().unwrap().unwrap();
    assert_eq!(
        new.complete(job.query_id, Ok(output(2))),
        Delivery::Delivered
    );
    assert_eq!(block_on(d2).unwrap(), output(2));
}

#[test]
fn dropping_dispatch_cancels_and_link_never_sees_the_job() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    let d = router.route(request(halo(1))).unwrap();
    let qid = d.query_id();
    drop(d);
    assert_eq!(session.in_flight(), 0);
    assert!(session.try_next_job().unwrap().is_none());
    assert_eq!(session.complete(qid, Ok(output(1))), Delivery::Late);
}

#[test]
fn sweeper_times_out_overdue_queries_once() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    let mut req = request(halo(1));
    req.max_time_in_queue = Some(Duration::from_millis(100));
    let d = router.route(req).unwrap();
    let job = session.try_next_job().unwrap().unwrap();
    assert_eq!(
        router.expire_overdue(Timestamp::from_millis(job.deadline.as_millis() - 1)),
        0
    );
    assert_eq!(router.expire_overdue(job.deadline), 1);
    assert_eq!(router.expire_overdue(job.deadline), 0);
    let err = block_on(d).unwrap_err();
    assert_eq!(err, RouteError::Timeout);
    assert_eq!(
        session.complete(job.query_id, Ok(output(1))),
        Delivery::Late
    );
    assert_eq!(session.in_flight(), 0);
}

#[test]
fn sweeper_visits_only_sessions_with_queries_in_flight() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    let _idle = router.attach_link(link(2));
    assert_eq!(
        router.busy_sessions(),
        0,
        "attached but idle Links are not swept"
    );
    let mut req = request(halo(1));
    req.max_time_in_queue = Some(Duration::from_millis(100));
    let d = router.route(req).unwrap();
    assert_eq!(router.busy_sessions(), 1);
    let job = session.try_next_job().unwrap().unwrap();
    // Still in flight: the sweep keeps it listed, and times it out when due.
    assert_eq!(router.expire_overdue(T0), 0);
    assert_eq!(router.busy_sessions(), 1);
    assert_eq!(router.expire_overdue(job.deadline), 1);
    assert_eq!(block_on(d).unwrap_err(), RouteError::Timeout);
    // Idle after its timeout: the same sweep dropped it; a new query lists it again.
    assert_eq!(router.busy_sessions(), 0);
    let mut req = request(halo(1));
    req.max_time_in_queue = Some(Duration::from_millis(100));
    let d = router.route(req).unwrap();
    assert_eq!(router.busy_sessions(), 1);
    let job = session.try_next_job().unwrap().unwrap();
    assert_eq!(
        router.expire_overdue(job.deadline),
        1,
        "a re-listed session is swept"
    );
    assert_eq!(block_on(d).unwrap_err(), RouteError::Timeout);
}

#[test]
fn sweeper_leaves_queries_before_their_deadline() {
    let (router, _) = setup(RouterConfig::standard());
    let _session = router.attach_link(link(1));
    let mut d = router.route(request(halo(1))).unwrap();
    assert_eq!(router.expire_overdue(T0), 0);
    assert!(poll_once(&mut d).is_pending());
}

#[test]
fn expire_after_completion_returns_the_completion() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    let d = router.route(request(halo(1))).unwrap();
    let job = session.try_next_job().unwrap().unwrap();
    assert_eq!(
        session.complete(job.query_id, Ok(output(4))),
        Delivery::Delivered
    );
    assert_eq!(d.expire().unwrap(), output(4));
    assert_eq!(session.in_flight(), 0);
}

#[test]
fn expire_before_completion_wins_with_504() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    let d = router.route(request(halo(1))).unwrap();
    let job = session.try_next_job().unwrap().unwrap();
    assert_eq!(d.expire().unwrap_err(), RouteError::Timeout);
    assert_eq!(
        session.complete(job.query_id, Ok(output(4))),
        Delivery::Late
    );
    assert_eq!(session.in_flight(), 0);
}

#[test]
fn oversized_result_is_413() {
    let mut config = RouterConfig::standard();
    config.max_result_bytes = 16;
    let (router, _) = setup(config);
    let mut session = router.attach_link(link(1));
    let d = router.route(request(halo(1))).unwrap();
    let job = session.try_next_job().unwrap().unwrap();
    assert_eq!(
        session.complete(job.query_id, Ok(output(17))),
        Delivery::Delivered
    );
    let err = block_on(d).unwrap_err();
    assert_eq!(
        err,
        RouteError::TooLarge {
            size: 17,
            limit: 16
        }
    );
}

#[test]
fn link_failures_map_to_their_statuses() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    let cases = [
        QueryFailure::StaleEpoch,
        QueryFailure::Expired,
        QueryFailure::Database {
            error_type: "SqlException".into(),
            error_code: "207".into(),
            message: "invalid column".into(),
        },
    ];
    for failure in cases {
        let d = router.route(request(halo(1))).unwrap();
        let job = session.try_next_job().unwrap().unwrap();
        let _ = session.complete(job.query_id, Err(failure.clone()));
        let err = block_on(d).unwrap_err();
        assert_eq!(err, RouteError::Failed(failure));
    }
}

#[test]
fn max_time_in_queue_above_60s_is_400() {
    let (router, _) = setup(RouterConfig::standard());
    let _session = router.attach_link(link(1));
    let mut req = request(halo(1));
    req.max_time_in_queue = Some(Duration::from_millis(60_001));
    let err = router.route(req).unwrap_err();
    assert!(matches!(err, RouteError::InvalidRequest(_)), "{err:?}");
}

#[test]
fn heartbeat_updates_liveness_in_place() {
    let (router, mut registry) = setup(RouterConfig::standard());
    let record = router.resolve(halo(1)).unwrap();
    let later = T0.saturating_add(Duration::from_secs(5));
    let changes = registry
        .apply(&Event::Heartbeat { link: link(1) }, later)
        .unwrap();
    router.apply_changes(&registry, &changes);
    // The very record published before the heartbeat sees it: nothing was rebuilt.
    assert_eq!(record.last_heard(), later);
    assert_eq!(router.last_heard(link(1)), Some(later));
    // Liveness never goes backwards.
    router.heard(link(1), T0);
    assert_eq!(record.last_heard(), later);
}

#[test]
fn a_sessions_heartbeat_reaches_the_links_published_records() {
    let (router, _registry) = setup(RouterConfig::standard());
    let record = router.resolve(halo(1)).unwrap();
    let session = router.attach_link(link(1));
    let later = T0.saturating_add(Duration::from_secs(5));
    session.heard(later);
    assert_eq!(record.last_heard(), later);
    assert_eq!(router.last_heard(link(1)), Some(later));
    // Never backwards, whichever way it comes.
    session.heard(T0);
    router.heard(link(1), T0);
    assert_eq!(router.last_heard(link(1)), Some(later));
    // A Link the router has not seen yet is entered by its first heartbeat.
    assert_eq!(router.last_heard(link(9)), None);
    router.heard(link(9), later);
    assert_eq!(router.last_heard(link(9)), Some(later));
}

#[test]
fn liveness_carries_the_interval_asked_only_while_a_session_is_attached() {
    let (router, _registry) = setup(RouterConfig::standard());
    let every = Duration::from_secs(30);
    let session = router.attach_link(link(1));
    // Attached, not yet asked: no interval.
    assert_eq!(router.liveness(link(1)).unwrap().heartbeat, None);
    session.set_heartbeat_interval(every);
    let later = T0.saturating_add(Duration::from_secs(5));
    session.heard(later);
    let live = router.liveness(link(1)).unwrap();
    assert_eq!((live.last_heard, live.heartbeat), (later, Some(every)));
    assert_eq!(session.heartbeat_interval(), Some(every));
    // A newer session of the Link starts unasked; the old one's interval is gone.
    let newer = router.attach_link(link(1));
    assert_eq!(router.liveness(link(1)).unwrap().heartbeat, None);
    newer.set_heartbeat_interval(Duration::from_secs(10));
    drop(session);
    assert_eq!(
        router.liveness(link(1)).unwrap().heartbeat,
        Some(Duration::from_secs(10))
    );
    // Detached: the last-heard time stays, the interval goes.
    drop(newer);
    let live = router.liveness(link(1)).unwrap();
    assert_eq!((live.last_heard, live.heartbeat), (later, None));
    assert_eq!(router.liveness(link(9)), None);
}

#[test]
fn publish_demotes_the_previous_holder_first_and_drops_stale_epochs() {
    let (router, registry) = setup(RouterConfig::standard());
    let current = SiteRoute::from_site(registry.site(halo(1)).unwrap());
    let mut rival = current.clone();
    rival.halo_guid = halo(7);
    rival.link = link(7);
    rival.epoch = current.epoch.next().unwrap();
    assert_eq!(router.publish(rival.clone()), Published::Applied);
    assert!(!router.resolve(halo(1)).unwrap().is_authoritative());
    assert!(router.resolve(halo(7)).unwrap().is_authoritative());
    // The old holder re-published with its old epoch is refused.
    assert_eq!(router.publish(current), Published::Stale);
    assert!(!router.resolve(halo(1)).unwrap().is_authoritative());
}

#[test]
fn policy_swap_reaches_readers() {
    let (router, _) = setup(RouterConfig::standard());
    let _session = router.attach_link(link(1));
    assert!(router.check(&request(halo(1))).is_ok());
    router.set_policy(policy([2]));
    assert_eq!(
        denied_code(router.check(&request(halo(1))).unwrap_err()),
        DenyCode::UnknownSite,
        "a practice no longer enabled is invisible"
    );
}

#[test]
fn poll_after_ready_does_not_hang() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    let mut d = router.route(request(halo(1))).unwrap();
    let job = session.try_next_job().unwrap().unwrap();
    let _ = session.complete(job.query_id, Ok(output(1)));
    assert!(matches!(poll_once(&mut d), Poll::Ready(Ok(_))));
    assert!(matches!(
        poll_once(&mut d),
        Poll::Ready(Err(RouteError::Cancelled))
    ));
}

#[test]
fn router_and_handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Router>();
    send_sync::<crate::Route>();
    send_sync::<crate::Dispatch>();
    send::<crate::LinkSession>();
    send::<crate::Job>();
}

#[test]
fn cancelled_jobs_piling_up_unread_make_the_site_busy_not_unreachable() {
    let mut config = RouterConfig::standard();
    config.link_capacity = 2;
    let (router, _) = setup(config);
    let mut session = router.attach_link(link(1));
    // The Link reads nothing; callers keep giving up. Live places free up, dead jobs
    // stay queued until the channel (twice the capacity) is full.
    for _ in 0..4 {
        drop(router.route(request(halo(1))).unwrap());
    }
    assert_eq!(
        router.route(request(halo(1))).unwrap_err(),
        RouteError::Busy
    );
    assert_eq!(session.in_flight(), 0);
    // Once the Link drains (skipping the dead jobs), routing works again.
    assert!(session.try_next_job().unwrap().is_none());
    let d = router.route(request(halo(1))).unwrap();
    let job = session.try_next_job().unwrap().unwrap();
    assert_eq!(job.query_id, d.query_id());
}

#[test]
fn bulk_load_publishes_what_one_change_at_a_time_would_in_one_swap() {
    let mut registry = Registry::new();
    // Practice 1: two sites, the first holds authority, then support promotes the
    // second (epoch 2). Practice 2: one site. Practice 3: a site removed again.
    add_site(&mut registry, link(1), halo(1), 1);
    add_site(&mut registry, link(2), halo(2), 1);
    add_site(&mut registry, link(1), halo(3), 2);
    add_site(&mut registry, link(2), halo(4), 3);
    registry
        .apply(
            &Event::Promoted {
                halo_guid: halo(2),
                actor: "support".into(),
                reason: "test".into(),
            },
            T0,
        )
        .unwrap();
    registry
        .apply(
            &Event::SiteRemoved {
                link: link(2),
                halo_guid: halo(4),
            },
            T0,
        )
        .unwrap();
    let one_by_one = Router::new(RouterConfig::standard());
    let all: Vec<_> = registry
        .sites()
        .map(|s| halo_tenancy::Change::SiteUpserted(s.halo_guid()))
        .collect();
    one_by_one.apply_changes(&registry, &all);

    let bulk = Router::new(RouterConfig::standard());
    // A record the registry does not know stays; one it holds as removed goes.
    let stray = SiteRoute {
        halo_guid: halo(9),
        authoritative: false,
        ..SiteRoute::from_site(registry.site(halo(3)).unwrap())
    };
    assert_eq!(bulk.publish(stray.clone()), Published::Applied);
    // A holder of practice 2 the registry does not know: the load's holder demotes it.
    let rival = SiteRoute {
        halo_guid: halo(8),
        ..SiteRoute::from_site(registry.site(halo(3)).unwrap())
    };
    assert_eq!(bulk.publish(rival), Published::Applied);
    assert!(bulk.resolve(halo(8)).unwrap().is_authoritative());
    let removed = SiteRoute {
        status: halo_tenancy::SiteStatus::Active,
        ..SiteRoute::from_site(registry.site(halo(4)).unwrap())
    };
    assert_eq!(bulk.publish(removed), Published::Applied);
    assert!(bulk.resolve(halo(4)).is_some());
    bulk.load(&registry);

    for n in 1..=4 {
        assert_eq!(
            bulk.resolve(halo(n)).map(|r| r.site().clone()),
            one_by_one.resolve(halo(n)).map(|r| r.site().clone()),
            "site {n}"
        );
    }
    assert!(
        bulk.resolve(halo(4)).is_none(),
        "a removed site is unpublished"
    );
    assert!(bulk.resolve(halo(2)).unwrap().is_authoritative());
    assert!(!bulk.resolve(halo(1)).unwrap().is_authoritative());
    assert_eq!(bulk.resolve(halo(9)).unwrap().site(), &stray);
    assert!(
        !bulk.resolve(halo(8)).unwrap().is_authoritative(),
        "one holder"
    );
    assert!(bulk.resolve(halo(3)).unwrap().is_authoritative());
    bulk.unpublish(halo(8));
    assert_eq!(bulk.site_count(), 4);
    // Both copies hold the load: swap them once more and read again.
    bulk.unpublish(halo(9));
    assert_eq!(bulk.site_count(), 3);
    assert!(bulk.resolve(halo(2)).unwrap().is_authoritative());
    // The writer's bookkeeping came with it: the old holder's stale record is refused,
    // and a promotion still demotes the holder the load published.
    let old = SiteRoute {
        authoritative: true,
        epoch: halo_ids::Epoch::new(bulk.resolve(halo(1)).unwrap().epoch().get() - 1),
        ..bulk.resolve(halo(1)).unwrap().site().clone()
    };
    assert_eq!(bulk.publish(old), Published::Stale);
    let mut next = bulk.resolve(halo(1)).unwrap().site().clone();
    next.authoritative = true;
    next.epoch = next.epoch.next().unwrap();
    assert_eq!(bulk.publish(next), Published::Applied);
    assert!(!bulk.resolve(halo(2)).unwrap().is_authoritative());
    assert!(bulk.resolve(halo(1)).unwrap().is_authoritative());
}

/// An outbox the tests can tell apart (`Router::route_direct`).
fn outbox(name: &'static str) -> crate::Outbox {
    std::sync::Arc::new(name)
}

fn outbox_name(outbox: &crate::Outbox) -> &'static str {
    outbox
        .downcast_ref::<&'static str>()
        .copied()
        .expect("a test outbox")
}

#[test]
fn a_direct_route_hands_the_job_back_with_the_routed_sessions_outbox() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    assert!(session.set_outbox(outbox("first")));
    assert!(!session.set_outbox(outbox("second")), "set once");
    let (dispatch, handoff) = router.route_direct(request(halo(1))).unwrap();
    let handoff = handoff.expect("handed back, not queued");
    assert_eq!(outbox_name(&handoff.outbox), "first");
    let job = handoff.job;
    assert_eq!(job.query_id, dispatch.query_id());
    assert_eq!(job.halo_guid, halo(1));
    assert_eq!(job.link, link(1));
    assert_eq!(job.epoch, router.resolve(halo(1)).unwrap().epoch());
    assert_eq!(job.deadline, dispatch.deadline());
    // Nothing queued for the session's task; the place is taken all the same.
    assert!(session.try_next_job().unwrap().is_none());
    assert_eq!(session.in_flight(), 1);
    assert_eq!(
        session.complete(job.query_id, Ok(output(4))),
        Delivery::Delivered
    );
    assert_eq!(block_on(dispatch).unwrap(), output(4));
    assert_eq!(session.in_flight(), 0);
    // `route` still queues, outbox or not.
    let queued = router.route(request(halo(1))).unwrap();
    assert_eq!(
        session.try_next_job().unwrap().unwrap().query_id,
        queued.query_id()
    );
}

#[test]
fn a_direct_route_to_a_session_without_an_outbox_queues() {
    let (router, _) = setup(RouterConfig::standard());
    let mut session = router.attach_link(link(1));
    let (dispatch, handoff) = router.route_direct(request(halo(1))).unwrap();
    assert!(handoff.is_none());
    let job = session.try_next_job().unwrap().expect("queued");
    assert_eq!(job.query_id, dispatch.query_id());
}

#[test]
fn direct_routes_keep_the_links_cap_deadlines_cancellation_and_detach() {
    let config = RouterConfig {
        link_capacity: 2,
        ..RouterConfig::standard()
    };
    let (router, _) = setup(config);
    let session = router.attach_link(link(1));
    session.set_outbox(outbox("only"));
    let (a, _) = router.route_direct(request(halo(1))).unwrap();
    let (mut b, _) = router.route_direct(request(halo(1))).unwrap();
    assert_eq!(
        router.route_direct(request(halo(1))).unwrap_err(),
        RouteError::Busy
    );
    // Cancelling frees its place; a late answer to it is dropped.
    let cancelled = a.query_id();
    drop(a);
    assert_eq!(session.in_flight(), 1);
    assert_eq!(session.complete(cancelled, Ok(output(1))), Delivery::Late);
    // The sweeper times out a handed-off query at its deadline, once.
    let (c, _) = router.route_direct(request(halo(1))).unwrap();
    assert_eq!(router.expire_overdue(c.deadline()), 2);
    assert_eq!(block_on(c).unwrap_err(), RouteError::Timeout);
    assert_eq!(block_on(&mut b).unwrap_err(), RouteError::Timeout);
    assert_eq!(session.in_flight(), 0);
    // Detach fails what is in flight at once.
    let (mut d, _) = router.route_direct(request(halo(1))).unwrap();
    assert!(poll_once(&mut d).is_pending());
    session.detach();
    assert_eq!(block_on(d).unwrap_err(), RouteError::Unreachable);
    assert_eq!(
        router.route_direct(request(halo(1))).unwrap_err(),
        RouteError::Unreachable
    );
}

#[test]
fn a_direct_route_after_a_reattach_carries_the_new_sessions_outbox() {
    let (router, _) = setup(RouterConfig::standard());
    let old = router.attach_link(link(1));
    old.set_outbox(outbox("old"));
    let (before, handoff) = router.route_direct(request(halo(1))).unwrap();
    assert_eq!(outbox_name(&handoff.unwrap().outbox), "old");
    let new = router.attach_link(link(1));
    new.set_outbox(outbox("new"));
    assert_eq!(block_on(before).unwrap_err(), RouteError::Unreachable);
    let (after, handoff) = router.route_direct(request(halo(1))).unwrap();
    let job = handoff.unwrap();
    assert_eq!(outbox_name(&job.outbox), "new");
    // The old session cannot answer the new session's query.
    assert_eq!(
        old.complete(job.job.query_id, Ok(output(1))),
        Delivery::Late
    );
    assert_eq!(
        new.complete(job.job.query_id, Ok(output(2))),
        Delivery::Delivered
    );
    assert_eq!(block_on(after).unwrap(), output(2));
}
