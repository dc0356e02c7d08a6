//! Centaur Customer Reference Numbers, the PMS ID of a D4W / D4Web database.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use crate::HaloGuid;
use crate::error::{Field, IdError, Rule};

/// A Centaur Customer Reference Number: 1 to 20 ASCII letters or digits, stored
/// upper-case. A `Copy` value with no heap allocation.
///
/// ```
/// use halo_ids::Crn;
/// let crn: Crn = " ab12 ".parse().unwrap();
/// assert_eq!(crn.as_str(), "AB12");
/// assert!("ab 12".parse::<Crn>().is_err());
/// ```
#[derive(Clone, Copy)]
pub struct Crn {
    len: u8,
    bytes: [u8; Crn::MAX_LEN],
}

impl Crn {
    /// The longest CRN, in characters.
    pub const MAX_LEN: usize = 20;

    /// Length of a fake CRN derived from a Halo GUID.
    pub const FAKE_LEN: usize = 8;

    /// The fake CRN of a demo or de-identified database: the first eight characters
    /// of the Halo GUID's canonical text.
    pub fn fake_for(halo: &HaloGuid) -> Crn {
        let text = halo.as_uuid().hyphenated().to_string();
        let mut bytes = [0u8; Self::MAX_LEN];
        for (dst, src) in bytes.iter_mut().zip(text.bytes().take(Self::FAKE_LEN)) {
            *dst = src.to_ascii_uppercase();
        }
        Crn {
            len: Self::FAKE_LEN as u8,
            bytes,
        }
    }

    /// Whether this is the fake CRN of `halo`.
    pub fn is_fake_for(&self, halo: &HaloGuid) -> bool {
        *self == Self::fake_for(halo)
    }

    /// The canonical (upper-case) text.
    pub fn as_str(&self) -> &str {
        // Only ASCII letters and digits are ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)])
            .expect("a crn holds only ascii letters and digits")
    }
}

impl FromStr for Crn {
    type Err = IdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim_ascii();
        if trimmed.is_empty() {
            return Err(IdError::new(Field::Crn, Rule::Empty, input));
        }
        if !trimmed.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(IdError::new(Field::Crn, Rule::CrnCharacter, input));
        }
        if trimmed.len() > Self::MAX_LEN {
            return Err(IdError::new(Field::Crn, Rule::CrnTooLong, input));
        }
        let mut bytes = [0u8; Self::MAX_LEN];
        for (dst, src) in bytes.iter_mut().zip(trimmed.bytes()) {
            *dst = src.to_ascii_uppercase();
        }
        Ok(Crn {
            len: trimmed.len() as u8,
            bytes,
        })
    }
}

impl PartialEq for Crn {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Crn {}

impl Hash for Crn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Crn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Crn {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for Crn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Crn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Crn({})", self.as_str())
    }
}

crate::serde_str::string_serde!(Crn);
