//! The integrator API (SPEC §7), shaped as Halo's public integrator document
//! (`integrator-openapi.json` 26.619: getSites, getSite, Integrator_PairSite and
//! its deprecated alias pairSite, createImmediateQuery). Each handler extracts,
//! calls the core, and maps the result; the decisions live in `halo-policy`,
//! `halo-tenancy` and `halo-router`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use halo_ids::{Crn, HaloGuid, PmsId, PmsType, Timestamp};
use halo_policy::{Authenticated, ComponentCache, Deny, Policy};
use halo_router::{Command, QueryFailure, QueryOutput, RouteError, RouteRequest};
use serde_json::Value;

use crate::app::AppState;
use crate::clock::now;
use crate::dto::{
    CommandTypeDto, DirectionDto, ErrorDetailsDto, ErrorTypeDto, ExecutionModeDto, FailedQueryDto,
    FailedStatusDto, ImmediateQueryDto, MetricsDto, NonQueryResultDto, PairQuery, ParameterDto,
    PracticeQuery, QueryDto, QueryModeDto, ResultDto, RowsResultDto, SiteDto, SitesDto, SqlTypeDto,
    StateTimeDto, StatusTimingDto, SuccessfulStatusDto, rfc3339,
};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, CallerIp, SizedJson, subscription_key};
use crate::site_view::{policy_view, site_dto};

/// The namespace of integrator UUIDs (`integratorId`): UUID v5 of the integrator's id
/// in it, so each integrator has one stable UUID.
const INTEGRATOR_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6a1f_04c3_2d7e_4b59_9c1e_5f3a_8d20_b7e4);

/// The stable UUID of an integrator (`integratorId`).
pub fn integrator_uuid(integrator: &halo_policy::IntegratorId) -> uuid::Uuid {
    uuid::Uuid::new_v5(&INTEGRATOR_NAMESPACE, integrator.as_str().as_bytes())
}

/// Authenticates an integrator request, once: the activity middleware learns who
/// from here ([`crate::activity::note_integrator`]) instead of hashing the key again.
pub(crate) fn authenticate(
    policy: &Policy,
    headers: &HeaderMap,
    ip: CallerIp,
) -> Result<Authenticated, ApiError> {
    let who = halo_policy::authenticate(policy, subscription_key(headers), ip.0)
        .map_err(ApiError::from)?;
    crate::activity::note_integrator(&who);
    Ok(who)
}

/// Parses the practice named in the query string.
fn practice(query: &PracticeQuery) -> Result<(PmsType, Crn), ApiError> {
    let crn = query.practice_management_site_id.parse::<Crn>()?;
    let pms_type = query.practice_management_name.parse::<PmsType>()?;
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
/// the query string (400 for a malformed or missing one, and for a branch or demo
/// real CRN the caller is entitled to be told about), and the caller's grant for
/// that practice (403), which never depends on whether the practice has sites, nor
/// on whether the CRN is another practice's branch or copy.
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
        .map(|s| site_dto(registry, s, now, app))
        .collect();
    sites.sort_by_key(|s| !s.authoritative);
    sites
}

/// `GET /integrator/sites` (getSites): the live sites of a practice in the key's
/// environment, by PMS ID (an empty list when there is none).
#[utoipa::path(get, path = "/integrator/sites", tag = "integrator", operation_id = "getSites",
    params(PracticeQuery),
    security(("subscriptionKey" = [])),
    responses((status = 200, description = "Sites retrieved.", body = SitesDto),
        crate::openapi::SiteLookupErrors))]
pub async fn find_sites(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    ApiQuery(query): ApiQuery<PracticeQuery>,
) -> Result<Json<SitesDto>, ApiError> {
    let (who, pms_id) = authorised_practice(&app, &headers, ip, &query)?;
    // No live site in the key's environment is an empty list, as Halo answers (the
    // caller is entitled to the practice, so this reveals nothing).
    let sites = practice_sites(&app, &who, pms_id);
    Ok(Json(SitesDto { sites }))
}

/// `GET /integrator/sites/{siteId}` (getSite): one site's status.
#[utoipa::path(get, path = "/integrator/sites/{siteId}", tag = "integrator", operation_id = "getSite",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site.")),
    security(("subscriptionKey" = [])),
    responses((status = 200, description = "Site retrieved.", body = SiteDto),
        crate::openapi::SiteErrors))]
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
        Some(site) => Ok(Json(site_dto(&registry, site, now, &app))),
        // `site_status_access` refuses a missing site: never reached.
        None => Err(ApiError::not_found("site not found")),
    }
}

