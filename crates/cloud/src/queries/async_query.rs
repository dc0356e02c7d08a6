//! Async queries: `createAsyncQuery` (201), `getQuery`, `getQueryStatusBatch`, and
//! the runner that takes an accepted query to a terminal status.
//!
//! **Durability.** A query is written to the store (`queued`) before 201 is
//! answered, with what dispatching it needs: the command and the caller
//! ([`StoredCaller`]: the SHA-256 of the key, never the key, and the caller's
//! address). Every status change is written before it is visible; the terminal
//! status and its webhooks are written in one transaction. Every dispatch is
//! decided again by the policy of the moment from the stored caller
//! (`Router::route_stored`), so after a restart [`recover`] puts a query that had
//! not finished back in the queue, and the new process runs it once its Link
//! attaches, or ends it `expiredInQueue` when its `maxTimeInQueue` has passed; a
//! key revoked or a grant withdrawn meanwhile ends it `executionFailed` (deny by
//! default). Reads (`reader`, `scalar`) that had started run again from the start
//! (their partial pages are deleted); a `nonQuery` that may have run is not run
//! twice: it ends `executionFailed`, saying its outcome is unknown. Finished
//! queries and their pages stay readable until their retention ends.
//!
//! **On a cluster** a node dispatches only to the Links attached to it. A queued
//! query whose Link holds a lease on another node (it was accepted while the Link
//! was on no node, adopted from a node that died, or its Link moved) is handed over
//! to that node ([`super::store::JobStore::hand_over`], a compare-and-set on its
//! owner) and forgotten here; that node runs it, so it is dispatched once.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use halo_ids::{HaloGuid, Timestamp};
use halo_policy::{Authenticated, Deny, ExecutionMode, extract_components};
use halo_router::{Command, Paging, QueryOutput, RouteError, RouteLimits, RouteRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use super::hub::StreamEvent;
use super::record::{AsyncRecord, AsyncStatus, StoredCaller, StoredCommand, StoredError, Timing};
use super::store::{JobStoreError, PageMeta};
use super::{Jobs, blocking};
use crate::app::AppState;
use crate::clock::now;
use crate::dto::{CommandDto, CommandTypeDto};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, CallerIp, SizedJson, subscription_key};
use crate::site_view::policy_view;

/// The largest `maxTimeInQueue` of an async query, in ms (the document's maximum).
pub const MAX_TIME_IN_QUEUE_MS: u64 = 7_200_000;
/// `maxTimeInQueue` when the request gives none (the document's default).
pub const DEFAULT_TIME_IN_QUEUE_MS: u64 = 3_600_000;

/// `POST /integrator/sites/{siteId}/queries/async` body (Halo's `AsyncCommand`).
/// The command is the immediate path's [`CommandDto`]: one command shape for both.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AsyncQueryBody {
    /// How long the query may wait for the site, in ms (default 3 600 000, at most
    /// 7 200 000).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 7_200_000, default = 3_600_000)]
    pub max_time_in_queue: Option<u64>,
    /// The catalogue; the site's default when absent.
    #[serde(default)]
    pub catalogue: Option<String>,
    /// The command.
    pub command: CommandDto,
}

/// `POST /integrator/sites/{siteId}/queries/status` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusBatchBody {
    /// The queries asked about (UUIDs, at most 100).
    #[schema(value_type = Vec<uuid::Uuid>, max_items = 100)]
    pub query_ids: Vec<String>,
}

pub(crate) fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    ip: CallerIp,
) -> Result<Authenticated, ApiError> {
    crate::integrator::authenticate(&app.state.policy(), headers, ip)
}

/// The caller may see `site`: it exists, its practice is enabled for the caller and
/// it is in the key's environment (`halo_policy::site_status_access` decides).
fn may_see_site(app: &AppState, who: &Authenticated, site: HaloGuid) -> Result<(), ApiError> {
    let policy = app.state.policy();
    let registry = app.state.registry();
    let view = registry.site(site).map(policy_view);
    halo_policy::site_status_access(&policy, who, view.as_ref()).map_err(ApiError::from)
}

