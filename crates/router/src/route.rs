//! The compact route record: only what the read path needs to decide and dispatch.

use std::fmt;
use std::sync::Arc;

use halo_authority::{Epoch, GroupKey};
use halo_ids::{Environment, HaloGuid, LinkGuid, PmsId, Timestamp};
use halo_policy::SiteView;
use halo_tenancy::{Catalogue, Site, SiteStatus};

use crate::link::LinkEntry;

/// What a writer publishes for one site: plain data, built from the registry by
/// [`crate::Router::apply_changes`] (or directly, in tests and benchmarks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRoute {
    /// The site.
    pub halo_guid: HaloGuid,
    /// The Link that serves it.
    pub link: LinkGuid,
    /// The Link's environment.
    pub environment: Environment,
    /// The PMS ID routing uses (the parent CRN, or the fake CRN of a demo copy).
    pub pms_id: PmsId,
    /// Its lifecycle status. Only live sites (initialising, active) are kept in the
    /// table; publishing another status removes the site, so it resolves as unknown.
    pub status: SiteStatus,
    /// Whether it holds authority in its group.
    pub authoritative: bool,
    /// Its group's epoch (the fencing token jobs carry).
    pub epoch: Epoch,
    /// The catalogues the site offers; the first `is_default` one is used when a request
    /// names none.
    pub catalogues: Arc<[Catalogue]>,
}

impl SiteRoute {
    /// The routing view of a registry site.
    pub fn from_site(site: &Site) -> Self {
        Self {
            halo_guid: site.halo_guid(),
            link: site.link_guid(),
            environment: site.environment(),
            pms_id: site.pms_id(),
            status: site.status(),
            authoritative: site.is_authoritative(),
            epoch: site.epoch(),
            catalogues: Arc::clone(site.shared_catalogues()),
        }
    }

    /// The authority group this site belongs to.
    pub fn group(&self) -> GroupKey {
        GroupKey::new(self.environment, self.pms_id)
    }
}

/// The record the table holds for one routable site: a [`SiteRoute`] plus the shared
/// entry of its Link (liveness and session), so dispatching needs no second lookup.
/// Immutable once published; a change publishes a new record.
#[derive(Clone)]
pub struct Route {
    site: SiteRoute,
    link: Arc<LinkEntry>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("site", &self.site)
            .field("link", &self.link)
            .finish()
    }
}

impl Route {
    pub(crate) fn new(site: SiteRoute, link: Arc<LinkEntry>) -> Self {
        Self { site, link }
    }

    pub(crate) fn with_authority(&self, authoritative: bool) -> Self {
        let mut site = self.site.clone();
        site.authoritative = authoritative;
        Self::new(site, Arc::clone(&self.link))
    }

    /// A record for the same Link holding other data, as the writer would publish it.
    /// For benchmarks that keep the same records in other tables; routing code
    /// publishes through [`crate::Router::publish`].
    #[doc(hidden)]
    pub fn with_site(&self, site: SiteRoute) -> Self {
        Self::new(site, Arc::clone(&self.link))
    }

    /// The published data.
    pub fn site(&self) -> &SiteRoute {
        &self.site
    }

    /// The site's Halo GUID.
    pub fn halo_guid(&self) -> HaloGuid {
        self.site.halo_guid
    }

    /// Its group's epoch at publication.
    pub fn epoch(&self) -> Epoch {
        self.site.epoch
    }

    /// Whether it was authoritative at publication.
    pub fn is_authoritative(&self) -> bool {
        self.site.authoritative
    }

    /// When its Link was last heard from (live: heartbeats update it in place).
    pub fn last_heard(&self) -> Timestamp {
        self.link.last_heard()
    }

    /// What the policy sees of the site (all `Copy`, no allocation).
    pub fn view(&self) -> SiteView {
        SiteView {
            halo_guid: self.site.halo_guid,
            environment: self.site.environment,
            pms_id: self.site.pms_id,
            authoritative: self.site.authoritative,
            active: self.site.status == SiteStatus::Active,
        }
    }

    pub(crate) fn link_entry(&self) -> &Arc<LinkEntry> {
        &self.link
    }
}
