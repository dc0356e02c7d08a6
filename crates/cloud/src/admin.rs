//! The administration API for the PMS vendor and for support, authenticated with
//! the admin token (`Authorization: Bearer <token>`). Every call becomes one event,
//! durable before the answer.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use halo_credentials::{Credential, CredentialId, Scope, ScopeKind};
use halo_ids::{Environment, HaloGuid, PmsId, PmsType};
use halo_policy::{IntegratorId, KeyHash, PolicyEvent};
use halo_tenancy::Event;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::audit::Note;
use crate::clock::now;
use crate::dto::SiteDto;
use crate::error::{ApiError, credential_error};
use crate::extract::{ApiJson, ApiPath, bearer};
use crate::record::CredentialEvent;
use crate::site_view::site_dto;

/// Proof that the request carried the admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("admin token required (Authorization: Bearer)")
        })?;
        // KeyHash compares in constant time.
        if KeyHash::of(token) == app.admin_token_hash {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized("invalid admin token"))
        }
    }
}

fn json<T>(body: Result<ApiJson<T>, ApiError>) -> Result<T, ApiError> {
    body.map(|ApiJson(b)| b)
}

fn integrator(id: &str) -> Result<IntegratorId, ApiError> {
    id.parse::<IntegratorId>()
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Applies a policy event, recording who and why (`X-Halo-Actor`, `X-Halo-Reason`)
/// in its audit entry: answered once both are durable.
async fn policy_noted(app: &AppState, event: PolicyEvent, note: Note) -> Result<(), ApiError> {
    Ok(app.state.apply_policy_noted(event, now(), note).await?)
}

/// A random secret: 32 bytes as hex, with a readable prefix.
pub fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// A PMS type in a body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PmsTypeBody {
    /// `D4w`, `BestPractice` or `Zedmed`.
    #[schema(value_type = String)]
    pub pms_type: PmsType,
}

/// `POST /admin/integrators/{integrator}/enable`: the vendor enables an integrator.
#[utoipa::path(post, path = "/admin/integrators/{integrator}/enable", tag = "admin",
    params(("integrator" = String, Path)), request_body = PmsTypeBody,
    responses((status = 204), crate::openapi::AdminWriteErrors),
    security(("admin" = [])))]
pub async fn enable_integrator(
    _: Admin,
    State(app): State<AppState>,
    note: Note,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<PmsTypeBody>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let body = json(body)?;
    let event = PolicyEvent::IntegratorEnabled {
        integrator: integrator(&id)?,
        pms_type: body.pms_type,
    };
    policy_noted(&app, event, note).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Components the vendor authorises.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentsBody {
    /// The PMS type.
    #[schema(value_type = String)]
    pub pms_type: PmsType,
    /// Catalogues the integrator may name.
    #[serde(default)]
    pub catalogues: Vec<String>,
    /// Tables and views.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Stored procedures.
    #[serde(default)]
    pub procedures: Vec<String>,
    /// Whether writes (`nonQuery`) are allowed.
    #[serde(default)]
    pub allow_write: bool,
}

/// `PUT /admin/integrators/{integrator}/components`: the vendor authorises components
/// (replaces the earlier set for that PMS type).
#[utoipa::path(put, path = "/admin/integrators/{integrator}/components", tag = "admin",
    params(("integrator" = String, Path)), request_body = ComponentsBody,
    responses((status = 204), crate::openapi::AdminWriteErrors),
    security(("admin" = [])))]
pub async fn authorise_components(
    _: Admin,
    State(app): State<AppState>,
    note: Note,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<ComponentsBody>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let b = json(body)?;
    let event = PolicyEvent::ComponentsAuthorised {
        integrator: integrator(&id)?,
        pms_type: b.pms_type,
        catalogues: b.catalogues,
        tables: b.tables,
        procedures: b.procedures,
        allow_write: b.allow_write,
    };
    policy_noted(&app, event, note).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A practice in a body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PracticeBody {
    /// `<pms type>:<site id>`, for example `D4w:AB123`.
    #[schema(value_type = String)]
    pub pms_id: PmsId,
}

/// `POST /admin/integrators/{integrator}/practices`: support enables a practice for
/// an integrator.
#[utoipa::path(post, path = "/admin/integrators/{integrator}/practices", tag = "admin",
    params(("integrator" = String, Path)), request_body = PracticeBody,
    responses((status = 204), crate::openapi::AdminWriteErrors),
    security(("admin" = [])))]
