//! Registered queries: created with a schedule (`frequency` seconds apart, for
//! `duration` seconds), listed, read, cancelled, and their last result.
//!
//! **Exactly once per occurrence.** The store keeps each registered query's next
//! occurrence (`next_at`). The scheduler reads the due ones and fires an occurrence
//! only after [`super::store::JobStore::claim_occurrence`] moved `next_at` from the
//! value it read to the following occurrence: a compare-and-set, so when several
//! Cloud nodes share one store (PostgreSQL, next) exactly one of them fires it. A
//! restart neither repeats an occurrence (its claim is durable) nor skips the ones
//! after it. An occurrence is an async query (source `registered`) and ends with a
//! webhook like one.
//!
//! Keys are never stored: a registered query keeps its caller as the SHA-256 of
//! the key it was registered with ([`StoredCaller`]), and each occurrence is
//! decided again by the policy of the moment, so it keeps firing after a restart
//! and stops being allowed when the key is revoked or the grant withdrawn. A
//! registered query stored without its caller (by an older version) is cancelled
//! at its next occurrence, with `lastErrorDetails` saying why.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use halo_ids::{HaloGuid, Timestamp};
use halo_policy::{Authenticated, Deny, DenyCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::async_query::{
    DEFAULT_TIME_IN_QUEUE_MS, accept_command, authenticate, new_record, site_caller, spawn,
};
use super::blocking;
use super::record::{AsyncRecord, AsyncStatus, StoredCaller, StoredCommand, StoredError};
use crate::app::AppState;
use crate::clock::now;
use crate::dto::CommandDto;
use crate::dto::rfc3339;
use crate::error::ApiError;
use crate::extract::{ApiPath, CallerIp, SizedJson, subscription_key};

/// The longest `duration`, in seconds (24 hours).
pub const MAX_DURATION_S: u64 = 86_400;
/// The largest last result `getRegisteredQueryResult` returns whole, in bytes of JSON.
pub const MAX_RESULT_BYTES: u64 = 8 * 1024 * 1024;

/// `registerCommand`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct RegisterCommand {
    /// The command (the immediate path's command shape).
    pub command: CommandDto,
}

/// The type of a registered query: always `query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum RegisteredQueryTypeDto {
    /// A query.
    Query,
}

/// `POST /integrator/sites/{siteId}/queries/registered` body (Halo's
/// `RegisteredQueryPostReq`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredBody {
    /// The integrator's name for it.
    pub name: String,
    /// Always `query`.
    pub registered_query_type: RegisteredQueryTypeDto,
    /// Seconds between occurrences (at least 1).
    #[schema(minimum = 1)]
    pub frequency: u64,
    /// Seconds it runs for (1 to 86 400).
    #[schema(minimum = 1, maximum = 86_400)]
    pub duration: u64,
    /// The command.
    pub register_command: RegisterCommand,
}

/// Counters of a registered query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// Last success (ms).
    pub last_succeeded_at: Option<u64>,
    /// Last failure (ms).
    pub last_failed_at: Option<u64>,
    /// Last run's database time (ms).
    pub last_execution_duration: Option<u64>,
    /// Successful runs.
    pub succeeded: u64,
    /// Failed runs.
    pub failed: u64,
    /// Bytes of JSON over all successful runs.
    pub result_size_sum: u64,
}

/// A registered query, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredRecord {
    /// Its id (a UUID).
    pub id: String,
    /// The integrator's name for it.
    pub name: String,
    /// Owner.
    pub integrator: String,
    /// The key's environment.
    pub environment: String,
    /// The site.
    pub site: String,
    /// `enabled`, `cancelled` or `completed`.
    pub status: String,
    /// Seconds between occurrences.
    pub frequency: u64,
    /// Seconds it runs for.
    pub duration: u64,
    /// Created (ms).
    pub created_at: u64,
    /// Completed or cancelled (ms).
    pub completed_at: Option<u64>,
    /// Bytes of the request body.
    pub request_size: u64,
    /// The command.
    pub command: StoredCommand,
    /// SHA-256 of the last successful result (hex).
    pub last_hash: Option<String>,
    /// The last error.
    pub last_error: Option<StoredError>,
    /// Counters.
    pub metrics: Metrics,
    /// The async query of the last successful occurrence.
    pub last_result: Option<String>,
    /// Who registered it, for routing its occurrences (`None` in records written
    /// before callers were stored).
    #[serde(default)]
    pub caller: Option<StoredCaller>,
    /// Its cancellation was asked for (`DELETE`, on any node): the node running an
    /// occurrence stops it (even one of a schedule already `completed`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
}

