//! Authority groups: their key, members and state.

use halo_ids::{Environment, HaloGuid, LinkGuid, PmsId, PmsType};

use crate::election::{AuthorityEvent, Outcome, elect};
use crate::{AuthorityError, Epoch};

/// The key of an authority group: (Environment, PMS type, PMS ID).
///
/// The PMS type is inside [`PmsId`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct GroupKey {
    /// The environment of the sites' Links.
    pub environment: Environment,
    /// The PMS ID the sites share (for D4W the parent CRN, or a fake CRN).
    pub pms_id: PmsId,
}

impl GroupKey {
    /// Builds a key.
    pub fn new(environment: Environment, pms_id: PmsId) -> Self {
        Self {
            environment,
            pms_id,
        }
    }

    /// The PMS type of the group.
    pub fn pms_type(&self) -> PmsType {
        self.pms_id.pms_type()
    }
}

/// One live member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The member's Halo GUID (`site` in serde: snapshots keep it).
    #[serde(rename = "site")]
    pub halo_guid: HaloGuid,
    /// The Link that serves it.
    pub link: LinkGuid,
    /// Whether it may hold authority.
    pub eligible: bool,
}

/// The state of one authority group: its live members, holder and epoch.
///
/// Mutated only through [`GroupState::apply`], which runs [`elect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    epoch: Epoch,
    /// The live members in join order; most groups have one, held inline (a million
    /// groups would otherwise hold a million small heap blocks).
    members: Members,
    /// The holder's position in `members`, or [`NO_HOLDER`]. The holder is always a
    /// member, so its position says as much as its Halo GUID in a quarter of the room.
    holder: u32,
    /// The member that last held authority, while the group is vacant since it left
    /// (rare: boxed so that other groups do not carry its room).
    vacated_by: Option<Box<Member>>,
}

/// `GroupState::holder` when the group has no holder.
const NO_HOLDER: u32 = u32::MAX;

/// A group's live members: one inline (most groups), any other number on the heap.
///
/// 40 bytes where a `SmallVec<[Member; 1]>` takes 48: the one-member case is told
/// apart by the niche of `Member::eligible` (a `bool`), which lies past the vector's
/// 24 bytes, so no tag is stored. Always `One` for exactly one member (equal lists
/// are equal values).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Members {
    One(Member),
    Many(Vec<Member>),
}

impl Default for Members {
    fn default() -> Self {
        Members::Many(Vec::new())
    }
}

impl From<Vec<Member>> for Members {
    fn from(mut list: Vec<Member>) -> Self {
        match list.pop() {
            Some(only) if list.is_empty() => Members::One(only),
            Some(last) => {
                list.push(last);
                Members::Many(list)
            }
            None => Members::Many(list),
        }
    }
}

impl Members {
    fn as_slice(&self) -> &[Member] {
        match self {
            Members::One(member) => std::slice::from_ref(member),
            Members::Many(list) => list,
        }
    }

    fn push(&mut self, member: Member) {
        match self {
            Members::Many(list) if list.is_empty() => *self = Members::One(member),
            Members::Many(list) => list.push(member),
            Members::One(first) => *self = Members::Many(vec![*first, member]),
        }
    }

    fn retain(&mut self, keep: impl FnMut(&Member) -> bool) {
        let mut list = match std::mem::take(self) {
            Members::One(member) => vec![member],
            Members::Many(list) => list,
        };
        list.retain(keep);
        *self = Members::from(list);
    }
}

impl Default for GroupState {
    fn default() -> Self {
        Self {
            epoch: Epoch::ZERO,
            members: Members::default(),
            holder: NO_HOLDER,
            vacated_by: None,
        }
    }
}

impl GroupState {
    /// An empty group that has never had a holder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a group from its parts (for loading a snapshot), checking what
    /// [`GroupState::apply`] keeps true: members are distinct, the holder is an
    /// eligible member, and only a group without a holder remembers who vacated it.
    ///
    /// # Errors
    /// [`AuthorityError::InconsistentState`] naming the broken rule.
    pub fn from_parts(
        holder: Option<HaloGuid>,
        epoch: Epoch,
        vacated_by: Option<Member>,
        members: impl IntoIterator<Item = Member>,
    ) -> Result<Self, AuthorityError> {
        let broken = |what| Err(AuthorityError::InconsistentState { what });
        let members: Vec<Member> = members.into_iter().collect();
        let twice = match members.len() {
            0 | 1 => false,
            2..=16 => members
                .iter()
                .enumerate()
                .any(|(i, m)| members[..i].iter().any(|n| n.halo_guid == m.halo_guid)),
            _ => {
                let mut sites: Vec<HaloGuid> = members.iter().map(|m| m.halo_guid).collect();
                sites.sort_unstable();
                sites.windows(2).any(|w| w[0] == w[1])
            }
        };
        if twice {
            return broken("a site is a member twice");
        }
        if let Some(h) = holder {
            if !members.iter().any(|m| m.halo_guid == h && m.eligible) {
                return broken("the holder is not an eligible member");
            }
            if vacated_by.is_some() {
                return broken("a group with a holder cannot be vacated");
            }
            if epoch == Epoch::ZERO {
                return broken("a group with a holder has epoch zero");
            }
        }
        let mut state = Self {
            epoch,
            members: Members::from(members),
            holder: NO_HOLDER,
            vacated_by: vacated_by.map(Box::new),
        };
        state.set_holder(holder);
        Ok(state)
    }