pub async fn enable_practice(
    _: Admin,
    State(app): State<AppState>,
    note: Note,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<PracticeBody>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let b = json(body)?;
    let event = PolicyEvent::PracticeEnabled {
        integrator: integrator(&id)?,
        pms_id: b.pms_id,
    };
    policy_noted(&app, event, note).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An environment in a body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyBody {
    /// `stage` or `production`.
    #[schema(value_type = String)]
    pub environment: Environment,
}

/// A newly issued secret, shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretDto {
    /// The secret; only its hash is stored.
    pub key: String,
}

/// `POST /admin/integrators/{integrator}/keys`: issues a subscription key bound to
/// one environment.
#[utoipa::path(post, path = "/admin/integrators/{integrator}/keys", tag = "admin",
    params(("integrator" = String, Path)), request_body = KeyBody,
    responses((status = 200, body = SecretDto), crate::openapi::AdminWriteErrors),
    security(("admin" = [])))]
pub async fn issue_key(
    _: Admin,
    State(app): State<AppState>,
    note: Note,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<KeyBody>, ApiError>,
) -> Result<Json<SecretDto>, ApiError> {
    let b = json(body)?;
    let prefix = match b.environment {
        Environment::Stage => "stg_",
        Environment::Production => "prd_",
    };
    let key = new_secret(prefix);
    let event = PolicyEvent::KeyIssued {
        integrator: integrator(&id)?,
        environment: b.environment,
        key_hash: KeyHash::of(&key),
    };
    policy_noted(&app, event, note).await?;
    Ok(Json(SecretDto { key }))
}

/// `POST /admin/policy-events`: applies any policy event as JSON (quotas, rate
/// limits, IP allowlists, revocations, disabling).
#[utoipa::path(post, path = "/admin/policy-events", tag = "admin",
    request_body(content = Object, description = "a halo-policy PolicyEvent, e.g. {\"event\":\"quotaSet\",...}"),
    responses((status = 204), crate::openapi::AdminWriteErrors),
    security(("admin" = [])))]
pub async fn policy_event(
    _: Admin,
    State(app): State<AppState>,
    note: Note,
    body: Result<ApiJson<PolicyEvent>, ApiError>,
) -> Result<StatusCode, ApiError> {
    policy_noted(&app, json(body)?, note).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A Link credential request: who it is for and what it may announce.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialBody {
    /// A label for people (the practice or the hosting cluster).
    #[serde(default)]
    pub label: String,
    /// The only environment the Link may connect in: `stage` or `production`.
    #[schema(value_type = String)]
    pub environment: Environment,
    /// `onPremises` (a practice's own server; the default) or `hosting` (a
    /// multi-tenant cluster whose list support extends).
    #[serde(default = "on_premises")]
    #[schema(value_type = String)]
    pub kind: ScopeKind,
    /// The practices (`D4w:<parent CRN>`) the Link may announce.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub practices: Vec<PmsId>,
    /// Whether it may announce demo and de-identified copies (Stage only).
    #[serde(default)]
    pub demo_copies: bool,
    /// Who issues it (recorded).
    #[serde(default)]
    pub actor: Option<String>,
}

fn on_premises() -> ScopeKind {
    ScopeKind::OnPremises
}

/// A newly issued Link credential, shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialSecretDto {
    /// The token for the Link's config; only its hash is stored.
    pub key: String,
    /// The credential's public id (`lc_` and 16 hex digits), for support actions.
    pub id: String,
}

/// A Link credential as support sees it (never the token).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialDto {
    /// The public id.
    pub id: String,
    /// The label.
    pub label: String,
    /// The Link bound to it, once one has connected.
    pub link_id: Option<String>,
    /// Whether it was revoked (or rotated away).
    pub revoked: bool,
    /// The environment, absent for credentials issued before scopes.
    pub environment: Option<String>,
    /// `onPremises` or `hosting`.
    pub kind: Option<String>,
    /// The practices it may announce.
    pub practices: Vec<String>,
    /// Whether it may announce demo copies.
    pub demo_copies: bool,
}

fn credential_dto(id: CredentialId, c: &Credential) -> CredentialDto {
    CredentialDto {
        id: id.to_string(),
        label: c.label.clone(),
        link_id: c.link.map(|l| l.to_string()),
        revoked: c.revoked,
        environment: c.scope.as_ref().map(|s| s.environment.to_string()),
        kind: c.scope.as_ref().map(|s| {
            match s.kind {
                ScopeKind::OnPremises => "onPremises",
                ScopeKind::Hosting => "hosting",
            }
            .to_owned()
        }),
        practices: c
            .scope
            .iter()
            .flat_map(|s| s.practices.iter().map(ToString::to_string))
            .collect(),
        demo_copies: c.scope.as_ref().is_some_and(|s| s.demo_copies),
    }
}

