//! HTTP → HTTPS redirects (308 with host, path and query; 400 without a usable Host) and
//! ACME http-01 challenge files (served, missing, traversal refused), on a real plain
//! listener; and the `--redirect-from` flag of the examples.

mod common;
mod tlsutil;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use hyper::{StatusCode, Version};
use portcullis::{HttpsRedirect, Server, ServerHandle};
use tlsutil::*;

/// A directory with one challenge file, and a secret file next to it; removed on drop.
struct AcmeDir {
    root: PathBuf,
    challenges: PathBuf,
}

const TOKEN: &str = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
const KEY_AUTHZ: &str =
    "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";

impl AcmeDir {
    fn new() -> AcmeDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "portcullis-acme-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let challenges = root.join("challenges");
        std::fs::create_dir_all(&challenges).expect("create dir");
        std::fs::write(challenges.join(TOKEN), KEY_AUTHZ).expect("write token");
        std::fs::write(root.join("secret"), "do not serve me").expect("write secret");
        std::fs::create_dir_all(challenges.join("adirectory")).expect("create subdir");
        AcmeDir { root, challenges }
    }
}

impl Drop for AcmeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn redirect_server(https_port: u16, acme: &AcmeDir) -> ServerHandle {
    Server::bind("127.0.0.1:0")
        .expect("bind")
        .spawn_service(HttpsRedirect::new(https_port).acme_challenge_dir(&acme.challenges))
        .expect("spawn")
}

