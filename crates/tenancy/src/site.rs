//! Sites (databases as seen by one Link install) and Links.

use std::fmt;
use std::sync::Arc;

use compact_str::CompactString;
use halo_authority::{Epoch, GroupKey};
use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};
use smallvec::SmallVec;

use crate::Catalogue;

/// The lifecycle of a site: `initialising` → `active` → `removed` | `uninstalled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteStatus {
    /// Attached; the Link is still preparing it.
    Initialising,
    /// Ready for queries.
    Active,
    /// The Link no longer serves it (terminal).
    Removed,
    /// Its Link was uninstalled or reinstalled (terminal).
    Uninstalled,
}

impl SiteStatus {
    /// The API text: `initialising`, `active`, `removed`, `uninstalled`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SiteStatus::Initialising => "initialising",
            SiteStatus::Active => "active",
            SiteStatus::Removed => "removed",
            SiteStatus::Uninstalled => "uninstalled",
        }
    }

    /// Whether the site is still served (initialising or active).
    pub fn is_live(&self) -> bool {
        matches!(self, SiteStatus::Initialising | SiteStatus::Active)
    }
}

impl fmt::Display for SiteStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One PMS database as seen by one Link install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub(crate) halo_guid: HaloGuid,
    pub(crate) link: LinkGuid,
    pub(crate) environment: Environment,
    pub(crate) pms_type: PmsType,
    pub(crate) parent_crn: Crn,
    pub(crate) is_demo: bool,
    pub(crate) status: SiteStatus,
    pub(crate) authoritative: bool,
    pub(crate) epoch: Epoch,
    pub(crate) last_heard: Timestamp,
    /// When the site was first registered (the `now` of its attach or reinstall);
    /// [`Timestamp::UNIX_EPOCH`] when unknown (restored from a snapshot written
    /// before the field existed).
    pub(crate) created: Timestamp,
    pub(crate) branch_crns: Box<[Crn]>,
    /// Inline up to 24 bytes (most practice names), so no heap block per site.
    pub(crate) practice_name: CompactString,
    /// PMS version and catalogues, shared by every site with the same pair.
    pub(crate) profile: Arc<Profile>,
}

/// A site's PMS version and catalogue list, interned as one pair: most sites share
/// one, so each site holds one pointer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Profile {
    pub(crate) pms_version: Arc<str>,
    pub(crate) catalogues: Arc<[Catalogue]>,
}

impl Site {
    /// The Halo GUID.
    pub fn halo_guid(&self) -> HaloGuid {
        self.halo_guid
    }

    /// The Link that serves (or served) it.
    pub fn link_guid(&self) -> LinkGuid {
        self.link
    }

    /// The environment of its Link.
    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// The PMS type.
    pub fn pms_type(&self) -> PmsType {
        self.pms_type
    }

    /// The routing CRN: the parent CRN, or for a demo copy its fake CRN.
    pub fn crn(&self) -> Crn {
        if self.is_demo {
            self.halo_guid.fake_crn()
        } else {
            self.parent_crn
        }
    }

    /// The parent CRN stored in the database (for a demo copy, the real practice's
    /// CRN, not unique). [`Site::crn`] is the one that routes.
    pub fn parent_crn(&self) -> Crn {
        self.parent_crn
    }

    /// The PMS ID used for routing: PMS type and [`Site::crn`].
    pub fn pms_id(&self) -> PmsId {
        PmsId::new(self.pms_type, self.crn())
    }

    /// The key of its authority group.
    pub fn group_key(&self) -> GroupKey {
        GroupKey::new(self.environment, self.pms_id())
    }

    /// Branch (local) CRNs, sorted, without duplicates. They never route.
    pub fn branch_crns(&self) -> &[Crn] {
        &self.branch_crns
    }

    /// The practice name (the secondary identifier).
    pub fn practice_name(&self) -> &str {
        &self.practice_name
    }

    /// The PMS version.
    pub fn pms_version(&self) -> &str {
        &self.profile.pms_version
    }

    /// The catalogues offered to integrators.
    pub fn catalogues(&self) -> &[Catalogue] {
        &self.profile.catalogues
    }

    /// The catalogue list as shared by the registry (for readers that keep it).
    pub fn shared_catalogues(&self) -> &Arc<[Catalogue]> {
        &self.profile.catalogues
    }

    /// Whether it is a demo or de-identified copy.
    pub fn is_demo(&self) -> bool {
        self.is_demo
    }

    /// Its lifecycle status.
    pub fn status(&self) -> SiteStatus {
        self.status
    }

    /// Whether it holds authority in its group (never true unless live).
    pub fn is_authoritative(&self) -> bool {
        self.authoritative
    }

    /// Its group's epoch, as of the last change that touched it.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// When it was last heard from (attach, ready, or a heartbeat of its Link).
    pub fn last_heard(&self) -> Timestamp {
        self.last_heard
    }

    /// When it was first registered (attached, or created by a reinstall), by the
    /// `now` that event was applied with; `None` for a site restored from a
    /// snapshot written before this was recorded.
    pub fn created_at(&self) -> Option<Timestamp> {
        (self.created != Timestamp::UNIX_EPOCH).then_some(self.created)
    }

    /// Whether queries may be routed to it: active and authoritative.
    pub fn is_routable(&self) -> bool {
        self.status == SiteStatus::Active && self.authoritative
    }
}

/// Whether a Link is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkStatus {
    /// Registered and serving.
    Active,
    /// Uninstalled; it may register again.
    Uninstalled,
}

/// One Link installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub(crate) guid: LinkGuid,
    pub(crate) environment: Environment,
    pub(crate) status: LinkStatus,
    pub(crate) last_heard: Timestamp,
    pub(crate) version: Arc<str>,
    /// Most Links serve one database: held inline.
    pub(crate) sites: SmallVec<[HaloGuid; 1]>,
}

impl Link {
    /// The Link GUID.
    pub fn link_guid(&self) -> LinkGuid {
        self.guid
    }

    /// Its environment.
    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// Its status.
    pub fn status(&self) -> LinkStatus {
        self.status
    }

    /// When it was last heard from.
    pub fn last_heard(&self) -> Timestamp {
        self.last_heard
    }

    /// Its software version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Every site it ever attached, in attach order (including removed ones).
    pub fn sites(&self) -> &[HaloGuid] {
        &self.sites
    }
}