/// A path that names a site (and maybe more).
pub(crate) trait SitePath {
    /// The site it names.
    fn site(&self) -> HaloGuid;
}

impl SitePath for HaloGuid {
    fn site(&self) -> HaloGuid {
        *self
    }
}

impl SitePath for (HaloGuid, String) {
    fn site(&self) -> HaloGuid {
        self.0
    }
}

impl SitePath for (HaloGuid, String, String) {
    fn site(&self) -> HaloGuid {
        self.0
    }
}

/// The preamble of every async and registered handler that reads what a caller
/// owns on a site: the key (401/403), the path (400), and whether the caller may
/// see the site (404, or 401 for a key of the other environment).
pub(crate) fn site_caller<T: SitePath>(
    app: &AppState,
    headers: &HeaderMap,
    ip: CallerIp,
    path: Result<ApiPath<T>, ApiError>,
) -> Result<(Authenticated, T), ApiError> {
    let who = authenticate(app, headers, ip)?;
    let ApiPath(path) = path?;
    may_see_site(app, &who, path.site())?;
    Ok((who, path))
}

/// Checks a command the way the immediate path does and returns it stored, with
/// the policy's decision for `key` on `site` taken now (401/403/404 as the
/// immediate path answers them).
pub(crate) fn accept_command(
    app: &AppState,
    key: &str,
    ip: Option<IpAddr>,
    site: HaloGuid,
    catalogue: Option<String>,
    command: &CommandDto,
) -> Result<StoredCommand, ApiError> {
    if command.command_type == CommandTypeDto::StoredProcedure {
        return Err(ApiError::bad_request(
            "command.type storedProcedure is not supported by this site",
        ));
    }
    // As the immediate path: a malformed command is a bad request (400), a
    // construct the analyser does not read is denied (403).
    let components = crate::integrator::COMPONENTS
        .extract(&command.text)
        .map_err(|e| {
            if e.is_malformed_command() {
                ApiError::bad_request(format!("command refused: {e}"))
            } else {
                ApiError::from(Deny::unanalysable(&e))
            }
        })?;
    // Parameters are stored as the Link binds them, so a re-dispatch needs no DTO.
    let parameters = command
        .parameters
        .iter()
        .map(crate::integrator::link_parameter)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            ApiError::bad_request(
                "output and returnValue parameters are answered on the immediate path \
                 only (an async result has no parameters)",
            )
        })?;
    let stored = StoredCommand {
        text: command.text.clone(),
        mode: command.execution_mode.into(),
        parameters,
        catalogue,
    };
    let request = route_request(key, ip, site, now(), None, &stored, components);
    app.state.router().decide(&request)?;
    Ok(stored)
}

fn route_request<'a>(
    key: &'a str,
    ip: Option<IpAddr>,
    site: HaloGuid,
    at: Timestamp,
    in_queue: Option<Duration>,
    command: &'a StoredCommand,
    components: Arc<halo_policy::Components>,
) -> RouteRequest<'a> {
    RouteRequest {
        key,
        caller_ip: ip,
        halo_guid: site,
        now: at,
        max_time_in_queue: in_queue,
        catalogue: command.catalogue.as_deref(),
        components,
        command: Command {
            text: command.text.clone(),
            mode: command.mode,
            parameters: if command.parameters.is_empty() {
                None
            } else {
                Some(Value::Array(command.parameters.clone()).to_string())
            },
            procedure: false,
        },
    }
}

fn store_error(e: &JobStoreError) -> ApiError {
    tracing::error!(error = %e, "job store failed");
    ApiError::internal(&"the query could not be stored")
}

