//! Fuzz inputs replayed through the same in-memory harness the fuzz targets use
//! (`portcullis::fuzzing`): every seed, and every input a fuzzer found a problem with
//! (minimized, under `fuzz/regressions/<target>/`, named after the fix). A broken
//! invariant panics; the tests below also check that the harness really serves.

use std::path::Path;

use portcullis::fuzzing::{self, seeds};

fn target(name: &str) -> fn(&[u8]) -> Vec<u8> {
    match name {
        "tls_handshake" => fuzzing::tls_handshake,
        "http1_connection" => fuzzing::http1_connection,
        "http2_connection" => fuzzing::http2_connection,
        "tls_http" => fuzzing::tls_http,
        other => panic!("unknown target {other}"),
    }
}

fn seed(target_name: &str, name: &str) -> Vec<u8> {
    let seed = seeds::all()
        .into_iter()
        .find(|s| s.target == target_name && s.name == name)
        .unwrap_or_else(|| panic!("no seed {target_name}/{name}"));
    target(target_name)(&seed.data)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// HTTP/2 frames of one type in a server's output.
fn h2_frames(out: &[u8], kind: u8) -> usize {
    let (mut pos, mut found) = (0, 0);
    while pos + 9 <= out.len() {
        let len = u32::from_be_bytes([0, out[pos], out[pos + 1], out[pos + 2]]) as usize;
        found += usize::from(out[pos + 3] == kind);
        pos += 9 + len;
    }
    found
}

#[test]
fn every_seed_replays_without_breaking_an_invariant() {
    let all = seeds::all();
    for target_name in [
        "tls_handshake",
        "http1_connection",
        "http2_connection",
        "tls_http",
    ] {
        let mine: Vec<_> = all.iter().filter(|s| s.target == target_name).collect();
        assert!(mine.len() >= 4, "too few seeds for {target_name}");
        for seed in mine {
            eprintln!("replaying seed {target_name}/{}", seed.name);
            target(target_name)(&seed.data);
        }
    }
}

#[test]
fn every_regression_input_replays_without_breaking_an_invariant() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = Vec::new();
    for target_name in [
        "tls_handshake",
        "http1_connection",
        "http2_connection",
        "tls_http",
    ] {
        let dir = root.join(target_name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A target without regressions yet has no directory; say so, loudly.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!(
                    "no regression inputs for {target_name} ({} is absent)",
                    dir.display()
                );
                continue;
            }
            Err(e) => panic!("{}: {e}", dir.display()),
        };
        let mut files: Vec<_> = entries
            .map(|e| {
                e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                    .path()
            })
            .collect();
        files.sort();
        for file in files {
            eprintln!("replaying {}", file.display());
            let input = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let out = target(target_name)(&input);
            if file.ends_with("tls_handshake/plain-http-answer-is-not-a-tls-record") {
                // `END ` after a chunk header: plain HTTP on the TLS port, answered in
                // plain text (the fuzzer found the harness taking it for a bad record).
                assert!(
                    out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"),
                    "plain HTTP on the TLS port got {:?}",
                    String::from_utf8_lossy(&out[..out.len().min(80)])
                );
            }
            replayed.push(file);
        }
    }
    // The inputs committed under fuzz/regressions/ (the response-slot leak of
    // http1_connection, at least) must all have been found and replayed.
    assert!(
        replayed
            .iter()
            .any(|f| f.ends_with("http1_connection/slot-leak-every-request")),
        "the slot-leak regression input was not replayed (replayed: {replayed:?})"
    );
    let committed = std::process::Command::new("git")
        .args(["ls-files", "--", "fuzz/regressions"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count());
    match committed {
        Some(n) => assert_eq!(
            replayed.len(),
            n,
            "git tracks {n} files under fuzz/regressions, {} were replayed",
            replayed.len()
        ),
        None => eprintln!("git not available: replayed {} inputs", replayed.len()),
    }
}

#[test]
fn committed_seed_files_match_the_generator() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for seed in seeds::all() {
        let path = root.join(seed.target).join(seed.name);
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `cargo run --bin make_seeds` in fuzz/)",
                path.display()
            )
        });
        if seed.target == "tls_handshake" {
            // A ClientHello carries fresh randoms and key shares each time it is made:
            // compare its shape (record header, handshake type and length). The files are
            // made with the default provider (aws-lc-rs, with an X25519MLKEM768 key share);
            // a ring build's ClientHello is shorter, so there only the client choice (the
            // first byte) is compared.
            if cfg!(feature = "aws-lc-rs") {
                assert_eq!(on_disk.len(), seed.data.len(), "{}", path.display());
                assert_eq!(on_disk[..9], seed.data[..9], "{}", path.display());
            } else {
                assert_eq!(on_disk.first(), seed.data.first(), "{}", path.display());
            }
        } else {
            assert!(
                on_disk == seed.data,
                "{} is stale: run `cargo run --bin make_seeds` in fuzz/",
                path.display()
            );
        }
    }
}

#[test]
fn the_http1_harness_serves_pipelined_requests_in_order() {
    let out = seed("http1_connection", "pipelined");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert_eq!(count(&out, b"HTTP/1.1 200 OK\r\n"), 2, "{text}");
    assert_eq!(count(&out, b"HTTP/1.1 404 Not Found\r\n"), 1, "{text}");
}

#[test]
fn the_http1_harness_keeps_deadlines_on_its_own_clock() {
    // The rest of the head comes 2.5 s (of the manual clock) later than the first line:
    // past the 2 s header timeout, so no response is written.
    let out = seed("http1_connection", "slow_head");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    // A body that stalls past the body timeout (2 s of the manual clock): a small body is
    // collected before the handler runs, so the connection answers 408 itself.
    let out = seed("http1_connection", "slow_body");
    assert!(
        out.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn the_http1_harness_answers_malformed_requests_with_400() {
    let out = seed("http1_connection", "bad_request");
    assert!(
        out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let out = seed("http1_connection", "http10_no_host");
    assert!(
        out.starts_with(b"HTTP/1.1 200") || out.starts_with(b"HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn the_http2_harness_answers_every_stream() {
    let out = seed("http2_connection", "many_streams");
    assert_eq!(h2_frames(&out, 1), 4, "one HEADERS per stream");
    let out = seed("http2_connection", "post_with_data");
    assert_eq!(h2_frames(&out, 1), 1);
    assert!(h2_frames(&out, 0) >= 1, "a DATA frame");
}

#[test]
fn the_tls_harness_completes_handshakes_and_serves_both_protocols() {
    let out = seed("tls_handshake", "client_hello_h2_http11");
    assert_eq!(
        out.first(),
        Some(&22),
        "a handshake record (ServerHello) comes back"
    );
    let plaintext = seed("tls_http", "http11_get");
    assert!(
        plaintext.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&plaintext)
    );
    let plaintext = seed("tls_http", "tls12_http11_pipelined");
    assert_eq!(count(&plaintext, b"HTTP/1.1 200 OK\r\n"), 2);
    let plaintext = seed("tls_http", "h2_get");
    assert_eq!(h2_frames(&plaintext, 1), 1, "one HEADERS frame over TLS");
}
