//! The election itself: a pure function from a group and an event to holder and epoch.

use halo_ids::{HaloGuid, LinkGuid};

use crate::{AuthorityError, Epoch, GroupState};

/// Something that happened to a group's membership or authority.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type")]
pub enum AuthorityEvent {
    /// A site with this group's PMS ID was attached.
    Joined {
        /// The new member.
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
        /// Whether it may hold authority.
        eligible: bool,
        /// The Link that serves it.
        link: LinkGuid,
    },
    /// A member was removed or uninstalled.
    Left {
        /// The departing member.
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
    },
    /// A support operator made a member the holder.
    Promoted {
        /// The member to promote.
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
        /// Who did it (recorded, must not be blank).
        actor: String,
        /// Why (recorded, must not be blank).
        reason: String,
    },
    /// A Link reinstall gave the database behind `previous` the new Halo GUID `halo_guid`.
    Reinstalled {
        /// The Halo GUID of the previous install (a member, or gone already).
        previous: HaloGuid,
        /// The new Halo GUID.
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
        /// The Link reporting the reinstall.
        link: LinkGuid,
        /// Whether the new site may hold authority.
        eligible: bool,
    },
}

/// The holder and epoch after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The authoritative site, if any.
    pub holder: Option<HaloGuid>,
    /// The group's epoch: one more than before if the holder changed, else the same.
    pub epoch: Epoch,
}

/// Decides the holder and epoch of `group` after `event`. Pure: it reads the group
/// and returns the outcome; [`GroupState::apply`] applies it.
///
/// The rules are in the [crate docs](crate).
///
/// # Errors
/// [`AuthorityError`] when the event does not fit the group (an unknown member, a
/// duplicate join, a promotion without actor or reason, a reinstall from another Link).
pub fn elect(group: &GroupState, event: &AuthorityEvent) -> Result<Outcome, AuthorityError> {
    let holder = group.holder();
    let new_holder = match event {
        AuthorityEvent::Joined {
            halo_guid: site,
            eligible,
            ..
        } => {
            if group.member(*site).is_some() {
                return Err(AuthorityError::AlreadyMember(*site));
            }
            join(group, *site, *eligible, None)
        }
        AuthorityEvent::Left { halo_guid: site } => {
            if group.member(*site).is_none() {
                return Err(AuthorityError::NotMember(*site));
            }
            if holder == Some(*site) { None } else { holder }
        }
        AuthorityEvent::Promoted {
            halo_guid: site,
            actor,
            reason,
        } => {
            let member = group
                .member(*site)
                .ok_or(AuthorityError::NotMember(*site))?;
            if !member.eligible {
                return Err(AuthorityError::NotEligible(*site));
            }
            if holder == Some(*site) {
                return Err(AuthorityError::AlreadyHolder(*site));
            }
            if actor.trim().is_empty() {
                return Err(AuthorityError::MissingActor);
            }
            if reason.trim().is_empty() {
                return Err(AuthorityError::MissingReason);
            }
            Some(*site)
        }
        AuthorityEvent::Reinstalled {
            previous,
            halo_guid: site,
            link,
            eligible,
        } => {
            if group.member(*site).is_some() {
                return Err(AuthorityError::AlreadyMember(*site));
            }
            let previous_member = group
                .member(*previous)
                .or_else(|| group.vacated_by().filter(|m| m.halo_guid == *previous));
            if let Some(prev) = previous_member {
                if prev.link != *link {
                    return Err(AuthorityError::ReinstallFromOtherLink {
                        previous: *previous,
                        expected: prev.link,
                    });
                }
            }
            let inherits = holder == Some(*previous)
                || (holder.is_none()
                    && group
                        .vacated_by()
                        .is_some_and(|m| m.halo_guid == *previous && m.link == *link));
            if inherits {
                // Same database, same Link: the hand-over is unambiguous. An ineligible
                // new install cannot inherit, and the group becomes vacant.
                if *eligible { Some(*site) } else { None }
            } else {
                join(group, *site, *eligible, Some(*previous))
            }
        }
    };
    let epoch = if new_holder == holder {
        group.epoch()
    } else {
        group.epoch().next().ok_or(AuthorityError::EpochExhausted)?
    };
    Ok(Outcome {
        holder: new_holder,
        epoch,
    })
}

/// Rule 1: the holder after `site` joins (with `leaving` departing at the same time).
fn join(
    group: &GroupState,
    site: HaloGuid,
    eligible: bool,
    leaving: Option<HaloGuid>,
) -> Option<HaloGuid> {
    let holder = group.holder();
    if holder.is_some() && holder != leaving {
        return holder;
    }
    let other_eligible = group
        .members()
        .any(|m| m.eligible && Some(m.halo_guid) != leaving);
    if eligible && !other_eligible {
        Some(site)
    } else {
        None
    }
}
