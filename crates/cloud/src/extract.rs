//! Small extractors shared by the handlers. `ApiJson`, `ApiQuery` and `ApiPath` wrap
//! axum's `Json`, `Query` and `Path` so that every rejection is answered in the
//! error envelope (`crate::error`), never as axum's plain text.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use percent_encoding::percent_decode_str;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, clip};

/// The integrator's subscription key header.
pub const KEY_HEADER: &str = "Ocp-Apim-Subscription-Key";

/// The caller's IP address, when the server was started with connect info.
#[derive(Debug, Clone, Copy)]
pub struct CallerIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for CallerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(CallerIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// The subscription key as sent, or `""` when absent or not text.
pub fn subscription_key(headers: &HeaderMap) -> &str {
    headers
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("")
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A request body that did not arrive in full before its deadline (see
/// `HttpLimits::body_read_timeout`); extractors answer it with 408.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body was not received in time")]
pub struct BodyTimedOut;

/// Whether `error` or one of its sources is a [`BodyTimedOut`].
fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    // Bounded walk: error chains are short, and a cycle must not hang a handler.
    for _ in 0..16 {
        match current {
            Some(e) if e.is::<BodyTimedOut>() => return true,
            Some(e) => current = e.source(),
            None => return false,
        }
    }
    false
}

/// The envelope for a body that could not be read: 413 over the size limit, 408
/// after the body deadline, 400 otherwise.
fn body_error(rejection: &FailedToBufferBody) -> ApiError {
    match rejection {
        FailedToBufferBody::LengthLimitError(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than the limit of {} bytes",
                crate::app::MAX_BODY_BYTES
            ),
        ),
        FailedToBufferBody::UnknownBodyError(e) if is_body_timeout(e) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body was not received in time",
        ),
        other => ApiError::new(other.status(), "the request body could not be read"),
    }
}

/// Maps a JSON body rejection to the envelope.
fn json_error(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON, sent with Content-Type: application/json",
        ),
        // Bad JSON (invalid UTF-8 included) and JSON of the wrong shape are both 400,
        // as the integrator API documents.
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(clip(&format!("invalid JSON body: {}", cause_text(&e))))
        }
        JsonRejection::JsonDataError(e) => {
            ApiError::bad_request(clip(&format!("invalid JSON body: {}", cause_text(&e))))
        }
        JsonRejection::BytesRejection(BytesRejection::FailedToBufferBody(e)) => body_error(&e),
        other => ApiError::new(other.status(), clip(&other.body_text())),
    }
}

/// The message under a rejection (axum's `body_text` prefixes its own sentence).
fn cause_text(error: &(dyn std::error::Error + 'static)) -> String {
    error
        .source()
        .map_or_else(|| error.to_string(), ToString::to_string)
}

/// A JSON request body whose rejection is an [`ApiError`]: 415 without a JSON
/// `Content-Type`, 400 for bad JSON (invalid UTF-8 included) or a wrong shape, 413
/// over [`MAX_BODY_BYTES`](crate::app::MAX_BODY_BYTES), 408 past the body deadline.
///
/// Take it as `Result<ApiJson<T>, ApiError>` to decide in the handler when a bad body
/// is reported (for example after authentication).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_error(rejection)),
        }
    }
}

/// A query string deserialised into `T` (with `serde_urlencoded`), whose rejection is
/// a 400 [`ApiError`]: percent-encoded bytes that are not UTF-8, a duplicated
/// parameter, or a value of the wrong shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        // serde_urlencoded decodes lossily (U+FFFD); refuse instead of guessing.
        if percent_decode_str(query).decode_utf8().is_err() {
            return Err(ApiError::bad_request(
                "the query string is not valid UTF-8 once percent-decoded",
            ));
        }
        serde_urlencoded::from_str::<T>(query)
            .map(ApiQuery)
            .map_err(|e| ApiError::bad_request(clip(&format!("invalid query string: {e}"))))
    }
}

/// Path parameters deserialised into `T`, whose rejection is an [`ApiError`]: 400 for
/// a parameter that is not UTF-8 once percent-decoded or does not parse.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => Err(ApiError::bad_request(clip(
                    &format!("the path parameter `{key}` is not valid UTF-8 once percent-decoded"),
                ))),
                // A typed parameter (a Halo GUID, say) says itself what is wrong.
                ErrorKind::DeserializeError { message, .. } => {
                    Err(ApiError::bad_request(clip(message)))
                }
                _ => Err(ApiError::new(
                    e.status(),
                    clip(&format!("invalid path: {}", e.kind())),
                )),
            },
            Err(other) => Err(ApiError::new(other.status(), clip(&other.body_text()))),
        }
    }
}

/// Whether the request says its body is JSON (`application/json` or a `+json` type),
/// as axum's `Json` checks.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// [`ApiJson`] that also knows the size of the body it parsed, in bytes (the
/// immediate query's `requestSize`). Its rejections are [`ApiJson`]'s.
#[derive(Debug, Clone, Copy, Default)]
pub struct SizedJson<T> {
    /// The parsed body.
    pub value: T,
    /// Bytes of the body as received.
    pub size: usize,
}

impl<T, S> FromRequest<S> for SizedJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the request body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| json_error(JsonRejection::from(e)))?;
        let Json(value) = Json::<T>::from_bytes(&bytes).map_err(json_error)?;
        Ok(SizedJson {
            value,
            size: bytes.len(),
        })
    }
}
