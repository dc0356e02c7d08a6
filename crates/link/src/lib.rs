//! The Link agent: serves local PMS databases to the Cloud over WebSocket.
//!
//! A Link runs beside one or more practice databases (here SQLite files playing
//! the D4W database) and keeps one outbound WebSocket to the Cloud, speaking
//! [`halo_protocol`]. It:
//!
//! - reads its [`LinkConfig`] (where the Cloud is, its environment and credential,
//!   which database files to serve);
//! - reads each database's identity **from the database** ([`DatabaseIdentity`]);
//! - keeps its Link GUID and every Halo GUID in a state file ([`LinkState`]);
//!   deleting it is a reinstall;
//! - refuses demo or de-identified databases when it is a Production Link;
//! - runs each [`halo_protocol::QueryJob`] only on the database whose Halo GUID it
//!   carries, through [`execute_with`] (read-only unless authorised to write, the
//!   allowlist enforced by SQLite's authorizer, deadline, 8 MiB cap, epoch fence).
//!
//! In-process use (the Cloud's demo and tests):
//!
//! ```no_run
//! # async fn f() -> Result<(), halo_link::LinkError> {
//! use halo_link::{Agent, LinkConfig};
//! let config = LinkConfig::new(
//!     "ws://127.0.0.1:8080/link/ws",
//!     halo_ids::Environment::Stage,
//!     "link-token",
//!     "/tmp/link-state.json",
//!     vec!["/tmp/practice.sqlite".into()],
//! );
//! let link = Agent::prepare(config)?;
//! let handle = link.spawn();
//! handle.wait_connected(1, std::time::Duration::from_secs(5)).await?;
//! handle.shutdown().await?;
//! # Ok(()) }
//! ```

mod agent;
mod config;
pub mod demo;
pub mod doctor;
mod error;
mod executor;
mod identity;
pub mod metrics;
mod procedure;
mod state;

pub use agent::{Agent, AgentHandle, ConnectionStatus, RefusedDatabase};
pub use config::LinkConfig;
pub use error::LinkError;
pub use executor::{
    ALLOWED_FUNCTIONS, Database, JobControl, JobOutput, PageSink, SqlLimits, execute,
    execute_paged, execute_with, execute_within,
};
pub use identity::DatabaseIdentity;
pub use procedure::{Procedure, ProcedureConfig, Procedures};
pub use state::{DatabaseState, LinkState};

#[cfg(test)]
mod tests;