async fn pair(
    app: AppState,
    headers: HeaderMap,
    ip: CallerIp,
    query: PairQuery,
) -> Result<Json<SiteDto>, ApiError> {
    let (who, pms_id) = authorised_practice(&app, &headers, ip, &query.practice())?;
    let pairing_code = query.pairing_code.filter(|c| !c.trim().is_empty());
    if pms_id.pms_type() == PmsType::BestPractice && pairing_code.is_none() {
        return Err(ApiError::bad_request(
            "pairingCode is required to pair with a Best Practice site",
        ));
    }
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

/// `POST /integrator/pair-site` (Integrator_PairSite): pairs the integrator with a
/// practice's site, in the environment of the key only (a Stage pairing never pairs
/// Production). Answers the site (the authoritative one).
#[utoipa::path(post, path = "/integrator/pair-site", tag = "integrator",
    operation_id = "Integrator_PairSite",
    params(PairQuery),
    security(("subscriptionKey" = [])),
    responses((status = 200, description = "Site retrieved.", body = SiteDto),
        crate::openapi::PairSiteErrors))]
pub async fn pair_site(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    ApiQuery(query): ApiQuery<PairQuery>,
) -> Result<Json<SiteDto>, ApiError> {
    pair(app, headers, ip, query).await
}

/// `POST /integrator/pairSite` (pairSite): Halo's deprecated name of
/// [`pair_site`], answered exactly alike (marked deprecated in `/openapi.json`).
#[utoipa::path(post, path = "/integrator/pairSite", tag = "integrator",
    operation_id = "pairSite",
    params(PairQuery),
    security(("subscriptionKey" = [])),
    responses((status = 200, description = "Site retrieved.", body = SiteDto),
        crate::openapi::PairSiteErrors))]
pub async fn pair_site_deprecated(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    ApiQuery(query): ApiQuery<PairQuery>,
) -> Result<Json<SiteDto>, ApiError> {
    pair(app, headers, ip, query).await
}

/// Whether a parameter comes back in `result.parameters`.
fn is_output(p: &ParameterDto) -> bool {
    matches!(
        p.direction.unwrap_or_default(),
        DirectionDto::Output | DirectionDto::InputOutput | DirectionDto::ReturnValue
    )
}

/// A Halo parameter as the Link binds it: a plain value binds by position, an
/// object `{"name", "value"}` by name. `value` (a string) is typed by `type`.
/// `output` and `returnValue` parameters are not bound (`None`): they are filled
/// from the result ([`output_parameters`]); `inputOutput` binds as input.
pub(crate) fn link_parameter(p: &ParameterDto) -> Result<Option<Value>, ApiError> {
    match p.direction.unwrap_or_default() {
        DirectionDto::Input => {}
        DirectionDto::InputOutput | DirectionDto::Output => {
            if p.name
                .as_deref()
                .is_none_or(|n| output_column(n).is_empty())
            {
                return Err(ApiError::bad_request(
                    "an output or inputOutput parameter needs a name (the result column \
                     it is read from)",
                ));
            }
            if p.direction == Some(DirectionDto::Output) {
                return Ok(None);
            }
        }
        DirectionDto::ReturnValue => return Ok(None),
    }
    let value = match (&p.value, p.sql_type) {
        (None, _) => Value::Null,
        (
            Some(v),
            Some(SqlTypeDto::BigInt | SqlTypeDto::Int | SqlTypeDto::SmallInt | SqlTypeDto::TinyInt),
        ) => v.trim().parse::<i64>().map(Value::from).map_err(|_| {
            ApiError::bad_request("failed to convert parameter value: not an integer")
        })?,
        (Some(v), Some(SqlTypeDto::Bit)) => match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" => Value::from(1),
            "0" | "false" => Value::from(0),
            _ => {
                return Err(ApiError::bad_request(
                    "failed to convert parameter value: a Bit is 0, 1, true or false",
                ));
            }
        },
        (
            Some(v),
            Some(
                SqlTypeDto::Float
                | SqlTypeDto::Real
                | SqlTypeDto::Decimal
                | SqlTypeDto::Money
                | SqlTypeDto::SmallMoney,
            ),
        ) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| {
                ApiError::bad_request("failed to convert parameter value: not a finite number")
            })?,
        (Some(_), Some(SqlTypeDto::Binary | SqlTypeDto::VarBinary | SqlTypeDto::Image)) => {
            return Err(ApiError::bad_request(
                "binary parameters are not supported by SQLite Links",
            ));
        }
        (Some(v), _) => Value::String(v.clone()),
    };
    Ok(Some(match &p.name {
        Some(name) => serde_json::json!({"name": name, "value": value}),
        None => value,
    }))
}

/// The result column an output parameter is read from: its name without the
/// `@`, `:` or `$` prefix.
fn output_column(name: &str) -> &str {
    name.strip_prefix(['@', ':', '$']).unwrap_or(name)
}

