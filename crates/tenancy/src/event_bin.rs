//! The compact binary form of a [`LogEntry`]: the same values as its JSON form,
//! written as bytes so that replaying millions of log records is not bound by
//! parsing text (the JSON decoder alone runs at about 1M events a second).
//!
//! Layout (numbers and lengths are LEB128 varints unless said otherwise):
//!
//! ```text
//! variant u8        0 LinkRegistered, 1 SiteAttached (DatabaseAttached),
//!                   2 SiteReady, 3 SiteRemoved, 4 LinkUninstalled, 5 Reinstalled,
//!                   6 Heartbeat, 7 BranchCrnsChanged, 8 Promoted
//! version           LogEntry::version (u32, kept as written: the registry judges it)
//! at                milliseconds since the Unix epoch
//! fields, in declaration order:
//!   link, halo, previous     16 bytes each (big-endian u128; nil refused)
//!   environment, pms type    u8 (0 stage, 1 production; 0 D4w, 1 Best Practice, 2 Zedmed)
//!   text                     len, UTF-8 bytes
//!   crn                      len u8, canonical ASCII (parsed again on reading)
//!   crn list, catalogues     count, then each (a catalogue: name, is_default u8)
//!   flag                     u8, 0 or 1
//! SiteAttached's identity: pms, crn, branch crns, practice name, pms version,
//! catalogues, demo flag.
//! ```
//!
//! The variant comes first so that a reader can skip records it does not need
//! (the Cloud's audit index skips every tenancy record but promotions) without
//! decoding them. Decoding checks what JSON decoding checks (the identifiers'
//! types: non-nil GUIDs, valid CRNs, known environments and PMS types; UTF-8
//! text), accepts only the one encoding of each value, refuses trailing bytes and
//! never allocates more than the input can describe. It never panics: damage is a
//! [`BinaryEventError`]. This module is the whole format; the Cloud wraps it in a
//! record header of its own (`halo-cloud`'s `record_bin.rs`).

use halo_ids::{Crn, Environment, HaloGuid, LinkGuid, PmsType, Timestamp};

use crate::{Catalogue, Event, LogEntry, SiteIdentity};

/// Why bytes are not a binary [`LogEntry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BinaryEventError {
    /// The bytes end before the entry does.
    #[error("the binary event is truncated")]
    Truncated,
    /// The first byte names no event this build knows.
    #[error("unknown binary event variant {0}")]
    UnknownVariant(u8),
    /// Bytes follow a complete entry.
    #[error("trailing bytes after the binary event")]
    TrailingBytes,
    /// A value is out of range or not in its one encoding.
    #[error("invalid binary event: {0}")]
    Invalid(&'static str),
}

const LINK_REGISTERED: u8 = 0;
const SITE_ATTACHED: u8 = 1;
const SITE_READY: u8 = 2;
const SITE_REMOVED: u8 = 3;
const LINK_UNINSTALLED: u8 = 4;
const REINSTALLED: u8 = 5;
const HEARTBEAT: u8 = 6;
const BRANCH_CRNS_CHANGED: u8 = 7;
const PROMOTED: u8 = 8;

impl Event {
    /// The first byte of this event's binary form ([`LogEntry::write_binary`]).
    pub fn binary_variant(&self) -> u8 {
        match self {
            Event::LinkRegistered { .. } => LINK_REGISTERED,
            Event::SiteAttached { .. } => SITE_ATTACHED,
            Event::SiteReady { .. } => SITE_READY,
            Event::SiteRemoved { .. } => SITE_REMOVED,
            Event::LinkUninstalled { .. } => LINK_UNINSTALLED,
            Event::Reinstalled { .. } => REINSTALLED,
            Event::Heartbeat { .. } => HEARTBEAT,
            Event::BranchCrnsChanged { .. } => BRANCH_CRNS_CHANGED,
            Event::Promoted { .. } => PROMOTED,
        }
    }

    /// The first byte of a binary [`Event::Promoted`]: a reader that only wants
    /// promotions can skip every other binary tenancy entry by it.
    pub const BINARY_PROMOTED: u8 = PROMOTED;
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    fn text(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }

    fn guid(&mut self, b: &[u8; 16]) {
        self.out.extend_from_slice(b);
    }

    fn crn(&mut self, crn: &Crn) {
        let text = crn.as_str().as_bytes();
        // At most Crn::MAX_LEN (20) bytes.
        self.u8(text.len() as u8);
        self.out.extend_from_slice(text);
    }

    fn crns(&mut self, crns: &[Crn]) {
        self.varint(crns.len() as u64);
        for c in crns {
            self.crn(c);
        }
    }

    fn env(&mut self, e: Environment) {
        self.u8(match e {
            Environment::Stage => 0,
            Environment::Production => 1,
        });
    }