/// Applies a credential event: answered once it is durable.
async fn credential(app: &AppState, event: CredentialEvent) -> Result<(), ApiError> {
    app.state
        .apply_credential(event, now())
        .await
        .map_err(|e| credential_error(&e))
}

/// The token hash and Link of the credential named in the path.
fn find_credential(app: &AppState, id: &str) -> Result<KeyHash, ApiError> {
    let id: CredentialId = id.parse().map_err(|e| credential_error(&e))?;
    let w = app.state.credentials();
    w.find(id)
        .map(|(hash, _)| *hash)
        .ok_or_else(|| ApiError::not_found("no link credential with this id"))
}

/// `POST /admin/link-credentials`: issues a token a Link authenticates with, scoped
/// to one environment and the practices it may announce; the first Link to use it
/// owns it, one to one.
#[utoipa::path(post, path = "/admin/link-credentials", tag = "admin",
    request_body = CredentialBody,
    responses((status = 200, body = CredentialSecretDto), crate::openapi::CredentialIssueErrors),
    security(("admin" = [])))]
pub async fn issue_link_credential(
    _: Admin,
    State(app): State<AppState>,
    note: Note,
    body: Result<ApiJson<CredentialBody>, ApiError>,
) -> Result<Json<CredentialSecretDto>, ApiError> {
    let b = json(body)?;
    let key = new_secret("lnk_");
    let token_hash = KeyHash::of(&key);
    let event = CredentialEvent::Issued {
        token_hash,
        label: b.label,
        scope: Some(Scope {
            environment: b.environment,
            kind: b.kind,
            practices: b.practices.into_iter().collect(),
            demo_copies: b.demo_copies,
        }),
        actor: b.actor,
    };
    app.state
        .apply_credential_noted(event, now(), note)
        .await
        .map_err(|e| credential_error(&e))?;
    Ok(Json(CredentialSecretDto {
        key,
        id: CredentialId::of(&token_hash).to_string(),
    }))
}

/// `GET /admin/link-credentials`: every Link credential (never a token).
#[utoipa::path(get, path = "/admin/link-credentials", tag = "admin",
    responses((status = 200, body = Vec<CredentialDto>), crate::openapi::AdminListErrors),
    security(("admin" = [])))]
pub async fn list_link_credentials(
    _: Admin,
    State(app): State<AppState>,
) -> Json<Vec<CredentialDto>> {
    let w = app.state.credentials();
    Json(w.iter().map(|(id, c)| credential_dto(id, c)).collect())
}

/// Who does a support action, and why (both recorded).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionBody {
    /// Who (recorded).
    pub actor: String,
    /// Why (recorded).
    pub reason: String,
}

fn action(body: Result<ApiJson<ActionBody>, ApiError>) -> Result<ActionBody, ApiError> {
    let b = json(body)?;
    if b.actor.trim().is_empty() || b.reason.trim().is_empty() {
        return Err(ApiError::bad_request("actor and reason are required"));
    }
    Ok(b)
}

/// `POST /admin/link-credentials/{id}/revoke`: the credential authenticates no one
/// from now on; its Link's live session is closed within a second.
#[utoipa::path(post, path = "/admin/link-credentials/{id}/revoke", tag = "admin",
    params(("id" = String, Path, description = "credential id (lc_...)")), request_body = ActionBody,
    responses((status = 204), crate::openapi::RevokeErrors),
    security(("admin" = [])))]
