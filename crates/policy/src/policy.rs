//! The compiled, immutable policy snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use halo_ids::{Environment, PmsId, PmsType};
use ipnet::IpNet;

use crate::Grants;
use crate::event::RateLimit;
use crate::grants::{ComponentGrant, PairedIn};
use crate::key::KeyHashState;
use crate::limits::{Bucket, MonthlyQuota};
use crate::{IntegratorId, KeyHash};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// An immutable snapshot of the grants, compiled for lookups: keys, integrators and
/// practices are in hash maps, component names in hash sets. `Send + Sync`; share it
/// behind an `Arc` and swap in a new one when grants change.
#[derive(Debug, Default)]
pub struct Policy {
    pub(crate) keys: HashMap<KeyHash, KeyEntry, KeyHashState>,
    pub(crate) integrators: Vec<CompiledIntegrator>,
    pub(crate) by_id: FastMap<IntegratorId, u32>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyEntry {
    pub(crate) integrator: u32,
    pub(crate) environment: Environment,
}

#[derive(Debug)]
pub(crate) struct CompiledIntegrator {
    pub(crate) id: IntegratorId,
    /// Indexed by [`pms_index`]; `Some` iff the vendor enabled the integrator.
    pub(crate) pms: [Option<CompiledComponents>; 3],
    pub(crate) practices: FastMap<PmsId, CompiledPractice>,
    pub(crate) ip_allowlist: Box<[IpNet]>,
    pub(crate) rate: Option<Arc<Bucket>>,
    pub(crate) quota: Option<Arc<MonthlyQuota>>,
}

#[derive(Debug, Default)]
pub(crate) struct CompiledComponents {
    pub(crate) catalogues: Box<[Box<str>]>,
    pub(crate) tables: FastSet<Box<str>>,
    pub(crate) procedures: FastSet<Box<str>>,
    pub(crate) allow_write: bool,
}

#[derive(Debug)]
pub(crate) struct CompiledPractice {
    /// The environments the integrator paired in.
    pub(crate) paired: PairedIn,
    pub(crate) rate: Option<Arc<Bucket>>,
    pub(crate) quota: Option<Arc<MonthlyQuota>>,
}

pub(crate) fn pms_index(t: PmsType) -> usize {
    match t {
        PmsType::D4w => 0,
        PmsType::BestPractice => 1,
        PmsType::Zedmed => 2,
    }
}

impl Policy {
    /// The policy with no grants: denies every request.
    pub fn empty() -> Self {
        Self::default()
    }

    /// How many integrators the snapshot holds.
    pub fn integrator_count(&self) -> usize {
        self.integrators.len()
    }

    /// How many subscription keys the snapshot holds.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn integrator(&self, id: &IntegratorId) -> Option<&CompiledIntegrator> {
        let slot = *self.by_id.get(id)?;
        self.integrators.get(slot as usize)
    }

    pub(crate) fn build(grants: &Grants, previous: Option<&Policy>) -> Self {
        let mut integrators = Vec::with_capacity(grants.integrators.len());
        let mut by_id =
            FastMap::with_capacity_and_hasher(grants.integrators.len(), Default::default());
        let mut keys = HashMap::with_capacity_and_hasher(grants.key_owner.len(), KeyHashState);
        for (id, g) in &grants.integrators {
            let slot = u32::try_from(integrators.len()).expect("fewer than 2^32 integrators");
            let prev = previous.and_then(|p| p.integrator(id));
            let mut pms: [Option<CompiledComponents>; 3] = Default::default();
            for t in &g.enabled {
                pms[pms_index(*t)] = Some(compile_components(g.components.get(t)));
            }
            let mut practices =
                FastMap::with_capacity_and_hasher(g.practices.len(), Default::default());
            for (pms_id, p) in &g.practices {
                let prev_p = prev.and_then(|i| i.practices.get(pms_id));
                let rate = g.practice_rate.get(pms_id).copied();
                let quota = g.practice_quota.get(pms_id).copied();
                practices.insert(
                    *pms_id,
                    CompiledPractice {
                        paired: p.paired,
                        rate: carry_bucket(rate, prev_p.and_then(|p| p.rate.as_ref())),
                        quota: carry_quota(quota, prev_p.and_then(|p| p.quota.as_ref())),
                    },
                );
            }
            for (hash, env) in &g.keys {
                keys.insert(
                    *hash,
                    KeyEntry {
                        integrator: slot,
                        environment: *env,
                    },
                );
            }
            by_id.insert(id.clone(), slot);
            integrators.push(CompiledIntegrator {
                id: id.clone(),
                pms,
                practices,
                ip_allowlist: g.ip_allowlist.clone().into_boxed_slice(),
                rate: carry_bucket(g.rate, prev.and_then(|i| i.rate.as_ref())),
                quota: carry_quota(g.quota, prev.and_then(|i| i.quota.as_ref())),
            });
        }
        Self {
            keys,
            integrators,
            by_id,
        }
    }
}

fn compile_components(grant: Option<&ComponentGrant>) -> CompiledComponents {
    let Some(g) = grant else {
        return CompiledComponents::default();
    };
    CompiledComponents {
        catalogues: g.catalogues.iter().map(|c| c.as_str().into()).collect(),
        tables: g.tables.iter().map(|t| t.as_str().into()).collect(),
        procedures: g.procedures.iter().map(|p| p.as_str().into()).collect(),
        allow_write: g.allow_write,
    }
}

fn carry_bucket(limit: Option<RateLimit>, prev: Option<&Arc<Bucket>>) -> Option<Arc<Bucket>> {
    let limit = limit?;
    match prev {
        Some(b) if b.limit() == limit => Some(Arc::clone(b)),
        _ => Some(Arc::new(Bucket::new(limit))),
    }
}

fn carry_quota(
    per_month: Option<u64>,
    prev: Option<&Arc<MonthlyQuota>>,
) -> Option<Arc<MonthlyQuota>> {
    let per_month = per_month?;
    match prev {
        Some(q) if q.per_month() == per_month => Some(Arc::clone(q)),
        _ => Some(Arc::new(MonthlyQuota::new(per_month))),
    }
}
