//! `cargo fuzz run compose`: the property `tests::fuzz::compose` (tests/src/fuzz.rs) on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::compose(data));