/// A new record for an accepted query, `queued`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn new_record(
    who: &Authenticated,
    site: HaloGuid,
    source: &str,
    registered_id: Option<String>,
    max_time_in_queue: u64,
    request_size: u64,
    command: StoredCommand,
    at: u64,
) -> AsyncRecord {
    let mut record = AsyncRecord {
        id: uuid::Uuid::new_v4().to_string(),
        integrator: who.integrator().to_string(),
        environment: who.environment().as_str().to_owned(),
        site: site.to_string(),
        source: source.to_owned(),
        registered_id,
        status: AsyncStatus::Initialising,
        max_time_in_queue,
        command_size: command.text.len() as u64,
        request_size,
        created_at: at,
        updated_at: at,
        timing: Timing::default(),
        command,
        sql_execution_ms: None,
        rows: 0,
        size: 0,
        pages: Vec::new(),
        error: None,
        completed_at: None,
        expires_at: None,
        caller: None,
    };
    record.timing.initialising.start = Some(at);
    record.enter(AsyncStatus::Queued, at);
    record
}

/// `POST /integrator/sites/{siteId}/queries/async`: accepts a query (201), durably,
/// and runs it in the background.
#[utoipa::path(post, path = "/integrator/sites/{siteId}/queries/async", tag = "integrator",
    operation_id = "createAsyncQuery",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site.")),
    security(("subscriptionKey" = [])),
    request_body = AsyncQueryBody,
    responses((status = 201, description = "Async query accepted (queued).",
        body = super::docs::AsyncQueryDto),
        crate::openapi::AsyncSubmitErrors))]
pub async fn create_async_query(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    site_id: Result<ApiPath<HaloGuid>, ApiError>,
    body: Result<SizedJson<AsyncQueryBody>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = authenticate(&app, &headers, ip)?;
    let ApiPath(site) = site_id?;
    let SizedJson {
        value: body,
        size: request_size,
    } = body?;
    let max_time_in_queue = body.max_time_in_queue.unwrap_or(DEFAULT_TIME_IN_QUEUE_MS);
    if max_time_in_queue > MAX_TIME_IN_QUEUE_MS {
        return Err(ApiError::bad_request(
            "maxTimeInQueue must be between 0 and 7200000 ms",
        ));
    }
    let key = subscription_key(&headers).to_owned();
    let command = accept_command(
        &app,
        &key,
        ip.0,
        site,
        body.catalogue.clone(),
        &body.command,
    )?;
    let request_size = request_size as u64;
    let mut record = new_record(
        &who,
        site,
        "async",
        None,
        max_time_in_queue,
        request_size,
        command,
        now().as_millis(),
    );
    record.caller = Some(StoredCaller::of(&key, ip.0));
    drop(key);
    let text = serde_json::to_string(&record).map_err(|e| ApiError::internal(&e))?;
    let id = record.id.clone();
    blocking(&app.jobs.store, move |s| s.put_query(&id, true, &text))
        .await
        .map_err(|e| store_error(&e))?;
    let answer = record.to_json();
    // On a cluster a Link may be moving between nodes (its node died): the query
    // waits for it, until its queue time is over, as a resumed one does.
    let waits_for_link = app.forwarding.is_some();
    spawn(Arc::clone(&app), record, waits_for_link);
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Loads a query the caller owns on `site` (same integrator and environment, and
/// the caller may still see the site); anything else is 404, like a query nobody has.
pub(crate) async fn owned(
    app: &AppState,
    who: &Authenticated,
    site: HaloGuid,
    query_id: &str,
) -> Result<AsyncRecord, ApiError> {
    let not_found = || ApiError::not_found("query not found");
    let id = uuid::Uuid::parse_str(query_id)
        .map_err(|_| ApiError::bad_request("queryId must be a UUID"))?
        .to_string();
    let text = blocking(&app.jobs.store, move |s| s.query(&id))
        .await
        .map_err(|e| store_error(&e))?
        .ok_or_else(not_found)?;
    let record: AsyncRecord = serde_json::from_str(&text).map_err(|e| ApiError::internal(&e))?;
    if record.integrator != who.integrator().as_str()
        || record.environment != who.environment().as_str()
        || record.site != site.to_string()
    {
        return Err(not_found());
    }
    Ok(record)
}

/// `GET /integrator/sites/{siteId}/queries/{queryId}`: an async query's status,
/// with its result pages once successful.
#[utoipa::path(get, path = "/integrator/sites/{siteId}/queries/{queryId}", tag = "integrator",
    operation_id = "getQuery",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site."), ("queryId" = uuid::Uuid, Path, description = "The query id.")),
    security(("subscriptionKey" = [])),
    responses((status = 200, description = "The query.", body = super::docs::AsyncQueryDto),
        crate::openapi::OwnedQueryErrors))]
