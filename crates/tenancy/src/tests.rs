//! Unit tests of the registration rules and the seed-document scenarios.

mod event_binary;
mod event_decode;
mod fixture;
mod props;
mod scenarios;
mod sizes;
mod snapshot;
mod snapshot_binary;
