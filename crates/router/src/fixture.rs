//! Test fixtures shared by the unit tests: a registry, a policy and a tiny executor.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};
use halo_policy::{Grants, IntegratorId, Policy, ReadAccess, extract_components};
use halo_tenancy::{Change, Event, Registry, SiteIdentity};

use crate::{Command, RouteRequest};
use halo_policy::ExecutionMode;

pub(crate) const KEY: &str = "stage-key-1";
pub(crate) const T0: Timestamp = Timestamp::from_millis(1_000_000);

pub(crate) fn link(n: u128) -> LinkGuid {
    LinkGuid::from_u128(n).unwrap()
}

pub(crate) fn halo(n: u128) -> HaloGuid {
    HaloGuid::from_u128(0x1000 + n).unwrap()
}

pub(crate) fn crn(n: u32) -> Crn {
    format!("CRN{n}").parse().unwrap()
}

pub(crate) fn pms_id(n: u32) -> PmsId {
    PmsId::new(PmsType::D4w, crn(n))
}

/// Registers `link` (Stage) and attaches + readies `site` with practice `practice`.
pub(crate) fn add_site(
    registry: &mut Registry,
    link: LinkGuid,
    site: HaloGuid,
    practice: u32,
) -> Vec<Change> {
    let mut changes = Vec::new();
    if registry.link(link).is_none() {
        changes.extend(
            registry
                .apply(
                    &Event::LinkRegistered {
                        link,
                        environment: Environment::Stage,
                        version: "1.0".into(),
                    },
                    T0,
                )
                .unwrap(),
        );
    }
    let identity = SiteIdentity {
        pms_type: PmsType::D4w,
        parent_crn: crn(practice),
        branch_crns: Vec::new(),
        practice_name: format!("Practice {practice}"),
        pms_version: "1".into(),
        catalogues: vec![halo_tenancy::Catalogue {
            name: "d4w".into(),
            is_default: true,
        }],
        is_demo: false,
    };
    changes.extend(
        registry
            .apply(
                &Event::SiteAttached {
                    link,
                    halo_guid: site,
                    identity,
                },
                T0,
            )
            .unwrap(),
    );
    changes.extend(
        registry
            .apply(
                &Event::SiteReady {
                    link,
                    halo_guid: site,
                },
                T0,
            )
            .unwrap(),
    );
    changes
}

/// A policy letting integrator `acme` (Stage key [`KEY`]) read table `patients` at the
/// given practices.
pub(crate) fn policy(practices: impl IntoIterator<Item = u32>) -> Arc<Policy> {
    let acme: IntegratorId = "acme".parse().unwrap();
    let mut grants = Grants::default();
    let events = ReadAccess {
        integrator: &acme,
        pms_type: PmsType::D4w,
        environment: Environment::Stage,
        key: KEY,
        catalogues: &["d4w"],
        tables: &["patients"],
    }
    .events(practices.into_iter().map(pms_id));
    for e in &events {
        grants.apply(e).unwrap();
    }
    Arc::new(grants.compile())
}

pub(crate) fn request(site: HaloGuid) -> RouteRequest<'static> {
    RouteRequest {
        key: KEY,
        caller_ip: None,
        halo_guid: site,
        now: T0,
        max_time_in_queue: None,
        catalogue: None,
        components: Arc::new(extract_components("SELECT * FROM Patients").unwrap()),
        command: Command {
            text: "SELECT * FROM Patients".into(),
            mode: ExecutionMode::Reader,
            parameters: None,
            procedure: false,
        },
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// Polls a future once.
pub(crate) fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    std::pin::Pin::new(fut).poll(&mut cx)
}
