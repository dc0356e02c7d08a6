//! The OpenAPI document of the integrator and admin APIs, generated from the
//! handlers' annotations and served at `/openapi.json`.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::{admin, dto, error, integrator};

/// The OpenAPI document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "Halo Connect Cloud", description = "Integrator and administration APIs."),
    paths(
        integrator::find_sites,
        integrator::site_status,
        integrator::pair_site,
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
    ),
    components(schemas(
        dto::SiteDto, dto::SitesDto, dto::CatalogueDto, dto::PracticeMetadataDto,
        dto::ImmediateQueryDto, dto::CommandDto, dto::QueryDto, dto::MetricsDto, dto::ResultDto,
        error::ErrorEnvelope, error::ErrorBody, error::ErrorDetails,
        admin::PmsTypeBody, admin::ComponentsBody, admin::PracticeBody, admin::KeyBody,
        admin::SecretDto, admin::CredentialBody, admin::CredentialSecretDto, admin::CredentialDto,
        admin::ActionBody, admin::ScopeBody, admin::PromoteBody, admin::AdminSiteDto,
    )),
    modifiers(&Security),
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
