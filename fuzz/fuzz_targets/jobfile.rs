//! `barn.toml` through `barn_protocol::jobfile::parse` and `validate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| barn_fuzz::jobfile(data));