pub async fn get_query(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    path: Result<ApiPath<(HaloGuid, String)>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let (who, (site, query_id)) = site_caller(&app, &headers, ip, path)?;
    let record = owned(&app, &who, site, &query_id).await?;
    Ok(Json(record.to_json()))
}

/// The most query ids one status batch may ask about.
pub const MAX_STATUS_BATCH: usize = 100;

/// `POST /integrator/sites/{siteId}/queries/status`: the status of several queries.
#[utoipa::path(post, path = "/integrator/sites/{siteId}/queries/status", tag = "integrator",
    operation_id = "getQueryStatusBatch",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site.")),
    security(("subscriptionKey" = [])),
    request_body = StatusBatchBody,
    responses((status = 200, description = "One answer per query id.",
        body = super::docs::StatusBatchDto),
        crate::openapi::StatusBatchErrors))]
pub async fn get_query_status_batch(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    site_id: Result<ApiPath<HaloGuid>, ApiError>,
    body: Result<ApiJson<StatusBatchBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let (who, site) = site_caller(&app, &headers, ip, site_id)?;
    let ApiJson(body) = body?;
    if body.query_ids.len() > MAX_STATUS_BATCH {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_STATUS_BATCH} queryIds per request"
        )));
    }
    let mut results = Vec::with_capacity(body.query_ids.len());
    for query_id in &body.query_ids {
        let canonical = uuid::Uuid::parse_str(query_id)
            .map_err(|_| ApiError::bad_request("every queryId must be a UUID"))?
            .to_string();
        match owned(&app, &who, site, &canonical).await {
            Ok(record) => results.push(json!({
                "queryId": canonical,
                "status": "found",
                "query": record.to_json(),
            })),
            Err(e) if e.status() == StatusCode::NOT_FOUND => results.push(json!({
                "queryId": canonical,
                "status": "notFound",
            })),
            Err(e) => return Err(e),
        }
    }
    Ok(Json(json!({ "results": results })))
}

// ---- the runner ----------------------------------------------------------------

/// How a run ended, short of success.
#[derive(Debug)]
struct Failure {
    status: AsyncStatus,
    error: Option<StoredError>,
}

impl Failure {
    fn new(status: AsyncStatus, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            error: Some(StoredError {
                code,
                message: message.into(),
            }),
        }
    }
}

/// Runs an accepted query in the background until it ends. `resumed`: a query a
/// previous process accepted ([`recover`]), or one accepted on a cluster node; its
/// Link may not have attached yet, so it waits for it (until its queue time is
/// over) instead of failing `initialisationFailedSiteOffline` at once.
pub(crate) fn spawn(app: AppState, record: AsyncRecord, resumed: bool) {
    let cancel = Arc::new(tokio::sync::Notify::new());
    app.jobs
        .running
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            record.id.clone(),
            super::Running {
                registered: record.registered_id.clone(),
                cancel: Arc::clone(&cancel),
            },
        );
    tokio::spawn(async move {
        let mut record = record;
        let outcome = drive(&app, &mut record, resumed, &cancel).await;
        app.jobs
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&record.id);
        let (status, error) = match outcome {
            Ok(Ran::Done) => (AsyncStatus::Successful, None),
            // Another node runs it now: this one writes nothing more.
            Ok(Ran::Elsewhere) => return,
            Err(f) => (f.status, f.error),
        };
        finish(&app, record, status, error).await;
    });
}

