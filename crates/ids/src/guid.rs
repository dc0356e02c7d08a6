//! Link and Halo GUIDs: 16-byte `Copy` values parsed from the forms Windows and Halo use.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::Crn;
use crate::error::{Field, IdError, Rule};

/// Parses a GUID in one of the accepted forms: hyphenated, braced hyphenated
/// (Windows registry style) or 32 plain hex digits; any case; surrounding ASCII
/// whitespace trimmed. The nil GUID is rejected.
fn parse_guid(field: Field, input: &str) -> Result<Uuid, IdError> {
    let trimmed = input.trim_ascii();
    if trimmed.is_empty() {
        return Err(IdError::new(field, Rule::Empty, input));
    }
    let inner = match trimmed.strip_prefix('{') {
        Some(rest) => match rest.strip_suffix('}') {
            Some(inner) if inner.len() == 36 => inner,
            _ => return Err(IdError::new(field, Rule::GuidShape, input)),
        },
        None => trimmed,
    };
    if inner.len() != 36 && inner.len() != 32 {
        return Err(IdError::new(field, Rule::GuidShape, input));
    }
    let uuid = Uuid::try_parse(inner).map_err(|_| IdError::new(field, Rule::GuidShape, input))?;
    if uuid.is_nil() {
        return Err(IdError::new(field, Rule::NilGuid, input));
    }
    Ok(uuid)
}

macro_rules! guid_type {
    ($(#[$meta:meta])* $name:ident, $field:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID.
            ///
            /// # Errors
            /// [`Rule::NilGuid`] for the nil UUID.
            pub fn from_uuid(uuid: Uuid) -> Result<Self, IdError> {
                if uuid.is_nil() {
                    return Err(IdError::new($field, Rule::NilGuid, &uuid.to_string()));
                }
                Ok(Self(uuid))
            }

            /// Builds one from its 128-bit value (handy for tests and generators).
            ///
            /// # Errors
            /// [`Rule::NilGuid`] for zero.
            pub fn from_u128(value: u128) -> Result<Self, IdError> {
                Self::from_uuid(Uuid::from_u128(value))
            }

            /// The UUID inside.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// The 16 bytes, big-endian as in the canonical text.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_guid($field, s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.hyphenated())
            }
        }

        crate::serde_str::string_serde!($name);
    };
}

guid_type!(
    /// One Link installation. Stable for the life of the install.
    LinkGuid,
    Field::LinkGuid
);

guid_type!(
    /// One PMS database as seen by one Link install; a reinstall of the Link
    /// creates a new one for the same database.
    HaloGuid,
    Field::HaloGuid
);

impl HaloGuid {
    /// The fake CRN of a demo or de-identified database: the first eight characters
    /// of this GUID's canonical text, upper-cased as every CRN is.
    pub fn fake_crn(&self) -> Crn {
        Crn::fake_for(self)
    }
}
