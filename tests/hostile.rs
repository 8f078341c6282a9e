//! Hostile clients over real sockets: floods of frames that need no answer, pipelining
//! that is never read, readers that stop or trickle, one client taking every connection,
//! plain HTTP on the TLS port. Each test runs the attack beside a legitimate client and
//! asserts that the legitimate client stays fast and that the attacker is bounded.
//!
//! The attackers are blocking rustls clients writing hand-built HTTP/2 frames or raw
//! HTTP/1.1, so that they can do what no well-behaved client library would.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{addr, client_config, tls_server, ALPN_H1, ALPN_H2};
use portcullis::{Body, Response};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConnection, StreamOwned};

type Tls = StreamOwned<ClientConnection, TcpStream>;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// TCP connect and a complete TLS handshake offering `alpn`, every step under 10 s.
fn connect(addr: SocketAddr, alpn: &[&[u8]]) -> io::Result<Tls> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from("localhost").expect("server name");
    let conn = ClientConnection::new(client_config(alpn), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with `(id, value)` pairs.
fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in pairs {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(0x4, 0, 0, &payload)
}

/// Reads one complete HTTP/1.1 response on a fresh connection (`Connection: close`):
/// returns the status code.
fn h1_get(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let mut tls = connect(addr, ALPN_H1)?;
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    tls.flush()?;
    let mut reply = Vec::new();
    match tls.read_to_end(&mut reply) {
        Ok(_) => {}
        // The server may close without close_notify after `Connection: close`.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !reply.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&reply);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status line in {text:?}")))
}

/// Latencies of `count` legitimate requests, each on a new TLS connection (handshake
/// included), one after the other.
fn legit_latencies(addr: SocketAddr, count: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        match h1_get(addr, "/") {
            Ok(200) => latencies.push(started.elapsed()),
            Ok(status) => panic!("legitimate request answered {status}"),
            Err(error) => panic!(
                "legitimate request failed after {:?}: {error}",
                started.elapsed()
            ),
        }
    }
    latencies.sort();
    latencies
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

/// Runs `attackers` threads of `attack` until the returned guard is dropped.
struct Attack {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Attack {
    fn start(attackers: usize, attack: impl Fn(&AtomicBool) + Send + Sync + 'static) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let attack = Arc::new(attack);
        let threads = (0..attackers)
            .map(|_| {
                let stop = stop.clone();
                let attack = attack.clone();
                thread::spawn(move || attack(&stop))
            })
            .collect();
        Attack { stop, threads }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// 4 HTTP/2 connections write, as fast as they can, frames that need no answer
/// (PRIORITY, an unknown type, WINDOW_UPDATE on stream 0) and PINGs whose ACKs they read.
/// New TLS connections with a request each must keep completing quickly beside them.
#[test]
fn h2_frame_flood_does_not_starve_other_connections() {
    let server = tls_server()
        .spawn(|_req, _info| Response::new(Body::from("ok")))
        .expect("spawn");
    let addr = addr(&server);
    let baseline = legit_latencies(addr, 5);

    let flooded = Arc::new(AtomicU64::new(0));
    let counter = flooded.clone();
    let attack = Attack::start(4, move |stop| {
        let mut batch = Vec::new();
        for i in 0..1000u32 {
            // PRIORITY for an idle stream: stream 2i+3 depends on stream 0.
            batch.extend(frame(0x2, 0, 2 * i + 3, &[0, 0, 0, 0, 16]));
            batch.extend(frame(0xfa, 0, 0, b"unknown!"));
            batch.extend(frame(0x8, 0, 0, &1u32.to_be_bytes()));
            if i % 100 == 0 {
                batch.extend(frame(0x6, 0, 0, b"pingpong"));
            }
        }
        let mut scratch = vec![0; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut tls) = connect(addr, ALPN_H2) else {
                continue;
            };
            let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(1)));
            if tls.write_all(H2_PREFACE).is_err() || tls.write_all(&settings(&[])).is_err() {
                continue;
            }
            while !stop.load(Ordering::Relaxed) {
                if tls.write_all(&batch).is_err() {
                    break;
                }
                counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
                // Take the PING ACKs (and anything else) that arrived.
                match tls.read(&mut scratch) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        }
    });
    thread::sleep(Duration::from_millis(500));
    let before = flooded.load(Ordering::Relaxed);
    let during = legit_latencies(addr, 20);
    let flood_bytes = flooded.load(Ordering::Relaxed) - before;
    drop(attack);
    eprintln!(
        "baseline median {:?}; under flood median {:?}, max {:?}; {} MiB of frames flooded meanwhile",
        median(&baseline),
        median(&during),
        during[during.len() - 1],
        flood_bytes >> 20
    );
    assert!(
        flood_bytes > 8 << 20,
        "the flood did not run ({flood_bytes} bytes): the test proves nothing"
    );
    // Without the budget the first flooding connection keeps the reactor: requests wait
    // seconds (handshakes time out after 10 s).
    assert!(
        median(&during) < Duration::from_millis(500),
        "legitimate requests slowed down under the flood: {during:?}"
    );
    assert!(
        during[during.len() - 1] < Duration::from_secs(3),
        "a legitimate request waited too long under the flood: {during:?}"
    );
    server.shutdown().expect("shutdown");
}

/// 50 HTTP/1.1 connections pipeline requests as fast as they can and never read a
/// response. New TLS connections with a request each must keep completing quickly.
#[test]
fn h1_pipelining_never_read_does_not_starve_other_connections() {
    let server = tls_server()
        .spawn(|_req, _info| Response::new(Body::from("ok")))
        .expect("spawn");
    let addr = addr(&server);
    let pipelined = Arc::new(AtomicU64::new(0));
    let counter = pipelined.clone();
    let batch = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(1000);
    let attack = Attack::start(10, move |stop| {
        // Each thread holds 5 connections.
        let mut connections: Vec<Tls> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if connections.len() < 5 {
                if let Ok(tls) = connect(addr, ALPN_H1) {
                    let _ = tls.sock.set_write_timeout(Some(Duration::from_millis(20)));
                    connections.push(tls);
                }
                continue;
            }
            for tls in &mut connections {
                if tls.write_all(batch.as_bytes()).is_ok() {
                    counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
            }
            thread::sleep(Duration::from_millis(1));
        }
    });
    thread::sleep(Duration::from_millis(500));
    let before = pipelined.load(Ordering::Relaxed);
    let during = legit_latencies(addr, 20);
    let sent = pipelined.load(Ordering::Relaxed) - before;
    drop(attack);
    eprintln!(
        "under pipelining median {:?}, max {:?}; {} KiB pipelined meanwhile",
        median(&during),
        during[during.len() - 1],
        sent >> 10
    );
    assert!(
        median(&during) < Duration::from_millis(500),
        "legitimate requests slowed down: {during:?}"
    );
    assert!(
        during[during.len() - 1] < Duration::from_secs(3),
        "a legitimate request waited too long: {during:?}"
    );
    server.shutdown().expect("shutdown");
}
