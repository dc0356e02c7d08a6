//! End-to-end scenarios: a real Cloud on loopback HTTP, real Links over WebSocket,
//! real SQLite databases. One module per area; fixtures in `fixture.rs`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod async_queries;
mod audit;
mod cluster;
mod cluster_limits;
mod cluster_links;
mod cluster_partition;
mod console;
mod contract;
mod crash;
mod dialect;
mod failures;
mod fairness;
mod fixture;
mod flow;
mod hostile;
mod http_edges;
mod large_result;
mod link_trust;
mod metrics;
mod processes;
mod tenancy;
mod visibility;
mod webhooks;
