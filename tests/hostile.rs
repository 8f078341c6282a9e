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

/// The tests in this file measure latencies under attack: they run one at a time, so that
/// one test's flood is not another's noise.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _serial = serial();
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
    let window = Instant::now();
    let during = legit_latencies(addr, 20);
    // The flood is measured over 1 s at least: with several reactors the legitimate
    // requests may be served by another reactor than the flood's, as fast as without it,
    // and their 20 alone would be too short a window to see the flood run.
    thread::sleep(Duration::from_secs(1).saturating_sub(window.elapsed()));
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
    let _serial = serial();
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

/// A server whose `/big` streams 64 MiB from a reader and whose other paths answer `ok`,
/// with 4 workers, a 1 s grace before the minimum response rate and a 3 s send timeout.
fn streaming_server() -> portcullis::ServerHandle {
    let mut limits = portcullis::Limits::default();
    limits.max_workers = 4;
    limits.min_rate_grace = Duration::from_secs(1);
    limits.send_timeout = Duration::from_secs(3);
    limits.drain_timeout = Duration::from_secs(2);
    tls_server()
        .limits(limits)
        .spawn(|req, _info| {
            if req.uri().path() == "/big" {
                Response::new(Body::from_reader(io::repeat(b'x').take(64 << 20)))
            } else {
                Response::new(Body::from("ok"))
            }
        })
        .expect("spawn")
}

/// HPACK for `GET https://localhost{path}`, every field a literal without indexing.
fn get_headers(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https (static table)
    block.push(0x04); // :path, literal value
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.push(0x01); // :authority, literal value
    block.push(9);
    block.extend_from_slice(b"localhost");
    block
}

/// Opens an HTTP/2 connection that announces a zero initial window and requests `/big`
/// on `streams` streams.
fn zero_window_connection(addr: SocketAddr, streams: u32) -> Tls {
    let mut tls = connect(addr, ALPN_H2).expect("connect (h2)");
    let mut out = H2_PREFACE.to_vec();
    out.extend(settings(&[(0x4, 0)])); // SETTINGS_INITIAL_WINDOW_SIZE = 0
    for i in 0..streams {
        // END_STREAM | END_HEADERS
        out.extend(frame(0x1, 0x5, 2 * i + 1, &get_headers("/big")));
    }
    tls.write_all(&out).expect("write requests");
    tls.flush().expect("flush");
    tls
}

/// Reads frames until `streams` streams were reset (RST_STREAM) or `limit` passed; returns
/// how many were reset. Answers the server's SETTINGS so that it applies ours.
fn count_resets(tls: &mut Tls, streams: usize, limit: Duration) -> usize {
    let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(200)));
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut scratch = [0u8; 16 * 1024];
    let mut reset = 0;
    while reset < streams && started.elapsed() < limit {
        match tls.read(&mut scratch) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            if kind == 0x3 {
                reset += 1;
            }
            if kind == 0x4 && flags & 0x1 == 0 {
                let _ = tls.write_all(&frame(0x4, 0x1, 0, &[]));
            }
            buf.drain(..9 + len);
        }
    }
    reset
}

/// 3 HTTP/2 connections announce a zero window and request a 64 MiB streamed body on 20
/// streams each, 15 times the 4 workers. The workers must stay free (the bodies are pulled,
/// not pushed), legitimate requests fast, and every stalled stream reset by the send
/// timeout (3 s): the client takes nothing of the chunk it was handed.
#[test]
fn h2_zero_window_streams_hold_no_worker_and_are_reset() {
    let _serial = serial();
    let server = streaming_server();
    let addr = addr(&server);
    let started = Instant::now();
    let mut attackers: Vec<Tls> = (0..3).map(|_| zero_window_connection(addr, 20)).collect();
    thread::sleep(Duration::from_millis(300));
    let stats = server.worker_stats();
    let during = legit_latencies(addr, 10);
    eprintln!(
        "zero window: workers {stats:?} 300 ms in; legitimate median {:?}, max {:?}",
        median(&during),
        during[during.len() - 1]
    );
    assert_eq!(
        stats.busy, 0,
        "workers held by zero-window streams: {stats:?}"
    );
    assert!(
        during[during.len() - 1] < Duration::from_secs(2),
        "legitimate requests slowed down: {during:?}"
    );
    for (i, tls) in attackers.iter_mut().enumerate() {
        let reset = count_resets(tls, 20, Duration::from_secs(10));
        let after = started.elapsed();
        eprintln!("connection {i}: {reset} streams reset after {after:?}");
        assert_eq!(reset, 20, "stalled streams not reset after {after:?}");
        assert!(
            after >= Duration::from_millis(2500) && after < Duration::from_secs(6),
            "streams reset after {after:?}, not near the 3 s send timeout"
        );
    }
    let after = server.worker_stats();
    assert_eq!(after.busy, 0, "{after:?}");
    server.shutdown().expect("shutdown");
}

