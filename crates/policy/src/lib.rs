//! Access policy of Halo Connect (SPEC §5): grants, compiled snapshots and a pure
//! `evaluate`.
//!
//! - Grants change only through serialisable [`PolicyEvent`]s applied to [`Grants`]
//!   (deterministic, replayable); [`Grants::compile`] builds an immutable
//!   [`Policy`] snapshot with hash-map lookups, shared behind an `Arc`.
//!   [`Grants::to_snapshot`] and [`Grants::from_snapshot`] save and restore the
//!   grants themselves (a versioned [`GrantsSnapshot`]) for durable recovery.
//! - [`extract_components`] parses a command with a real SQL parser in the dialect
//!   of the database that runs it (SQLite, after a lexical gate that refuses text
//!   the two could read differently) and lists every table, procedure and catalogue
//!   it touches; anything it cannot analyse is an error, and the command is denied
//!   (fail closed).
//! - [`evaluate`] is pure and allocation-free on the allow path; a [`Deny`] carries a
//!   [`DenyCode`], a domain code: this crate knows no HTTP status. Adapters map the
//!   codes (the Cloud in one table, `halo_cloud::status`).
//! - [`site_status_access`] decides what the site status endpoint may tell a caller
//!   (unknown and not visible are the same answer; a key of the other environment is
//!   told so only when the site is visible).
//! - [`Policy::take`] meters allowed Production requests against lock-free token
//!   buckets and monthly quotas (one atomic word each), carried across snapshots by
//!   [`Grants::compile_with`].
//!
//! # A site the integrator may not see
//!
//! An integrator asking about a site whose practice (or PMS type) is not enabled for
//! it gets **404 `UnknownSite`, "site not found"**, exactly as for a Halo GUID that
//! does not exist. A 403 would confirm that the GUID names some practice's database,
//! leaking another tenant's existence. The check happens before the environment,
//! status, pairing and authority checks, so none of those can leak it either. Only
//! once the practice is enabled for the integrator (so it is entitled to know the
//! site) do the finer codes (`WrongEnvironment`, `NotPaired`,
//! `SiteNotAuthoritative`, ...) appear. Requests naming a PMS ID instead of a site
//! ([`authorise_practice`]) get `PracticeNotEnabled` (403): that answer depends only
//! on the caller's own grants, not on whether such a site exists.
//!
//! # Pairing is per environment
//!
//! [`PolicyEvent::PracticePaired`] names the environment of the key that paired, and
//! [`evaluate`] requires a pairing in the environment of the request's key
//! ([`DenyCode::NotPaired`] otherwise): a pairing made in Stage never opens
//! Production. A `sitePaired` event (or a version-1 snapshot) from before this
//! change is read as a Stage pairing only ([`LEGACY_PAIRING_ENVIRONMENT`]).
//!
//! # Example
//!
//! ```
//! use halo_ids::{Environment, HaloGuid, PmsId, Timestamp};
//! use halo_policy::*;
//!
//! let acme: IntegratorId = "acme".parse()?;
//! let pms_id: PmsId = "D4w:AB123".parse().expect("valid pms id");
//! let mut grants = Grants::default();
//! for e in [
//!     PolicyEvent::IntegratorEnabled { integrator: acme.clone(), pms_type: pms_id.pms_type() },
//!     PolicyEvent::ComponentsAuthorised {
//!         integrator: acme.clone(), pms_type: pms_id.pms_type(),
//!         catalogues: vec![], tables: vec!["Patients".into()], procedures: vec![],
//!         allow_write: false,
//!     },
//!     PolicyEvent::PracticeEnabled { integrator: acme.clone(), pms_id },
//!     PolicyEvent::PracticePaired {
//!         integrator: acme.clone(), pms_id, environment: Environment::Stage,
//!     },
//!     PolicyEvent::KeyIssued {
//!         integrator: acme.clone(), environment: Environment::Stage,
//!         key_hash: KeyHash::of("secret-key"),
//!     },
//! ] {
//!     grants.apply(&e)?;
//! }
//! let policy = grants.compile();
//! let halo_guid: HaloGuid = "3f2504e0-4f89-11d3-9a0c-0305e82c3301".parse().expect("valid guid");
//! let site = SiteView {
//!     halo_guid, environment: Environment::Stage, pms_id, authoritative: true, active: true,
//! };
//! let components = extract_components("SELECT Name FROM [dbo].[PATIENTS]")?;
//! let req = Request {
//!     key: "secret-key", halo_guid, mode: ExecutionMode::Reader, catalogue: None,
//!     components: &components, caller_ip: None, now: Timestamp::from_millis(0),
//! };
//! assert!(matches!(evaluate(&policy, &req, Some(&site)), Decision::Allow(_)));
//! # Ok::<(), PolicyError>(())
//! ```

mod component_cache;
mod components;
mod decision;
mod error;
mod event;
mod grants;
mod integrator;
mod key;
mod limits;
mod policy;
mod shared;
mod snapshot;

pub use component_cache::{ComponentCache, MAX_CACHED_TEXT_BYTES};
pub use components::{
    Components, MAX_CASE_NESTING, MAX_NESTING, MAX_TOKENS, SQLITE_FUNCTIONS, StatementKind,
    extract_components, normalise_procedure, procedure_components,
};
pub use decision::{
    Allowed, Authenticated, Decision, Deny, DenyCode, Request, SiteView, authenticate,
    authenticate_stored, authorise_practice, evaluate, evaluate_stored, practice_enabled,
    site_status_access, site_visible,
};
pub use error::PolicyError;
pub use event::{
    EVENT_FORMAT_VERSION, LEGACY_PAIRING_ENVIRONMENT, PolicyEvent, RateLimit, ReadAccess,
};
pub use grants::Grants;
pub use integrator::IntegratorId;
pub use key::KeyHash;
pub use policy::Policy;
pub use shared::{CounterDelta, CounterTotal, SharedCounters};
pub use snapshot::{GRANTS_SNAPSHOT_VERSION, GrantsSnapshot};

/// How a command runs; defined in [`halo_ids`], shared with the Link protocol.
pub use halo_ids::ExecutionMode;

#[cfg(test)]
mod tests;
