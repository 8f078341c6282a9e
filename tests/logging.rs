//! The examples' logging, as a user sees it in a log file: plain text (no ANSI colour
//! codes when stderr is not a terminal), one access line per request with its fields, and
//! every line written out by the time the process exits after SIGTERM. And the request
//! span: off at `info`, on with `portcullis::request=debug`.

mod common;
mod tlsutil;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use hyper::Version;
use portcullis::{Body, Response};
use tlsutil::*;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

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
    // The access lines are formatted apart from the rest (examples/support/log_format.rs)
    // and must read as the rest do: `2026-11-30T23:18:40.760311Z  INFO conn{...}: ...`,
    // their time between that of the line before the requests and that of the one after.
    let time = |line: &str| line.split(' ').next().unwrap_or_default().to_string();
    let before = log
        .lines()
        .find(|line| line.contains("listening"))
        .map(time)
        .unwrap_or_else(|| panic!("no listening line:\n{log}"));
    let after = log
        .lines()
        .find(|line| line.contains("shutting down gracefully"))
        .map(time)
        .unwrap_or_default();
    for line in &access {
        let at = time(line);
        assert_eq!(at.len(), before.len(), "{line:?} against {before:?}");
        assert_eq!(&at[at.len() - 8..at.len() - 7], ".", "{line:?}");
        assert!(
            before <= at && at <= after,
            "{at} not between {before} and {after}"
        );
        assert!(
            line[at.len()..].starts_with("  INFO conn{peer=127.0.0.1:"),
            "{line:?}"
        );
        assert!(line.contains("}: portcullis::access: client="), "{line:?}");
    }
}

/// What this process logged (the one test here that logs in-process installs the
/// subscriber).
static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.get_or_init(Default::default)
            .lock()
            .unwrap()
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits (bounded) for the log line that contains `needle`.
fn wait_for_line(needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&LOGS.get_or_init(Default::default).lock().unwrap())
            .into_owned();
        if let Some(line) = text.lines().find(|line| line.contains(needle)) {
            return line.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no log line with {needle:?} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn request_span_is_off_at_info_and_names_the_request_at_debug() {
    let (filter, reload) = tracing_subscriber::reload::Layer::new(EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(|| Capture),
        )
        .init();
    let server = spawn_tls(|req, _info| {
        tracing::info!(target: "handler", "handled {}", req.uri().path());
        Response::new(Body::from("ok\n"))
    });
    let addr = addr(&server);

    for version in [Version::HTTP_11, Version::HTTP_2] {
        let path = format!("/at-info-{version:?}");
        assert_eq!(block_on(get_tls(addr, version, &path)).status, 200);
        let line = wait_for_line(&format!("handled {path}"));
        assert!(!line.contains("request{"), "a request span at info: {line}");
    }

    reload
        .modify(|filter| *filter = EnvFilter::new("info,portcullis::request=debug"))
        .expect("reload the filter");
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let path = format!("/at-debug-{version:?}");
        assert_eq!(block_on(get_tls(addr, version, &path)).status, 200);
        let line = wait_for_line(&format!("handled {path}"));
        assert!(
            line.contains(&format!("request{{method=GET path=\"{path}\"}}")),
            "no request span naming the request: {line}"
        );
    }
    stop(server);
}
