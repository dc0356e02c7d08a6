//! The compact binary form of a [`RegistrySnapshot`]: the same values as the JSON
//! form, written as bytes so that restoring a million sites is not bound by parsing
//! text (JSON takes about four times the room and most of the restore time).
//!
//! Layout (all lengths and numbers LEB128 varints unless said otherwise):
//!
//! ```text
//! magic  b"\0HRS"   (never the start of a JSON document)
//! format u8 = 2     (BINARY_FORMAT: the byte layout; the logical version follows;
//!                   layout 1, without `created`, still reads)
//! version           (RegistrySnapshot::version, as in JSON)
//! texts             count, then each: len, UTF-8 bytes
//! catalogues        count, then each list: count, then each: name, is_default u8
//! links             count, then each: guid [16], env u8, status u8, heard, ver
//! sites             count, then each: halo [16], link, env u8, pms u8, crn,
//!                   flags u8 (1 demo, 2 authoritative), status u8, epoch, heard,
//!                   created (layout 2: 0 unknown, else ms + 1),
//!                   branches: count, crns; name; ver; cats
//! groups            count, then each: env u8, pms u8, crn, epoch,
//!                   vacated_by: 0 | 1 member (halo [16], link [16], eligible u8),
//!                   promotion: 0 | 1 (halo [16], actor, reason, at, epoch)
//! successors        count, then each: previous [16], next [16]
//! ```
//!
//! A site's Link is written as 1 + its index in `links` (which the sites mostly
//! share), or 0 and the 16-byte GUID when `links` does not hold it (an inconsistent
//! snapshot still round-trips; [`Registry::from_snapshot`](crate::Registry) rejects
//! it). A CRN is its length (u8) and ASCII bytes, parsed again on reading. Decoding
//! never panics and never allocates more than the input can describe: every count is
//! checked against the bytes left, and trailing bytes are an error.

use std::collections::HashMap;

use compact_str::CompactString;
use halo_authority::Member;
use halo_ids::{Crn, Environment, Epoch, HaloGuid, LinkGuid, PmsId, PmsType, Timestamp};

use super::{GroupRecord, LinkRecord, PromotionRecord, RegistrySnapshot, SiteRecord};
use crate::{Catalogue, LinkStatus, SiteStatus, TenancyError};

/// The first bytes of every binary snapshot.
pub(super) const MAGIC: &[u8; 4] = b"\0HRS";

/// The byte layout this build writes (it also reads [`BINARY_FORMAT_V1`]).
pub(super) const BINARY_FORMAT: u8 = 2;

/// The first layout: sites without their creation time.
pub(super) const BINARY_FORMAT_V1: u8 = 1;

fn bad(what: &'static str) -> TenancyError {
    TenancyError::InvalidSnapshot { what }
}

struct Writer {
    out: Vec<u8>,
}

impl Writer {
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

