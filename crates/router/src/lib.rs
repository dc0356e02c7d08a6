//! Lock-free query router: resolves sites, checks authority and policy, dispatches to Link sessions.
//!
//! A [`Router`] holds one compact [`Route`] record per live site in a lock-free table
//! (a left-right pair of `HashMap`s, chosen by measurement: see `router.rs`), the current
//! [`halo_policy::Policy`] snapshot in an `ArcSwap`, and one entry per Link with its
//! liveness (an atomic last-heard time) and its attached [`LinkSession`], if any.
//!
//! - **Read path** ([`Router::route`], [`Router::decide`]): resolve the Halo GUID,
//!   evaluate the policy (key first, so an unauthenticated caller learns nothing about
//!   sites; then visibility, environment, status, pairing, authority, components), re-check
//!   status and authority, take a rate-limit token, reserve a place on the Link's bounded
//!   queue and enqueue a [`Job`] stamped with a [`QueryId`], the authority epoch and its
//!   deadlines. No lock anywhere on it.
//! - **Write path** ([`Router::apply_changes`], [`Router::set_policy`],
//!   [`Router::heard`]): the Cloud's single writer feeds registry changes and policy
//!   snapshots in; records are replaced whole, readers never stop, heartbeats are one
//!   atomic `fetch_max`. The table never holds two authoritative sites of one group.
//! - **Completion**: the Link's connection task takes jobs from its [`LinkSession`]
//!   ([`LinkSession::next_job`]) and answers with [`LinkSession::complete`]; the caller
//!   awaits its [`Dispatch`]. Completion, timeout ([`Dispatch::expire`],
//!   [`Router::expire_overdue`]), cancellation (dropping the `Dispatch`) and detach race
//!   for one compare-and-swap: exactly one wins and releases the in-flight slot.
//! - **Naming a practice** ([`resolve_crn`]): the CRN an integrator names in find
//!   sites or pair site becomes the PMS ID to authorise, or a [`CrnRefusal`] with
//!   guidance for a branch CRN or a demo copy's real CRN, given only to an
//!   integrator entitled to that practice; to anyone else such a CRN is answered
//!   exactly like an unknown one.
//! - Errors are [`RouteError`]s, domain errors with a class ([`RouteErrorClass`]) and no
//!   HTTP status: the Cloud maps every variant (and every [`QueryFailure`] and
//!   [`CrnRefusal`]) in its one status table.
//!
//! The crate reads no clock (time comes in as [`halo_ids::Timestamp`]s) and needs no
//! runtime: [`Dispatch`] and [`NextJob`] are plain futures that work on any executor.
//!
//! ```
//! use std::sync::Arc;
//! use halo_ids::{Environment, HaloGuid, LinkGuid, PmsType, Timestamp};
//! use halo_policy::{extract_components, ExecutionMode, Grants, KeyHash, PolicyEvent};
//! use halo_router::{Command, Delivery, QueryOutput, RouteRequest, Router, RouterConfig};
//! use halo_tenancy::{Event, Registry, SiteIdentity};
//!
//! let (link, halo_guid) = (LinkGuid::from_u128(1)?, HaloGuid::from_u128(2)?);
//! let now = Timestamp::from_millis(1_000);
//! let router = Router::new(RouterConfig::standard());
//!
//! // The writer: registry events in, changes to the router.
//! let mut registry = Registry::new();
//! let identity = SiteIdentity {
//!     pms_type: PmsType::D4w, parent_crn: "AB123".parse()?, branch_crns: vec![],
//!     practice_name: "Smile Dental".into(), pms_version: "1".into(),
//!     catalogues: vec![], is_demo: false,
//! };
//! for event in [
//!     Event::LinkRegistered { link, environment: Environment::Stage, version: "1".into() },
//!     Event::SiteAttached { link, halo_guid, identity },
//!     Event::SiteReady { link, halo_guid },
//! ] {
//!     let changes = registry.apply(&event, now).expect("valid event");
//!     router.apply_changes(&registry, &changes);
//! }
//! let acme: halo_policy::IntegratorId = "acme".parse()?;
//! let pms_id: halo_ids::PmsId = "D4w:AB123".parse()?;
//! let mut grants = Grants::default();
//! for event in [
//!     PolicyEvent::IntegratorEnabled { integrator: acme.clone(), pms_type: PmsType::D4w },
//!     PolicyEvent::ComponentsAuthorised {
//!         integrator: acme.clone(), pms_type: PmsType::D4w, catalogues: vec![],
//!         tables: vec!["patients".into()], procedures: vec![], allow_write: false,
//!     },
//!     PolicyEvent::KeyIssued {
//!         integrator: acme.clone(), environment: Environment::Stage, key_hash: KeyHash::of("k1"),
//!     },
//!     PolicyEvent::PracticeEnabled { integrator: acme.clone(), pms_id },
//!     PolicyEvent::PracticePaired { integrator: acme.clone(), pms_id, environment: Environment::Stage },
//! ] {
//!     grants.apply(&event).expect("valid grant");
//! }
//! router.set_policy(Arc::new(grants.compile()));
//!
//! // The Link's connection task attaches; an integrator request is routed to it.
//! let mut session = router.attach_link(link);
//! let dispatch = router.route(RouteRequest {
//!     key: "k1", caller_ip: None, halo_guid, now, max_time_in_queue: None, catalogue: None,
//!     components: Arc::new(extract_components("SELECT * FROM Patients").expect("parses")),
//!     command: Command {
//!         text: "SELECT * FROM Patients".into(), mode: ExecutionMode::Reader, parameters: None,
//!         procedure: false,
//!     },
//! }).expect("routed");
//! let job = session.try_next_job().expect("attached").expect("queued");
//! assert_eq!(job.halo_guid, halo_guid);
//! // `data` is the base64 of the JSON rows ("[]"); `size` counts the JSON's bytes.
//! let output = QueryOutput { data: "W10=".into(), size: 2, rows: 0, sql_execution: Default::default() };
//! assert_eq!(session.complete(job.query_id, Ok(output)), Delivery::Delivered);
//! // `dispatch.await` now yields the output (on any executor).
//! # drop(dispatch);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod busy;
mod dispatch;
mod error;
mod groups;
mod job;
mod link;
mod outcome;
mod practice;
mod route;
mod router;
mod sync;

pub use dispatch::{Dispatch, QueryId};
pub use error::{RouteError, RouteErrorClass};
pub use job::{Command, Job, Paging};
pub use link::{Delivery, Handoff, LinkSession, Liveness, NextJob, Outbox};
pub use outcome::{QueryFailure, QueryOutput};
pub use practice::{CrnRefusal, resolve_crn};
pub use route::{Route, SiteRoute};
pub use router::{
    Authorised, LinkLoad, Published, RouteLimits, RouteRequest, Router, RouterConfig, check_route,
};

#[cfg(all(test, not(loom)))]
mod fixture;
#[cfg(all(test, not(loom)))]
mod load_props;
#[cfg(all(test, loom))]
mod loom_busy;
#[cfg(all(test, loom))]
mod loom_left_right;
#[cfg(all(test, loom))]
mod loom_slot;
#[cfg(all(test, not(loom)))]
mod tests;
