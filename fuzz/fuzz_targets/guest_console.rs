//! Every line of a guest's serial console through `barn_protocol::guest::parse_mark`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| barn_fuzz::guest_console(data));
