//! `cargo fuzz run http_sniff`: the property `tests::fuzz::http_sniff` (tests/src/fuzz.rs) on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::http_sniff(data));
