//! Authority groups: their key, members and state.

use std::fmt;

use halo_ids::{Environment, HaloGuid, LinkGuid, PmsId, PmsType};
use smallvec::SmallVec;

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
///
/// Laid out for a million groups (48 bytes, so that a group with its key takes 72):
/// the first member inline, the low half of the epoch inline, and everything most
/// groups lack (further members, the holder among them, who vacated the group, an
/// epoch past `u32::MAX`) in one boxed `Rare` that exists only while some of it
/// does. Compared by content (`PartialEq` below), not by layout.
#[derive(Clone, Default)]
pub struct GroupState {
    /// What most groups lack; `None` when all of it is empty.
    rare: Option<Box<Rare>>,
    /// The low 32 bits of the epoch (the high ones are `Rare::epoch_high`).
    epoch_low: u32,
    /// The first live member in join order; `None` only for an empty group.
    first: Option<Member>,
    /// Whether `first` is the holder.
    first_holds: bool,
}

/// The parts of a [`GroupState`] that most groups lack: 64 bytes, boxed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rare {
    /// The live members after the first, in join order (inline when one).
    rest: SmallVec<[Member; 1]>,
    /// The holder's position in `rest`, or [`NO_HOLDER`].
    holder: u32,
    /// The high 32 bits of the epoch.
    epoch_high: u32,
    /// The member that last held authority, while the group is vacant since it left.
    vacated_by: Option<Box<Member>>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.rest.is_empty() && self.epoch_high == 0 && self.vacated_by.is_none()
    }
}

/// `Rare::holder` when the holder is not among `rest`.
const NO_HOLDER: u32 = u32::MAX;

impl PartialEq for GroupState {
    fn eq(&self, other: &Self) -> bool {
        self.epoch() == other.epoch()
            && self.holder() == other.holder()
            && self.vacated_by() == other.vacated_by()
            && self.members().eq(other.members())
    }
}

impl Eq for GroupState {}

