//! `Limits::max_request_body_bytes` on both protocols: a declared `Content-Length` over it
//! gets `413` before the handler runs; a body without a declared length that grows past it
//! fails the handler's read and the client gets `413`. And the bounded drain of a body the
//! handler does not read: curl over HTTP/2 gets the response instead of a reset.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use hyper::{StatusCode, Version};
use portcullis::{Body, ConnectionInfo, Error, IntoResponse, Limits, Request, Response};

const LIMIT: u64 = 100 * 1024;

/// `/collect` reads the body with `into_bytes` and answers its length (its error on
/// failure: 413 past the limit); `/swallow` reads it and answers 200 whatever the read
/// gave; anything else ignores the body. `runs` counts handler calls.
fn limited_server(runs: Arc<AtomicUsize>) -> portcullis::ServerHandle {
    let mut limits = Limits::default();
    limits.max_request_body_bytes = LIMIT;
    tls_server()
        .limits(limits)
        .spawn(move |req: Request, _info: ConnectionInfo| {
            runs.fetch_add(1, Ordering::SeqCst);
            match req.uri().path() {
                "/collect" => req
                    .into_body()
                    .into_bytes()
                    .map(|bytes| format!("{} bytes\n", bytes.len()))
                    .into_response(),
                "/swallow" => {
                    let mut sink = Vec::new();
                    let result = req.into_body().read_to_end(&mut sink);
                    format!("read: {result:?}\n").into_response()
                }
                _ => Response::new(Body::from("ignored\n")),
            }
        })
        .expect("spawn")
}

/// curl sending `data` from its stdin (`-T -`): chunked on HTTP/1.1, DATA frames without
/// `Content-Length` on HTTP/2. Returns (status, body, stderr).
fn curl_stdin(
    addr: std::net::SocketAddr,
    proto: &str,
    path: &str,
    data: &[u8],
) -> (u16, String, String) {
    let resolve = format!("localhost:{}:{}", addr.port(), addr.ip());
    // Through a pipe, so that curl cannot learn the length (from a file it would send
    // `Content-Length`).
    let mut child = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "30", proto])
        .args(["--resolve", &resolve, "--cacert"])
        .arg(cert_path("ca.crt"))
        .args(["-X", "POST", "-T", "-", "-w", "\n%{http_code}"])
        .arg(format!("https://localhost:{}{path}", addr.port()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run curl");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    // The server may refuse before taking everything: a failed write is fine.
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, &data);
    });
    let output = child.wait_with_output().expect("curl output");
    let _ = writer.join();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (code.trim().parse().unwrap_or(0), body.to_string(), stderr)
}

#[test]
fn declared_length_over_the_limit_gets_413_before_the_handler() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = limited_server(runs.clone());
    let addr = addr(&handle);
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_tls(addr, version).await;
            let reply = client
                .post("/collect", vec![7u8; LIMIT as usize + 1])
                .await
                .unwrap_or_else(|e| panic!("{version:?}: {e:?}"));
            assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{version:?}");
            assert!(reply.text().starts_with("413"), "{}", reply.text());
            // The body was read and discarded (it is small enough to drain), so the
            // connection goes on.
            let reply = client.get("/after").await.expect("GET after 413");
            assert_eq!(reply.status, StatusCode::OK, "{version:?}");
            // At the limit exactly: accepted.
            let mut client = Client::connect_tls(addr, version).await;
            let reply = client
                .post("/collect", vec![7u8; LIMIT as usize])
                .await
                .expect("POST at the limit");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), format!("{LIMIT} bytes\n"));
        }
    });
    // Only the two uploads at the limit and the two GETs reached a handler.
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    // curl with `Expect: 100-continue`: 413 at once, the body never invited.
    let file = TempFile::new("big.bin", &vec![1u8; 4 * LIMIT as usize]);
    let upload = format!("@{}", file.as_str());
    let reply = curl(
        addr,
        true,
        "/collect",
        &[
            "--http1.1",
            "-v",
            "--data-binary",
            &upload,
            "-H",
            "Expect: 100-continue",
        ],
    );
    assert_eq!(reply.status, 413, "{}", reply.stderr);
    assert!(!reply.stderr.contains("< HTTP/1.1 100"), "{}", reply.stderr);
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    stop(handle);
}

#[test]
fn a_body_growing_past_the_limit_fails_the_read_and_answers_413() {
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = limited_server(runs.clone());
    let addr = addr(&handle);
    let big = pseudo_random(4 * LIMIT as usize, 5);
    for proto in ["--http1.1", "--http2"] {
        // `into_bytes` fails, and `Error` maps the failure to 413.
        let (status, body, stderr) = curl_stdin(addr, proto, "/collect", &big);
        assert_eq!(status, 413, "{proto}: {body} {stderr}");
        assert!(body.contains("larger than 102400 bytes"), "{proto}: {body}");
        // The handler swallows the error and answers 200: the client still learns why.
        let (status, body, stderr) = curl_stdin(addr, proto, "/swallow", &big);
        assert_eq!(status, 413, "{proto}: {body} {stderr}");
        assert!(body.starts_with("413 Content Too Large"), "{proto}: {body}");
        // Under the limit, without a declared length: read whole.
        let small = pseudo_random(LIMIT as usize - 10, 6);
        let (status, body, stderr) = curl_stdin(addr, proto, "/collect", &small);
        assert_eq!(status, 200, "{proto}: {body} {stderr}");
        assert_eq!(body, format!("{} bytes\n", LIMIT - 10));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 6);
    stop(handle);
}

/// curl 7.88 over HTTP/2, uploading a few MiB to a handler that answers without reading:
/// the server reads and discards the rest (bounded), so curl gets the response rather
/// than `RST_STREAM` in the middle of its upload.
#[test]
fn curl_over_http2_gets_the_answer_of_a_handler_that_ignores_its_upload() {
    let handle = tls_server()
        .spawn(
            |_req: Request, _info: ConnectionInfo| -> Result<&'static str, Error> {
                Ok("ignored\n")
            },
        )
        .expect("spawn");
    let addr = addr(&handle);
    let file = TempFile::new("ignored-h2.bin", &pseudo_random(3 * 1024 * 1024, 9));
    let upload = format!("@{}", file.as_str());
    for round in 0..8 {
        for expect in ["Expect:", "Expect: 100-continue"] {
            let output = Command::new("curl")
                .args(["--silent", "--show-error", "--max-time", "30", "--http2"])
                .args([
                    "--resolve",
                    &format!("localhost:{}:{}", addr.port(), addr.ip()),
                ])
                .arg("--cacert")
                .arg(cert_path("ca.crt"))
                .args(["--data-binary", &upload, "-H", expect])
                .args(["-w", "\n%{http_version} %{http_code}"])
                .arg(format!("https://localhost:{}/ignore", addr.port()))
                .output()
                .expect("run curl");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "round {round}, {expect}: curl failed ({}): {stderr}",
                output.status
            );
            assert_eq!(
                stdout, "ignored\n\n2 200",
                "round {round}, {expect}: {stderr}"
            );
        }
    }
    stop(handle);
}
