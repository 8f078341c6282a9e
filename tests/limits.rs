//! Timeouts and limits against misbehaving clients: silent and stalled handshakes,
//! slowloris headers, idle keep-alive connections, slow request bodies, clients that stop
//! reading, the connection limit, load shedding, oversized heads, missing `Host`, HTTP/2
//! rapid reset and HTTP/2 keep-alive pings.
//!
//! Every limit is set short so that the suite runs in seconds; every wait is bounded, and
//! timing windows are generous (a shared, noisy machine) but still able to fail.

mod common;

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hyper::body::Bytes;
use hyper::{StatusCode, Version};
use portcullis::{Body, ConnectionInfo, Limits, Request, Response, ServerHandle};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn spawn_limited<F>(limits: Limits, handler: F) -> ServerHandle
where
    F: Fn(Request, ConnectionInfo) -> Response + Send + Sync + 'static,
{
    tls_server()
        .limits(limits)
        .spawn(handler)
        .expect("spawn server")
}

/// Answers at once with `ok <path>`.
fn ok_handler(req: Request, _info: ConnectionInfo) -> Response {
    Response::new(Body::from(format!("ok {}", req.uri().path())))
}

/// Polls `cond` every few milliseconds for up to `limit`.
async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a client saw until the server closed the connection.
struct Closed {
    /// The first bytes received (at most 1 MiB is kept).
    received: Vec<u8>,
    /// Every byte received.
    total: u64,
    /// When the close (EOF or error) was seen.
    at: Instant,
    /// "EOF" or the read error.
    how: String,
}

/// Reads until EOF or a read error, for at most `limit` (panics with `what` after that).
async fn read_until_closed<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
    what: &str,
) -> Closed {
    let mut received = Vec::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let how = within(limit, what, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return "EOF".to_string(),
                Ok(n) => {
                    total += n as u64;
                    if received.len() < 1 << 20 {
                        received.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e) => return format!("error: {e}"),
            }
        }
    })
    .await;
    Closed {
        received,
        total,
        at: Instant::now(),
        how,
    }
}

/// The status code of a raw HTTP/1.x response.
fn status_of(response: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(response.get(..12)?).ok()?;
    line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

fn head_of(response: &[u8]) -> String {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len().min(200));
    String::from_utf8_lossy(&response[..end]).into_owned()
}

/// Sends `request` raw over a new TLS (HTTP/1.1 by ALPN) connection and reads until the
/// server closes.
async fn raw_h1_exchange(addr: SocketAddr, request: &[u8]) -> Closed {
    let mut stream = tls_connect(addr, ALPN_H1).await.expect("TLS connect (h1)");
    stream.write_all(request).await.expect("write request");
    stream.flush().await.expect("flush request");
    read_until_closed(
        &mut stream,
        Duration::from_secs(5),
        "the server to answer and close",
    )
    .await
}

/// Closes a hyper client connection now (drops its socket).
fn close_client(mut client: Client) {
    client.conn_task().abort();
    drop(client);
}

// Raw HTTP/2 frames -----------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const MAX_FRAME: usize = 16_384;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= MAX_FRAME);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// GOAWAY's last stream id and error code.
    fn goaway(&self) -> (u32, u32) {
        let word = |i: usize| {
            u32::from_be_bytes([
                self.payload[i],
                self.payload[i + 1],
                self.payload[i + 2],
                self.payload[i + 3],
            ])
        };
        (word(0) & 0x7fff_ffff, word(4))
    }

    /// RST_STREAM's error code.
    fn reset_code(&self) -> u32 {
        u32::from_be_bytes([
            self.payload[0],
            self.payload[1],
            self.payload[2],
            self.payload[3],
        ])
    }
}

async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Frame> {
    let mut head = [0u8; 9];
    reader.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    reader.read_exact(&mut payload).await?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, prefix_bits: u8, flags: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// `GET https://<authority>/` as an HPACK block: static-table indexes and one literal.
fn hpack_get(authority: &str) -> Vec<u8> {
    // :method GET, :path /, :scheme https.
    let mut block = vec![0x82, 0x84, 0x87];
    // :authority: literal without indexing, indexed name 1.
    hpack_int(&mut block, 4, 0x00, 1);
    hpack_int(&mut block, 7, 0x00, authority.len());
    block.extend_from_slice(authority.as_bytes());
    block
}

/// Appends a literal header field without indexing, new name.
fn hpack_literal(block: &mut Vec<u8>, name: &str, value: &[u8]) {
    block.push(0x00);
    hpack_int(block, 7, 0x00, name.len());
    block.extend_from_slice(name.as_bytes());
    hpack_int(block, 7, 0x00, value.len());
    block.extend_from_slice(value);
}

/// A header block as HEADERS (with END_STREAM) plus CONTINUATION frames.
fn headers_frames(stream: u32, block: &[u8]) -> Vec<u8> {
    let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let end_headers = if last { END_HEADERS } else { 0 };
        if i == 0 {
            out.extend(frame(HEADERS, END_STREAM | end_headers, stream, chunk));
        } else {
            out.extend(frame(CONTINUATION, end_headers, stream, chunk));
        }
    }
    out
}

/// HPACK's Huffman code (RFC 7541 Appendix B) for the digits, as (code, bits).
const HUFFMAN_DIGITS: [(u32, u32); 10] = [
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
];

/// A three-digit status as an HPACK string literal, Huffman-coded.
fn huffman_status(status: u16) -> Vec<u8> {
    let (mut acc, mut bits) = (0u32, 0u32);
    for digit in status.to_string().bytes() {
        let (code, len) = HUFFMAN_DIGITS[(digit - b'0') as usize];
        acc = (acc << len) | code;
        bits += len;
    }
    // Pad with the most significant bits of EOS (all ones) to whole bytes.
    let pad = (8 - bits % 8) % 8;
    acc = (acc << pad) | ((1 << pad) - 1);
    bits += pad;
    let bytes: Vec<u8> = (0..bits / 8)
        .rev()
        .map(|i| (acc >> (i * 8)) as u8)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

/// The `:status` of a response HEADERS block from a fresh HPACK context: the first field,
/// either indexed (static table 8..=14) or a literal with the indexed name 8.
fn response_status(block: &[u8]) -> Option<u16> {
    const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let first = *block.first()?;
    if (0x88..=0x8e).contains(&first) {
        return Some(STATIC[(first - 0x88) as usize]);
    }
    // Literal with incremental indexing (0x48), without indexing (0x08), never indexed (0x18).
    if ![0x48, 0x08, 0x18].contains(&first) {
        return None;
    }
    let value = &block[1..];
    (100..600).find(|&status: &u16| {
        let plain: Vec<u8> = [&[3u8][..], status.to_string().as_bytes()].concat();
        value.starts_with(&plain) || value.starts_with(&huffman_status(status))
    })
}

/// TLS with ALPN h2, the client preface and an empty SETTINGS, then the server's SETTINGS
/// acknowledged: a raw HTTP/2 connection ready for frames.
async fn h2_open(addr: SocketAddr) -> TlsStream<TcpStream> {
    let mut stream = tls_connect(addr, ALPN_H2).await.expect("TLS connect (h2)");
    assert_eq!(negotiated_alpn(&stream).as_deref(), Some(&b"h2"[..]));
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.expect("write preface");
    loop {
        let frame = within(
            Duration::from_secs(5),
            "the server's SETTINGS",
            read_frame(&mut stream),
        )
        .await
        .expect("read the server's SETTINGS");
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            break;
        }
    }
    stream
        .write_all(&frame(SETTINGS, ACK, 0, &[]))
        .await
        .expect("write SETTINGS ACK");
    stream
}

