//! The one error type of this crate.

use halo_authority::AuthorityError;
use halo_ids::{Crn, HaloGuid, LinkGuid};

use crate::SiteStatus;

/// A free-text field of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TextField {
    /// A Link's version.
    LinkVersion,
    /// A database's practice name.
    PracticeName,
    /// A database's PMS version.
    PmsVersion,
    /// A catalogue name.
    CatalogueName,
    /// The operator named in a promotion.
    Actor,
    /// The reason given for a promotion.
    Reason,
}

impl std::fmt::Display for TextField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TextField::LinkVersion => "link version",
            TextField::PracticeName => "practice name",
            TextField::PmsVersion => "pms version",
            TextField::CatalogueName => "catalogue name",
            TextField::Actor => "actor",
            TextField::Reason => "reason",
        })
    }
}

/// The rule a free-text field broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TextRule {
    /// It was empty or blank where a value is required.
    Blank,
    /// It was longer than its limit (in characters).
    TooLong {
        /// The limit.
        max: usize,
    },
    /// It held a control character.
    ControlCharacter,
}

impl std::fmt::Display for TextRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextRule::Blank => f.write_str("must not be blank"),
            TextRule::TooLong { max } => write!(f, "must be at most {max} characters"),
            TextRule::ControlCharacter => f.write_str("must not hold control characters"),
        }
    }
}

/// How an adapter should treat a [`TenancyError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenancyErrorClass {
    /// The event names something the registry does not know.
    NotFound,
    /// The event is malformed or breaks a registration rule; retrying will not help.
    Invalid,
    /// The event conflicts with the current state (ownership, status, CRN claims).
    Conflict,
}

/// Why an event was refused. A refused event changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TenancyError {
    /// The Link was never registered.
    #[error("link {0} is not registered")]
    UnknownLink(LinkGuid),
    /// The Link was uninstalled.
    #[error("link {0} is uninstalled")]
    LinkUninstalled(LinkGuid),
    /// A Link that serves live databases tried to change environment.
    #[error("link {0} cannot change environment while it serves databases")]
    EnvironmentChanged(LinkGuid),
    /// The Halo GUID is not known.
    #[error("site {0} is not known")]
    UnknownSite(HaloGuid),
    /// The Halo GUID belongs to a different Link (which is not named).
    #[error("site {0} belongs to another link")]
    SiteOwnedByOtherLink(HaloGuid),
    /// The site was removed or uninstalled; its Halo GUID is retired.
    #[error("site {halo_guid} is {status} and cannot change")]
    SiteRetired {
        /// The site.
        halo_guid: HaloGuid,
        /// Its terminal status.
        status: SiteStatus,
    },
    /// A status change that the lifecycle does not allow.
    #[error("site {halo_guid} cannot become {to} from {from}")]
    InvalidTransition {
        /// The site.
        halo_guid: HaloGuid,
        /// Its status.
        from: SiteStatus,
        /// The status asked for.
        to: SiteStatus,
    },
    /// A re-attach of a live site reported a different identity (PMS type, CRN, demo flag).
    #[error("site {0} reported a different identity; a new database needs a new halo guid")]
    IdentityChanged(HaloGuid),
    /// A reinstall named a Halo GUID that already exists.
    #[error("site {0} already exists")]
    DuplicateSite(HaloGuid),
    /// A reinstall named a previous install that was already reinstalled.
    #[error("site {0} was already reinstalled")]
    AlreadyReinstalled(HaloGuid),
    /// A demo or de-identified database tried to register with a Production Link.
    #[error(
        "a demo or de-identified database cannot register with a production link; set the link to stage"
    )]
    DemoInProduction,
    /// The parent CRN is already known as another database's branch CRN.
    #[error("crn {0} is a branch crn; a database must register with its parent crn")]
    CrnIsBranch(Crn),
    /// A branch CRN is the parent CRN of a live database.
    #[error("branch crn {0} is the parent crn of a registered database")]
    BranchIsParent(Crn),
    /// A branch CRN is already claimed by a database with a different parent CRN.
    #[error("branch crn {0} is already claimed by another parent")]
    BranchClaimedByOtherParent(Crn),
    /// A fake CRN collided with a live database's CRN (demo with real, or two demos).
    #[error("crn {0} collides with a fake crn; the database needs a new halo guid")]
    FakeCrnCollision(Crn),
    /// A free-text field broke a rule.
    #[error("invalid {field}: {rule}")]
    InvalidText {
        /// The field.
        field: TextField,
        /// The rule.
        rule: TextRule,
    },
    /// Two catalogues had the same name.
    #[error("catalogue names must be unique")]
    DuplicateCatalogue,
    /// More than one catalogue was marked default.
    #[error("at most one catalogue may be the default")]
    SeveralDefaultCatalogues,
    /// The authority election refused the event.
    #[error("authority: {0}")]
    Authority(#[from] AuthorityError),
    /// A log entry had a format version this build does not know.
    #[error("event format version {0} is not supported")]
    UnsupportedVersion(u32),
    /// A snapshot had a format version this build does not read.
    #[error("snapshot format version {0} is not supported")]
    UnsupportedSnapshotVersion(u32),
    /// A snapshot's parts do not fit together (damaged or forged).
    #[error("invalid snapshot: {what}")]
    InvalidSnapshot {
        /// The rule broken.
        what: &'static str,
    },
    /// Replaying a log failed at one entry.
    #[error("replay failed at entry {index}: {source}")]
    Replay {
        /// The zero-based index of the entry.
        index: usize,
        /// Why it failed.
        source: Box<TenancyError>,
    },
}

impl TenancyError {
    /// The class of this error, for adapters that map errors to responses.
    pub fn class(&self) -> TenancyErrorClass {
        match self {
            TenancyError::UnknownLink(_) | TenancyError::UnknownSite(_) => {
                TenancyErrorClass::NotFound
            }
            TenancyError::InvalidText { .. }
            | TenancyError::DuplicateCatalogue
            | TenancyError::SeveralDefaultCatalogues
            | TenancyError::DemoInProduction
            | TenancyError::UnsupportedVersion(_)
            | TenancyError::UnsupportedSnapshotVersion(_)
            | TenancyError::InvalidSnapshot { .. } => TenancyErrorClass::Invalid,
            TenancyError::Authority(
                AuthorityError::MissingActor | AuthorityError::MissingReason,
            ) => TenancyErrorClass::Invalid,
            TenancyError::Replay { source, .. } => source.class(),
            _ => TenancyErrorClass::Conflict,
        }
    }
}
