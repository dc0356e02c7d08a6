//! How the registry is written inside the Cloud's [`Snapshot`](crate::state::Snapshot):
//! since snapshot format 3, as one string, the base64 of the registry's compact binary
//! form ([`RegistrySnapshot::to_bytes`]), so that restoring a million sites is not
//! bound by parsing JSON; formats 1 and 2 hold the registry's JSON object, which still
//! loads. The store keeps snapshots as JSON, so the bytes travel as base64; since
//! format 5, of the LZ4-compressed bytes ([`crate::packed`]).

use std::fmt;

use halo_tenancy::RegistrySnapshot;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serializer};

/// Writes the registry as its binary form, packed ([`crate::packed`]).
pub(crate) fn serialize<S: Serializer>(
    registry: &RegistrySnapshot,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::packed::pack(&registry.to_bytes()))
}

/// Reads the registry from its packed binary form (format 5), base64 of it (formats
/// 3 and 4), or its JSON object (formats 1 and 2).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<RegistrySnapshot, D::Error> {
    deserializer.deserialize_any(Form)
}

struct Form;

impl<'de> Visitor<'de> for Form {
    type Value = RegistrySnapshot;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a registry snapshot: its packed binary form, or its JSON object")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<RegistrySnapshot, E> {
        let bytes = crate::packed::unpack(text)
            .map_err(|e| E::custom(format_args!("registry snapshot: {e}")))?;
        RegistrySnapshot::from_bytes(&bytes).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RegistrySnapshot, A::Error> {
        RegistrySnapshot::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}
