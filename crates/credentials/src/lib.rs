//! Link credentials: the trust boundary between the Cloud and the Links.
//!
//! Support issues a credential (a random token; only its SHA-256 is kept) with a
//! [`Scope`]: the environment it connects in and the practices it may announce. The
//! first Link that says hello with it owns it, and from then on the binding is one
//! to one: the credential answers for no other Link GUID, and that Link GUID is
//! accepted with no other credential. Support can extend a scope, revoke a
//! credential, or rotate it (a new token for the same Link, the old one revoked),
//! each with an actor and a reason.
//!
//! Like tenancy and policy, the set of credentials is a deterministic state machine:
//! [`Credentials::apply`] takes a serde [`CredentialEvent`], a refused event changes
//! nothing, and replaying the log from empty gives an equal value. The checks a
//! Link's hello goes through ([`Credentials::admit`], [`Scope::admit_database`]) are
//! pure functions of that state.
//!
//! ```
//! use halo_credentials::{CredentialEvent, Credentials, Scope, ScopeKind};
//! use halo_ids::{Environment, LinkGuid, PmsId};
//! use halo_policy::KeyHash;
//!
//! let mut creds = Credentials::default();
//! let token = KeyHash::of("lnk_secret");
//! let practice: PmsId = "D4w:BRIGHT77".parse()?;
//! creds.apply(&CredentialEvent::Issued {
//!     token_hash: token,
//!     label: "Bright Dental server".into(),
//!     scope: Some(Scope::practices(Environment::Production, ScopeKind::OnPremises, [practice])),
//!     actor: Some("support:ann".into()),
//! })?;
//! let link = LinkGuid::from_u128(7)?;
//! let admitted = creds.admit(&token, link, Environment::Production)?;
//! assert!(admitted.first_use, "the first hello binds the credential to the link");
//! assert!(admitted.scope.admit_database(practice, false).is_ok());
//! assert!(admitted.scope.admit_database("D4w:HARBOUR01".parse()?, false).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use halo_ids::{Environment, LinkGuid, PmsId};
use halo_policy::KeyHash;
use imbl::OrdMap;
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// The public name of a credential: `lc_` and the first 16 hex digits of its token's
/// SHA-256. Safe to show and log (the token cannot be recovered from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CredentialId([u8; 8]);

impl CredentialId {
    /// The id of the credential whose token hashes to `hash`.
    pub fn of(hash: &KeyHash) -> Self {
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash.as_bytes()[..8]);
        Self(id)
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("lc_")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for CredentialId {
    type Err = CredentialError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let hex = input
            .trim_ascii()
            .strip_prefix("lc_")
            .filter(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(CredentialError::InvalidId)?;
        let mut id = [0u8; 8];
        for (i, slot) in id.iter_mut().enumerate() {
            *slot = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16)
                .map_err(|_| CredentialError::InvalidId)?;
        }
        Ok(Self(id))
    }
}

/// What kind of installation a credential is for; both list the practices they may
/// announce, and support extends the list with [`CredentialEvent::ScopeExtended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ScopeKind {
    /// A Link on a practice's own server: a short list of that practice's PMS IDs.
    OnPremises,
    /// A Link on a multi-tenant hosting cluster (D4W Cloud, Dental4Web): support
    /// extends its list as practices move onto the cluster.
    Hosting,
}

/// What a credential may announce.
///
/// Deny by default: a database is admitted only if its practice is listed, or if it
/// is a demo or de-identified copy and `demo_copies` is set (Stage only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    /// The only environment the credential connects in.
    pub environment: Environment,
    /// On-premises or hosting.
    pub kind: ScopeKind,
    /// The practices (parent CRNs as PMS IDs) it may announce.
    #[serde(default)]
    pub practices: BTreeSet<PmsId>,
    /// Whether it may announce demo and de-identified copies (never in Production).
    #[serde(default)]
    pub demo_copies: bool,
}

impl Scope {
    /// A scope listing `practices`, with no demo copies.
    pub fn practices(
        environment: Environment,
        kind: ScopeKind,
        practices: impl IntoIterator<Item = PmsId>,
    ) -> Self {
        Self {
            environment,
            kind,
            practices: practices.into_iter().collect(),
            demo_copies: false,
        }
    }

    /// A Stage scope that admits demo and de-identified copies only.
    pub fn demo_only() -> Self {
        Self {
            environment: Environment::Stage,
            kind: ScopeKind::OnPremises,
            practices: BTreeSet::new(),
            demo_copies: true,
        }
    }