// ---------------------------------------------------------------------------------------
// 1, 2: handshake deadline
// ---------------------------------------------------------------------------------------

fn handshake_limits() -> Limits {
    let mut limits = Limits::default();
    limits.handshake_timeout = Duration::from_millis(500);
    limits
}

fn assert_handshake_close(what: &str, connected: Instant, closed: &Closed) {
    let elapsed = closed.at - connected;
    eprintln!(
        "{what}: closed after {elapsed:?} ({}), server sent {:02x?}",
        closed.how, closed.received
    );
    if let Some(&first) = closed.received.first() {
        assert_eq!(first, 0x15, "{what}: expected nothing or a TLS alert");
    }
    assert!(
        elapsed >= Duration::from_millis(400),
        "{what}: closed after {elapsed:?}, before the 500 ms handshake timeout"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "{what}: closed only after {elapsed:?} with a 500 ms handshake timeout"
    );
}

#[test]
fn silent_tcp_connection_is_closed_at_the_handshake_deadline() {
    let handle = spawn_limited(handshake_limits(), ok_handler);
    let addr = addr(&handle);
    block_on(async move {
        let mut stream = tcp(addr).await.expect("connect");
        let connected = Instant::now();
        let closed = read_until_closed(&mut stream, Duration::from_secs(5), "the close").await;
        assert_handshake_close("silent client", connected, &closed);
        // Others are still served.
        assert_eq!(
            get_tls(addr, Version::HTTP_11, "/").await.status,
            StatusCode::OK
        );
    });
    stop(handle);
}

#[test]
fn partial_client_hello_is_closed_at_the_handshake_deadline() {
    let handle = spawn_limited(handshake_limits(), ok_handler);
    let addr = addr(&handle);
    // A real ClientHello, as rustls writes it.
    let name = ServerName::try_from("localhost").expect("server name");
    let mut client =
        rustls::ClientConnection::new(client_config(ALPN_BOTH), name).expect("client session");
    let mut hello = Vec::new();
    client.write_tls(&mut hello).expect("write ClientHello");
    assert_eq!(hello[0], 0x16, "a handshake record");
    assert!(hello.len() > 100, "ClientHello of {} bytes", hello.len());
    block_on(async move {
        let mut stream = tcp(addr).await.expect("connect");
        let connected = Instant::now();
        stream.write_all(&hello[..20]).await.expect("write");
        let closed = read_until_closed(&mut stream, Duration::from_secs(5), "the close").await;
        assert_handshake_close("first 20 bytes of a ClientHello", connected, &closed);
        assert_eq!(
            get_tls(addr, Version::HTTP_2, "/").await.status,
            StatusCode::OK
        );
    });
    stop(handle);
}

// ---------------------------------------------------------------------------------------
// 3: slowloris headers
// ---------------------------------------------------------------------------------------

/// Sends a request head for `path` that never ends (a header line growing forever), one
/// byte every 100 ms, `bytes` bytes at most; the task answers how many went out before
/// the server closed.
fn trickle_head<W>(mut writer: W, path: &str, bytes: usize) -> tokio::task::JoinHandle<usize>
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-a: ").into_bytes();
    tokio::spawn(async move {
        let mut sent = 0usize;
        for byte in head.into_iter().chain(std::iter::repeat(b'a')).take(bytes) {
            if writer.write_all(&[byte]).await.is_err() || writer.flush().await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent
    })
}

/// A server whose HTTP/1 request header timeout (1 s) is far shorter than its idle and
/// handshake timeouts (10 s), so that only the header deadline can close a connection
/// within the tests below.
fn header_deadline_server() -> ServerHandle {
    let mut limits = Limits::default();
    limits.request_header_timeout = Duration::from_secs(1);
    limits.idle_timeout = Duration::from_secs(10);
    limits.handshake_timeout = Duration::from_secs(10);
    spawn_limited(limits, ok_handler)
}

/// The connection closed at the 1 s header deadline counted from `since` (before `within`
/// had passed), with no answer but, at most, a `408`.
fn assert_cut_at_header_deadline(closed: &Closed, since: Instant, within: Duration, what: &str) {
    let elapsed = closed.at - since;
    eprintln!(
        "closed {elapsed:?} after {what} ({}), server sent {:?}",
        closed.how,
        head_of(&closed.received)
    );
    assert!(
        elapsed >= Duration::from_millis(800),
        "closed {elapsed:?} after {what}, before the 1 s header timeout"
    );
    assert!(
        elapsed < within,
        "closed only {elapsed:?} after {what} with a 1 s header timeout"
    );
    assert!(
        closed.received.is_empty() || status_of(&closed.received) == Some(408),
        "no answer but a 408 to a head that never ended: {} ({})",
        head_of(&closed.received),
        closed.how
    );
}

#[test]
fn trickled_request_head_is_closed_at_the_header_deadline() {
    let handle = header_deadline_server();
    let addr = addr(&handle);
    block_on(async move {
        let stream = tls_connect(addr, ALPN_H1).await.expect("TLS connect");
        let started = Instant::now();
        let (mut reader, writer) = tokio::io::split(stream);
        let trickle = trickle_head(writer, "/", 80);
        let closed = read_until_closed(&mut reader, Duration::from_secs(6), "the close").await;
        let sent = within(Duration::from_secs(10), "the trickle", trickle)
            .await
            .expect("trickle task");
        eprintln!("trickled head: {sent} bytes sent");
        assert_cut_at_header_deadline(&closed, started, Duration::from_secs(4), "the connect");
    });
    stop(handle);
}