    fn pms(&mut self, p: PmsType) {
        self.u8(match p {
            PmsType::D4w => 0,
            PmsType::BestPractice => 1,
            PmsType::Zedmed => 2,
        });
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BinaryEventError> {
        if self.rest.len() < n {
            return Err(BinaryEventError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, BinaryEventError> {
        let (&b, tail) = self.rest.split_first().ok_or(BinaryEventError::Truncated)?;
        self.rest = tail;
        Ok(b)
    }

    /// A LEB128 number in its shortest form (each value has one encoding).
    fn varint(&mut self) -> Result<u64, BinaryEventError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(BinaryEventError::Invalid("a number is too large"));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(BinaryEventError::Invalid(
                        "a number is not in its shortest form",
                    ));
                }
                return Ok(v);
            }
        }
        Err(BinaryEventError::Invalid("a number is too large"))
    }

    fn u32(&mut self) -> Result<u32, BinaryEventError> {
        u32::try_from(self.varint()?)
            .map_err(|_| BinaryEventError::Invalid("a version is too large"))
    }

    /// A count of items that take at least `min_bytes` each: never more than the
    /// bytes left could hold, so a damaged count cannot reserve unbounded memory.
    fn count(&mut self, min_bytes: usize) -> Result<usize, BinaryEventError> {
        let n = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
        if n > self.rest.len() / min_bytes.max(1) {
            return Err(BinaryEventError::Truncated);
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<&'a str, BinaryEventError> {
        let n = self.count(1)?;
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| BinaryEventError::Invalid("a text is not UTF-8"))
    }

    fn guid(&mut self) -> Result<u128, BinaryEventError> {
        let bytes: [u8; 16] = self
            .take(16)?
            .try_into()
            .map_err(|_| BinaryEventError::Truncated)?;
        Ok(u128::from_be_bytes(bytes))
    }

    fn halo(&mut self) -> Result<HaloGuid, BinaryEventError> {
        HaloGuid::from_u128(self.guid()?)
            .map_err(|_| BinaryEventError::Invalid("a Halo GUID is nil"))
    }

    fn link(&mut self) -> Result<LinkGuid, BinaryEventError> {
        LinkGuid::from_u128(self.guid()?)
            .map_err(|_| BinaryEventError::Invalid("a Link GUID is nil"))
    }

    fn crn(&mut self) -> Result<Crn, BinaryEventError> {
        let n = usize::from(self.u8()?);
        let text = std::str::from_utf8(self.take(n)?)
            .map_err(|_| BinaryEventError::Invalid("a CRN is not text"))?;
        let crn: Crn = text
            .parse()
            .map_err(|_| BinaryEventError::Invalid("a CRN is invalid"))?;
        // Parsing trims and upper-cases: only the canonical form is accepted, so
        // that each entry has one encoding.
        if crn.as_str() != text {
            return Err(BinaryEventError::Invalid("a CRN is not canonical"));
        }
        Ok(crn)
    }

    fn crns(&mut self) -> Result<Vec<Crn>, BinaryEventError> {
        let n = self.count(2)?;
        let mut crns = Vec::with_capacity(n);
        for _ in 0..n {
            crns.push(self.crn()?);
        }
        Ok(crns)
    }

    fn flag(&mut self) -> Result<bool, BinaryEventError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(BinaryEventError::Invalid("a flag is neither 0 nor 1")),
        }
    }

    fn env(&mut self) -> Result<Environment, BinaryEventError> {
        match self.u8()? {
            0 => Ok(Environment::Stage),
            1 => Ok(Environment::Production),
            _ => Err(BinaryEventError::Invalid("an unknown environment")),
        }
    }

    fn pms(&mut self) -> Result<PmsType, BinaryEventError> {
        match self.u8()? {
            0 => Ok(PmsType::D4w),
            1 => Ok(PmsType::BestPractice),
            2 => Ok(PmsType::Zedmed),
            _ => Err(BinaryEventError::Invalid("an unknown PMS type")),
        }
    }

    fn identity(&mut self) -> Result<SiteIdentity, BinaryEventError> {
        let pms_type = self.pms()?;
        let parent_crn = self.crn()?;
        let branch_crns = self.crns()?;
        let practice_name = self.str()?.to_owned();
        let pms_version = self.str()?.to_owned();
        let n = self.count(2)?;
        let mut catalogues = Vec::with_capacity(n);
        for _ in 0..n {
            catalogues.push(Catalogue {
                name: Box::from(self.str()?),
                is_default: self.flag()?,
            });
        }
        Ok(SiteIdentity {
            pms_type,
            parent_crn,
            branch_crns,
            practice_name,
            pms_version,
            catalogues,
            is_demo: self.flag()?,
        })
    }
}

