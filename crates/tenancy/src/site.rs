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
///
/// Laid out for a million of them (120 bytes): the environment, PMS type, demo flag,
/// status and authority flag share one byte (`SiteFlags`), and the branch CRNs,
/// which most sites lack, are one pointer (`BranchList`).
#[derive(Clone, PartialEq, Eq)]
pub struct Site {
    pub(crate) halo_guid: HaloGuid,
    pub(crate) link: LinkGuid,
    pub(crate) parent_crn: Crn,
    pub(crate) flags: SiteFlags,
    pub(crate) epoch: Epoch,
    pub(crate) last_heard: Timestamp,
    /// When the site was first registered (the `now` of its attach or reinstall);
    /// [`Timestamp::UNIX_EPOCH`] when unknown (restored from a snapshot written
    /// before the field existed).
    pub(crate) created: Timestamp,
    pub(crate) branch_crns: BranchList,
    /// Inline up to 24 bytes (most practice names), so no heap block per site.
    pub(crate) practice_name: CompactString,
    /// PMS version and catalogues, shared by every site with the same pair.
    pub(crate) profile: Arc<Profile>,
}

impl fmt::Debug for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Site")
            .field("halo_guid", &self.halo_guid)
            .field("link", &self.link)
            .field("environment", &self.environment())
            .field("pms_type", &self.pms_type())
            .field("parent_crn", &self.parent_crn)
            .field("is_demo", &self.is_demo())
            .field("status", &self.status())
            .field("authoritative", &self.is_authoritative())
            .field("epoch", &self.epoch)
            .field("last_heard", &self.last_heard)
            .field("created", &self.created)
            .field("branch_crns", &self.branch_crns())
            .field("practice_name", &self.practice_name)
            .field("profile", &self.profile)
            .finish()
    }
}

/// A site's environment, PMS type, demo flag, status and authority flag in one
/// byte: bit 0 the environment (1 Production), bits 1-2 the PMS type, bit 3 demo,
/// bits 4-5 the status, bit 6 authoritative. Built only by [`SiteFlags::new`] and
/// the setters, so every field decodes to the value it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SiteFlags(u8);

const PRODUCTION: u8 = 1;
const PMS_SHIFT: u8 = 1;
const DEMO: u8 = 1 << 3;
const STATUS_SHIFT: u8 = 4;
const STATUS_MASK: u8 = 0b11 << STATUS_SHIFT;
const AUTHORITATIVE: u8 = 1 << 6;

impl SiteFlags {
    pub(crate) fn new(
        environment: Environment,
        pms_type: PmsType,
        is_demo: bool,
        status: SiteStatus,
        authoritative: bool,
    ) -> Self {
        let env = match environment {
            Environment::Stage => 0,
            Environment::Production => PRODUCTION,
        };
        let pms: u8 = match pms_type {
            PmsType::D4w => 0,
            PmsType::BestPractice => 1,
            PmsType::Zedmed => 2,
        };
        let mut flags = Self(env | (pms << PMS_SHIFT) | if is_demo { DEMO } else { 0 });
        flags.set_status(status);
        flags.set_authoritative(authoritative);
        flags
    }

    pub(crate) fn environment(self) -> Environment {
        if self.0 & PRODUCTION != 0 {
            Environment::Production
        } else {
            Environment::Stage
        }
    }

    pub(crate) fn pms_type(self) -> PmsType {
        match (self.0 >> PMS_SHIFT) & 0b11 {
            0 => PmsType::D4w,
            1 => PmsType::BestPractice,
            // `new` writes 0, 1 or 2 only.
            _ => PmsType::Zedmed,
        }
    }

    pub(crate) fn is_demo(self) -> bool {
        self.0 & DEMO != 0
    }

    pub(crate) fn status(self) -> SiteStatus {
        match (self.0 & STATUS_MASK) >> STATUS_SHIFT {
            0 => SiteStatus::Initialising,
            1 => SiteStatus::Active,
            2 => SiteStatus::Removed,
            _ => SiteStatus::Uninstalled,
        }
    }

