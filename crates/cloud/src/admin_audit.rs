//! `GET /admin/audit`: the audit trail ([`crate::audit`]) with filters and paging,
//! and the `X-Halo-Actor` / `X-Halo-Reason` headers that name who does an admin call
//! whose body has no room for it.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use halo_ids::{HaloGuid, PmsId, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::admin::Admin;
use crate::app::AppState;
use crate::audit::{AuditFilter, AuditKind, Note, Stored};
use crate::error::ApiError;
use crate::extract::ApiQuery;

/// The header naming who does an admin call (recorded in the audit trail).
pub const ACTOR_HEADER: &str = "X-Halo-Actor";
/// The header saying why (recorded in the audit trail).
pub const REASON_HEADER: &str = "X-Halo-Reason";

/// The default page size.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest page size.
pub const MAX_LIMIT: usize = 500;

impl<S: Send + Sync> FromRequestParts<S> for Note {
    type Rejection = ApiError;

    /// Reads `X-Halo-Actor` and `X-Halo-Reason`; both optional, and refused (400)
    /// only when present but not text.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let header = |name: &str| -> Result<Option<String>, ApiError> {
            match parts.headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim().to_owned()).filter(|s| !s.is_empty()))
                    .map_err(|_| ApiError::bad_request(format!("{name} must be visible ASCII"))),
            }
        };
        Ok(Note {
            actor: header(ACTOR_HEADER)?,
            reason: header(REASON_HEADER)?,
        })
    }
}

/// The query string of `GET /admin/audit`. Every filter given must match.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Kinds, comma-separated (for example `keyIssued,credentialRevoked`).
    pub kind: Option<String>,
    /// The actor, exactly.
    pub actor: Option<String>,
    /// The integrator.
    pub integrator: Option<String>,
    /// The practice, `<PMS type>:<CRN>` (for example `D4w:AB123`).
    pub practice: Option<String>,
    /// The site's Halo GUID.
    pub site: Option<String>,
    /// At or after: milliseconds since the Unix epoch, or RFC 3339.
    pub from: Option<String>,
    /// Before: milliseconds since the Unix epoch, or RFC 3339.
    pub to: Option<String>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
    /// Entries per page, 1 to 500 (default 50).
    pub limit: Option<usize>,
}

/// Why an audit query was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditQueryError {
    /// A kind that does not exist.
    #[error("kind: unknown audit kind {0:?}; the kinds are {kinds}", kinds = kind_list())]
    UnknownKind(String),
    /// A practice that does not parse.
    #[error("practice: {0}")]
    Practice(String),
    /// A site that is not a Halo GUID.
    #[error("site: {0}")]
    Site(String),
    /// A time that is neither form.
    #[error("{0}: expected milliseconds since the Unix epoch or an RFC 3339 time")]
    Time(&'static str),
    /// `from` is not before `to`.
    #[error("from must be before to")]
    EmptyRange,
    /// A cursor no page gave.
    #[error("cursor: not the nextCursor of a previous page")]
    Cursor,
    /// A page size out of range.
    #[error("limit: must be 1 to {MAX_LIMIT}")]
    Limit,
}

fn kind_list() -> String {
    AuditKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<AuditQueryError> for ApiError {
    fn from(e: AuditQueryError) -> Self {
        ApiError::bad_request(crate::audit::clip(&e.to_string(), 600))
    }
}

fn time(field: &'static str, value: &str) -> Result<Timestamp, AuditQueryError> {
    let value = value.trim();
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(Timestamp::from_millis(ms));
    }
    let t = humantime::parse_rfc3339_weak(value).map_err(|_| AuditQueryError::Time(field))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| AuditQueryError::Time(field))?
        .as_millis();
    Ok(Timestamp::from_millis(
        u64::try_from(ms).map_err(|_| AuditQueryError::Time(field))?,
    ))
}

/// A validated audit query: the filter, the cursor and the page size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// What must match.
    pub filter: AuditFilter,
    /// Entries older than this id (the previous page's cursor).
    pub before: Option<u64>,
    /// Entries per page.
    pub limit: usize,
}

impl TryFrom<AuditParams> for AuditQuery {
    type Error = AuditQueryError;

    fn try_from(p: AuditParams) -> Result<Self, AuditQueryError> {
        let kinds = match p.kind.as_deref() {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| {
                    k.parse::<AuditKind>()
                        .map_err(|_| AuditQueryError::UnknownKind(crate::audit::clip(k, 40)))
                })
                .collect::<Result<_, _>>()?,
        };
        let practice = p
            .practice
            .as_deref()
            .map(|s| s.trim().parse::<PmsId>())
            .transpose()
            .map_err(|e| AuditQueryError::Practice(e.to_string()))?;
        let halo_guid = p
            .site
            .as_deref()
            .map(|s| s.trim().parse::<HaloGuid>())
            .transpose()
            .map_err(|e| AuditQueryError::Site(e.to_string()))?;
        let from = p.from.as_deref().map(|v| time("from", v)).transpose()?;
        let to = p.to.as_deref().map(|v| time("to", v)).transpose()?;
        if let (Some(from), Some(to)) = (from, to) {
            if from >= to {
                return Err(AuditQueryError::EmptyRange);
            }
        }
        let before = p
            .cursor
            .as_deref()
            .map(|c| c.trim().parse::<u64>().map_err(|_| AuditQueryError::Cursor))
            .transpose()?;
        let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(AuditQueryError::Limit);
        }
        Ok(AuditQuery {
            filter: AuditFilter {
                kinds,
                actor: p.actor.map(|a| a.trim().to_owned()),
                integrator: p.integrator.map(|i| i.trim().to_owned()),
                practice,
                halo_guid,
                from,
                to,
            },
            before,
            limit,
        })
    }
}

