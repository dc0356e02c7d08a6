//! How a command runs: the integrator API's `executionMode`, also on the Link wire.

/// How a command is executed (the API's `executionMode`). Policy decides on it, the
/// router stamps it on the job, and the Link opens the database accordingly. Serde
/// uses the API names `reader`, `nonQuery`, `scalar` (the Cloud ↔ Link protocol
/// carries the same text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ExecutionMode {
    /// Returns rows; the database is opened read-only.
    Reader,
    /// Returns a row count; a write, allowed only with write authorisation (the job's
    /// allowlist then permits writing).
    NonQuery,
    /// Returns the first column of the first row; read-only.
    Scalar,
}