/// An HTTP/2 client that opens its window by 16 KiB every 2 s (8 KiB/s, below a minimum
/// of 16 KiB/s set for the test; the send timeout is 60 s, so only the rate can cut it) is
/// reset soon after the 1 s grace.
#[test]
fn h2_window_trickle_below_the_minimum_rate_is_reset() {
    let _serial = serial();
    let mut limits = portcullis::Limits::default();
    limits.min_rate_grace = Duration::from_secs(1);
    limits.min_response_body_rate = 16 * 1024;
    limits.drain_timeout = Duration::from_secs(2);
    let server = tls_server()
        .limits(limits)
        .spawn(|_req, _info| Response::new(Body::from_reader(io::repeat(b'x').take(64 << 20))))
        .expect("spawn");
    let addr = addr(&server);
    let mut tls = zero_window_connection(addr, 1);
    let started = Instant::now();
    let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut scratch = [0u8; 16 * 1024];
    let mut buf = Vec::new();
    let mut reset_after = None;
    let mut data = 0usize;
    let mut next_grant = Instant::now();
    while started.elapsed() < Duration::from_secs(15) && reset_after.is_none() {
        if Instant::now() >= next_grant {
            let _ = tls.write_all(&frame(0x8, 0, 1, &(16u32 * 1024).to_be_bytes()));
            next_grant += Duration::from_secs(2);
        }
        match tls.read(&mut scratch) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            match (buf[3], buf[4]) {
                (0x0, _) => data += len,
                (0x3, _) => reset_after = Some(started.elapsed()),
                (0x4, flags) if flags & 0x1 == 0 => {
                    let _ = tls.write_all(&frame(0x4, 0x1, 0, &[]));
                }
                _ => {}
            }
            buf.drain(..9 + len);
        }
    }
    eprintln!("trickle: {data} bytes of DATA, reset after {reset_after:?}");
    let reset_after = reset_after.expect("the trickling stream was never reset");
    assert!(
        reset_after >= Duration::from_millis(900) && reset_after < Duration::from_secs(8),
        "reset after {reset_after:?}, not near the 1 s grace"
    );
    server.shutdown().expect("shutdown");
}

/// 20 HTTP/1.1 clients with a 4 KiB receive buffer request 64 MiB and never read. The 4
/// workers stay free, legitimate requests fast, and each stalled connection is cut.
#[test]
fn h1_slow_readers_hold_no_worker_and_are_cut() {
    let _serial = serial();
    let server = streaming_server();
    let addr = addr(&server);
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(tiny_window_request(addr));
    }
    let started = Instant::now();
    thread::sleep(Duration::from_millis(500));
    let stats = server.worker_stats();
    let during = legit_latencies(addr, 10);
    eprintln!(
        "slow readers: workers {stats:?}; legitimate median {:?}, max {:?}",
        median(&during),
        during[during.len() - 1]
    );
    assert_eq!(stats.busy, 0, "workers held by slow readers: {stats:?}");
    assert!(
        during[during.len() - 1] < Duration::from_secs(2),
        "legitimate requests slowed down: {during:?}"
    );
    // Cut by the send timeout (3 s) or the minimum rate (after the 1 s grace): once cut, a
    // reader gets what was in flight and then the end, far short of 64 MiB.
    thread::sleep(Duration::from_secs(7).saturating_sub(started.elapsed()));
    for tls in &mut stalled {
        let mut total = 0usize;
        let mut scratch = [0u8; 64 * 1024];
        loop {
            match tls.read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        assert!(
            total < 16 << 20,
            "{total} bytes arrived: the reader was not cut"
        );
    }
    server.shutdown().expect("shutdown");
}

