//! The router's one error type, classified so adapters map it without reading strings.

use halo_policy::{Deny, DenyCode};

use crate::outcome::QueryFailure;

/// Why a query was not routed, or did not complete.
///
/// A domain error: this crate knows no HTTP status. Adapters map each variant (the
/// Cloud in one table, `halo_cloud::status`); branch on [`RouteError::class`] or
/// [`RouteError::is_retryable`]. Deliberately exhaustive, so that a new variant does
/// not compile until every adapter has mapped it. Messages never name another
/// tenant's sites or their authority holder.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    /// The caller asked for something that does not exist or is malformed.
    CallerFault,
    /// The caller is not allowed (policy, rate limit or quota).
    Denied,
    /// The site cannot take the query now; retrying later may work.
    Unavailable,
    /// The query ran and failed, or its result cannot be returned.
    QueryFailed,
}

impl RouteError {
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
            || matches!(self, RouteError::Denied(d) if matches!(d.code(), DenyCode::RateLimited { .. }))
    }
}
