//! A guest's output tar through `barn_protocol::manifest::Manifest::from_tar`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| barn_fuzz::output_tar(data));
