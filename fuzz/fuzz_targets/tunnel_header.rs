//! `cargo fuzz run tunnel_header`: the property `tests::fuzz::tunnel_header` (tests/src/fuzz.rs) on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::tunnel_header(data));