    /// Sets the holder (a member, or none) by its Halo GUID.
    fn set_holder(&mut self, holder: Option<HaloGuid>) {
        self.holder = holder
            .and_then(|h| {
                self.members
                    .as_slice()
                    .iter()
                    .position(|m| m.halo_guid == h)
            })
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(NO_HOLDER);
    }

    /// The authoritative site, if any.
    pub fn holder(&self) -> Option<HaloGuid> {
        self.members
            .as_slice()
            .get(self.holder as usize)
            .map(|member| member.halo_guid)
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The live members in the order they joined.
    pub fn members(&self) -> &[Member] {
        self.members.as_slice()
    }

    /// The member whose departure left the group vacant (cleared once a holder is set).
    pub fn vacated_by(&self) -> Option<&Member> {
        self.vacated_by.as_deref()
    }

    /// The member with this Halo GUID.
    pub fn member(&self, site: HaloGuid) -> Option<&Member> {
        self.members.as_slice().iter().find(|m| m.halo_guid == site)
    }

    /// Whether no site is live in the group.
    pub fn is_empty(&self) -> bool {
        self.members.as_slice().is_empty()
    }

    /// Applies `event`: [`elect`], then the membership change.
    ///
    /// # Errors
    /// Whatever [`elect`] refuses; the group is then unchanged.
    pub fn apply(&mut self, event: &AuthorityEvent) -> Result<Outcome, AuthorityError> {
        let outcome = elect(self, event)?;
        let old_holder = self.members.as_slice().get(self.holder as usize).copied();
        match event {
            AuthorityEvent::Joined {
                halo_guid: site,
                eligible,
                link,
            } => self.members.push(Member {
                halo_guid: *site,
                link: *link,
                eligible: *eligible,
            }),
            AuthorityEvent::Left { halo_guid: site } => {
                self.members.retain(|m| m.halo_guid != *site)
            }
            AuthorityEvent::Promoted { .. } => {}
            AuthorityEvent::Reinstalled {
                previous,
                halo_guid: site,
                link,
                eligible,
            } => {
                self.members.retain(|m| m.halo_guid != *previous);
                self.members.push(Member {
                    halo_guid: *site,
                    link: *link,
                    eligible: *eligible,
                });
            }
        }
        if outcome.holder.is_some() {
            self.vacated_by = None;
        } else if let Some(old) = old_holder {
            self.vacated_by = Some(Box::new(old));
        }
        self.set_holder(outcome.holder);
        self.epoch = outcome.epoch;
        Ok(outcome)
    }
}

#[cfg(test)]
mod members_tests {
    use super::*;

    fn member(n: u8) -> Member {
        Member {
            halo_guid: HaloGuid::from_u128(u128::from(n) + 1).unwrap(),
            link: LinkGuid::from_u128(7).unwrap(),
            eligible: n % 2 == 0,
        }
    }

    /// The layout the registry's million groups are sized by.
    #[test]
    fn a_group_state_takes_64_bytes() {
        assert_eq!(std::mem::size_of::<Members>(), 40);
        assert_eq!(std::mem::size_of::<GroupState>(), 64);
    }

    /// Every sequence of joins and departures leaves the list a `Vec` would, one
    /// member inline, and lists of equal members equal whatever their history.
    #[test]
    fn members_follow_a_vec_and_compare_by_content() {
        let mut members = Members::default();
        let mut model: Vec<Member> = Vec::new();
        let script: [(bool, u8); 14] = [
            (true, 1),
            (true, 2),
            (false, 1),
            (true, 3),
            (true, 4),
            (false, 3),
            (false, 2),
            (false, 4),
            (true, 5),
            (false, 5),
            (false, 9),
            (true, 6),
            (true, 7),
            (false, 7),
        ];
        for (join, n) in script {
            if join {
                members.push(member(n));
                model.push(member(n));
            } else {
                members.retain(|m| m.halo_guid != member(n).halo_guid);
                model.retain(|m| m.halo_guid != member(n).halo_guid);
            }
            assert_eq!(members.as_slice(), model.as_slice());
            assert_eq!(members, Members::from(model.clone()));
            assert_eq!(matches!(members, Members::One(_)), model.len() == 1);
        }
    }
}
