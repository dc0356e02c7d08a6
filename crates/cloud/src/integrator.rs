//! The integrator API (SPEC §7). Each handler extracts, calls the core, and maps
//! the result; the decisions live in `halo-policy`, `halo-tenancy` and `halo-router`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine as _;
use halo_ids::{Crn, HaloGuid, PmsId, PmsType};
use halo_policy::{Authenticated, Deny, ExecutionMode, Policy, extract_components};
use halo_router::{Command, QueryFailure, RouteError, RouteRequest};

use crate::app::AppState;
use crate::clock::now;
use crate::dto::{
    ImmediateQueryDto, MetricsDto, PracticeQuery, QueryDto, ResultDto, SiteDto, SitesDto, rfc3339,
};
use crate::error::{ApiError, ErrorDetails};
use crate::extract::{ApiJson, ApiPath, ApiQuery, CallerIp, subscription_key};
use crate::site_view::{policy_view, site_dto};

/// Maps a policy denial to its status and message (and `Retry-After` for 429).
pub(crate) fn deny_error(deny: &Deny) -> ApiError {
    let e = ApiError::from_code(deny.http_status(), deny.message());
    match deny.code() {
        halo_policy::DenyCode::RateLimited { retry_after_ms } => {
            e.with_retry_after_ms(retry_after_ms)
        }
        _ => e,
    }
}

/// Maps a routing error to its status and message.
pub(crate) fn route_error(e: RouteError) -> ApiError {
    match &e {
        RouteError::Denied(deny) => deny_error(deny),
        RouteError::Failed(QueryFailure::Database {
            error_type,
            error_code,
            message,
        }) => ApiError::from_code(e.http_status(), "the query failed in the database")
            .with_details(ErrorDetails {
                error_type: error_type.clone(),
                error_code: error_code.clone(),
                error_message: message.clone(),
            }),
        _ => ApiError::from_code(e.http_status(), e.to_string()),
    }
}

fn authenticate(
    policy: &Policy,
    headers: &HeaderMap,
    ip: CallerIp,
) -> Result<Authenticated, ApiError> {
    halo_policy::authenticate(policy, subscription_key(headers), ip.0).map_err(|d| deny_error(&d))
}

/// Parses the practice named in the query string (PMS name defaults to D4W).
fn practice(query: &PracticeQuery) -> Result<(PmsType, Crn), ApiError> {
    let crn = query
        .practice_management_site_id
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("practiceManagementSiteId is required"))?
        .parse::<Crn>()?;
    let pms_type = match query.practice_management_name.as_deref() {
        Some(name) => name.parse::<PmsType>()?,
        None => PmsType::D4w,
    };
    Ok((pms_type, crn))
}

/// Resolves a CRN for an authenticated integrator to the PMS ID its sites carry.
/// The decision is `halo_router::resolve_crn`'s: a branch CRN or a demo copy's real
/// CRN is refused with guidance (400) only to an integrator entitled to that
/// practice, and never reveals the parent or the fake CRN; to anyone else it is the
/// PMS ID to authorise, exactly like a CRN nobody has.
fn resolve_practice(
    app: &AppState,
    policy: &Policy,
    who: &Authenticated,
    pms_type: PmsType,
    crn: Crn,
) -> Result<PmsId, ApiError> {
    let w = app.state.read();
    halo_router::resolve_crn(w.registry(), policy, who, pms_type, crn)
        .map_err(|refusal| ApiError::bad_request(refusal.to_string()))
}

/// The common start of the by-PMS-ID endpoints: the key (401), the practice named in
/// the query string (400 for a malformed one, and for a branch or demo real CRN the
/// caller is entitled to be told about), and the caller's grant for that practice
/// (403), which never depends on whether the practice has sites, nor on whether the
/// CRN is another practice's branch or copy.
fn authorised_practice(
    app: &AppState,
    headers: &HeaderMap,
    ip: CallerIp,
    query: &PracticeQuery,
) -> Result<(Authenticated, PmsId), ApiError> {
    let policy = app.state.policy();
    let who = authenticate(&policy, headers, ip)?;
    let (pms_type, crn) = practice(query)?;
    let pms_id = resolve_practice(app, &policy, &who, pms_type, crn)?;
    halo_policy::authorise_practice(&policy, subscription_key(headers), ip.0, pms_id)
        .map_err(|d| deny_error(&d))?;
    Ok((who, pms_id))
}

