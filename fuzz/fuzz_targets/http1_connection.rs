//! `portcullis::fuzzing::http1_connection`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::http1_connection(data);
});
