//! The mutable grant state behind the events, and its compilation into a [`Policy`].

use std::collections::{BTreeMap, BTreeSet};

use halo_ids::{Environment, PmsId, PmsType};
use ipnet::IpNet;

use crate::components::{normalise_catalogue, normalise_object};
use crate::event::RateLimit;
use crate::{IntegratorId, KeyHash, Policy, PolicyError, PolicyEvent};

/// Components the vendor authorised for one integrator and PMS type (normalised).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ComponentGrant {
    pub(crate) catalogues: BTreeSet<String>,
    pub(crate) tables: BTreeSet<String>,
    pub(crate) procedures: BTreeSet<String>,
    pub(crate) allow_write: bool,
}

/// The environments in which an integrator paired with a practice. A pairing made
/// with a key of one environment never counts for the other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PairedIn {
    stage: bool,
    production: bool,
}

impl PairedIn {
    /// Whether the integrator paired in `environment`.
    pub(crate) fn contains(self, environment: Environment) -> bool {
        match environment {
            Environment::Stage => self.stage,
            Environment::Production => self.production,
        }
    }

    /// Records a pairing in `environment`.
    pub(crate) fn insert(&mut self, environment: Environment) {
        match environment {
            Environment::Stage => self.stage = true,
            Environment::Production => self.production = true,
        }
    }

    /// The environments paired in, Stage first (a fixed order, for snapshots).
    pub(crate) fn environments(self) -> impl Iterator<Item = Environment> {
        Environment::ALL
            .into_iter()
            .filter(move |e| self.contains(*e))
    }
}

/// A practice's state for one integrator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PracticeGrant {
    pub(crate) paired: PairedIn,
    pub(crate) quota: Option<u64>,
    pub(crate) rate: Option<RateLimit>,
}

/// Everything granted to one integrator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IntegratorGrants {
    pub(crate) enabled: BTreeSet<PmsType>,
    pub(crate) components: BTreeMap<PmsType, ComponentGrant>,
    /// Enabled practices (presence means enabled).
    pub(crate) practices: BTreeMap<PmsId, PracticeGrant>,
    pub(crate) keys: BTreeMap<KeyHash, Environment>,
    pub(crate) quota: Option<u64>,
    pub(crate) rate: Option<RateLimit>,
    /// Per-practice limits set before (or after) the practice is enabled.
    pub(crate) practice_quota: BTreeMap<PmsId, u64>,
    pub(crate) practice_rate: BTreeMap<PmsId, RateLimit>,
    pub(crate) ip_allowlist: Vec<IpNet>,
}

/// The grant state: built by applying [`PolicyEvent`]s in order, deterministic
/// (replaying the same events from `Grants::default()` gives an equal value).
///
/// Not on the hot path: [`Grants::compile`] turns it into an immutable [`Policy`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub(crate) integrators: BTreeMap<IntegratorId, IntegratorGrants>,
    /// Which integrator holds each issued key (keys are globally unique).
    pub(crate) key_owner: BTreeMap<KeyHash, IntegratorId>,
}