fn practice_sites(app: &AppState, who: &Authenticated, pms_id: PmsId) -> Vec<SiteDto> {
    let now = now();
    let w = app.state.read();
    let registry = w.registry();
    let mut sites: Vec<SiteDto> = registry
        .sites_by_pms_id(who.environment(), pms_id)
        .filter(|s| s.status().is_live())
        .map(|s| site_dto(registry, s, now, app.state.availability()))
        .collect();
    sites.sort_by_key(|s| !s.authoritative);
    sites
}

/// `GET /integrator/sites`: the sites of a practice, by PMS ID.
#[utoipa::path(get, path = "/integrator/sites", tag = "integrator",
    params(PracticeQuery, ("Ocp-Apim-Subscription-Key" = String, Header, description = "subscription key")),
    responses((status = 200, body = SitesDto), (status = 400, body = crate::error::ErrorEnvelope),
        (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope),
        (status = 404, body = crate::error::ErrorEnvelope)))]
pub async fn find_sites(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    ApiQuery(query): ApiQuery<PracticeQuery>,
) -> Result<Json<SitesDto>, ApiError> {
    let (who, pms_id) = authorised_practice(&app, &headers, ip, &query)?;
    let sites = practice_sites(&app, &who, pms_id);
    if sites.is_empty() {
        return Err(ApiError::not_found("no site found for this practice"));
    }
    Ok(Json(SitesDto { sites }))
}

/// `GET /integrator/sites/{siteId}`: one site's status.
#[utoipa::path(get, path = "/integrator/sites/{siteId}", tag = "integrator",
    params(("siteId" = String, Path, description = "Halo GUID"),
        ("Ocp-Apim-Subscription-Key" = String, Header, description = "subscription key")),
    responses((status = 200, body = SiteDto), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 404, body = crate::error::ErrorEnvelope)))]
pub async fn site_status(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    ApiPath(site_id): ApiPath<String>,
) -> Result<Json<SiteDto>, ApiError> {
    let policy = app.state.policy();
    let who = authenticate(&policy, &headers, ip)?;
    let halo: HaloGuid = site_id.parse()?;
    let now = now();
    let w = app.state.read();
    let registry = w.registry();
    let not_found = || ApiError::not_found("site not found");
    let site = registry.site(halo).ok_or_else(not_found)?;
    let view = policy_view(site);
    // Visible to this integrator at all? Same answer as an unknown site if not.
    let same_env = halo_policy::SiteView {
        environment: who.environment(),
        ..view
    };
    if !halo_policy::site_visible(&policy, &who, &same_env) {
        return Err(not_found());
    }
    if view.environment != who.environment() {
        return Err(ApiError::unauthorized(
            "subscription key is for another environment than the site",
        ));
    }
    Ok(Json(site_dto(
        registry,
        site,
        now,
        app.state.availability(),
    )))
}

/// `POST /integrator/pair-site`: pairs the integrator with a practice's site, in the
/// environment of the key only (a Stage pairing never pairs Production).
#[utoipa::path(post, path = "/integrator/pair-site", tag = "integrator",
    params(PracticeQuery, ("Ocp-Apim-Subscription-Key" = String, Header, description = "subscription key")),
    responses((status = 200, body = SiteDto), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 403, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope)))]
