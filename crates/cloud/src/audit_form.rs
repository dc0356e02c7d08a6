//! The audit trail inside the Cloud's [`Snapshot`](crate::state::Snapshot) (since
//! snapshot format 4), so that a restart reads only the log after it instead of the
//! whole log (see [`crate::audit`]).
//!
//! The part records how far the trail it holds reaches (`through`: the last log
//! record it has read) and whether that record was an audit entry covering the
//! record after it (`coversNext`): recovery continues from exactly there. `through`
//! may be below the snapshot's own sequence number (a background snapshot is taken
//! right after an append, before that batch's entries are published); the records
//! in between are read from the log like the rest of the tail.
//!
//! The entries travel as a compact binary form, LZ4-compressed and base64-encoded
//! since snapshot format 5 (plain base64 before; both load, see `packed.rs`).
//! A million entries decode in well under a second, where JSON would take seconds.
//! A part read from a snapshot keeps that text as it is until [`AuditSnapshot::decode`],
//! so that recovery decompresses it on the thread that decodes it, beside the
//! registry's restore, not on the one that reads the snapshot (and text that does not
//! unpack is an audit trail that cannot be used, rebuilt from the log, rather than a
//! snapshot that cannot be read):
//!
//! ```text
//! "HAT" 1                      magic and layout version
//! varint count
//! per entry:
//!   varint id - previous id    ids grow
//!   varint at (ms)
//!   u8     kind                index in AuditKind::ALL
//!   u16 LE fields present      bit i: the i-th optional field below
//!   actor, reason, integrator  string: varint length, UTF-8
//!   practice                   string (PmsId as written)
//!   halo_guid, link_guid       16 bytes each
//!   credential                 string
//!   environment                string
//!   epoch                      varint
//!   code                       string
//!   count                      varint
//!   detail                     string
//! ```

use std::fmt;

use halo_ids::{Environment, HaloGuid, LinkGuid, PmsId, Timestamp};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::audit::{AuditEntry, AuditKind, AuditTrail, Stored};

const MAGIC: &[u8; 4] = b"HAT\x01";

/// The audit trail as of one log record, as a snapshot holds it.
#[derive(Clone, Serialize, Deserialize)]
pub struct AuditSnapshot {
    /// The sequence number of the last log record the trail has read.
    through: u64,
    /// Whether that record is an audit entry that covers the record after it.
    #[serde(rename = "coversNext")]
    covers_next: bool,
    /// The entries, in the binary form above.
    #[serde(with = "base64_bytes")]
    entries: Entries,
}

/// A part's entries: their binary form (a part made by this process) or the text a
/// snapshot held, unpacked when decoded.
#[derive(Clone)]
enum Entries {
    Binary(Vec<u8>),
    Packed(String),
}

impl fmt::Debug for AuditSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditSnapshot")
            .field("through", &self.through)
            .field("covers_next", &self.covers_next)
            .field(
                "bytes",
                &match &self.entries {
                    Entries::Binary(bytes) => bytes.len(),
                    Entries::Packed(text) => text.len(),
                },
            )
            .finish()
    }
}