    fn validate(&self) -> Result<(), CredentialError> {
        if self.demo_copies && self.environment == Environment::Production {
            return Err(CredentialError::DemoInProduction);
        }
        Ok(())
    }

    /// Whether a database announced with this practice (`pms_id`, its real parent
    /// CRN) and demo flag may be registered under this scope.
    ///
    /// # Errors
    /// [`DatabaseRefusal`] naming why; the Cloud sends it back to the Link by name.
    pub fn admit_database(&self, pms_id: PmsId, demo: bool) -> Result<(), DatabaseRefusal> {
        if demo {
            if self.demo_copies {
                return Ok(());
            }
            return Err(DatabaseRefusal::DemoNotInScope);
        }
        if self.practices.contains(&pms_id) {
            Ok(())
        } else {
            Err(DatabaseRefusal::PracticeNotInScope(pms_id))
        }
    }
}

/// Why one database of a hello was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseRefusal {
    /// Its practice is not in the credential's scope.
    #[error("practice {0} is outside this link credential's scope; support can extend the scope")]
    PracticeNotInScope(PmsId),
    /// It is a demo or de-identified copy and the credential does not admit those.
    #[error("demo and de-identified copies are outside this link credential's scope")]
    DemoNotInScope,
}

/// Changes to the credentials Links authenticate with. A stored format: fields added
/// since version 1 have serde defaults, and their absence reads safely (a credential
/// issued without a scope announces nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum CredentialEvent {
    /// Support issued a Link credential (only its hash is kept).
    Issued {
        /// SHA-256 of the token.
        token_hash: KeyHash,
        /// A label for people (for example the practice or cluster name).
        label: String,
        /// What it may announce; `None` (logs from before scopes) admits nothing.
        #[serde(default)]
        scope: Option<Scope>,
        /// Who issued it.
        #[serde(default)]
        actor: Option<String>,
    },
    /// The first Link to use a credential owns it; no other Link GUID may use it, and
    /// that Link GUID may use no other credential.
    Bound {
        /// SHA-256 of the token.
        token_hash: KeyHash,
        /// The Link that owns it.
        link: LinkGuid,
    },
    /// Support added practices to a credential's scope.
    ScopeExtended {
        /// SHA-256 of the token.
        token_hash: KeyHash,
        /// The practices added.
        practices: Vec<PmsId>,
        /// Who did it.
        actor: String,
        /// Why.
        reason: String,
    },
    /// The credential no longer authenticates anyone; its Link stays bound to it
    /// (only a rotation moves the Link to a new credential).
    Revoked {
        /// SHA-256 of the token.
        token_hash: KeyHash,
        /// Who revoked it (absent in logs from before version 2).
        #[serde(default)]
        actor: Option<String>,
        /// Why (absent in logs from before version 2).
        #[serde(default)]
        reason: Option<String>,
    },
    /// Support replaced a credential with a new token for the same Link: the new one
    /// takes over the label, scope and binding; the old one is revoked.
    Rotated {
        /// SHA-256 of the old token.
        from: KeyHash,
        /// SHA-256 of the new token.
        to: KeyHash,
        /// Who rotated it.
        actor: String,
        /// Why.
        reason: String,
    },
}

/// One issued credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// A label for people.
    pub label: String,
    /// The Link that owns it, once one has used it (moved to the new credential by a
    /// rotation).
    pub link: Option<LinkGuid>,
    /// Whether it was revoked (or rotated away).
    pub revoked: bool,
    /// What it may announce; `None` for credentials issued before scopes.
    #[serde(default)]
    pub scope: Option<Scope>,
}

