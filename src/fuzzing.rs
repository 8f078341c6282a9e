//! The in-memory harness that the fuzz targets in `fuzz/` and the regression tests in
//! `tests/fuzz_regressions.rs` replay inputs through. Compiled only with the `fuzzing`
//! feature; not for applications.
//!
//! A fuzz input is the client's side of one connection, cut into chunks by the fuzzer (see
//! [`encode_chunks`] for the format); before each chunk arrives, a manual clock moves
//! forward by the delay the input gives. The connection runs through exactly the code a
//! real server runs — `conn::serve` (handshake, ALPN, preface sniffing), the `Transport`,
//! hyper's HTTP/1 or HTTP/2 connection, the dispatch glue, request-body pumps and response
//! pipes, the worker pool and the reactor's executor and timer queue — only over an
//! in-memory socket instead of a mio `TcpStream`, and on a manual clock instead of the
//! system's. Its handler reads the whole request body and streams a response.
//!
//! After every input the harness checks, and panics (which the fuzzer reports) unless:
//! - everything the server wrote is well formed: HTTP/1 responses with valid heads and
//!   framing, HTTP/2 frames that follow the framing rules, whole TLS records;
//! - the connection ends within a budget of clock steps once the client has closed;
//! - no task is left on the executor, no request's response slot outlives the
//!   connection, and the worker pool is idle again.
//!
//! ```
//! // The HTTP/1 target on a request cut into two chunks, 50 ms apart.
//! let input = portcullis::fuzzing::encode_chunks(&[
//!     (0, b"GET / HTTP/1.1\r\nHo".as_slice()),
//!     (5, b"st: a\r\n\r\n".as_slice()),
//! ]);
//! portcullis::fuzzing::http1_connection(&input);
//! ```

pub mod seeds;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::conn::transport::Socket;
use crate::conn::{self, ServerContext};
use crate::reactor::leader;
use crate::reactor::task::{Executor, RunQueue};
use crate::reactor::timer::{Clock, ManualClock, TimerQueue};
use crate::reactor::ReactorHandle;
use crate::server::Protocols;
use crate::service::LIVE_SLOTS;
use crate::worker::{PoolConfig, WorkerPool, WAITING_ON_CONNECTION};
use crate::{Body, ConnectionInfo, Limits, Request, Response, TlsConfig};

/// One clock unit of a chunk's delay.
const DELAY_UNIT: Duration = Duration::from_millis(10);
/// Rounds of ready tasks allowed while settling after one chunk before the harness calls
/// it a livelock.
const MAX_SETTLE_ROUNDS: usize = 10_000;
/// Clock steps allowed, after the client closed, for the connection to end.
const MAX_END_STEPS: usize = 100;
/// Real time a handler may run without finishing or waiting for its connection. The
/// handler itself never sleeps, so only a hang gets near this.
const HANDLER_PATIENCE: Duration = Duration::from_secs(20);
/// Exchanges between the TLS client and the server per chunk.
const MAX_TLS_EXCHANGES: usize = 64;

const CERT_CHAIN: &[u8] = include_bytes!("../certs/localhost.crt");
const PRIVATE_KEY: &[u8] = include_bytes!("../certs/localhost.key");
const CA_CERT: &[u8] = include_bytes!("../certs/ca.crt");

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Encodes chunks in the input format of every target: for each chunk a delay byte (units
/// of 10 ms the clock moves before the chunk arrives), a length byte, then that many bytes.
/// Longer chunks are split, the pieces arriving without delay. (`tls_http` inputs start
/// with one more byte choosing the client's ALPN offer and TLS version; see [`tls_http`].)
pub fn encode_chunks(chunks: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(delay, bytes) in chunks {
        let mut pieces = bytes.chunks(255).peekable();
        if pieces.peek().is_none() {
            out.extend_from_slice(&[delay, 0]);
        }
        for (i, piece) in pieces.enumerate() {
            out.push(if i == 0 { delay } else { 0 });
            out.push(piece.len() as u8);
            out.extend_from_slice(piece);
        }
    }
    out
}

/// A chunk of a decoded input.
struct Chunk<'a> {
    delay: Duration,
    bytes: &'a [u8],
}

