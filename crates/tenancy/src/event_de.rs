//! Decoding [`Event`] in one pass.
//!
//! serde's derive for an internally tagged enum (`#[serde(tag = "type")]`) buffers the
//! whole object before it knows the variant; replaying a log of millions of events
//! pays that on each. This visitor reads the object's keys in whatever order they
//! come, keeps each known field typed, and builds the variant named by `type` at the
//! end. It accepts exactly what the derive accepted (the same names, unknown fields
//! ignored, duplicates and missing fields refused with serde's own errors); a field
//! that belongs to another variant is ignored once the tag is known and checked
//! only when it comes before the tag. `src/tests/event_decode.rs` checks it against
//! the derive it replaced, on every variant, on reordered and unknown keys, and on
//! refusals.

use std::fmt;

use halo_ids::{Crn, Environment, HaloGuid, LinkGuid};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::{Event, SiteIdentity};

/// The variant names as the log writes them (the version-one names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Kind {
    LinkRegistered,
    DatabaseAttached,
    DatabaseReady,
    DatabaseRemoved,
    LinkUninstalled,
    Reinstalled,
    Heartbeat,
    BranchCrnsChanged,
    Promoted,
}

/// Every key any variant has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    #[serde(rename = "type")]
    Type,
    Link,
    Environment,
    Version,
    Site,
    Identity,
    Previous,
    BranchCrns,
    Actor,
    Reason,
    #[serde(other)]
    Other,
}

impl Kind {
    /// Whether events of this kind have `field`.
    fn has(self, field: Field) -> bool {
        use Field as F;
        match self {
            Kind::LinkRegistered => matches!(field, F::Link | F::Environment | F::Version),
            Kind::DatabaseAttached => matches!(field, F::Link | F::Site | F::Identity),
            Kind::DatabaseReady | Kind::DatabaseRemoved => matches!(field, F::Link | F::Site),
            Kind::LinkUninstalled | Kind::Heartbeat => matches!(field, F::Link),
            Kind::Reinstalled => matches!(field, F::Link | F::Previous | F::Site),
            Kind::BranchCrnsChanged => matches!(field, F::Link | F::Site | F::BranchCrns),
            Kind::Promoted => matches!(field, F::Site | F::Actor | F::Reason),
        }
    }
}

/// The fields read so far.
#[derive(Default)]
struct Fields {
    kind: Option<Kind>,
    link: Option<LinkGuid>,
    environment: Option<Environment>,
    version: Option<String>,
    site: Option<HaloGuid>,
    identity: Option<SiteIdentity>,
    previous: Option<HaloGuid>,
    branch_crns: Option<Vec<Crn>>,
    actor: Option<String>,
    reason: Option<String>,
}

/// Reads the next value into `slot`, refusing a second one.
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

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Event;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tenancy event (an object tagged `type`)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let mut v = Fields::default();
        while let Some(field) = map.next_key::<Field>()? {
            // Once the variant is known, keys it does not have are ignored, as the
            // derive ignores unknown fields.
            if field == Field::Other
                || v.kind
                    .is_some_and(|k| field != Field::Type && !k.has(field))
            {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            match field {
                Field::Type => once(&mut map, &mut v.kind, "type")?,
                Field::Link => once(&mut map, &mut v.link, "link")?,
                Field::Environment => once(&mut map, &mut v.environment, "environment")?,
                Field::Version => once(&mut map, &mut v.version, "version")?,
                Field::Site => once(&mut map, &mut v.site, "site")?,
                Field::Identity => once(&mut map, &mut v.identity, "identity")?,
                Field::Previous => once(&mut map, &mut v.previous, "previous")?,
                Field::BranchCrns => once(&mut map, &mut v.branch_crns, "branch_crns")?,
                Field::Actor => once(&mut map, &mut v.actor, "actor")?,
                Field::Reason => once(&mut map, &mut v.reason, "reason")?,
                Field::Other => {}
            }
        }
        let kind = required(v.kind, "type")?;
        Ok(match kind {
            Kind::LinkRegistered => Event::LinkRegistered {
                link: required(v.link, "link")?,
                environment: required(v.environment, "environment")?,
                version: required(v.version, "version")?,
            },
            Kind::DatabaseAttached => Event::SiteAttached {
                link: required(v.link, "link")?,
                halo_guid: required(v.site, "site")?,
                identity: required(v.identity, "identity")?,
            },
            Kind::DatabaseReady => Event::SiteReady {
                link: required(v.link, "link")?,
                halo_guid: required(v.site, "site")?,
            },
            Kind::DatabaseRemoved => Event::SiteRemoved {
                link: required(v.link, "link")?,
                halo_guid: required(v.site, "site")?,
            },
            Kind::LinkUninstalled => Event::LinkUninstalled {
                link: required(v.link, "link")?,
            },
            Kind::Reinstalled => Event::Reinstalled {
                link: required(v.link, "link")?,
                previous: required(v.previous, "previous")?,
                halo_guid: required(v.site, "site")?,
            },
            Kind::Heartbeat => Event::Heartbeat {
                link: required(v.link, "link")?,
            },
            Kind::BranchCrnsChanged => Event::BranchCrnsChanged {
                link: required(v.link, "link")?,
                halo_guid: required(v.site, "site")?,
                branch_crns: required(v.branch_crns, "branch_crns")?,
            },
            Kind::Promoted => Event::Promoted {
                halo_guid: required(v.site, "site")?,
                actor: required(v.actor, "actor")?,
                reason: required(v.reason, "reason")?,
            },
        })
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EventVisitor)
    }
}