pub async fn pair_site(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    ApiQuery(query): ApiQuery<PracticeQuery>,
) -> Result<Json<SiteDto>, ApiError> {
    let (who, pms_id) = authorised_practice(&app, &headers, ip, &query)?;
    let site = practice_sites(&app, &who, pms_id)
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found("no site found for this practice"))?;
    // Pairing is per environment: the key's (the site's) environment only.
    let event = halo_policy::PolicyEvent::PracticePaired {
        integrator: who.integrator().clone(),
        pms_id,
        environment: who.environment(),
    };
    let state = Arc::clone(&app);
    tokio::task::spawn_blocking(move || state.state.apply_policy(event, now()))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(site))
}

fn execution_mode(text: &str) -> Result<ExecutionMode, ApiError> {
    match text.to_ascii_lowercase().as_str() {
        "reader" => Ok(ExecutionMode::Reader),
        "nonquery" => Ok(ExecutionMode::NonQuery),
        "scalar" => Ok(ExecutionMode::Scalar),
        _ => Err(ApiError::bad_request(
            "command.executionMode must be reader, nonQuery or scalar",
        )),
    }
}

/// `POST /integrator/sites/{siteId}/queries/immediate`: runs a command now.
#[utoipa::path(post, path = "/integrator/sites/{siteId}/queries/immediate", tag = "integrator",
    params(("siteId" = String, Path, description = "Halo GUID"),
        ("Ocp-Apim-Subscription-Key" = String, Header, description = "subscription key")),
    request_body = ImmediateQueryDto,
    responses((status = 200, body = QueryDto), (status = 400, body = crate::error::ErrorEnvelope),
        (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope),
        (status = 404, body = crate::error::ErrorEnvelope), (status = 413, body = crate::error::ErrorEnvelope),
        (status = 429, body = crate::error::ErrorEnvelope), (status = 503, body = crate::error::ErrorEnvelope),
        (status = 504, body = crate::error::ErrorEnvelope)))]
pub async fn immediate_query(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    ApiPath(site_id): ApiPath<String>,
    body: Result<ApiJson<ImmediateQueryDto>, ApiError>,
) -> Result<Json<QueryDto>, ApiError> {
    let created = now();
    let policy = app.state.policy();
    let who = authenticate(&policy, &headers, ip)?;
    let halo: HaloGuid = site_id.parse()?;
    let ApiJson(body) = body?;
    if !body.command.command_type.eq_ignore_ascii_case("text") {
        return Err(ApiError::bad_request("command.type must be text"));
    }
    let mode = execution_mode(&body.command.execution_mode)?;
    let components =
        extract_components(&body.command.text).map_err(|e| deny_error(&Deny::unanalysable(&e)))?;
    let parameters = if body.command.parameters.is_empty() {
        None
    } else {
        Some(serde_json::Value::Array(body.command.parameters.clone()).to_string())
    };
    let request = RouteRequest {
        key: subscription_key(&headers),
        caller_ip: ip.0,
        halo_guid: halo,
        now: created,
        max_time_in_queue: body.max_time_in_queue.map(Duration::from_millis),
        catalogue: body.catalogue.as_deref(),
        components: Arc::new(components),
        command: Command {
            text: body.command.text.clone(),
            mode,
            parameters,
        },
    };
    let mut dispatch = app.state.router().route(request).map_err(route_error)?;
    let wait = dispatch.deadline().saturating_since(now());
    let outcome = match tokio::time::timeout(wait, &mut dispatch).await {
        Ok(outcome) => outcome,
        Err(_) => dispatch.expire(),
    };
    let output = outcome.map_err(route_error)?;
    let updated = now();
    Ok(Json(QueryDto {
        id: uuid::Uuid::new_v4().to_string(),
        integrator_id: who.integrator().to_string(),
        site_id: halo.to_string(),
        mode: "immediate".to_owned(),
        status: "successful".to_owned(),
        created_at: rfc3339(created),
        updated_at: rfc3339(updated),
        metrics: MetricsDto {
            sql_execution_duration: u64::try_from(output.sql_execution.as_millis())
                .unwrap_or(u64::MAX),
        },
        result: ResultDto {
            rows: output.rows,
            size: output.data.len() as u64,
            data: base64::engine::general_purpose::STANDARD.encode(&output.data),
        },
    }))
}