fn decode_chunks(mut data: &[u8]) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    while let [delay, len, rest @ ..] = data {
        let len = usize::from(*len).min(rest.len());
        chunks.push(Chunk {
            delay: DELAY_UNIT * u32::from(*delay),
            bytes: &rest[..len],
        });
        data = &rest[len..];
    }
    chunks
}

/// Raw client bytes into the TLS server: the handshake and ALPN selection. Returns what
/// the server sent.
pub fn tls_handshake(data: &[u8]) -> Vec<u8> {
    with_harness(|h| {
        let ctx = h.tls.clone();
        let chunks = decode_chunks(data);
        let out = h.run(&ctx, &mut RawClient, &chunks);
        let sent: Vec<u8> = chunks
            .iter()
            .flat_map(|c| c.bytes.iter().copied())
            .collect();
        if out == crate::conn::transport::PLAIN_HTTP_ANSWER {
            // Plain HTTP on the TLS port gets a plain-text 400, and only plain HTTP.
            assert!(
                crate::conn::transport::looks_like_http(&sent[..sent.len().min(8)]),
                "a plain-text 400 to bytes that are not an HTTP request line: {sent:02x?}"
            );
        } else {
            check_tls_records(&out);
        }
        out
    })
}

/// Client plaintext into an HTTP/1 connection (a plain listener serving HTTP/1 only).
/// Returns what the server sent.
pub fn http1_connection(data: &[u8]) -> Vec<u8> {
    with_harness(|h| {
        let ctx = h.plain_http1.clone();
        let out = h.run(&ctx, &mut RawClient, &decode_chunks(data));
        check_http1(&out);
        out
    })
}

/// Client frames into an HTTP/2 connection, after the connection preface (which the
/// harness sends first). Returns what the server sent.
pub fn http2_connection(data: &[u8]) -> Vec<u8> {
    with_harness(|h| {
        let ctx = h.plain_http2.clone();
        let mut chunks = vec![Chunk {
            delay: Duration::ZERO,
            bytes: H2_PREFACE,
        }];
        chunks.extend(decode_chunks(data));
        let out = h.run(&ctx, &mut RawClient, &chunks);
        check_http2(&out);
        out
    })
}

/// Client plaintext through TLS into whichever protocol ALPN picks. A rustls client with
/// the development CA does a real handshake with the server's fixed test key and then
/// sends the chunks as application data. The first input byte chooses the client: bits
/// 0–1 its ALPN offer (`h2`; `http/1.1`; none; `h2` and `http/1.1`), bit 2 TLS 1.2 only.
/// Returns the plaintext the client received.
pub fn tls_http(data: &[u8]) -> Vec<u8> {
    let Some((&choice, rest)) = data.split_first() else {
        return Vec::new();
    };
    with_harness(|h| {
        let ctx = h.tls.clone();
        let config = h.client_configs[usize::from(choice & 7)].clone();
        let name = ServerName::try_from("localhost").expect("a valid DNS name");
        let Ok(connection) = rustls::ClientConnection::new(config, name) else {
            panic!("cannot start the TLS client");
        };
        let mut client = TlsClient {
            tls: connection,
            plaintext: Vec::new(),
            error: None,
        };
        h.run(&ctx, &mut client, &decode_chunks(rest));
        if let Some(error) = &client.error {
            assert!(
                !matches!(
                    error,
                    rustls::Error::InvalidMessage(_)
                        | rustls::Error::DecryptError
                        | rustls::Error::InappropriateMessage { .. }
                        | rustls::Error::InappropriateHandshakeMessage { .. }
                ),
                "the server sent malformed TLS: {error}"
            );
        }
        match client.tls.alpn_protocol() {
            Some(b"h2") => check_http2(&client.plaintext),
            _ => check_http1(&client.plaintext),
        }
        client.plaintext
    })
}

/// The client's half of the in-memory socket: bytes the server has not read yet, and
/// everything the server wrote.
#[derive(Default)]
struct Wire {
    to_server: VecDeque<u8>,
    client_closed: bool,
    from_server: Vec<u8>,
    server_shut_down: bool,
}

