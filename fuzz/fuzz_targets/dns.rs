//! `cargo fuzz run dns`: the property `tests::fuzz::dns` (tests/src/fuzz.rs) on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::dns(data));