/// Why an audit snapshot could not be read.
#[derive(Debug, thiserror::Error)]
#[error("audit trail in the snapshot: {0}")]
pub struct AuditFormError(&'static str);

impl AuditSnapshot {
    /// The trail's entries up to and including record `through`, in binary form.
    pub(crate) fn encode(trail: &AuditTrail, through: u64, covers_next: bool) -> Self {
        let entries: Vec<&Stored> = trail.iter().take_while(|s| s.id <= through).collect();
        let mut out = Vec::with_capacity(16 + entries.len() * 96);
        out.extend_from_slice(MAGIC);
        varint(&mut out, entries.len() as u64);
        let mut previous = 0;
        for s in entries {
            encode_entry(&mut out, s, previous);
            previous = s.id;
        }
        Self {
            through,
            covers_next,
            entries: Entries::Binary(out),
        }
    }

    /// The sequence number of the last log record the trail has read.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// Whether record [`AuditSnapshot::through`] covers the record after it.
    pub fn covers_next(&self) -> bool {
        self.covers_next
    }

    /// The trail it holds.
    ///
    /// # Errors
    /// [`AuditFormError`] for text that does not unpack, or bytes that are not this
    /// form (damaged or truncated).
    pub fn decode(&self) -> Result<AuditTrail, AuditFormError> {
        let unpacked;
        let bytes = match &self.entries {
            Entries::Binary(bytes) => bytes,
            Entries::Packed(text) => {
                unpacked = crate::packed::unpack(text)
                    .map_err(|_| AuditFormError("the entries' text does not unpack"))?;
                &unpacked
            }
        };
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(AuditFormError("unknown layout"));
        }
        let count = r.varint()?;
        // Every entry takes at least 6 bytes: a count beyond that is damage.
        if count > (r.0.len() / 6) as u64 {
            return Err(AuditFormError("count beyond the data"));
        }
        let mut trail = AuditTrail::default();
        let mut previous = 0u64;
        for _ in 0..count {
            let stored = decode_entry(&mut r, previous)?;
            if stored.id > self.through {
                return Err(AuditFormError("an entry past the trail's end"));
            }
            previous = stored.id;
            trail.push(stored);
        }
        if !r.0.is_empty() {
            return Err(AuditFormError("bytes after the last entry"));
        }
        Ok(trail)
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn encode_entry(out: &mut Vec<u8>, s: &Stored, previous: u64) {
    let e = &s.entry;
    varint(out, s.id - previous);
    varint(out, s.at.as_millis());
    let kind = AuditKind::ALL
        .iter()
        .position(|k| *k == e.kind)
        .unwrap_or(0);
    out.push(kind as u8);
    let present = [
        e.actor.is_some(),
        e.reason.is_some(),
        e.integrator.is_some(),
        e.practice.is_some(),
        e.halo_guid.is_some(),
        e.link_guid.is_some(),
        e.credential.is_some(),
        e.environment.is_some(),
        e.epoch.is_some(),
        e.code.is_some(),
        e.count.is_some(),
    ];
    let flags = present
        .iter()
        .enumerate()
        .fold(0u16, |f, (i, p)| f | (u16::from(*p) << i));
    out.extend_from_slice(&flags.to_le_bytes());
    for s in [&e.actor, &e.reason, &e.integrator].into_iter().flatten() {
        string(out, s);
    }
    if let Some(p) = e.practice {
        string(out, &p.to_string());
    }
    if let Some(h) = e.halo_guid {
        out.extend_from_slice(h.as_bytes());
    }
    if let Some(l) = e.link_guid {
        out.extend_from_slice(l.as_bytes());
    }
    if let Some(c) = &e.credential {
        string(out, c);
    }
    if let Some(env) = e.environment {
        string(out, env.as_str());
    }
    if let Some(epoch) = e.epoch {
        varint(out, epoch);
    }
    if let Some(code) = &e.code {
        string(out, code);
    }
    if let Some(count) = e.count {
        varint(out, count);
    }
    string(out, &e.detail);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AuditFormError> {
        if self.0.len() < n {
            return Err(AuditFormError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, AuditFormError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, AuditFormError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(AuditFormError("varint too long"))
    }

    fn str(&mut self) -> Result<&'a str, AuditFormError> {
        let len = usize::try_from(self.varint()?).map_err(|_| AuditFormError("length"))?;
        std::str::from_utf8(self.take(len)?).map_err(|_| AuditFormError("text is not UTF-8"))
    }

    fn guid(&mut self) -> Result<u128, AuditFormError> {
        let bytes: [u8; 16] = self
            .take(16)?
            .try_into()
            .map_err(|_| AuditFormError("truncated"))?;
        Ok(u128::from_be_bytes(bytes))
    }
}

fn decode_entry(r: &mut Reader<'_>, previous: u64) -> Result<Stored, AuditFormError> {
    let delta = r.varint()?;
    if delta == 0 {
        // Sequence numbers start at 1 and grow.
        return Err(AuditFormError("ids must grow"));
    }
    let id = previous
        .checked_add(delta)
        .ok_or(AuditFormError("id overflow"))?;
    let at = Timestamp::from_millis(r.varint()?);
    let kind = *AuditKind::ALL
        .get(usize::from(r.byte()?))
        .ok_or(AuditFormError("unknown kind"))?;
    let flags = u16::from_le_bytes([r.byte()?, r.byte()?]);
    if flags >> 11 != 0 {
        return Err(AuditFormError("unknown field"));
    }
    let has = |i: u16| flags & (1 << i) != 0;
    let text = |r: &mut Reader<'_>, i| -> Result<Option<String>, AuditFormError> {
        Ok(if has(i) {
            Some(r.str()?.to_owned())
        } else {
            None
        })
    };
    let actor = text(r, 0)?;
    let reason = text(r, 1)?;
    let integrator = text(r, 2)?;
    let practice = if has(3) {
        Some(
            r.str()?
                .parse::<PmsId>()
                .map_err(|_| AuditFormError("practice"))?,
        )
    } else {
        None
    };
    let halo_guid = if has(4) {
        Some(HaloGuid::from_u128(r.guid()?).map_err(|_| AuditFormError("halo guid"))?)
    } else {
        None
    };
    let link_guid = if has(5) {
        Some(LinkGuid::from_u128(r.guid()?).map_err(|_| AuditFormError("link guid"))?)
    } else {
        None
    };
    let credential = text(r, 6)?;
    let environment = if has(7) {
        Some(
            r.str()?
                .parse::<Environment>()
                .map_err(|_| AuditFormError("environment"))?,
        )
    } else {
        None
    };
    let epoch = if has(8) { Some(r.varint()?) } else { None };
    let code = text(r, 9)?;
    let count = if has(10) { Some(r.varint()?) } else { None };
    let detail = r.str()?.to_owned();
    Ok(Stored {
        id,
        at,
        entry: AuditEntry {
            kind,
            actor,
            reason,
            integrator,
            practice,
            halo_guid,
            link_guid,
            credential,
            environment,
            epoch,
            code,
            count,
            detail,
        },
    })
}

mod base64_bytes {
    use super::{Deserialize, Deserializer, Entries, Serializer};

    pub(super) fn serialize<S: Serializer>(entries: &Entries, s: S) -> Result<S::Ok, S::Error> {
        match entries {
            Entries::Binary(bytes) => s.serialize_str(&crate::packed::pack(bytes)),
            // The text read, written back as it was (either format loads).
            Entries::Packed(text) => s.serialize_str(text),
        }
    }

    /// The text as it is: unpacked by `decode`, on the thread that decodes it.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        String::deserialize(d).map(Entries::Packed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_entry(id: u64) -> Stored {
        Stored {
            id,
            at: Timestamp::from_millis(1_800_000_000_000 + id),
            entry: AuditEntry {
                actor: Some("support:ann".into()),
                reason: Some("ticket 7 — é".into()),
                integrator: Some("acme".into()),
                practice: Some(PmsId::new(halo_ids::PmsType::D4w, "AB123".parse().unwrap())),
                halo_guid: Some(HaloGuid::from_u128(0x1234).unwrap()),
                link_guid: Some(LinkGuid::from_u128(u128::MAX).unwrap()),
                credential: Some("lc_abc".into()),
                environment: Some(Environment::Production),
                epoch: Some(u64::MAX),
                code: Some("QUOTA".into()),
                count: Some(3),
                ..AuditEntry::new(AuditKind::PolicyChanged, "everything set")
            },
        }
    }

    fn trail(entries: impl IntoIterator<Item = Stored>) -> AuditTrail {
        let mut t = AuditTrail::default();
        for s in entries {
            t.push(s);
        }
        t
    }

    #[test]
    fn every_kind_and_field_round_trips_through_json() {
        let mut entries = vec![full_entry(3)];
        for (i, kind) in AuditKind::ALL.into_iter().enumerate() {
            entries.push(Stored {
                id: 10 + 1000 * i as u64,
                at: Timestamp::from_millis(i as u64),
                entry: AuditEntry::new(kind, format!("kind {i}")),
            });
        }
        let original = trail(entries);
        let snap = AuditSnapshot::encode(&original, 50_000, true);
        let json = serde_json::to_string(&snap).unwrap();
        let back: AuditSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back.through(), 50_000);
        assert!(back.covers_next());
        let decoded = back.decode().unwrap();
        assert_eq!(
            decoded.iter().collect::<Vec<_>>(),
            original.iter().collect::<Vec<_>>()
        );
    }

    #[test]
    fn entries_past_through_are_left_out() {
        let original = trail([full_entry(1), full_entry(2), full_entry(9)]);
        let decoded = AuditSnapshot::encode(&original, 2, false).decode().unwrap();
        assert_eq!(
            decoded.iter().map(|s| s.id).collect::<Vec<_>>(),
            [1, 2],
            "entry 9 is read from the log's tail, not the snapshot"
        );
    }

    fn bytes(snap: &mut AuditSnapshot) -> &mut Vec<u8> {
        match &mut snap.entries {
            Entries::Binary(bytes) => bytes,
            Entries::Packed(_) => panic!("made by encode: binary"),
        }
    }

    #[test]
    fn damaged_bytes_are_refused_never_misread() {
        let mut snap = AuditSnapshot::encode(&trail([full_entry(1), full_entry(2)]), 2, false);
        for cut in 0..bytes(&mut snap).len() {
            let mut damaged = snap.clone();
            bytes(&mut damaged).truncate(cut);
            assert!(damaged.decode().is_err(), "truncated at {cut}");
        }
        let mut extra = snap.clone();
        bytes(&mut extra).push(0);
        assert!(extra.decode().is_err());
        let mut past = snap.clone();
        past.through = 1;
        assert!(past.decode().is_err(), "an entry past `through`");
        let mut kind = snap;
        // The first entry's kind byte: magic 4, count 1, id 1, at 6 (varint of ~1.8e12).
        bytes(&mut kind)[4 + 1 + 1 + 6] = 200;
        assert!(kind.decode().is_err());
    }

    /// A part read from JSON keeps its text until decoded: text that does not unpack
    /// reads (the snapshot's other parts still load) and then fails to decode, and a
    /// part written back writes the same text.
    #[test]
    fn text_is_unpacked_when_decoded_and_written_back_as_read() {
        let snap = AuditSnapshot::encode(&trail([full_entry(1), full_entry(2)]), 2, false);
        let json = serde_json::to_value(&snap).unwrap();
        let back: AuditSnapshot = serde_json::from_value(json.clone()).unwrap();
        assert!(matches!(back.entries, Entries::Packed(_)));
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert_eq!(back.decode().unwrap().len(), 2);
        for text in ["lz4:not base64!", "lz4:AAAA", "not base64!"] {
            let mut damaged = json.clone();
            damaged["entries"] = text.into();
            let read: AuditSnapshot = serde_json::from_value(damaged).unwrap();
            assert!(read.decode().is_err(), "{text}");
        }
    }
}
