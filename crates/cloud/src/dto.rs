//! The JSON shapes of the integrator API (camelCase), field for field those of Halo's
//! public integrator document (`integrator-openapi.json`, version 26.619): the same
//! names, enums, formats and required fields, so that a client written against that
//! document works unchanged. Only this crate serialises them; the core never sees
//! these types.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The PMS type of a site, as sites are described (`pmsType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum PmsTypeDto {
    /// Best Practice.
    BestPractice,
    /// Zedmed.
    Zedmed,
    /// Dental4Windows (and D4W Cloud / Dental4Web).
    D4w,
}

impl From<halo_ids::PmsType> for PmsTypeDto {
    fn from(t: halo_ids::PmsType) -> Self {
        match t {
            halo_ids::PmsType::BestPractice => Self::BestPractice,
            halo_ids::PmsType::Zedmed => Self::Zedmed,
            halo_ids::PmsType::D4w => Self::D4w,
        }
    }
}

/// The PMS name as the query string and the deprecated site fields spell it
/// (`practiceManagementName`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum PracticeManagementName {
    /// Best Practice.
    #[serde(rename = "Best Practice")]
    BestPractice,
    /// Zedmed.
    Zedmed,
    /// Dental4Windows.
    D4w,
}

impl From<halo_ids::PmsType> for PracticeManagementName {
    fn from(t: halo_ids::PmsType) -> Self {
        match t {
            halo_ids::PmsType::BestPractice => Self::BestPractice,
            halo_ids::PmsType::Zedmed => Self::Zedmed,
            halo_ids::PmsType::D4w => Self::D4w,
        }
    }
}

/// Whether a site can be reached, from the time it was last heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum AvailabilityDto {
    /// Heard recently.
    Online,
    /// Not heard for a while.
    Offline,
    /// Not heard for long, or never.
    Unreachable,
}

/// The life-cycle status of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum SiteStatusDto {
    /// Attached, not yet ready.
    Initialising,
    /// Ready for queries.
    Active,
    /// Its Link no longer serves the database.
    Removed,
    /// Its Link was uninstalled.
    Uninstalled,
}

/// A site: one PMS database behind one Link (Halo's `SiteForIntegrator`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiteDto {
    /// The Halo GUID.
    #[schema(format = Uuid)]
    pub id: String,
    /// The practice management software.
    pub pms_type: PmsTypeDto,
    /// From the time the site was last heard (its Link's last heartbeat).
    pub availability: AvailabilityDto,
    /// The life-cycle status.
    pub status: SiteStatusDto,
    /// The version of the Link serving the site.
    pub halo_link_version: String,
    /// When the practice's details were last read from the database by its Link
    /// (the Link's last announcement of the site), UTC.
    #[schema(format = DateTime)]
    pub enriched_at: String,
    /// The catalogues of the database.
    pub catalogue: Vec<CatalogueDto>,
    /// What identifies the practice.
    pub practice_metadata: PracticeMetadataDto,
    /// Deprecated: the practice name (`practiceMetadata.practiceName`).
    #[schema(deprecated)]
    pub name: String,
    /// Deprecated: the PMS site id (`practiceMetadata.practiceManagementSiteId`).
    #[schema(deprecated)]
    pub practice_management_site_id: String,
    /// Deprecated: the PMS name.
    #[schema(deprecated)]
    pub practice_management_name: PracticeManagementName,
    /// Deprecated: the PMS version (`practiceMetadata.practiceManagementVersion`).
    #[schema(deprecated)]
    pub practice_management_version: String,
    /// Deprecated: when the Cloud first registered the site (its Link's first
    /// announcement of this database under this installation), UTC. Absent only for
    /// a site restored from a snapshot written before the Cloud recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(deprecated, format = DateTime)]
    pub created_at: Option<String>,
    /// Deprecated: whether this is its practice's authoritative site (the only one
    /// queries reach).
    #[schema(deprecated)]
    pub authoritative: bool,
    /// Deprecated: the Link's own clock at its last heartbeat, UTC. Absent until
    /// the Link's first heartbeat since the Cloud started.
    #[serde(rename = "clientTimestampUTC", skip_serializing_if = "Option::is_none")]
    #[schema(deprecated, format = DateTime)]
    pub client_timestamp_utc: Option<String>,
    /// Deprecated: when the Cloud last heard the site's Link (its last heartbeat or
    /// connection), by the Cloud's clock, UTC. Absent until the Link connects after
    /// the Cloud started.
    #[serde(
        rename = "heartbeatTimestampUTC",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(deprecated, format = DateTime)]
    pub heartbeat_timestamp_utc: Option<String>,
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
    pub pms_type: PmsTypeDto,
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
    /// The sites of the practice (the authoritative one first).
    pub sites: Vec<SiteDto>,
}

