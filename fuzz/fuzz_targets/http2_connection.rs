//! `portcullis::fuzzing::http2_connection`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::http2_connection(data);
});
