//! Fuzz target `discovery`: see `introspectd_fuzz::discovery` for the entry point and its properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| introspectd_fuzz::discovery(data));
