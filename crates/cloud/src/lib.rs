//! The Cloud: the axum HTTP API for integrators and administrators, and the
//! WebSocket endpoint Links connect to. An adapter: handlers parse, call the core
//! (`halo-tenancy`, `halo-policy`, `halo-router`), and map results to the API's
//! JSON and statuses; state changes go through the durable log (`halo-store`)
//! before they are visible.
//!
//! Start a server in-process with [`start`]; the `halo-cloud` binary wraps it.

pub mod activity;
pub mod admin;
pub mod admin_audit;
pub mod app;
pub mod audit;
pub mod audit_form;
pub mod clock;
pub mod cluster;
pub mod console;
pub mod counters;
pub mod dto;
pub mod error;
pub mod extract;
pub mod forward;
pub mod heartbeat;
pub mod integrator;
pub mod lease;
pub mod link_ws;
pub mod metrics;
pub mod openapi;
mod packed;
pub mod queries;
pub mod record;
mod record_bin;
mod record_de;
mod registry_form;
mod serve;
pub mod site_view;
pub mod state;
pub mod status;
pub mod webhooks;

pub use app::{
    App, AppState, CloudConfig, HttpLimits, RunningCloud, StartError, build, build_cluster,
    build_with, routes, start, start_cluster, start_with,
};
pub use clock::now;
pub use cluster::ClusterConfig;
pub use dto::{ImmediateQueryDto, QueryDto, SiteDto, SitesDto};
pub use error::ApiError;
pub use extract::KEY_HEADER;
pub use openapi::ApiDoc;
pub use queries::JobsConfig;
pub use record::{CredentialEvent, Record};
pub use state::{CloudState, Snapshot, StateConfig};
