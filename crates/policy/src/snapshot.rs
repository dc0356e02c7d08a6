//! Snapshots: the whole [`Grants`] as one versioned, serde-serialisable value, so that
//! recovery loads a snapshot and replays only the events after it.
//!
//! Maps are written as sorted lists (JSON object keys must be strings, and lists keep
//! the order fixed), so equal grants give equal snapshots. The key-owner index is
//! derived, not written: [`Grants::from_snapshot`] rebuilds it and refuses a key
//! issued to two integrators. The frozen fixtures `tests/fixtures/grants_snapshot_v1.json`
//! and `grants_snapshot_v2.json` are loaded by tests.
//!
//! Versions: **1** recorded a practice's pairing as `"paired": true`, with no
//! environment; it is read as a Stage pairing only
//! ([`LEGACY_PAIRING_ENVIRONMENT`](crate::LEGACY_PAIRING_ENVIRONMENT)), like a
//! `sitePaired` event without an environment. **2** (written now) lists the
//! environments paired in: `"pairedIn": ["stage", "production"]`.

use std::collections::{BTreeMap, BTreeSet};

use halo_ids::{Environment, PmsId, PmsType};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::grants::{ComponentGrant, IntegratorGrants, PairedIn, PracticeGrant};
use crate::{Grants, IntegratorId, KeyHash, LEGACY_PAIRING_ENVIRONMENT, PolicyError, RateLimit};

/// The snapshot format version this build writes. It also reads version 1.
pub const GRANTS_SNAPSHOT_VERSION: u32 = 2;

/// Version 1: a pairing without an environment (`"paired": true`).
const V1: u32 = 1;

/// The whole state of a [`Grants`], from [`Grants::to_snapshot`], for
/// [`Grants::from_snapshot`]. Serialise it with serde. Its fields are private: a
/// snapshot is made from grants or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsSnapshot {
    version: u32,
    /// Integrators, sorted by id.
    integrators: Vec<IntegratorRecord>,
}

