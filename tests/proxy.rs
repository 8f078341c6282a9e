//! The PROXY protocol over real sockets: a header (v1 or v2) written by a "balancer" (this
//! test), then TLS with a rustls client, then HTTP/1.1 or HTTP/2. The handler and the
//! access log see the client's address from the header; connections that break the rules
//! are closed before TLS, without a handler, with a `tracing` event that says why.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use hyper::Version;
use portcullis::{Body, Limits, ProxyProtocol, Response, Server, ServerHandle};
use tokio::io::AsyncWriteExt;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// Every event the server logs (all tests of this binary share the subscriber).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct Capture;
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                logs().lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("portcullis=info"))
            .with_ansi(false)
            .with_writer(|| Capture)
            .init();
        Mutex::new(Vec::new())
    })
}

/// Waits (bounded) for a log line containing every one of `needles`.
fn wait_for_log(needles: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
        if let Some(line) = text
            .lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
        {
            return line.to_string();
        }
        if start.elapsed() > Duration::from_secs(10) {
            panic!("no log line with {needles:?} in:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TLS server with `proxy`, a handler that describes the addresses, and a count of its
/// calls.
fn server_with(proxy: ProxyProtocol, limits: Limits) -> (ServerHandle, Arc<AtomicUsize>) {
    logs();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let handle = tls_server()
        .limits(limits)
        .proxy_protocol(proxy)
        .spawn(move |req, info| {
            counted.fetch_add(1, Ordering::SeqCst);
            Response::new(Body::from(format!(
                "client={} balancer={} path={}",
                info.peer_addr(),
                info.balancer_addr()
                    .map_or_else(|| "-".to_string(), |a| a.to_string()),
                req.uri().path()
            )))
        })
        .expect("spawn server");
    (handle, calls)
}

fn trusting_localhost() -> ProxyProtocol {
    ProxyProtocol::trusting(["127.0.0.0/8"]).unwrap()
}

fn v1(source: &str, destination: &str) -> Vec<u8> {
    let family = if source.starts_with('[') {
        "TCP6"
    } else {
        "TCP4"
    };
    let (s, d): (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

/// A v2 header: `command` 0x21 PROXY or 0x20 LOCAL, addresses and some TLVs.
fn v2(command: u8, source: &str, destination: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
    let mut body = Vec::new();
    let family = match (s, d) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("mixed families"),
    };
    body.extend_from_slice(&s.port().to_be_bytes());
    body.extend_from_slice(&d.port().to_be_bytes());
    // TLVs, as HAProxy sends them: ALPN and a unique ID, then padding (NOOP).
    body.extend_from_slice(&[
        0x01, 0, 2, b'h', b'2', 0x05, 0, 4, 1, 2, 3, 4, 0x04, 0, 3, 0, 0, 0,
    ]);
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[command, family]);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Blocking: writes `prefix` and the TLS ClientHello in one write (one segment, as a
/// balancer that forwards the client's first bytes with its header does), finishes the
/// handshake, sends `GET path` over HTTP/1.1 and returns the response text and the
/// client's local address (what the server sees as its TCP peer).
fn get_with_prefix(
    addr: SocketAddr,
    prefix: &[u8],
    path: &str,
) -> (std::io::Result<String>, SocketAddr) {
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket.set_write_timeout(Some(TIMEOUT)).unwrap();
    let local = socket.local_addr().unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = rustls::ClientConnection::new(client_config(ALPN_H1), name).unwrap();
    let mut first = prefix.to_vec();
    tls.write_tls(&mut first).unwrap();
    if let Err(e) = socket.write_all(&first) {
        return (Err(e), local);
    }
    let mut stream = rustls::StreamOwned::new(tls, socket);
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let result = stream.write_all(request.as_bytes()).and_then(|()| {
        let mut text = String::new();
        stream.read_to_string(&mut text).map(|_| text)
    });
    (result, local)
}

/// Sends raw `bytes`, then waits for the server to close; returns how long that took and
/// what it answered (nothing, for a refusal before TLS).
fn send_raw_until_closed(addr: SocketAddr, bytes: &[u8], then_close: bool) -> (Duration, Vec<u8>) {
    let mut socket = TcpStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let start = Instant::now();
    socket.write_all(bytes).unwrap();
    if then_close {
        socket.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    (start.elapsed(), answer)
}

#[test]
fn v2_tcp4_then_tls_reports_the_client_and_the_balancer() {
    let (server, calls) = server_with(trusting_localhost(), Limits::default());
    let header = v2(0x21, "203.0.113.7:4242", "198.51.100.1:443");
    let (reply, balancer) = get_with_prefix(addr(&server), &header, "/v2-tcp4");
    let reply = reply.expect("request through the header");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.ends_with(&format!(
            "client=203.0.113.7:4242 balancer={balancer} path=/v2-tcp4"
        )),
        "{reply}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The access event itself names the client (the connection's span does too, and
    // names the balancer as `peer`).
    let line = wait_for_log(&["portcullis::access", "path=\"/v2-tcp4\""]);
    let (span, event) = line.split_once("portcullis::access:").unwrap();
    assert!(event.contains("client=203.0.113.7:4242 "), "{line}");
    assert!(span.contains(&format!("peer={balancer}")), "{line}");
}

#[test]
fn v2_tcp6_and_v1_over_http2() {
    let (server, _) = server_with(trusting_localhost(), Limits::default());
    let header = v2(0x21, "[2001:db8::7]:50000", "[2001:db8::1]:443");
    let (reply, _) = get_with_prefix(addr(&server), &header, "/v2-tcp6");
    let reply = reply.expect("request through a v2 TCP6 header");
    assert!(reply.contains("client=[2001:db8::7]:50000 "), "{reply}");

    // v1 and the ClientHello in one segment: the server reads past the line (a v1 line
    // has no length field), and what it read of the ClientHello must reach rustls.
    let header = v1("[2001:db8::8]:50001", "[2001:db8::1]:443");
    let (reply, _) = get_with_prefix(addr(&server), &header, "/v1-tcp6");
    let reply = reply.expect("request through a v1 TCP6 header");
    assert!(reply.contains("client=[2001:db8::8]:50001 "), "{reply}");

    // v1, written on its own before the TLS handshake, then HTTP/2.
    let text = block_on(async {
        let mut tcp = tcp(addr(&server)).await.unwrap();
        let balancer = tcp.local_addr().unwrap();
        tcp.write_all(&v1("192.0.2.9:1234", "192.0.2.1:443"))
            .await
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(client_config(ALPN_H2))
            .connect(name, tcp)
            .await
            .expect("TLS after a v1 header");
        let mut client = Client::h2(tls, "localhost", true).await.unwrap();
        let reply = client.get("/v1-h2").await.unwrap();
        assert_eq!(reply.version, Version::HTTP_2);
        (reply.text(), balancer)
    });
    assert_eq!(
        text.0,
        format!("client=192.0.2.9:1234 balancer={} path=/v1-h2", text.1)
    );
    wait_for_log(&["portcullis::access", "client=192.0.2.9:1234", "/v1-h2"]);
}

#[test]
fn a_local_command_keeps_the_socket_address() {
    let (server, _) = server_with(trusting_localhost(), Limits::default());
    let header = v2(0x20, "203.0.113.7:4242", "198.51.100.1:443");
    let (reply, local) = get_with_prefix(addr(&server), &header, "/local");
    let reply = reply.expect("a health check with LOCAL");
    assert!(
        reply.ends_with(&format!("client={local} balancer={local} path=/local")),
        "{reply}"
    );
}

#[test]
fn a_connection_without_a_header_is_closed_before_tls() {
    let (server, calls) = server_with(trusting_localhost(), Limits::default());
    let (reply, _) = get_with_prefix(addr(&server), b"", "/no-header");
    assert!(reply.is_err(), "served without a header: {reply:?}");
    wait_for_log(&[
        "closing connection: PROXY protocol",
        "does not start with a PROXY header",
    ]);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_header_from_an_untrusted_address_is_refused() {
    let (server, calls) = server_with(
        ProxyProtocol::trusting(["10.0.0.0/8", "::1"]).unwrap(),
        Limits::default(),
    );
    let header = v2(0x21, "203.0.113.7:4242", "198.51.100.1:443");
    let (reply, _) = get_with_prefix(addr(&server), &header, "/untrusted");
    assert!(reply.is_err(), "served an untrusted balancer: {reply:?}");
    wait_for_log(&["outside the networks trusted to send PROXY headers"]);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn optional_serves_direct_clients_and_refuses_their_headers() {
    // Trusted (127.0.0.0/8): with and without a header.
    let (server, _) = server_with(trusting_localhost().optional(), Limits::default());
    let (reply, local) = get_with_prefix(addr(&server), b"", "/direct");
    let reply = reply.expect("a direct client of a trusted address");
    assert!(
        reply.ends_with(&format!("client={local} balancer=- path=/direct")),
        "{reply}"
    );
    let header = v1("192.0.2.9:1234", "192.0.2.1:443");
    let (reply, _) = get_with_prefix(addr(&server), &header, "/proxied");
    assert!(reply.expect("proxied").contains("client=192.0.2.9:1234 "));

    // Untrusted: served directly, but a header is refused.
    let (server, calls) = server_with(
        ProxyProtocol::trusting(["10.0.0.0/8"]).unwrap().optional(),
        Limits::default(),
    );
    let (reply, local) = get_with_prefix(addr(&server), b"", "/direct");
    let reply = reply.expect("a direct client");
    assert!(
        reply.ends_with(&format!("client={local} balancer=- path=/direct")),
        "{reply}"
    );
    let (reply, _) = get_with_prefix(addr(&server), &header, "/spoofed");
    assert!(reply.is_err(), "a spoofed header was accepted: {reply:?}");
    wait_for_log(&["PROXY header from a peer outside the trusted networks"]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn truncated_garbage_and_oversized_headers_close_at_once() {
    let (server, calls) = server_with(trusting_localhost(), Limits::default());
    let header = v2(0x21, "203.0.113.7:4242", "198.51.100.1:443");
    let cases: [(&[u8], bool, &str); 4] = [
        (&header[..20], true, "after 20 bytes of PROXY header"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            false,
            "does not start with a PROXY header",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 99999\r\n",
            false,
            "malformed PROXY v1 line: port out of range",
        ),
        (
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
            false,
            "over the 4096-byte limit",
        ),
    ];
    for (bytes, then_close, reason) in cases {
        let (took, answer) = send_raw_until_closed(addr(&server), bytes, then_close);
        assert!(answer.is_empty(), "answered {answer:?} to {bytes:?}");
        assert!(
            took < Duration::from_secs(5),
            "{reason}: closed after {took:?}"
        );
        wait_for_log(&["closing connection: PROXY protocol", reason]);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_slow_header_is_cut_at_the_handshake_deadline() {
    let mut limits = Limits::default();
    limits.handshake_timeout = Duration::from_millis(800);
    let (server, calls) = server_with(trusting_localhost(), limits);
    // Half a v1 line, then nothing: the rest never comes.
    let (took, answer) = send_raw_until_closed(addr(&server), b"PROXY TCP4 192.0", false);
    assert!(answer.is_empty());
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(8),
        "closed after {took:?}, the deadline is 800 ms"
    );
    wait_for_log(&["no complete PROXY header before the handshake deadline"]);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn a_plain_listener_replays_what_followed_the_header() {
    logs();
    let server = Server::bind("127.0.0.1:0")
        .unwrap()
        .proxy_protocol(trusting_localhost())
        .spawn(|_req, info| Response::new(Body::from(format!("client={}", info.peer_addr()))))
        .unwrap();
    // Header and request in one write: the request must not be lost with the header.
    let mut bytes = v1("192.0.2.9:1234", "192.0.2.1:80");
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (_, answer) = send_raw_until_closed(addr(&server), &bytes, false);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("client=192.0.2.9:1234"), "{answer}");
}

#[test]
fn the_per_address_limit_counts_the_client_named_by_the_header() {
    let mut limits = Limits::default();
    limits.max_connections_per_ip = 2;
    let (server, calls) = server_with(trusting_localhost(), limits);
    let header = v2(0x21, "203.0.113.9:5000", "198.51.100.1:443");
    // Two connections of client .9 that sent their header and wait (no handshake yet):
    // each holds a place for 203.0.113.9, not for the balancer 127.0.0.1.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(addr(&server)).unwrap();
            stream.write_all(&header).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A third connection for the same client is refused, before TLS...
    let (reply, _) = get_with_prefix(addr(&server), &header, "/third");
    assert!(
        reply.is_err(),
        "a third connection of 203.0.113.9 was served: {reply:?}"
    );
    let line = wait_for_log(&["too many from this address", "203.0.113.9"]);
    assert!(line.contains("limit=2"), "{line}");
    // ...while another client behind the same balancer (already three connections from
    // 127.0.0.1) is served.
    let other = v2(0x21, "203.0.113.10:5000", "198.51.100.1:443");
    let (reply, _) = get_with_prefix(addr(&server), &other, "/other-client");
    let reply = reply.expect("another client behind the balancer");
    assert!(reply.contains("client=203.0.113.10:5000"), "{reply}");
    // The places are given back when the held connections end.
    drop(held);
    let start = Instant::now();
    loop {
        let (reply, _) = get_with_prefix(addr(&server), &header, "/after");
        if let Ok(reply) = reply {
            assert!(reply.contains("client=203.0.113.9:5000"), "{reply}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "client .9 still refused after its connections closed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
