//! The one error-to-HTTP mapping of the Cloud: every handler returns [`ApiError`],
//! rendered as the integrator API's envelope
//! `{ "error": { "status", "statusText", "message" } }`. The core's domain errors
//! become `ApiError`s here (`From` impls and the functions below), with the status
//! of the one table in [`crate::status`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use halo_credentials::CredentialError;
use halo_policy::{Deny, DenyCode, PolicyError};
use halo_router::{CrnRefusal, QueryFailure, RouteError};
use halo_tenancy::TenancyError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::status;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for `Retry-After` (a `u32` keeps `ApiError` small).
    retry_after_secs: Option<std::num::NonZeroU32>,
    denial: Option<DenyCode>,
    /// For metrics: the routing outcome this error reports, if it reports one
    /// (boxed: it is rare, and keeps `ApiError` small).
    outcome: Option<Box<RouteOutcome>>,
}

/// How a query was refused or failed, carried in the response's extensions for
/// the metrics middleware (`crate::metrics`); never sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Refused by policy or routing, with its code (the policy's `DenyCode`
    /// name, `notActive`, `notAuthoritative`, `unknownSite`, `crnRefused`).
    Denied(&'static str),
    /// Allowed but failed (`busy`, `unreachable`, `timeout`, ...).
    Failed(&'static str),
}

impl RouteOutcome {
    /// The outcome a routing error reports.
    pub fn of(e: &RouteError) -> Self {
        match e {
            RouteError::Denied(deny) => Self::Denied(deny.code().as_str()),
            RouteError::UnknownSite => Self::Denied("unknownSite"),
            RouteError::NotActive => Self::Denied("notActive"),
            RouteError::NotAuthoritative => Self::Denied("notAuthoritative"),
            RouteError::InvalidRequest(_) => Self::Failed("invalidRequest"),
            RouteError::Busy => Self::Failed("busy"),
            RouteError::Unreachable => Self::Failed("unreachable"),
            RouteError::Timeout => Self::Failed("timeout"),
            RouteError::TooLarge { .. } => Self::Failed("tooLarge"),
            RouteError::Cancelled => Self::Failed("cancelled"),
            RouteError::Failed(_) => Self::Failed("failed"),
        }
    }
}

/// A response extension on every answer that is a policy denial, naming its code,
/// for the middleware that counts and samples denials (`crate::activity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied(pub DenyCode);

/// The JSON envelope of an error (Halo's `Error`). A query the database failed is
/// answered instead with the query itself and its `errorDetails`
/// ([`crate::dto::FailedQueryDto`]), as Halo does.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
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
            denial: None,
            outcome: None,
        }
    }

    /// This error, reporting `outcome` to the metrics.
    #[must_use]
    pub fn with_outcome(mut self, outcome: RouteOutcome) -> Self {
        self.outcome = Some(Box::new(outcome));
        self
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
        let secs = u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX);
        self.retry_after_secs = std::num::NonZeroU32::new(secs.max(1));
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
        };
        let mut response = (self.status, axum::Json(envelope)).into_response();
        if let Some(code) = self.denial {
            response.extensions_mut().insert(Denied(code));
        }
        if let Some(outcome) = self.outcome {
            response.extensions_mut().insert(*outcome);
        }
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.get()));
        }
        response
    }
}

impl From<halo_ids::IdError> for ApiError {
    fn from(e: halo_ids::IdError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<&Deny> for ApiError {
    /// A policy denial: its message, and `Retry-After` when rate limited.
    fn from(deny: &Deny) -> Self {
        let mut e = Self::new(status::deny(deny.code()), deny.message())
            .with_outcome(RouteOutcome::Denied(deny.code().as_str()));
        e.denial = Some(deny.code());
        match deny.code() {
            DenyCode::RateLimited { retry_after_ms } => e.with_retry_after_ms(retry_after_ms),
            DenyCode::MissingKey
            | DenyCode::UnknownKey
            | DenyCode::WrongEnvironment
            | DenyCode::IntegratorNotEnabled
            | DenyCode::PracticeNotEnabled
            | DenyCode::NotPaired
            | DenyCode::ComponentNotAuthorised
            | DenyCode::WriteNotAuthorised
            | DenyCode::SiteNotAuthoritative
            | DenyCode::CallerIpNotAllowed
            | DenyCode::QuotaExhausted
            | DenyCode::UnknownSite => e,
        }
    }
}

impl From<Deny> for ApiError {
    fn from(deny: Deny) -> Self {
        Self::from(&deny)
    }
}

/// The `Retry-After` of a 503 for a site whose Link is away or busy.
const SITE_AWAY_RETRY_AFTER_MS: u64 = 1_000;

impl From<RouteError> for ApiError {
    /// A routing error: a denial as above; anything else with its own words. (A
    /// query the database failed is answered by the handler as the failed query
    /// with `errorDetails`; here it is only the envelope.)
    fn from(e: RouteError) -> Self {
        let status = status::route(&e);
        let outcome = RouteOutcome::of(&e);
        // The site's Link is away (reconnecting, or moving to another node of a
        // cluster) or its queue is full: worth retrying shortly.
        let retry = matches!(
            e,
            RouteError::Unreachable | RouteError::Busy | RouteError::Failed(QueryFailure::Busy)
        );
        let error = match e {
            RouteError::Denied(deny) => Self::from(&deny),
            RouteError::Failed(QueryFailure::Database { .. }) => {
                Self::new(status, "the query failed in the database")
            }
            RouteError::Failed(QueryFailure::Busy) => Self::new(
                status,
                "site is busy: the query could not start on the site within its \
                 maxTimeInQueue, or the site's queue is full; retry later",
            ),
            other => Self::new(status, other.to_string()),
        };
        let error = error.with_outcome(outcome);
        if retry {
            error.with_retry_after_ms(SITE_AWAY_RETRY_AFTER_MS)
        } else {
            error
        }
    }
}

impl From<CrnRefusal> for ApiError {
    /// A CRN refused with guidance (its message never names another tenant).
    fn from(refusal: CrnRefusal) -> Self {
        Self::new(status::crn_refusal(refusal), refusal.to_string())
            .with_outcome(RouteOutcome::Denied("crnRefused"))
    }
}

impl From<TenancyError> for ApiError {
    /// A refused tenancy event, by its class.
    fn from(e: TenancyError) -> Self {
        Self::new(status::tenancy(e.class()), e.to_string())
    }
}

impl From<PolicyError> for ApiError {
    /// A refused policy event of the admin API.
    fn from(e: PolicyError) -> Self {
        Self::new(status::policy_action(&e), e.to_string())
    }
}

/// A refused credential action of the admin API. (A Link token refused at the
/// WebSocket upgrade is [`link_authentication_error`] instead.)
pub fn credential_error(e: &CredentialError) -> ApiError {
    ApiError::new(status::credential_action(e), e.to_string())
}

/// A Link token refused at the WebSocket upgrade: 401, with the reason.
pub fn link_authentication_error(e: &CredentialError) -> ApiError {
    ApiError::new(status::link_authentication(e), e.to_string())
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