pub async fn revoke_link_credential(
    _: Admin,
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<ActionBody>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let b = action(body)?;
    let token_hash = find_credential(&app, &id)?;
    let event = CredentialEvent::Revoked {
        token_hash,
        actor: Some(b.actor),
        reason: Some(b.reason),
    };
    // Publishing it kicks the Link bound to it then (see `CloudState::kicks`).
    credential(&app, event).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /admin/link-credentials/{id}/rotate`: a new token for the same Link and
/// scope; the old one is revoked (its live session closes; the Link reconnects with
/// the new token).
#[utoipa::path(post, path = "/admin/link-credentials/{id}/rotate", tag = "admin",
    params(("id" = String, Path, description = "credential id (lc_...)")), request_body = ActionBody,
    responses((status = 200, body = CredentialSecretDto), crate::openapi::ActionErrors),
    security(("admin" = [])))]
pub async fn rotate_link_credential(
    _: Admin,
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<ActionBody>, ApiError>,
) -> Result<Json<CredentialSecretDto>, ApiError> {
    let b = action(body)?;
    let from = find_credential(&app, &id)?;
    let key = new_secret("lnk_");
    let to = KeyHash::of(&key);
    let event = CredentialEvent::Rotated {
        from,
        to,
        actor: b.actor,
        reason: b.reason,
    };
    // Publishing it kicks the Link bound to it then.
    credential(&app, event).await?;
    Ok(Json(CredentialSecretDto {
        key,
        id: CredentialId::of(&to).to_string(),
    }))
}

/// Practices to add to a credential's scope.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeBody {
    /// Practices to add (`D4w:<parent CRN>`).
    #[schema(value_type = Vec<String>)]
    pub practices: Vec<PmsId>,
    /// Who (recorded).
    pub actor: String,
    /// Why (recorded).
    pub reason: String,
}

/// `POST /admin/link-credentials/{id}/scope`: support adds practices to what the
/// credential may announce (a hosting cluster taking on a practice). The Link
/// announces them on its next connection.
#[utoipa::path(post, path = "/admin/link-credentials/{id}/scope", tag = "admin",
    params(("id" = String, Path, description = "credential id (lc_...)")), request_body = ScopeBody,
    responses((status = 200, body = CredentialDto), crate::openapi::ActionErrors),
    security(("admin" = [])))]
pub async fn extend_link_credential_scope(
    _: Admin,
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<ScopeBody>, ApiError>,
) -> Result<Json<CredentialDto>, ApiError> {
    let b = json(body)?;
    let token_hash = find_credential(&app, &id)?;
    let event = CredentialEvent::ScopeExtended {
        token_hash,
        practices: b.practices,
        actor: b.actor,
        reason: b.reason,
    };
    credential(&app, event).await?;
    let w = app.state.credentials();
    let (_, c) = w
        .find(CredentialId::of(&token_hash))
        .ok_or_else(|| ApiError::not_found("no link credential with this id"))?;
    Ok(Json(credential_dto(CredentialId::of(&token_hash), c)))
}

/// A promotion.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromoteBody {
    /// Who promotes (recorded).
    pub actor: String,
    /// Why (recorded).
    pub reason: String,
}

/// The support view of a site: the integrator view plus routing internals.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSiteDto {
    /// The integrator view.
    pub site: SiteDto,
    /// The Link serving it.
    pub link_id: String,
    /// The environment.
    pub environment: String,
    /// The authority epoch of its group.
    pub epoch: u64,
    /// Whether it is a demo or de-identified copy.
    pub demo: bool,
}

fn admin_site(app: &AppState, halo: HaloGuid) -> Result<AdminSiteDto, ApiError> {
    let w = app.state.registry();
    let registry = &*w;
    let site = registry
        .site(halo)
        .ok_or_else(|| ApiError::not_found("site not found"))?;
    Ok(AdminSiteDto {
        site: site_dto(registry, site, now(), app),
        link_id: site.link_guid().to_string(),
        environment: site.environment().to_string(),
        epoch: site.epoch().get(),
        demo: site.is_demo(),
    })
}

/// `GET /admin/sites/{siteId}`: the support view of a site.
#[utoipa::path(get, path = "/admin/sites/{siteId}", tag = "admin",
    params(("siteId" = String, Path)),
    responses((status = 200, body = AdminSiteDto), crate::openapi::AdminReadErrors),
    security(("admin" = [])))]
pub async fn get_site(
    _: Admin,
    State(app): State<AppState>,
    ApiPath(halo): ApiPath<HaloGuid>,
) -> Result<Json<AdminSiteDto>, ApiError> {
    admin_site(&app, halo).map(Json)
}

/// `POST /admin/sites/{siteId}/promote`: support makes a site authoritative in its
/// group (recorded with actor and reason; the epoch grows).
#[utoipa::path(post, path = "/admin/sites/{siteId}/promote", tag = "admin",
    params(("siteId" = String, Path)), request_body = PromoteBody,
    responses((status = 200, body = AdminSiteDto), crate::openapi::ActionErrors),
    security(("admin" = [])))]
pub async fn promote(
    _: Admin,
    State(app): State<AppState>,
    ApiPath(halo): ApiPath<HaloGuid>,
    body: Result<ApiJson<PromoteBody>, ApiError>,
) -> Result<Json<AdminSiteDto>, ApiError> {
    let b = json(body)?;
    let event = Event::Promoted {
        halo_guid: halo,
        actor: b.actor,
        reason: b.reason,
    };
    app.state.apply_one(event, now()).await?;
    admin_site(&app, halo).map(Json)
}
