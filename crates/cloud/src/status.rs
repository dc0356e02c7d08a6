//! The one table from the core's domain codes to HTTP statuses.
//!
//! The core crates decide and answer in their own vocabulary ([`DenyCode`],
//! [`RouteError`] and [`QueryFailure`], [`CrnRefusal`], the classes of
//! [`halo_tenancy::TenancyError`], [`CredentialError`]); none of them knows an HTTP
//! status. This module is the only place those codes become numbers, and
//! `crate::error` the only place they become responses. Every `match` here is
//! exhaustive, without a wildcard: a variant added to a core crate does not compile
//! until it is mapped here (and the unit test below pins every mapping). README's
//! error table documents the same statuses.
//!
//! | domain code | status |
//! | --- | --- |
//! | `DenyCode::MissingKey`, `UnknownKey`, `WrongEnvironment` | 401 |
//! | `DenyCode::IntegratorNotEnabled`, `PracticeNotEnabled`, `NotPaired`, `ComponentNotAuthorised`, `WriteNotAuthorised`, `SiteNotAuthoritative`, `CallerIpNotAllowed`, `QuotaExhausted` | 403 |
//! | `DenyCode::UnknownSite` | 404 |
//! | `DenyCode::RateLimited` | 429 (with `Retry-After`) |
//! | `RouteError::UnknownSite` | 404 |
//! | `RouteError::Denied(d)` | `d`'s code, above |
//! | `RouteError::NotAuthoritative` | 403 |
//! | `RouteError::InvalidRequest` | 400 |
//! | `RouteError::NotActive`, `Busy`, `Unreachable` | 503 (busy is the *site's* capacity; 429 stays the caller's own rate limit); `Busy` and `Unreachable` with `Retry-After: 1` |
//! | `RouteError::Timeout` | 504 |
//! | `RouteError::TooLarge` | 413 |
//! | `RouteError::Cancelled` | 499 (the client closed the request; never sent) |
//! | `RouteError::Failed(f)` | `f`'s status, below |
//! | `QueryFailure::Database`, `Refused` | 400 (`Database` with `errorDetails`) |
//! | `QueryFailure::StaleEpoch`, `Busy` | 503 |
//! | `QueryFailure::Expired` | 504 |
//! | `QueryFailure::TooLarge` | 413 |
//! | `QueryFailure::Denied` | 403 |
//! | `CrnRefusal::BranchCrn`, `DemoRealCrn` | 400 |
//! | `TenancyErrorClass::NotFound`, `Invalid`, `Conflict` | 404, 400, 409 |
//! | `CredentialError` of an admin action: `Unknown` | 404 |
//! | `CredentialError` of an admin action: `AlreadyIssued`, `NoScope` | 409 |
//! | `CredentialError` of an admin action: any other | 400 |
//! | `CredentialError` of a Link's token at the WebSocket upgrade | 401 |
//! | `PolicyError` of an admin action | 400 |

use axum::http::StatusCode;
use halo_credentials::CredentialError;
use halo_policy::DenyCode;
use halo_router::{CrnRefusal, QueryFailure, RouteError};
use halo_tenancy::TenancyErrorClass;

/// nginx's "client closed request": a query its caller stopped waiting for. It is
/// logged, never sent (nobody is listening).
fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// The status of a policy denial (SPEC §5).
pub fn deny(code: DenyCode) -> StatusCode {
    match code {
        DenyCode::MissingKey | DenyCode::UnknownKey | DenyCode::WrongEnvironment => {
            StatusCode::UNAUTHORIZED
        }
        DenyCode::IntegratorNotEnabled
        | DenyCode::PracticeNotEnabled
        | DenyCode::NotPaired
        | DenyCode::ComponentNotAuthorised
        | DenyCode::WriteNotAuthorised
        | DenyCode::SiteNotAuthoritative
        | DenyCode::CallerIpNotAllowed
        | DenyCode::QuotaExhausted => StatusCode::FORBIDDEN,
        DenyCode::UnknownSite => StatusCode::NOT_FOUND,
        DenyCode::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
    }
}

