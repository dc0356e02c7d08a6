//! Fuzz target: see `halo_fuzz::checks::pms`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| halo_fuzz::checks::pms(data));
