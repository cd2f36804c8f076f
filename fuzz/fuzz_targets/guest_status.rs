//! A guest's `status` record through `barn_protocol::guest::parse_status`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| barn_fuzz::guest_status(data));
