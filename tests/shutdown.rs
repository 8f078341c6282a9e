//! Graceful shutdown: in-flight requests finish, new connections are refused, idle
//! connections close at once, and the drain timeout bounds the wait.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use hyper::{StatusCode, Version};
use portcullis::{Body, ConnectionInfo, Limits, Request, Response, ServerHandle};

const SLOW_BODY_LEN: usize = 256 * 1024;

/// `/sleep/<ms>` sleeps then answers with [`SLOW_BODY_LEN`] pseudo-random bytes;
/// `/trickle` streams the same bytes over about one second; anything else answers at once.
fn slow_handler(req: Request, _info: ConnectionInfo) -> Response {
    let path = req.uri().path().to_string();
    if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().expect("milliseconds");
        std::thread::sleep(Duration::from_millis(ms));
        return Response::new(Body::from(pseudo_random(SLOW_BODY_LEN, 42)));
    }
    if path == "/trickle" {
        return Response::new(Body::from_reader(Trickle {
            data: pseudo_random(SLOW_BODY_LEN, 42),
            sent: 0,
        }));
    }
    Response::new(Body::from("quick"))
}

/// Hands out 16 KiB every 60 ms: 16 reads, about one second.
struct Trickle {
    data: Vec<u8>,
    sent: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.sent == self.data.len() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(60));
        let n = buf.len().min(16 * 1024).min(self.data.len() - self.sent);
        buf[..n].copy_from_slice(&self.data[self.sent..self.sent + n]);
        self.sent += n;
        Ok(n)
    }
}

fn server_with_drain(drain: Duration) -> ServerHandle {
    let mut limits = Limits::default();
    limits.drain_timeout = drain;
    tls_server()
        .limits(limits)
        .spawn(slow_handler)
        .expect("spawn")
}

/// Starts `handle.shutdown()` on a thread; the receiver yields its result and duration.
fn shutdown_in_background(handle: ServerHandle) -> mpsc::Receiver<(std::io::Result<()>, Duration)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let result = handle.shutdown();
        let _ = tx.send((result, started.elapsed()));
    });
    rx
}

fn shutdown_result(
    rx: &mpsc::Receiver<(std::io::Result<()>, Duration)>,
    limit: Duration,
) -> Duration {
    match rx.recv_timeout(limit) {
        Ok((result, took)) => {
            result.expect("shutdown failed");
            took
        }
        Err(_) => panic!("shutdown() did not return within {limit:?}"),
    }
}

/// Connects repeatedly until the connection is refused; returns when that happened.
async fn wait_until_refused(addr: SocketAddr, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        match attempt {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Instant::now()
            }
            // Accepted by the kernel just before the listener closed, then reset: not yet.
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) => {}
            Ok(Err(e)) => panic!("connect failed with {e} instead of being refused"),
            Ok(Ok(_)) | Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "new connections were still accepted {limit:?} after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn in_flight_request_completes(version: Version, path: &'static str) {
    let drain = Duration::from_secs(5);
    let handle = server_with_drain(drain);
    let addr = addr(&handle);
    let want = pseudo_random(SLOW_BODY_LEN, 42);
    let shutdown = block_on(async move {
        let mut client = Client::connect_tls(addr, version).await;
        let req = client.request("GET", path, Default::default());
        let started = Instant::now();
        let request = tokio::spawn(async move {
            let reply = client.send(req).await;
            (reply, Instant::now(), client)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let shutdown = shutdown_in_background(handle);

        let refused_at = wait_until_refused(addr, Duration::from_secs(2)).await;
        let (reply, done_at, mut client) =
            within(Duration::from_secs(10), "the in-flight request", request)
                .await
                .expect("request task");
        let reply = reply.unwrap_or_else(|e| panic!("in-flight request failed: {e:?}"));
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, version);
        assert_same_bytes(&reply.body, &want, "in-flight response body");
        assert!(
            refused_at < done_at,
            "new connections were refused only after the in-flight request ended"
        );
        assert!(
            done_at - started >= Duration::from_millis(900),
            "the response came after {:?}, before the handler could have finished",
            done_at - started
        );
        // A response head sent after shutdown began says the connection will close (a
        // streamed response's head went out before, so it cannot).
        if version == Version::HTTP_11 && path.starts_with("/sleep/") {
            assert_eq!(
                reply.headers.get("connection").map(|v| v.as_bytes()),
                Some(&b"close"[..]),
                "HTTP/1 response during shutdown should carry Connection: close; {:?}",
                reply.headers
            );
        }
        // Then the server ends the connection (Connection: close / GOAWAY).
        let conn = within(
            Duration::from_secs(5),
            "the server to close the connection",
            client.conn_task(),
        )
        .await;
        // A graceful end: hyper's client connection finishes without an error (a reset, a
        // TLS stream cut without close_notify or an HTTP/2 connection dropped without
        // GOAWAY ends it with one).
        assert!(
            matches!(conn, Ok(Ok(()))),
            "{version:?}: the connection did not end gracefully: {conn:?}"
        );
        shutdown
    });
    let took = shutdown_result(&shutdown, drain + Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(500),
        "shutdown returned after {took:?}, before the in-flight request ended"
    );
    assert!(
        took < drain + Duration::from_secs(2),
        "shutdown took {took:?} with drain timeout {drain:?}"
    );
}

