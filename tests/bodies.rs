//! Request and response bodies: large uploads echoed intact over HTTP/1.1 and HTTP/2 (hyper
//! client and curl, with and without `Expect: 100-continue`), chunked uploads, `chunks()`,
//! streamed responses, and handlers that ignore the body.

mod common;

use std::io::{self, Cursor, Read};
use std::time::Duration;

use common::*;
use hyper::body::Bytes;
use hyper::{StatusCode, Version};
use portcullis::{http, Body, Response};

const EIGHT_MIB: usize = 8 * 1024 * 1024;

#[test]
fn eight_mib_echo_with_hyper_http1_and_http2() {
    let handle = spawn_tls(echo_handler);
    let addr = addr(&handle);
    let data = Bytes::from(pseudo_random(EIGHT_MIB, 1));
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let reply = post_tls(addr, version, "/echo", data.clone()).await;
            assert_eq!(reply.status, StatusCode::OK, "{version:?}");
            assert_eq!(reply.version, version);
            assert_same_bytes(&reply.body, &data, &format!("echo over {version:?}"));
        }
    });
    stop(handle);
}

/// The handlers' answer when reading the request body failed: 400 with the error.
fn body_error(e: &io::Error) -> Response {
    http::Response::builder()
        .status(400)
        .body(Body::from(format!("body error: {e}")))
        .expect("response")
}

/// `/collect` reads the whole body inside the handler, then answers with it; any other
/// path echoes by streaming (the response head goes out before the body is read).
fn collect_or_echo(req: portcullis::Request, info: portcullis::ConnectionInfo) -> Response {
    if req.uri().path() != "/collect" {
        return echo_handler(req, info);
    }
    let mut body = Vec::new();
    match req.into_body().read_to_end(&mut body) {
        Ok(_) => Response::new(Body::from(body)),
        Err(e) => body_error(&e),
    }
}

#[test]
fn eight_mib_echo_with_curl_with_and_without_expect() {
    let handle = spawn_tls(collect_or_echo);
    let addr = addr(&handle);
    let data = pseudo_random(EIGHT_MIB, 2);
    let file = TempFile::new("upload.bin", &data);
    let upload = format!("@{}", file.as_str());
    for path in ["/echo", "/collect"] {
        for (proto, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
            // curl adds `Expect: 100-continue` by itself to large HTTP/1.1 uploads; an
            // empty `Expect:` header suppresses it.
            for expect in ["Expect: 100-continue", "Expect:"] {
                let reply = curl(
                    addr,
                    true,
                    path,
                    &[proto, "-X", "POST", "--data-binary", &upload, "-H", expect],
                );
                let what = format!("curl {proto} -H '{expect}' {path}");
                assert_eq!(reply.status, 200, "{what}: {}", reply.stderr);
                assert_eq!(reply.version, version, "{what}");
                assert_same_bytes(&reply.body, &data, &what);
            }
        }
    }
    stop(handle);
}

/// With `Expect: 100-continue` and a handler that reads its body, the server must send
/// `100 Continue` (README: "answered when the handler starts reading"), so curl does not
/// have to wait out its expect timeout (set to 5 s here) before uploading.
fn expect_continue_is_answered(proto: &str, version: &str) {
    expect_continue_is_answered_on(proto, version, "/collect");
}

fn expect_continue_is_answered_on(proto: &str, version: &str, path: &str) {
    let handle = spawn_tls(collect_or_echo);
    let addr = addr(&handle);
    let data = pseudo_random(1024 * 1024, 12);
    let file = TempFile::new("expect.bin", &data);
    let upload = format!("@{}", file.as_str());
    let started = std::time::Instant::now();
    let reply = curl(
        addr,
        true,
        path,
        &[
            proto,
            "-v",
            "--expect100-timeout",
            "5",
            "--data-binary",
            &upload,
            "-H",
            "Expect: 100-continue",
        ],
    );
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.stderr);
    assert_eq!(reply.version, version);
    assert_same_bytes(&reply.body, &data, "upload after 100 Continue");
    if version == "1.1" {
        assert!(
            reply.stderr.contains("< HTTP/1.1 100 Continue"),
            "no 100 Continue in curl -v output:\n{}",
            reply.stderr
        );
    }
    assert!(
        elapsed < std::time::Duration::from_millis(2500),
        "curl {proto} waited {elapsed:?} for an answer to Expect: 100-continue \
         (its expect timeout is 5 s): the server never sent 100 Continue"
    );
    stop(handle);
}