    fn len(&mut self, n: usize) {
        self.varint(n as u64);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.out.extend_from_slice(b);
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

    fn member(&mut self, m: &Member) {
        self.guid(m.halo_guid.as_bytes());
        self.guid(m.link.as_bytes());
        self.u8(u8::from(m.eligible));
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TenancyError> {
        if self.rest.len() < n {
            return Err(bad("the binary snapshot is truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, TenancyError> {
        let (&b, tail) = self
            .rest
            .split_first()
            .ok_or_else(|| bad("the binary snapshot is truncated"))?;
        self.rest = tail;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, TenancyError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(bad("a number in the binary snapshot is too large"));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("a number in the binary snapshot is too large"))
    }

    fn u32(&mut self) -> Result<u32, TenancyError> {
        u32::try_from(self.varint()?)
            .map_err(|_| bad("an index in the binary snapshot is too large"))
    }

    /// A count of items that take at least `min_bytes` each: never more than the
    /// bytes left could hold, so a damaged count cannot reserve unbounded memory.
    fn count(&mut self, min_bytes: usize) -> Result<usize, TenancyError> {
        let n = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
        if n > self.rest.len() / min_bytes.max(1) {
            return Err(bad("a count in the binary snapshot exceeds its length"));
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<&'a str, TenancyError> {
        let n = self.count(1)?;
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| bad("a text in the binary snapshot is not UTF-8"))
    }

    fn guid(&mut self) -> Result<[u8; 16], TenancyError> {
        let mut g = [0u8; 16];
        g.copy_from_slice(self.take(16)?);
        Ok(g)
    }

    fn halo(&mut self) -> Result<HaloGuid, TenancyError> {
        HaloGuid::from_u128(u128::from_be_bytes(self.guid()?))
            .map_err(|_| bad("a Halo GUID in the binary snapshot is nil"))
    }

    fn link(&mut self) -> Result<LinkGuid, TenancyError> {
        LinkGuid::from_u128(u128::from_be_bytes(self.guid()?))
            .map_err(|_| bad("a Link GUID in the binary snapshot is nil"))
    }

    fn crn(&mut self) -> Result<Crn, TenancyError> {
        let n = usize::from(self.u8()?);
        let text = std::str::from_utf8(self.take(n)?)
            .map_err(|_| bad("a CRN in the binary snapshot is not text"))?;
        let crn: Crn = text
            .parse()
            .map_err(|_| bad("a CRN in the binary snapshot is invalid"))?;
        // Parsing trims and upper-cases: only the canonical form is accepted, so
        // that each snapshot has one encoding.
        if crn.as_str() != text {
            return Err(bad("a CRN in the binary snapshot is not canonical"));
        }
        Ok(crn)
    }

    fn bool(&mut self) -> Result<bool, TenancyError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("a flag in the binary snapshot is neither 0 nor 1")),
        }
    }

    fn env(&mut self) -> Result<Environment, TenancyError> {
        match self.u8()? {
            0 => Ok(Environment::Stage),
            1 => Ok(Environment::Production),
            _ => Err(bad("an unknown environment in the binary snapshot")),
        }
    }

    fn pms(&mut self) -> Result<PmsType, TenancyError> {
        match self.u8()? {
            0 => Ok(PmsType::D4w),
            1 => Ok(PmsType::BestPractice),
            2 => Ok(PmsType::Zedmed),
            _ => Err(bad("an unknown PMS type in the binary snapshot")),
        }
    }

    fn site_status(&mut self) -> Result<SiteStatus, TenancyError> {
        match self.u8()? {
            0 => Ok(SiteStatus::Initialising),
            1 => Ok(SiteStatus::Active),
            2 => Ok(SiteStatus::Removed),
            3 => Ok(SiteStatus::Uninstalled),
            _ => Err(bad("an unknown site status in the binary snapshot")),
        }
    }

    fn link_status(&mut self) -> Result<LinkStatus, TenancyError> {
        match self.u8()? {
            0 => Ok(LinkStatus::Active),
            1 => Ok(LinkStatus::Uninstalled),
            _ => Err(bad("an unknown Link status in the binary snapshot")),
        }
    }

    fn member(&mut self) -> Result<Member, TenancyError> {
        Ok(Member {
            halo_guid: self.halo()?,
            link: self.link()?,
            eligible: self.bool()?,
        })
    }
}

pub(super) fn env_code(e: Environment) -> u8 {
    match e {
        Environment::Stage => 0,
        Environment::Production => 1,
    }
}

pub(super) fn pms_code(p: PmsType) -> u8 {
    match p {
        PmsType::D4w => 0,
        PmsType::BestPractice => 1,
        PmsType::Zedmed => 2,
    }
}

fn site_status_code(s: SiteStatus) -> u8 {
    match s {
        SiteStatus::Initialising => 0,
        SiteStatus::Active => 1,
        SiteStatus::Removed => 2,
        SiteStatus::Uninstalled => 3,
    }
}

fn link_status_code(s: LinkStatus) -> u8 {
    match s {
        LinkStatus::Active => 0,
        LinkStatus::Uninstalled => 1,
    }
}

const DEMO: u8 = 1;
const AUTHORITATIVE: u8 = 2;

impl RegistrySnapshot {
    /// The snapshot in its compact binary form (about a quarter of the JSON's size,
    /// and several times faster to read). [`RegistrySnapshot::from_bytes`] gives back
    /// an equal snapshot.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer {
            out: Vec::with_capacity(64 + self.sites.len() * 72),
        };
        w.out.extend_from_slice(MAGIC);
        w.u8(BINARY_FORMAT);
        w.varint(u64::from(self.version));

