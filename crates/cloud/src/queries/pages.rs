//! Result pages: `getResultPage` (the page's rows as base64 `data`, with `Size`,
//! `Rows-Count`, `Rows-Range-Start` and `Rows-Range-End` headers) and
//! `streamResultPage` (the page's JSON rows streamed as they are, not base64). A page
//! of a query whose retention ended answers 410. A page is at most
//! `JobsConfig::page_bytes` of JSON, so serving one holds at most that much.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use halo_ids::HaloGuid;
use serde_json::json;

use super::async_query::{owned, site_caller};
use super::blocking;
use super::record::{AsyncStatus, range_end};
use super::store::PageMeta;
use crate::app::AppState;
use crate::clock::now;
use crate::error::ApiError;
use crate::extract::{ApiPath, CallerIp};

/// Bytes per chunk of a streamed page.
const STREAM_CHUNK: usize = 64 * 1024;

/// The path of a page: site, query, page number (from 1).
type PagePath = (HaloGuid, String, String);

async fn load(
    app: &AppState,
    headers: &HeaderMap,
    ip: CallerIp,
    path: Result<ApiPath<PagePath>, ApiError>,
) -> Result<(PageMeta, Vec<u8>), ApiError> {
    let (who, (site, query_id, page)) = site_caller(app, headers, ip, path)?;
    let page_number: u32 = page
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::bad_request("pageNumber must be an integer from 1"))?;
    let record = owned(app, &who, site, &query_id).await?;
    if record.status != AsyncStatus::Successful {
        return Err(ApiError::not_found(format!(
            "the query has no results (status {})",
            record.status.as_str()
        )));
    }
    let meta = record
        .pages
        .iter()
        .find(|p| p.page_number == page_number)
        .cloned()
        .ok_or_else(|| ApiError::not_found("no such result page"))?;
    let gone = || {
        ApiError::new(
            StatusCode::GONE,
            "the query's results have expired (their retention time is over)",
        )
    };
    if record.expires_at.is_some_and(|t| t <= now().as_millis()) {
        return Err(gone());
    }
    let id = record.id.clone();
    let data = blocking(&app.jobs.store, move |s| s.page(&id, page_number))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(gone)?;
    Ok((meta, data))
}

fn page_headers(meta: &PageMeta, headers: &mut HeaderMap) {
    let mut set = |name: &'static str, value: u64| {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            headers.insert(name, v);
        }
    };
    set("size", meta.size);
    set("rows-count", meta.rows);
    set("rows-range-start", meta.row_start);
    set("rows-range-end", range_end(meta));
}

/// `GET /integrator/sites/{siteId}/queries/{queryId}/results/{pageNumber}`.
#[utoipa::path(get, path = "/integrator/sites/{siteId}/queries/{queryId}/results/{pageNumber}",
    tag = "integrator", operation_id = "getResultPage",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site."), ("queryId" = uuid::Uuid, Path, description = "The query id."), ("pageNumber" = u32, Path, minimum = 1, description = "The page, from 1.")),
    security(("subscriptionKey" = [])),
    responses((status = 200, description = "The page's rows, base64 of a JSON array.",
        body = super::docs::ResultPageDto,
        headers(("Size" = u64, description = "Bytes of the page's JSON rows"),
            ("Rows-Count" = u64, description = "Rows in the page"),
            ("Rows-Range-Start" = u64, description = "Index of the page's first row"),
            ("Rows-Range-End" = u64, description = "Index of the page's last row"))),
        crate::openapi::ResultPageErrors))]
pub async fn get_result_page(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    path: Result<ApiPath<PagePath>, ApiError>,
) -> Result<Response, ApiError> {
    let (meta, data) = load(&app, &headers, ip, path).await?;
    let body = json!({"data": base64::engine::general_purpose::STANDARD.encode(&data)});
    drop(data);
    let mut response = Json(body).into_response();
    page_headers(&meta, response.headers_mut());
    Ok(response)
}

/// `GET /integrator/sites/{siteId}/queries/{queryId}/results/{pageNumber}/stream`:
/// the page's JSON array of rows, streamed.
#[utoipa::path(get, path = "/integrator/sites/{siteId}/queries/{queryId}/results/{pageNumber}/stream",
    tag = "integrator", operation_id = "streamResultPage",
    params(("siteId" = uuid::Uuid, Path, description = "Halo GUID of the site."), ("queryId" = uuid::Uuid, Path, description = "The query id."), ("pageNumber" = u32, Path, minimum = 1, description = "The page, from 1.")),
    security(("subscriptionKey" = [])),
    responses((status = 200, description = "The page's JSON array of rows, streamed.",
        body = Vec<Object>, content_type = "application/json",
        headers(("Size" = u64, description = "Bytes of the page's JSON rows"),
            ("Rows-Count" = u64, description = "Rows in the page"),
            ("Rows-Range-Start" = u64, description = "Index of the page's first row"),
            ("Rows-Range-End" = u64, description = "Index of the page's last row"))),
        crate::openapi::ResultPageErrors))]
pub async fn stream_result_page(
    State(app): State<AppState>,
    headers: HeaderMap,
    ip: CallerIp,
    path: Result<ApiPath<PagePath>, ApiError>,
) -> Result<Response, ApiError> {
    let (meta, data) = load(&app, &headers, ip, path).await?;
    let bytes = axum::body::Bytes::from(data);
    let chunks: Vec<Result<axum::body::Bytes, std::convert::Infallible>> = (0..bytes.len())
        .step_by(STREAM_CHUNK)
        .map(|start| Ok(bytes.slice(start..(start + STREAM_CHUNK).min(bytes.len()))))
        .collect();
    let body = Body::from_stream(futures_util::stream::iter(chunks));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    page_headers(&meta, response.headers_mut());
    Ok(response)
}