/// The query string naming a practice.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PracticeQuery {
    /// The PMS ID: the parent CRN for D4W (or a demo copy's fake CRN): 1 to 20
    /// ASCII letters and digits.
    #[param(pattern = "^[A-Za-z0-9]{1,20}$", min_length = 1, max_length = 20)]
    pub practice_management_site_id: String,
    /// The PMS name (matched ignoring ASCII case).
    #[param(value_type = PracticeManagementName)]
    pub practice_management_name: String,
}

/// The query string of pair site: the practice, and the pairing code Best Practice
/// sites need.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PairQuery {
    /// The PMS ID: the parent CRN for D4W (or a demo copy's fake CRN): 1 to 20
    /// ASCII letters and digits.
    #[param(pattern = "^[A-Za-z0-9]{1,20}$", min_length = 1, max_length = 20)]
    pub practice_management_site_id: String,
    /// The PMS name (matched ignoring ASCII case).
    #[param(value_type = PracticeManagementName)]
    pub practice_management_name: String,
    /// A pairing code generated by the practice: required for Best Practice sites
    /// only (400 without it), not used for other PMS types.
    pub pairing_code: Option<String>,
}

impl PairQuery {
    /// The practice part.
    pub fn practice(&self) -> PracticeQuery {
        PracticeQuery {
            practice_management_site_id: self.practice_management_site_id.clone(),
            practice_management_name: self.practice_management_name.clone(),
        }
    }
}

/// How a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExecutionModeDto {
    /// Returns rows (the database is opened read-only).
    #[default]
    Reader,
    /// Returns the number of rows changed (`rowsAffected`); writes need write
    /// authorisation.
    NonQuery,
    /// Returns the first value of the first row.
    Scalar,
}

impl From<ExecutionModeDto> for halo_ids::ExecutionMode {
    fn from(m: ExecutionModeDto) -> Self {
        match m {
            ExecutionModeDto::Reader => Self::Reader,
            ExecutionModeDto::NonQuery => Self::NonQuery,
            ExecutionModeDto::Scalar => Self::Scalar,
        }
    }
}

/// How `command.text` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum CommandTypeDto {
    /// The text is one SQL statement.
    #[default]
    Text,
    /// The text names a stored procedure (see README: on a SQLite Link, a named,
    /// parameterised command of the Link's configuration).
    StoredProcedure,
}

/// A parameter's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum DirectionDto {
    /// Supplies a value.
    #[default]
    Input,
    /// Reads a value back.
    Output,
    /// Both.
    InputOutput,
    /// A stored procedure's return value.
    ReturnValue,
}

/// A parameter's SQL Server data type, as Halo names them; on SQLite it only says
/// how a value given as a string is bound (see [`ParameterDto`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[allow(missing_docs)] // SQL Server's own type names
pub enum SqlTypeDto {
    BigInt,
    Binary,
    Bit,
    Char,
    String,
    Date,
    DateTime,
    DateTime2,
    DateTimeOffset,
    Decimal,
    Float,
    Image,
    Int,
    Money,
    NChar,
    NText,
    NVarChar,
    Real,
    SmallDateTime,
    SmallInt,
    SmallMoney,
    Structured,
    Text,
    Time,
    Timestamp,
    TinyInt,
    Udt,
    UniqueIdentifier,
    VarBinary,
    VarChar,
    Variant,
    Xml,
}

