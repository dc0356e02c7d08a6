//! The OpenAPI document of the integrator and admin APIs, generated from the
//! handlers' annotations and served at `/openapi.json`. The integrator operations
//! carry Halo's operation ids, parameters, enums and formats (see `crate::dto`).
//!
//! The error responses of every operation come from one definition per class of
//! endpoint ([`SiteLookupErrors`], [`QueryErrors`], [`AdminWriteErrors`], ...): each
//! lists the statuses its endpoints can answer, all in the error envelope, described
//! by one table ([`describe`]), the same as README's error table.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};

use crate::{admin, admin_audit, console, dto, error, integrator, queries, webhooks};

/// The OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "Halo Connect Cloud", description = "Integrator and administration APIs."),
    paths(
        integrator::find_sites,
        integrator::site_status,
        integrator::pair_site,
        integrator::pair_site_deprecated,
        integrator::immediate_query,
        admin::issue_link_credential,
        admin::list_link_credentials,
        admin::revoke_link_credential,
        admin::rotate_link_credential,
        admin::extend_link_credential_scope,
        admin::enable_integrator,
        admin::authorise_components,
        admin::enable_practice,
        admin::issue_key,
        admin::policy_event,
        admin::get_site,
        admin::promote,
        admin_audit::list_audit,
        console::ticket,
        queries::async_query::create_async_query,
        queries::async_query::get_query,
        queries::async_query::get_query_status_batch,
        queries::pages::get_result_page,
        queries::pages::stream_result_page,
        queries::registered::create_registered_query,
        queries::registered::get_registered_queries,
        queries::registered::get_registered_query,
        queries::registered::cancel_registered_query,
        queries::registered::get_registered_query_result,
        webhooks::configure,
        webhooks::dead_letters,
    ),
    components(schemas(
        dto::SiteDto, dto::SitesDto, dto::CatalogueDto, dto::PracticeMetadataDto,
        dto::PmsTypeDto, dto::PracticeManagementName, dto::AvailabilityDto, dto::SiteStatusDto,
        dto::ImmediateQueryDto, dto::CommandDto, dto::ExecutionModeDto, dto::CommandTypeDto,
        dto::ParameterDto, dto::DirectionDto, dto::SqlTypeDto, dto::QueryDto, dto::QueryModeDto,
        dto::SuccessfulStatusDto, dto::FailedStatusDto, dto::StatusTimingDto, dto::StateTimeDto,
        dto::MetricsDto, dto::ResultDto, dto::RowsResultDto, dto::NonQueryResultDto,
        dto::FailedQueryDto, dto::ErrorDetailsDto, dto::ErrorTypeDto,
        error::ErrorEnvelope, error::ErrorBody,
        admin::PmsTypeBody, admin::ComponentsBody, admin::PracticeBody, admin::KeyBody,
        admin::SecretDto, admin::CredentialBody, admin::CredentialSecretDto, admin::CredentialDto,
        admin::ActionBody, admin::ScopeBody, admin::PromoteBody, admin::AdminSiteDto,
        admin_audit::AuditPageDto, admin_audit::AuditEntryDto, console::TicketDto,
        queries::async_query::AsyncQueryBody, queries::async_query::StatusBatchBody,
        queries::registered::RegisteredBody, queries::registered::RegisterCommand,
        queries::registered::RegisteredQueryTypeDto,
        queries::docs::AsyncQueryDto, queries::docs::AsyncQueryStatusDto,
        queries::docs::AsyncModeDto, queries::docs::AsyncStatusTimingDto,
        queries::docs::StateSpanDto, queries::docs::AsyncResultDto, queries::docs::PageDto,
        queries::docs::PageRowsDto, queries::docs::PageStatusDto,
        queries::docs::StatusBatchDto, queries::docs::BatchResultDto,
        queries::docs::BatchStatusDto, queries::docs::ResultPageDto,
        queries::docs::RegisteredQueryIdDto, queries::docs::RegisteredQueryDto,
        queries::docs::RegisteredQueryStatusDto, queries::docs::RegisteredQueryMetricsDto,
        queries::docs::RegisteredErrorDto, queries::docs::RegisteredErrorTypeDto,
        queries::docs::RegisteredQueriesDto, queries::docs::RegisteredQueryResultDto,
        webhooks::WebhookBody, webhooks::WebhookSettingsDto, webhooks::DeadLettersDto,
        webhooks::DeadLetterDto,
    )),
    modifiers(&Security, &Deprecations),
    tags((name = "integrator", description = "For integrators, with a subscription key"),
         (name = "admin", description = "For the PMS vendor and support, with the admin token"))
)]
pub struct ApiDoc;

