//! The one error type of the Link library.

use std::path::PathBuf;

/// Why the Link could not start, load its state, read a database or talk to the Cloud.
///
/// Query failures are not `LinkError`s: they travel back to the Cloud as
/// [`halo_protocol::QueryError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The configuration is invalid (caller fault; fix the file).
    #[error("invalid config: {0}")]
    Config(String),
    /// The state file cannot be read, parsed or written.
    #[error("state file {path}: {reason}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A database cannot be opened or does not hold a valid practice identity.
    #[error("database {path}: {reason}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The connection to the Cloud failed or broke (retryable).
    #[error("cloud connection: {0}")]
    Connection(String),
    /// The Cloud sent something this Link does not understand (retryable).
    #[error("protocol: {0}")]
    Protocol(#[from] halo_protocol::ProtocolError),
    /// The Cloud refused the Link's hello or credential.
    #[error("refused by the cloud: {0}")]
    Refused(String),
}