/// A reader that counts the bytes it hands out.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Sets its flag when dropped: the server let the response body go.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A reader that sets a flag when the server drops it.
struct Guarded<R> {
    inner: R,
    _flag: DropFlag,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

/// Connects with a 4 KiB receive buffer (so a tiny TCP window, as slowhttptest -X), asks
/// for `/big` over HTTP/1.1 and returns the connection, whose raw TCP stream is then read
/// slowly.
fn tiny_window_request(addr: SocketAddr) -> Tls {
    windowed_request(addr, 4096)
}

/// Connects with a receive buffer of `receive_buffer` bytes (a fixed TCP window), asks for
/// `/big` over HTTP/1.1 and returns the connection.
fn windowed_request(addr: SocketAddr, receive_buffer: usize) -> Tls {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .set_recv_buffer_size(receive_buffer)
        .expect("SO_RCVBUF");
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(10))
        .expect("connect");
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").expect("server name");
    let conn = ClientConnection::new(client_config(ALPN_H1), name).expect("client");
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("request");
    tls.flush().expect("flush");
    tls
}

/// A server streaming 256 MiB to every request, counting in `produced` the bytes its body
/// reader gave; send timeout 30 s, no minimum rate.
fn counting_big_server(produced: &Arc<AtomicU64>) -> portcullis::ServerHandle {
    let mut limits = portcullis::Limits::default();
    limits.send_timeout = Duration::from_secs(30);
    limits.min_response_body_rate = 0;
    limits.drain_timeout = Duration::from_secs(1);
    assert_eq!(limits.tcp_notsent_lowat, Some(128 * 1024));
    let count = produced.clone();
    tls_server()
        .limits(limits)
        .spawn(move |_req, _info| {
            Response::new(Body::from_reader(Counted {
                inner: io::repeat(b'x').take(256 << 20),
                count: count.clone(),
            }))
        })
        .expect("spawn")
}

