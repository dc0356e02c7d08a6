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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    holder: Option<HaloGuid>,
    epoch: Epoch,
    /// The member that last held authority, while the group is vacant since it left.
    vacated_by: Option<Member>,
    members: Vec<Member>,
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
        members: Vec<Member>,
    ) -> Result<Self, AuthorityError> {
        let broken = |what| Err(AuthorityError::InconsistentState { what });
        let mut sites: Vec<HaloGuid> = members.iter().map(|m| m.halo_guid).collect();
        sites.sort_unstable();
        if sites.windows(2).any(|w| w[0] == w[1]) {
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
        Ok(Self {
            holder,
            epoch,
            vacated_by,
            members,
        })
    }

    /// The authoritative site, if any.
    pub fn holder(&self) -> Option<HaloGuid> {
        self.holder
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The live members in the order they joined.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member whose departure left the group vacant (cleared once a holder is set).
    pub fn vacated_by(&self) -> Option<&Member> {
        self.vacated_by.as_ref()
    }

    /// The member with this Halo GUID.
    pub fn member(&self, site: HaloGuid) -> Option<&Member> {
        self.members.iter().find(|m| m.halo_guid == site)
    }

    /// Whether no site is live in the group.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Applies `event`: [`elect`], then the membership change.
    ///
    /// # Errors
    /// Whatever [`elect`] refuses; the group is then unchanged.
    pub fn apply(&mut self, event: &AuthorityEvent) -> Result<Outcome, AuthorityError> {
        let outcome = elect(self, event)?;
        let old_holder = self.holder.and_then(|h| self.member(h).copied());
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
            self.vacated_by = Some(old);
        }
        self.holder = outcome.holder;
        self.epoch = outcome.epoch;
        Ok(outcome)
    }
}
