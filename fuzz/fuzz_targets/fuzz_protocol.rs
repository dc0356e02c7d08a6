//! Fuzz target: see `halo_test_support::fuzz_checks::protocol`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| halo_test_support::fuzz_checks::protocol(data));
