//! The writer's record of every authority group it has published: holder and newest
//! epoch, looked up by group key.
//!
//! Groups are only ever added (a group left without live sites keeps its newest
//! epoch), so the records are kept densely, in the order they were added, and found
//! through an index of positions (4 bytes and a control byte a slot). A bulk load of a
//! million groups then writes the records front to back and touches at random only
//! the index (about 10 MB), where a hash map of whole records would write 56-byte
//! entries at a million random places of a 117 MB table: the load's largest cost
//! before (`load_bench`).

use std::fmt;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use halo_authority::{Epoch, GroupKey};
use halo_ids::HaloGuid;

/// The writer's record of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GroupSlot {
    /// The authoritative site, as published in the table.
    pub(crate) holder: Option<HaloGuid>,
    /// The newest epoch published (zero for a group never published with one).
    pub(crate) newest: Epoch,
}

/// Every group's [`GroupSlot`], by key (see the module docs).
#[derive(Default)]
pub(crate) struct Groups {
    /// Records in the order their groups were added; never removed.
    slots: Vec<(GroupKey, GroupSlot)>,
    /// Positions in `slots`, hashed by their key.
    index: hashbrown::HashTable<u32>,
    hasher: RandomState,
}

impl fmt::Debug for Groups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.slots.iter().map(|(k, s)| (k, s)))
            .finish()
    }
}

impl Groups {
    /// An empty table with room for `capacity` groups.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let mut groups = Self::default();
        groups.reserve(capacity);
        groups
    }

    /// Makes room for `additional` more groups.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let Self {
            slots,
            index,
            hasher,
        } = self;
        index.reserve(additional, |&i| rehash(slots, hasher, i));
        slots.reserve_exact(additional);
    }

    /// How many groups it holds.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds none.
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn position(&self, key: &GroupKey) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(key), |&i| {
                slots.get(i as usize).is_some_and(|(k, _)| k == key)
            })
            .map(|&i| i as usize)
    }

    /// The record of `key`'s group, if it has one.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn get(&self, key: &GroupKey) -> Option<&GroupSlot> {
        self.position(key)
            .and_then(|i| self.slots.get(i))
            .map(|(_, slot)| slot)
    }

    /// The record of `key`'s group, mutably, if it has one.
    pub(crate) fn get_mut(&mut self, key: &GroupKey) -> Option<&mut GroupSlot> {
        self.position(key)
            .and_then(|i| self.slots.get_mut(i))
            .map(|(_, slot)| slot)
    }

    /// The record of `key`'s group, added empty (no holder, epoch zero) if it has
    /// none.
    pub(crate) fn entry_or_default(&mut self, key: GroupKey) -> &mut GroupSlot {
        let Self {
            slots,
            index,
            hasher,
        } = self;
        let hash = hasher.hash_one(key);
        let position = match index.entry(
            hash,
            |&i| slots.get(i as usize).is_some_and(|(k, _)| *k == key),
            |&i| rehash(slots, hasher, i),
        ) {
            hashbrown::hash_table::Entry::Occupied(found) => *found.get() as usize,
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                let position = slots.len();
                // More than 2^32 groups cannot be held; a table that large is far
                // beyond any registry's (each group is a site's).
                let at = u32::try_from(position).expect("fewer than 2^32 groups");
                vacant.insert(at);
                slots.push((key, GroupSlot::default()));
                position
            }
        };
        &mut slots[position].1
    }
}

/// The hash of the key at position `i`, for the index to grow (every position it
/// holds is in `slots`).
fn rehash(slots: &[(GroupKey, GroupSlot)], hasher: &RandomState, i: u32) -> u64 {
    slots
        .get(i as usize)
        .map_or(0, |(key, _)| hasher.hash_one(key))
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
    /// every key finds its own record, never another's.
    #[test]
    fn finds_each_group_as_a_hash_map_does() {
        for reserved in [0, 10, 5000] {
            let mut groups = Groups::with_capacity(reserved);
            let mut model: HashMap<GroupKey, GroupSlot> = HashMap::new();
            for round in 0..3u64 {
                for n in 0..3000u32 {
                    let k = key(n * 7 % 3001);
                    let slot = groups.entry_or_default(k);
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
