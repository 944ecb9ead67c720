//! Fuzz target: see `portcullis::fuzzing::signature_keys` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::signature_keys(data));
