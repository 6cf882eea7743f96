//! Fuzz target `introspect_answer`: see `introspectd_fuzz::introspect_answer` for the entry point and its properties.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| introspectd_fuzz::introspect_answer(data));
