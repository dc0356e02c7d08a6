//! Checks a whole history of tenancy events against the authority invariants:
//! replayed in order into a fresh registry, after every event no group has two
//! authoritative sites and no group's epoch has gone back. Incremental: each event
//! costs what its changes touch (the same changes the router follows), so a long
//! log checks in one pass; a property test checks it against a full scan.

use std::collections::{HashMap, HashSet};

use halo_authority::{Epoch, GroupKey};
use halo_ids::{HaloGuid, Timestamp};

use crate::{Change, Event, Registry, TenancyError};

/// What breaks a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryViolation {
    /// The event does not apply on replay (the history is not one the registry
    /// could have produced).
    #[error("event {index} does not apply on replay: {error}")]
    Refused {
        /// The caller's label of the event (e.g. its log sequence number).
        index: u64,
        /// Why the registry refused it.
        error: TenancyError,
    },
    /// A group has more than one authoritative site.
    #[error("after event {index}, group {group:?} has {holders} authoritative sites")]
    TwoHolders {
        /// The event after which it was seen.
        index: u64,
        /// The group.
        group: GroupKey,
        /// How many sites claim authority.
        holders: usize,
    },
    /// A group's epoch went back.
    #[error("after event {index}, group {group:?}'s epoch went back from {before:?} to {after:?}")]
    EpochBack {
        /// The event after which it was seen.
        index: u64,
        /// The group.
        group: GroupKey,
        /// The epoch before.
        before: Epoch,
        /// The epoch after.
        after: Epoch,
    },
}

/// A history being checked: feed it every tenancy event in log order.
#[derive(Debug, Default)]
pub struct AuthorityHistory {
    registry: Registry,
    epochs: HashMap<GroupKey, Epoch>,
    /// The authoritative sites of each group, as the sites themselves say.
    holders: HashMap<GroupKey, HashSet<HaloGuid>>,
    events: u64,
    promotions: u64,
    attachments: u64,
}

impl AuthorityHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the next event (labelled `index` in errors) and checks the groups
    /// it touched.
    ///
    /// # Errors
    /// The first [`HistoryViolation`]; the history should not be fed further.
    pub fn check(
        &mut self,
        index: u64,
        event: &Event,
        at: Timestamp,
    ) -> Result<(), HistoryViolation> {
        let changes = self
            .registry
            .apply(event, at)
            .map_err(|error| HistoryViolation::Refused { index, error })?;
        self.events += 1;
        match event {
            Event::Promoted { .. } => self.promotions += 1,
            Event::SiteAttached { .. } => self.attachments += 1,
            _ => {}
        }
        let mut touched: HashSet<GroupKey> = HashSet::new();
        for change in &changes {
            match *change {
                Change::SiteUpserted(site) | Change::SiteRetired(site) => {
                    self.recheck_site(site, &mut touched);
                }
                Change::AuthorityChanged { group, holder, .. } => {
                    let earlier: Vec<HaloGuid> = self
                        .holders
                        .get(&group)
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_default();
                    for site in earlier.into_iter().chain(holder) {
                        self.recheck_site(site, &mut touched);
                    }
                    touched.insert(group);
                }
                _ => {}
            }
        }
        for group in touched {
            let holders = self.holders.get(&group).map_or(0, HashSet::len);
            if holders > 1 {
                return Err(HistoryViolation::TwoHolders {
                    index,
                    group,
                    holders,
                });
            }
            if let Some(after) = self.registry.group(&group).map(crate::Group::epoch) {
                if let Some(before) = self.epochs.insert(group, after) {
                    if after < before {
                        return Err(HistoryViolation::EpochBack {
                            index,
                            group,
                            before,
                            after,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn recheck_site(&mut self, guid: HaloGuid, touched: &mut HashSet<GroupKey>) {
        for (group, set) in &mut self.holders {
            if set.remove(&guid) {
                touched.insert(*group);
            }
        }
        if let Some(site) = self.registry.site(guid) {
            let group = site.group_key();
            touched.insert(group);
            if site.is_authoritative() {
                self.holders.entry(group).or_default().insert(guid);
            }
        }
    }

    /// How many events were checked.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// How many of them were promotions.
    pub fn promotions(&self) -> u64 {
        self.promotions
    }

    /// How many of them attached a site.
    pub fn attachments(&self) -> u64 {
        self.attachments
    }

    /// The authoritative sites of each group as tracked incrementally (tests
    /// compare it with a full scan).
    #[cfg(test)]
    pub(crate) fn tracked_holders(&self) -> HashMap<GroupKey, HashSet<HaloGuid>> {
        self.holders
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(g, s)| (*g, s.clone()))
            .collect()
    }

    /// The registry replayed so far.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