impl Grants {
    /// Applies one event. An integrator is created by the first event naming it.
    ///
    /// # Errors
    /// A refused event leaves the grants unchanged: [`PolicyError::KeyInUse`],
    /// [`PolicyError::KeyNotIssued`], [`PolicyError::InvalidName`],
    /// [`PolicyError::InvalidLimit`] or [`PolicyError::InvalidCidr`].
    pub fn apply(&mut self, event: &PolicyEvent) -> Result<(), PolicyError> {
        let id = event.integrator();
        match event {
            PolicyEvent::IntegratorEnabled { pms_type, .. } => {
                self.entry(id).enabled.insert(*pms_type);
            }
            PolicyEvent::IntegratorDisabled { pms_type, .. } => {
                self.entry(id).enabled.remove(pms_type);
            }
            PolicyEvent::ComponentsAuthorised {
                pms_type,
                catalogues,
                tables,
                procedures,
                allow_write,
                ..
            } => {
                let grant = ComponentGrant {
                    catalogues: catalogues
                        .iter()
                        .map(|c| normalise_catalogue(c))
                        .collect::<Result<_, _>>()?,
                    tables: tables
                        .iter()
                        .map(|t| normalise_object(t))
                        .collect::<Result<_, _>>()?,
                    procedures: procedures
                        .iter()
                        .map(|p| normalise_object(p))
                        .collect::<Result<_, _>>()?,
                    allow_write: *allow_write,
                };
                self.entry(id).components.insert(*pms_type, grant);
            }
            PolicyEvent::PracticeEnabled { pms_id, .. } => {
                self.entry(id).practices.entry(*pms_id).or_default();
            }
            PolicyEvent::PracticeDisabled { pms_id, .. } => {
                self.entry(id).practices.remove(pms_id);
            }
            PolicyEvent::PracticePaired {
                pms_id,
                environment,
                ..
            } => {
                // Pairing an unenabled practice is a no-op rather than an error, so
                // that replay does not depend on the order support and the
                // integrator acted in; it never grants anything by itself.
                if let Some(p) = self.entry(id).practices.get_mut(pms_id) {
                    p.paired.insert(*environment);
                }
            }
            PolicyEvent::KeyIssued {
                environment,
                key_hash,
                ..
            } => {
                if self.key_owner.contains_key(key_hash) {
                    return Err(PolicyError::KeyInUse);
                }
                self.key_owner.insert(*key_hash, id.clone());
                self.entry(id).keys.insert(*key_hash, *environment);
            }
            PolicyEvent::KeyRevoked { key_hash, .. } => {
                if self.key_owner.get(key_hash) != Some(id) {
                    return Err(PolicyError::KeyNotIssued);
                }
                self.key_owner.remove(key_hash);
                self.entry(id).keys.remove(key_hash);
            }
            PolicyEvent::QuotaSet {
                pms_id, per_month, ..
            } => {
                if *per_month == Some(0) {
                    // A zero quota would be a disguised disable; disable instead.
                    return Err(PolicyError::InvalidLimit("quota must be at least 1"));
                }
                let g = self.entry(id);
                match (pms_id, per_month) {
                    (None, q) => g.quota = *q,
                    (Some(p), Some(q)) => {
                        g.practice_quota.insert(*p, *q);
                    }
                    (Some(p), None) => {
                        g.practice_quota.remove(p);
                    }
                }
            }
            PolicyEvent::RateLimitSet { pms_id, limit, .. } => {
                if limit.is_some_and(|l| l.per_second == 0 || l.burst == 0) {
                    return Err(PolicyError::InvalidLimit(
                        "rate and burst must be at least 1",
                    ));
                }
                let g = self.entry(id);
                match (pms_id, limit) {
                    (None, l) => g.rate = *l,
                    (Some(p), Some(l)) => {
                        g.practice_rate.insert(*p, *l);
                    }
                    (Some(p), None) => {
                        g.practice_rate.remove(p);
                    }
                }
            }
            PolicyEvent::IpAllowlistSet { cidrs, .. } => {
                let nets = cidrs
                    .iter()
                    .map(|c| parse_cidr(c))
                    .collect::<Result<Vec<_>, _>>()?;
                self.entry(id).ip_allowlist = nets;
            }
        }
        Ok(())
    }

    /// Compiles an immutable snapshot with fresh rate-limit and quota counters.
    pub fn compile(&self) -> Policy {
        Policy::build(self, None)
    }

    /// Compiles an immutable snapshot that shares the rate-limit and quota counters
    /// of `previous` for every (integrator, scope) whose limit is unchanged, so that
    /// publishing a new snapshot neither refills buckets nor resets quotas.
    pub fn compile_with(&self, previous: &Policy) -> Policy {
        Policy::build(self, Some(previous))
    }

    /// How many integrators the grants know.
    pub fn integrator_count(&self) -> usize {
        self.integrators.len()
    }

    fn entry(&mut self, id: &IntegratorId) -> &mut IntegratorGrants {
        self.integrators.entry(id.clone()).or_default()
    }
}

/// Parses a CIDR, accepting a bare address as a single-host network.
fn parse_cidr(text: &str) -> Result<IpNet, PolicyError> {
    let t = text.trim_ascii();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    t.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| PolicyError::InvalidCidr(t.chars().take(40).collect()))
}
