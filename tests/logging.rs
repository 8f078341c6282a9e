//! The examples' logging, as a user sees it in a log file: plain text (no ANSI colour
//! codes when stderr is not a terminal), one access line per request with its fields, and
//! every line written out by the time the process exits after SIGTERM.

mod common;
mod tlsutil;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tlsutil::*;

#[test]
fn hello_logs_plain_access_lines_with_every_field() {
    let mut child = Command::new(example_binary("hello"))
        .args(["--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hello");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while !first.ends_with(b"\n") {
        assert_eq!(
            stdout.read(&mut byte).expect("read stdout"),
            1,
            "no listening line"
        );
        first.push(byte[0]);
    }
    let first = String::from_utf8_lossy(&first);
    let addr: std::net::SocketAddr = first
        .trim()
        .rsplit("://")
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    for proto in ["--http1.1", "--http2"] {
        let reply = curl(addr, true, "/logged", &[proto]);
        assert_eq!(reply.status, 200);
    }
    // SIGTERM: a graceful exit writes out what is queued.
    // SAFETY: `kill` takes plain integers; the child is ours and not yet reaped.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "hello did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("read stderr");
    assert!(
        !log.contains('\x1b'),
        "ANSI escape codes in a log file:\n{log}"
    );
    let access: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("portcullis::access"))
        .collect();
    assert_eq!(access.len(), 2, "one access line per request:\n{log}");
    for (line, protocol) in access.iter().zip(["HTTP/1.1", "HTTP/2"]) {
        for field in [
            "client=127.0.0.1:",
            &format!("protocol={protocol}"),
            "method=GET",
            "path=\"/logged\"",
            "status=200",
            "bytes=14",
            "duration_us=",
            "outcome=\"complete\"",
        ] {
            assert!(line.contains(field), "{field} missing from {line:?}");
        }
    }
    assert!(log.contains("shutting down gracefully"), "{log}");
}
