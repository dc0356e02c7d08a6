//! The OpenAPI shapes of the async path's answers, field for field Halo's document
//! (`AsyncQuery*`, `RegisteredQuery*`, `QueryStatusBatchResult`, result pages). The
//! handlers build these answers from the stored records
//! ([`super::record::AsyncRecord::to_json`], [`super::registered::RegisteredRecord::to_json`]);
//! these types only describe them in `/openapi.json`, and the tests below check
//! that every answer's fields are the ones described (the e2e contract tests check
//! them against Halo's document).

use serde::Serialize;
use utoipa::ToSchema;

use crate::dto::MetricsDto;

/// An async query's status (Halo's `AsyncQueryStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum AsyncQueryStatusDto {
    /// Accepted, being set up.
    Initialising,
    /// Could not be stored.
    InitialisationFailedCacheError,
    /// The site's Link was not connected when the query was submitted.
    InitialisationFailedSiteOffline,
    /// The site's Link has not been heard from recently.
    InitialisationFailedSiteUnreachable,
    /// Waiting for the site.
    Queued,
    /// Did not start within `maxTimeInQueue`.
    ExpiredInQueue,
    /// Running at the site.
    Executing,
    /// Failed at the site, past its deadline, cancelled, or denied when dispatched
    /// again after a restart (`errorCode`, `errorMessage`).
    ExecutionFailed,
    /// Results are arriving page by page.
    Uploading,
    /// Results could not be stored, or the site went away mid-upload.
    UploadFailed,
    /// Every page is stored (`result`).
    Successful,
}

/// The query mode of an async query: always `async`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum AsyncModeDto {
    /// An async query.
    Async,
}

/// When an async query entered and left each status it went through.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AsyncStatusTimingDto {
    /// Initialising (always present).
    pub initialising: StateSpanDto,
    /// Queued.
    pub queued: Option<StateSpanDto>,
    /// Executing.
    pub executing: Option<StateSpanDto>,
    /// Uploading.
    pub uploading: Option<StateSpanDto>,
}

/// One status's span: entered, and left once it has.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateSpanDto {
    /// When it was entered, UTC.
    #[schema(format = DateTime)]
    pub start_time: Option<String>,
    /// When it was left, UTC.
    #[schema(format = DateTime)]
    pub end_time: Option<String>,
}

/// A result page's status: always `cached` (stored in the Cloud).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum PageStatusDto {
    /// Stored and readable until the retention ends.
    Cached,
}

/// The rows of one page.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PageRowsDto {
    /// Rows in the page.
    #[schema(minimum = 0)]
    pub count: u64,
    /// Index of its first row in the whole result (from 0).
    #[schema(minimum = 0)]
    pub range_start: u64,
    /// Index of its last row (its first for an empty page).
    #[schema(minimum = 0)]
    pub range_end: u64,
}

/// One result page (Halo's `Page`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PageDto {
    /// Its number, from 1.
    #[schema(minimum = 1)]
    pub page_number: u32,
    /// Always `cached`.
    pub status: PageStatusDto,
    /// Bytes of its JSON rows.
    #[schema(minimum = 0)]
    pub size: u64,
    /// Its rows.
    pub rows: PageRowsDto,
}

/// The result of a successful async query (`AsyncQueryResult`, or
/// `AsyncNonQueryResult` with `rowsAffected` for a `nonQuery`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AsyncResultDto {
    /// Rows of a `reader` or `scalar` result.
    #[schema(minimum = 0)]
    pub rows: Option<u64>,
    /// Rows a `nonQuery` changed.
    #[schema(minimum = 0)]
    pub rows_affected: Option<u64>,
    /// Bytes of JSON over all pages.
    #[schema(minimum = 0)]
    pub size: u64,
    /// The pages, in order.
    pub pages: Vec<PageDto>,
}

/// An async query (Halo's `AsyncQuery`: which fields are present depends on its
/// status, as each `AsyncQuery<Status>` schema of the document says).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AsyncQueryDto {
    /// The query id.
    #[schema(format = Uuid)]
    pub id: String,
    /// The integrator that submitted it (its stable UUID).
    #[schema(format = Uuid)]
    pub integrator_id: String,
    /// The Halo GUID of the site.
    #[schema(format = Uuid)]
    pub site_id: String,
    /// Always `async`.
    pub mode: AsyncModeDto,
    /// Where it is.
    pub status: AsyncQueryStatusDto,
    /// How long it may wait for the site, in ms.
    #[schema(minimum = 0, maximum = 7_200_000)]
    pub max_time_in_queue: u64,
    /// Bytes of `command.text`.
    #[schema(minimum = 0)]
    pub command_size: u64,
    /// Bytes of the request body.
    #[schema(minimum = 0)]
    pub request_size: u64,
    /// When it was accepted, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When it last changed, UTC.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Status timings.
    pub status_timing: AsyncStatusTimingDto,
    /// Database time (once uploading).
    pub metrics: Option<MetricsDto>,
    /// The result (successful only).
    pub result: Option<AsyncResultDto>,
    /// Bytes of the result (successful only).
    #[schema(minimum = 0)]
    pub result_size: Option<u64>,
    /// When it ended, UTC (terminal statuses).
    #[schema(format = DateTime)]
    pub completed_at: Option<String>,
    /// The database's error code, or the HTTP status the immediate path would
    /// answer (`executionFailed`, `uploadFailed`).
    pub error_code: Option<i64>,
    /// Why it failed (`executionFailed`, `uploadFailed`).
    pub error_message: Option<String>,
}

