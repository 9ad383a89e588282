//! `cargo fuzz run envfile`: the property `tests::fuzz::envfile` (tests/src/fuzz.rs) on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::envfile(data));