/// Why a credential event or a Link's credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// No such token was issued.
    #[error("unknown link credential")]
    Unknown,
    /// The token was revoked or rotated away.
    #[error("this link credential was revoked")]
    Revoked,
    /// The token belongs to another Link.
    #[error("this link credential belongs to another link")]
    OtherLink,
    /// The Link GUID of the hello is bound to another credential.
    #[error("this link is bound to another credential; support can rotate that credential instead")]
    LinkBoundElsewhere,
    /// The hello's environment is not the credential's.
    #[error("this link credential is for {credential}, but the link says it is {hello}")]
    WrongEnvironment {
        /// The credential's environment.
        credential: Environment,
        /// The environment the Link announced.
        hello: Environment,
    },
    /// The credential was issued before scopes and admits nothing.
    #[error("this link credential has no scope; support must rotate it to one with a scope")]
    NoScope,
    /// A token hash that is already issued.
    #[error("a credential with this token already exists")]
    AlreadyIssued,
    /// A demo-copy scope in Production.
    #[error("demo copies are never admitted in production")]
    DemoInProduction,
    /// A support action without an actor or a reason.
    #[error("{0} must not be empty")]
    Missing(&'static str),
    /// Text that is not a credential id (`lc_` and 16 hex digits).
    #[error("not a link credential id (expected lc_ and 16 hex digits)")]
    InvalidId,
}

/// The outcome of [`Credentials::admit`]: the hello may proceed.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    /// The credential's public id.
    pub id: CredentialId,
    /// The credential's scope: each announced database is checked against it.
    pub scope: &'a Scope,
    /// The credential was unbound: record [`CredentialEvent::Bound`] before the ack.
    pub first_use: bool,
}

/// The set of Link credentials, changed only by [`CredentialEvent`]s.
///
/// Its maps are persistent (`imbl`): a clone shares their structure and costs O(1),
/// and a change to either copy copies only the O(log n) nodes on its path, never
/// touching the other. The Cloud publishes a clone after every durable batch, so a
/// publish costs O(changes), not O(credentials) (an attach storm binds thousands).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct Credentials {
    by_hash: OrdMap<KeyHash, Credential>,
    /// Derived: which credential each bound Link owns.
    by_link: OrdMap<LinkGuid, KeyHash>,
}

/// The stored (snapshot) form: the credentials by token hash; the Link index is
/// rebuilt on load.
#[derive(Serialize, Deserialize)]
struct Stored {
    by_hash: BTreeMap<KeyHash, Credential>,
}

impl From<Stored> for Credentials {
    fn from(stored: Stored) -> Self {
        let by_hash: OrdMap<KeyHash, Credential> = stored.by_hash.into_iter().collect();
        let by_link = index_links(&by_hash);
        Self { by_hash, by_link }
    }
}

impl From<Credentials> for Stored {
    fn from(c: Credentials) -> Self {
        Stored {
            by_hash: c.by_hash.into_iter().collect(),
        }
    }
}

/// The Link → credential index. A Link bound to several credentials (possible only
/// in logs from before the one-to-one rule) keeps the one not revoked, else the
/// greatest hash, so the result is deterministic.
fn index_links(by_hash: &OrdMap<KeyHash, Credential>) -> OrdMap<LinkGuid, KeyHash> {
    let mut by_link: OrdMap<LinkGuid, KeyHash> = OrdMap::new();
    for (hash, c) in by_hash {
        if let Some(link) = c.link {
            let keep_existing = by_link
                .get(&link)
                .and_then(|h| by_hash.get(h))
                .is_some_and(|existing| !existing.revoked && c.revoked);
            if !keep_existing {
                by_link.insert(link, *hash);
            }
        }
    }
    by_link
}

fn non_empty(text: &str, what: &'static str) -> Result<(), CredentialError> {
    if text.trim().is_empty() {
        Err(CredentialError::Missing(what))
    } else {
        Ok(())
    }
}

