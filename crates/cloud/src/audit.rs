//! The audit trail: every support action, every authority change, and route denials
//! (sampled), durable in the Cloud's event log and queryable through
//! `GET /admin/audit`.
//!
//! # Where entries come from
//!
//! Each entry is a record of its own in the event log ([`Record::Audit`]), appended by
//! the state writer in the same batch (the same fsync) as the change it describes:
//!
//! - **support actions and policy changes** (enabling, authorising, practices, keys,
//!   quotas, limits, allowlists, pairing) and **credential actions** (issue, binding,
//!   scope extension, revocation, rotation), with the actor and reason the event
//!   carries or, where it carries none, the ones the admin call named
//!   (`X-Halo-Actor`, `X-Halo-Reason`); such an entry is written just *before* its
//!   event and marked `coversNext`;
//! - **promotions** (`sitePromoted`, with actor and reason) and **every authority
//!   change** (`authorityChanged`: the group, its new holder or none, the new epoch,
//!   and what caused it), read from the registry's [`Change::AuthorityChanged`] as the
//!   writer applies the event;
//! - **route denials**, sampled (see [`crate::activity`]).
//!
//! A log written before the audit trail existed has no audit records. Its policy,
//! credential and promotion events are turned into entries as it is read (the same
//! functions, with the actor and reason the event itself holds); its authority
//! changes are not, since only replaying the registry could tell them, and the
//! read-side index is not the place for a second replay.
//!
//! # The index
//!
//! The entries are kept in memory in log order ([`AuditTrail`], about 200 bytes an
//! entry), published by the writer after each durable batch. At start they come from
//! the snapshot (formats 4 and later hold the trail, [`crate::audit_form`]) plus one
//! pass over the log after it, or, without such a snapshot, from one pass over the
//! whole log. Each entry's id is the sequence number of its record,
//! so ids grow, survive restarts, and serve as the paging cursor.

use std::fmt;
use std::str::FromStr;

use halo_credentials::CredentialId;
use halo_ids::{Environment, HaloGuid, LinkGuid, PmsId, Timestamp};
use halo_policy::PolicyEvent;
use halo_tenancy::{Change, Event, Registry};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::record::{CredentialEvent, Record};

/// The audit record format version this build writes.
pub const AUDIT_VERSION: u32 = 1;

/// The longest actor, reason or detail kept in an entry (longer ones are cut).
pub const MAX_TEXT_CHARS: usize = 200;

/// What an audit entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum AuditKind {
    /// The vendor enabled an integrator for its PMS.
    IntegratorEnabled,
    /// The vendor disabled an integrator.
    IntegratorDisabled,
    /// The vendor authorised components (tables, procedures, catalogues, writes).
    ComponentsAuthorised,
    /// Support enabled a practice for an integrator.
    PracticeEnabled,
    /// Support disabled a practice for an integrator.
    PracticeDisabled,
    /// An integrator paired with a practice in one environment.
    PracticePaired,
    /// A subscription key was issued.
    KeyIssued,
    /// A subscription key was revoked.
    KeyRevoked,
    /// A monthly quota was set or removed.
    QuotaSet,
    /// A rate limit was set or removed.
    RateLimitSet,
    /// The caller-IP allowlist was set.
    IpAllowlistSet,
    /// A Link credential was issued.
    CredentialIssued,
    /// A Link credential was bound to the first Link that used it.
    CredentialBound,
    /// Practices were added to a credential's scope.
    CredentialScopeExtended,
    /// A Link credential was revoked.
    CredentialRevoked,
    /// A Link credential was rotated (a new token; the old one revoked).
    CredentialRotated,
    /// Support made a site authoritative in its group.
    SitePromoted,
    /// A group's holder changed and its epoch grew.
    AuthorityChanged,
    /// Requests were denied by policy (sampled; `count` says how many).
    RouteDenied,
    /// A policy change of a kind this build does not name.
    PolicyChanged,
}

