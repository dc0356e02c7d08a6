//! Fuzz target: see `halo_test_support::fuzz_checks::sql`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| halo_test_support::fuzz_checks::sql(data));