/// A command parameter (Halo's `Parameter`). Bound by `name` (`@x`, `:x` or `x`)
/// when it has one, else by position (`?1`, `?2`, ...). `value` is a string or
/// null: with `type` `BigInt`, `Int`, `SmallInt`, `TinyInt` or `Bit` it is bound as
/// an integer, with `Float`, `Real`, `Decimal`, `Money` or `SmallMoney` as a real,
/// with `Binary`, `VarBinary` or `Image` as a blob (the value in base64), otherwise
/// as text. Output values come back in base64.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParameterDto {
    /// The parameter's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Input (default), output, inputOutput or returnValue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<DirectionDto>,
    /// The SQL Server type name.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub sql_type: Option<SqlTypeDto>,
    /// The value (a string, or null).
    #[serde(default)]
    pub value: Option<String>,
    /// The most bytes of the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// `POST /integrator/sites/{siteId}/queries/immediate` body (Halo's
/// `ImmediateCommand`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImmediateQueryDto {
    /// How long the query may wait to start on the site, in ms.
    #[schema(minimum = 0, maximum = 60000, default = 30000)]
    pub max_time_in_queue: Option<u64>,
    /// The catalogue; the site's default one when absent.
    pub catalogue: Option<String>,
    /// The command.
    pub command: CommandDto,
}

/// A command (Halo's `Command`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandDto {
    /// The SQL statement (one SQLite statement, or a `;` batch), or with `type:
    /// storedProcedure` the name of a procedure the site's Link defines. Not blank.
    #[schema(min_length = 1, pattern = "\\S")]
    pub text: String,
    /// How the command runs (default `reader`).
    #[serde(default)]
    #[schema(default = "reader")]
    pub execution_mode: ExecutionModeDto,
    /// How `text` is read (default `text`).
    #[serde(rename = "type", default)]
    #[schema(default = "text")]
    pub command_type: CommandTypeDto,
    /// Parameters.
    #[serde(default)]
    pub parameters: Vec<ParameterDto>,
}

/// The query mode; always `immediate` here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum QueryModeDto {
    /// An immediate query.
    Immediate,
}

/// The status of a successful query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum SuccessfulStatusDto {
    /// The query ran and its result is here.
    Successful,
}

/// The status of a query the database failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum FailedStatusDto {
    /// The command failed in the database (`errorDetails`).
    ExecutionFailed,
}

/// When a state began (and ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateTimeDto {
    /// When it began, UTC.
    #[schema(format = DateTime)]
    pub start_time: String,
    /// When it ended, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub end_time: Option<String>,
}

/// The server time (UTC) at which a query entered (and left) its states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusTimingDto {
    /// Accepted by the Cloud.
    pub initialising: StateTimeDto,
    /// Running in the database (start: when the result arrived less the database's
    /// own execution time).
    pub executing: StateTimeDto,
}

/// Query timings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsDto {
    /// Time spent executing in the database, in ms.
    pub sql_execution_duration: u64,
}

/// The rows of a `reader` or `scalar` query (Halo's `QueryResult`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RowsResultDto {
    /// Rows returned (1 or 0 for `scalar`).
    pub rows: u64,
    /// Bytes of the JSON behind `data`.
    pub size: u64,
    /// Base64 of the JSON: an array of row objects, or for `scalar` the one value
    /// (`null` when there is no row).
    #[schema(format = Byte)]
    pub data: String,
    /// Output and return-value parameters (stored procedures only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ParameterDto>,
}

/// The outcome of a `nonQuery` (Halo's `NonQueryResult`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NonQueryResultDto {
    /// Rows inserted, updated or deleted.
    pub rows_affected: u64,
    /// Bytes of result data (always 0).
    pub size: u64,
    /// Output and return-value parameters (stored procedures only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ParameterDto>,
}

/// A query's result.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ResultDto {
    /// `reader` and `scalar`.
    Rows(RowsResultDto),
    /// `nonQuery`.
    NonQuery(NonQueryResultDto),
}