        w.len(self.texts.len());
        for t in &self.texts {
            w.bytes(t.as_bytes());
        }
        w.len(self.catalogues.len());
        for list in &self.catalogues {
            w.len(list.len());
            for c in list.iter() {
                w.bytes(c.name.as_bytes());
                w.u8(u8::from(c.is_default));
            }
        }

        w.len(self.links.len());
        let mut link_index: HashMap<LinkGuid, u64, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(self.links.len(), Default::default());
        for (i, l) in self.links.iter().enumerate() {
            w.guid(l.guid.as_bytes());
            w.u8(env_code(l.env));
            w.u8(link_status_code(l.status));
            w.varint(l.heard.as_millis());
            w.varint(u64::from(l.ver));
            link_index.entry(l.guid).or_insert(i as u64 + 1);
        }

        w.len(self.sites.len());
        for s in &self.sites {
            w.guid(s.halo_guid.as_bytes());
            match link_index.get(&s.link) {
                Some(&i) => w.varint(i),
                None => {
                    w.varint(0);
                    w.guid(s.link.as_bytes());
                }
            }
            w.u8(env_code(s.env));
            w.u8(pms_code(s.pms));
            w.crn(&s.parent_crn);
            w.u8(if s.is_demo { DEMO } else { 0 } | if s.auth { AUTHORITATIVE } else { 0 });
            w.u8(site_status_code(s.status));
            w.varint(s.epoch.get());
            w.varint(s.heard.as_millis());
            w.varint(s.created.map_or(0, |t| t.as_millis().saturating_add(1)));
            w.len(s.branch_crns.len());
            for c in s.branch_crns.iter() {
                w.crn(c);
            }
            w.bytes(s.name.as_bytes());
            w.varint(u64::from(s.ver));
            w.varint(u64::from(s.cats));
        }

        w.len(self.groups.len());
        for g in &self.groups {
            w.u8(env_code(g.env));
            w.u8(pms_code(g.pms_id.pms_type()));
            w.crn(&g.pms_id.site_id());
            w.varint(g.epoch.get());
            match &g.vacated_by {
                None => w.u8(0),
                Some(m) => {
                    w.u8(1);
                    w.member(m);
                }
            }
            match &g.promotion {
                None => w.u8(0),
                Some(p) => {
                    w.u8(1);
                    w.guid(p.halo_guid.as_bytes());
                    w.bytes(p.actor.as_bytes());
                    w.bytes(p.reason.as_bytes());
                    w.varint(p.at.as_millis());
                    w.varint(p.epoch.get());
                }
            }
        }

