//! Fixtures shared by the benches, examples, fuzz targets and workspace tests, so
//! none of them includes another's source by `#[path]`.
//!
//! Each module sits behind a feature; a user enables only what it needs (the fuzz
//! workspace takes just `fuzz`, so its sanitizer build skips the router), and a
//! module is documented only where its feature is on:
//!
//! - feature `million`, module `million`: the 1 000 000-site tenancy mix of
//!   `benches/registry_build.rs` and `halo-tenancy`'s `snapshot_1m` example;
//! - feature `routing`, module `routing_harness`: the routing-throughput harness of
//!   `benches/routing.rs` and `halo-router`'s `route_bench` example;
//! - feature `fuzz`, module `fuzz_checks`: the properties every fuzz target checks,
//!   run by the targets under libFuzzer and over the committed corpus by
//!   `tests/fuzz_corpus.rs`.
//!
//! - module `damage` (no feature): page-level damage to a SQLite file, for the
//!   damaged-storage tests of `halo-store` and `halo-cloud`;
//! - module `machine` (no feature): load average, thread CPU time and resident set,
//!   which the benches report beside their wall times;
//! - module `postgres_server` (no feature): a throw-away PostgreSQL server
//!   (`initdb` on a temp dir, a free loopback port) for the cluster tests.
//!
//! Not published; a dev-dependency only. It depends on the core crates, never the
//! other way round at normal-dependency level.

pub mod damage;
#[cfg(feature = "fuzz")]
pub mod fuzz_checks;
pub mod machine;
#[cfg(feature = "million")]
pub mod million;
pub mod postgres_server;
#[cfg(feature = "routing")]
pub mod routing_harness;
