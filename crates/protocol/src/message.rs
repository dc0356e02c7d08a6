//! The message types, one per frame, and the records they carry.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use halo_ids::{Crn, Environment, Epoch, ExecutionMode, HaloGuid, LinkGuid, PmsType, Timestamp};
use serde::{Deserialize, Serialize};

use crate::ProtocolError;

/// A message from the Link to the Cloud.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum LinkToCloud {
    /// First message on every connection: who the Link is and what it serves.
    Hello(Hello),
    /// Periodic liveness signal.
    Heartbeat(Heartbeat),
    /// A job finished successfully.
    QueryResult(QueryResult),
    /// A job was refused or failed.
    QueryFailed(QueryFailed),
    /// One page of a paged result (see [`crate::StreamJob`]).
    ResultPage(crate::ResultPage),
    /// The last message of a paged result.
    ResultEnd(crate::ResultEnd),
}

/// A message from the Cloud to the Link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum CloudToLink {
    /// The hello was accepted; the session is open.
    #[serde(rename_all = "camelCase")]
    HelloAck {
        /// Databases of the hello the Cloud did not register, with why.
        #[serde(default)]
        rejected: Vec<DatabaseRejection>,
        /// The heartbeat interval the Cloud asks for, if it asks for one.
        #[serde(default)]
        heartbeat_interval_ms: Option<u64>,
    },
    /// The hello (or the credential) was refused; the Cloud closes the connection.
    Refused {
        /// A human-readable reason, logged by the Link.
        reason: String,
    },
    /// Run a query on one database.
    QueryJob(QueryJob),
    /// Stop a running job.
    #[serde(rename_all = "camelCase")]
    Cancel {
        /// The job to stop.
        query_id: u64,
    },
    /// Run a query and send its result in pages.
    StreamJob(crate::StreamJob),
    /// The Cloud stored `pages` more pages of a paged result: the Link may send as
    /// many more.
    #[serde(rename_all = "camelCase")]
    StreamAck {
        /// The job.
        query_id: u64,
        /// How many pages were stored since the last acknowledgement.
        pages: u32,
    },
}

/// The Link's introduction: identity, environment and the databases it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// This Link installation.
    pub link_guid: LinkGuid,
    /// The Link's environment; a Production Link never announces demo databases.
    pub environment: Environment,
    /// The Link software version (for the site's `haloLinkVersion`).
    pub link_version: String,
    /// Must equal [`crate::PROTOCOL_VERSION`]; [`crate::decode`] rejects others.
    pub protocol_version: u32,
    /// The databases served, each with the identity read from the database itself.
    pub databases: Vec<DatabaseInfo>,
}

/// One database as the Link announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseInfo {
    /// The database's Halo GUID (kept in the Link's state file).
    pub halo_guid: HaloGuid,
    /// Which PMS the database belongs to.
    pub pms_type: PmsType,
    /// The real parent CRN read from the database. For a demo copy it is not
    /// unique; the Cloud then uses the fake CRN derived from `halo_guid`.
    pub parent_crn: Crn,
    /// Branch (local) CRNs with their locations; they never route.
    pub branch_crns: Vec<BranchCrn>,
    /// Practice name (the secondary identifier).
    pub practice_name: String,
    /// PMS software version.
    pub pms_version: String,
    /// Catalogues (logical databases) an integrator may name.
    pub catalogues: Vec<CatalogueInfo>,
    /// Whether the database is a demo or de-identified copy.
    pub is_demo: bool,
}

/// A branch (local) CRN with its location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchCrn {
    /// The branch CRN.
    pub crn: Crn,
    /// The branch location, e.g. a suburb.
    pub location: String,
}

/// A catalogue of a database, as the Link announces it (the wire form of
/// `halo_tenancy::Catalogue`, which the event log writes with other field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogueInfo {
    /// Catalogue name.
    pub name: String,
    /// Whether queries without a catalogue use this one.
    pub is_default: bool,
}

/// A database of a hello that the Cloud did not register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRejection {
    /// The database.
    pub halo_guid: HaloGuid,
    /// Why it was not registered.
    pub reason: String,
}

/// Liveness signal with the databases still served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// The Link's clock when sent (informational; the Cloud uses its own clock).
    pub at: Timestamp,
    /// Halo GUIDs of the databases currently served (`sites` on the wire).
    #[serde(rename = "sites")]
    pub databases: Vec<HaloGuid>,
}

/// The components the Cloud authorised for one job; the Link enforces them again.
///
/// Names are normalised to lower case, without schema or catalogue prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allowlist {
    /// Tables and views that may be read (and written, if `allow_write`).
    pub tables: Vec<String>,
    /// Stored procedures that may be called.
    pub procedures: Vec<String>,
    /// Whether a `nonQuery` job may write to the allowed tables.
    pub allow_write: bool,
}