impl AuditKind {
    /// Every kind, in declaration order.
    pub const ALL: [AuditKind; 20] = [
        AuditKind::IntegratorEnabled,
        AuditKind::IntegratorDisabled,
        AuditKind::ComponentsAuthorised,
        AuditKind::PracticeEnabled,
        AuditKind::PracticeDisabled,
        AuditKind::PracticePaired,
        AuditKind::KeyIssued,
        AuditKind::KeyRevoked,
        AuditKind::QuotaSet,
        AuditKind::RateLimitSet,
        AuditKind::IpAllowlistSet,
        AuditKind::CredentialIssued,
        AuditKind::CredentialBound,
        AuditKind::CredentialScopeExtended,
        AuditKind::CredentialRevoked,
        AuditKind::CredentialRotated,
        AuditKind::SitePromoted,
        AuditKind::AuthorityChanged,
        AuditKind::RouteDenied,
        AuditKind::PolicyChanged,
    ];

    /// The camelCase name used in the API and in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::IntegratorEnabled => "integratorEnabled",
            AuditKind::IntegratorDisabled => "integratorDisabled",
            AuditKind::ComponentsAuthorised => "componentsAuthorised",
            AuditKind::PracticeEnabled => "practiceEnabled",
            AuditKind::PracticeDisabled => "practiceDisabled",
            AuditKind::PracticePaired => "practicePaired",
            AuditKind::KeyIssued => "keyIssued",
            AuditKind::KeyRevoked => "keyRevoked",
            AuditKind::QuotaSet => "quotaSet",
            AuditKind::RateLimitSet => "rateLimitSet",
            AuditKind::IpAllowlistSet => "ipAllowlistSet",
            AuditKind::CredentialIssued => "credentialIssued",
            AuditKind::CredentialBound => "credentialBound",
            AuditKind::CredentialScopeExtended => "credentialScopeExtended",
            AuditKind::CredentialRevoked => "credentialRevoked",
            AuditKind::CredentialRotated => "credentialRotated",
            AuditKind::SitePromoted => "sitePromoted",
            AuditKind::AuthorityChanged => "authorityChanged",
            AuditKind::RouteDenied => "routeDenied",
            AuditKind::PolicyChanged => "policyChanged",
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An audit kind name that is not one of [`AuditKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit kind {0:?}")]
pub struct UnknownKind(String);

impl FromStr for AuditKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        AuditKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(clip(s, 40)))
    }
}

/// One audit entry as stored in the log (inside [`Record::Audit`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// What happened.
    pub kind: AuditKind,
    /// Who did it: the operator named by the call, or the integrator or Link that
    /// acted; absent when nobody was named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Why, when the call said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The integrator concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrator: Option<String>,
    /// The practice concerned (for an authority change, its group's PMS ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practice: Option<PmsId>,
    /// The site concerned (for an authority change, the new holder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halo_guid: Option<HaloGuid>,
    /// The Link concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_guid: Option<LinkGuid>,
    /// The Link credential concerned (its public `lc_` id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The environment concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// The new epoch (authority changes and promotions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The denial code (route denials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// How many denials this entry stands for (route denials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// A short description for people.
    #[serde(default)]
    pub detail: String,
}

impl AuditEntry {
    /// An entry of `kind` with `detail` and nothing else set.
    pub fn new(kind: AuditKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            actor: None,
            reason: None,
            integrator: None,
            practice: None,
            halo_guid: None,
            link_guid: None,
            credential: None,
            environment: None,
            epoch: None,
            code: None,
            count: None,
            detail: clip(&detail.into(), MAX_TEXT_CHARS),
        }
    }
}

/// The actor and reason an admin call named for an action whose event has no room
/// for them (headers `X-Halo-Actor` and `X-Halo-Reason`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Note {
    /// Who.
    pub actor: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// `text` cut to at most `max` characters (with an ellipsis).
pub(crate) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn text(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| clip(s, MAX_TEXT_CHARS))
}

/// The entry for a policy event; `note` fills in actor and reason.
pub fn for_policy(event: &PolicyEvent, note: &Note) -> AuditEntry {
    let mut practice = None;
    let mut environment = None;
    let (kind, detail) = match event {
        PolicyEvent::IntegratorEnabled { pms_type, .. } => (
            AuditKind::IntegratorEnabled,
            format!("enabled for {pms_type}"),
        ),
        PolicyEvent::IntegratorDisabled { pms_type, .. } => (
            AuditKind::IntegratorDisabled,
            format!("disabled for {pms_type}"),
        ),
        PolicyEvent::ComponentsAuthorised {
            pms_type,
            catalogues,
            tables,
            procedures,
            allow_write,
            ..
        } => (
            AuditKind::ComponentsAuthorised,
            format!(
                "{pms_type}: catalogues [{}], tables [{}], procedures [{}], writes {}",
                catalogues.join(", "),
                tables.join(", "),
                procedures.join(", "),
                if *allow_write { "allowed" } else { "denied" }
            ),
        ),
        PolicyEvent::PracticeEnabled { pms_id, .. } => {
            practice = Some(*pms_id);
            (
                AuditKind::PracticeEnabled,
                format!("practice {pms_id} enabled"),
            )
        }
        PolicyEvent::PracticeDisabled { pms_id, .. } => {
            practice = Some(*pms_id);
            (
                AuditKind::PracticeDisabled,
                format!("practice {pms_id} disabled"),
            )
        }
        PolicyEvent::PracticePaired {
            pms_id,
            environment: env,
            ..
        } => {
            practice = Some(*pms_id);
            environment = Some(*env);
            (AuditKind::PracticePaired, format!("paired with {pms_id}"))
        }
        PolicyEvent::KeyIssued {
            environment: env,
            key_hash,
            ..
        } => {
            environment = Some(*env);
            (
                AuditKind::KeyIssued,
                format!("{env} key issued (sha256 {})", short_hash(key_hash)),
            )
        }
        PolicyEvent::KeyRevoked { key_hash, .. } => (
            AuditKind::KeyRevoked,
            format!("key revoked (sha256 {})", short_hash(key_hash)),
        ),
        PolicyEvent::QuotaSet {
            pms_id, per_month, ..
        } => {
            practice = *pms_id;
            (
                AuditKind::QuotaSet,
                match per_month {
                    Some(n) => format!("quota {n} a month"),
                    None => "quota removed".to_owned(),
                },
            )
        }
        PolicyEvent::RateLimitSet { pms_id, limit, .. } => {
            practice = *pms_id;
            (
                AuditKind::RateLimitSet,
                match limit {
                    Some(l) => format!("rate limit {}/s, burst {}", l.per_second, l.burst),
                    None => "rate limit removed".to_owned(),
                },
            )
        }
        PolicyEvent::IpAllowlistSet { cidrs, .. } => (
            AuditKind::IpAllowlistSet,
            if cidrs.is_empty() {
                "caller-IP allowlist cleared".to_owned()
            } else {
                format!("caller-IP allowlist [{}]", cidrs.join(", "))
            },
        ),
        other => (AuditKind::PolicyChanged, format!("{other:?}")),
    };
    let integrator = event.integrator().to_string();
    let actor = match event {
        // The integrator itself pairs, with its key.
        PolicyEvent::PracticePaired { .. } => Some(integrator.clone()),
        _ => note.actor.as_deref().and_then(text),
    };
    AuditEntry {
        actor,
        reason: note.reason.as_deref().and_then(text),
        integrator: Some(integrator),
        practice,
        environment,
        ..AuditEntry::new(kind, detail)
    }
}

fn short_hash(hash: &halo_policy::KeyHash) -> String {
    hash.to_string().chars().take(12).collect()
}

/// The entry for a credential event; the event's own actor and reason come first,
/// `note` fills in where it has none.
pub fn for_credential(event: &CredentialEvent, note: &Note) -> AuditEntry {
    let own = |actor: Option<&str>, reason: Option<&str>| {
        (
            actor
                .and_then(text)
                .or_else(|| note.actor.as_deref().and_then(text)),
            reason
                .and_then(text)
                .or_else(|| note.reason.as_deref().and_then(text)),
        )
    };
    let mut link_guid = None;
    let mut environment = None;
    let (kind, credential, detail, (actor, reason)) = match event {
        CredentialEvent::Issued {
            token_hash,
            label,
            scope,
            actor,
        } => {
            environment = scope.as_ref().map(|s| s.environment);
            let practices = scope
                .iter()
                .flat_map(|s| s.practices.iter().map(ToString::to_string))
                .collect::<Vec<_>>()
                .join(", ");
            (
                AuditKind::CredentialIssued,
                CredentialId::of(token_hash),
                format!("issued “{label}” for [{practices}]"),
                own(actor.as_deref(), None),
            )
        }
        CredentialEvent::Bound { token_hash, link } => {
            link_guid = Some(*link);
            (
                AuditKind::CredentialBound,
                CredentialId::of(token_hash),
                format!("bound to Link {link}"),
                (None, None),
            )
        }
        CredentialEvent::ScopeExtended {
            token_hash,
            practices,
            actor,
            reason,
        } => (
            AuditKind::CredentialScopeExtended,
            CredentialId::of(token_hash),
            format!(
                "scope extended with [{}]",
                practices
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            own(Some(actor), Some(reason)),
        ),
        CredentialEvent::Revoked {
            token_hash,
            actor,
            reason,
        } => (
            AuditKind::CredentialRevoked,
            CredentialId::of(token_hash),
            "revoked".to_owned(),
            own(actor.as_deref(), reason.as_deref()),
        ),
        CredentialEvent::Rotated {
            from,
            to,
            actor,
            reason,
        } => (
            AuditKind::CredentialRotated,
            CredentialId::of(from),
            format!("rotated to {}", CredentialId::of(to)),
            own(Some(actor), Some(reason)),
        ),
    };
    AuditEntry {
        actor,
        reason,
        credential: Some(credential.to_string()),
        link_guid,
        environment,
        ..AuditEntry::new(kind, detail)
    }
}

/// The entry for a promotion, before it is applied (its epoch is the group's next).
pub fn for_promotion(event: &Event) -> Option<AuditEntry> {
    match event {
        Event::Promoted {
            halo_guid,
            actor,
            reason,
        } => Some(AuditEntry {
            actor: text(actor),
            reason: text(reason),
            halo_guid: Some(*halo_guid),
            ..AuditEntry::new(
                AuditKind::SitePromoted,
                format!("site {halo_guid} promoted"),
            )
        }),
        _ => None,
    }
}

/// The entries for the authority changes an applied tenancy event caused, read from
/// its `changes` and the registry after it.
pub fn for_authority(event: &Event, changes: &[Change], registry: &Registry) -> Vec<AuditEntry> {
    changes
        .iter()
        .filter_map(|change| match change {
            Change::AuthorityChanged {
                group,
                holder,
                epoch,
            } => {
                let cause = match event {
                    Event::SiteAttached { .. } | Event::SiteReady { .. } => "a site joined",
                    Event::SiteRemoved { .. } => "the holder was removed",
                    Event::LinkUninstalled { .. } => "the holder's Link was uninstalled",
                    Event::Reinstalled { .. } => "the holder's Link was reinstalled",
                    Event::Promoted { .. } => "support promoted a site",
                    _ => "a tenancy change",
                };
                let (actor, reason) = match event {
                    Event::Promoted { actor, reason, .. } => (text(actor), text(reason)),
                    _ => (None, None),
                };
                let link_guid = holder
                    .and_then(|h| registry.site(h))
                    .map(halo_tenancy::Site::link_guid);
                let detail = match holder {
                    Some(h) => format!("epoch {} held by {h}: {cause}", epoch.get()),
                    None => format!("epoch {} vacant: {cause}", epoch.get()),
                };
                Some(AuditEntry {
                    actor,
                    reason,
                    practice: Some(group.pms_id),
                    environment: Some(group.environment),
                    halo_guid: *holder,
                    link_guid,
                    epoch: Some(epoch.get()),
                    ..AuditEntry::new(AuditKind::AuthorityChanged, detail)
                })
            }
            _ => None,
        })
        .collect()
}

/// An audit entry with its id (the sequence number of its log record) and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The id: the log sequence number of its record; grows.
    pub id: u64,
    /// When it was recorded.
    pub at: Timestamp,
    /// The entry.
    pub entry: AuditEntry,
}

/// The audit trail in memory, in log order (ids ascending).
#[derive(Debug, Default, Clone)]
pub struct AuditTrail {
    entries: Vec<Stored>,
}

/// What `GET /admin/audit` may filter on; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Any of these kinds (empty: every kind).
    pub kinds: Vec<AuditKind>,
    /// This actor, exactly.
    pub actor: Option<String>,
    /// This integrator.
    pub integrator: Option<String>,
    /// This practice.
    pub practice: Option<PmsId>,
    /// This site.
    pub halo_guid: Option<HaloGuid>,
    /// At or after this time.
    pub from: Option<Timestamp>,
    /// Before this time.
    pub to: Option<Timestamp>,
}

impl AuditFilter {
    /// Whether `s` passes every filter.
    pub fn matches(&self, s: &Stored) -> bool {
        let e = &s.entry;
        (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self
                .actor
                .as_ref()
                .is_none_or(|a| e.actor.as_ref() == Some(a))
            && self
                .integrator
                .as_ref()
                .is_none_or(|i| e.integrator.as_ref() == Some(i))
            && self.practice.is_none_or(|p| e.practice == Some(p))
            && self.halo_guid.is_none_or(|h| e.halo_guid == Some(h))
            && self.from.is_none_or(|from| s.at >= from)
            && self.to.is_none_or(|to| s.at < to)
    }
}

/// One page of entries, newest first.
#[derive(Debug)]
pub struct Page<'a> {
    /// The entries.
    pub entries: Vec<&'a Stored>,
    /// The cursor of the next (older) page, when there may be one.
    pub next: Option<u64>,
}

impl AuditTrail {
    /// Adds an entry; ids must grow (the writer publishes in log order).
    pub(crate) fn push(&mut self, stored: Stored) {
        debug_assert!(self.entries.last().is_none_or(|l| l.id < stored.id));
        self.entries.push(stored);
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Stored> {
        self.entries.iter()
    }

    /// Up to `limit` entries passing `filter`, newest first, with ids below `before`
    /// when given (the cursor of the previous page).
    pub fn page(&self, filter: &AuditFilter, before: Option<u64>, limit: usize) -> Page<'_> {
        let end = before.map_or(self.entries.len(), |b| {
            self.entries.partition_point(|s| s.id < b)
        });
        let mut entries = Vec::with_capacity(limit.min(64));
        for s in self.entries[..end].iter().rev() {
            if entries.len() == limit {
                break;
            }
            if filter.matches(s) {
                entries.push(s);
            }
        }
        let next = if entries.len() == limit {
            entries.last().map(|s| s.id)
        } else {
            None
        };
        Page { entries, next }
    }

    /// Rebuilds the trail from a whole log, oldest first: audit records as they are,
    /// and, for events no audit record covers (logs from before the trail), the
    /// entries derived from the events themselves.
    #[cfg(test)]
    pub(crate) fn rebuild<L: halo_store::EventLog>(
        log: &L,
    ) -> Result<AuditTrail, halo_store::StoreError> {
        Self::rebuild_upto(log, halo_store::Seq::new(u64::MAX))
    }

    /// [`AuditTrail::rebuild`] from the records up to and including `upto` only
    /// (a shared log may have grown past the state being recovered).
    pub(crate) fn rebuild_upto<L: halo_store::EventLog>(
        log: &L,
        upto: halo_store::Seq,
    ) -> Result<AuditTrail, halo_store::StoreError> {
        Self::rebuild_after(
            log,
            AuditTrail::default(),
            halo_store::Seq::ZERO,
            false,
            upto,
        )
    }

    /// Continues `trail`, which has read the log through record `after` (whether
    /// that record covers the next is `covered`), with the records after it up to
    /// and including `upto`: what a snapshot's copy of the trail needs
    /// ([`crate::audit_form`]).
    pub(crate) fn rebuild_after<L: halo_store::EventLog>(
        log: &L,
        trail: AuditTrail,
        after: halo_store::Seq,
        covered: bool,
        upto: halo_store::Seq,
    ) -> Result<AuditTrail, halo_store::StoreError> {
        let mut trail = trail;
        let mut covered = covered;
        log.read_from(after, &mut |seq, bytes| {
            if seq > upto {
                return Ok(());
            }
            // Heartbeats and site registrations are most of a log and never audited:
            // skip them without decoding.
            if Record::is_unaudited_tenancy(bytes) {
                covered = false;
                return Ok(());
            }
            let Ok(record) = Record::from_log_bytes(bytes) else {
                // Recovery already judged the log; an undecodable record is its
                // business, not the index's.
                covered = false;
                return Ok(());
            };
            trail.index(seq, &record, &mut covered);
            Ok(())
        })?;
        Ok(trail)
    }

    /// Adds what record `seq` contributes to the trail, as [`AuditTrail::rebuild`]
    /// reads it: an audit record as it is, an event no audit record covers as the
    /// entry derived from it. `covered` says whether the record before covers this
    /// one, and is set for the next.
    pub(crate) fn index(&mut self, seq: halo_store::Seq, record: &Record, covered: &mut bool) {
        let id = seq.get();
        let derived = match record {
            Record::Audit {
                at,
                covers_next,
                entry,
                ..
            } => {
                self.push(Stored {
                    id,
                    at: *at,
                    entry: entry.clone(),
                });
                *covered = *covers_next;
                return;
            }
            Record::Policy { at, event, .. } => (*at, Some(for_policy(event, &Note::default()))),
            Record::Credential { at, event, .. } => {
                (*at, Some(for_credential(event, &Note::default())))
            }
            Record::Tenancy(entry) => (entry.at, for_promotion(&entry.event)),
        };
        if let (at, Some(entry)) = derived {
            if !*covered {
                self.push(Stored { id, at, entry });
            }
        }
        *covered = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: u64, kind: AuditKind, actor: Option<&str>) -> Stored {
        Stored {
            id,
            at: Timestamp::from_millis(id * 1000),
            entry: AuditEntry {
                actor: actor.map(str::to_owned),
                ..AuditEntry::new(kind, "x")
            },
        }
    }

    #[test]
    fn kinds_round_trip_through_their_names_and_serde() {
        for kind in AuditKind::ALL {
            assert_eq!(kind.as_str().parse::<AuditKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().to_owned())
            );
        }
        assert!("nope".parse::<AuditKind>().is_err());
    }

    #[test]
    fn paging_walks_every_match_once_newest_first() {
        let mut trail = AuditTrail::default();
        for id in 1..=25 {
            let kind = if id % 3 == 0 {
                AuditKind::KeyIssued
            } else {
                AuditKind::PracticeEnabled
            };
            trail.push(stored(
                id * 2,
                kind,
                Some(if id % 2 == 0 { "a" } else { "b" }),
            ));
        }
        let filter = AuditFilter {
            kinds: vec![AuditKind::PracticeEnabled],
            actor: Some("a".into()),
            ..AuditFilter::default()
        };
        let want: Vec<u64> = trail
            .iter()
            .rev()
            .filter(|s| filter.matches(s))
            .map(|s| s.id)
            .collect();
        assert!(want.len() > 4);
        let mut got = Vec::new();
        let mut cursor = None;
        loop {
            let page = trail.page(&filter, cursor, 3);
            assert!(page.entries.len() <= 3);
            got.extend(page.entries.iter().map(|s| s.id));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(got, want);
    }

    #[test]
    fn time_range_is_from_inclusive_to_exclusive() {
        let mut trail = AuditTrail::default();
        for id in 1..=5 {
            trail.push(stored(id, AuditKind::KeyIssued, None));
        }
        let filter = AuditFilter {
            from: Some(Timestamp::from_millis(2000)),
            to: Some(Timestamp::from_millis(4000)),
            ..AuditFilter::default()
        };
        let ids: Vec<u64> = trail
            .page(&filter, None, 10)
            .entries
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, vec![3, 2]);
    }

    /// A log from before the trail gets entries derived from its events; an event
    /// an audit record covers gets none of its own, so nothing is doubled.
    /// Records as old builds wrote them (JSON), and as this build does (tenancy
    /// records binary): the index reads both alike.
    #[test]
    fn rebuild_derives_entries_for_old_logs_and_never_doubles() {
        rebuild_derives_entries(|r| serde_json::to_vec(r).unwrap());
        rebuild_derives_entries(|r| r.to_log_bytes().unwrap());
    }

    fn rebuild_derives_entries(encode: impl Fn(&Record) -> Vec<u8>) {
        use halo_store::EventLog as _;
        let dir = tempfile::tempdir().unwrap();
        let mut log = halo_store::SqliteLog::open(dir.path()).unwrap();
        let at = Timestamp::from_millis(1_800_000_000_000);
        let enable = |crn: &str| PolicyEvent::PracticeEnabled {
            integrator: "acme".parse().unwrap(),
            pms_id: format!("D4w:{crn}").parse().unwrap(),
        };
        let policy = |event| Record::Policy {
            version: 1,
            at,
            event,
        };
        let halo: HaloGuid = "8e1a5a4e-2f6b-4c2d-9f7e-3c1b2a4d5e6f".parse().unwrap();
        let noted = for_policy(
            &enable("NEW1"),
            &Note {
                actor: Some("alice".into()),
                reason: None,
            },
        );
        let records = [
            // 1: an old build's event: derived.
            policy(enable("OLD1")),
            // 2, 3: this build's: the audit record, and its event (not derived).
            Record::Audit {
                version: AUDIT_VERSION,
                at,
                covers_next: true,
                entry: noted.clone(),
            },
            policy(enable("NEW1")),
            // 4: a heartbeat-like tenancy event: nothing.
            Record::Tenancy(halo_tenancy::LogEntry::new(
                at,
                Event::Heartbeat {
                    link: LinkGuid::from_u128(9).unwrap(),
                },
            )),
            // 5: an old build's promotion: derived, with its own actor and reason.
            Record::Tenancy(halo_tenancy::LogEntry::new(
                at,
                Event::Promoted {
                    halo_guid: halo,
                    actor: "dave".into(),
                    reason: "migration".into(),
                },
            )),
        ];
        let bytes: Vec<Vec<u8>> = records.iter().map(encode).collect();
        let slices: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
        log.append(&slices).unwrap();
        let trail = AuditTrail::rebuild(&log).unwrap();
        let got: Vec<(u64, AuditKind, Option<&str>)> = trail
            .iter()
            .map(|s| (s.id, s.entry.kind, s.entry.actor.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, AuditKind::PracticeEnabled, None),
                (2, AuditKind::PracticeEnabled, Some("alice")),
                (5, AuditKind::SitePromoted, Some("dave")),
            ]
        );
        assert_eq!(trail.iter().nth(1).unwrap().entry, noted);
    }

    /// The stored form of an audit record is a compatibility promise: this line,
    /// as version 1 writes it, keeps loading.
    #[test]
    fn a_version_one_audit_record_keeps_loading() {
        let line = r#"{"kind":"audit","version":1,"at":1800000000000,"coversNext":true,"entry":{"kind":"keyIssued","actor":"bob","reason":"first key","integrator":"acme","environment":"stage","detail":"stage key issued (sha256 c980bcae4f6d)"}}"#;
        let record: Record = serde_json::from_str(line).unwrap();
        let Record::Audit {
            version,
            at,
            covers_next,
            entry,
        } = record
        else {
            panic!("not an audit record: {record:?}");
        };
        assert_eq!(
            (version, at.as_millis(), covers_next),
            (1, 1_800_000_000_000, true)
        );
        assert_eq!(entry.kind, AuditKind::KeyIssued);
        assert_eq!(entry.actor.as_deref(), Some("bob"));
        assert_eq!(entry.environment, Some(Environment::Stage));
        assert_eq!(
            serde_json::to_string(&Record::Audit {
                version,
                at,
                covers_next,
                entry
            })
            .unwrap(),
            line
        );
    }

    #[test]
    fn an_events_own_actor_wins_over_the_note() {
        let note = Note {
            actor: Some("header".into()),
            reason: Some("header reason".into()),
        };
        let event = CredentialEvent::Revoked {
            token_hash: halo_policy::KeyHash::of("lnk_x"),
            actor: Some("body".into()),
            reason: None,
        };
        let entry = for_credential(&event, &note);
        assert_eq!(entry.actor.as_deref(), Some("body"));
        assert_eq!(entry.reason.as_deref(), Some("header reason"));
        assert_eq!(entry.kind, AuditKind::CredentialRevoked);
        assert!(entry.credential.unwrap().starts_with("lc_"));
    }
}
