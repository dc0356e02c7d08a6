//! Grant events: the serialisable, replayable changes to [`Grants`](crate::Grants).
//!
//! Format version 1. The JSON form is internally tagged (`"event": "keyIssued"`) with
//! camelCase fields; it is the event log's format, so it is a compatibility promise:
//! new fields must be optional (`#[serde(default)]`) and old variants are never
//! renamed. `tests.rs` keeps frozen version-1 JSON that must keep loading.
//!
//! `sitePaired` gained `environment` (pairing is per environment). A `sitePaired`
//! written before that has none and is read as a **Stage** pairing only
//! ([`LEGACY_PAIRING_ENVIRONMENT`]): deny by default, since an old log cannot say
//! which key paired, and a Stage pairing never reaches Production data. An
//! integrator that paired in Production before the upgrade pairs again with its
//! Production key.

use halo_ids::{Environment, PmsId, PmsType};
use serde::{Deserialize, Serialize};

use crate::{IntegratorId, KeyHash};

/// The event-log format version this crate writes.
pub const EVENT_FORMAT_VERSION: u16 = 1;

/// The environment a `sitePaired` event without one (written before pairing was per
/// environment) is read as: Stage, so that an old pairing never reaches Production.
pub const LEGACY_PAIRING_ENVIRONMENT: Environment = Environment::Stage;

fn legacy_pairing_environment() -> Environment {
    LEGACY_PAIRING_ENVIRONMENT
}

/// A rate limit: a token bucket of `burst` tokens refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second (at least 1).
    pub per_second: u32,
    /// Requests allowed at once after a quiet period (at least 1).
    pub burst: u32,
}

/// One change to the grants. Every variant names the integrator it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "event",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum PolicyEvent {
    /// The vendor of `pms_type` enables the integrator for it.
    IntegratorEnabled {
        /// The integrator.
        integrator: IntegratorId,
        /// The PMS type whose vendor enables it.
        pms_type: PmsType,
    },
    /// The vendor of `pms_type` disables the integrator (its component grants are
    /// kept, but unused until enabled again).
    IntegratorDisabled {
        /// The integrator.
        integrator: IntegratorId,
        /// The PMS type.
        pms_type: PmsType,
    },
    /// The vendor authorises database components; replaces any earlier set for this
    /// PMS type. Names are normalised (case, brackets, quotes, `dbo.`) on apply.
    ComponentsAuthorised {
        /// The integrator.
        integrator: IntegratorId,
        /// The PMS type the components belong to.
        pms_type: PmsType,
        /// Catalogues (databases) the integrator may name.
        catalogues: Vec<String>,
        /// Tables and views it may read (and write, with `allow_write`).
        tables: Vec<String>,
        /// Stored procedures and user functions it may call.
        procedures: Vec<String>,
        /// Whether `nonQuery` commands and write statements are allowed.
        allow_write: bool,
    },
    /// The vendor's support team enables a practice for the integrator.
    PracticeEnabled {
        /// The integrator.
        integrator: IntegratorId,
        /// The practice.
        pms_id: PmsId,
    },
    /// The practice is no longer enabled for the integrator (pairing is dropped).
    PracticeDisabled {
        /// The integrator.
        integrator: IntegratorId,
        /// The practice.
        pms_id: PmsId,
    },
    /// The integrator paired with the practice's site in one environment (only
    /// effective while the practice is enabled, and only for keys of that
    /// environment: a pairing made with a Stage key never pairs Production).
    #[serde(rename = "sitePaired")]
    PracticePaired {
        /// The integrator.
        integrator: IntegratorId,
        /// The practice.
        pms_id: PmsId,
        /// The environment of the key that paired (of the site it paired with).
        /// Absent in events written before pairing was per environment: read as
        /// [`LEGACY_PAIRING_ENVIRONMENT`] (Stage).
        #[serde(default = "legacy_pairing_environment")]
        environment: Environment,
    },
    /// A subscription key is issued, bound to one environment.
    KeyIssued {
        /// The integrator.
        integrator: IntegratorId,
        /// The only environment the key reaches.
        environment: Environment,
        /// SHA-256 of the key.
        key_hash: KeyHash,
    },
    /// A subscription key is revoked.
    KeyRevoked {
        /// The integrator.
        integrator: IntegratorId,
        /// SHA-256 of the key.
        key_hash: KeyHash,
    },
    /// A monthly quota (Production only): integrator-wide when `pms_id` is `None`,
    /// otherwise for that practice. `per_month: None` removes it.
    QuotaSet {
        /// The integrator.
        integrator: IntegratorId,
        /// The practice, or `None` for the integrator as a whole.
        #[serde(default)]
        pms_id: Option<PmsId>,
        /// Queries per calendar month (UTC), or `None` for no quota.
        per_month: Option<u64>,
    },
    /// A rate limit (Production only): integrator-wide when `pms_id` is `None`,
    /// otherwise for that (integrator, practice). `limit: None` removes it.
    RateLimitSet {
        /// The integrator.
        integrator: IntegratorId,
        /// The practice, or `None` for the integrator as a whole.
        #[serde(default)]
        pms_id: Option<PmsId>,
        /// The limit, or `None` for none.
        limit: Option<RateLimit>,
    },
    /// The caller-IP allowlist (CIDRs, Production only); empty means any address.
    IpAllowlistSet {
        /// The integrator.
        integrator: IntegratorId,
        /// Allowed networks, for example `203.0.113.0/24` or `2001:db8::/32`.
        cidrs: Vec<String>,
    },
}

