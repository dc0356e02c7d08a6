//! Subscription keys, stored only as SHA-256 hashes and compared in constant time.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::PolicyError;

/// The SHA-256 hash of a subscription key. The key itself is never stored.
///
/// Equality is constant-time ([`subtle`]), so comparing a presented key's hash with a
/// stored one does not leak how many leading bytes matched. Text form: 64 lowercase
/// hex digits.
#[derive(Clone, Copy)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a presented key (exact bytes, no trimming).
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// A hash from its raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for KeyHash {
    /// Constant-time: compares four 64-bit words with `subtle` (four optimisation
    /// barriers instead of 32 for a byte-wise comparison) and never exits early.
    fn eq(&self, other: &Self) -> bool {
        let word = |h: &[u8; 32], i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&h[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w)
        };
        let mut equal = subtle::Choice::from(1u8);
        for i in 0..4 {
            equal &= word(&self.0, i).ct_eq(&word(&other.0, i));
        }
        equal.into()
    }
}

impl Eq for KeyHash {}

impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

impl PartialOrd for KeyHash {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KeyHash {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl FromStr for KeyHash {
    type Err = PolicyError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim_ascii().as_bytes();
        if s.len() != 64 {
            return Err(PolicyError::InvalidKeyHash);
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or(PolicyError::InvalidKeyHash)?;
            let lo = hex_val(pair[1]).ok_or(PolicyError::InvalidKeyHash)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix: enough to tell keys apart in logs.
        write!(
            f,
            "KeyHash({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl serde::Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Hashes a [`KeyHash`] by its first eight bytes: SHA-256 output is already uniform,
/// so no second hash function is needed on the lookup path.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KeyHashState;

impl BuildHasher for KeyHashState {
    type Hasher = PrefixHasher;
    fn build_hasher(&self) -> PrefixHasher {
        PrefixHasher(0)
    }
}

/// See [`KeyHashState`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut buf = [0u8; 8];
        let n = bytes.len().min(8);
        buf[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(buf);
    }
}
