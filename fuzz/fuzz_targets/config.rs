//! Fuzz target `config`: see `introspectd_fuzz::config` for the entry point and its properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| introspectd_fuzz::config(data));
