//! SIGTERM and SIGINT against a real example binary: the first signal lets an in-flight
//! upload finish and the process exit 0; a second signal ends it at once.

mod common;
mod tlsutil;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tlsutil::*;

const UPLOAD: usize = 4 * 1024 * 1024;

/// An HTTP/1.1 upload to the `echo` example over a plain socket, half sent: a thread
/// reads the echoed response as it comes, counting the bytes.
struct HalfUpload {
    stream: TcpStream,
    body: Vec<u8>,
    received: Arc<AtomicUsize>,
    reader: std::thread::JoinHandle<Vec<u8>>,
}

impl HalfUpload {
    fn start(example: &Example) -> HalfUpload {
        let mut stream = TcpStream::connect(example.addr).expect("connect");
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let body = pseudo_random(UPLOAD, 7);
        let head =
            format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {UPLOAD}\r\n\r\n");
        let received = Arc::new(AtomicUsize::new(0));
        let reader = {
            let mut stream = stream.try_clone().expect("clone");
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            let received = received.clone();
            std::thread::spawn(move || {
                let mut all = Vec::new();
                let mut buf = [0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return all,
                        Ok(n) => {
                            all.extend_from_slice(&buf[..n]);
                            received.store(all.len(), Ordering::SeqCst);
                        }
                    }
                }
            })
        };
        stream.write_all(head.as_bytes()).expect("write head");
        stream.write_all(&body[..UPLOAD / 2]).expect("write half");
        let started = Instant::now();
        // In flight: the handler runs and has echoed bytes back.
        while received.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no echo of the first half"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        HalfUpload {
            stream,
            body,
            received,
            reader,
        }
    }

    /// Sends the rest and returns the whole response (read until the server closes).
    fn finish(mut self) -> Vec<u8> {
        self.stream
            .write_all(&self.body[UPLOAD / 2..])
            .expect("write the second half");
        let response = self.reader.join().expect("reader");
        let _ = self.stream.shutdown(Shutdown::Both);
        assert!(self.received.load(Ordering::SeqCst) > UPLOAD);
        response
    }
}

fn wait_exit(example: &mut Example, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = example.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "the example did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_lets_an_in_flight_upload_finish_and_exits_0() {
    let mut echo = Example::start("echo", &["--plain", "--drain-timeout", "60"]);
    let upload = HalfUpload::start(&echo);
    echo.signal(libc::SIGTERM);
    echo.wait_stderr("shutting down gracefully", Duration::from_secs(10));
    // The listener is closed: a new connection is refused.
    let started = Instant::now();
    while TcpStream::connect(echo.addr).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The process waits for the upload.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        echo.child.try_wait().expect("try_wait").is_none(),
        "exited with a request in flight"
    );
    let body = upload.body.clone();
    let response = upload.finish();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // (The head went out before the signal, so it cannot carry `Connection: close`; the
    // server closes the connection after the response, which ends the reader.)
    assert_same_bytes(&response[split + 4..], &body, "echoed upload");
    let status = wait_exit(&mut echo, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn sigint_with_nothing_in_flight_exits_0_at_once() {
    let mut hello = Example::start("hello", &["--plain"]);
    hello.signal(libc::SIGINT);
    let status = wait_exit(&mut hello, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut echo = Example::start("echo", &["--plain", "--drain-timeout", "60"]);
    let _upload = HalfUpload::start(&echo);
    echo.signal(libc::SIGTERM);
    echo.wait_stderr("shutting down gracefully", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    assert!(echo.child.try_wait().expect("try_wait").is_none());
    echo.signal(libc::SIGTERM);
    let status = wait_exit(&mut echo, Duration::from_secs(5));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}");
}