impl fmt::Debug for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupState")
            .field("epoch", &self.epoch())
            .field("holder", &self.holder())
            .field("members", &self.members().collect::<Vec<_>>())
            .field("vacated_by", &self.vacated_by())
            .finish()
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
        let mut members = members.into_iter();
        let first = members.next();
        let rest: SmallVec<[Member; 1]> = members.collect();
        let all = || first.iter().chain(rest.iter());
        let twice = match rest.len() {
            0 => false,
            1..=15 => all()
                .enumerate()
                .any(|(i, m)| all().take(i).any(|n| n.halo_guid == m.halo_guid)),
            _ => {
                let mut sites: Vec<HaloGuid> = all().map(|m| m.halo_guid).collect();
                sites.sort_unstable();
                sites.windows(2).any(|w| w[0] == w[1])
            }
        };
        if twice {
            return broken("a site is a member twice");
        }
        if let Some(h) = holder {
            if !all().any(|m| m.halo_guid == h && m.eligible) {
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
            first,
            rare: Some(Box::new(Rare {
                rest,
                holder: NO_HOLDER,
                epoch_high: 0,
                vacated_by: vacated_by.map(Box::new),
            })),
            ..Self::default()
        };
        state.set_epoch(epoch);
        state.set_holder(holder);
        Ok(state)
    }

    /// The boxed parts, made if missing.
    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Drops the boxed parts once nothing is left in them.
    fn tidy(&mut self) {
        if self.rare.as_deref().is_some_and(Rare::is_empty) {
            self.rare = None;
        }
    }

    /// Sets the epoch: the low half inline, the high half boxed (almost never).
    fn set_epoch(&mut self, epoch: Epoch) {
        let value = epoch.get();
        self.epoch_low = value as u32;
        let high = (value >> 32) as u32;
        if high != 0 || self.rare.is_some() {
            self.rare_mut().epoch_high = high;
        }
        self.tidy();
    }

    /// Sets the holder (a member, or none) by its Halo GUID.
    fn set_holder(&mut self, holder: Option<HaloGuid>) {
        self.first_holds = holder.is_some() && self.first.map(|m| m.halo_guid) == holder;
        let in_rest = holder
            .filter(|_| !self.first_holds)
            .and_then(|h| {
                let rest = self.rare.as_deref()?.rest.iter();
                rest.clone().position(|m| m.halo_guid == h)
            })
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(NO_HOLDER);
        if let Some(rare) = self.rare.as_deref_mut() {
            rare.holder = in_rest;
        }
        self.tidy();
    }

    /// Sets who vacated the group (or no one).
    fn set_vacated_by(&mut self, vacated_by: Option<Member>) {
        match vacated_by {
            Some(member) => self.rare_mut().vacated_by = Some(Box::new(member)),
            None => {
                if let Some(rare) = self.rare.as_deref_mut() {
                    rare.vacated_by = None;
                }
            }
        }
        self.tidy();
    }

    /// Adds a member last.
    fn push(&mut self, member: Member) {
        if self.first.is_none() {
            self.first = Some(member);
        } else {
            self.rare_mut().rest.push(member);
        }
    }

    /// Removes the member with this Halo GUID, if any, keeping the others' order.
    /// The holder must be set again afterwards.
    fn remove(&mut self, site: HaloGuid) {
        if self.first.is_some_and(|m| m.halo_guid == site) {
            self.first = match self.rare.as_deref_mut() {
                Some(rare) if !rare.rest.is_empty() => Some(rare.rest.remove(0)),
                _ => None,
            };
        } else if let Some(rare) = self.rare.as_deref_mut() {
            rare.rest.retain(|m| m.halo_guid != site);
        }
        self.tidy();
    }

    /// The authoritative site, if any.
    pub fn holder(&self) -> Option<HaloGuid> {
        self.holder_member().map(|m| m.halo_guid)
    }

    fn holder_member(&self) -> Option<&Member> {
        if self.first_holds {
            return self.first.as_ref();
        }
        let rare = self.rare.as_deref()?;
        rare.rest.get(rare.holder as usize)
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        let high = self.rare.as_deref().map_or(0, |r| r.epoch_high);
        Epoch::new((u64::from(high) << 32) | u64::from(self.epoch_low))
    }

    /// The live members in the order they joined.
    pub fn members(&self) -> impl Iterator<Item = &Member> + Clone + '_ {
        let rest = self.rare.as_deref().map_or(&[][..], |r| r.rest.as_slice());
        self.first.iter().chain(rest)
    }

    /// How many live members the group has.
    pub fn member_count(&self) -> usize {
        let rest = self.rare.as_deref().map_or(0, |r| r.rest.len());
        usize::from(self.first.is_some()) + rest
    }

    /// The member whose departure left the group vacant (cleared once a holder is set).
    pub fn vacated_by(&self) -> Option<&Member> {
        self.rare.as_deref()?.vacated_by.as_deref()
    }

    /// The member with this Halo GUID.
    pub fn member(&self, site: HaloGuid) -> Option<&Member> {
        self.members().find(|m| m.halo_guid == site)
    }

    /// Whether no site is live in the group.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Applies `event`: [`elect`], then the membership change.
    ///
    /// # Errors
    /// Whatever [`elect`] refuses; the group is then unchanged.
    pub fn apply(&mut self, event: &AuthorityEvent) -> Result<Outcome, AuthorityError> {
        let outcome = elect(self, event)?;
        let old_holder = self.holder_member().copied();
        match event {
            AuthorityEvent::Joined {
                halo_guid: site,
                eligible,
                link,
            } => self.push(Member {
                halo_guid: *site,
                link: *link,
                eligible: *eligible,
            }),
            AuthorityEvent::Left { halo_guid: site } => self.remove(*site),
            AuthorityEvent::Promoted { .. } => {}
            AuthorityEvent::Reinstalled {
                previous,
                halo_guid: site,
                link,
                eligible,
            } => {
                self.remove(*previous);
                self.push(Member {
                    halo_guid: *site,
                    link: *link,
                    eligible: *eligible,
                });
            }
        }
        if outcome.holder.is_some() {
            self.set_vacated_by(None);
        } else if let Some(old) = old_holder {
            self.set_vacated_by(Some(old));
        }
        self.set_holder(outcome.holder);
        self.set_epoch(outcome.epoch);
        Ok(outcome)
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use proptest::prelude::*;

    fn h(n: u8) -> HaloGuid {
        HaloGuid::from_u128(u128::from(n) + 1).unwrap()
    }

    fn l(n: u8) -> LinkGuid {
        LinkGuid::from_u128(u128::from(n) + 100).unwrap()
    }

    /// The layout the registry's million groups are sized by: 48 bytes, so that a
    /// group with its 23-byte key takes 72 in the registry's table, and 64 boxed.
    #[test]
    fn a_group_state_takes_48_bytes() {
        assert_eq!(std::mem::size_of::<GroupState>(), 48);
        assert_eq!(std::mem::size_of::<Rare>(), 64);
        assert_eq!(std::mem::size_of::<(GroupKey, GroupState)>(), 72);
    }

    /// A group as plain values: what every accessor must return.
    #[derive(Debug, Clone, Default)]
    struct Plain {
        epoch: Epoch,
        holder: Option<HaloGuid>,
        members: Vec<Member>,
        vacated_by: Option<Member>,
    }

    impl Plain {
        /// The membership and bookkeeping update of `GroupState::apply`, on plain
        /// values, given the election's outcome.
        fn apply(&mut self, event: &AuthorityEvent, outcome: &Outcome) {
            let old_holder = self
                .holder
                .and_then(|h| self.members.iter().find(|m| m.halo_guid == h).copied());
            match event {
                AuthorityEvent::Joined {
                    halo_guid,
                    eligible,
                    link,
                } => self.members.push(Member {
                    halo_guid: *halo_guid,
                    link: *link,
                    eligible: *eligible,
                }),
                AuthorityEvent::Left { halo_guid } => {
                    self.members.retain(|m| m.halo_guid != *halo_guid)
                }
                AuthorityEvent::Promoted { .. } => {}
                AuthorityEvent::Reinstalled {
                    previous,
                    halo_guid,
                    link,
                    eligible,
                } => {
                    self.members.retain(|m| m.halo_guid != *previous);
                    self.members.push(Member {
                        halo_guid: *halo_guid,
                        link: *link,
                        eligible: *eligible,
                    });
                }
            }
            if outcome.holder.is_some() {
                self.vacated_by = None;
            } else if old_holder.is_some() {
                self.vacated_by = old_holder;
            }
            self.holder = outcome.holder;
            self.epoch = outcome.epoch;
        }
    }

    /// Every accessor of `g` agrees with the plain model.
    fn agrees(g: &GroupState, plain: &Plain) -> Result<(), TestCaseError> {
        prop_assert_eq!(g.epoch(), plain.epoch);
        prop_assert_eq!(g.holder(), plain.holder);
        prop_assert_eq!(
            g.members().copied().collect::<Vec<_>>(),
            plain.members.clone()
        );
        prop_assert_eq!(g.member_count(), plain.members.len());
        prop_assert_eq!(g.is_empty(), plain.members.is_empty());
        prop_assert_eq!(g.vacated_by().copied(), plain.vacated_by);
        for n in 0..12 {
            let want = plain.members.iter().find(|m| m.halo_guid == h(n));
            prop_assert_eq!(g.member(h(n)), want);
        }
        Ok(())
    }

    fn arb_event() -> impl Strategy<Value = AuthorityEvent> {
        let site = 0u8..6;
        prop_oneof![
            4 => (site.clone(), any::<bool>(), 0u8..2).prop_map(|(s, e, k)| AuthorityEvent::Joined {
                halo_guid: h(s),
                eligible: e || s % 3 != 0,
                link: l(k),
            }),
            3 => site.clone().prop_map(|s| AuthorityEvent::Left { halo_guid: h(s) }),
            2 => site.clone().prop_map(|s| AuthorityEvent::Promoted {
                halo_guid: h(s),
                actor: "support:alice".into(),
                reason: "migration".into(),
            }),
            2 => (site, 6u8..12, 0u8..2).prop_map(|(p, s, k)| AuthorityEvent::Reinstalled {
                previous: h(p),
                halo_guid: h(s),
                link: l(k),
                eligible: s % 2 == 0,
            }),
        ]
    }

    /// Epochs the groups start from: zero, around the inline half's limit, and past it.
    fn arb_start() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0),
            Just(u64::from(u32::MAX) - 2),
            Just(u64::from(u32::MAX)),
            Just(u64::from(u32::MAX) + 1),
            Just((7u64 << 32) | 5),
            Just(u64::MAX - 3),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Groups of 0, 1, 2 and more members, with and without a holder, vacated or
        /// not, at any epoch: every accessor returns what plain values would, a group
        /// rebuilt from its parts equals it, and a refused event changes nothing.
        #[test]
        fn a_group_reads_back_as_plain_values(
            start in arb_start(),
            events in prop::collection::vec(arb_event(), 0..60),
        ) {
            let mut g = GroupState::from_parts(None, Epoch::new(start), None, []).unwrap();
            let mut plain = Plain { epoch: Epoch::new(start), ..Plain::default() };
            agrees(&g, &plain)?;
            for event in &events {
                let before = g.clone();
                let expected = elect(&g, event);
                match g.apply(event) {
                    Err(e) => {
                        prop_assert_eq!(Err(e), expected);
                        prop_assert_eq!(&g, &before);
                    }
                    Ok(outcome) => {
                        prop_assert_eq!(Ok(outcome), expected);
                        plain.apply(event, &outcome);
                    }
                }
                agrees(&g, &plain)?;
                let rebuilt = GroupState::from_parts(
                    plain.holder,
                    plain.epoch,
                    plain.vacated_by,
                    plain.members.clone(),
                )
                .unwrap();
                agrees(&rebuilt, &plain)?;
                prop_assert_eq!(&rebuilt, &g);
                prop_assert_eq!(&g.clone(), &g);
                // Nothing boxed is kept once all of it is empty.
                let boxed = plain.members.len() > 1
                    || plain.vacated_by.is_some()
                    || plain.epoch.get() > u64::from(u32::MAX);
                prop_assert_eq!(g.rare.is_some(), boxed);
                prop_assert_eq!(rebuilt.rare.is_some(), boxed);
            }
        }
    }

    /// Groups are equal by content: the same members, holder, epoch and vacating
    /// member, whatever their histories; and unequal when any of them differs.
    #[test]
    fn groups_compare_by_content() {
        let m = |n: u8| Member {
            halo_guid: h(n),
            link: l(0),
            eligible: true,
        };
        let parts = |holder: Option<u8>, epoch: u64, vacated: Option<u8>, members: &[u8]| {
            GroupState::from_parts(
                holder.map(h),
                Epoch::new(epoch),
                vacated.map(m),
                members.iter().map(|&n| m(n)),
            )
            .unwrap()
        };
        let mut joined = GroupState::new();
        for n in [1, 2, 3] {
            joined
                .apply(&AuthorityEvent::Joined {
                    halo_guid: h(n),
                    eligible: true,
                    link: l(0),
                })
                .unwrap();
        }
        assert_eq!(joined, parts(Some(1), 1, None, &[1, 2, 3]));
        assert_ne!(joined, parts(Some(2), 1, None, &[1, 2, 3]));
        assert_ne!(joined, parts(Some(1), 2, None, &[1, 2, 3]));
        assert_ne!(joined, parts(Some(1), 1, None, &[1, 3, 2]));
        assert_ne!(joined, parts(Some(1), 1, None, &[1, 2]));
        assert_ne!(parts(None, 1, Some(4), &[1]), parts(None, 1, Some(5), &[1]));
        assert_ne!(parts(None, 1, Some(4), &[1]), parts(None, 1, None, &[1]));
        assert_ne!(parts(None, 1 << 32, None, &[]), parts(None, 0, None, &[]));
    }
}