/// The server's half of the in-memory socket.
#[derive(Clone, Default)]
struct MemorySocket(Arc<Mutex<Wire>>);

impl MemorySocket {
    fn lock(&self) -> MutexGuard<'_, Wire> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Read for MemorySocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut wire = self.lock();
        if wire.to_server.is_empty() {
            return match wire.client_closed {
                true => Ok(0),
                false => Err(io::ErrorKind::WouldBlock.into()),
            };
        }
        wire.to_server.read(buf)
    }
}

impl Write for MemorySocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut wire = self.lock();
        if wire.server_shut_down {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        wire.from_server.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket for MemorySocket {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.lock().server_shut_down = true;
        Ok(())
    }
}

/// What stands on the client's side of the wire.
trait Client {
    /// Hands one chunk of the input to the server.
    fn send(&mut self, bytes: &[u8], wire: &MemorySocket);
    /// Takes what the server wrote; returns whether it has more to send.
    fn receive(&mut self, wire: &MemorySocket) -> bool;
    /// Ends the client's side.
    fn close(&mut self, wire: &MemorySocket);
}

/// The input's bytes, as they are.
struct RawClient;

impl Client for RawClient {
    fn send(&mut self, bytes: &[u8], wire: &MemorySocket) {
        wire.lock().to_server.extend(bytes);
    }

    fn receive(&mut self, _wire: &MemorySocket) -> bool {
        false
    }

    fn close(&mut self, wire: &MemorySocket) {
        wire.lock().client_closed = true;
    }
}

/// A rustls client sending the input as application data.
struct TlsClient {
    tls: rustls::ClientConnection,
    plaintext: Vec<u8>,
    error: Option<rustls::Error>,
}

impl TlsClient {
    fn flush(&mut self, wire: &MemorySocket) -> bool {
        let mut sent = false;
        let mut wire = wire.lock();
        while self.tls.wants_write() {
            let mut out = Vec::new();
            match self.tls.write_tls(&mut out) {
                Ok(n) if n > 0 => {
                    wire.to_server.extend(out);
                    sent = true;
                }
                _ => break,
            }
        }
        sent
    }
}

impl Client for TlsClient {
    fn send(&mut self, bytes: &[u8], wire: &MemorySocket) {
        if self.error.is_none() {
            // Before the handshake completes rustls buffers the plaintext.
            let _ = self.tls.writer().write_all(bytes);
            self.flush(wire);
        }
    }

    fn receive(&mut self, wire: &MemorySocket) -> bool {
        if self.error.is_some() {
            return false;
        }
        let incoming = std::mem::take(&mut wire.lock().from_server);
        let mut incoming = &incoming[..];
        while !incoming.is_empty() {
            if self.tls.read_tls(&mut incoming).is_err() {
                break;
            }
            if let Err(error) = self.tls.process_new_packets() {
                self.error = Some(error);
                self.flush(wire);
                return false;
            }
            let _ = self.tls.reader().read_to_end(&mut self.plaintext);
        }
        self.flush(wire)
    }

    fn close(&mut self, wire: &MemorySocket) {
        if self.error.is_none() {
            self.tls.send_close_notify();
            self.flush(wire);
        }
        wire.lock().client_closed = true;
    }
}

/// The handler every target serves: reads the whole body, then answers with a body whose
/// size and shape depend on the request, streamed from a `Read` in small pieces (or, for
/// `/bytes`, given whole).
fn handler(mut request: Request, _info: ConnectionInfo) -> Response {
    let mut received = 0u64;
    let mut buf = [0; 4096];
    let read_failed = loop {
        match request.body_mut().read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => received += n as u64,
            Err(_) => break true,
        }
    };
    let path = request.uri().path();
    let size = (received + path.len() as u64 * 997) % 50_000;
    let body = if read_failed {
        Body::from("request body failed\n")
    } else if path.starts_with("/bytes") {
        Body::from(vec![b'b'; size as usize])
    } else {
        Body::from_reader(Trickle { left: size })
    };
    let mut response = Response::new(body);
    if let Some(status) = path
        .strip_prefix("/status/")
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| http::StatusCode::from_u16(code).ok())
    {
        *response.status_mut() = status;
    }
    response
}

