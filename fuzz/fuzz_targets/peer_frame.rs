#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft::fuzz::peer_frame(data));
