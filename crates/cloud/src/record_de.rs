//! Decoding [`Record`] in one pass.
//!
//! serde's derive for an internally tagged enum (`#[serde(tag = "kind")]`) buffers the
//! whole record before it knows the variant, and then decodes the event a second time
//! from that buffer; replaying millions of records pays both on each. This visitor
//! reads the keys in the order they come and, once `kind` is known (the writer puts it
//! first), decodes the event straight into its type (for tenancy events, the one-pass
//! `Event` decoder of `halo-tenancy`). An event or entry that comes before `kind` is
//! kept as a JSON value and decoded at the end. It accepts what the derive accepted:
//! the same names, unknown fields ignored, duplicates and missing fields refused with
//! serde's own errors, `version` optional for tenancy records only and `coversNext`
//! optional. `tests/record_decode.rs` checks it against the derive it replaced.

use std::fmt;

use halo_ids::Timestamp;
use halo_policy::PolicyEvent;
use halo_tenancy::{Event, LogEntry};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::audit::AuditEntry;
use crate::record::{CredentialEvent, Record};

/// The record kinds as the log writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Kind {
    Tenancy,
    Policy,
    Credential,
    Audit,
}

/// Every key any kind has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(field_identifier)]
enum Field {
    #[serde(rename = "kind")]
    Kind,
    #[serde(rename = "version")]
    Version,
    #[serde(rename = "at")]
    At,
    #[serde(rename = "event")]
    Event,
    #[serde(rename = "coversNext")]
    CoversNext,
    #[serde(rename = "entry")]
    Entry,
    #[serde(other)]
    Other,
}

impl Kind {
    /// Whether records of this kind have `field`.
    fn has(self, field: Field) -> bool {
        match field {
            Field::Kind | Field::Version | Field::At => true,
            Field::Event => self != Kind::Audit,
            Field::CoversNext | Field::Entry => self == Kind::Audit,
            Field::Other => false,
        }
    }
}

/// An event or entry: typed once the kind is known, kept as JSON before.
enum Body {
    Tenancy(Event),
    Policy(PolicyEvent),
    Credential(CredentialEvent),
    Audit(AuditEntry),
    Early(serde_json::Value),
}

#[derive(Default)]
struct Fields {
    kind: Option<Kind>,
    version: Option<u32>,
    at: Option<Timestamp>,
    /// Kept as JSON: only audit records have it (and few records are audit), so it
    /// is checked once the kind is known.
    covers_next: Option<serde_json::Value>,
    event: Option<Body>,
    entry: Option<Body>,
}

fn once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    slot: &mut Option<T>,
    name: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

fn required<T, E: de::Error>(value: Option<T>, name: &'static str) -> Result<T, E> {
    value.ok_or_else(|| E::missing_field(name))
}

/// The body as `T`: decoded now if it came after `kind`, from its JSON otherwise.
fn typed<T: serde::de::DeserializeOwned, E: de::Error>(
    body: Option<Body>,
    name: &'static str,
    pick: impl FnOnce(Body) -> Option<T>,
) -> Result<T, E> {
    match required(body, name)? {
        Body::Early(json) => T::deserialize(json).map_err(E::custom),
        other => pick(other).ok_or_else(|| E::custom("a record's body does not match its kind")),
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Record;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a log record (an object tagged `kind`)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        let mut v = Fields::default();
        while let Some(field) = map.next_key::<Field>()? {
            // Once the kind is known, keys it does not have are ignored, as the derive
            // ignores unknown fields.
            if field == Field::Other || v.kind.is_some_and(|k| !k.has(field)) {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match field {
                Field::Kind => once(&mut map, &mut v.kind, "kind")?,
                Field::Version => once(&mut map, &mut v.version, "version")?,
                Field::At => once(&mut map, &mut v.at, "at")?,
                Field::CoversNext => once(&mut map, &mut v.covers_next, "coversNext")?,
                Field::Event | Field::Entry => {
                    let (slot, name) = if field == Field::Event {
                        (&mut v.event, "event")
                    } else {
                        (&mut v.entry, "entry")
                    };
                    if slot.is_some() {
                        return Err(de::Error::duplicate_field(name));
                    }
                    *slot = Some(match v.kind {
                        Some(Kind::Tenancy) => Body::Tenancy(map.next_value()?),
                        Some(Kind::Policy) => Body::Policy(map.next_value()?),
                        Some(Kind::Credential) => Body::Credential(map.next_value()?),
                        Some(Kind::Audit) => Body::Audit(map.next_value()?),
                        None => Body::Early(map.next_value()?),
                    });
                }
                Field::Other => {}
            }
        }
        let kind = required(v.kind, "kind")?;
        Ok(match kind {
            Kind::Tenancy => Record::Tenancy(LogEntry {
                version: v.version.unwrap_or(1),
                at: required(v.at, "at")?,
                event: typed(v.event, "event", |b| match b {
                    Body::Tenancy(e) => Some(e),
                    _ => None,
                })?,
            }),
            Kind::Policy => Record::Policy {
                version: required(v.version, "version")?,
                at: required(v.at, "at")?,
                event: typed(v.event, "event", |b| match b {
                    Body::Policy(e) => Some(e),
                    _ => None,
                })?,
            },
            Kind::Credential => Record::Credential {
                version: required(v.version, "version")?,
                at: required(v.at, "at")?,
                event: typed(v.event, "event", |b| match b {
                    Body::Credential(e) => Some(e),
                    _ => None,
                })?,
            },
            Kind::Audit => Record::Audit {
                version: required(v.version, "version")?,
                at: required(v.at, "at")?,
                covers_next: match v.covers_next {
                    Some(json) => bool::deserialize(json).map_err(de::Error::custom)?,
                    None => false,
                },
                entry: typed(v.entry, "entry", |b| match b {
                    Body::Audit(e) => Some(e),
                    _ => None,
                })?,
            },
        })
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor)
    }
}