    pub(crate) fn set_status(&mut self, status: SiteStatus) {
        let code: u8 = match status {
            SiteStatus::Initialising => 0,
            SiteStatus::Active => 1,
            SiteStatus::Removed => 2,
            SiteStatus::Uninstalled => 3,
        };
        self.0 = (self.0 & !STATUS_MASK) | (code << STATUS_SHIFT);
    }

    pub(crate) fn authoritative(self) -> bool {
        self.0 & AUTHORITATIVE != 0
    }

    pub(crate) fn set_authoritative(&mut self, authoritative: bool) {
        if authoritative {
            self.0 |= AUTHORITATIVE;
        } else {
            self.0 &= !AUTHORITATIVE;
        }
    }
}

/// A site's branch CRNs (sorted, distinct) as one pointer: none for most sites, and
/// up to two inline in the one heap block of those that have some. Never holds an
/// empty block, so equal lists compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BranchList(Option<Box<SmallVec<[Crn; 2]>>>);

impl BranchList {
    pub(crate) fn as_slice(&self) -> &[Crn] {
        self.0.as_deref().map_or(&[], |list| list.as_slice())
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }
}

impl From<&[Crn]> for BranchList {
    fn from(crns: &[Crn]) -> Self {
        if crns.is_empty() {
            Self(None)
        } else {
            Self(Some(Box::new(SmallVec::from_slice(crns))))
        }
    }
}

impl From<Vec<Crn>> for BranchList {
    fn from(crns: Vec<Crn>) -> Self {
        if crns.is_empty() {
            Self(None)
        } else {
            Self(Some(Box::new(SmallVec::from_vec(crns))))
        }
    }
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
        self.flags.environment()
    }

    /// The PMS type.
    pub fn pms_type(&self) -> PmsType {
        self.flags.pms_type()
    }

    /// The routing CRN: the parent CRN, or for a demo copy its fake CRN.
    pub fn crn(&self) -> Crn {
        if self.flags.is_demo() {
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
        PmsId::new(self.pms_type(), self.crn())
    }

    /// The key of its authority group.
    pub fn group_key(&self) -> GroupKey {
        GroupKey::new(self.environment(), self.pms_id())
    }

    /// Branch (local) CRNs, sorted, without duplicates. They never route.
    pub fn branch_crns(&self) -> &[Crn] {
        self.branch_crns.as_slice()
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
        self.flags.is_demo()
    }

    /// Its lifecycle status.
    pub fn status(&self) -> SiteStatus {
        self.flags.status()
    }

    /// Whether it holds authority in its group (never true unless live).
    pub fn is_authoritative(&self) -> bool {
        self.flags.authoritative()
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
        self.status() == SiteStatus::Active && self.is_authoritative()
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
#[derive(Debug, Clone)]
pub struct Link {
    pub(crate) guid: LinkGuid,
    pub(crate) environment: Environment,
    pub(crate) status: LinkStatus,
    pub(crate) last_heard: Timestamp,
    /// Interned, behind one thin pointer (64 bytes a Link rather than 72).
    pub(crate) version: Arc<Arc<str>>,
    /// Most Links serve one database: held inline.
    pub(crate) sites: SmallVec<[HaloGuid; 1]>,
    /// Where the first of `sites` is in the registry's site table, or
    /// [`NO_POSITION`] if not known: a heartbeat or a "ready" of a one-database Link
    /// finds its site without a look-up. A hint, checked against the site's Halo
    /// GUID before use, so not part of equality. Fits in `Link`'s padding.
    pub(crate) first_site_at: u32,
}

/// [`Link::first_site_at`] when the position is not known.
pub(crate) const NO_POSITION: u32 = u32::MAX;

/// Equal when the Links' state is: the position hint is left out.
impl PartialEq for Link {
    fn eq(&self, other: &Self) -> bool {
        self.guid == other.guid
            && self.environment == other.environment
            && self.status == other.status
            && self.last_heard == other.last_heard
            && self.version == other.version
            && self.sites == other.sites
    }
}

impl Eq for Link {}

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