/// Adds the two security schemes.
#[derive(Debug)]
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "subscriptionKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(
                "Ocp-Apim-Subscription-Key",
            ))),
        );
    }
}

/// Marks Halo's deprecated operation names deprecated.
#[derive(Debug)]
struct Deprecations;

impl utoipa::Modify for Deprecations {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(item) = openapi.paths.paths.get_mut("/integrator/pairSite") {
            if let Some(op) = item.post.as_mut() {
                op.deprecated = Some(utoipa::openapi::Deprecated::True);
            }
        }
    }
}

/// What an error status means, for any endpoint that answers it.
pub fn describe(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => {
            "Bad input: an invalid or missing identifier or parameter, path, query string or \
             JSON body (not UTF-8 once percent-decoded, or of the wrong shape), a refused \
             event; a branch CRN or a demo copy's real CRN, only to a caller entitled to that \
             practice; a malformed command (empty, not parsed, or read differently by the \
             analyser and SQLite); a command the database failed (answered as the failed \
             query with `errorDetails`) or that needs more memory than the Link allows"
        }
        401 => {
            "Missing or unknown subscription key or admin token, or a subscription key of \
             the other environment than the site"
        }
        403 => {
            "Not allowed: integrator or practice not enabled, not paired in this environment, \
             component, statement kind, construct or SQL function not authorised, site not \
             authoritative, caller IP not allowed, quota exhausted"
        }
        404 => {
            "Not found: an unknown site, or a site whose practice is not enabled for the caller \
             (exactly the same answer); no live site for the practice to pair with; an unknown \
             credential; a query, page or registered query the caller does not own"
        }
        405 => "Method not allowed on this route (the `Allow` header lists the methods)",
        408 => "The request body was not received within the body deadline",
        410 => "The query's results have expired: their retention time is over",
        409 => {
            "Conflicts with the current state (authority, CRN claims, a credential without a \
             scope, a token already issued)"
        }
        413 => "The request body is over 1 MiB, or the result over the size limit",
        415 => "The body was sent without `Content-Type: application/json`",
        429 => "Rate limit exceeded; retry after `Retry-After` seconds",
        500 => "Internal error (the cause is logged, never sent)",
        503 => {
            "The site is unreachable or busy, including a query that could not start on the \
             Link within its `maxTimeInQueue`"
        }
        504 => "The query ran over its deadline",
        _ => "Error",
    }
}

/// The responses for `statuses`, each with the error envelope as its body.
fn envelope_responses(statuses: &[StatusCode]) -> BTreeMap<String, RefOr<Response>> {
    statuses
        .iter()
        .map(|&status| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                .build();
            let mut response = ResponseBuilder::new()
                .description(describe(status))
                .content("application/json", content);
            if status == StatusCode::TOO_MANY_REQUESTS {
                response = response.header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::Integer))
                        .description(Some("Seconds until a request may succeed"))
                        .build(),
                );
            }
            (status.as_u16().to_string(), RefOr::T(response.build()))
        })
        .collect()
}

/// Declares one class of endpoint: a type whose OpenAPI responses are its error
/// statuses, each in the envelope.
macro_rules! error_responses {
    ($(#[doc = $doc:literal])* $name:ident: [$($status:ident),* $(,)?]) => {
        $(#[doc = $doc])*
        #[derive(Debug)]
        pub struct $name;

        impl $name {
            /// The error statuses of this class of endpoint.
            pub const STATUSES: &'static [StatusCode] = &[$(StatusCode::$status),*];
        }

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                envelope_responses(Self::STATUSES)
            }
        }
    };
}

error_responses! {
    /// Find sites by PMS ID (no live site is an empty list, as Halo answers).
    SiteLookupErrors: [BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, METHOD_NOT_ALLOWED]
}

error_responses! {
    /// One site's status, by Halo GUID.
    SiteErrors: [BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED]
}

error_responses! {
    /// Pair site: a lookup by practice that writes the pairing.
    PairSiteErrors: [
        BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED,
        INTERNAL_SERVER_ERROR,
    ]
}