/// Sends raw bytes and reads the whole answer (the request asks for `Connection: close`
/// or is HTTP/1.0). Returns status, headers (lower-case names) and body.
fn raw(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn get(addr: SocketAddr, target: &str, host: &str) -> (u16, Vec<(String, String)>, String) {
    raw(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn redirects_to_https_with_path_and_query() {
    let acme = AcmeDir::new();
    let handle = redirect_server(8443, &acme);
    let addr = addr(&handle);
    for (target, host, location) in [
        ("/", "example.com", "https://example.com:8443/"),
        (
            "/a/b%20c?x=1&y=two",
            "example.com:80",
            "https://example.com:8443/a/b%20c?x=1&y=two",
        ),
        ("/p?q", "Example.COM:8080", "https://example.com:8443/p?q"),
        ("/v6", "[::1]:80", "https://[::1]:8443/v6"),
        ("/ip", "127.0.0.1", "https://127.0.0.1:8443/ip"),
        // Absolute-form target: its authority wins over nothing, path and query kept.
        (
            "http://example.com/abs?z=1",
            "example.com",
            "https://example.com:8443/abs?z=1",
        ),
        // The ACME prefix without a challenge directory match is still just a path.
        (
            "/.well-known/other",
            "h.example",
            "https://h.example:8443/.well-known/other",
        ),
    ] {
        let (status, headers, _) = get(addr, target, host);
        assert_eq!(status, 308, "{target} Host: {host}");
        assert_eq!(
            header(&headers, "location"),
            Some(location),
            "{target} Host: {host}"
        );
    }
    // POST keeps its method with 308; the redirect does not read the body.
    let (status, headers, _) = raw(
        addr,
        "POST /form?a=1 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert_eq!(status, 308);
    assert_eq!(
        header(&headers, "location"),
        Some("https://example.com:8443/form?a=1")
    );
    stop(handle);
}

#[test]
fn port_443_is_left_out() {
    let acme = AcmeDir::new();
    let handle = redirect_server(443, &acme);
    let (status, headers, _) = get(addr(&handle), "/x?y=z", "example.com:80");
    assert_eq!(status, 308);
    assert_eq!(
        header(&headers, "location"),
        Some("https://example.com/x?y=z")
    );
    stop(handle);
}

#[test]
fn missing_or_invalid_host_is_400() {
    let acme = AcmeDir::new();
    let handle = redirect_server(8443, &acme);
    let addr = addr(&handle);
    // HTTP/1.1 without Host (portcullis refuses it before the service runs).
    let (status, headers, _) = raw(addr, "GET /a HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 400);
    assert_eq!(header(&headers, "location"), None);
    // HTTP/1.0 may leave Host out; the redirect needs it.
    let (status, headers, body) = raw(addr, "GET /a HTTP/1.0\r\n\r\n");
    assert_eq!(status, 400, "{body}");
    assert_eq!(header(&headers, "location"), None);
    assert!(body.contains("Host"), "{body}");
    for bad in [
        "",
        "evil.com/path",
        "user@example.com",
        "example.com:http",
        "a b",
        "[::1",
    ] {
        let (status, headers, body) = get(addr, "/a", bad);
        assert_eq!(status, 400, "Host: {bad:?} -> {body}");
        assert_eq!(header(&headers, "location"), None, "Host: {bad:?}");
    }
    stop(handle);
}

#[test]
fn h2c_request_is_redirected_by_authority() {
    let acme = AcmeDir::new();
    let handle = redirect_server(8443, &acme);
    let addr = addr(&handle);
    block_on(async move {
        let mut client = Client::connect_plain(addr, Version::HTTP_2).await;
        let req = hyper::Request::builder()
            .uri("http://example.com/h2?x=1")
            .body(http_body_util::Full::new(hyper::body::Bytes::new()))
            .expect("request");
        let reply = client.send(req).await.expect("h2c GET");
        assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            reply.headers.get("location").and_then(|v| v.to_str().ok()),
            Some("https://example.com:8443/h2?x=1")
        );
    });
    stop(handle);
}

#[test]
fn acme_challenge_files_are_served() {
    let acme = AcmeDir::new();
    let handle = redirect_server(8443, &acme);
    let addr = addr(&handle);
    let path = format!("/.well-known/acme-challenge/{TOKEN}");
    let (status, headers, body) = get(addr, &path, "example.com");
    assert_eq!(status, 200);
    assert_eq!(body, KEY_AUTHZ);
    assert_eq!(header(&headers, "location"), None);
    // Served even without a usable Host (the CA always sends one, but it needs no check).
    let (status, _, body) = raw(addr, &format!("GET {path} HTTP/1.0\r\n\r\n"));
    assert_eq!((status, body.as_str()), (200, KEY_AUTHZ));
    // HEAD: headers only.
    let (status, _, body) = raw(
        addr,
        &format!("HEAD {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!((status, body.as_str()), (200, ""));
    // Other methods: 405.
    let (status, headers, _) = raw(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
    stop(handle);
}

#[test]
fn acme_missing_token_is_404_and_traversal_is_refused() {
    let acme = AcmeDir::new();
    let handle = redirect_server(8443, &acme);
    let addr = addr(&handle);
    let (status, _, _) = get(addr, "/.well-known/acme-challenge/NoSuchToken_-1", "h");
    assert_eq!(status, 404);
    let (status, _, _) = get(addr, "/.well-known/acme-challenge/adirectory", "h");
    assert_eq!(status, 404, "a directory is not a challenge");
    for target in [
        "/.well-known/acme-challenge/../secret",
        "/.well-known/acme-challenge/..%2fsecret",
        "/.well-known/acme-challenge/%2e%2e/secret",
        "/.well-known/acme-challenge/a/../../secret",
        "/.well-known/acme-challenge/",
        "/.well-known/acme-challenge/.hidden",
        "/.well-known/acme-challenge/tok.en",
    ] {
        let (status, _, body) = get(addr, target, "h");
        assert_eq!(status, 400, "{target}: {body}");
        assert!(
            !body.contains("do not serve me"),
            "{target} leaked the file"
        );
    }
    stop(handle);
}

#[test]
fn example_redirect_from_flag() {
    let acme = AcmeDir::new();
    let hello = Example::start(
        "hello",
        &[
            "--redirect-from",
            "127.0.0.1:0",
            "--acme-dir",
            acme.challenges.to_str().expect("utf-8 path"),
        ],
    );
    let line = hello.wait_stdout("redirecting from http://", Duration::from_secs(10));
    let from: SocketAddr = line
        .rsplit("://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    let (status, headers, _) = get(from, "/hi?there", "localhost");
    assert_eq!(status, 308);
    let want = format!("https://localhost:{}/hi?there", hello.addr.port());
    assert_eq!(header(&headers, "location"), Some(want.as_str()));
    let (status, _, body) = get(from, &format!("/.well-known/acme-challenge/{TOKEN}"), "h");
    assert_eq!((status, body.as_str()), (200, KEY_AUTHZ));
    // And the HTTPS side answers at the redirect's target.
    let reply = block_on(get_tls(hello.addr, Version::HTTP_11, "/"));
    assert_eq!(reply.text(), "Hello, World!\n");
}
