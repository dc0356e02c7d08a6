//! The writer's record of every authority group it has published: holder and newest
//! epoch, looked up by group key.
//!
//! Groups are only ever added (a group left without live sites keeps its newest
//! epoch), so the records are kept densely, in the order they were added, with a
//! hash index of their positions: an [`IndexMap`]. A bulk load of a million groups
//! then writes the records front to back and touches at random only the index,
//! where a hash map of whole records would write them at a million random places of
//! a table several times larger: the load's largest cost before (`load_bench`).

use foldhash::fast::RandomState;
use halo_authority::{Epoch, GroupKey};
use halo_ids::HaloGuid;
use indexmap::IndexMap;

/// The writer's record of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GroupSlot {
    /// The authoritative site, as published in the table.
    pub(crate) holder: Option<HaloGuid>,
    /// The newest epoch published (zero for a group never published with one).
    pub(crate) newest: Epoch,
}

/// Every group's [`GroupSlot`], by key (see the module docs).
pub(crate) type Groups = IndexMap<GroupKey, GroupSlot, RandomState>;

/// An empty [`Groups`] with room for `capacity` groups.
pub(crate) fn with_capacity(capacity: usize) -> Groups {
    Groups::with_capacity_and_hasher(capacity, RandomState::default())
}

#[cfg(all(test, not(loom)))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::fixture::{halo, pms_id};
    use halo_ids::Environment;
    use std::collections::HashMap;

    fn key(n: u32) -> GroupKey {
        let environment = if n % 2 == 0 {
            Environment::Stage
        } else {
            Environment::Production
        };
        GroupKey::new(environment, pms_id(n / 2))
    }

    /// Against a plain hash map, through growth from empty and from a reservation:
    /// every key finds its own record, never another's (the table as the writer
    /// uses it).
    #[test]
    fn finds_each_group_as_a_hash_map_does() {
        for reserved in [0, 10, 5000] {
            let mut groups = with_capacity(reserved);
            let mut model: HashMap<GroupKey, GroupSlot> = HashMap::new();
            for round in 0..3u64 {
                for n in 0..3000u32 {
                    let k = key(n * 7 % 3001);
                    let slot = groups.entry(k).or_default();
                    let expected = model.entry(k).or_default();
                    assert_eq!(slot, expected);
                    if n % 3 == 0 {
                        slot.newest = Epoch::new(round * 10_000 + u64::from(n));
                        slot.holder = Some(halo(u128::from(n) + 1));
                        *expected = *slot;
                    }
                }
            }
            assert_eq!(groups.len(), model.len());
            for (k, slot) in &model {
                assert_eq!(groups.get(k), Some(slot));
            }
            assert_eq!(groups.get(&key(1_000_001)), None);
            let k = key(3);
            groups.get_mut(&k).unwrap().holder = None;
            assert_eq!(groups.get(&k).unwrap().holder, None);
            assert!(groups.get_mut(&key(1_000_001)).is_none());
        }
    }
}
