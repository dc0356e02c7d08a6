//! The one error-to-HTTP mapping of the Cloud: every handler returns [`ApiError`],
//! rendered as the integrator API's envelope
//! `{ "error": { "status", "statusText", "message" } }`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after_secs: Option<u64>,
    details: Option<ErrorDetails>,
}

/// What a query that failed inside the database reports (`errorDetails`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetails {
    /// The database's error class.
    pub error_type: String,
    /// The database's error code.
    pub error_code: String,
    /// The database's message.
    pub error_message: String,
}

/// The JSON envelope of an error.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
    /// Present when the query failed inside the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_details: Option<ErrorDetails>,
}

/// The body of [`ErrorEnvelope`].
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The HTTP status code.
    pub status: u16,
    /// The HTTP reason phrase.
    pub status_text: String,
    /// What went wrong, never naming another tenant's data.
    pub message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after_secs: None,
            details: None,
        }
    }

    /// An error from a numeric status (falls back to 500 for an invalid one).
    pub fn from_code(status: u16, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message,
        )
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500, with a message that reveals nothing internal (the cause is logged).
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    /// Adds a `Retry-After` header (seconds, rounded up to at least 1).
    pub fn with_retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_secs = Some(ms.div_ceil(1000).max(1));
        self
    }

    /// Adds `errorDetails`.
    pub fn with_details(mut self, details: ErrorDetails) -> Self {
        self.details = Some(details);
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope = ErrorEnvelope {
            error: ErrorBody {
                status: self.status.as_u16(),
                status_text: self.status.canonical_reason().unwrap_or("Error").to_owned(),
                message: self.message,
            },
            error_details: self.details,
        };
        let mut response = (self.status, axum::Json(envelope)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<halo_ids::IdError> for ApiError {
    fn from(e: halo_ids::IdError) -> Self {
        Self::bad_request(e.to_string())
    }
}

/// Maps a refused tenancy event by its class.
pub fn tenancy_error(e: halo_tenancy::TenancyError) -> ApiError {
    let status = match e.class() {
        halo_tenancy::TenancyErrorClass::NotFound => StatusCode::NOT_FOUND,
        halo_tenancy::TenancyErrorClass::Invalid => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    };
    ApiError::new(status, e.to_string())
}

/// The longest message made from a client's input or a library's text; longer ones
/// (serde errors quote the input) are cut at a character boundary.
const MAX_MESSAGE_CHARS: usize = 200;

/// `text`, cut to at most [`MAX_MESSAGE_CHARS`] characters (and an ellipsis).
pub(crate) fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The most bytes of a plain error body kept as the envelope's message.
const MAX_PLAIN_ERROR_BYTES: usize = 4096;

/// Middleware (`axum::middleware::map_response`): an error response (4xx or 5xx)
/// that is not JSON, such as the plain-text rejection of an extractor from outside
/// this crate, is rewritten into the envelope with the same status and headers; its
/// text becomes the message (the reason phrase when empty or too long).
pub async fn envelope_plain_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR_BYTES)
        .await
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .filter(|text| !text.is_empty());
    let message = text.map_or_else(
        || {
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
        },
        |text| clip(&text),
    );
    let (envelope, body) = ApiError::new(status, message).into_response().into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(envelope.headers);
    Response::from_parts(parts, body)
}
