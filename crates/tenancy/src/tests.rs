//! Unit tests of the registration rules and the seed-document scenarios.

mod fixture;
mod props;
mod scenarios;
mod snapshot;
