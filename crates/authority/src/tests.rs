//! Unit tests of the election rules.
