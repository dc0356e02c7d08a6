//! Integrator identifiers.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::PolicyError;

/// An integrator (third-party software vendor) id: a lowercase slug.
///
/// Canonical text: 1 to 64 characters of `a-z`, `0-9` and `-`, starting and ending
/// with a letter or digit (for example `acme-dental`). Parsing trims ASCII whitespace
/// and lowercases ASCII letters; anything else is an error. A slug, not a UUID, so
/// that logs and administration calls stay readable. Cloning is a reference-count
/// increment (no allocation), so decisions can carry it on the allow path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntegratorId(Arc<str>);

impl IntegratorId {
    /// Longest id, in characters.
    pub const MAX_LEN: usize = 64;

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IntegratorId {
    type Err = PolicyError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim_ascii();
        if s.is_empty() {
            return Err(PolicyError::InvalidIntegratorId("must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(PolicyError::InvalidIntegratorId(
                "must be at most 64 characters",
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(PolicyError::InvalidIntegratorId(
                "must hold only ascii letters, digits and '-'",
            ));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(PolicyError::InvalidIntegratorId(
                "must start and end with a letter or digit",
            ));
        }
        Ok(Self(Arc::from(s.to_ascii_lowercase())))
    }
}

impl fmt::Display for IntegratorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IntegratorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntegratorId({})", self.0)
    }
}

impl serde::Serialize for IntegratorId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for IntegratorId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
