//! Events: every change to the registry, serde-serialisable and versioned.
//!
//! The event log is a compatibility promise: a [`LogEntry`] written by an older build
//! must still load. Fields added later get `#[serde(default)]`; the frozen fixture
//! `tests/fixtures/events_v1.jsonl` is loaded by a test. The compact binary form
//! (`event_bin.rs`) is frozen the same way (`tests/fixtures/events_v1.bin`). Rust names follow the
//! glossary in `ARCHITECTURE.md`; where one was renamed, `#[serde(rename)]` keeps the
//! version-one name in the log (`DatabaseAttached`, `site`, `crn`, `demo`, ...).

use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType, Timestamp};
use serde::{Deserialize, Serialize};

use crate::TenancyError;

/// The event format version this build writes.
pub const EVENT_VERSION: u32 = 1;

fn version_one() -> u32 {
    1
}

/// One entry of the event log: an event and the time it was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The format version ([`EVENT_VERSION`] when written by this build).
    #[serde(default = "version_one")]
    pub version: u32,
    /// The `now` the event was applied with.
    pub at: Timestamp,
    /// The event.
    pub event: Event,
}

impl LogEntry {
    /// Whether this build understands the entry's format version (1 to
    /// [`EVENT_VERSION`]); an entry of another version must not be applied as if
    /// it were understood.
    ///
    /// # Errors
    /// [`TenancyError::UnsupportedVersion`].
    pub fn check_version(&self) -> Result<(), TenancyError> {
        if self.version == 0 || self.version > EVENT_VERSION {
            return Err(TenancyError::UnsupportedVersion(self.version));
        }
        Ok(())
    }

    /// An entry in the current format.
    pub fn new(at: Timestamp, event: Event) -> Self {
        Self {
            version: EVENT_VERSION,
            at,
            event,
        }
    }
}

/// A catalogue (database schema) a site offers to integrators.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Catalogue {
    /// Its name.
    pub name: Box<str>,
    /// Whether queries that name no catalogue use it.
    #[serde(default)]
    pub is_default: bool,
}

/// A site's identity and details: what its Link read from the database itself
/// (never from its own configuration), in the form the registry keeps and the event
/// log writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteIdentity {
    /// The PMS.
    pub pms_type: PmsType,
    /// The parent CRN stored in the database (for a demo copy: its real, non-unique CRN).
    #[serde(rename = "crn")]
    pub parent_crn: Crn,
    /// Local CRNs of branch locations.
    #[serde(default)]
    pub branch_crns: Vec<Crn>,
    /// The practice name (the secondary identifier).
    pub practice_name: String,
    /// The PMS version.
    #[serde(default)]
    pub pms_version: String,
    /// Catalogues offered to integrators.
    #[serde(default)]
    pub catalogues: Vec<Catalogue>,
    /// Whether this is a demo or de-identified copy.
    #[serde(default, rename = "demo")]
    pub is_demo: bool,
}

/// A change to the tenancy model. [`Registry::apply`](crate::Registry::apply) is the
/// only way to change a registry.
///
/// Serialised as a JSON object tagged `type` (the variant's version-one name). It is
/// decoded by a hand-written visitor (`event_de.rs`) that reads the object once,
/// whatever the order of its keys, instead of serde's internally tagged derive,
/// which first copies the whole object into a buffer: log replay decodes millions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum Event {
    /// A Link connected and registered (or re-registered after an upgrade or reinstall).
    LinkRegistered {
        /// The Link.
        link: LinkGuid,
        /// Its environment.
        environment: Environment,
        /// Its software version.
        version: String,
    },
    /// A Link found a database (or re-reported its details): its site is attached.
    #[serde(rename = "DatabaseAttached")]
    SiteAttached {
        /// The Link.
        link: LinkGuid,
        /// The Halo GUID the Link gave the database.
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
        /// What the Link read from the database.
        identity: SiteIdentity,
    },
    /// A site finished initialising and is ready for queries.
    #[serde(rename = "DatabaseReady")]
    SiteReady {
        /// The Link.
        link: LinkGuid,
        /// The site.
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
    },
    /// A Link no longer serves a site's database: the site is removed.
    #[serde(rename = "DatabaseRemoved")]
    SiteRemoved {
        /// The Link.
        link: LinkGuid,
        /// The site.
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
    },
    /// A Link was uninstalled: all its databases are uninstalled.
    LinkUninstalled {
        /// The Link.
        link: LinkGuid,
    },
    /// A reinstalled Link gave the database it knew as `previous` the new Halo GUID `halo_guid`.
    Reinstalled {
        /// The Link (the same Link GUID as the previous install).
        link: LinkGuid,
        /// The Halo GUID of the previous install.
        previous: HaloGuid,
        /// The new Halo GUID.
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
    },
    /// A Link is alive. Updates last-heard times only.
    Heartbeat {
        /// The Link.
        link: LinkGuid,
    },
    /// A site's branch CRNs changed.
    BranchCrnsChanged {
        /// The Link.
        link: LinkGuid,
        /// The site.
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
        /// The new set of branch CRNs.
        branch_crns: Vec<Crn>,
    },
    /// A support operator made a site authoritative in its group.
    Promoted {
        /// The site.
        #[serde(rename = "site")]
        halo_guid: HaloGuid,
        /// The operator.
        actor: String,
        /// Why.
        reason: String,
    },
}