impl GrantsSnapshot {
    /// The format version ([`GRANTS_SNAPSHOT_VERSION`] when made by this build).
    pub fn version(&self) -> u32 {
        self.version
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IntegratorRecord {
    id: IntegratorId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    enabled: Vec<PmsType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    components: Vec<ComponentRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    practices: Vec<PracticeRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<(KeyHash, Environment)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    practice_quota: Vec<(PmsId, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    practice_rate: Vec<(PmsId, RateLimit)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ip_allowlist: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ComponentRecord {
    pms_type: PmsType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    catalogues: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tables: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    procedures: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    allow_write: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PracticeRecord {
    pms_id: PmsId,
    /// Version 1 only: paired, in no particular environment (read as Stage).
    #[serde(default, skip_serializing_if = "is_false")]
    paired: bool,
    /// Version 2: the environments paired in, Stage first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    paired_in: Vec<Environment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate: Option<RateLimit>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn invalid(what: &'static str) -> PolicyError {
    PolicyError::InvalidSnapshot(what)
}

/// Collects pairs into a map, refusing a key given twice.
fn unique<K: Ord, V>(
    pairs: impl IntoIterator<Item = (K, V)>,
    what: &'static str,
) -> Result<BTreeMap<K, V>, PolicyError> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if map.insert(k, v).is_some() {
            return Err(invalid(what));
        }
    }
    Ok(map)
}

/// Collects values into a set, refusing a value given twice.
fn unique_set<T: Ord>(
    values: impl IntoIterator<Item = T>,
    what: &'static str,
) -> Result<BTreeSet<T>, PolicyError> {
    unique(values.into_iter().map(|v| (v, ())), what).map(|m| m.into_keys().collect())
}

fn check_quota(q: u64) -> Result<u64, PolicyError> {
    if q == 0 {
        return Err(invalid("a quota is zero"));
    }
    Ok(q)
}

fn check_rate(r: RateLimit) -> Result<RateLimit, PolicyError> {
    if r.per_second == 0 || r.burst == 0 {
        return Err(invalid("a rate limit is zero"));
    }
    Ok(r)
}

/// A practice's pairing as recorded in a snapshot of `version`.
fn paired_in(version: u32, legacy: bool, listed: &[Environment]) -> Result<PairedIn, PolicyError> {
    let mut paired = PairedIn::default();
    if version == V1 {
        if !listed.is_empty() {
            return Err(invalid("a version 1 snapshot lists pairing environments"));
        }
        if legacy {
            paired.insert(LEGACY_PAIRING_ENVIRONMENT);
        }
        return Ok(paired);
    }
    if legacy {
        return Err(invalid("a pairing without an environment"));
    }
    for environment in listed {
        if paired.contains(*environment) {
            return Err(invalid("a pairing environment is listed twice"));
        }
        paired.insert(*environment);
    }
    Ok(paired)
}

impl Grants {
    /// The whole grant state as a [`GrantsSnapshot`]. Equal grants give equal
    /// snapshots, and [`Grants::from_snapshot`] gives back equal grants.
    pub fn to_snapshot(&self) -> GrantsSnapshot {
        let integrators = self
            .integrators
            .iter()
            .map(|(id, g)| IntegratorRecord {
                id: id.clone(),
                enabled: g.enabled.iter().copied().collect(),
                components: g
                    .components
                    .iter()
                    .map(|(pms_type, c)| ComponentRecord {
                        pms_type: *pms_type,
                        catalogues: c.catalogues.iter().cloned().collect(),
                        tables: c.tables.iter().cloned().collect(),
                        procedures: c.procedures.iter().cloned().collect(),
                        allow_write: c.allow_write,
                    })
                    .collect(),
                practices: g
                    .practices
                    .iter()
                    .map(|(pms_id, p)| PracticeRecord {
                        pms_id: *pms_id,
                        paired: false,
                        paired_in: p.paired.environments().collect(),
                        quota: p.quota,
                        rate: p.rate,
                    })
                    .collect(),
                keys: g.keys.iter().map(|(k, e)| (*k, *e)).collect(),
                quota: g.quota,
                rate: g.rate,
                practice_quota: g.practice_quota.iter().map(|(p, q)| (*p, *q)).collect(),
                practice_rate: g.practice_rate.iter().map(|(p, r)| (*p, *r)).collect(),
                ip_allowlist: g.ip_allowlist.clone(),
            })
            .collect();
        GrantsSnapshot {
            version: GRANTS_SNAPSHOT_VERSION,
            integrators,
        }
    }

    /// Rebuilds grants from a snapshot, with the key-owner index, and checks what
    /// [`Grants::apply`] keeps true (nothing listed twice, a key issued to one
    /// integrator only, limits of at least one, allowlist networks truncated).
    ///
    /// # Errors
    /// [`PolicyError::UnsupportedSnapshotVersion`] for a format this build does not
    /// read (it reads 1 and 2); [`PolicyError::InvalidSnapshot`] for a damaged or
    /// inconsistent one.
    pub fn from_snapshot(snapshot: GrantsSnapshot) -> Result<Grants, PolicyError> {
        let version = snapshot.version;
        if version != V1 && version != GRANTS_SNAPSHOT_VERSION {
            return Err(PolicyError::UnsupportedSnapshotVersion(version));
        }
        let mut grants = Grants::default();
        for r in snapshot.integrators {
            let mut components = BTreeMap::new();
            for c in r.components {
                let grant = ComponentGrant {
                    catalogues: unique_set(c.catalogues, "a catalogue is listed twice")?,
                    tables: unique_set(c.tables, "a table is listed twice")?,
                    procedures: unique_set(c.procedures, "a procedure is listed twice")?,
                    allow_write: c.allow_write,
                };
                if components.insert(c.pms_type, grant).is_some() {
                    return Err(invalid("components are listed twice for a pms type"));
                }
            }
            let mut practices = BTreeMap::new();
            for p in r.practices {
                let grant = PracticeGrant {
                    paired: paired_in(version, p.paired, &p.paired_in)?,
                    quota: p.quota.map(check_quota).transpose()?,
                    rate: p.rate.map(check_rate).transpose()?,
                };
                if practices.insert(p.pms_id, grant).is_some() {
                    return Err(invalid("a practice is listed twice"));
                }
            }
            for (key, _) in &r.keys {
                if grants.key_owner.insert(*key, r.id.clone()).is_some() {
                    return Err(invalid("a key is issued twice"));
                }
            }
            if r.ip_allowlist.iter().any(|net| *net != net.trunc()) {
                return Err(invalid("an allowlist network has host bits set"));
            }
            let integrator = IntegratorGrants {
                enabled: unique_set(r.enabled, "a pms type is enabled twice")?,
                components,
                practices,
                keys: unique(r.keys, "a key is issued twice")?,
                quota: r.quota.map(check_quota).transpose()?,
                rate: r.rate.map(check_rate).transpose()?,
                practice_quota: unique(
                    r.practice_quota
                        .into_iter()
                        .map(|(p, q)| check_quota(q).map(|q| (p, q)))
                        .collect::<Result<Vec<_>, _>>()?,
                    "a practice quota is listed twice",
                )?,
                practice_rate: unique(
                    r.practice_rate
                        .into_iter()
                        .map(|(p, l)| check_rate(l).map(|l| (p, l)))
                        .collect::<Result<Vec<_>, _>>()?,
                    "a practice rate limit is listed twice",
                )?,
                ip_allowlist: r.ip_allowlist,
            };
            if grants.integrators.insert(r.id, integrator).is_some() {
                return Err(invalid("an integrator is listed twice"));
            }
        }
        Ok(grants)
    }
}
