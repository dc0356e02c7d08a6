//! The one error type of this crate.

/// Why a grant event could not be applied, or a command could not be understood.
///
/// SQL errors are caller faults: the command is denied (fail closed). Grant errors are
/// caller faults of the administration API: the event is refused and the grants are
/// left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// An integrator id was not a lowercase slug of 1 to 64 characters.
    #[error("invalid integrator id: {0}")]
    InvalidIntegratorId(&'static str),
    /// A key hash was not 64 hex digits.
    #[error("invalid key hash: must be 64 hex digits")]
    InvalidKeyHash,
    /// The key is already issued (to this or another integrator).
    #[error("key already issued")]
    KeyInUse,
    /// The key to revoke is not issued to that integrator.
    #[error("key not issued to this integrator")]
    KeyNotIssued,
    /// A component name (table, procedure, catalogue) was empty or malformed.
    #[error("invalid component name: {0}")]
    InvalidName(String),
    /// A quota or rate limit of zero, or a burst smaller than one.
    #[error("invalid limit: {0}")]
    InvalidLimit(&'static str),
    /// A CIDR in an allowlist did not parse.
    #[error("invalid cidr: {0}")]
    InvalidCidr(String),
    /// The SQL text held no statement.
    #[error("sql command is empty")]
    EmptySql,
    /// The SQL text did not parse (the parser message, which quotes only the
    /// caller's own text).
    #[error("sql command does not parse: {0}")]
    SqlParse(String),
    /// The SQL parsed but uses a construct this crate does not analyse, so it is
    /// denied rather than guessed at.
    #[error("sql construct not supported: {0}")]
    SqlUnsupported(&'static str),
    /// The SQL text could be lexed differently by the analyser (sqlparser) and the
    /// database that runs it (SQLite): where a comment, string, name or parameter
    /// ends. It is refused, never guessed at.
    #[error("sql command refused: {0}; the analyser and SQLite could read it differently")]
    SqlAmbiguous(&'static str),
    /// A grants snapshot had a format version this build does not read.
    #[error("grants snapshot format version {0} is not supported")]
    UnsupportedSnapshotVersion(u32),
    /// A grants snapshot's parts do not fit together (damaged or forged).
    #[error("invalid grants snapshot: {0}")]
    InvalidSnapshot(&'static str),
}

impl PolicyError {
    /// Whether this refusal of a command by
    /// [`extract_components`](crate::extract_components) means the command itself is
    /// malformed (empty, not parsed, or text the analyser and SQLite could read
    /// differently): a bad request, as Halo answers malformed SQL, rather than a
    /// denial. A construct the analyser does not read
    /// ([`PolicyError::SqlUnsupported`]) stays a denial
    /// ([`Deny::unanalysable`](crate::Deny::unanalysable)).
    pub fn is_malformed_command(&self) -> bool {
        matches!(
            self,
            PolicyError::EmptySql | PolicyError::SqlParse(_) | PolicyError::SqlAmbiguous(_)
        )
    }
}