/// One audit entry as the API answers it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntryDto {
    /// The id (grows; the log sequence number of its record).
    pub id: u64,
    /// When, RFC 3339.
    pub at: String,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened (see the kinds in the README).
    pub kind: String,
    /// Who did it, when named.
    pub actor: Option<String>,
    /// Why, when said.
    pub reason: Option<String>,
    /// The integrator concerned.
    pub integrator: Option<String>,
    /// The practice concerned (`D4w:AB123`).
    pub practice: Option<String>,
    /// The site concerned (Halo GUID).
    pub halo_guid: Option<String>,
    /// The Link concerned (Link GUID).
    pub link_guid: Option<String>,
    /// The Link credential concerned (`lc_...`).
    pub credential: Option<String>,
    /// The environment concerned.
    pub environment: Option<String>,
    /// The new epoch (authority changes, promotions).
    pub epoch: Option<u64>,
    /// The denial code (route denials).
    pub code: Option<String>,
    /// How many denials the entry stands for (route denials).
    pub count: Option<u64>,
    /// A description for people.
    pub detail: String,
}

impl From<&Stored> for AuditEntryDto {
    fn from(s: &Stored) -> Self {
        let e = &s.entry;
        AuditEntryDto {
            id: s.id,
            at: crate::dto::rfc3339(s.at),
            at_ms: s.at.as_millis(),
            kind: e.kind.as_str().to_owned(),
            actor: e.actor.clone(),
            reason: e.reason.clone(),
            integrator: e.integrator.clone(),
            practice: e.practice.map(|p| p.to_string()),
            halo_guid: e.halo_guid.map(|h| h.to_string()),
            link_guid: e.link_guid.map(|l| l.to_string()),
            credential: e.credential.clone(),
            environment: e.environment.map(|v| v.as_str().to_owned()),
            epoch: e.epoch,
            code: e.code.clone(),
            count: e.count,
            detail: e.detail.clone(),
        }
    }
}

/// One page of the audit trail, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPageDto {
    /// The entries.
    pub entries: Vec<AuditEntryDto>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /admin/audit`: the audit trail, newest first, filtered and paged.
#[utoipa::path(get, path = "/admin/audit", tag = "admin",
    params(AuditParams),
    responses((status = 200, body = AuditPageDto), crate::openapi::AdminSearchErrors),
    security(("admin" = [])))]
pub async fn list_audit(
    _: Admin,
    State(app): State<AppState>,
    params: Result<ApiQuery<AuditParams>, ApiError>,
) -> Result<Json<AuditPageDto>, ApiError> {
    let ApiQuery(params) = params?;
    let query = AuditQuery::try_from(params)?;
    let trail = app.state.audit();
    let page = trail.page(&query.filter, query.before, query.limit);
    Ok(Json(AuditPageDto {
        entries: page.entries.into_iter().map(AuditEntryDto::from).collect(),
        next_cursor: page.next.map(|n| n.to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_validated_with_typed_errors() {
        let bad = |p: AuditParams| AuditQuery::try_from(p).unwrap_err();
        assert!(matches!(
            bad(AuditParams {
                kind: Some("keyIssued,nope".into()),
                ..Default::default()
            }),
            AuditQueryError::UnknownKind(k) if k == "nope"
        ));
        assert!(matches!(
            bad(AuditParams {
                practice: Some("AB123".into()),
                ..Default::default()
            }),
            AuditQueryError::Practice(_)
        ));
        assert_eq!(
            bad(AuditParams {
                from: Some("yesterday".into()),
                ..Default::default()
            }),
            AuditQueryError::Time("from")
        );
        assert_eq!(
            bad(AuditParams {
                from: Some("2000".into()),
                to: Some("1000".into()),
                ..Default::default()
            }),
            AuditQueryError::EmptyRange
        );
        assert_eq!(
            bad(AuditParams {
                limit: Some(0),
                ..Default::default()
            }),
            AuditQueryError::Limit
        );
        assert_eq!(
            bad(AuditParams {
                cursor: Some("x".into()),
                ..Default::default()
            }),
            AuditQueryError::Cursor
        );
        let ok = AuditQuery::try_from(AuditParams {
            kind: Some("keyIssued, practiceEnabled".into()),
            from: Some("2026-12-01T00:00:00Z".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            ok.filter.kinds,
            vec![AuditKind::KeyIssued, AuditKind::PracticeEnabled]
        );
        assert_eq!(
            ok.filter.from,
            Some(Timestamp::from_millis(1_796_083_200_000))
        );
        assert_eq!(ok.limit, DEFAULT_LIMIT);
    }
}