/// A response source handing out at most 3000 bytes per read.
struct Trickle {
    left: u64,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left).min(3000) as usize;
        buf[..n].fill(b't');
        self.left -= n as u64;
        Ok(n)
    }
}

/// Small limits, so that inputs reach them: deadlines of a few seconds of the manual
/// clock, a 1 KiB small-body limit, few workers and streams.
fn fuzz_limits() -> Limits {
    Limits {
        handshake_timeout: Duration::from_secs(2),
        request_header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3),
        request_body_timeout: Duration::from_secs(2),
        min_rate_grace: Duration::from_secs(1),
        buffered_body_limit: 1024,
        // A handler blocked on a full response pipe waits this long in real time (the
        // in-memory socket itself never stalls): far beyond any input, so that replays
        // do not depend on the machine's speed.
        send_timeout: Duration::from_secs(3600),
        max_request_header_bytes: 8 * 1024,
        max_request_headers: 32,
        max_concurrent_streams: 8,
        max_workers: 4,
        max_queued_requests: 4,
        ..Limits::default()
    }
}

/// Everything that outlives one input: the executor, the clock, the worker pool, and a
/// server context per target.
struct Harness {
    /// Owns the registration of the run queue's waker (never polled: the harness runs
    /// tasks itself).
    _poll: mio::Poll,
    handle: Arc<ReactorHandle>,
    clock: Arc<ManualClock>,
    executor: Executor,
    pool: WorkerPool,
    tls: Arc<ServerContext>,
    plain_http1: Arc<ServerContext>,
    plain_http2: Arc<ServerContext>,
    client_configs: Vec<Arc<rustls::ClientConfig>>,
}

static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);

/// Runs `f` on the process's harness (built on first use, rebuilt after a failed input).
fn with_harness<T>(f: impl FnOnce(&mut Harness) -> T) -> T {
    let mut slot = HARNESS.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_none_or(|h| h.executor.len() > 0) {
        *slot = None;
    }
    f(slot.get_or_insert_with(Harness::new))
}

impl Harness {
    fn new() -> Harness {
        let poll = mio::Poll::new().expect("cannot create a mio Poll");
        let waker =
            mio::Waker::new(poll.registry(), mio::Token(0)).expect("cannot create a mio Waker");
        let run_queue = RunQueue::new(waker);
        let (clock, hands) = Clock::manual();
        let timers = TimerQueue::new(run_queue.clone(), clock);
        let handle = ReactorHandle::new(0, run_queue.clone(), timers);
        let limits = fuzz_limits();
        let pool = WorkerPool::new(PoolConfig {
            max_workers: limits.max_workers,
            max_queued: limits.max_queued_requests,
            idle_timeout: Duration::from_secs(60),
        });
        let tls = TlsConfig::from_pem(CERT_CHAIN, PRIVATE_KEY)
            .expect("the development certificate loads")
            .for_protocols(Protocols::Http1AndHttp2);
        let context = |tls, protocols| {
            Arc::new(ServerContext::new(
                tls,
                protocols,
                limits.clone(),
                Arc::new(handler),
                pool.clone(),
                handle.clone(),
            ))
        };
        Harness {
            tls: context(Some(tls), Protocols::Http1AndHttp2),
            plain_http1: context(None, Protocols::Http1Only),
            plain_http2: context(None, Protocols::Http2Only),
            _poll: poll,
            executor: Executor::new(run_queue),
            handle,
            clock: hands,
            pool,
            client_configs: (0..8).map(client_config).collect(),
        }
    }

