#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgbuild_fuzz::harness::tar(data));