/// Whether a query of a status batch was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum BatchStatusDto {
    /// The caller's query: `query` holds it.
    Found,
    /// No query of the caller's on this site has this id.
    NotFound,
}

/// One answer of a status batch (Halo's `QueryStatusBatchResult`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchResultDto {
    /// The id asked about.
    #[schema(format = Uuid)]
    pub query_id: String,
    /// Found or not.
    pub status: BatchStatusDto,
    /// The query, when found.
    pub query: Option<AsyncQueryDto>,
}

/// `getQueryStatusBatch`'s answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusBatchDto {
    /// One per id asked about, in order.
    pub results: Vec<BatchResultDto>,
}

/// `getResultPage`'s answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultPageDto {
    /// Base64 of the page's JSON array of rows.
    #[schema(format = Byte)]
    pub data: String,
}

/// `createRegisteredQuery`'s answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredQueryIdDto {
    /// The registered query's id.
    #[schema(format = Uuid)]
    pub id: String,
}

/// A registered query's status (Halo's `RegisteredQueryStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum RegisteredQueryStatusDto {
    /// Occurrences still fire.
    Enabled,
    /// Cancelled by the integrator (or stored without its caller by an older version).
    Cancelled,
    /// Its duration is over.
    Completed,
}

/// A registered query's counters (Halo's `RegisteredQueryMetrics`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredQueryMetricsDto {
    /// Last success, UTC.
    #[schema(format = DateTime)]
    pub last_succeeded_at: Option<String>,
    /// Last failure, UTC.
    #[schema(format = DateTime)]
    pub last_failed_at: Option<String>,
    /// The last occurrence's database time, in ms.
    #[schema(minimum = 0)]
    pub last_execution_duration: Option<u64>,
    /// Successful occurrences.
    #[schema(minimum = 0)]
    pub execution_succeeded_count: u64,
    /// Failed occurrences.
    #[schema(minimum = 0)]
    pub execution_failed_count: u64,
    /// Bytes of JSON over all successful occurrences.
    #[schema(minimum = 0)]
    pub result_size_sum: u64,
    /// Bytes of the request that registered it.
    #[schema(minimum = 0)]
    pub request_size: u64,
}

/// The error type of a registered query's last failure: always `haloLink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum RegisteredErrorTypeDto {
    /// Reported by the Cloud or the Link.
    HaloLink,
}

/// A registered query's last failure.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredErrorDto {
    /// Always `haloLink`.
    pub error_type: RegisteredErrorTypeDto,
    /// The database's code, or an HTTP status (409: cancelled).
    pub error_code: i64,
    /// Why.
    pub error_message: String,
}

/// A registered query (Halo's `RegisteredQuery`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredQueryDto {
    /// Its id.
    #[schema(format = Uuid)]
    pub id: String,
    /// The integrator's name for it.
    pub name: String,
    /// Always `query`.
    pub registered_query_type: super::registered::RegisteredQueryTypeDto,
    /// Enabled, cancelled or completed.
    pub status: RegisteredQueryStatusDto,
    /// Seconds between occurrences.
    #[schema(minimum = 1)]
    pub frequency: u64,
    /// Seconds it runs for.
    #[schema(minimum = 1, maximum = 86_400)]
    pub duration: u64,
    /// When it was registered, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Counters.
    pub metrics: RegisteredQueryMetricsDto,
    /// SHA-256 (hex) of the last successful result.
    pub last_hash: Option<String>,
    /// The last failure.
    pub last_error_details: Option<RegisteredErrorDto>,
    /// When it was completed or cancelled, UTC.
    #[schema(format = DateTime)]
    pub completed_at: Option<String>,
}

/// `getRegisteredQueries`' answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredQueriesDto {
    /// The caller's registered queries on the site.
    pub registered_queries: Vec<RegisteredQueryDto>,
}