impl RegisteredRecord {
    /// The document's `RegisteredQuery`.
    pub fn to_json(&self) -> Value {
        let time = |ms: u64| rfc3339(Timestamp::from_millis(ms));
        let mut metrics = serde_json::Map::new();
        if let Some(t) = self.metrics.last_succeeded_at {
            metrics.insert("lastSucceededAt".into(), json!(time(t)));
        }
        if let Some(t) = self.metrics.last_failed_at {
            metrics.insert("lastFailedAt".into(), json!(time(t)));
        }
        if let Some(d) = self.metrics.last_execution_duration {
            metrics.insert("lastExecutionDuration".into(), json!(d));
        }
        metrics.insert(
            "executionSucceededCount".into(),
            json!(self.metrics.succeeded),
        );
        metrics.insert("executionFailedCount".into(), json!(self.metrics.failed));
        metrics.insert("resultSizeSum".into(), json!(self.metrics.result_size_sum));
        metrics.insert("requestSize".into(), json!(self.request_size));
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "registeredQueryType": "query",
            "status": self.status,
            "frequency": self.frequency,
            "duration": self.duration,
            "createdAt": time(self.created_at),
            "metrics": metrics,
        });
        if let Some(hash) = &self.last_hash {
            v["lastHash"] = json!(hash);
        }
        if let Some(e) = &self.last_error {
            v["lastErrorDetails"] =
                json!({"errorType": "haloLink", "errorCode": e.code, "errorMessage": e.message});
        }
        if let Some(t) = self.completed_at {
            v["completedAt"] = json!(time(t));
        }
        v
    }

    fn end_ms(&self) -> u64 {
        self.created_at
            .saturating_add(self.duration.saturating_mul(1000))
    }

    /// The occurrence after the one at `at`, if it falls within the duration.
    pub fn next_after(&self, at: u64) -> Option<u64> {
        let next = at.saturating_add(self.frequency.saturating_mul(1000));
        (next < self.end_ms()).then_some(next)
    }
}

fn internal(e: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "registered query store failed");
    ApiError::internal(&"the registered query store failed")
}

/// `POST /integrator/sites/{siteId}/queries/registered`: registers a query (202);
/// its first occurrence runs now.
#[utoipa::path(post, path = "/integrator/sites/{siteId}/queries/registered", tag = "integrator",
    operation_id = "createRegisteredQuery",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site.")),
    security(("subscriptionKey" = [])),
    request_body = RegisteredBody,
    responses((status = 202, description = "Registered; its first occurrence runs now.",
        body = super::docs::RegisteredQueryIdDto),
        crate::openapi::AsyncSubmitErrors))]
pub async fn create_registered_query(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    site_id: Result<ApiPath<HaloGuid>, ApiError>,
    body: Result<SizedJson<RegisteredBody>, ApiError>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = authenticate(&app, &headers, ip)?;
    let ApiPath(site) = site_id?;
    let SizedJson {
        value: body,
        size: request_size,
    } = body?;
    if body.frequency == 0 || body.duration == 0 || body.duration > MAX_DURATION_S {
        return Err(ApiError::bad_request(
            "frequency must be at least 1 s and duration between 1 and 86400 s",
        ));
    }
    let key = subscription_key(&headers).to_owned();
    let command = accept_command(&app, &key, ip.0, site, None, &body.register_command.command)?;
    let at = now().as_millis();
    let record = RegisteredRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: body.name.clone(),
        integrator: who.integrator().to_string(),
        environment: who.environment().as_str().to_owned(),
        site: site.to_string(),
        status: "enabled".to_owned(),
        frequency: body.frequency,
        duration: body.duration,
        created_at: at,
        completed_at: None,
        request_size: request_size as u64,
        command,
        last_hash: None,
        last_error: None,
        metrics: Metrics::default(),
        last_result: None,
        caller: Some(StoredCaller::of(&key, ip.0)),
        cancel_requested: false,
    };
    drop(key);
    let text = serde_json::to_string(&record).map_err(|e| internal(&e))?;
    let (id, site_s, integrator) = (
        record.id.clone(),
        record.site.clone(),
        record.integrator.clone(),
    );
    blocking(&app.jobs.store, move |s| {
        s.put_registered(&id, &site_s, &integrator, Some(at), &text)
    })
    .await
    .map_err(|e| internal(&e))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": record.id}))))
}

