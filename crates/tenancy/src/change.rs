//! What a reader of the registry must refresh after an event.

use halo_authority::{Epoch, GroupKey};
use halo_ids::{HaloGuid, LinkGuid, Timestamp};

/// One consequence of an applied event, in a deterministic order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A site was added or changed (details, status, authority flag or epoch).
    SiteUpserted(HaloGuid),
    /// A site left service (now removed or uninstalled). It stays readable through
    /// [`Registry::site`](crate::Registry::site) for status queries, but must no
    /// longer be routed.
    SiteRetired(HaloGuid),
    /// A Link was registered or changed.
    LinkUpserted(LinkGuid),
    /// A Link's status changed to uninstalled.
    LinkUninstalled(LinkGuid),
    /// A heartbeat: the Link and all its live sites were heard at `at`.
    /// Nothing else changed, so readers need not rebuild anything.
    LinkHeard {
        /// The Link.
        link: LinkGuid,
        /// When.
        at: Timestamp,
    },
    /// A group's holder changed and its epoch grew.
    AuthorityChanged {
        /// The group.
        group: GroupKey,
        /// The new holder, `None` when vacant.
        holder: Option<HaloGuid>,
        /// The new epoch.
        epoch: Epoch,
    },
}