/// The status of a query that was not routed or did not complete.
pub fn route(error: &RouteError) -> StatusCode {
    match error {
        RouteError::UnknownSite => StatusCode::NOT_FOUND,
        RouteError::Denied(d) => deny(d.code()),
        RouteError::NotAuthoritative => StatusCode::FORBIDDEN,
        RouteError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        RouteError::NotActive | RouteError::Busy | RouteError::Unreachable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        RouteError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        RouteError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        RouteError::Cancelled => client_closed_request(),
        RouteError::Failed(f) => query_failure(f),
    }
}

/// The status of a failure the Link reported for a query.
pub fn query_failure(failure: &QueryFailure) -> StatusCode {
    match failure {
        QueryFailure::Database { .. } | QueryFailure::Refused(_) => StatusCode::BAD_REQUEST,
        QueryFailure::StaleEpoch | QueryFailure::Busy => StatusCode::SERVICE_UNAVAILABLE,
        QueryFailure::Expired => StatusCode::GATEWAY_TIMEOUT,
        QueryFailure::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        QueryFailure::Denied(_) => StatusCode::FORBIDDEN,
    }
}

/// The status of a CRN refused with guidance (only ever told to a caller entitled
/// to the practice; see `halo_router::resolve_crn`).
pub fn crn_refusal(refusal: CrnRefusal) -> StatusCode {
    match refusal {
        CrnRefusal::BranchCrn | CrnRefusal::DemoRealCrn => StatusCode::BAD_REQUEST,
    }
}

/// The status of a refused tenancy event, by its class.
pub fn tenancy(class: TenancyErrorClass) -> StatusCode {
    match class {
        TenancyErrorClass::NotFound => StatusCode::NOT_FOUND,
        TenancyErrorClass::Invalid => StatusCode::BAD_REQUEST,
        TenancyErrorClass::Conflict => StatusCode::CONFLICT,
    }
}

/// The status of a refused credential action of the admin API (issue, revoke,
/// rotate, extend, or a malformed credential id).
pub fn credential_action(error: &CredentialError) -> StatusCode {
    match error {
        CredentialError::Unknown => StatusCode::NOT_FOUND,
        CredentialError::AlreadyIssued | CredentialError::NoScope => StatusCode::CONFLICT,
        CredentialError::Revoked
        | CredentialError::OtherLink
        | CredentialError::LinkBoundElsewhere
        | CredentialError::WrongEnvironment { .. }
        | CredentialError::DemoInProduction
        | CredentialError::Missing(_)
        | CredentialError::InvalidId => StatusCode::BAD_REQUEST,
    }
}

/// The status of a Link token refused at the WebSocket upgrade: whatever the reason,
/// the caller did not authenticate.
pub fn link_authentication(error: &CredentialError) -> StatusCode {
    match error {
        CredentialError::Unknown
        | CredentialError::Revoked
        | CredentialError::OtherLink
        | CredentialError::LinkBoundElsewhere
        | CredentialError::WrongEnvironment { .. }
        | CredentialError::NoScope
        | CredentialError::AlreadyIssued
        | CredentialError::DemoInProduction
        | CredentialError::Missing(_)
        | CredentialError::InvalidId => StatusCode::UNAUTHORIZED,
    }
}

