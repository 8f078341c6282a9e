//! `portcullis::fuzzing::tls_handshake`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::tls_handshake(data);
});