#[test]
fn expect_continue_is_answered_http1() {
    expect_continue_is_answered("--http1.1", "1.1");
}

/// The handler returns at once with the request body (unread) as the response body: the
/// response head must wait until `100 Continue` is queued, or a client that waits for it
/// never sends the body (found by the interop suite with curl and a long expect timeout).
#[test]
fn expect_continue_is_answered_when_the_response_is_the_request_body_http1() {
    expect_continue_is_answered_on("--http1.1", "1.1", "/echo");
}

/// Known upstream gap, not a portcullis choice: hyper 1.x's HTTP/2 server cannot send
/// `100 Continue` (hyperium/hyper#2743, open; the h2 side is hyperium/h2#601). The upload
/// still completes intact once the client's expect timeout passes (the echo tests cover
/// that). `.ci/run` runs this test with `--ignored` and reports it without failing, so the
/// day hyper gains the feature it shows up.
#[test]
#[ignore = "hyper 1.x cannot send 100 Continue over HTTP/2 (hyperium/hyper#2743)"]
fn expect_continue_is_answered_http2() {
    expect_continue_is_answered("--http2", "2");
}

#[test]
fn curl_chunked_upload_is_echoed() {
    let handle = spawn_tls(echo_handler);
    let addr = addr(&handle);
    let data = pseudo_random(3 * 1024 * 1024 + 17, 3);
    let file = TempFile::new("chunked.bin", &data);
    let upload = format!("@{}", file.as_str());
    let reply = curl(
        addr,
        true,
        "/echo",
        &[
            "--http1.1",
            "-X",
            "POST",
            "--data-binary",
            &upload,
            "-H",
            "Transfer-Encoding: chunked",
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.stderr);
    assert_eq!(reply.version, "1.1");
    assert_same_bytes(&reply.body, &data, "chunked upload echo");
    stop(handle);
}

#[test]
fn handler_reading_chunks_counts_every_byte() {
    let handle = spawn_tls(|mut req, _info| {
        let mut total = 0usize;
        let mut chunks = 0usize;
        for chunk in req.body_mut().chunks() {
            match chunk {
                Ok(chunk) => {
                    total += chunk.len();
                    chunks += 1;
                }
                Err(e) => return body_error(&e),
            }
        }
        Response::new(Body::from(format!("{total} bytes in {chunks} chunks")))
    });
    let addr = addr(&handle);
    let len = 5 * 1024 * 1024 + 3;
    let data = Bytes::from(pseudo_random(len, 4));
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let reply = post_tls(addr, version, "/count", data.clone()).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let text = reply.text();
            assert!(
                text.starts_with(&format!("{len} bytes in ")),
                "{version:?}: {text}"
            );
        }
        // An empty body yields no chunks at all.
        let reply = post_tls(addr, Version::HTTP_11, "/count", Bytes::new()).await;
        assert_eq!(reply.text(), "0 bytes in 0 chunks");
    });
    let file = TempFile::new("count.bin", &pseudo_random(len, 5));
    let upload = format!("@{}", file.as_str());
    let reply = curl(
        addr,
        true,
        "/count",
        &[
            "--http1.1",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &upload,
        ],
    );
    assert_eq!(reply.status, 200);
    assert!(
        String::from_utf8_lossy(&reply.body).starts_with(&format!("{len} bytes in ")),
        "{reply:?}"
    );
    stop(handle);
}

#[test]
fn streamed_response_from_reader_arrives_intact() {
    const LEN: usize = 6 * 1024 * 1024 + 123;
    let handle = spawn_tls(|_req, _info| {
        Response::new(Body::from_reader(Cursor::new(pseudo_random(LEN, 6))))
    });
    let addr = addr(&handle);
    let want = pseudo_random(LEN, 6);
    let want_clone = want.clone();
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let reply = get_tls(addr, version, "/stream").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.version, version);
            if version == Version::HTTP_11 {
                // No Content-Length given: the body goes out chunked.
                assert_eq!(
                    reply.headers.get("transfer-encoding").map(|v| v.as_bytes()),
                    Some(&b"chunked"[..]),
                    "{:?}",
                    reply.headers
                );
            }
            assert_same_bytes(&reply.body, &want_clone, &format!("stream {version:?}"));
        }
    });
    for proto in ["--http1.1", "--http2"] {
        let reply = curl(addr, true, "/stream", &[proto]);
        assert_eq!(reply.status, 200);
        assert_same_bytes(&reply.body, &want, &format!("curl {proto} stream"));
    }
    stop(handle);
}