/// The output, inputOutput and returnValue parameters of a successful command, as
/// Halo returns them (`result.parameters`, values in base64 of their text):
/// `output` and `inputOutput` take the first row's column of the same name
/// (`reader` only; ASCII case ignored; null when there is no row or no such
/// column); `returnValue` takes that column if the first row has one, otherwise
/// the command's row count (rows affected for `nonQuery`, rows returned otherwise).
fn output_parameters(
    parameters: &[ParameterDto],
    mode: ExecutionModeDto,
    output: &QueryOutput,
) -> Vec<ParameterDto> {
    if !parameters.iter().any(is_output) {
        return Vec::new();
    }
    let rows = output.rows;
    // The rows are decoded only here, for a command that asks for output parameters.
    let first_row: Option<serde_json::Map<String, Value>> = match mode {
        ExecutionModeDto::Reader => halo_protocol::rows_json(&output.data)
            .ok()
            .and_then(|json| serde_json::from_slice::<Vec<Value>>(&json).ok())
            .and_then(|rows| rows.into_iter().next())
            .and_then(|row| match row {
                Value::Object(map) => Some(map),
                _ => None,
            }),
        ExecutionModeDto::Scalar | ExecutionModeDto::NonQuery => None,
    };
    let column = |name: Option<&str>| {
        let wanted = output_column(name?);
        first_row.as_ref().and_then(|row| {
            row.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(wanted))
                .map(|(_, v)| v.clone())
        })
    };
    let base64_text = |v: Value| match v {
        Value::Null => None,
        Value::String(s) => Some(base64::engine::general_purpose::STANDARD.encode(s)),
        other => Some(base64::engine::general_purpose::STANDARD.encode(other.to_string())),
    };
    parameters
        .iter()
        .filter(|p| is_output(p))
        .map(|p| {
            let value = match p.direction.unwrap_or_default() {
                DirectionDto::ReturnValue => {
                    column(p.name.as_deref()).unwrap_or_else(|| Value::from(rows))
                }
                _ => column(p.name.as_deref()).unwrap_or(Value::Null),
            };
            ParameterDto {
                value: base64_text(value),
                ..p.clone()
            }
        })
        .collect()
}

/// Statement analysis of the texts seen before (bounded; a pure function of the
/// text, so shared by the whole process and by the async path).
pub(crate) static COMPONENTS: std::sync::LazyLock<ComponentCache> =
    std::sync::LazyLock::new(ComponentCache::default);

/// What the immediate query's answers share, whichever way it ends.
struct QueryHead {
    id: String,
    integrator_id: String,
    site_id: String,
    max_time_in_queue: u64,
    command_size: u64,
    request_size: u64,
    created: Timestamp,
}

impl QueryHead {
    /// The state timings, with execution taken as `sql` before `completed`.
    fn timing(&self, completed: Timestamp, sql: Duration, ended: bool) -> StatusTimingDto {
        let sql_ms = u64::try_from(sql.as_millis()).unwrap_or(u64::MAX);
        let started = Timestamp::from_millis(
            completed
                .as_millis()
                .saturating_sub(sql_ms)
                .max(self.created.as_millis()),
        );
        StatusTimingDto {
            initialising: StateTimeDto {
                start_time: rfc3339(self.created),
                end_time: ended.then(|| rfc3339(started)),
            },
            executing: StateTimeDto {
                start_time: rfc3339(started),
                end_time: ended.then(|| rfc3339(completed)),
            },
        }
    }

    /// The 400 answer of a command the database failed (Halo's
    /// `ExecutionFailedImmediateQuery`).
    fn failed(&self, error_type: &str, error_code: &str, message: String) -> Response {
        let completed = now();
        let body = FailedQueryDto {
            id: self.id.clone(),
            integrator_id: self.integrator_id.clone(),
            site_id: self.site_id.clone(),
            mode: QueryModeDto::Immediate,
            status: FailedStatusDto::ExecutionFailed,
            max_time_in_queue: self.max_time_in_queue,
            command_size: self.command_size,
            request_size: self.request_size,
            created_at: rfc3339(self.created),
            updated_at: rfc3339(completed),
            status_timing: self.timing(completed, Duration::ZERO, true),
            error_details: ErrorDetailsDto {
                error_type: if error_type == "sqlite" {
                    ErrorTypeDto::Sqlite
                } else {
                    ErrorTypeDto::HaloLink
                },
                error_code: error_code.parse().unwrap_or_default(),
                error_message: crate::error::clip(&message),
            },
            completed_at: rfc3339(completed),
        };
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    }
}

/// `POST /integrator/sites/{siteId}/queries/immediate` (createImmediateQuery): runs
/// a command now and answers its result; a command the database fails is answered
/// 400 with the query and its `errorDetails`.
#[utoipa::path(post, path = "/integrator/sites/{siteId}/queries/immediate", tag = "integrator",
    operation_id = "createImmediateQuery",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site.")),
    security(("subscriptionKey" = [])),
    request_body = ImmediateQueryDto,
    responses((status = 200, description = "Immediate query executed.", body = QueryDto),
        crate::openapi::QueryErrors))]