#[test]
fn graceful_shutdown_completes_in_flight_request_http1() {
    in_flight_request_completes(Version::HTTP_11, "/sleep/1000");
}

#[test]
fn graceful_shutdown_completes_in_flight_request_http2() {
    in_flight_request_completes(Version::HTTP_2, "/sleep/1000");
}

#[test]
fn graceful_shutdown_completes_streaming_response_http1() {
    in_flight_request_completes(Version::HTTP_11, "/trickle");
}

#[test]
fn graceful_shutdown_completes_streaming_response_http2() {
    in_flight_request_completes(Version::HTTP_2, "/trickle");
}

#[test]
fn idle_connections_do_not_delay_shutdown() {
    let handle = server_with_drain(Duration::from_secs(20));
    let addr = addr(&handle);
    block_on(async move {
        let mut h1 = Client::connect_tls(addr, Version::HTTP_11).await;
        let mut h2 = Client::connect_tls(addr, Version::HTTP_2).await;
        assert_eq!(h1.get("/").await.expect("h1 GET").status, StatusCode::OK);
        assert_eq!(h2.get("/").await.expect("h2 GET").status, StatusCode::OK);
        // Both connections are now idle.
        let shutdown = shutdown_in_background(handle);
        let took = tokio::task::spawn_blocking(move || {
            shutdown_result(&shutdown, Duration::from_secs(10))
        })
        .await
        .expect("join");
        assert!(
            took < Duration::from_secs(2),
            "shutdown took {took:?} with only idle connections (drain timeout 20 s)"
        );
        for (what, client) in [("h1", &mut h1), ("h2", &mut h2)] {
            let ended = within(
                Duration::from_secs(2),
                "the idle connection to be closed",
                client.conn_task(),
            )
            .await;
            assert!(
                matches!(ended, Ok(Ok(()))),
                "{what}: the idle connection did not end gracefully: {ended:?}"
            );
        }
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    });
}

#[test]
fn drain_timeout_bounds_shutdown() {
    let drain = Duration::from_millis(500);
    let handle = server_with_drain(drain);
    let addr = addr(&handle);
    block_on(async move {
        let mut requests = Vec::new();
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let mut client = Client::connect_tls(addr, version).await;
            requests.push(tokio::spawn(async move {
                let result = client.get("/sleep/5000").await;
                (version, result)
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let shutdown = shutdown_in_background(handle);
        let took = tokio::task::spawn_blocking(move || {
            shutdown_result(&shutdown, Duration::from_secs(10))
        })
        .await
        .expect("join");
        assert!(
            took >= Duration::from_millis(400),
            "shutdown returned after {took:?}, without waiting for the drain timeout"
        );
        assert!(
            took < Duration::from_secs(3),
            "shutdown took {took:?} with a 500 ms drain timeout and a 5 s handler"
        );
        // The requests cut off by the drain timeout fail promptly instead of hanging.
        for request in requests {
            let (version, result) = within(
                Duration::from_secs(3),
                "the cut-off request to fail",
                request,
            )
            .await
            .expect("request task");
            assert!(
                result.is_err(),
                "{version:?}: a request cut off by the drain timeout got {:?}",
                result.map(|r| r.status)
            );
        }
    });
}

#[test]
fn dropping_the_handle_begins_shutdown() {
    let handle = server_with_drain(Duration::from_secs(5));
    let addr = addr(&handle);
    block_on(async move {
        let reply = get_tls(addr, Version::HTTP_11, "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        drop(handle);
        wait_until_refused(addr, Duration::from_secs(2)).await;
    });
}

#[test]
fn shutdown_of_an_unused_server_is_prompt() {
    for _ in 0..20 {
        let handle = server_with_drain(Duration::from_secs(30));
        let addr = addr(&handle);
        let took = shutdown_within(handle, Duration::from_secs(5));
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}

#[test]
fn shutdown_right_after_clients_leave_is_prompt() {
    // Shutdown races with the reactor handling the last connections' close; the wake-up
    // must never be lost (the reactor would then sleep with no timer left).
    for round in 0..30 {
        let handle = server_with_drain(Duration::from_secs(30));
        let addr = addr(&handle);
        let rt = runtime();
        let clients = rt.block_on(async move {
            let mut clients = Vec::new();
            for version in [Version::HTTP_11, Version::HTTP_2] {
                let mut client = Client::connect_tls(addr, version).await;
                assert_eq!(client.get("/").await.expect("GET").status, StatusCode::OK);
                clients.push(client);
            }
            clients
        });
        let shutdown = shutdown_in_background(handle);
        drop(clients);
        drop(rt);
        let took = shutdown_result(&shutdown, Duration::from_secs(5));
        assert!(
            took < Duration::from_secs(2),
            "round {round}: shutdown took {took:?}"
        );
    }
}