/// Persists a non-terminal record (best effort: the terminal write is what counts).
async fn persist(app: &AppState, record: &AsyncRecord) {
    let Ok(text) = serde_json::to_string(record) else {
        return;
    };
    let id = record.id.clone();
    if let Err(e) = blocking(&app.jobs.store, move |s| s.put_query(&id, true, &text)).await {
        tracing::error!(query = %record.id, error = %e, "storing an async query's status failed");
    }
}

/// Ends a query: terminal status, retention, webhooks, in one transaction.
pub(crate) async fn finish(
    app: &AppState,
    mut record: AsyncRecord,
    status: AsyncStatus,
    error: Option<StoredError>,
) {
    let at = now().as_millis();
    if status == AsyncStatus::UploadFailed && record.sql_execution_ms.is_none() {
        record.sql_execution_ms = Some(0);
    }
    record.enter(status, at);
    record.error = error;
    let retention = u64::try_from(app.jobs.config.retention.as_millis()).unwrap_or(u64::MAX);
    let expires_at = at.saturating_add(retention);
    record.expires_at = Some(expires_at);
    if let Err(e) = end(&app.jobs, &record, expires_at).await {
        tracing::error!(query = %record.id, error = %e, "storing an async query's end failed");
    }
    if let Some(registered) = record.registered_id.clone() {
        super::registered::occurrence_ended(app, &registered, &record).await;
    }
}

async fn end(jobs: &Jobs, record: &AsyncRecord, expires_at: u64) -> Result<(), JobStoreError> {
    let failed = record.status != AsyncStatus::Successful;
    let text = serde_json::to_string(record)?;
    let id = record.id.clone();
    let source = record.source.clone();
    let (integrator, site) = (record.integrator.clone(), record.site.clone());
    let notify_id = record
        .registered_id
        .clone()
        .unwrap_or_else(|| record.id.clone());
    let at = record.updated_at;
    blocking(&jobs.store, move |s| {
        if failed {
            s.delete_pages(&id)?;
        }
        let hooks = crate::webhooks::deliveries(s, &integrator, &source, &site, &notify_id, at)?;
        s.finish_query(&id, &text, expires_at, &hooks)
    })
    .await
}

/// How a run that did not fail ended.
#[derive(Debug, PartialEq, Eq)]
enum Ran {
    /// Its result is stored: it ends `successful`.
    Done,
    /// Another node runs it now (it was handed over to the node holding its Link,
    /// or adopted by another node): this node must not touch it again.
    Elsewhere,
}

/// What a queued query does when its Link is not attached to this node.
enum Waiting {
    /// Handed over, or no longer this node's.
    Elsewhere,
    /// Wait and route again.
    Retry,
}

/// On a cluster: hands a queued query whose Link holds a lease on another node
/// over to that node (a compare-and-set on its owner), since a node dispatches only
/// to the Links attached to it. Waits when no other node holds the Link, or when
/// the store cannot be reached (the hand-over is tried again).
async fn hand_over_if_elsewhere(app: &AppState, record: &AsyncRecord, site: HaloGuid) -> Waiting {
    let Some(holder) = crate::forward::holder_elsewhere(app, site) else {
        return Waiting::Retry;
    };
    let id = record.id.clone();
    let to = holder.clone();
    match blocking(&app.jobs.store, move |s| s.hand_over(&id, &to)).await {
        Ok(()) => {
            tracing::info!(query = %record.id, to = %holder, "async query handed over to the node holding its link");
            Waiting::Elsewhere
        }
        Err(JobStoreError::NotOwner(_)) => {
            tracing::warn!(query = %record.id, "async query taken over by another node; this node stops running it");
            Waiting::Elsewhere
        }
        Err(e) => {
            tracing::warn!(query = %record.id, error = %e, "handing an async query over failed; retrying");
            Waiting::Retry
        }
    }
}

