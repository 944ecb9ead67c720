//! Fuzz target: see `portcullis::fuzzing::routing` for the input format and the invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::routing(data));