async fn load(
    app: &AppState,
    who: &Authenticated,
    site: HaloGuid,
    id: &str,
) -> Result<(RegisteredRecord, Option<u64>), ApiError> {
    let not_found = || ApiError::not_found("registered query not found");
    let id = uuid::Uuid::parse_str(id)
        .map_err(|_| ApiError::bad_request("queryId must be a UUID"))?
        .to_string();
    let (text, next) = blocking(&app.jobs.store, move |s| s.registered(&id))
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(not_found)?;
    let record: RegisteredRecord = serde_json::from_str(&text).map_err(|e| internal(&e))?;
    if record.integrator != who.integrator().as_str()
        || record.environment != who.environment().as_str()
        || record.site != site.to_string()
    {
        return Err(not_found());
    }
    Ok((record, next))
}

/// `GET /integrator/sites/{siteId}/queries/registered`.
#[utoipa::path(get, path = "/integrator/sites/{siteId}/queries/registered", tag = "integrator",
    operation_id = "getRegisteredQueries",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site.")),
    security(("subscriptionKey" = [])),
    responses((status = 200, description = "The caller's registered queries on the site.",
        body = super::docs::RegisteredQueriesDto),
        crate::openapi::OwnedQueryErrors))]
pub async fn get_registered_queries(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    site_id: Result<ApiPath<HaloGuid>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let (who, site) = site_caller(&app, &headers, ip, site_id)?;
    let (site_s, integrator) = (site.to_string(), who.integrator().to_string());
    let texts = blocking(&app.jobs.store, move |s| {
        s.registered_of(&site_s, &integrator)
    })
    .await
    .map_err(|e| internal(&e))?;
    let mut list = Vec::with_capacity(texts.len());
    for text in texts {
        let record: RegisteredRecord = serde_json::from_str(&text).map_err(|e| internal(&e))?;
        if record.environment == who.environment().as_str() {
            list.push(record.to_json());
        }
    }
    Ok(Json(json!({"registeredQueries": list})))
}

/// `GET /integrator/sites/{siteId}/queries/registered/{queryId}`.
#[utoipa::path(get, path = "/integrator/sites/{siteId}/queries/registered/{queryId}",
    tag = "integrator", operation_id = "getRegisteredQuery",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site."), ("queryId" = uuid::Uuid, Path, description = "The registered query id.")),
    security(("subscriptionKey" = [])),
    responses((status = 200, description = "The registered query.",
        body = super::docs::RegisteredQueryDto),
        crate::openapi::OwnedQueryErrors))]
pub async fn get_registered_query(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    path: Result<ApiPath<(HaloGuid, String)>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let (who, (site, id)) = site_caller(&app, &headers, ip, path)?;
    let (record, _) = load(&app, &who, site, &id).await?;
    Ok(Json(record.to_json()))
}

/// `DELETE /integrator/sites/{siteId}/queries/registered/{queryId}`: no more
/// occurrences (204), and an occurrence running now is stopped at its Link and
/// ends `executionFailed` (errorCode 409, "cancelled").
#[utoipa::path(delete, path = "/integrator/sites/{siteId}/queries/registered/{queryId}",
    tag = "integrator", operation_id = "cancelRegisteredQuery",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site."), ("queryId" = uuid::Uuid, Path, description = "The registered query id.")),
    security(("subscriptionKey" = [])),
    responses((status = 204, description = "Cancelled: no more occurrences; a running one is stopped."),
        crate::openapi::OwnedQueryErrors))]
