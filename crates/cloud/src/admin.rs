//! The administration API for the PMS vendor and for support, authenticated with
//! the admin token (`Authorization: Bearer <token>`). Every call becomes one event,
//! durable before the answer.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use halo_ids::{Environment, HaloGuid, PmsId, PmsType};
use halo_policy::{IntegratorId, KeyHash, PolicyEvent};
use halo_tenancy::Event;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::clock::now;
use crate::dto::SiteDto;
use crate::error::ApiError;
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

/// Applies a policy event on a blocking thread (the append fsyncs).
async fn policy(app: &AppState, event: PolicyEvent) -> Result<(), ApiError> {
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || app.state.apply_policy(event, now()))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::bad_request(e.to_string()))
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
    responses((status = 204), (status = 400, body = crate::error::ErrorEnvelope), (status = 401, body = crate::error::ErrorEnvelope)),
    security(("admin" = [])))]
pub async fn enable_integrator(
    _: Admin,
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<PmsTypeBody>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let body = json(body)?;
    let event = PolicyEvent::IntegratorEnabled {
        integrator: integrator(&id)?,
        pms_type: body.pms_type,
    };
    policy(&app, event).await?;
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
    responses((status = 204), (status = 400, body = crate::error::ErrorEnvelope), (status = 401, body = crate::error::ErrorEnvelope)),
    security(("admin" = [])))]
pub async fn authorise_components(
    _: Admin,
    State(app): State<AppState>,
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
    policy(&app, event).await?;
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
    responses((status = 204), (status = 400, body = crate::error::ErrorEnvelope), (status = 401, body = crate::error::ErrorEnvelope)),
    security(("admin" = [])))]
pub async fn enable_practice(
    _: Admin,
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<PracticeBody>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let b = json(body)?;
    let event = PolicyEvent::PracticeEnabled {
        integrator: integrator(&id)?,
        pms_id: b.pms_id,
    };
    policy(&app, event).await?;
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
    responses((status = 200, body = SecretDto), (status = 400, body = crate::error::ErrorEnvelope), (status = 401, body = crate::error::ErrorEnvelope)),
    security(("admin" = [])))]
pub async fn issue_key(
    _: Admin,
    State(app): State<AppState>,
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
    policy(&app, event).await?;
    Ok(Json(SecretDto { key }))
}

/// `POST /admin/policy-events`: applies any policy event as JSON (quotas, rate
/// limits, IP allowlists, revocations, disabling).
#[utoipa::path(post, path = "/admin/policy-events", tag = "admin",
    request_body(content = Object, description = "a halo-policy PolicyEvent, e.g. {\"event\":\"quotaSet\",...}"),
    responses((status = 204), (status = 400, body = crate::error::ErrorEnvelope), (status = 401, body = crate::error::ErrorEnvelope)),
    security(("admin" = [])))]
pub async fn policy_event(
    _: Admin,
    State(app): State<AppState>,
    body: Result<ApiJson<PolicyEvent>, ApiError>,
) -> Result<StatusCode, ApiError> {
    policy(&app, json(body)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A Link credential request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialBody {
    /// A label for people.
    #[serde(default)]
    pub label: String,
}

/// `POST /admin/link-credentials`: issues a token a Link authenticates with; the first
/// Link to use it owns it.
#[utoipa::path(post, path = "/admin/link-credentials", tag = "admin",
    request_body = CredentialBody,
    responses((status = 200, body = SecretDto), (status = 401, body = crate::error::ErrorEnvelope)),
    security(("admin" = [])))]
pub async fn issue_link_credential(
    _: Admin,
    State(app): State<AppState>,
    body: Result<ApiJson<CredentialBody>, ApiError>,
) -> Result<Json<SecretDto>, ApiError> {
    let b = json(body)?;
    let key = new_secret("lnk_");
    let event = CredentialEvent::Issued {
        token_hash: KeyHash::of(&key),
        label: b.label,
    };
    let state = Arc::clone(&app);
    tokio::task::spawn_blocking(move || state.state.apply_credential(event, now()))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(SecretDto { key }))
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
    let w = app.state.read();
    let registry = w.registry();
    let site = registry
        .site(halo)
        .ok_or_else(|| ApiError::not_found("site not found"))?;
    Ok(AdminSiteDto {
        site: site_dto(registry, site, now(), app.state.availability()),
        link_id: site.link_guid().to_string(),
        environment: site.environment().to_string(),
        epoch: site.epoch().get(),
        demo: site.is_demo(),
    })
}

/// `GET /admin/sites/{siteId}`: the support view of a site.
#[utoipa::path(get, path = "/admin/sites/{siteId}", tag = "admin",
    params(("siteId" = String, Path)),
    responses((status = 200, body = AdminSiteDto), (status = 401, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope)),
    security(("admin" = [])))]
pub async fn get_site(
    _: Admin,
    State(app): State<AppState>,
    ApiPath(site_id): ApiPath<String>,
) -> Result<Json<AdminSiteDto>, ApiError> {
    let halo: HaloGuid = site_id.parse()?;
    admin_site(&app, halo).map(Json)
}

/// `POST /admin/sites/{siteId}/promote`: support makes a site authoritative in its
/// group (recorded with actor and reason; the epoch grows).
#[utoipa::path(post, path = "/admin/sites/{siteId}/promote", tag = "admin",
    params(("siteId" = String, Path)), request_body = PromoteBody,
    responses((status = 200, body = AdminSiteDto), (status = 400, body = crate::error::ErrorEnvelope),
        (status = 401, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope),
        (status = 409, body = crate::error::ErrorEnvelope)),
    security(("admin" = [])))]
pub async fn promote(
    _: Admin,
    State(app): State<AppState>,
    ApiPath(site_id): ApiPath<String>,
    body: Result<ApiJson<PromoteBody>, ApiError>,
) -> Result<Json<AdminSiteDto>, ApiError> {
    let halo: HaloGuid = site_id.parse()?;
    let b = json(body)?;
    let event = Event::Promoted {
        site: halo,
        actor: b.actor,
        reason: b.reason,
    };
    let state = Arc::clone(&app);
    tokio::task::spawn_blocking(move || state.state.apply_one(event, now()))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(crate::error::tenancy_error)?;
    admin_site(&app, halo).map(Json)
}
