//! Fuzz target `validate`: see `introspectd_fuzz::validate` for the entry point and its properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| introspectd_fuzz::validate(data));
