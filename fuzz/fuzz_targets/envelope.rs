//! Signed envelopes and every message kind's decoder (`barn_protocol::envelope`, `message`, `cbor`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| barn_fuzz::envelope(data));