pub async fn immediate_query(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    site_id: Result<ApiPath<HaloGuid>, ApiError>,
    body: Result<SizedJson<ImmediateQueryDto>, ApiError>,
) -> Result<Response, ApiError> {
    let created = now();
    let policy = app.state.policy();
    let who = authenticate(&policy, &headers, ip)?;
    let ApiPath(halo) = site_id?;
    let SizedJson {
        value: body,
        size: request_size,
    } = body?;
    let procedure = body.command.command_type == CommandTypeDto::StoredProcedure;
    let mode = body.command.execution_mode;
    let components = if procedure {
        // A procedure configured at the Link, authorised by its name alone (a
        // procedure component); the Link runs the text it holds for that name.
        std::sync::Arc::new(
            halo_policy::procedure_components(&body.command.text).map_err(|_| {
                ApiError::bad_request(
                    "command refused: with type storedProcedure, command.text is the \
                     procedure's name (a one- or two-part name)",
                )
            })?,
        )
    } else {
        // A malformed command is a bad request (400), as Halo answers malformed
        // SQL; a construct the analyser does not read is denied (403).
        COMPONENTS.extract(&body.command.text).map_err(|e| {
            if e.is_malformed_command() {
                ApiError::bad_request(format!("command refused: {e}"))
            } else {
                ApiError::from(Deny::unanalysable(&e))
            }
        })?
    };
    let values = body
        .command
        .parameters
        .iter()
        .filter_map(|p| link_parameter(p).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let parameters = (!values.is_empty()).then(|| Value::Array(values).to_string());
    let router = app.state.router();
    let head = QueryHead {
        id: uuid::Uuid::new_v4().to_string(),
        integrator_id: integrator_uuid(who.integrator()).to_string(),
        site_id: halo.to_string(),
        max_time_in_queue: body.max_time_in_queue.unwrap_or_else(|| {
            u64::try_from(router.config().default_time_in_queue.as_millis()).unwrap_or(u64::MAX)
        }),
        command_size: body.command.text.len() as u64,
        request_size: request_size as u64,
        created,
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
            mode: mode.into(),
            parameters,
            procedure,
        },
    };
    // The job comes back to be written from this task to the connection of the
    // session routing chose (no hand-off to the session's task), unless that
    // session takes its jobs from its queue.
    let (mut dispatch, handoff) = router.route_direct(request)?;
    let wait = dispatch.deadline().saturating_since(now());
    let sent_and_answered = async {
        if let Some(handoff) = handoff {
            // On failure the dispatch is dropped below: its place is released.
            crate::link_ws::write_handoff(handoff).await?;
        }
        (&mut dispatch).await
    };
    let outcome = match tokio::time::timeout(wait, sent_and_answered).await {
        Ok(outcome) => outcome,
        Err(_) => dispatch.expire(),
    };
    let output = match outcome {
        Ok(output) => output,
        Err(RouteError::Failed(QueryFailure::Database {
            error_type,
            error_code,
            message,
        })) => return Ok(head.failed(&error_type, &error_code, message)),
        Err(e) => return Err(e.into()),
    };
    let completed = now();
    let size = output.size as u64;
    let parameters = output_parameters(&body.command.parameters, mode, &output);
    let result = match mode {
        ExecutionModeDto::NonQuery => ResultDto::NonQuery(NonQueryResultDto {
            rows_affected: output.rows,
            size: 0,
            parameters,
        }),
        ExecutionModeDto::Reader | ExecutionModeDto::Scalar => ResultDto::Rows(RowsResultDto {
            rows: output.rows,
            size,
            data: output.data,
            parameters,
        }),
    };
    let result_size = match &result {
        ResultDto::Rows(r) => r.size,
        ResultDto::NonQuery(r) => r.size,
    };
    Ok(Json(QueryDto {
        id: head.id.clone(),
        integrator_id: head.integrator_id.clone(),
        site_id: head.site_id.clone(),
        mode: QueryModeDto::Immediate,
        status: SuccessfulStatusDto::Successful,
        max_time_in_queue: head.max_time_in_queue,
        command_size: head.command_size,
        request_size: head.request_size,
        created_at: rfc3339(created),
        updated_at: rfc3339(completed),
        status_timing: head.timing(completed, output.sql_execution, false),
        metrics: MetricsDto {
            sql_execution_duration: u64::try_from(output.sql_execution.as_millis())
                .unwrap_or(u64::MAX),
        },
        result,
        result_size,
        completed_at: rfc3339(completed),
    })
    .into_response())
}