/// The status of a refused policy event of the admin API: the event is malformed or
/// does not fit the grants, whichever rule it broke.
pub fn policy_action(_: &halo_policy::PolicyError) -> StatusCode {
    StatusCode::BAD_REQUEST
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use halo_ids::{Environment, HaloGuid};
    use halo_policy::{Deny, PolicyError};

    use super::*;

    fn all_deny_codes() -> [(DenyCode, u16); 13] {
        [
            (DenyCode::MissingKey, 401),
            (DenyCode::UnknownKey, 401),
            (DenyCode::WrongEnvironment, 401),
            (DenyCode::IntegratorNotEnabled, 403),
            (DenyCode::PracticeNotEnabled, 403),
            (DenyCode::NotPaired, 403),
            (DenyCode::ComponentNotAuthorised, 403),
            (DenyCode::WriteNotAuthorised, 403),
            (DenyCode::SiteNotAuthoritative, 403),
            (DenyCode::CallerIpNotAllowed, 403),
            (DenyCode::QuotaExhausted, 403),
            (DenyCode::UnknownSite, 404),
            (DenyCode::RateLimited { retry_after_ms: 1 }, 429),
        ]
    }

    fn all_query_failures() -> [(QueryFailure, u16); 7] {
        [
            (
                QueryFailure::Database {
                    error_type: "sqlite".into(),
                    error_code: "1".into(),
                    message: "no such column".into(),
                },
                400,
            ),
            (QueryFailure::Refused("no".into()), 400),
            (QueryFailure::StaleEpoch, 503),
            (QueryFailure::Busy, 503),
            (QueryFailure::Expired, 504),
            (QueryFailure::TooLarge, 413),
            (QueryFailure::Denied("no".into()), 403),
        ]
    }

    fn all_credential_errors() -> [(CredentialError, u16); 10] {
        [
            (CredentialError::Unknown, 404),
            (CredentialError::AlreadyIssued, 409),
            (CredentialError::NoScope, 409),
            (CredentialError::Revoked, 400),
            (CredentialError::OtherLink, 400),
            (CredentialError::LinkBoundElsewhere, 400),
            (
                CredentialError::WrongEnvironment {
                    credential: Environment::Stage,
                    hello: Environment::Production,
                },
                400,
            ),
            (CredentialError::DemoInProduction, 400),
            (CredentialError::Missing("actor"), 400),
            (CredentialError::InvalidId, 400),
        ]
    }

    #[test]
    fn every_deny_code_has_its_spec_status() {
        for (code, status) in all_deny_codes() {
            assert_eq!(deny(code).as_u16(), status, "{code:?}");
            // A denial inside a routing error answers the same.
            let routed = RouteError::Denied(Deny::new(code, "denied"));
            assert_eq!(route(&routed).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn every_route_error_has_its_status() {
        let cases = [
            (RouteError::UnknownSite, 404),
            (RouteError::NotAuthoritative, 403),
            (RouteError::InvalidRequest("maxTimeInQueue"), 400),
            (RouteError::NotActive, 503),
            (RouteError::Busy, 503),
            (RouteError::Unreachable, 503),
            (RouteError::Timeout, 504),
            (RouteError::TooLarge { size: 2, limit: 1 }, 413),
            (RouteError::Cancelled, 499),
        ];
        for (error, status) in cases {
            assert_eq!(route(&error).as_u16(), status, "{error:?}");
        }
        for (failure, status) in all_query_failures() {
            assert_eq!(query_failure(&failure).as_u16(), status, "{failure:?}");
            let routed = RouteError::Failed(failure);
            assert_eq!(route(&routed).as_u16(), status, "{routed:?}");
        }
    }

    #[test]
    fn crn_refusals_are_400() {
        for refusal in [CrnRefusal::BranchCrn, CrnRefusal::DemoRealCrn] {
            assert_eq!(crn_refusal(refusal), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn tenancy_classes_have_their_status() {
        assert_eq!(tenancy(TenancyErrorClass::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(tenancy(TenancyErrorClass::Invalid), StatusCode::BAD_REQUEST);
        assert_eq!(tenancy(TenancyErrorClass::Conflict), StatusCode::CONFLICT);
        // Through the classes of real errors.
        let site = HaloGuid::from_u128(1).unwrap();
        let unknown = halo_tenancy::TenancyError::UnknownSite(site);
        assert_eq!(tenancy(unknown.class()), StatusCode::NOT_FOUND);
        let owned = halo_tenancy::TenancyError::SiteOwnedByOtherLink(site);
        assert_eq!(tenancy(owned.class()), StatusCode::CONFLICT);
        let demo = halo_tenancy::TenancyError::DemoInProduction;
        assert_eq!(tenancy(demo.class()), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn every_credential_error_has_its_status() {
        for (error, status) in all_credential_errors() {
            assert_eq!(credential_action(&error).as_u16(), status, "{error:?}");
            assert_eq!(
                link_authentication(&error),
                StatusCode::UNAUTHORIZED,
                "{error:?}"
            );
        }
    }

    #[test]
    fn policy_event_refusals_are_400() {
        for error in [PolicyError::KeyInUse, PolicyError::KeyNotIssued] {
            assert_eq!(policy_action(&error), StatusCode::BAD_REQUEST);
        }
    }
}
