//! Quota and rate-limit counters shared by the nodes of a cluster.
//!
//! Every node keeps enforcing its limits on its own lock-free counters
//! ([`Policy::take`]). To make a limit hold cluster-wide, a node periodically
//! [drains](SharedCounters::drain) what it admitted since the last round, adds it to
//! shared totals (the Cloud keeps them in PostgreSQL) and
//! [absorbs](SharedCounters::absorb) the totals read back:
//!
//! - a **monthly quota** is raised to the cluster's total for its month (so a node
//!   that starts, or restarts, mid-month counts from the cluster's figure);
//! - a **rate limit** is charged the tokens the other nodes took since the last
//!   total this node saw, as if taken now.
//!
//! What a node admits before it hears of the others is the overshoot: with `N`
//! nodes and a round every `Δ`, at most about `(N − 1) × (per-node rate × Δ)` more
//! than a quota, and `(N − 1) × burst` plus the same for a rate limit. Nothing here
//! does IO: the caller moves [`CounterDelta`]s and [`CounterTotal`]s.

use std::collections::HashMap;

use halo_ids::{PmsId, Timestamp};

use crate::policy::CompiledIntegrator;
use crate::{IntegratorId, Policy};

/// What one counter admitted on this node, to add to the cluster's total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterDelta {
    /// The counter's cluster-wide name (see [`SharedCounters`]).
    pub key: String,
    /// The month of a quota (months since 1970-01, UTC); 0 for a rate limit.
    pub period: u64,
    /// How many this node admitted.
    pub delta: u64,
}

/// A counter's cluster-wide total, as read back after adding the deltas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterTotal {
    /// The counter's cluster-wide name.
    pub key: String,
    /// As in [`CounterDelta::period`].
    pub period: u64,
    /// Everything every node admitted on it.
    pub total: u64,
}

/// One node's side of the shared counters: the deltas it drained and has not yet
/// had acknowledged, and the rate totals it last saw. Counter names are
/// `rate/i/<integrator>`, `rate/p/<pms id>/<integrator>`, `quota/i/<integrator>`
/// and `quota/p/<pms id>/<integrator>` (the integrator last, so names never
/// collide whatever it contains).
#[derive(Debug, Default)]
pub struct SharedCounters {
    unsent: HashMap<(String, u64), u64>,
    seen: HashMap<String, u64>,
}

#[derive(Clone, Copy)]
enum Kind {
    Rate,
    Quota,
}

impl SharedCounters {
    /// Nothing drained, nothing seen.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drains what `policy`'s counters admitted since the last call and returns it
    /// together with anything drained before whose round failed: send all of it,
    /// then call [`SharedCounters::absorb`] with the totals (after a failed round,
    /// just call `drain` again next time).
    pub fn drain(&mut self, policy: &Policy) -> Vec<CounterDelta> {
        for i in &policy.integrators {
            if let Some(b) = &i.rate {
                self.add(name(Kind::Rate, &i.id, None), 0, b.drain());
            }
            if let Some(q) = &i.quota {
                let (month, n) = q.drain();
                self.add(name(Kind::Quota, &i.id, None), month, n);
            }
            for (pms, p) in &i.practices {
                if let Some(b) = &p.rate {
                    self.add(name(Kind::Rate, &i.id, Some(pms)), 0, b.drain());
                }
                if let Some(q) = &p.quota {
                    let (month, n) = q.drain();
                    self.add(name(Kind::Quota, &i.id, Some(pms)), month, n);
                }
            }
        }
        self.unsent
            .iter()
            .map(|((key, period), delta)| CounterDelta {
                key: key.clone(),
                period: *period,
                delta: *delta,
            })
            .collect()
    }

    fn add(&mut self, key: String, period: u64, n: u64) {
        if n > 0 {
            *self.unsent.entry((key, period)).or_default() += n;
        }
    }

    /// Applies the totals read back after `sent` (what [`SharedCounters::drain`]
    /// returned) was added to them: quotas are raised to their total, rate limits
    /// charged what the other nodes took since the total last seen here. Totals of
    /// counters `policy` does not have are remembered and otherwise ignored.
    pub fn absorb(
        &mut self,
        policy: &Policy,
        sent: &[CounterDelta],
        totals: &[CounterTotal],
        now: Timestamp,
    ) {
        self.unsent.clear();
        let mut mine: HashMap<&str, u64> = HashMap::with_capacity(sent.len());
        for d in sent {
            *mine.entry(d.key.as_str()).or_default() += d.delta;
        }
        for t in totals {
            let Some((kind, integrator, pms)) = parse(&t.key) else {
                continue;
            };
            let Some(i) = policy.integrator(&integrator) else {
                if matches!(kind, Kind::Rate) {
                    self.seen.insert(t.key.clone(), t.total);
                }
                continue;
            };
            match kind {
                Kind::Quota => {
                    if let Some(q) = quota_of(i, pms.as_ref()) {
                        q.raise_to(t.period, t.total);
                    }
                }
                Kind::Rate => {
                    let mine = mine.get(t.key.as_str()).copied().unwrap_or(0);
                    let before = self.seen.insert(t.key.clone(), t.total);
                    // A total seen for the first time charges nothing: what the
                    // others took before is not known to be recent.
                    let others =
                        before.map_or(0, |b| t.total.saturating_sub(b).saturating_sub(mine));
                    if let Some(b) = rate_of(i, pms.as_ref()) {
                        b.charge(others, now);
                    }
                }
            }
        }
    }
}

fn name(kind: Kind, integrator: &IntegratorId, pms: Option<&PmsId>) -> String {
    let kind = match kind {
        Kind::Rate => "rate",
        Kind::Quota => "quota",
    };
    match pms {
        None => format!("{kind}/i/{integrator}"),
        Some(p) => format!("{kind}/p/{p}/{integrator}"),
    }
}

fn parse(key: &str) -> Option<(Kind, IntegratorId, Option<PmsId>)> {
    let (kind, rest) = key.split_once('/')?;
    let kind = match kind {
        "rate" => Kind::Rate,
        "quota" => Kind::Quota,
        _ => return None,
    };
    let (scope, rest) = rest.split_once('/')?;
    match scope {
        "i" => Some((kind, rest.parse().ok()?, None)),
        "p" => {
            let (pms, integrator) = rest.split_once('/')?;
            Some((kind, integrator.parse().ok()?, Some(pms.parse().ok()?)))
        }
        _ => None,
    }
}

fn rate_of<'a>(
    i: &'a CompiledIntegrator,
    pms: Option<&PmsId>,
) -> Option<&'a crate::limits::Bucket> {
    match pms {
        None => i.rate.as_deref(),
        Some(p) => i.practices.get(p)?.rate.as_deref(),
    }
}

fn quota_of<'a>(
    i: &'a CompiledIntegrator,
    pms: Option<&PmsId>,
) -> Option<&'a crate::limits::MonthlyQuota> {
    match pms {
        None => i.quota.as_deref(),
        Some(p) => i.practices.get(p)?.quota.as_deref(),
    }
}
