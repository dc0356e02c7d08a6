//! The router's one error type, classified so adapters map it without reading strings.

use halo_policy::Deny;

use crate::outcome::QueryFailure;

/// Why a query was not routed, or did not complete.
///
/// Map to HTTP with [`RouteError::http_status`]; branch on [`RouteError::class`].
/// Messages never name another tenant's sites or their authority holder.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No routable site has this Halo GUID (never registered, removed or uninstalled).
    #[error("unknown site")]
    UnknownSite,
    /// The site exists but is still initialising.
    #[error("site is not active yet")]
    NotActive,
    /// The site is not its group's authoritative site, so it is never routed.
    #[error("site is not authoritative")]
    NotAuthoritative,
    /// The access policy (or a rate limit or quota) denied the request.
    #[error("{0}")]
    Denied(Deny),
    /// The request itself is out of range (for example `maxTimeInQueue` above 60 000 ms).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The site's Link has too many queries in flight; retry later.
    #[error("site busy: too many queries in flight")]
    Busy,
    /// No Link session is attached for the site, or it went away mid-query.
    #[error("site unreachable")]
    Unreachable,
    /// The query did not finish before its deadline.
    #[error("query timed out")]
    Timeout,
    /// The immediate result is larger than the limit.
    #[error("result too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// The result's size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The caller cancelled the query (dropped its `Dispatch`).
    #[error("query cancelled")]
    Cancelled,
    /// The Link ran or refused the query and reported a failure.
    #[error(transparent)]
    Failed(QueryFailure),
}

/// A coarse classification of [`RouteError`], for logging, retries and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RouteErrorClass {
    /// The caller asked for something that does not exist or is malformed (4xx).
    CallerFault,
    /// The caller is not allowed (401/403/429).
    Denied,
    /// The site cannot take the query now; retrying later may work (503/504).
    Unavailable,
    /// The query ran and failed, or its result cannot be returned.
    QueryFailed,
}

impl RouteError {
    /// The HTTP status the Cloud answers with.
    ///
    /// | error | status |
    /// | --- | --- |
    /// | `UnknownSite` | 404 |
    /// | `Denied(d)` | `d.code().http_status()` (401, 403, 404, 429) |
    /// | `NotAuthoritative` | 403 |
    /// | `InvalidRequest` | 400 |
    /// | `NotActive`, `Busy`, `Unreachable` | 503 (busy is the *site's* capacity, not the caller's rate: 429 stays reserved for the caller's own rate limit) |
    /// | `Timeout` | 504 |
    /// | `TooLarge` | 413 |
    /// | `Cancelled` | 499 (the client closed the request; never sent) |
    /// | `Failed(Database)`, `Failed(Refused)` | 400 (the body carries `errorDetails`) |
    /// | `Failed(StaleEpoch)`, `Failed(Busy)` | 503 |
    /// | `Failed(TooLarge)` | 413 |
    /// | `Failed(Denied)` | 403 |
    /// | `Failed(Expired)` | 504 |
    pub fn http_status(&self) -> u16 {
        match self {
            RouteError::UnknownSite => 404,
            RouteError::Denied(deny) => deny.code().http_status(),
            RouteError::NotAuthoritative => 403,
            RouteError::InvalidRequest(_) => 400,
            RouteError::NotActive | RouteError::Busy | RouteError::Unreachable => 503,
            RouteError::Timeout => 504,
            RouteError::TooLarge { .. } => 413,
            RouteError::Cancelled => 499,
            RouteError::Failed(QueryFailure::StaleEpoch | QueryFailure::Busy) => 503,
            RouteError::Failed(QueryFailure::TooLarge) => 413,
            RouteError::Failed(QueryFailure::Denied(_)) => 403,
            RouteError::Failed(QueryFailure::Expired) => 504,
            RouteError::Failed(_) => 400,
        }
    }

    /// The coarse class of this error.
    pub fn class(&self) -> RouteErrorClass {
        match self {
            RouteError::UnknownSite | RouteError::InvalidRequest(_) | RouteError::Cancelled => {
                RouteErrorClass::CallerFault
            }
            RouteError::Denied(_)
            | RouteError::NotAuthoritative
            | RouteError::Failed(QueryFailure::Denied(_)) => RouteErrorClass::Denied,
            RouteError::NotActive
            | RouteError::Busy
            | RouteError::Unreachable
            | RouteError::Timeout
            | RouteError::Failed(
                QueryFailure::StaleEpoch | QueryFailure::Expired | QueryFailure::Busy,
            ) => RouteErrorClass::Unavailable,
            RouteError::TooLarge { .. } | RouteError::Failed(_) => RouteErrorClass::QueryFailed,
        }
    }

    /// Whether the same request may succeed if retried later unchanged.
    pub fn is_retryable(&self) -> bool {
        self.class() == RouteErrorClass::Unavailable
            || matches!(self, RouteError::Denied(d) if d.code().http_status() == 429)
    }
}