#[test]
fn streamed_response_with_content_length() {
    const LEN: usize = 3 * 1024 * 1024;
    let handle = spawn_tls(|_req, _info| {
        http::Response::builder()
            .header("content-length", LEN.to_string())
            .body(Body::from_reader(
                Cursor::new(pseudo_random(LEN, 7)).take(LEN as u64),
            ))
            .expect("response")
    });
    let addr = addr(&handle);
    let want = pseudo_random(LEN, 7);
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let reply = get_tls(addr, version, "/sized").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(
                reply
                    .headers
                    .get("content-length")
                    .and_then(|v| v.to_str().ok()),
                Some(LEN.to_string().as_str())
            );
            assert_same_bytes(&reply.body, &want, &format!("sized stream {version:?}"));
        }
    });
    stop(handle);
}

/// A handler that never reads a large upload answers at once; the client is still
/// sending. The client must get that answer intact, and the server must stay healthy.
fn ignore_body_server() -> portcullis::ServerHandle {
    spawn_tls(|_req, _info| Response::new(Body::from("ignored\n")))
}

#[test]
fn handler_ignoring_large_body_still_answers_http1() {
    let handle = ignore_body_server();
    let addr = addr(&handle);
    let data = Bytes::from(pseudo_random(EIGHT_MIB, 8));
    block_on(async move {
        for round in 0..3 {
            let mut client = Client::connect_tls(addr, Version::HTTP_11).await;
            let reply = client
                .post("/ignore", data.clone())
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), "ignored\n");
        }
        let reply = get_tls(addr, Version::HTTP_11, "/after").await;
        assert_eq!(reply.status, StatusCode::OK);
    });
    let file = TempFile::new("ignored.bin", &pseudo_random(EIGHT_MIB, 9));
    let upload = format!("@{}", file.as_str());
    for _round in 0..3 {
        for expect in ["Expect: 100-continue", "Expect:"] {
            let reply = curl(
                addr,
                true,
                "/ignore",
                &["--http1.1", "-v", "--data-binary", &upload, "-H", expect],
            );
            assert_eq!(reply.status, 200, "curl {expect}: {}", reply.stderr);
            assert_eq!(reply.body, b"ignored\n");
            // The handler never reads, so the client is never invited to send the body.
            assert!(
                !reply.stderr.contains("< HTTP/1.1 100"),
                "100 Continue sent for a body nobody reads:\n{}",
                reply.stderr
            );
        }
    }
    stop(handle);
}

// HTTP/2 with hyper here; with curl (which stops uploading once it has the response and
// then never finishes) in tests/body_limit.rs: the server drains the unread body before it
// answers.
#[test]
fn handler_ignoring_large_body_still_answers_http2() {
    let handle = ignore_body_server();
    let addr = addr(&handle);
    let data = Bytes::from(pseudo_random(EIGHT_MIB, 8));
    block_on(async move {
        let mut client = Client::connect_tls(addr, Version::HTTP_2).await;
        for round in 0..3 {
            let reply = client
                .post("/ignore", data.clone())
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.version, Version::HTTP_2);
            assert_eq!(reply.text(), "ignored\n");
        }
        // The same connection still serves ordinary requests.
        let reply = client.get("/after").await.expect("GET after");
        assert_eq!(reply.status, StatusCode::OK);
    });
    stop(handle);
}

#[test]
fn handler_reading_part_of_body_then_answering() {
    // Reads the first 1 KiB of an 8 MiB upload, then answers with it.
    let handle = spawn_tls(|mut req, _info| {
        let mut head = vec![0u8; 1024];
        match req.body_mut().read_exact(&mut head) {
            Ok(()) => Response::new(Body::from(head)),
            Err(e) => body_error(&e),
        }
    });
    let addr = addr(&handle);
    let data = Bytes::from(pseudo_random(EIGHT_MIB, 10));
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_tls(addr, version).await;
            let reply = client
                .post("/partial", data.clone())
                .await
                .unwrap_or_else(|e| panic!("{version:?}: {e:?}"));
            assert_eq!(reply.status, StatusCode::OK, "{version:?}");
            assert_same_bytes(&reply.body, &data[..1024], "first KiB");
        }
    });
    stop(handle);
}

