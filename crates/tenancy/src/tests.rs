//! Unit tests of the registration rules and the seed-document scenarios.