/// The immediate query: a JSON body, the policy, limits, and the Link's answer. Its
/// 400 is either the error envelope or, for a command the database failed, the
/// failed query with `errorDetails` (Halo's `ExecutionFailedImmediateQuery`).
#[derive(Debug)]
pub struct QueryErrors;

impl QueryErrors {
    /// The error statuses of the immediate query.
    pub const STATUSES: &'static [StatusCode] = &[
        StatusCode::BAD_REQUEST,
        StatusCode::UNAUTHORIZED,
        StatusCode::FORBIDDEN,
        StatusCode::NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED,
        StatusCode::REQUEST_TIMEOUT,
        StatusCode::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::GATEWAY_TIMEOUT,
    ];
}

impl utoipa::IntoResponses for QueryErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut responses = envelope_responses(Self::STATUSES);
        let either = OneOfBuilder::new()
            .item(Ref::from_schema_name("ErrorEnvelope"))
            .item(Ref::from_schema_name("FailedQueryDto"));
        let bad_request = ResponseBuilder::new()
            .description(describe(StatusCode::BAD_REQUEST))
            .content(
                "application/json",
                ContentBuilder::new().schema(Some(either)).build(),
            )
            .build();
        responses.insert("400".to_owned(), RefOr::T(bad_request));
        responses
    }
}

error_responses! {
    /// Submitting an async or registered query: a JSON body, checked by the policy
    /// as the immediate path checks it (no routing yet: no 429, 504), then stored.
    AsyncSubmitErrors: [
        BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED,
        REQUEST_TIMEOUT, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, INTERNAL_SERVER_ERROR,
        SERVICE_UNAVAILABLE,
    ]
}

error_responses! {
    /// The status batch: a JSON body of query ids on one site.
    StatusBatchErrors: [
        BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED,
        REQUEST_TIMEOUT, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, INTERNAL_SERVER_ERROR,
    ]
}

error_responses! {
    /// Reading or cancelling an async or registered query the caller owns.
    OwnedQueryErrors: [
        BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED,
        INTERNAL_SERVER_ERROR,
    ]
}

error_responses! {
    /// A result page: as [`OwnedQueryErrors`], and 410 once its retention ended.
    ResultPageErrors: [
        BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED, GONE,
        INTERNAL_SERVER_ERROR,
    ]
}

error_responses! {
    /// A registered query's last result, whole: 410 once expired, 413 over 8 MiB.
    RegisteredResultErrors: [
        BAD_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED, GONE,
        PAYLOAD_TOO_LARGE, INTERNAL_SERVER_ERROR,
    ]
}

error_responses! {
    /// Admin endpoints that list what the store holds.
    AdminStoreListErrors: [UNAUTHORIZED, METHOD_NOT_ALLOWED, INTERNAL_SERVER_ERROR]
}

error_responses! {
    /// Admin endpoints that list, without parameters.
    AdminListErrors: [UNAUTHORIZED, METHOD_NOT_ALLOWED]
}

error_responses! {
    /// Admin endpoints that search with query parameters.
    AdminSearchErrors: [BAD_REQUEST, UNAUTHORIZED, METHOD_NOT_ALLOWED]
}

error_responses! {
    /// Admin endpoints that read one thing named in the path.
    AdminReadErrors: [BAD_REQUEST, UNAUTHORIZED, NOT_FOUND, METHOD_NOT_ALLOWED]
}

error_responses! {
    /// Admin endpoints that apply one policy event from a JSON body.
    AdminWriteErrors: [
        BAD_REQUEST, UNAUTHORIZED, METHOD_NOT_ALLOWED, REQUEST_TIMEOUT, PAYLOAD_TOO_LARGE,
        UNSUPPORTED_MEDIA_TYPE, INTERNAL_SERVER_ERROR,
    ]
}

error_responses! {
    /// Issuing a Link credential (a conflict only if the new token is already issued).
    CredentialIssueErrors: [
        BAD_REQUEST, UNAUTHORIZED, METHOD_NOT_ALLOWED, REQUEST_TIMEOUT, CONFLICT,
        PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, INTERNAL_SERVER_ERROR,
    ]
}

error_responses! {
    /// Revoking a Link credential named in the path (revoking twice is not an error).
    RevokeErrors: [
        BAD_REQUEST, UNAUTHORIZED, NOT_FOUND, METHOD_NOT_ALLOWED, REQUEST_TIMEOUT,
        PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, INTERNAL_SERVER_ERROR,
    ]
}

