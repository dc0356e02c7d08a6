//! The tenancy model of Halo Connect as a deterministic state machine over serde events.
//!
//! # Model
//!
//! ```text
//! Link (LinkGuid, Environment, version, last heard)
//!  └── Site = one database as seen by one Link install (HaloGuid, PMS type, practice
//!       │      name, PMS version, catalogues, demo flag, status, authority, epoch)
//!       ├── parent CRN  (exactly one: the PMS ID used for routing)
//!       └── branch CRNs (zero or more, one per branch location; never route)
//! ```
//!
//! A [`Registry`] holds every [`Link`], [`Site`] and authority [`Group`]. It changes
//! only through [`Registry::apply`], which takes an [`Event`] and the time `now`
//! (this crate never reads a clock) and returns the [`Change`]s a reader must
//! refresh. A refused event returns a [`TenancyError`] and changes nothing.
//! ([`Registry::apply_into`] appends them to a caller's buffer instead, so that a
//! writer or a replay allocates nothing per event for them.)
//! Replaying the same events with the same times from an empty registry gives an
//! equal registry ([`Registry::replay`]); the events, wrapped in [`LogEntry`], are
//! the durable log format and are versioned, as JSON or in a compact binary form
//! ([`LogEntry::write_binary`], [`LogEntry::from_binary`]). [`Registry::to_snapshot`] and
//! [`Registry::from_snapshot`] save and restore the whole state (a versioned
//! [`RegistrySnapshot`]) so that recovery need not replay the whole log.
//!
//! # Rules
//!
//! - **Ownership.** A Halo GUID belongs to the Link that attached it. Any event about
//!   it from another Link is refused ([`TenancyError::SiteOwnedByOtherLink`]), without
//!   naming the owner.
//! - **Lifecycle.** `initialising` (attached) → `active` ([`Event::SiteReady`]) →
//!   `removed` ([`Event::SiteRemoved`]) or `uninstalled` ([`Event::LinkUninstalled`],
//!   or replaced by [`Event::Reinstalled`]). Removed and uninstalled are terminal: the
//!   Halo GUID stays readable for status queries but never changes again. Only an
//!   active, authoritative site is routable ([`Site::is_routable`]).
//! - **Identity.** The Link reads a database's identity (PMS type, parent CRN, branch
//!   CRNs, practice name, demo flag) from the database. Re-attaching a live site may
//!   update its details but not its PMS type, CRN or demo flag.
//! - **Demo copies.** A demo or de-identified database under a Production Link is
//!   refused ([`TenancyError::DemoInProduction`]). Under Stage it routes by its fake
//!   CRN (the first eight characters of its Halo GUID, [`halo_ids::HaloGuid::fake_crn`]);
//!   a lookup by its real, non-unique CRN gives [`CrnLookup::DemoRealCrn`] and never
//!   routes to the copy. **A copy never shadows a practice**: where a live database
//!   holds that CRN as its own (a real practice in Stage), the lookup resolves to it,
//!   so that announcing a copy cannot hide a practice from integrators. A fake CRN
//!   that collides with a live database's CRN is refused.
//! - **Branch CRNs.** Kept per site and indexed per (environment, PMS type). A branch
//!   CRN claimed by two different parents, a branch CRN that is a live parent CRN,
//!   and a parent CRN that is a known branch CRN are all refused. Sites sharing one
//!   parent (a backup) may claim the same branch CRNs. A lookup gives
//!   [`CrnLookup::Branch`] and never reveals the parent. A demo copy's branch CRNs are
//!   kept but not indexed (they are copies too).
//! - **What an integrator is told.** [`Registry::lookup_crn_for`] names a branch CRN
//!   or a demo copy's real CRN as such only to a caller entitled to the practice it
//!   belongs to (the branch's parent; the copies' real CRN or one of their fake
//!   CRNs); to anyone else it is [`CrnLookup::Unknown`], like a CRN nobody has.
//! - **A Link's hello** is one batch of events built by [`Registration`]; its
//!   [`Registration::outcomes`] tells, per announced Halo GUID, whether the database
//!   was registered, was already active (a reconnection, not an error), or was
//!   refused and why ([`SiteRegistration`]).
//! - **Heartbeats** update last-heard times only (the Link's and its live sites').
//!   [`Availability`] is derived from last-heard with [`AvailabilityConfig`]
//!   thresholds at query time; it is not state, and it never moves authority.
//! - **Authority.** Each site belongs to the group of its (environment, PMS type,
//!   routing CRN); [`halo_authority`] decides the holder and epoch (see its docs for
//!   the election rules). Joining, leaving, reinstalling and promoting are the only
//!   events that reach the election. A site being offline is deliberately not one of
//!   them: a backup with stale data serving as truth is worse than a short outage, so
//!   moving authority is a deliberate act by support ([`Event::Promoted`]).
//! - **Reinstall.** [`Event::Reinstalled`] comes from the same Link GUID and names the
//!   previous Halo GUID; the new Halo GUID inherits the identity and, if the previous
//!   one held authority (or vacated it and nobody has held it since), the authority,
//!   with a new epoch. A reinstall from another Link is refused.
//!
//! ```
//! use halo_ids::{Environment, HaloGuid, LinkGuid, PmsType, Timestamp};
//! use halo_tenancy::{CrnLookup, Event, Registry, SiteIdentity};
//!
//! let link = LinkGuid::from_u128(1)?;
//! let halo_guid = HaloGuid::from_u128(2)?;
//! let crn = "AB123".parse()?;
//! let mut registry = Registry::new();
//! let now = Timestamp::from_millis(1_000);
//! registry
//!     .apply(&Event::LinkRegistered { link, environment: Environment::Production, version: "1.0".into() }, now)
//!     .unwrap();
//! let identity = SiteIdentity {
//!     pms_type: PmsType::D4w,
//!     parent_crn: crn,
//!     branch_crns: vec![],
//!     practice_name: "Smile Dental".into(),
//!     pms_version: "9.6".into(),
//!     catalogues: vec![],
//!     is_demo: false,
//! };
//! registry.apply(&Event::SiteAttached { link, halo_guid, identity }, now).unwrap();
//! assert_eq!(registry.lookup_crn(Environment::Production, PmsType::D4w, crn), CrnLookup::Site(halo_guid));
//! assert!(registry.site(halo_guid).unwrap().is_authoritative());
//! # Ok::<(), halo_ids::IdError>(())
//! ```

mod apply;
mod availability;
mod change;
mod error;
mod event;
mod event_bin;
mod event_de;
mod history;
mod registration;
mod registry;
mod site;
mod snapshot;

pub use availability::{Availability, AvailabilityConfig};
pub use change::Change;
pub use error::{TenancyError, TenancyErrorClass, TextField, TextRule};
pub use event::{Catalogue, EVENT_VERSION, Event, LogEntry, SiteIdentity};
pub use event_bin::BinaryEventError;
pub use history::{AuthorityHistory, HistoryViolation};
pub use registration::{Registration, RegistrationRefused, SiteRegistration};
pub use registry::{CrnLookup, Group, Promotion, Registry};
pub use site::{Link, LinkStatus, Site, SiteStatus};
pub use snapshot::{RegistrySnapshot, SNAPSHOT_VERSION};

pub use halo_authority::{Epoch, GroupKey};

#[cfg(test)]
mod tests;
