//! Unit tests of the policy crate.
