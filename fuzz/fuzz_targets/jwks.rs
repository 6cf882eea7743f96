//! Fuzz target `jwks`: see `introspectd_fuzz::jwks` for the entry point and its properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| introspectd_fuzz::jwks(data));