    /// Replays `chunks` from `client` into a new connection served by `ctx`, until the
    /// connection has ended; returns every byte the server wrote that the client did not
    /// take. Panics if an invariant breaks.
    fn run(
        &mut self,
        ctx: &Arc<ServerContext>,
        client: &mut dyn Client,
        chunks: &[Chunk<'_>],
    ) -> Vec<u8> {
        let wire = MemorySocket::default();
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let local = SocketAddr::from(([127, 0, 0, 1], 443));
        let key = self.executor.next_key();
        let mut ended = self
            .executor
            .start(conn::serve(ctx.clone(), wire.clone(), peer, local), true);
        ended |= self.settle();
        ended |= self.exchange(client, &wire, key, ended);
        for chunk in chunks {
            ended |= self.advance(chunk.delay);
            client.send(chunk.bytes, &wire);
            if !ended {
                self.executor.mark_ready(key);
            }
            ended |= self.settle();
            ended |= self.exchange(client, &wire, key, ended);
        }
        client.close(&wire);
        if !ended {
            self.executor.mark_ready(key);
        }
        ended |= self.settle();
        ended |= self.exchange(client, &wire, key, ended);
        let mut steps = 0;
        while !ended || self.executor.len() > 0 {
            steps += 1;
            assert!(
                steps <= MAX_END_STEPS,
                "the connection did not end within {MAX_END_STEPS} clock steps after the \
                 client closed (connection ended: {ended}, tasks left: {})",
                self.executor.len()
            );
            let now = self.handle.timers.now();
            let step = self
                .handle
                .timers
                .next_deadline()
                .map_or(Duration::from_secs(1), |at| {
                    at.saturating_duration_since(now)
                });
            ended |= self.advance(step.max(Duration::from_millis(1)));
            ended |= self.settle();
        }
        self.wait_for_idle_pool();
        let slots = LIVE_SLOTS.load(Ordering::SeqCst);
        assert_eq!(
            slots, 0,
            "{slots} response slots outlived their connection (leak)"
        );
        let out = std::mem::take(&mut wire.lock().from_server);
        out
    }

    /// Moves the clock and fires the deadlines that passed.
    fn advance(&mut self, by: Duration) -> bool {
        if by.is_zero() {
            return false;
        }
        self.clock.advance(by);
        self.handle.timers.fire_expired(self.handle.timers.now());
        self.settle()
    }

    /// Lets the client take the server's bytes and answer them (a TLS handshake) until
    /// neither side has anything more to say.
    fn exchange(
        &mut self,
        client: &mut dyn Client,
        wire: &MemorySocket,
        key: usize,
        ended: bool,
    ) -> bool {
        let mut ended_now = false;
        for _ in 0..MAX_TLS_EXCHANGES {
            if !client.receive(wire) {
                break;
            }
            if !(ended || ended_now) {
                self.executor.mark_ready(key);
            }
            ended_now |= self.settle();
        }
        ended_now
    }

    /// Runs tasks until none is ready and every busy worker waits for the connection
    /// (or none is busy). Returns whether the connection task ended meanwhile.
    fn settle(&mut self) -> bool {
        let started = Instant::now();
        let mut rounds = 0;
        let mut ended = false;
        loop {
            // As the reactor's leader does: complete requests' handlers run inline on this
            // thread right after the task polls, the others on the pool.
            let executor = &mut self.executor;
            ended |= leader::poll_then_run_inline(&self.pool, || executor.run_ready()).ended > 0;
            if self.executor.has_ready() || self.handle.run_queue.has_work() {
                rounds += 1;
                assert!(
                    rounds <= MAX_SETTLE_ROUNDS,
                    "tasks kept waking each other for {MAX_SETTLE_ROUNDS} rounds (livelock)"
                );
                continue;
            }
            if self.workers_wait_for_connection() {
                return ended;
            }
            assert!(
                started.elapsed() < HANDLER_PATIENCE,
                "a handler neither finished nor waited for its connection for {HANDLER_PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    fn workers_wait_for_connection(&self) -> bool {
        let stats = self.pool.stats();
        stats.queued == 0 && stats.busy <= WAITING_ON_CONNECTION.load(Ordering::SeqCst)
    }

    /// The connection is over: every handler must finish and the pool fall idle.
    fn wait_for_idle_pool(&self) {
        let started = Instant::now();
        loop {
            let stats = self.pool.stats();
            if stats.busy == 0 && stats.queued == 0 {
                return;
            }
            assert!(
                started.elapsed() < HANDLER_PATIENCE,
                "the worker pool is not idle after the connection ended: {stats:?}"
            );
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

fn client_config(choice: usize) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(CA_CERT).flatten() {
        let _ = roots.add(cert);
    }
    let provider = crate::crypto_provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if choice & 4 != 0 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("the crypto provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = match choice & 3 {
        0 => vec![b"h2".to_vec()],
        1 => vec![b"http/1.1".to_vec()],
        2 => Vec::new(),
        _ => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Arc::new(config)
}

/// Every byte is part of a whole TLS record with a known content type.
fn check_tls_records(mut out: &[u8]) {
    while !out.is_empty() {
        assert!(out.len() >= 5, "truncated TLS record header: {out:02x?}");
        let (content_type, version) = (out[0], [out[1], out[2]]);
        let len = usize::from(u16::from_be_bytes([out[3], out[4]]));
        assert!(
            (20..=23).contains(&content_type),
            "TLS record of unknown content type {content_type}"
        );
        assert!(
            version[0] == 3 && (1..=3).contains(&version[1]),
            "TLS record with version {version:02x?}"
        );
        assert!(len <= 16384 + 2048, "TLS record of {len} bytes");
        assert!(out.len() >= 5 + len, "truncated TLS record");
        out = &out[5 + len..];
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

/// A sequence of whole HTTP/1 responses: valid heads, one framing each. Only the last
/// body may be cut short (the server closes a connection mid-body when the handler fails
/// or the client is too slow, and the framing tells the client so).
fn check_http1(mut out: &[u8]) {
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => panic!("truncated response head: {:?}", lossy(out)),
            Err(error) => panic!("malformed response head ({error}): {:?}", lossy(out)),
        };
        let code = response.code.unwrap_or(0);
        // Three digits (RFC 9110 §15); handlers may use any code the http crate accepts.
        assert!((100..=999).contains(&code), "status code {code}");
        let mut content_length = None;
        let mut chunked = false;
        for header in response.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let value = std::str::from_utf8(header.value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<usize>().ok());
                assert!(
                    value.is_some(),
                    "bad content-length {:?}",
                    lossy(header.value)
                );
                assert!(content_length.is_none(), "two content-length headers");
                content_length = value;
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                assert_eq!(
                    header.value, b"chunked",
                    "transfer-encoding other than chunked"
                );
                assert!(!chunked, "two transfer-encoding headers");
                chunked = true;
            }
        }
        assert!(
            !(chunked && content_length.is_some()),
            "both content-length and chunked"
        );
        out = &out[head_len..];
        if (100..200).contains(&code) {
            assert!(
                content_length.is_none() && !chunked,
                "a 1xx response with a body"
            );
            continue;
        }
        if code == 204 || code == 304 {
            assert!(!chunked, "a {code} response with a chunked body");
            continue;
        }
        if chunked {
            match skip_chunked(out) {
                Some(rest) => out = rest,
                None => return, // cut short: must be the last response
            }
        } else if let Some(len) = content_length {
            let next_is_response = |rest: &[u8]| rest.is_empty() || rest.starts_with(b"HTTP/1.");
            if out.len() >= len && next_is_response(&out[len..]) {
                out = &out[len..];
            } else if next_is_response(out) {
                // An answer to HEAD: the length without the body.
            } else {
                assert!(
                    out.len() < len,
                    "bytes after a {len}-byte body: {:?}",
                    lossy(&out[len..])
                );
                return; // cut short: must be the last response
            }
        } else {
            return; // delimited by the end of the connection
        }
    }
}

/// Skips a whole chunked body; `None` if it is cut short at the end of the output.
fn skip_chunked(mut out: &[u8]) -> Option<&[u8]> {
    loop {
        let (consumed, size) = match httparse::parse_chunk_size(out) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => panic!("malformed chunk size line: {:?}", lossy(out)),
        };
        out = &out[consumed..];
        if size == 0 {
            // No trailers are sent: the last chunk is followed by the final CRLF.
            if out.len() < 2 {
                return None;
            }
            assert!(
                out.starts_with(b"\r\n"),
                "bytes after the last chunk: {:?}",
                lossy(out)
            );
            return Some(&out[2..]);
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if out.len() < size.saturating_add(2) {
            return None;
        }
        assert_eq!(
            &out[size..size + 2],
            b"\r\n",
            "a chunk not followed by CRLF"
        );
        out = &out[size + 2..];
    }
}

/// The server's side of an HTTP/2 connection: SETTINGS first, whole frames of known types
/// and valid sizes, HEADERS/CONTINUATION sequences unbroken, DATA only on streams the
/// server has answered and not yet ended, nothing pushed.
fn check_http2(out: &[u8]) {
    #[derive(Default)]
    struct Stream {
        headers_sent: bool,
        ended: bool,
    }
    let mut streams: HashMap<u32, Stream> = HashMap::new();
    let mut continuation: Option<u32> = None;
    let mut pos = 0;
    let mut first = true;
    while pos < out.len() {
        assert!(out.len() - pos >= 9, "truncated frame header");
        let header = &out[pos..pos + 9];
        let len =
            (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        assert!(len <= 16384, "a {len}-byte frame (type {kind})");
        assert!(
            out.len() - pos - 9 >= len,
            "truncated frame (type {kind}, {len} bytes)"
        );
        let payload = &out[pos + 9..pos + 9 + len];
        pos += 9 + len;
        if first {
            assert!(
                kind == 4 && flags & 1 == 0 && id == 0,
                "the server preface is not SETTINGS"
            );
            first = false;
        }
        if let Some(expected) = continuation {
            assert!(
                kind == 9 && id == expected,
                "header block interrupted by a type {kind} frame"
            );
        }
        match kind {
            // DATA
            0 => {
                assert!(id % 2 == 1, "DATA on stream {id}");
                let stream = streams.entry(id).or_default();
                assert!(
                    stream.headers_sent && !stream.ended,
                    "DATA on stream {id} outside a response"
                );
                check_padding(flags, payload, 0);
                stream.ended |= flags & 1 != 0;
            }
            // HEADERS
            1 => {
                assert!(id % 2 == 1, "HEADERS on stream {id}");
                let stream = streams.entry(id).or_default();
                assert!(!stream.ended, "HEADERS on ended stream {id}");
                check_padding(flags, payload, if flags & 0x20 != 0 { 5 } else { 0 });
                stream.headers_sent = true;
                stream.ended |= flags & 1 != 0;
                if flags & 4 == 0 {
                    continuation = Some(id);
                }
            }
            // RST_STREAM
            3 => {
                assert!(id != 0 && len == 4, "bad RST_STREAM");
                streams.entry(id).or_default().ended = true;
            }
            // SETTINGS
            4 => {
                assert!(id == 0, "SETTINGS on stream {id}");
                assert!(
                    if flags & 1 != 0 {
                        len == 0
                    } else {
                        len % 6 == 0
                    },
                    "bad SETTINGS length {len}"
                );
            }
            // PING
            6 => assert!(id == 0 && len == 8, "bad PING"),
            // GOAWAY
            7 => assert!(id == 0 && len >= 8, "bad GOAWAY"),
            // WINDOW_UPDATE
            8 => {
                assert!(len == 4, "bad WINDOW_UPDATE length");
                let increment =
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff;
                assert!(increment != 0, "WINDOW_UPDATE of 0");
            }
            // CONTINUATION
            9 => {
                assert!(continuation == Some(id), "unexpected CONTINUATION");
                if flags & 4 != 0 {
                    continuation = None;
                }
            }
            _ => panic!("the server sent a frame of type {kind}"),
        }
    }
    assert!(continuation.is_none(), "header block never finished");
}

fn check_padding(flags: u8, payload: &[u8], fixed: usize) {
    if flags & 8 != 0 {
        let pad = payload.first().copied().map_or(usize::MAX, usize::from);
        assert!(
            1 + fixed + pad <= payload.len(),
            "padding longer than the frame"
        );
    } else {
        assert!(
            fixed <= payload.len(),
            "frame shorter than its fixed fields"
        );
    }
}