/// Routes the query (retrying while the site is busy, until its queue time is
/// over; on a cluster, handing it over to the node holding its Link), then stores
/// its pages as they come.
async fn drive(
    app: &AppState,
    record: &mut AsyncRecord,
    resumed: bool,
    cancel: &tokio::sync::Notify,
) -> Result<Ran, Failure> {
    let site: HaloGuid = record
        .site
        .parse()
        .map_err(|_| Failure::new(AsyncStatus::ExecutionFailed, 400, "invalid site"))?;
    let caller = record.caller.clone();
    let (key_hash, ip) = caller
        .as_ref()
        .and_then(|c| Some((c.key_hash()?, c.caller_ip)))
        .ok_or_else(|| {
            Failure::new(
                AsyncStatus::ExecutionFailed,
                401,
                "the query's caller is not known; submit it again",
            )
        })?;
    // The stored key must still name the integrator that submitted the query.
    let who = halo_policy::authenticate_stored(&app.state.policy(), &key_hash, ip)
        .map_err(|deny| route_failure(&RouteError::Denied(deny), false))?;
    if who.integrator().as_str() != record.integrator
        || who.environment().as_str() != record.environment
    {
        return Err(Failure::new(
            AsyncStatus::ExecutionFailed,
            401,
            "the subscription key no longer belongs to the query's integrator",
        ));
    }
    let components = extract_components(&record.command.text)
        .map(Arc::new)
        .map_err(|e| Failure::new(AsyncStatus::ExecutionFailed, 403, e.to_string()))?;
    let config = &app.jobs.config;
    let limits = RouteLimits {
        max_time_in_queue: Duration::from_millis(MAX_TIME_IN_QUEUE_MS),
        execution_limit: config.execution_limit,
        paging: Some(Paging {
            page_bytes: config.page_bytes,
            window: config.window,
        }),
    };
    let queue_deadline = record.created_at.saturating_add(record.max_time_in_queue);
    let mut attempt = 0u32;
    let mut dispatch = loop {
        let at = now();
        // A query a previous process accepted whose queue time ran out meanwhile
        // does not start now.
        if resumed && at.as_millis() >= queue_deadline {
            return Err(Failure {
                status: AsyncStatus::ExpiredInQueue,
                error: None,
            });
        }
        let left = Duration::from_millis(queue_deadline.saturating_sub(at.as_millis()));
        let request = route_request(
            "",
            ip,
            site,
            at,
            Some(left),
            &record.command,
            Arc::clone(&components),
        );
        // A cluster node that could not renew its lease lately holds back: another
        // node may adopt this query (it then runs there, once).
        let routed = if app.jobs.store.may_dispatch() {
            app.state.router().route_stored(request, &key_hash, limits)
        } else {
            Err(RouteError::Busy)
        };
        if matches!(routed, Err(RouteError::Unreachable))
            && matches!(
                hand_over_if_elsewhere(app, record, site).await,
                Waiting::Elsewhere
            )
        {
            return Ok(Ran::Elsewhere);
        }
        match routed {
            Ok(dispatch) => break dispatch,
            Err(RouteError::Unreachable) if attempt == 0 && !resumed => {
                return Err(Failure {
                    status: AsyncStatus::InitialisationFailedSiteOffline,
                    error: None,
                });
            }
            Err(RouteError::Unreachable | RouteError::Busy) => {
                if now().as_millis() >= queue_deadline {
                    return Err(Failure {
                        status: AsyncStatus::ExpiredInQueue,
                        error: None,
                    });
                }
                let wait = Duration::from_millis(50u64 << (attempt + 1).min(5)).min(left);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancel.notified() => return Err(cancelled()),
                }
            }
            Err(e) => return Err(route_failure(&e, false)),
        }
        attempt += 1;
    };
    let query_id = dispatch.query_id().get();
    let Some(mut pages) = app.jobs.hub.take_receiver(query_id) else {
        return Err(Failure::new(
            AsyncStatus::ExecutionFailed,
            500,
            "duplicate query id",
        ));
    };
    let started = now().as_millis();
    record.enter(AsyncStatus::Executing, started);
    persist(app, record).await;
    let result = tokio::select! {
        result = receive(app, record, &mut dispatch, &mut pages, query_id, started) => result,
        () = cancel.notified() => Err(cancelled()),
    };
    if result.is_err() {
        // Stops it at the Link if it still runs there (SQLite is interrupted).
        app.jobs.hub.cancel(query_id);
    } else {
        app.jobs.hub.remove(query_id);
    }
    drop(dispatch);
    result.map(|()| Ran::Done)
}

