//! Fuzz target: see `halo_fuzz::checks::site_descriptor`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| halo_fuzz::checks::site_descriptor(data));
