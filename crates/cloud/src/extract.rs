//! Small extractors shared by the handlers.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

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