/// `getRegisteredQueryResult`'s answer: the last successful occurrence's rows,
/// whole (Halo's `RegisteredQueryResult`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredQueryResultDto {
    /// Base64 of the JSON array of rows.
    #[schema(format = Byte)]
    pub data: String,
    /// Always null (SQLite commands have no output parameters).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// Rows.
    #[schema(minimum = 0)]
    pub rows: u64,
    /// Bytes of the JSON rows.
    #[schema(minimum = 0)]
    pub size: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use serde_json::Value;
    use utoipa::OpenApi as _;

    use super::super::record::{AsyncRecord, AsyncStatus, StoredCommand, Timing};
    use super::super::store::PageMeta;

    fn schema(name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        let doc = serde_json::to_value(crate::openapi::ApiDoc::openapi()).unwrap();
        let s = &doc["components"]["schemas"][name];
        let props = s["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} is not documented"))
            .keys()
            .cloned()
            .collect();
        let required = s["required"]
            .as_array()
            .map(|r| r.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        (props, required)
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    fn record(status: AsyncStatus) -> AsyncRecord {
        let mut r = AsyncRecord {
            id: "6f9619ff-8b86-d011-b42d-00cf4fc964ff".into(),
            integrator: "acme-dental".into(),
            environment: "stage".into(),
            site: "1288d325-b30a-45d3-9874-f23d433fe2d7".into(),
            source: "async".into(),
            registered_id: None,
            status: AsyncStatus::Initialising,
            max_time_in_queue: 1000,
            command_size: 8,
            request_size: 40,
            created_at: 1,
            updated_at: 1,
            timing: Timing::default(),
            command: StoredCommand {
                text: "SELECT 1".into(),
                mode: halo_ids::ExecutionMode::Reader,
                parameters: Vec::new(),
                catalogue: None,
            },
            sql_execution_ms: None,
            rows: 1,
            size: 7,
            pages: vec![PageMeta {
                page_number: 1,
                row_start: 0,
                rows: 1,
                size: 7,
            }],
            error: None,
            completed_at: None,
            expires_at: None,
            caller: None,
        };
        r.enter(AsyncStatus::Queued, 2);
        r.enter(status, 3);
        r
    }

    #[test]
    fn every_async_query_answer_has_the_documented_fields() {
        let (props, required) = schema("AsyncQueryDto");
        for status in [
            AsyncStatus::Queued,
            AsyncStatus::Executing,
            AsyncStatus::Uploading,
            AsyncStatus::Successful,
            AsyncStatus::ExecutionFailed,
            AsyncStatus::UploadFailed,
            AsyncStatus::ExpiredInQueue,
            AsyncStatus::InitialisationFailedSiteOffline,
        ] {
            let json = record(status).to_json();
            let got = keys(&json);
            assert!(
                got.is_subset(&props),
                "{status:?}: {got:?} not in {props:?}"
            );
            assert!(
                required.is_subset(&got),
                "{status:?}: {required:?} not all in {got:?}"
            );
            let timing = keys(&json["statusTiming"]);
            let (timing_props, _) = schema("AsyncStatusTimingDto");
            assert!(timing.is_subset(&timing_props), "{timing:?}");
            if status == AsyncStatus::Successful {
                let (result_props, _) = schema("AsyncResultDto");
                assert!(keys(&json["result"]).is_subset(&result_props));
                let (page_props, page_required) = schema("PageDto");
                let page = keys(&json["result"]["pages"][0]);
                assert!(page.is_subset(&page_props) && page_required.is_subset(&page));
            }
        }
    }

    #[test]
    fn every_registered_query_answer_has_the_documented_fields() {
        let (props, required) = schema("RegisteredQueryDto");
        let mut r = super::super::registered::RegisteredRecord {
            id: "6f9619ff-8b86-d011-b42d-00cf4fc964ff".into(),
            name: "n".into(),
            integrator: "acme-dental".into(),
            environment: "stage".into(),
            site: "1288d325-b30a-45d3-9874-f23d433fe2d7".into(),
            status: "enabled".into(),
            frequency: 1,
            duration: 2,
            created_at: 1,
            completed_at: Some(3),
            request_size: 4,
            command: StoredCommand {
                text: "SELECT 1".into(),
                mode: halo_ids::ExecutionMode::Reader,
                parameters: Vec::new(),
                catalogue: None,
            },
            last_hash: Some("00".repeat(32)),
            last_error: Some(super::super::record::StoredError {
                code: 409,
                message: "cancelled".into(),
            }),
            metrics: super::super::registered::Metrics {
                last_succeeded_at: Some(1),
                last_failed_at: Some(2),
                last_execution_duration: Some(3),
                ..Default::default()
            },
            last_result: None,
            caller: None,
            cancel_requested: false,
        };
        for status in ["enabled", "cancelled", "completed"] {
            r.status = status.into();
            let json = r.to_json();
            let got = keys(&json);
            assert!(got.is_subset(&props), "{got:?} not in {props:?}");
            assert!(required.is_subset(&got), "{required:?} not all in {got:?}");
            let (metric_props, metric_required) = schema("RegisteredQueryMetricsDto");
            let metrics = keys(&json["metrics"]);
            assert!(metrics.is_subset(&metric_props) && metric_required.is_subset(&metrics));
            let (error_props, _) = schema("RegisteredErrorDto");
            assert!(keys(&json["lastErrorDetails"]).is_subset(&error_props));
        }
    }
}