/// Run a query on one database.
///
/// **Deadline.** `timeout_ms` is *relative*: the Link stops the job `timeout_ms`
/// after it receives it, so Cloud and Link clocks need not agree. The Cloud keeps
/// its own timer as well and answers the integrator when its timer fires.
///
/// **Queue budget.** `queue_timeout_ms` (the integrator's `maxTimeInQueue`, less
/// what the Cloud already spent) is relative too: a job that has not *started*
/// running `queue_timeout_ms` after the Link received it (every worker busy, or
/// its database's share of them) is answered with [`QueryErrorKind::Busy`] and
/// never runs. Absent (a Cloud older than the field), the whole `timeout_ms` is
/// the queue budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryJob {
    /// Identifies the job in the answer and in [`CloudToLink::Cancel`].
    pub query_id: u64,
    /// The one database the job may run on.
    pub halo_guid: HaloGuid,
    /// The authority epoch (fencing token) of the route; the Link refuses an epoch
    /// older than the highest it has seen for this database. A plain number on the wire.
    pub epoch: Epoch,
    /// Execution budget in milliseconds from receipt (see the type docs).
    pub timeout_ms: u64,
    /// Queue budget in milliseconds from receipt: the job must start by then
    /// (see the type docs). `None` means `timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
    /// Catalogue to use; `None` means the default one.
    #[serde(default)]
    pub catalogue: Option<String>,
    /// Execution mode; `nonQuery` writes only when [`Allowlist::allow_write`] is set.
    pub mode: ExecutionMode,
    /// The SQL text (empty when `procedure` is set).
    pub command: String,
    /// The name of a procedure configured at the Link, to run instead of
    /// `command` (`command.type: storedProcedure`); the Link refuses a name it has
    /// not configured for this database, and one not in [`Allowlist::procedures`].
    /// `command` is then empty, so a Link older than the field refuses the job as
    /// holding no statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub procedure: Option<String>,
    /// Parameters: a plain JSON value binds positionally (`?1`, `?2`, ...); an
    /// object `{"name": "@x", "value": v}` binds by name.
    #[serde(default)]
    pub parameters: Vec<serde_json::Value>,
    /// Authorised components.
    pub allowlist: Allowlist,
}

/// A successful job.
///
/// `data` is the base64 of a compact JSON array of row objects (columns in
/// select order), exactly the integrator API's `result.data`; `size` is the byte
/// length of that JSON before base64. For `scalar` it is one JSON value, the first
/// column of the first row (`null`, with `rows` 0, when there is no row); for
/// `nonQuery` it is `[]` and `rows` is the number of rows changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    /// The job.
    pub query_id: u64,
    /// Rows returned (reader, scalar) or changed (nonQuery).
    pub rows: u64,
    /// Byte length of the JSON behind `data`.
    pub size: u64,
    /// Base64 of the JSON array of rows.
    pub data: String,
    /// Time spent executing in the database, in milliseconds.
    pub duration_ms: u64,
}

impl QueryResult {
    /// Builds a result from the JSON text of the rows.
    pub fn from_json(query_id: u64, rows: u64, json: &[u8], duration_ms: u64) -> Self {
        Self {
            query_id,
            rows,
            size: json.len() as u64,
            data: BASE64.encode(json),
            duration_ms,
        }
    }

    /// The JSON text of the rows (`data` decoded from base64).
    ///
    /// # Errors
    ///
    /// [`ProtocolError::BadData`] if `data` is not valid base64.
    pub fn json(&self) -> Result<Vec<u8>, ProtocolError> {
        rows_json(&self.data)
    }
}

/// The JSON text of rows from a result's or a page's `data` (base64, as the Link
/// sends it and the integrator API answers it).
///
/// # Errors
///
/// [`ProtocolError::BadData`] if `data` is not valid base64.
pub fn rows_json(data: &str) -> Result<Vec<u8>, ProtocolError> {
    BASE64
        .decode(data.as_bytes())
        .map_err(|_| ProtocolError::BadData)
}

/// A refused or failed job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryFailed {
    /// The job.
    pub query_id: u64,
    /// What went wrong.
    pub error: QueryError,
}

/// Why a job did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{kind:?}: {message}")]
pub struct QueryError {
    /// The classification the Cloud maps to an HTTP status.
    pub kind: QueryErrorKind,
    /// The database's own error code, for [`QueryErrorKind::Database`].
    #[serde(default)]
    pub code: Option<i64>,
    /// Human-readable message; never contains another tenant's data.
    pub message: String,
}

impl QueryError {
    /// An error of `kind` with no database code.
    pub fn new(kind: QueryErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: None,
            message: message.into(),
        }
    }
}

/// Classification of a [`QueryError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum QueryErrorKind {
    /// The job's epoch is older than one the Link already saw for the database.
    StaleEpoch,
    /// The job ran past its deadline and was stopped (HTTP 504).
    Timeout,
    /// The result exceeds [`crate::MAX_RESULT_BYTES`] (HTTP 413).
    TooLarge,
    /// The command touches a component outside the allowlist, writes without
    /// permission, or uses a forbidden statement (HTTP 403).
    Denied,
    /// The database reported an error (bad SQL, constraint, ...).
    Database,
    /// The Link serves no database with the job's Halo GUID.
    #[serde(rename = "unknownSite")]
    UnknownDatabase,
    /// The job was cancelled by the Cloud.
    Cancelled,
    /// The job names an unknown catalogue or has unusable parameters.
    BadRequest,
    /// The Link cannot take the job: its database's queue is full, or the job
    /// did not start within its queue budget (`queueTimeoutMs`) (HTTP 503).
    Busy,
    /// Anything else on the Link side.
    Internal,
}