async fn receive(
    app: &AppState,
    record: &mut AsyncRecord,
    dispatch: &mut halo_router::Dispatch,
    pages: &mut tokio::sync::mpsc::UnboundedReceiver<StreamEvent>,
    query_id: u64,
    started: u64,
) -> Result<(), Failure> {
    let mut answered: Option<QueryOutput> = None;
    loop {
        tokio::select! {
            biased;
            event = pages.recv() => match event {
                Some(StreamEvent::Page(page)) => {
                    let json = page.json().map_err(|e| {
                        Failure::new(AsyncStatus::UploadFailed, 502, format!("unreadable page: {e}"))
                    })?;
                    let meta = PageMeta {
                        page_number: page.page_number,
                        row_start: page.row_start,
                        rows: page.rows,
                        size: json.len() as u64,
                    };
                    drop(page);
                    let first = record.status != AsyncStatus::Uploading;
                    if first {
                        let at = now().as_millis();
                        record.sql_execution_ms = Some(at.saturating_sub(started));
                        record.enter(AsyncStatus::Uploading, at);
                    }
                    let id = record.id.clone();
                    let stored = meta.clone();
                    blocking(&app.jobs.store, move |s| s.put_page(&id, &stored, &json))
                        .await
                        .map_err(|e| Failure::new(AsyncStatus::UploadFailed, 500, format!("storing a page failed: {e}")))?;
                    app.jobs.hub.ack(query_id, 1);
                    record.size += meta.size;
                    record.pages.push(meta);
                    // The status change is stored; the page list is stored with the
                    // terminal status (an unfinished upload does not survive a restart).
                    if first {
                        persist(app, record).await;
                    }
                }
                Some(StreamEvent::End(end)) => {
                    let expected = u32::try_from(record.pages.len()).unwrap_or(u32::MAX);
                    if end.pages != expected {
                        return Err(Failure::new(
                            AsyncStatus::UploadFailed,
                            502,
                            format!("the link sent {expected} pages of {}", end.pages),
                        ));
                    }
                    record.rows = end.rows;
                    record.sql_execution_ms = Some(end.duration_ms);
                    return Ok(());
                }
                None => {
                    return Err(Failure::new(AsyncStatus::ExecutionFailed, 500, "the result stream closed"));
                }
            },
            outcome = &mut *dispatch, if answered.is_none() => match outcome {
                // The end is already in `pages` (the session delivers it first).
                Ok(output) => answered = Some(output),
                Err(e) => return Err(route_failure(&e, !record.pages.is_empty())),
            },
        }
    }
}

/// How a cancelled query ends.
fn cancelled() -> Failure {
    Failure::new(
        AsyncStatus::ExecutionFailed,
        409,
        "cancelled: its registered query was cancelled",
    )
}

/// The terminal status and error of a routing error.
fn route_failure(e: &RouteError, uploading: bool) -> Failure {
    use halo_router::QueryFailure;
    let code = i64::from(crate::status::route(e).as_u16());
    match e {
        // The Link did not start it within its queue budget.
        RouteError::Failed(QueryFailure::Busy) => Failure {
            status: AsyncStatus::ExpiredInQueue,
            error: None,
        },
        // The Link stopped it at its deadline.
        RouteError::Failed(QueryFailure::Expired) | RouteError::Timeout => Failure::new(
            AsyncStatus::ExecutionFailed,
            504,
            "the query ran past its deadline and was stopped",
        ),
        RouteError::Failed(QueryFailure::Database {
            error_code,
            message,
            ..
        }) => Failure::new(
            AsyncStatus::ExecutionFailed,
            error_code.parse::<i64>().unwrap_or(code),
            message.clone(),
        ),
        RouteError::Unreachable if uploading => Failure::new(
            AsyncStatus::UploadFailed,
            code,
            "the site went away while the result was uploading",
        ),
        other if uploading => Failure::new(AsyncStatus::UploadFailed, code, other.to_string()),
        other => Failure::new(AsyncStatus::ExecutionFailed, code, other.to_string()),
    }
}