impl Credentials {
    /// Applies an event. A refused event changes nothing; repeating `Bound` for the
    /// same Link is a no-op.
    ///
    /// # Errors
    /// [`CredentialError`] naming the rule the event breaks.
    pub fn apply(&mut self, event: &CredentialEvent) -> Result<(), CredentialError> {
        match event {
            CredentialEvent::Issued {
                token_hash,
                label,
                scope,
                ..
            } => {
                if self.by_hash.contains_key(token_hash) {
                    return Err(CredentialError::AlreadyIssued);
                }
                if let Some(scope) = scope {
                    scope.validate()?;
                }
                self.by_hash.insert(
                    *token_hash,
                    Credential {
                        label: label.clone(),
                        link: None,
                        revoked: false,
                        scope: scope.clone(),
                    },
                );
            }
            CredentialEvent::Bound { token_hash, link } => {
                let c = self.check(token_hash)?;
                match c.link {
                    Some(owner) if owner == *link => return Ok(()),
                    Some(_) => return Err(CredentialError::OtherLink),
                    None => {}
                }
                if self.by_link.contains_key(link) {
                    return Err(CredentialError::LinkBoundElsewhere);
                }
                if let Some(c) = self.by_hash.get_mut(token_hash) {
                    c.link = Some(*link);
                }
                self.by_link.insert(*link, *token_hash);
            }
            CredentialEvent::ScopeExtended {
                token_hash,
                practices,
                actor,
                reason,
            } => {
                non_empty(actor, "actor")?;
                non_empty(reason, "reason")?;
                let c = self
                    .by_hash
                    .get_mut(token_hash)
                    .ok_or(CredentialError::Unknown)?;
                let scope = c.scope.as_mut().ok_or(CredentialError::NoScope)?;
                scope.practices.extend(practices.iter().copied());
            }
            CredentialEvent::Revoked { token_hash, .. } => {
                let c = self
                    .by_hash
                    .get_mut(token_hash)
                    .ok_or(CredentialError::Unknown)?;
                c.revoked = true;
            }
            CredentialEvent::Rotated {
                from,
                to,
                actor,
                reason,
            } => {
                non_empty(actor, "actor")?;
                non_empty(reason, "reason")?;
                if self.by_hash.contains_key(to) {
                    return Err(CredentialError::AlreadyIssued);
                }
                let old = self.by_hash.get_mut(from).ok_or(CredentialError::Unknown)?;
                old.revoked = true;
                // The binding moves: a Link is bound to exactly one credential.
                let new = Credential {
                    label: old.label.clone(),
                    link: old.link.take(),
                    revoked: false,
                    scope: old.scope.clone(),
                };
                if let Some(link) = new.link {
                    self.by_link.insert(link, *to);
                }
                self.by_hash.insert(*to, new);
            }
        }
        Ok(())
    }

    /// Checks a presented token before the Link says who it is (the WebSocket
    /// upgrade): it must be issued and not revoked.
    ///
    /// # Errors
    /// [`CredentialError::Unknown`] or [`CredentialError::Revoked`].
    pub fn check(&self, token_hash: &KeyHash) -> Result<&Credential, CredentialError> {
        match self.by_hash.get(token_hash) {
            None => Err(CredentialError::Unknown),
            Some(c) if c.revoked => Err(CredentialError::Revoked),
            Some(c) => Ok(c),
        }
    }

    /// Decides whether a hello from `link` in `environment` may proceed with this
    /// token: the token is live, bound to this Link or to none, the Link is bound to
    /// no other credential, the environment is the credential's and it has a scope.
    ///
    /// # Errors
    /// The [`CredentialError`] the Cloud sends back as the close reason.
    pub fn admit(
        &self,
        token_hash: &KeyHash,
        link: LinkGuid,
        environment: Environment,
    ) -> Result<Admission<'_>, CredentialError> {
        let c = self.check(token_hash)?;
        let first_use = match c.link {
            Some(owner) if owner == link => false,
            Some(_) => return Err(CredentialError::OtherLink),
            None => true,
        };
        if self.by_link.get(&link).is_some_and(|h| h != token_hash) {
            return Err(CredentialError::LinkBoundElsewhere);
        }
        let scope = c.scope.as_ref().ok_or(CredentialError::NoScope)?;
        if scope.environment != environment {
            return Err(CredentialError::WrongEnvironment {
                credential: scope.environment,
                hello: environment,
            });
        }
        Ok(Admission {
            id: CredentialId::of(token_hash),
            scope,
            first_use,
        })
    }

    /// The credential with this token hash, revoked or not.
    pub fn get(&self, token_hash: &KeyHash) -> Option<&Credential> {
        self.by_hash.get(token_hash)
    }

    /// The token hash of the credential with this public id.
    pub fn find(&self, id: CredentialId) -> Option<(&KeyHash, &Credential)> {
        self.by_hash
            .iter()
            .find(|(hash, _)| CredentialId::of(hash) == id)
    }

    /// The credential a Link is bound to, if any.
    pub fn of_link(&self, link: LinkGuid) -> Option<(&KeyHash, &Credential)> {
        let hash = self.by_link.get(&link)?;
        self.by_hash.get_key_value(hash)
    }

    /// Every credential, ordered by token hash.
    pub fn iter(&self) -> impl Iterator<Item = (CredentialId, &Credential)> {
        self.by_hash.iter().map(|(h, c)| (CredentialId::of(h), c))
    }

    /// Number of credentials issued (revoked ones included).
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether none was ever issued.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}