error_responses! {
    /// Support actions on a thing named in the path that may conflict with its state
    /// (rotate or extend a credential, promote a site).
    ActionErrors: [
        BAD_REQUEST, UNAUTHORIZED, NOT_FOUND, METHOD_NOT_ALLOWED, REQUEST_TIMEOUT, CONFLICT,
        PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, INTERNAL_SERVER_ERROR,
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use serde_json::Value;
    use utoipa::OpenApi as _;

    use super::*;

    fn document() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    fn statuses(doc: &Value, path: &str, method: &str) -> BTreeSet<u16> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is not documented"))
            .keys()
            .map(|k| k.parse().unwrap())
            .collect()
    }

    #[test]
    fn every_operation_lists_every_status_it_can_answer() {
        let doc = document();
        let cases: &[(&str, &str, &[u16])] = &[
            ("/integrator/sites", "get", &[200, 400, 401, 403, 405]),
            (
                "/integrator/sites/{siteId}",
                "get",
                &[200, 400, 401, 403, 404, 405],
            ),
            (
                "/integrator/pair-site",
                "post",
                &[200, 400, 401, 403, 404, 405, 500],
            ),
            (
                "/integrator/pairSite",
                "post",
                &[200, 400, 401, 403, 404, 405, 500],
            ),
            (
                "/integrator/sites/{siteId}/queries/immediate",
                "post",
                &[200, 400, 401, 403, 404, 405, 408, 413, 415, 429, 503, 504],
            ),
            (
                "/admin/integrators/{integrator}/enable",
                "post",
                &[204, 400, 401, 405, 408, 413, 415, 500],
            ),
            (
                "/admin/integrators/{integrator}/components",
                "put",
                &[204, 400, 401, 405, 408, 413, 415, 500],
            ),
            (
                "/admin/integrators/{integrator}/practices",
                "post",
                &[204, 400, 401, 405, 408, 413, 415, 500],
            ),
            (
                "/admin/integrators/{integrator}/keys",
                "post",
                &[200, 400, 401, 405, 408, 413, 415, 500],
            ),
            (
                "/admin/policy-events",
                "post",
                &[204, 400, 401, 405, 408, 413, 415, 500],
            ),
            (
                "/admin/link-credentials",
                "post",
                &[200, 400, 401, 405, 408, 409, 413, 415, 500],
            ),
            ("/admin/link-credentials", "get", &[200, 401, 405]),
            (
                "/admin/link-credentials/{id}/revoke",
                "post",
                &[204, 400, 401, 404, 405, 408, 413, 415, 500],
            ),
            (
                "/admin/link-credentials/{id}/rotate",
                "post",
                &[200, 400, 401, 404, 405, 408, 409, 413, 415, 500],
            ),
            (
                "/admin/link-credentials/{id}/scope",
                "post",
                &[200, 400, 401, 404, 405, 408, 409, 413, 415, 500],
            ),
            ("/admin/sites/{siteId}", "get", &[200, 400, 401, 404, 405]),
            (
                "/admin/sites/{siteId}/promote",
                "post",
                &[200, 400, 401, 404, 405, 408, 409, 413, 415, 500],
            ),
            ("/admin/audit", "get", &[200, 400, 401, 405]),
            ("/admin/console/tickets", "post", &[200, 401, 405]),
            (
                "/integrator/sites/{siteId}/queries/async",
                "post",
                &[201, 400, 401, 403, 404, 405, 408, 413, 415, 500, 503],
            ),
            (
                "/integrator/sites/{siteId}/queries/{queryId}",
                "get",
                &[200, 400, 401, 403, 404, 405, 500],
            ),
            (
                "/integrator/sites/{siteId}/queries/status",
                "post",
                &[200, 400, 401, 403, 404, 405, 408, 413, 415, 500],
            ),
            (
                "/integrator/sites/{siteId}/queries/{queryId}/results/{pageNumber}",
                "get",
                &[200, 400, 401, 403, 404, 405, 410, 500],
            ),
            (
                "/integrator/sites/{siteId}/queries/{queryId}/results/{pageNumber}/stream",
                "get",
                &[200, 400, 401, 403, 404, 405, 410, 500],
            ),
            (
                "/integrator/sites/{siteId}/queries/registered",
                "post",
                &[202, 400, 401, 403, 404, 405, 408, 413, 415, 500, 503],
            ),
            (
                "/integrator/sites/{siteId}/queries/registered",
                "get",
                &[200, 400, 401, 403, 404, 405, 500],
            ),
            (
                "/integrator/sites/{siteId}/queries/registered/{queryId}",
                "get",
                &[200, 400, 401, 403, 404, 405, 500],
            ),
            (
                "/integrator/sites/{siteId}/queries/registered/{queryId}",
                "delete",
                &[204, 400, 401, 403, 404, 405, 500],
            ),
            (
                "/integrator/sites/{siteId}/queries/registered/{queryId}/results",
                "get",
                &[200, 400, 401, 403, 404, 405, 410, 413, 500],
            ),
            (
                "/admin/integrators/{integrator}/webhooks",
                "put",
                &[200, 400, 401, 405, 408, 413, 415, 500],
            ),
            ("/admin/webhooks/dead-letters", "get", &[200, 401, 405, 500]),
        ];
        let mut documented = 0;
        for (path, method, want) in cases {
            let want: BTreeSet<u16> = want.iter().copied().collect();
            assert_eq!(statuses(&doc, path, method), want, "{method} {path}");
            documented += 1;
        }
        // No operation is left out of the table above.
        let operations: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(operations, documented);
    }

    /// The schema `schema` names, following one `$ref`.
    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
            None => schema,
        }
    }

    #[test]
    fn integrator_operations_carry_halos_ids_enums_formats_and_required_parameters() {
        let doc = document();
        let ops = [
            ("/integrator/sites", "get", "getSites"),
            ("/integrator/sites/{siteId}", "get", "getSite"),
            ("/integrator/pair-site", "post", "Integrator_PairSite"),
            ("/integrator/pairSite", "post", "pairSite"),
            (
                "/integrator/sites/{siteId}/queries/immediate",
                "post",
                "createImmediateQuery",
            ),
            (
                "/integrator/sites/{siteId}/queries/async",
                "post",
                "createAsyncQuery",
            ),
            (
                "/integrator/sites/{siteId}/queries/{queryId}",
                "get",
                "getQuery",
            ),
            (
                "/integrator/sites/{siteId}/queries/status",
                "post",
                "getQueryStatusBatch",
            ),
            (
                "/integrator/sites/{siteId}/queries/{queryId}/results/{pageNumber}",
                "get",
                "getResultPage",
            ),
            (
                "/integrator/sites/{siteId}/queries/{queryId}/results/{pageNumber}/stream",
                "get",
                "streamResultPage",
            ),
            (
                "/integrator/sites/{siteId}/queries/registered",
                "post",
                "createRegisteredQuery",
            ),
            (
                "/integrator/sites/{siteId}/queries/registered",
                "get",
                "getRegisteredQueries",
            ),
            (
                "/integrator/sites/{siteId}/queries/registered/{queryId}",
                "get",
                "getRegisteredQuery",
            ),
            (
                "/integrator/sites/{siteId}/queries/registered/{queryId}",
                "delete",
                "cancelRegisteredQuery",
            ),
            (
                "/integrator/sites/{siteId}/queries/registered/{queryId}/results",
                "get",
                "getRegisteredQueryResult",
            ),
        ];
        for (path, method, id) in ops {
            let op = &doc["paths"][path][method];
            assert_eq!(op["operationId"], id, "{path}");
            assert_eq!(op["security"][0]["subscriptionKey"], serde_json::json!([]));
            for param in op["parameters"].as_array().unwrap() {
                let name = param["name"].as_str().unwrap();
                let required = param["required"].as_bool().unwrap_or(false);
                assert_eq!(required, name != "pairingCode", "{path} {name}");
                let schema = resolve(&doc, &param["schema"]);
                match name {
                    "siteId" | "queryId" => assert_eq!(schema["format"], "uuid", "{path}"),
                    "pageNumber" => {
                        assert_eq!(schema["type"], "integer", "{path}");
                        assert_eq!(schema["minimum"], 1, "{path}");
                    }
                    "practiceManagementName" => assert_eq!(
                        schema["enum"],
                        serde_json::json!(["Best Practice", "Zedmed", "D4w"]),
                        "{path}"
                    ),
                    // As strict as the CRN's parser (1 to 20 ASCII letters and
                    // digits), so generated values are not mostly refused.
                    "practiceManagementSiteId" => {
                        assert_eq!(schema["pattern"], "^[A-Za-z0-9]{1,20}$", "{path}");
                        assert_eq!(schema["maxLength"], 20, "{path}");
                    }
                    _ => assert_eq!(schema["type"], "string", "{path} {name}"),
                }
            }
        }
        assert_eq!(
            doc["paths"]["/integrator/pairSite"]["post"]["deprecated"], true,
            "the alias is deprecated"
        );
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["ExecutionModeDto"]["enum"],
            serde_json::json!(["reader", "nonQuery", "scalar"])
        );
        assert_eq!(
            schemas["CommandTypeDto"]["enum"],
            serde_json::json!(["text", "storedProcedure"])
        );
        assert_eq!(
            schemas["ErrorTypeDto"]["enum"],
            serde_json::json!(["http", "mssql", "fbsql", "haloLink", "sqlite"])
        );
        assert_eq!(schemas["SiteDto"]["properties"]["id"]["format"], "uuid");
        for field in ["enrichedAt", "clientTimestampUTC", "heartbeatTimestampUTC"] {
            let prop = &schemas["SiteDto"]["properties"][field];
            let format = prop["format"]
                .as_str()
                .or_else(|| prop["oneOf"][0]["format"].as_str())
                .or_else(|| prop["type"].as_str().and(None));
            assert_eq!(format, Some("date-time"), "{field}: {prop}");
        }
        let query = &schemas["QueryDto"];
        for field in ["id", "integratorId", "siteId"] {
            assert_eq!(query["properties"][field]["format"], "uuid", "{field}");
        }
        let required: BTreeSet<&str> = query["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for field in [
            "id",
            "integratorId",
            "siteId",
            "mode",
            "status",
            "maxTimeInQueue",
            "commandSize",
            "createdAt",
            "updatedAt",
            "requestSize",
            "statusTiming",
            "metrics",
            "result",
            "completedAt",
        ] {
            assert!(required.contains(field), "{field} is required");
        }
        assert_eq!(
            schemas["AsyncQueryStatusDto"]["enum"],
            serde_json::json!([
                "initialising",
                "initialisationFailedCacheError",
                "initialisationFailedSiteOffline",
                "initialisationFailedSiteUnreachable",
                "queued",
                "expiredInQueue",
                "executing",
                "executionFailed",
                "uploading",
                "uploadFailed",
                "successful"
            ])
        );
        assert_eq!(
            schemas["RegisteredQueryStatusDto"]["enum"],
            serde_json::json!(["enabled", "cancelled", "completed"])
        );
        // The async path takes the immediate path's command.
        assert_eq!(
            schemas["AsyncQueryBody"]["properties"]["command"]["$ref"],
            "#/components/schemas/CommandDto"
        );
        assert_eq!(
            schemas["AsyncQueryBody"]["properties"]["maxTimeInQueue"]["maximum"],
            7_200_000
        );
        let command = &schemas["CommandDto"];
        assert_eq!(command["properties"]["text"]["minLength"], 1, "{command}");
        assert_eq!(command["properties"]["text"]["pattern"], "\\S", "{command}");
        assert_eq!(
            schemas["SiteDto"]["properties"]["createdAt"]["format"], "date-time",
            "{}",
            schemas["SiteDto"]
        );
        assert_eq!(
            command["required"],
            serde_json::json!(["text"]),
            "{command}"
        );
    }

    #[test]
    fn every_error_response_is_the_envelope_with_a_description() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('2') {
                        continue;
                    }
                    let schema = &response["content"]["application/json"]["schema"];
                    if path.ends_with("/queries/immediate") && status == "400" {
                        // The envelope, or the failed query with `errorDetails`.
                        assert_eq!(
                            schema["oneOf"][0]["$ref"], "#/components/schemas/ErrorEnvelope",
                            "{schema}"
                        );
                        assert_eq!(
                            schema["oneOf"][1]["$ref"], "#/components/schemas/FailedQueryDto",
                            "{schema}"
                        );
                    } else {
                        assert_eq!(
                            schema["$ref"], "#/components/schemas/ErrorEnvelope",
                            "{method} {path} {status}"
                        );
                    }
                    let code = StatusCode::from_u16(status.parse().unwrap()).unwrap();
                    assert_ne!(describe(code), "Error", "{status} has no description");
                    assert_eq!(response["description"], describe(code));
                }
            }
        }
        let limited = &doc["paths"]["/integrator/sites/{siteId}/queries/immediate"]["post"]["responses"]
            ["429"];
        assert_eq!(
            limited["headers"]["Retry-After"]["schema"]["type"], "integer",
            "{limited}"
        );
        assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());
    }
}