impl PolicyEvent {
    /// The integrator the event concerns.
    pub fn integrator(&self) -> &IntegratorId {
        match self {
            PolicyEvent::IntegratorEnabled { integrator, .. }
            | PolicyEvent::IntegratorDisabled { integrator, .. }
            | PolicyEvent::ComponentsAuthorised { integrator, .. }
            | PolicyEvent::PracticeEnabled { integrator, .. }
            | PolicyEvent::PracticeDisabled { integrator, .. }
            | PolicyEvent::PracticePaired { integrator, .. }
            | PolicyEvent::KeyIssued { integrator, .. }
            | PolicyEvent::KeyRevoked { integrator, .. }
            | PolicyEvent::QuotaSet { integrator, .. }
            | PolicyEvent::RateLimitSet { integrator, .. }
            | PolicyEvent::IpAllowlistSet { integrator, .. } => integrator,
        }
    }
}

/// The grants that let one integrator read some tables: enabled for a PMS type,
/// the tables authorised in the given catalogues (no writes), one subscription key,
/// and each practice enabled and paired. The usual onboarding, as events, for demos,
/// tests and benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct ReadAccess<'a> {
    /// The integrator.
    pub integrator: &'a IntegratorId,
    /// The PMS type it is enabled for.
    pub pms_type: PmsType,
    /// The environment of its key.
    pub environment: Environment,
    /// The subscription key (only its hash goes into the event).
    pub key: &'a str,
    /// Catalogues it may name.
    pub catalogues: &'a [&'a str],
    /// Tables and views it may read.
    pub tables: &'a [&'a str],
}

impl ReadAccess<'_> {
    /// Enables the integrator, authorises the components and issues the key.
    pub fn integrator_events(&self) -> [PolicyEvent; 3] {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect();
        [
            PolicyEvent::IntegratorEnabled {
                integrator: self.integrator.clone(),
                pms_type: self.pms_type,
            },
            PolicyEvent::ComponentsAuthorised {
                integrator: self.integrator.clone(),
                pms_type: self.pms_type,
                catalogues: names(self.catalogues),
                tables: names(self.tables),
                procedures: Vec::new(),
                allow_write: false,
            },
            PolicyEvent::KeyIssued {
                integrator: self.integrator.clone(),
                environment: self.environment,
                key_hash: KeyHash::of(self.key),
            },
        ]
    }

    /// Enables one practice for the integrator and pairs it in the key's environment.
    pub fn practice_events(&self, pms_id: PmsId) -> [PolicyEvent; 2] {
        [
            PolicyEvent::PracticeEnabled {
                integrator: self.integrator.clone(),
                pms_id,
            },
            PolicyEvent::PracticePaired {
                integrator: self.integrator.clone(),
                pms_id,
                environment: self.environment,
            },
        ]
    }

    /// All of it: the integrator's events, then each practice's.
    pub fn events(&self, practices: impl IntoIterator<Item = PmsId>) -> Vec<PolicyEvent> {
        let mut events = self.integrator_events().to_vec();
        for pms_id in practices {
            events.extend(self.practice_events(pms_id));
        }
        events
    }
}