/// Takes over the queries a previous process accepted and did not finish, and
/// returns those to run again (the caller spawns them once it can route:
/// [`super::spawn_background`]).
///
/// A query with a stored caller that had not reached its Link (`initialising`,
/// `queued`), or a read (`reader`, `scalar`) that had, goes back to `queued`, its
/// partial pages deleted: running a read again is safe. A `nonQuery` that may have
/// run ends `executionFailed` (its outcome is unknown; running it again could
/// write twice), and so does a query stored without its caller (by a version that
/// kept no key hashes). Each of those gets its terminal status and its webhook in
/// one transaction.
///
/// # Errors
/// [`JobStoreError`] when the store fails.
pub fn recover(jobs: &Jobs, at: Timestamp) -> Result<Vec<AsyncRecord>, JobStoreError> {
    let texts = jobs.store.unfinished_queries()?;
    recover_records(jobs, texts, at)
}

/// [`recover`] on records already taken over: at start, or adopted from a cluster
/// node whose lease lapsed ([`super::store::JobStore::adopt_lapsed`]).
///
/// # Errors
/// [`JobStoreError`] when the store fails.
pub fn recover_records(
    jobs: &Jobs,
    texts: Vec<String>,
    at: Timestamp,
) -> Result<Vec<AsyncRecord>, JobStoreError> {
    let retention = u64::try_from(jobs.config.retention.as_millis()).unwrap_or(u64::MAX);
    let at = at.as_millis();
    let mut resume = Vec::new();
    for text in texts {
        let mut record: AsyncRecord = serde_json::from_str(&text)?;
        let started = matches!(
            record.status,
            AsyncStatus::Executing | AsyncStatus::Uploading
        );
        let rerunnable = !started || record.command.mode != ExecutionMode::NonQuery;
        jobs.store.delete_pages(&record.id)?;
        record.pages.clear();
        record.size = 0;
        record.rows = 0;
        if record.caller.is_some() && rerunnable {
            record.sql_execution_ms = None;
            record.enter(AsyncStatus::Queued, at);
            jobs.store
                .put_query(&record.id, true, &serde_json::to_string(&record)?)?;
            tracing::info!(query = %record.id, "unfinished async query queued again at recovery");
            resume.push(record);
            continue;
        }
        let (status, message) = match record.status {
            _ if record.caller.is_none() => (
                AsyncStatus::ExecutionFailed,
                "the Cloud restarted and this query was stored without its caller; submit it again",
            ),
            AsyncStatus::Uploading => (
                AsyncStatus::UploadFailed,
                "the Cloud restarted while the result was uploading; the command writes, so it is not run twice; check its effect before submitting it again",
            ),
            _ => (
                AsyncStatus::ExecutionFailed,
                "the Cloud restarted while the command ran; its outcome is unknown and it writes, so it is not run twice; check its effect before submitting it again",
            ),
        };
        if status == AsyncStatus::UploadFailed && record.sql_execution_ms.is_none() {
            record.sql_execution_ms = Some(0);
        }
        record.enter(status, at);
        record.error = Some(StoredError {
            code: 503,
            message: message.to_owned(),
        });
        let expires_at = at.saturating_add(retention);
        record.expires_at = Some(expires_at);
        let notify_id = record
            .registered_id
            .clone()
            .unwrap_or_else(|| record.id.clone());
        let hooks = crate::webhooks::deliveries(
            &*jobs.store,
            &record.integrator,
            &record.source,
            &record.site,
            &notify_id,
            at,
        )?;
        jobs.store.finish_query(
            &record.id,
            &serde_json::to_string(&record)?,
            expires_at,
            &hooks,
        )?;
        tracing::warn!(query = %record.id, status = status.as_str(), "unfinished async query ended at recovery");
    }
    Ok(resume)
}