/// A successful immediate query (Halo's `SuccessfulImmediateQuery`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryDto {
    /// The query id.
    #[schema(format = Uuid)]
    pub id: String,
    /// The integrator that ran it (a UUID derived from its id, stable).
    #[schema(format = Uuid)]
    pub integrator_id: String,
    /// The Halo GUID.
    #[schema(format = Uuid)]
    pub site_id: String,
    /// Always `immediate`.
    pub mode: QueryModeDto,
    /// Always `successful`.
    pub status: SuccessfulStatusDto,
    /// The time the query was allowed to wait to start, in ms.
    #[schema(minimum = 0, maximum = 60000)]
    pub max_time_in_queue: u64,
    /// Bytes of `command.text`.
    pub command_size: u64,
    /// Bytes of the request body.
    pub request_size: u64,
    /// When the Cloud accepted the query, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the result arrived, UTC.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// State timings.
    pub status_timing: StatusTimingDto,
    /// Timings.
    pub metrics: MetricsDto,
    /// The result.
    pub result: ResultDto,
    /// Bytes of the result data (as `result.size`).
    pub result_size: u64,
    /// When the query completed, UTC.
    #[schema(format = DateTime)]
    pub completed_at: String,
}

/// The error classes of a failed query (Halo's `QueryExecutionFailErrorType`, plus
/// `sqlite` for this project's SQLite Links).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ErrorTypeDto {
    /// A transfer error between the Cloud and the site.
    Http,
    /// Microsoft SQL Server error.
    Mssql,
    /// Firebird SQL error.
    Fbsql,
    /// An unexpected error in the Link.
    HaloLink,
    /// SQLite error (this project's Links): `errorCode` is SQLite's extended result
    /// code (<https://sqlite.org/rescode.html>), for example 1 `SQLITE_ERROR`
    /// (syntax error, no such table or column), 19/2067 `SQLITE_CONSTRAINT_UNIQUE`,
    /// 7 `SQLITE_NOMEM`.
    Sqlite,
}

/// What a query that failed in the database reports (`errorDetails`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetailsDto {
    /// The error class.
    pub error_type: ErrorTypeDto,
    /// The database's error code (SQLite's extended result code).
    pub error_code: i64,
    /// The database's message.
    pub error_message: String,
}

/// An immediate query the database failed (Halo's `ExecutionFailedImmediateQuery`),
/// answered with status 400.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedQueryDto {
    /// The query id.
    #[schema(format = Uuid)]
    pub id: String,
    /// The integrator that ran it.
    #[schema(format = Uuid)]
    pub integrator_id: String,
    /// The Halo GUID.
    #[schema(format = Uuid)]
    pub site_id: String,
    /// Always `immediate`.
    pub mode: QueryModeDto,
    /// Always `executionFailed`.
    pub status: FailedStatusDto,
    /// The time the query was allowed to wait to start, in ms.
    #[schema(minimum = 0, maximum = 60000)]
    pub max_time_in_queue: u64,
    /// Bytes of `command.text`.
    pub command_size: u64,
    /// Bytes of the request body.
    pub request_size: u64,
    /// When the Cloud accepted the query, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the failure arrived, UTC.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// State timings.
    pub status_timing: StatusTimingDto,
    /// Why the database failed the command.
    pub error_details: ErrorDetailsDto,
    /// When the query completed, UTC.
    #[schema(format = DateTime)]
    pub completed_at: String,
}

/// The last instant RFC 3339 can write (9999-12-31T23:59:59.999Z), in ms.
pub const MAX_RFC3339_MILLIS: u64 = 253_402_300_799_999;

/// Formats milliseconds since the epoch as RFC 3339 with milliseconds (an instant
/// past [`MAX_RFC3339_MILLIS`] is written as that one: never a panic).
pub fn rfc3339(ts: halo_ids::Timestamp) -> String {
    let ms = ts.as_millis().min(MAX_RFC3339_MILLIS);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use halo_ids::Timestamp;

    use super::*;

    #[test]
    fn rfc3339_writes_every_instant_without_panicking() {
        assert_eq!(
            rfc3339(Timestamp::from_millis(0)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(Timestamp::from_millis(u64::MAX)),
            "9999-12-31T23:59:59.999Z"
        );
    }
}
