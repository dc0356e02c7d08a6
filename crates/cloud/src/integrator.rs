//! The integrator API (SPEC §7). Each handler extracts, calls the core, and maps
//! the result; the decisions live in `halo-policy`, `halo-tenancy` and `halo-router`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine as _;
use halo_ids::{Crn, HaloGuid, PmsId, PmsType};
use halo_policy::{Authenticated, ComponentCache, Deny, ExecutionMode, Policy};
use halo_router::{Command, RouteRequest};

use crate::app::AppState;
use crate::clock::now;
use crate::dto::{
    ImmediateQueryDto, MetricsDto, PracticeQuery, QueryDto, ResultDto, SiteDto, SitesDto, rfc3339,
};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, CallerIp, subscription_key};
use crate::site_view::{policy_view, site_dto};

fn authenticate(
    policy: &Policy,
    headers: &HeaderMap,
    ip: CallerIp,
) -> Result<Authenticated, ApiError> {
    halo_policy::authenticate(policy, subscription_key(headers), ip.0).map_err(ApiError::from)
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
    let registry = app.state.registry();
    halo_router::resolve_crn(&registry, policy, who, pms_type, crn).map_err(ApiError::from)
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
    halo_policy::authorise_practice(&policy, subscription_key(headers), ip.0, pms_id)?;
    Ok((who, pms_id))
}

fn practice_sites(app: &AppState, who: &Authenticated, pms_id: PmsId) -> Vec<SiteDto> {
    let now = now();
    let w = app.state.registry();
    let registry = &*w;
    let mut sites: Vec<SiteDto> = registry
        .sites_by_pms_id(who.environment(), pms_id)
        .filter(|s| s.status().is_live())
        .map(|s| site_dto(registry, s, now, &app.state))
        .collect();
    sites.sort_by_key(|s| !s.authoritative);
    sites
}

/// `GET /integrator/sites`: the sites of a practice, by PMS ID.
#[utoipa::path(get, path = "/integrator/sites", tag = "integrator",
    params(PracticeQuery, ("Ocp-Apim-Subscription-Key" = String, Header, description = "subscription key")),
    responses((status = 200, body = SitesDto), crate::openapi::SiteLookupErrors))]
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
    responses((status = 200, body = SiteDto), crate::openapi::SiteLookupErrors))]
pub async fn site_status(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    site_id: Result<ApiPath<HaloGuid>, ApiError>,
) -> Result<Json<SiteDto>, ApiError> {
    let policy = app.state.policy();
    let who = authenticate(&policy, &headers, ip)?;
    let ApiPath(halo) = site_id?;
    let now = now();
    let registry = app.state.registry();
    // The core decides: unknown and not visible answer alike (404); a key of the
    // other environment is told so (401) only about a site it may see.
    let site = registry.site(halo);
    halo_policy::site_status_access(&policy, &who, site.map(policy_view).as_ref())?;
    match site {
        Some(site) => Ok(Json(site_dto(&registry, site, now, &app.state))),
        // `site_status_access` refuses a missing site: never reached.
        None => Err(ApiError::not_found("site not found")),
    }
}

/// `POST /integrator/pair-site`: pairs the integrator with a practice's site, in the
/// environment of the key only (a Stage pairing never pairs Production).
#[utoipa::path(post, path = "/integrator/pair-site", tag = "integrator",
    params(PracticeQuery, ("Ocp-Apim-Subscription-Key" = String, Header, description = "subscription key")),
    responses((status = 200, body = SiteDto), crate::openapi::PairSiteErrors))]
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
    app.state
        .apply_policy(event, now())
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(site))
}

/// Statement analysis of the texts seen before (bounded; a pure function of the
/// text, so shared by the whole process).
static COMPONENTS: std::sync::LazyLock<ComponentCache> =
    std::sync::LazyLock::new(ComponentCache::default);

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
    responses((status = 200, body = QueryDto), crate::openapi::QueryErrors))]
pub async fn immediate_query(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    site_id: Result<ApiPath<HaloGuid>, ApiError>,
    body: Result<ApiJson<ImmediateQueryDto>, ApiError>,
) -> Result<Json<QueryDto>, ApiError> {
    let created = now();
    let policy = app.state.policy();
    let who = authenticate(&policy, &headers, ip)?;
    let ApiPath(halo) = site_id?;
    let ApiJson(body) = body?;
    if !body.command.command_type.eq_ignore_ascii_case("text") {
        return Err(ApiError::bad_request("command.type must be text"));
    }
    let mode = execution_mode(&body.command.execution_mode)?;
    let components = COMPONENTS
        .extract(&body.command.text)
        .map_err(|e| ApiError::from(Deny::unanalysable(&e)))?;
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
        components,
        command: Command {
            text: body.command.text.clone(),
            mode,
            parameters,
        },
    };
    let mut dispatch = app.state.router().route(request)?;
    let wait = dispatch.deadline().saturating_since(now());
    let outcome = match tokio::time::timeout(wait, &mut dispatch).await {
        Ok(outcome) => outcome,
        Err(_) => dispatch.expire(),
    };
    let output = outcome?;
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
