//! The JSON shapes of the integrator API (camelCase, as the public Halo Cloud API).
//! Only this crate serialises them; the core never sees these types.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A site: one PMS database behind one Link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteDto {
    /// The Halo GUID.
    pub id: String,
    /// `D4w`, `BestPractice` or `Zedmed`.
    pub pms_type: String,
    /// `online`, `offline` or `unreachable`, from the time the site was last heard.
    pub availability: String,
    /// `initialising`, `active`, `removed` or `uninstalled`.
    pub status: String,
    /// Whether this is its practice's authoritative site (the only one queries reach).
    pub authoritative: bool,
    /// The version of the Link serving the site.
    pub halo_link_version: String,
    /// The catalogues of the database.
    pub catalogue: Vec<CatalogueDto>,
    /// What identifies the practice.
    pub practice_metadata: PracticeMetadataDto,
}

/// A catalogue of a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogueDto {
    /// Catalogue name.
    pub name: String,
    /// Whether queries without a catalogue use it.
    pub is_default: bool,
}

/// The practice a site belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PracticeMetadataDto {
    /// The PMS type.
    pub pms_type: String,
    /// The practice name: the secondary identifier to check before trusting a CRN.
    pub practice_name: String,
    /// The parent CRN (the fake CRN for a demo or de-identified copy).
    pub practice_management_site_id: String,
    /// The PMS software version.
    pub practice_management_version: String,
}

/// `GET /integrator/sites` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SitesDto {
    /// The sites of the practice (the authoritative one flagged).
    pub sites: Vec<SiteDto>,
}

/// The query string naming a practice: `practiceManagementSiteId` and
/// `practiceManagementName` (`D4w`, `Best Practice`, `Zedmed`).
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PracticeQuery {
    /// The PMS ID: the parent CRN for D4W (or a demo copy's fake CRN).
    pub practice_management_site_id: Option<String>,
    /// The PMS name.
    pub practice_management_name: Option<String>,
}

/// `POST /integrator/sites/{siteId}/queries/immediate` body.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImmediateQueryDto {
    /// How long the query may wait for the site, in ms (default 30 000, 0 to 60 000).
    pub max_time_in_queue: Option<u64>,
    /// The catalogue; the default one when absent.
    pub catalogue: Option<String>,
    /// The command.
    pub command: CommandDto,
}

/// A SQL command.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandDto {
    /// The SQL text.
    pub text: String,
    /// `reader`, `nonQuery` or `scalar`.
    pub execution_mode: String,
    /// Always `text`.
    #[serde(rename = "type", default = "default_command_type")]
    pub command_type: String,
    /// Parameters, bound positionally.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub parameters: Vec<serde_json::Value>,
}

fn default_command_type() -> String {
    "text".to_owned()
}

/// A successful immediate query.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryDto {
    /// The query id.
    pub id: String,
    /// The integrator that ran it.
    pub integrator_id: String,
    /// The Halo GUID.
    pub site_id: String,
    /// Always `immediate`.
    pub mode: String,
    /// Always `successful` (failures are errors).
    pub status: String,
    /// When the Cloud accepted the query (RFC 3339).
    pub created_at: String,
    /// When the result arrived (RFC 3339).
    pub updated_at: String,
    /// Timings.
    pub metrics: MetricsDto,
    /// The rows.
    pub result: ResultDto,
}

/// Query timings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsDto {
    /// Time spent executing in the database, in ms.
    pub sql_execution_duration: u64,
}

/// The rows of a query.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResultDto {
    /// Number of rows (or rows changed, for `nonQuery`).
    pub rows: u64,
    /// Bytes of the JSON behind `data`.
    pub size: u64,
    /// Base64 of a JSON array of row objects.
    pub data: String,
}

/// Formats milliseconds since the epoch as RFC 3339 with milliseconds.
pub fn rfc3339(ts: halo_ids::Timestamp) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts.as_millis());
    humantime::format_rfc3339_millis(t).to_string()
}