impl LogEntry {
    /// Appends this entry's compact binary form to `out`. [`LogEntry::from_binary`]
    /// gives back an equal entry.
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        let mut w = Writer { out };
        w.u8(self.event.binary_variant());
        w.varint(u64::from(self.version));
        w.varint(self.at.as_millis());
        match &self.event {
            Event::LinkRegistered {
                link,
                environment,
                version,
            } => {
                w.guid(link.as_bytes());
                w.env(*environment);
                w.text(version);
            }
            Event::SiteAttached {
                link,
                halo_guid,
                identity,
            } => {
                w.guid(link.as_bytes());
                w.guid(halo_guid.as_bytes());
                w.pms(identity.pms_type);
                w.crn(&identity.parent_crn);
                w.crns(&identity.branch_crns);
                w.text(&identity.practice_name);
                w.text(&identity.pms_version);
                w.varint(identity.catalogues.len() as u64);
                for c in &identity.catalogues {
                    w.text(&c.name);
                    w.u8(u8::from(c.is_default));
                }
                w.u8(u8::from(identity.is_demo));
            }
            Event::SiteReady { link, halo_guid } | Event::SiteRemoved { link, halo_guid } => {
                w.guid(link.as_bytes());
                w.guid(halo_guid.as_bytes());
            }
            Event::LinkUninstalled { link } | Event::Heartbeat { link } => {
                w.guid(link.as_bytes());
            }
            Event::Reinstalled {
                link,
                previous,
                halo_guid,
            } => {
                w.guid(link.as_bytes());
                w.guid(previous.as_bytes());
                w.guid(halo_guid.as_bytes());
            }
            Event::BranchCrnsChanged {
                link,
                halo_guid,
                branch_crns,
            } => {
                w.guid(link.as_bytes());
                w.guid(halo_guid.as_bytes());
                w.crns(branch_crns);
            }
            Event::Promoted {
                halo_guid,
                actor,
                reason,
            } => {
                w.guid(halo_guid.as_bytes());
                w.text(actor);
                w.text(reason);
            }
        }
    }

    /// How many sites and Links the binary entry `bytes` can add to a registry at
    /// most, read from its first byte alone: a replay sums them over the log to size
    /// the registry once ([`Registry::reserve`](crate::Registry::reserve)) without
    /// decoding anything. Unknown or empty bytes add nothing.
    pub fn binary_growth(bytes: &[u8]) -> (usize, usize) {
        match bytes.first() {
            Some(&(SITE_ATTACHED | REINSTALLED)) => (1, 0),
            Some(&LINK_REGISTERED) => (0, 1),
            _ => (0, 0),
        }
    }

    /// This entry's compact binary form ([`LogEntry::write_binary`]) on its own.
    pub fn to_binary(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_binary(&mut out);
        out
    }

    /// Reads an entry from its binary form: all of `bytes`, nothing after it.
    ///
    /// # Errors
    /// [`BinaryEventError`] for bytes that are not one whole, well-formed entry.
    pub fn from_binary(bytes: &[u8]) -> Result<LogEntry, BinaryEventError> {
        let mut r = Reader { rest: bytes };
        let variant = r.u8()?;
        if variant > PROMOTED {
            return Err(BinaryEventError::UnknownVariant(variant));
        }
        let version = r.u32()?;
        let at = Timestamp::from_millis(r.varint()?);
        let event = match variant {
            LINK_REGISTERED => Event::LinkRegistered {
                link: r.link()?,
                environment: r.env()?,
                version: r.str()?.to_owned(),
            },
            SITE_ATTACHED => Event::SiteAttached {
                link: r.link()?,
                halo_guid: r.halo()?,
                identity: r.identity()?,
            },
            SITE_READY => Event::SiteReady {
                link: r.link()?,
                halo_guid: r.halo()?,
            },
            SITE_REMOVED => Event::SiteRemoved {
                link: r.link()?,
                halo_guid: r.halo()?,
            },
            LINK_UNINSTALLED => Event::LinkUninstalled { link: r.link()? },
            REINSTALLED => Event::Reinstalled {
                link: r.link()?,
                previous: r.halo()?,
                halo_guid: r.halo()?,
            },
            HEARTBEAT => Event::Heartbeat { link: r.link()? },
            BRANCH_CRNS_CHANGED => Event::BranchCrnsChanged {
                link: r.link()?,
                halo_guid: r.halo()?,
                branch_crns: r.crns()?,
            },
            PROMOTED => Event::Promoted {
                halo_guid: r.halo()?,
                actor: r.str()?.to_owned(),
                reason: r.str()?.to_owned(),
            },
            _ => return Err(BinaryEventError::UnknownVariant(variant)),
        };
        if !r.rest.is_empty() {
            return Err(BinaryEventError::TrailingBytes);
        }
        Ok(LogEntry { version, at, event })
    }
}