/// A reader that takes a few bytes at a time through a tiny window must not make the
/// server's kernel buffer megabytes for it: the kernel grows a socket's send buffer as the
/// client acknowledges data, up to `tcp_wmem`'s maximum (4 MiB), and 1 000 such readers
/// then held 2.4 GB of socket memory. With `Limits::tcp_notsent_lowat` (128 KiB) what the
/// server produced stays near its own buffers (64 KiB pipe, 80 KiB of TLS records) plus
/// 128 KiB unsent in the kernel and what is in flight.
#[test]
fn h1_slow_reader_pins_little_kernel_memory() {
    let _serial = serial();
    let produced = Arc::new(AtomicU64::new(0));
    let server = counting_big_server(&produced);
    let mut readers: Vec<Tls> = (0..4).map(|_| tiny_window_request(addr(&server))).collect();
    // 32 raw bytes per reader every 50 ms for 4 s: each read opens the window a little and
    // the kernel answers with data, which is what makes it grow the send buffer.
    let mut taken = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for reader in &mut readers {
            let mut scratch = [0u8; 32];
            taken += reader.sock.read(&mut scratch).expect("slow read");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let per_reader = produced.load(Ordering::Relaxed) / readers.len() as u64;
    eprintln!("slow readers took {taken} bytes; the server produced {per_reader} bytes per reader");
    assert!(taken > 0, "the readers got nothing");
    assert!(
        per_reader < 1 << 20,
        "the server produced {per_reader} bytes for each reader taking 32 bytes at a time"
    );
    drop(readers);
    server.shutdown().expect("shutdown");
}

/// A client that takes the first MiBs fast gets a response pipe four times as deep
/// (`service::ReaderSpeed`); when it then stops reading, what the server produced for it
/// and holds stays bounded: that 256 KiB pipe, hyper's and rustls' buffers, 128 KiB unsent
/// in the kernel (`tcp_notsent_lowat`) and the client's 64 KiB window.
#[test]
fn h1_fast_then_stalled_reader_holds_a_bounded_response() {
    let _serial = serial();
    let produced = Arc::new(AtomicU64::new(0));
    let server = counting_big_server(&produced);
    let mut tls = windowed_request(addr(&server), 64 * 1024);
    let mut taken = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    while taken < 4 << 20 {
        let n = tls.read(&mut buf).expect("fast read");
        assert!(n > 0, "the response ended after {taken} bytes");
        taken += n as u64;
    }
    let fast = started.elapsed();
    // Now the client stops reading; the server fills whatever it may.
    thread::sleep(Duration::from_secs(1));
    let held = produced.load(Ordering::Relaxed).saturating_sub(taken);
    eprintln!("took {taken} bytes in {fast:?}, then stopped; the server produced {held} more");
    assert!(
        held < 2 << 20,
        "the server produced {held} bytes beyond what a stalled client took"
    );
    drop(tls);
    server.shutdown().expect("shutdown");
}

/// A reader that takes 32 bytes every 50 ms and sends a byte of a next request each time
/// (so that its connection is polled again and again) never lets the server's queue
/// drain: the send timeout (2 s here, the minimum rate off) must cut the connection,
/// which drops the response body. (The reactor's unit test
/// `a_write_after_would_block_waits_for_a_writable_event` checks the part the kernel
/// decides: with `TCP_NOTSENT_LOWAT` it takes a write as soon as anything was sent.)
#[test]
fn h1_trickling_reader_is_cut_by_the_send_timeout() {
    let _serial = serial();
    let mut limits = portcullis::Limits::default();
    limits.send_timeout = Duration::from_secs(2);
    limits.min_response_body_rate = 0;
    limits.drain_timeout = Duration::from_secs(1);
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let server = tls_server()
        .limits(limits)
        .spawn(move |_req, _info| {
            Response::new(Body::from_reader(Guarded {
                inner: io::repeat(b'x').take(256 << 20),
                _flag: DropFlag(flag.clone()),
            }))
        })
        .expect("spawn");
    let mut reader = tiny_window_request(addr(&server));
    let started = Instant::now();
    let mut cut_after = None;
    let mut taken = 0usize;
    while started.elapsed() < Duration::from_secs(8) {
        let mut scratch = [0u8; 32];
        taken += reader.sock.read(&mut scratch).unwrap_or(0);
        // One byte of a next request, so that the connection is polled again and again.
        // (Fails once the server has cut the connection.)
        reader.conn.writer().write_all(b"G").expect("byte");
        let _ = reader.conn.write_tls(&mut reader.sock);
        if dropped.load(Ordering::Acquire) {
            cut_after = Some(started.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("trickling reader took {taken} bytes; body dropped after {cut_after:?}");
    let cut_after = cut_after.expect("the trickling reader was not cut within 8 s");
    assert!(
        cut_after < Duration::from_secs(5),
        "cut after {cut_after:?}, send timeout 2 s"
    );
    drop(reader);
    server.shutdown().expect("shutdown");
}

/// Plain HTTP sent to the TLS port gets a plain-text `400` saying the port speaks HTTPS
/// (as nginx and Go answer), not a TLS alert that curl shows as "HTTP/0.9"; then the
/// connection closes. A real TLS client on the same server still works.
#[test]
fn plain_http_on_the_tls_port_gets_a_400_in_plain_text() {
    let _serial = serial();
    let server = tls_server()
        .spawn(|_req, _info| Response::new(Body::from("ok")))
        .expect("spawn");
    let addr = addr(&server);
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "reply: {text:?}"
    );
    assert!(text.ends_with("this port speaks HTTPS, not plain HTTP; use https://\n"));

    let reply = common::curl(addr, false, "/", &[]);
    assert_eq!(reply.status, 400, "curl: {}", reply.stderr);
    assert!(String::from_utf8_lossy(&reply.body).contains("speaks HTTPS"));

    assert_eq!(h1_get(addr, "/").expect("TLS request"), 200);
    server.shutdown().expect("shutdown");
}

/// Sends `request` on a fresh HTTP/1.1 TLS connection and returns everything the server
/// wrote until it closed (or 10 s passed).
fn h1_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut tls = connect(addr, ALPN_H1).expect("connect");
    tls.write_all(request).expect("write");
    tls.flush().expect("flush");
    let mut reply = Vec::new();
    let mut scratch = [0u8; 4096];
    loop {
        match tls.read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(n) => reply.extend_from_slice(&scratch[..n]),
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// A server whose handler reads the whole request body: `200 read N` or, when the read
/// fails, `400`.
fn body_reading_server() -> portcullis::ServerHandle {
    tls_server()
        .spawn(|mut req, _info| {
            let mut body = Vec::new();
            match req.body_mut().read_to_end(&mut body) {
                Ok(n) => Response::new(Body::from(format!("read {n}\n"))),
                Err(error) => {
                    let mut response = Response::new(Body::from(format!("{error}\n")));
                    *response.status_mut() = portcullis::http::StatusCode::BAD_REQUEST;
                    response
                }
            }
        })
        .expect("spawn")
}

/// RFC 9112 §6.1 and §6.3: a `Transfer-Encoding` other than one `chunked` (here
/// `identity, chunked`, and `chunked` twice) is refused with `400` and the connection
/// closes; a single `chunked` is fine.
#[test]
fn ambiguous_transfer_encoding_is_refused() {
    let _serial = serial();
    let server = body_reading_server();
    let addr = addr(&server);
    let ok = h1_raw(
        addr,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok:?}");
    assert!(ok.ends_with("read 3\n"), "{ok:?}");
    for request in [
        &b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: identity, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ] {
        let started = Instant::now();
        let reply = h1_raw(addr, request);
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
        assert!(reply.contains("connection: close"), "{reply:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "not closed");
    }
    server.shutdown().expect("shutdown");
}

/// Malformed chunk framing before any response head went out gets `400`, then the
/// connection closes.
#[test]
fn malformed_chunk_framing_gets_a_400() {
    let _serial = serial();
    let server = body_reading_server();
    let addr = addr(&server);
    for request in [
        &b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
    ] {
        let started = Instant::now();
        let reply = h1_raw(addr, request);
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "not closed");
    }
    server.shutdown().expect("shutdown");
}

/// Reads HTTP/2 frames until one of type `kind` arrives (true) or the connection ends or
/// `limit` passes (false).
fn await_frame(tls: &mut Tls, kind: u8, limit: Duration) -> bool {
    let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(100)));
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut scratch = [0u8; 16 * 1024];
    while started.elapsed() < limit {
        match tls.read(&mut scratch) {
            Ok(0) => return false,
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return false,
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == kind {
                return true;
            }
            if buf[3] == 0x4 && buf[4] & 0x1 == 0 {
                let _ = tls.write_all(&frame(0x4, 0x1, 0, &[]));
            }
            buf.drain(..9 + len);
        }
    }
    false
}

/// An HTTP/2 connection that has said hello and then sits idle.
fn idle_h2(addr: SocketAddr) -> Tls {
    let mut tls = connect(addr, ALPN_H2).expect("connect (h2)");
    let mut out = H2_PREFACE.to_vec();
    out.extend(settings(&[]));
    tls.write_all(&out).expect("preface");
    tls.flush().expect("flush");
    tls
}

/// At `max_connections` (3 here), the connection idle longest gets GOAWAY and closes so
/// that a new client is served at once, instead of waiting for an idle timeout (75 s).
#[test]
fn at_the_connection_limit_the_longest_idle_connection_makes_room() {
    let _serial = serial();
    let mut limits = portcullis::Limits::default();
    limits.max_connections = 3;
    limits.drain_timeout = Duration::from_secs(2);
    // One reactor: with several, the connection that makes room is the longest-idle one
    // of the reactor that took the new connection (or of another, if it has none idle),
    // not necessarily the longest-idle of the whole server.
    let server = tls_server()
        .reactors(1)
        .limits(limits)
        .spawn(|_req, _info| Response::new(Body::from("ok")))
        .expect("spawn");
    let addr = addr(&server);
    let mut oldest = idle_h2(addr);
    thread::sleep(Duration::from_millis(200));
    let _second = idle_h2(addr);
    let _third = idle_h2(addr);
    thread::sleep(Duration::from_millis(200));

    let started = Instant::now();
    assert_eq!(h1_get(addr, "/").expect("new client"), 200);
    let waited = started.elapsed();
    eprintln!("a new client at the limit was served after {waited:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    assert!(
        await_frame(&mut oldest, 0x7, Duration::from_secs(5)),
        "the longest-idle connection got no GOAWAY"
    );
    server.shutdown().expect("shutdown");
}

/// `max_connections_per_ip` (3 here) counts connections from `accept`, handshakes
/// included: a fourth connection from the same address is closed before its handshake,
/// and one is accepted again once a place is free.
#[test]
fn connections_per_ip_are_limited_from_accept() {
    let _serial = serial();
    let mut limits = portcullis::Limits::default();
    limits.max_connections_per_ip = 3;
    let server = tls_server()
        .limits(limits)
        .spawn(|_req, _info| Response::new(Body::from("ok")))
        .expect("spawn");
    let addr = addr(&server);
    // Two that never start their handshake, one that finished it.
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect"))
        .collect();
    let done = connect(addr, ALPN_H1).expect("third connection");
    thread::sleep(Duration::from_millis(200));
    let refused = connect(addr, ALPN_H1);
    assert!(
        refused.is_err(),
        "a fourth connection from one address got through"
    );
    drop(silent);
    drop(done);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(h1_get(addr, "/").expect("after places freed"), 200);
    server.shutdown().expect("shutdown");
}
