//! Fuzz target: see `portcullis::fuzzing::config` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::config(data));