/// The header deadline of a keep-alive connection runs from the end of the previous
/// response: a second head trickled in after it is cut at that deadline, however recently
/// its last byte came.
#[test]
fn second_request_head_trickled_on_a_keep_alive_connection_is_closed_at_the_header_deadline() {
    let handle = header_deadline_server();
    let addr = addr(&handle);
    block_on(async move {
        let stream = tls_connect(addr, ALPN_H1).await.expect("TLS connect");
        let (mut reader, mut writer) = tokio::io::split(stream);
        writer
            .write_all(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write the first request");
        let mut first = Vec::new();
        let mut buf = [0u8; 4096];
        while !first.ends_with(b"ok /one") {
            let n = within(
                Duration::from_secs(5),
                "the first response",
                reader.read(&mut buf),
            )
            .await
            .expect("read the first response");
            assert!(n > 0, "closed before the first response: {first:?}");
            first.extend_from_slice(&buf[..n]);
        }
        let answered = Instant::now();
        assert_eq!(status_of(&first), Some(200), "{}", head_of(&first));
        let trickle = trickle_head(writer, "/two", 60);
        let closed = read_until_closed(&mut reader, Duration::from_secs(6), "the close").await;
        trickle.abort();
        assert_cut_at_header_deadline(
            &closed,
            answered,
            Duration::from_secs(3),
            "the first response",
        );
    });
    stop(handle);
}

/// The header deadline of the first request counts from the end of the handshake, not
/// from the accept: a client slow to start its handshake (within the handshake timeout)
/// still gets its whole header time.
#[test]
fn first_request_head_gets_its_header_time_after_a_slow_handshake() {
    let handle = header_deadline_server();
    let addr = addr(&handle);
    block_on(async move {
        let tcp = tcp(addr).await.expect("TCP connect");
        // Longer than the header timeout, shorter than the handshake timeout.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let name = ServerName::try_from("localhost").expect("server name");
        let mut stream = within(
            Duration::from_secs(5),
            "the handshake",
            TlsConnector::from(client_config(ALPN_H1)).connect(name, tcp),
        )
        .await
        .expect("TLS handshake after the pause");
        // Half the header time passes before the request goes out.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stream
            .write_all(b"GET /late HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write the request");
        let closed = read_until_closed(&mut stream, Duration::from_secs(5), "the response").await;
        assert_eq!(
            status_of(&closed.received),
            Some(200),
            "{} ({})",
            head_of(&closed.received),
            closed.how
        );
        assert!(
            closed.received.ends_with(b"ok /late"),
            "{:?}",
            closed.received
        );
    });
    stop(handle);
}

/// The request header deadline is HTTP/1's: an HTTP/2 connection, whose requests are
/// framed, stays open past it while idle, up to the idle timeout.
#[test]
fn http2_connection_is_not_held_to_the_http1_header_deadline() {
    let handle = header_deadline_server();
    let addr = addr(&handle);
    block_on(async move {
        let mut client = Client::connect_tls(addr, Version::HTTP_2).await;
        assert_eq!(
            client.get("/one").await.expect("GET").status,
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !client.is_closed(),
            "HTTP/2 connection closed at the header timeout"
        );
        let reply = client
            .get("/two")
            .await
            .expect("GET on the same connection");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(&reply.body[..], b"ok /two");
    });
    stop(handle);
}

// ---------------------------------------------------------------------------------------
// 4: idle keep-alive connections
// ---------------------------------------------------------------------------------------

fn idle_limits() -> Limits {
    let mut limits = Limits::default();
    limits.idle_timeout = Duration::from_secs(1);
    limits.request_header_timeout = Duration::from_secs(10);
    limits
}

fn idle_keep_alive_connection_is_closed(version: Version) {
    let handle = spawn_limited(idle_limits(), ok_handler);
    let addr = addr(&handle);
    block_on(async move {
        let mut client = Client::connect_tls(addr, version).await;
        let reply = client.get("/one").await.expect("GET");
        assert_eq!(reply.status, StatusCode::OK);
        let answered = Instant::now();
        let ended = within(
            Duration::from_secs(4),
            "the server to close the idle connection",
            client.conn_task(),
        )
        .await
        .expect("connection task");
        let elapsed = answered.elapsed();
        eprintln!("{version:?}: idle connection closed after {elapsed:?}: {ended:?}");
        assert!(client.is_closed());
        assert!(
            elapsed >= Duration::from_millis(800),
            "{version:?}: closed after {elapsed:?}, before the 1 s idle timeout"
        );
        // The server still serves new connections.
        assert_eq!(get_tls(addr, version, "/two").await.status, StatusCode::OK);
    });
    stop(handle);
}

#[test]
fn idle_keep_alive_http1_connection_is_closed_at_the_idle_deadline() {
    idle_keep_alive_connection_is_closed(Version::HTTP_11);
}

#[test]
fn idle_http2_connection_is_closed_at_the_idle_deadline() {
    idle_keep_alive_connection_is_closed(Version::HTTP_2);
}

// ---------------------------------------------------------------------------------------
// 5: slow request bodies
// ---------------------------------------------------------------------------------------

/// What the body-reading handler saw.
#[derive(Default)]
struct BodyOutcome {
    calls: AtomicUsize,
    result: Mutex<Option<(Result<usize, io::ErrorKind>, Instant)>>,
}

fn slow_body_server(outcome: Arc<BodyOutcome>) -> ServerHandle {
    let mut limits = Limits::default();
    limits.min_request_body_rate = 1000;
    limits.min_rate_grace = Duration::from_secs(1);
    limits.request_body_timeout = Duration::from_secs(5);
    spawn_limited(limits, move |req: Request, _info: ConnectionInfo| {
        outcome.calls.fetch_add(1, Ordering::SeqCst);
        let mut body = Vec::new();
        let result = req.into_body().read_to_end(&mut body).map_err(|e| e.kind());
        *outcome.result.lock().unwrap() = Some((result, Instant::now()));
        Response::new(Body::from("read"))
    })
}

/// Sends a POST head announcing `content_length`, then one body byte every 200 ms until
/// the server closes; returns what the client read and when the head was sent.
async fn trickle_body(addr: SocketAddr, content_length: usize) -> (Closed, Instant, usize) {
    let stream = tls_connect(addr, ALPN_H1).await.expect("TLS connect");
    let (mut reader, mut writer) = tokio::io::split(stream);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {content_length}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.expect("write head");
    let started = Instant::now();
    let sent = Arc::new(AtomicUsize::new(0));
    let trickle = tokio::spawn({
        let sent = sent.clone();
        async move {
            while sent.load(Ordering::SeqCst) < 50 {
                if writer.write_all(b"x").await.is_err() || writer.flush().await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let closed =
        read_until_closed(&mut reader, Duration::from_secs(8), "the server to close").await;
    trickle.abort();
    let sent = sent.load(Ordering::SeqCst);
    (closed, started, sent)
}

#[test]
fn trickled_large_body_fails_the_handler_read_with_timed_out_and_closes() {
    let outcome = Arc::new(BodyOutcome::default());
    let handle = slow_body_server(outcome.clone());
    let addr = addr(&handle);
    block_on(async move {
        // 1 MiB: above buffered_body_limit, so it streams to the handler.
        let (closed, started, _) = trickle_body(addr, 1 << 20).await;
        let closed_after = closed.at - started;
        wait_for(Duration::from_secs(2), "the handler's read to end", || {
            outcome.result.lock().unwrap().is_some()
        })
        .await;
        let (result, at) = outcome.result.lock().unwrap().take().expect("result");
        let failed_after = at - started;
        eprintln!(
            "large trickled body: handler read {result:?} after {failed_after:?}; \
             connection closed after {closed_after:?} ({}), server sent {:?}",
            closed.how,
            head_of(&closed.received)
        );
        assert_eq!(outcome.calls.load(Ordering::SeqCst), 1);
        assert_eq!(result, Err(io::ErrorKind::TimedOut));
        // Below 1000 B/s once the 1 s grace has passed.
        assert!(
            failed_after >= Duration::from_millis(800),
            "the body failed after {failed_after:?}, within the 1 s grace"
        );
        assert!(
            failed_after < Duration::from_secs(5),
            "the body failed only after {failed_after:?}"
        );
        assert!(
            closed_after < Duration::from_secs(6),
            "connection closed only after {closed_after:?}"
        );
    });
    stop(handle);
}

#[test]
fn trickled_small_body_gets_408_and_the_handler_is_never_called() {
    let outcome = Arc::new(BodyOutcome::default());
    let handle = slow_body_server(outcome.clone());
    let addr = addr(&handle);
    block_on(async move {
        // 100 bytes: below buffered_body_limit, so it is collected before the handler.
        let (closed, started, sent) = trickle_body(addr, 100).await;
        let elapsed = closed.at - started;
        eprintln!(
            "small trickled body: {:?} after {elapsed:?} ({}), {sent} bytes sent",
            head_of(&closed.received),
            closed.how
        );
        assert_eq!(
            status_of(&closed.received),
            Some(408),
            "{:?}",
            head_of(&closed.received)
        );
        assert!(
            elapsed >= Duration::from_millis(800),
            "408 after {elapsed:?}, within the 1 s grace"
        );
        assert!(elapsed < Duration::from_secs(5), "408 after {elapsed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            outcome.calls.load(Ordering::SeqCst),
            0,
            "the handler was called"
        );
    });
    stop(handle);
}

// ---------------------------------------------------------------------------------------
// 6: a client that never reads
// ---------------------------------------------------------------------------------------

#[test]
fn client_that_never_reads_is_dropped_and_its_worker_freed() {
    let mut limits = Limits::default();
    limits.send_timeout = Duration::from_secs(1);
    limits.max_workers = 1;
    let handle = spawn_limited(limits, |req: Request, _info: ConnectionInfo| {
        if req.uri().path() == "/big" {
            Response::new(Body::from_reader(io::repeat(b'x').take(64 << 20)))
        } else {
            Response::new(Body::from("small"))
        }
    });
    let addr = addr(&handle);
    let handle = Arc::new(handle);
    let stats = handle.clone();
    block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let tcp = within(Duration::from_secs(5), "connect", socket.connect(addr))
            .await
            .expect("connect");
        let name = ServerName::try_from("localhost").expect("server name");
        let mut stalled = within(
            Duration::from_secs(5),
            "TLS handshake",
            TlsConnector::from(client_config(ALPN_H1)).connect(name, tcp),
        )
        .await
        .expect("TLS handshake");
        stalled
            .write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write request");
        stalled.flush().await.expect("flush");
        let sent = Instant::now();
        // The response is pulled: the only worker fills the pipe once and goes back to
        // the pool while the client does not read.
        wait_for(
            Duration::from_secs(3),
            "busy == 0 (worker held by a non-reader)",
            || stats.worker_stats().busy == 0,
        )
        .await;
        let free_after = sent.elapsed();

        // So a second request on a fresh connection gets that worker at once.
        let second = within(
            Duration::from_secs(2),
            "the second request (worker held by the non-reader)",
            get_tls(addr, Version::HTTP_11, "/small"),
        )
        .await;
        let second_after = sent.elapsed();
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(second.text(), "small");

        // Past the send timeout (1 s) the stalled connection is cut: draining it then ends
        // in EOF or an error long before 64 MiB.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // And the stalled connection was cut: draining it ends in EOF or an error long
        // before 64 MiB.
        let closed = read_until_closed(
            &mut stalled,
            Duration::from_secs(10),
            "the stalled connection to be closed",
        )
        .await;
        eprintln!(
            "non-reading client: second request done {second_after:?} after the first was \
             sent, busy == 0 at {free_after:?}; stalled connection ended ({}) after {} bytes",
            closed.how, closed.total
        );
        assert!(
            closed.total < 32 << 20,
            "{} bytes arrived: the response was not cut",
            closed.total
        );
        // send_timeout is 1 s: the worker is free, and the second request answered, 1 to
        // 2 s after the client stopped reading (measured 1.01 s alone, 2.02 s beside the
        // other tests: the stall is seen on the connection's next deadline check), and
        // before 2.6 s; a doubled timeout took 4.0 s.
        assert!(
            free_after < Duration::from_millis(2600) && second_after < Duration::from_millis(2600),
            "worker freed after {free_after:?}, second request answered after \
             {second_after:?}; send_timeout 1 s"
        );
    });
    let handle = Arc::into_inner(handle).expect("sole owner of the handle");
    stop(handle);
}

// ---------------------------------------------------------------------------------------
// 7: connection limit
// ---------------------------------------------------------------------------------------

#[test]
fn connection_limit_is_enforced_and_recovers_repeatedly() {
    let mut limits = Limits::default();
    limits.max_connections = 4;
    let handle = spawn_limited(limits, ok_handler);
    let addr = addr(&handle);
    block_on(async move {
        // Four connections that never start their handshake: counted from accept, and not
        // idle keep-alive connections, so none can be closed to make room (that case is
        // tests/hostile.rs `at_the_connection_limit_the_longest_idle_connection_makes_room`).
        let mut open = Vec::new();
        for _ in 0..4 {
            open.push(tcp(addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        for round in 0..2 {
            // One more: accepted by the kernel at most; its handshake waits.
            let waiting = tokio::spawn(async move {
                let started = Instant::now();
                let mut client = Client::connect_tls(addr, Version::HTTP_11).await;
                let connected = started.elapsed();
                let reply = client.get("/waiting").await.expect("GET");
                (client, reply, connected)
            });
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                !waiting.is_finished(),
                "round {round}: a fifth connection completed its handshake with \
                 max_connections = 4"
            );
            // Closing one lets it in.
            drop(open.remove(0));
            let (client, reply, connected) =
                within(Duration::from_secs(3), "the waiting connection", waiting)
                    .await
                    .expect("waiting task");
            eprintln!("round {round}: waiting connection handshake after {connected:?}");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), "ok /waiting");
            // Back to four silent connections.
            close_client(client);
            tokio::time::sleep(Duration::from_millis(200)).await;
            open.push(tcp(addr).await.expect("connect"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // All closed: four fresh connections at once are all served.
        open.clear();
        let mut set = JoinSet::new();
        for i in 0..4 {
            set.spawn(async move { get_tls(addr, Version::HTTP_2, &format!("/fresh{i}")).await });
        }
        let all = within(Duration::from_secs(5), "four fresh connections", async {
            let mut statuses = Vec::new();
            while let Some(reply) = set.join_next().await {
                statuses.push(reply.expect("task").status);
            }
            statuses
        })
        .await;
        assert_eq!(all, vec![StatusCode::OK; 4]);
    });
    stop(handle);
}

// ---------------------------------------------------------------------------------------
// 8: load shedding
// ---------------------------------------------------------------------------------------

#[test]
fn saturated_pool_answers_503_with_retry_after_at_once() {
    let mut limits = Limits::default();
    limits.max_workers = 1;
    limits.max_queued_requests = 0;
    let handle = spawn_limited(limits, |req: Request, info: ConnectionInfo| {
        std::thread::sleep(Duration::from_secs(1));
        ok_handler(req, info)
    });
    let addr = addr(&handle);
    block_on(async move {
        let mut a = Client::connect_tls(addr, Version::HTTP_11).await;
        let mut b = Client::connect_tls(addr, Version::HTTP_2).await;
        let timed = |reply: hyper::Result<Reply>, started: Instant| {
            (reply.expect("GET"), started.elapsed())
        };
        let (ra, rb) = tokio::join!(
            async {
                let started = Instant::now();
                timed(a.get("/a").await, started)
            },
            async {
                let started = Instant::now();
                timed(b.get("/b").await, started)
            }
        );
        eprintln!(
            "saturated pool: a {} after {:?}, b {} after {:?}",
            ra.0.status, ra.1, rb.0.status, rb.1
        );
        let (ok, refused) = match (ra.0.status, rb.0.status) {
            (StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE) => (ra, rb),
            (StatusCode::SERVICE_UNAVAILABLE, StatusCode::OK) => (rb, ra),
            other => panic!("expected one 200 and one 503, got {other:?}"),
        };
        assert!(
            refused.0.headers.contains_key("retry-after"),
            "503 without Retry-After: {:?}",
            refused.0.headers
        );
        assert!(
            refused.1 < Duration::from_millis(500),
            "the 503 took {:?}",
            refused.1
        );
        assert!(ok.1 >= Duration::from_millis(900), "200 after {:?}", ok.1);
        // Once the worker is free, requests are served again.
        assert_eq!(
            get_tls(addr, Version::HTTP_11, "/after").await.status,
            StatusCode::OK
        );
    });
    stop(handle);
}

// ---------------------------------------------------------------------------------------
// 9: oversized heads
// ---------------------------------------------------------------------------------------

#[test]
fn oversized_and_overfull_http1_heads_get_431() {
    let handle = spawn_limited(Limits::default(), ok_handler);
    let addr = addr(&handle);
    block_on(async move {
        let request = |value_len: usize, extra: &str| {
            format!(
                "GET /h HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}X-Big: {}\r\n\r\n",
                "a".repeat(value_len)
            )
        };
        // 40 KiB header (limit 32 KiB).
        let big = raw_h1_exchange(addr, request(40 << 10, "").as_bytes()).await;
        eprintln!("40 KiB header: {:?} ({})", head_of(&big.received), big.how);
        assert_eq!(status_of(&big.received), Some(431), "{}", big.how);

        // Just under the limit.
        let fits = raw_h1_exchange(addr, request(31 << 10, "").as_bytes()).await;
        assert_eq!(
            status_of(&fits.received),
            Some(200),
            "{:?}",
            head_of(&fits.received)
        );

        // 150 header fields (limit 100).
        let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
        let overfull = raw_h1_exchange(addr, request(1, &many).as_bytes()).await;
        eprintln!(
            "150 headers: {:?} ({})",
            head_of(&overfull.received),
            overfull.how
        );
        assert_eq!(status_of(&overfull.received), Some(431), "{}", overfull.how);

        // 90 fit.
        let many: String = (0..90).map(|i| format!("X-H{i}: v\r\n")).collect();
        let full = raw_h1_exchange(addr, request(1, &many).as_bytes()).await;
        assert_eq!(status_of(&full.received), Some(200));
    });
    stop(handle);
}

#[test]
fn oversized_http2_header_list_fails_the_stream() {
    let handle = spawn_limited(Limits::default(), ok_handler);
    let addr = addr(&handle);
    block_on(async move {
        let mut stream = h2_open(addr).await;
        let mut block = hpack_get("localhost");
        hpack_literal(&mut block, "x-big", &vec![b'a'; 40 << 10]);
        stream
            .write_all(&headers_frames(1, &block))
            .await
            .expect("write HEADERS");
        // Then a normal request on the same connection.
        stream
            .write_all(&headers_frames(3, &hpack_get("localhost")))
            .await
            .expect("write HEADERS");
        let mut seen = Vec::new();
        let mut stream1: Option<String> = None;
        let mut stream3: Option<String> = None;
        let ended = within(
            Duration::from_secs(5),
            "answers on streams 1 and 3",
            async {
                loop {
                    let frame = match read_frame(&mut stream).await {
                        Ok(frame) => frame,
                        Err(e) => return format!("connection closed: {e}"),
                    };
                    let slot = match frame.stream {
                        1 => &mut stream1,
                        3 => &mut stream3,
                        _ => &mut None,
                    };
                    match frame.kind {
                        GOAWAY => {
                            let (last, code) = frame.goaway();
                            return format!("GOAWAY last_stream={last} code={code:#x}");
                        }
                        HEADERS if slot.is_none() => {
                            *slot = Some(match response_status(&frame.payload) {
                                Some(status) => status.to_string(),
                                None => format!("headers {:02x?}", frame.payload),
                            });
                        }
                        RST_STREAM if slot.is_none() => {
                            *slot = Some(format!("RST_STREAM code={:#x}", frame.reset_code()));
                        }
                        _ => {}
                    }
                    seen.push((frame.kind, frame.stream));
                    if stream1.is_some() && stream3.is_some() {
                        return "both answered".to_string();
                    }
                }
            },
        )
        .await;
        eprintln!(
            "HTTP/2 40 KiB header list: stream 1 → {stream1:?}, stream 3 → {stream3:?}, {ended}"
        );
        assert_eq!(
            stream1.as_deref(),
            Some("431"),
            "the oversized stream was not answered 431 (frames {seen:?}, {ended})"
        );
        assert_eq!(
            stream3.as_deref(),
            Some("200"),
            "the connection did not keep serving ({ended})"
        );
    });
    stop(handle);
}

// ---------------------------------------------------------------------------------------
// 10: HTTP/2 rapid reset
// ---------------------------------------------------------------------------------------

/// Opens streams (HEADERS `GET /`) and cancels them (RST_STREAM CANCEL) on one raw HTTP/2
/// connection until the server sends GOAWAY or closes, or 20 000 streams were sent, while
/// a well-behaved client sends a request on another connection; then a second well-behaved
/// request follows. The handler sleeps 200 ms; eight workers.
///
/// Tight: each batch of 50 streams goes out in one write, so the server sees most resets
/// before it accepted their stream (the h2 crate's "pending accept" reset limit).
/// Paced: a stream's RST_STREAM goes out a millisecond after its HEADERS, with the next
/// stream's HEADERS, so the stream has been accepted and its handler dispatched: only
/// portcullis' own cap (handlers per connection ≤ max_concurrent_streams) applies.
fn rapid_reset(paced: bool) {
    let what = if paced { "paced" } else { "tight" };
    let mut limits = Limits::default();
    limits.max_workers = 8;
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = spawn_limited(limits, {
        let calls = calls.clone();
        move |req: Request, info: ConnectionInfo| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            ok_handler(req, info)
        }
    });
    let addr = addr(&handle);
    let handle = Arc::new(handle);
    let stats = handle.clone();
    block_on(async move {
        let stream = h2_open(addr).await;
        let (mut reader, mut writer) = tokio::io::split(stream);
        let started = Instant::now();
        // Reads every frame until the connection ends; flags the first GOAWAY.
        let first_goaway = Arc::new(Mutex::new(None::<((u32, u32), Duration)>));
        let watcher = tokio::spawn({
            let first_goaway = first_goaway.clone();
            async move {
                let (mut goaways, mut resets, mut responses) = (Vec::new(), 0usize, Vec::new());
                let ended = loop {
                    match read_frame(&mut reader).await {
                        Ok(frame) if frame.kind == GOAWAY => {
                            first_goaway
                                .lock()
                                .unwrap()
                                .get_or_insert((frame.goaway(), started.elapsed()));
                            goaways.push(frame.goaway());
                        }
                        Ok(frame) if frame.kind == RST_STREAM => resets += 1,
                        Ok(frame) if frame.kind == HEADERS => {
                            responses.push(response_status(&frame.payload))
                        }
                        Ok(_) => {}
                        Err(e) => break e.to_string(),
                    }
                };
                (goaways, started.elapsed(), resets, responses, ended)
            }
        });

        let block = hpack_get("localhost");
        let mut id = 1u32;
        let mut sent = 0usize;
        let mut write_ended = None;
        let goaway_seen = || first_goaway.lock().unwrap().is_some();
        while sent < 20_000
            && !goaway_seen()
            && !watcher.is_finished()
            && started.elapsed() < Duration::from_secs(5)
        {
            let mut batch = Vec::new();
            if paced {
                batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
                if id > 1 {
                    batch.extend(frame(RST_STREAM, 0, id - 2, &CANCEL.to_be_bytes()));
                }
                id += 2;
            } else {
                for _ in 0..50 {
                    batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
                    batch.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
                    id += 2;
                }
            }
            match tokio::time::timeout(Duration::from_secs(1), writer.write_all(&batch)).await {
                Ok(Ok(())) => sent = (id / 2) as usize,
                Ok(Err(e)) => {
                    write_ended = Some(format!("write failed: {e}"));
                    break;
                }
                Err(_) => {
                    write_ended = Some("write blocked for 1 s".to_string());
                    break;
                }
            }
            if paced {
                tokio::time::sleep(Duration::from_millis(1)).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        let sending_took = started.elapsed();
        let write_ended = write_ended.unwrap_or_else(|| {
            if goaway_seen() {
                "stopped at the first GOAWAY".to_string()
            } else {
                "stopped: limit reached or connection ended".to_string()
            }
        });
        // A well-behaved client on another connection, the moment the server has seen the
        // attack (while the attacking connection may still be winding down).
        let meanwhile = tokio::spawn(async move {
            let started = Instant::now();
            let reply = get_tls(addr, Version::HTTP_2, "/meanwhile").await;
            (reply.status, started.elapsed())
        });
        let (goaways, closed_after, resets, responses, ended) =
            within(Duration::from_secs(5), "the connection to close", watcher)
                .await
                .expect("watcher task");
        let first = *first_goaway.lock().unwrap();
        let statuses = |want: u16| responses.iter().filter(|s| **s == Some(want)).count();
        eprintln!(
            "rapid reset ({what}): {sent} streams sent in {sending_took:?} ({write_ended}); \
             first GOAWAY ((last stream id, code), when) {first:?}, all GOAWAYs {goaways:?}; \
             closed after {closed_after:?} ({ended}); from the server {resets} RST_STREAM, \
             {} responses ({} × 200, {} × 503); {} handler calls so far; workers {:?}",
            responses.len(),
            statuses(200),
            statuses(503),
            calls.load(Ordering::SeqCst),
            stats.worker_stats()
        );
        let (_, goaway_after) = first.expect("no GOAWAY before the connection ended");
        assert!(
            goaway_after < Duration::from_secs(3),
            "GOAWAY only after {goaway_after:?}"
        );
        if !paced {
            // The connection's last GOAWAY names the last stream the server processed.
            let (last_stream, code) = *goaways.last().expect("GOAWAY");
            assert!(
                last_stream < 2 * 1000,
                "the server processed {} streams before GOAWAY (code {code:#x})",
                last_stream / 2 + 1
            );
        }
        assert!(
            closed_after < Duration::from_secs(5),
            "the connection was still open {closed_after:?} after the flood began"
        );

        let (status, took) = within(Duration::from_secs(10), "the concurrent client", meanwhile)
            .await
            .expect("meanwhile task");
        eprintln!("rapid reset ({what}): concurrent client got {status} after {took:?}");

        let after = Instant::now();
        let reply = within(
            Duration::from_secs(2),
            "a well-behaved client after the flood",
            get_tls(addr, Version::HTTP_2, "/after"),
        )
        .await;
        eprintln!(
            "rapid reset ({what}): client after the flood got {} after {:?}; {} handler \
             calls; workers {:?}",
            reply.status,
            after.elapsed(),
            calls.load(Ordering::SeqCst),
            stats.worker_stats()
        );
        wait_for(Duration::from_secs(10), "the pool to drain", || {
            let now = stats.worker_stats();
            now.busy == 0 && now.queued == 0
        })
        .await;
        let flood_calls = calls.load(Ordering::SeqCst) - 2;
        eprintln!("rapid reset ({what}): {flood_calls} handler calls for the flood's streams");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(status, StatusCode::OK, "the concurrent client");
        assert!(
            took < Duration::from_secs(2),
            "a well-behaved client that arrived as the server sent GOAWAY to the flood \
             waited {took:?} for its 200 (handler 200 ms, 8 workers)"
        );
        // The flood ran at most about max_concurrent_streams (100) handlers.
        assert!(
            flood_calls <= 200,
            "{flood_calls} handlers ran for reset streams"
        );
    });
    let handle = Arc::into_inner(handle).expect("sole owner of the handle");
    stop(handle);
}

#[test]
fn http2_rapid_reset_flood_gets_goaway_and_others_are_served() {
    rapid_reset(false);
}

#[test]
fn http2_paced_rapid_reset_gets_goaway_and_others_are_served() {
    rapid_reset(true);
}

// ---------------------------------------------------------------------------------------
// 11: Host header
// ---------------------------------------------------------------------------------------

#[test]
fn host_header_is_required_once_in_http11_and_optional_in_http10() {
    let handle = spawn_limited(Limits::default(), ok_handler);
    let addr = addr(&handle);
    block_on(async move {
        for (what, request, want) in [
            ("HTTP/1.1 without Host", &b"GET / HTTP/1.1\r\n\r\n"[..], 400),
            (
                "HTTP/1.1 with two Host headers",
                &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..],
                400,
            ),
            ("HTTP/1.0 without Host", &b"GET / HTTP/1.0\r\n\r\n"[..], 200),
        ] {
            let closed = raw_h1_exchange(addr, request).await;
            eprintln!("{what}: {:?} ({})", head_of(&closed.received), closed.how);
            assert_eq!(status_of(&closed.received), Some(want), "{what}");
        }
    });
    stop(handle);
}

// ---------------------------------------------------------------------------------------
// 12: HTTP/2 keep-alive pings
// ---------------------------------------------------------------------------------------

#[test]
fn http2_client_not_answering_pings_is_closed() {
    let mut limits = Limits::default();
    limits.http2_keep_alive_interval = Some(Duration::from_millis(300));
    limits.http2_keep_alive_timeout = Duration::from_millis(500);
    let handle = spawn_limited(limits, ok_handler);
    let addr = addr(&handle);
    block_on(async move {
        let mut stream = h2_open(addr).await;
        let started = Instant::now();
        let mut first_ping = None;
        let mut frames = Vec::new();
        let ended = within(Duration::from_secs(6), "the connection to close", async {
            loop {
                match read_frame(&mut stream).await {
                    Ok(frame) => {
                        if frame.kind == PING && frame.flags & ACK == 0 && first_ping.is_none() {
                            first_ping = Some(started.elapsed());
                        }
                        frames.push(frame.kind);
                    }
                    Err(e) => return e.to_string(),
                }
            }
        })
        .await;
        let closed_after = started.elapsed();
        eprintln!(
            "keep-alive: first PING after {first_ping:?}, closed after {closed_after:?} \
             ({ended}); frame types {frames:?}"
        );
        let first_ping = first_ping.expect("no PING from the server");
        // The first PING after the 300 ms interval, the close when its 500 ms timeout has
        // passed: about 800 ms. Neither sooner (a timer that fires early) nor much later.
        assert!(
            first_ping >= Duration::from_millis(270) && first_ping < Duration::from_millis(1300),
            "first PING after {first_ping:?}, interval 300 ms"
        );
        assert!(
            closed_after >= first_ping + Duration::from_millis(450)
                && closed_after < Duration::from_millis(2000),
            "closed after {closed_after:?}, first PING after {first_ping:?}, timeout 500 ms"
        );
        // A client that answers pings is served.
        assert_eq!(
            get_tls(addr, Version::HTTP_2, "/").await.status,
            StatusCode::OK
        );
    });
    stop(handle);
}

// ---------------------------------------------------------------------------------------
// 13: the body rules in isolation
// ---------------------------------------------------------------------------------------

/// Only time spent waiting for the client counts toward the body rate: a handler that
/// pauses between reads (here 8 × 300 ms, far longer than the 200 ms grace and than the
/// 0.5 s a 512 KiB body is allowed at 1 MB/s) still reads the whole body of a client that
/// sent it at once.
#[test]
fn body_rate_counts_only_time_spent_waiting_for_the_client() {
    let mut limits = Limits::default();
    limits.min_request_body_rate = 1_000_000;
    limits.min_rate_grace = Duration::from_millis(200);
    limits.request_body_timeout = Duration::from_secs(5);
    let handle = spawn_limited(limits, |req: Request, _info: ConnectionInfo| {
        let mut body = req.into_body();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        let mut pauses = 0;
        loop {
            match body.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => return Response::new(Body::from(format!("read failed: {:?}", e.kind()))),
            }
            if pauses < 8 && total >= (pauses + 1) * 64 * 1024 {
                pauses += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        Response::new(Body::from(format!("read {total} bytes, {pauses} pauses")))
    });
    let addr = addr(&handle);
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let body = Bytes::from(vec![b'b'; 512 * 1024]);
            let started = Instant::now();
            let reply = within(
                Duration::from_secs(15),
                "the slow-reading handler",
                post_tls(addr, version, "/upload", body),
            )
            .await;
            eprintln!(
                "{version:?}: {} {:?} after {:?}",
                reply.status,
                reply.text(),
                started.elapsed()
            );
            assert_eq!(reply.status, StatusCode::OK, "{version:?}");
            assert_eq!(reply.text(), "read 524288 bytes, 8 pauses", "{version:?}");
        }
    });
    stop(handle);
}

/// `request_body_timeout` on its own (the rate rule off): a body that stops arriving
/// fails the handler's read with `TimedOut` at the timeout, not before and not much after;
/// a small body that stops gets 408 at the timeout.
#[test]
fn request_body_timeout_alone_cuts_a_stalled_body_at_the_timeout() {
    let outcome = Arc::new(BodyOutcome::default());
    let mut limits = Limits::default();
    limits.min_request_body_rate = 0;
    limits.request_body_timeout = Duration::from_millis(1500);
    let handle = spawn_limited(limits, {
        let outcome = outcome.clone();
        move |req: Request, _info: ConnectionInfo| {
            outcome.calls.fetch_add(1, Ordering::SeqCst);
            let mut body = Vec::new();
            let result = req.into_body().read_to_end(&mut body).map_err(|e| e.kind());
            *outcome.result.lock().unwrap() = Some((result, Instant::now()));
            Response::new(Body::from("read"))
        }
    });
    let addr = addr(&handle);
    block_on(async move {
        for (content_length, what) in [(1usize << 20, "large"), (100, "small")] {
            let mut stream = tls_connect(addr, ALPN_H1).await.expect("TLS connect");
            let head = format!(
                "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {content_length}\r\n\r\nabc"
            );
            stream.write_all(head.as_bytes()).await.expect("write head");
            stream.flush().await.expect("flush");
            let sent = Instant::now();
            let closed =
                read_until_closed(&mut stream, Duration::from_secs(8), "the server to close").await;
            let closed_after = closed.at - sent;
            eprintln!(
                "{what} stalled body, rate rule off: {:?} ({}) after {closed_after:?}",
                head_of(&closed.received),
                closed.how
            );
            if what == "large" {
                wait_for(Duration::from_secs(2), "the handler's read to end", || {
                    outcome.result.lock().unwrap().is_some()
                })
                .await;
                let (result, at) = outcome.result.lock().unwrap().take().expect("result");
                let failed_after = at - sent;
                assert_eq!(result, Err(io::ErrorKind::TimedOut), "{what}");
                assert!(
                    failed_after >= Duration::from_millis(1350)
                        && failed_after < Duration::from_millis(2500),
                    "{what}: the read failed after {failed_after:?}, timeout 1.5 s"
                );
            } else {
                assert_eq!(status_of(&closed.received), Some(408), "{what}");
                assert_eq!(
                    outcome.calls.load(Ordering::SeqCst),
                    1,
                    "the handler was called for the small body"
                );
            }
            assert!(
                closed_after >= Duration::from_millis(1350)
                    && closed_after < Duration::from_millis(3000),
                "{what}: closed after {closed_after:?}, timeout 1.5 s"
            );
        }
    });
    stop(handle);
}

// ---------------------------------------------------------------------------------------
// 14: handlers per HTTP/2 connection
// ---------------------------------------------------------------------------------------

/// A reset stream cannot stop its blocking handler, so handlers per connection are capped
/// at `max_concurrent_streams`: a client that resets its streams and opens more gets `503`
/// for the one past the cap, and GOAWAY, while no more than the cap ever run.
#[test]
fn handlers_beyond_max_concurrent_streams_get_503_and_goaway() {
    const CAP: usize = 4;
    let mut limits = Limits::default();
    limits.max_concurrent_streams = CAP as u32;
    limits.max_workers = 16;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = spawn_limited(limits, {
        let (running, peak, calls) = (running.clone(), peak.clone(), calls.clone());
        move |req: Request, info: ConnectionInfo| {
            calls.fetch_add(1, Ordering::SeqCst);
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1500));
            running.fetch_sub(1, Ordering::SeqCst);
            ok_handler(req, info)
        }
    });
    let addr = addr(&handle);
    block_on(async move {
        let mut stream = h2_open(addr).await;
        let block = hpack_get("localhost");
        // CAP streams; once their handlers run, each is reset: the handlers keep running.
        let ids: Vec<u32> = (0..CAP as u32).map(|i| 1 + 2 * i).collect();
        let mut batch = Vec::new();
        for &id in &ids {
            batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        }
        stream.write_all(&batch).await.expect("write streams");
        stream.flush().await.expect("flush");
        wait_for(
            Duration::from_secs(3),
            "the first handlers to start",
            || running.load(Ordering::SeqCst) == CAP,
        )
        .await;
        let mut resets = Vec::new();
        for &id in &ids {
            resets.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        stream.write_all(&resets).await.expect("write resets");
        stream.flush().await.expect("flush");
        // Let the server process the resets before the next streams.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Two more streams while those run.
        let started = Instant::now();
        let mut more = Vec::new();
        for id in [1 + 2 * CAP as u32, 3 + 2 * CAP as u32] {
            more.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        }
        stream.write_all(&more).await.expect("write more streams");
        stream.flush().await.expect("flush");
        let (mut statuses, mut goaway, mut first_503) = (Vec::new(), None, None);
        let ended = within(Duration::from_secs(6), "the connection to end", async {
            loop {
                match read_frame(&mut stream).await {
                    Ok(f) if f.kind == HEADERS => {
                        let status = response_status(&f.payload);
                        if status == Some(503) && first_503.is_none() {
                            first_503 = Some(started.elapsed());
                        }
                        statuses.push((f.stream, status));
                    }
                    Ok(f) if f.kind == GOAWAY => {
                        goaway.get_or_insert(f.goaway());
                    }
                    Ok(_) => {}
                    Err(e) => return e.to_string(),
                }
            }
        })
        .await;
        eprintln!(
            "cap {CAP}: responses {statuses:?}, first 503 after {first_503:?}, GOAWAY \
             {goaway:?}, connection ended ({ended}); handler calls {}, peak running {}",
            calls.load(Ordering::SeqCst),
            peak.load(Ordering::SeqCst)
        );
        assert!(
            statuses
                .iter()
                .any(|&(id, s)| id == 1 + 2 * CAP as u32 && s == Some(503)),
            "no 503 for the stream past the cap: {statuses:?}"
        );
        let first_503 = first_503.expect("503");
        assert!(
            first_503 < Duration::from_millis(1000),
            "the 503 came after {first_503:?}: it waited for a handler to end"
        );
        assert!(goaway.is_some(), "no GOAWAY after the 503");
        assert_eq!(
            peak.load(Ordering::SeqCst),
            CAP,
            "handlers running at once on one connection"
        );
        assert_eq!(calls.load(Ordering::SeqCst), CAP, "handler calls");
    });
    stop(handle);
}