pub async fn cancel_registered_query(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    path: Result<ApiPath<(HaloGuid, String)>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let (who, (site, id)) = site_caller(&app, &headers, ip, path)?;
    let (mut record, _) = load(&app, &who, site, &id).await?;
    if record.status == "enabled" {
        record.status = "cancelled".to_owned();
        record.completed_at = Some(now().as_millis());
    }
    record.cancel_requested = true;
    let text = serde_json::to_string(&record).map_err(|e| internal(&e))?;
    let (rid, site_s, integrator) = (
        record.id.clone(),
        record.site.clone(),
        record.integrator.clone(),
    );
    blocking(&app.jobs.store, move |s| {
        s.put_registered(&rid, &site_s, &integrator, None, &text)
    })
    .await
    .map_err(|e| internal(&e))?;
    // Here at once; on a cluster, the node running an occurrence stops it within a
    // lease round, when it reads the status stored above.
    app.jobs.cancel_occurrences(&record.id);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /integrator/sites/{siteId}/queries/registered/{queryId}/results`: the last
/// successful occurrence's result, whole (at most [`MAX_RESULT_BYTES`]).
#[utoipa::path(get, path = "/integrator/sites/{siteId}/queries/registered/{queryId}/results",
    tag = "integrator", operation_id = "getRegisteredQueryResult",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site."), ("queryId" = uuid::Uuid, Path, description = "The registered query id.")),
    security(("subscriptionKey" = [])),
    responses((status = 200, description = "The last successful occurrence's rows, whole.",
        body = super::docs::RegisteredQueryResultDto),
        crate::openapi::RegisteredResultErrors))]
pub async fn get_registered_query_result(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    path: Result<ApiPath<(HaloGuid, String)>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let (who, (site, id)) = site_caller(&app, &headers, ip, path)?;
    let (record, _) = load(&app, &who, site, &id).await?;
    let result_id = record
        .last_result
        .ok_or_else(|| ApiError::not_found("the registered query has no result yet"))?;
    let text = blocking(&app.jobs.store, {
        let result_id = result_id.clone();
        move |s| s.query(&result_id)
    })
    .await
    .map_err(|e| internal(&e))?
    .ok_or_else(|| ApiError::not_found("the registered query has no result yet"))?;
    let occurrence: AsyncRecord = serde_json::from_str(&text).map_err(|e| internal(&e))?;
    if occurrence
        .expires_at
        .is_some_and(|t| t <= now().as_millis())
    {
        return Err(ApiError::new(StatusCode::GONE, "the result has expired"));
    }
    if occurrence.size > MAX_RESULT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the result is larger than 8 MiB; use an async query to page it",
        ));
    }
    let json = joined(&app, &occurrence).await?;
    Ok(Json(json!({
        "data": base64::engine::general_purpose::STANDARD.encode(&json),
        "parameters": null,
        "rows": occurrence.rows,
        "size": json.len(),
    })))
}

/// The pages of a result joined into one JSON array.
async fn joined(app: &AppState, record: &AsyncRecord) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(usize::try_from(record.size).unwrap_or(0));
    out.push(b'[');
    let mut first = true;
    for page in &record.pages {
        let (id, n) = (record.id.clone(), page.page_number);
        let data = blocking(&app.jobs.store, move |s| s.page(&id, n))
            .await
            .map_err(|e| internal(&e))?
            .ok_or_else(|| ApiError::new(StatusCode::GONE, "the result has expired"))?;
        let inner = data
            .strip_prefix(b"[")
            .and_then(|d| d.strip_suffix(b"]"))
            .unwrap_or_default();
        if !inner.is_empty() {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(inner);
            first = false;
        }
    }
    out.push(b']');
    Ok(out)
}

/// Fires the registered queries that are due, each occurrence once.
pub async fn fire_due(app: &AppState) {
    let at = now().as_millis();
    let due = match blocking(&app.jobs.store, move |s| s.due_registered(at)).await {
        Ok(due) => due,
        Err(e) => {
            tracing::error!(error = %e, "reading due registered queries failed");
            return;
        }
    };
    for (id, seen) in due {
        if let Err(e) = fire(app, &id, seen).await {
            tracing::error!(registered = %id, error = %e, "firing a registered query failed");
        }
    }
}

async fn fire(app: &AppState, id: &str, seen: u64) -> Result<(), super::store::JobStoreError> {
    let rid = id.to_owned();
    let Some((text, _)) = blocking(&app.jobs.store, move |s| s.registered(&rid)).await? else {
        return Ok(());
    };
    let mut record: RegisteredRecord = serde_json::from_str(&text)?;
    // On a cluster, the node holding the site's Link fires it (its pages arrive
    // there); the others leave the occurrence to that node's claim.
    if record
        .site
        .parse::<halo_ids::HaloGuid>()
        .is_ok_and(|site| crate::forward::runs_elsewhere(app, site))
    {
        return Ok(());
    }
    let next = record.next_after(seen);
    let rid = id.to_owned();
    // The claim: only the caller that moves `next_at` from `seen` fires this one.
    if !blocking(&app.jobs.store, move |s| {
        s.claim_occurrence(&rid, seen, next)
    })
    .await?
    {
        return Ok(());
    }
    let Some(caller) = record.caller.clone() else {
        // Stored by a version that kept no caller: it cannot be routed.
        record.status = "cancelled".to_owned();
        record.completed_at = Some(now().as_millis());
        record.last_error = Some(StoredError {
            code: 503,
            message: "this registered query was stored without its caller; register it again"
                .to_owned(),
        });
        let text = serde_json::to_string(&record)?;
        let (rid, site, integrator) = (
            record.id.clone(),
            record.site.clone(),
            record.integrator.clone(),
        );
        blocking(&app.jobs.store, move |s| {
            s.put_registered(&rid, &site, &integrator, None, &text)
        })
        .await?;
        return Ok(());
    };
    run_occurrence(app, &record, caller).await
}

async fn run_occurrence(
    app: &AppState,
    record: &RegisteredRecord,
    caller: StoredCaller,
) -> Result<(), super::store::JobStoreError> {
    let policy = app.state.policy();
    let authenticated = caller
        .key_hash()
        .ok_or_else(|| Deny::new(DenyCode::UnknownKey, "invalid subscription key"))
        .and_then(|hash| halo_policy::authenticate_stored(&policy, &hash, caller.caller_ip))
        .and_then(|who| {
            if who.integrator().as_str() == record.integrator
                && who.environment().as_str() == record.environment
            {
                Ok(who)
            } else {
                Err(Deny::new(DenyCode::UnknownKey, "invalid subscription key"))
            }
        });
    let who = match authenticated {
        Ok(who) => who,
        Err(deny) => {
            let mut failed = record.clone();
            failed.metrics.failed += 1;
            failed.metrics.last_failed_at = Some(now().as_millis());
            failed.last_error = Some(StoredError {
                code: 401,
                message: deny.message().to_owned(),
            });
            let text = serde_json::to_string(&failed)?;
            let rid = failed.id.clone();
            return blocking(&app.jobs.store, move |s| s.update_registered(&rid, &text)).await;
        }
    };
    let site: HaloGuid = match record.site.parse() {
        Ok(site) => site,
        Err(_) => return Ok(()),
    };
    let mut occurrence = new_record(
        &who,
        site,
        "registered",
        Some(record.id.clone()),
        DEFAULT_TIME_IN_QUEUE_MS.min(record.frequency.saturating_mul(1000)),
        record.request_size,
        record.command.clone(),
        now().as_millis(),
    );
    occurrence.caller = Some(caller);
    let text = serde_json::to_string(&occurrence)?;
    let oid = occurrence.id.clone();
    blocking(&app.jobs.store, move |s| s.put_query(&oid, true, &text)).await?;
    spawn(Arc::clone(app), occurrence, false);
    Ok(())
}

/// Updates a registered query when one of its occurrences ends.
pub(crate) async fn occurrence_ended(app: &AppState, id: &str, occurrence: &AsyncRecord) {
    let rid = id.to_owned();
    let loaded = blocking(&app.jobs.store, move |s| s.registered(&rid)).await;
    let Ok(Some((text, next))) = loaded else {
        return;
    };
    let Ok(mut record) = serde_json::from_str::<RegisteredRecord>(&text) else {
        return;
    };
    let at = now().as_millis();
    if occurrence.status == AsyncStatus::Successful {
        record.metrics.succeeded += 1;
        record.metrics.last_succeeded_at = Some(at);
        record.metrics.last_execution_duration = occurrence.sql_execution_ms;
        record.metrics.result_size_sum += occurrence.size;
        record.last_result = Some(occurrence.id.clone());
        record.last_hash = hash(app, occurrence).await;
    } else {
        record.metrics.failed += 1;
        record.metrics.last_failed_at = Some(at);
        record.last_error = Some(occurrence.error.clone().unwrap_or(StoredError {
            code: 500,
            message: format!("the occurrence ended {}", occurrence.status.as_str()),
        }));
    }
    if next.is_none() && record.status == "enabled" {
        record.status = "completed".to_owned();
        record.completed_at = Some(at);
    }
    let Ok(text) = serde_json::to_string(&record) else {
        return;
    };
    let rid = id.to_owned();
    if let Err(e) = blocking(&app.jobs.store, move |s| s.update_registered(&rid, &text)).await {
        tracing::error!(registered = %id, error = %e, "updating a registered query failed");
    }
}

/// SHA-256 (hex) of a result's pages, read one at a time.
async fn hash(app: &AppState, record: &AsyncRecord) -> Option<String> {
    let mut hasher = Sha256::new();
    for page in &record.pages {
        let (id, n) = (record.id.clone(), page.page_number);
        let data = blocking(&app.jobs.store, move |s| s.page(&id, n))
            .await
            .ok()??;
        hasher.update(&data);
    }
    Some(hex::encode(hasher.finalize()))
}
