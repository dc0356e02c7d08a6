//! Link credentials: tokens issued by support, each owned by the first Link that
//! uses it. Only SHA-256 hashes are kept.

use std::collections::BTreeMap;

use halo_ids::LinkGuid;
use halo_policy::KeyHash;
use serde::{Deserialize, Serialize};

use crate::record::CredentialEvent;

/// One issued credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// A label for people.
    pub label: String,
    /// The Link that owns it, once one has used it.
    pub link: Option<LinkGuid>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// Why a Link's credential was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// No such token was issued, or it was revoked.
    #[error("unknown or revoked link credential")]
    Unknown,
    /// The token belongs to another Link.
    #[error("this credential belongs to another link")]
    OtherLink,
}

/// The set of Link credentials, changed only by [`CredentialEvent`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    by_hash: BTreeMap<String, Credential>,
}

fn key(hash: &KeyHash) -> String {
    hash.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

impl Credentials {
    /// Applies an event (idempotent for repeats).
    pub fn apply(&mut self, event: &CredentialEvent) {
        match event {
            CredentialEvent::Issued { token_hash, label } => {
                self.by_hash.insert(
                    key(token_hash),
                    Credential {
                        label: label.clone(),
                        link: None,
                        revoked: false,
                    },
                );
            }
            CredentialEvent::Bound { token_hash, link } => {
                if let Some(c) = self.by_hash.get_mut(&key(token_hash)) {
                    c.link.get_or_insert(*link);
                }
            }
            CredentialEvent::Revoked { token_hash } => {
                if let Some(c) = self.by_hash.get_mut(&key(token_hash)) {
                    c.revoked = true;
                }
            }
        }
    }

    /// Checks a presented token before the Link says who it is.
    ///
    /// # Errors
    /// [`CredentialError::Unknown`] for a token never issued or revoked.
    pub fn check(&self, token_hash: &KeyHash) -> Result<&Credential, CredentialError> {
        match self.by_hash.get(&key(token_hash)) {
            Some(c) if !c.revoked => Ok(c),
            _ => Err(CredentialError::Unknown),
        }
    }

    /// Checks that `link` may use the token. `Ok(true)` means the token is still
    /// unbound and a [`CredentialEvent::Bound`] must be recorded.
    ///
    /// # Errors
    /// [`CredentialError::Unknown`] or [`CredentialError::OtherLink`].
    pub fn authorise(&self, token_hash: &KeyHash, link: LinkGuid) -> Result<bool, CredentialError> {
        let c = self.check(token_hash)?;
        match c.link {
            None => Ok(true),
            Some(owner) if owner == link => Ok(false),
            Some(_) => Err(CredentialError::OtherLink),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_link_owns_a_credential_and_others_are_refused() {
        let mut creds = Credentials::default();
        let hash = KeyHash::of("secret");
        assert_eq!(creds.check(&hash).unwrap_err(), CredentialError::Unknown);
        creds.apply(&CredentialEvent::Issued {
            token_hash: hash,
            label: "practice".into(),
        });
        let a = LinkGuid::from_u128(1).unwrap();
        let b = LinkGuid::from_u128(2).unwrap();
        assert_eq!(creds.authorise(&hash, a), Ok(true));
        creds.apply(&CredentialEvent::Bound {
            token_hash: hash,
            link: a,
        });
        assert_eq!(creds.authorise(&hash, a), Ok(false));
        assert_eq!(creds.authorise(&hash, b), Err(CredentialError::OtherLink));
        creds.apply(&CredentialEvent::Revoked { token_hash: hash });
        assert_eq!(creds.authorise(&hash, a), Err(CredentialError::Unknown));
    }
}
