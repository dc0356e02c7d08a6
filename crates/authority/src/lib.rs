//! Authority election for groups of sites sharing one PMS ID: a pure function over a group and an event.
//!
//! Several sites (databases) may share one PMS ID: a backup server, a test copy, the
//! old and the new server of a migration. They form an **authority group** keyed by
//! [`GroupKey`] (Environment, PMS type, PMS ID). At most one member of a group is the
//! **holder** (the authoritative site); integrators can query only the holder.
//!
//! # Rules
//!
//! [`elect`] is a pure function from a [`GroupState`] and an [`AuthorityEvent`] to the
//! next [`Outcome`] (holder and epoch). [`GroupState::apply`] runs it and then updates
//! the membership. The rules, all of them:
//!
//! 1. **Join.** A site joins as non-authoritative, except that an eligible site
//!    joining a group that has no holder *and no other eligible member* becomes the
//!    holder (the first eligible site in an empty group). If a vacant group still has
//!    an eligible member, that is ambiguous, and the group waits for a promotion.
//! 2. **Leave.** A member leaves (its database was removed, or its Link uninstalled).
//!    If it was the holder, the group becomes **vacant** and remembers who vacated it.
//!    No successor is picked: a backup that happens to be left over may hold stale
//!    data, and stale data served as truth is worse than a short outage.
//! 3. **Promote.** A support operator promotes an eligible member, naming themselves
//!    and a reason. This is the only way to move authority between different databases.
//! 4. **Reinstall.** A Link reinstall gives the same database a new Halo GUID. When
//!    the previous Halo GUID is the holder, or vacated the group and nobody has held it
//!    since, and the reinstall comes from the *same Link*, the new Halo GUID inherits
//!    authority automatically: it is the same database behind the same Link, so the
//!    hand-over is unambiguous and safe. Otherwise the new site joins under rule 1.
//!
//! Being offline is not an event here at all: availability never moves authority.
//!
//! Every change of holder (including to and from vacant) increments the group's
//! [`Epoch`], a fencing token: routes carry it, and a Link refuses work stamped with
//! an epoch older than the newest it has seen for that database. Epochs never decrease.
//!
//! This crate knows nothing of networks, clocks or storage.
//!
//! ```
//! use halo_authority::{AuthorityEvent, Epoch, GroupState};
//! use halo_ids::{HaloGuid, LinkGuid};
//!
//! let link = LinkGuid::from_u128(1)?;
//! let (main, backup) = (HaloGuid::from_u128(10)?, HaloGuid::from_u128(11)?);
//! let mut group = GroupState::new();
//! group.apply(&AuthorityEvent::Joined { halo_guid: main, eligible: true, link }).unwrap();
//! group.apply(&AuthorityEvent::Joined { halo_guid: backup, eligible: true, link }).unwrap();
//! assert_eq!(group.holder(), Some(main));
//! let out = group
//!     .apply(&AuthorityEvent::Promoted {
//!         halo_guid: backup,
//!         actor: "support:alice".into(),
//!         reason: "server migration".into(),
//!     })
//!     .unwrap();
//! assert_eq!(out.holder, Some(backup));
//! assert_eq!(out.epoch, Epoch::new(2));
//! # Ok::<(), halo_ids::IdError>(())
//! ```

mod election;
mod error;
mod group;

pub use election::{AuthorityEvent, Outcome, elect};
pub use error::AuthorityError;
pub use group::{GroupKey, GroupState, Member};

/// The fencing token, defined in [`halo_ids`] so that the wire and the Link share it.
pub use halo_ids::Epoch;

#[cfg(test)]
mod tests;