        w.len(self.successors.len());
        for (previous, next) in &self.successors {
            w.guid(previous.as_bytes());
            w.guid(next.as_bytes());
        }
        w.out
    }

    /// Whether `bytes` start like a binary snapshot (from
    /// [`RegistrySnapshot::to_bytes`]) rather than a JSON one.
    pub fn is_binary(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }

    /// Reads a snapshot from its binary form. It still needs
    /// [`Registry::from_snapshot`](crate::Registry::from_snapshot), which checks that
    /// its parts fit together.
    ///
    /// # Errors
    /// [`TenancyError::InvalidSnapshot`] for bytes that are not a whole, well-formed
    /// binary snapshot; [`TenancyError::UnsupportedSnapshotVersion`] for a byte layout
    /// this build does not read.
    pub fn from_bytes(bytes: &[u8]) -> Result<RegistrySnapshot, TenancyError> {
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("not a binary snapshot"))?;
        let mut r = Reader { rest };
        let format = r.u8()?;
        if format != BINARY_FORMAT && format != BINARY_FORMAT_V1 {
            return Err(TenancyError::UnsupportedSnapshotVersion(u32::from(format)));
        }
        let version = r.u32()?;

        let n = r.count(1)?;
        let mut texts = Vec::with_capacity(n);
        for _ in 0..n {
            texts.push(Box::from(r.str()?));
        }
        let n = r.count(1)?;
        let mut catalogues = Vec::with_capacity(n);
        for _ in 0..n {
            let m = r.count(2)?;
            let mut list = Vec::with_capacity(m);
            for _ in 0..m {
                list.push(Catalogue {
                    name: Box::from(r.str()?),
                    is_default: r.bool()?,
                });
            }
            catalogues.push(list.into_boxed_slice());
        }

        let n = r.count(20)?;
        let mut links = Vec::with_capacity(n);
        for _ in 0..n {
            links.push(LinkRecord {
                guid: r.link()?,
                env: r.env()?,
                status: r.link_status()?,
                heard: Timestamp::from_millis(r.varint()?),
                ver: r.u32()?,
            });
        }

        let n = r.count(29)?;
        let mut sites = Vec::with_capacity(n);
        for _ in 0..n {
            let halo_guid = r.halo()?;
            let link = match r.varint()? {
                0 => r.link()?,
                i => {
                    usize::try_from(i - 1)
                        .ok()
                        .and_then(|i| links.get(i))
                        .ok_or_else(|| bad("a site's Link index is out of range"))?
                        .guid
                }
            };
            let env = r.env()?;
            let pms = r.pms()?;
            let parent_crn = r.crn()?;
            let flags = r.u8()?;
            if flags & !(DEMO | AUTHORITATIVE) != 0 {
                return Err(bad("unknown site flags in the binary snapshot"));
            }
            let status = r.site_status()?;
            let epoch = Epoch::new(r.varint()?);
            let heard = Timestamp::from_millis(r.varint()?);
            let created = if format == BINARY_FORMAT_V1 {
                None
            } else {
                r.varint()?.checked_sub(1).map(Timestamp::from_millis)
            };
            let m = r.count(2)?;
            let mut branch_crns = Vec::with_capacity(m);
            for _ in 0..m {
                branch_crns.push(r.crn()?);
            }
            let name = CompactString::from(r.str()?);
            sites.push(SiteRecord {
                halo_guid,
                link,
                env,
                pms,
                parent_crn,
                is_demo: flags & DEMO != 0,
                status,
                auth: flags & AUTHORITATIVE != 0,
                epoch,
                heard,
                created,
                branch_crns: branch_crns.into_boxed_slice(),
                name,
                ver: r.u32()?,
                cats: r.u32()?,
            });
        }

        let n = r.count(7)?;
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            let env = r.env()?;
            let pms_type = r.pms()?;
            let crn = r.crn()?;
            let epoch = Epoch::new(r.varint()?);
            let vacated_by = if r.bool()? { Some(r.member()?) } else { None };
            let promotion = if r.bool()? {
                Some(PromotionRecord {
                    halo_guid: r.halo()?,
                    actor: Box::from(r.str()?),
                    reason: Box::from(r.str()?),
                    at: Timestamp::from_millis(r.varint()?),
                    epoch: Epoch::new(r.varint()?),
                })
            } else {
                None
            };
            groups.push(GroupRecord {
                env,
                pms_id: PmsId::new(pms_type, crn),
                epoch,
                vacated_by,
                promotion,
            });
        }

        let n = r.count(32)?;
        let mut successors = Vec::with_capacity(n);
        for _ in 0..n {
            successors.push((r.halo()?, r.halo()?));
        }
        if !r.rest.is_empty() {
            return Err(bad("trailing bytes after the binary snapshot"));
        }
        Ok(RegistrySnapshot {
            version,
            texts,
            catalogues,
            links,
            sites,
            groups,
            successors,
        })
    }
}
