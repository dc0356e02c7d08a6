//! What a Link sends back for a query: its output, or why it failed.

use std::time::Duration;

/// The result of a query the Link ran: the immediate result, already encoded by the
/// Link (the router neither parses nor copies it), plus the metrics the API reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryOutput {
    /// The rows: the base64 of their JSON text, as the Link sent it and as the
    /// integrator API answers it (`result.data`), so it is forwarded without being
    /// decoded and encoded again (the router never looks inside it).
    pub data: String,
    /// Bytes of the JSON text behind `data`: what the result limit counts.
    pub size: usize,
    /// How many rows `data` holds.
    pub rows: u64,
    /// How long the database spent executing the command.
    pub sql_execution: Duration,
}

/// Why a Link could not produce a result for a query it received.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryFailure {
    /// The database rejected or failed the command (rendered as `errorDetails`).
    #[error("query failed in the database: {error_type} {error_code}: {message}")]
    Database {
        /// The database's error class (for example `SqlException`).
        error_type: String,
        /// The database's error code.
        error_code: String,
        /// The database's message.
        message: String,
    },
    /// The Link refused the job because its epoch is older than the one it last saw
    /// for the database (authority moved while the job was queued).
    #[error("the site's authority changed while the query was queued")]
    StaleEpoch,
    /// The Link refused the job because its queue deadline had passed.
    #[error("the query waited longer than its maximum time in queue")]
    Expired,
    /// The Link refused to send a result over the size limit (HTTP 413).
    #[error("the result is larger than the link's limit")]
    TooLarge,
    /// The Link's own allowlist check at the database refused the command (HTTP 403).
    #[error("the link refused the command: {0}")]
    Denied(String),
    /// The Link is overloaded (HTTP 503).
    #[error("the link is busy")]
    Busy,
    /// The Link refused the job for another reason (for example the command touches
    /// something outside the allowlist it enforces again at the database).
    #[error("the link refused the query: {0}")]
    Refused(String),
}
