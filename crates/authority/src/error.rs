//! The one error type of this crate.

use halo_ids::{HaloGuid, LinkGuid};

/// Why an authority event was refused. A refused event changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The site is already a member of the group.
    #[error("site {0} is already a member of its authority group")]
    AlreadyMember(HaloGuid),
    /// The site is not a member of the group.
    #[error("site {0} is not a member of the authority group")]
    NotMember(HaloGuid),
    /// The site may not hold authority.
    #[error("site {0} is not eligible to be authoritative")]
    NotEligible(HaloGuid),
    /// A promotion named the site that already holds authority.
    #[error("site {0} is already authoritative")]
    AlreadyHolder(HaloGuid),
    /// A promotion did not name the operator who made it.
    #[error("a promotion must name the operator who made it")]
    MissingActor,
    /// A promotion did not give a reason.
    #[error("a promotion must give a reason")]
    MissingReason,
    /// A reinstall came from a different Link than the previous install.
    #[error("reinstall of {previous} must come from its own link {expected}")]
    ReinstallFromOtherLink {
        /// The Halo GUID of the previous install.
        previous: HaloGuid,
        /// The Link that owned it.
        expected: LinkGuid,
    },
    /// The epoch counter would overflow (not reachable in practice).
    #[error("the group's epoch is exhausted")]
    EpochExhausted,
    /// Parts given to [`GroupState::from_parts`](crate::GroupState::from_parts) break
    /// a rule the election keeps (a damaged or forged snapshot).
    #[error("inconsistent authority group: {what}")]
    InconsistentState {
        /// The rule broken.
        what: &'static str,
    },
}