/// Reads the first 1 000 bytes, then hands the rest back as the response, saying what
/// `exact_len` reported before and after the read.
fn echo_rest_after_1000(
    mut req: portcullis::Request,
    _info: portcullis::ConnectionInfo,
) -> Response {
    let before = req.body().exact_len();
    let mut head = vec![0u8; 1000];
    if let Err(e) = req.body_mut().read_exact(&mut head) {
        return body_error(&e);
    }
    let after = req.body().exact_len();
    let mut response = Response::new(req.into_body());
    let headers = response.headers_mut();
    headers.insert(
        "x-len-before",
        format!("{before:?}").parse().expect("header"),
    );
    headers.insert("x-len-after", format!("{after:?}").parse().expect("header"));
    response
}

#[test]
fn echoed_body_keeps_its_declared_length() {
    // A request body that declared its length (Content-Length) knows what is left of it,
    // and handed back as the response it goes out with a Content-Length, not chunked.
    let handle = spawn_tls(echo_rest_after_1000);
    let addr = addr(&handle);
    let data = Bytes::from(pseudo_random(3 * 1024 * 1024 + 5, 11));
    let rest = (data.len() - 1000).to_string();
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_tls(addr, version).await;
            let reply = client
                .post("/rest", data.clone())
                .await
                .unwrap_or_else(|e| panic!("{version:?}: {e:?}"));
            assert_eq!(reply.status, StatusCode::OK, "{version:?}");
            let header = |name: &str| {
                reply
                    .headers
                    .get(name)
                    .map(|v| v.to_str().expect("ascii").to_string())
            };
            assert_eq!(
                header("x-len-before"),
                Some(format!("Some({})", data.len()))
            );
            assert_eq!(header("x-len-after"), Some(format!("Some({rest})")));
            assert_eq!(header("content-length"), Some(rest.clone()), "{version:?}");
            assert_eq!(header("transfer-encoding"), None, "{version:?}");
            assert_same_bytes(&reply.body, &data[1000..], "the rest, echoed");
        }
    });
    // Without a declared length (a chunked upload) the length is unknown and the echo
    // goes out chunked.
    let data = pseudo_random(200_000, 12);
    let file = TempFile::new("rest-chunked.bin", &data);
    let upload = format!("@{}", file.as_str());
    let reply = curl(
        addr,
        true,
        "/rest",
        &[
            "--http1.1",
            "--data-binary",
            &upload,
            "-H",
            "Transfer-Encoding: chunked",
            "-D",
            "/dev/stderr",
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.stderr);
    let head = reply.stderr.to_ascii_lowercase();
    assert!(head.contains("x-len-before: none"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert_same_bytes(&reply.body, &data[1000..], "the rest of a chunked upload");
    stop(handle);
}

/// A request body cut short: the client sends half of what `Content-Length` declares and
/// then closes, either with a bare TCP FIN (no TLS close_notify: a truncation) or after a
/// clean close_notify. Either way the handler reading the body gets an error, never a
/// clean end with half the bytes.
#[test]
fn a_body_cut_short_is_an_error_for_the_handler() {
    use std::sync::mpsc;
    use std::sync::Mutex;
    use tokio::io::AsyncWriteExt;

    let (report, reports) = mpsc::channel::<Result<usize, io::ErrorKind>>();
    let report = Mutex::new(report);
    let handle = spawn_tls(move |req: portcullis::Request, _info| {
        let mut body = Vec::new();
        let result = req.into_body().read_to_end(&mut body).map_err(|e| e.kind());
        let _ = report.lock().expect("report lock").send(result);
        Response::new(Body::from("read\n"))
    });
    let addr = addr(&handle);
    let declared = 200_000;
    let sent = pseudo_random(declared / 2, 13);
    for close_notify in [false, true] {
        let body = sent.clone();
        block_on(async move {
            let mut stream = tls_connect(addr, &[b"http/1.1"]).await.expect("connect");
            let head = format!(
                "POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: {declared}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.expect("head");
            stream.write_all(&body).await.expect("half the body");
            stream.flush().await.expect("flush");
            if close_notify {
                stream.shutdown().await.expect("close_notify and FIN");
            } else {
                stream.get_mut().0.shutdown().await.expect("bare FIN");
            }
            // Keep the socket until the server has read everything.
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let result = reports
            .recv_timeout(Duration::from_secs(10))
            .expect("the handler ran and finished reading");
        let what = if close_notify {
            "close_notify"
        } else {
            "TCP FIN without close_notify"
        };
        assert!(
            result.is_err(),
            "{what} after {} of {declared} bytes: the handler saw a clean end ({result:?})",
            sent.len()
        );
    }
    stop(handle);
}
