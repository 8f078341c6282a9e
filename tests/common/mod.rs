//! Helpers shared by the integration tests: servers on 127.0.0.1:0 with the dev
//! certificates, a rustls client trusting the dev CA, hyper HTTP/1.1 and HTTP/2 clients on
//! tokio, curl, and test data.
//!
//! Every network wait is bounded by [`TIMEOUT`] (or a shorter, test-specific timeout) so
//! that no test can hang forever.

#![allow(dead_code)]

use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper::{HeaderMap, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::{Body, ConnectionInfo, Request, Response, Server, ServerHandle, TlsConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// Upper bound for any single network operation in a test.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// ALPN lists a client may offer.
pub const ALPN_BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
pub const ALPN_H1: &[&[u8]] = &[b"http/1.1"];
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
pub const ALPN_NONE: &[&[u8]] = &[];

/// A file under the crate's `certs/` directory.
pub fn cert_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs")
        .join(name)
}

/// The server side of the dev certificate for `localhost`.
pub fn localhost_tls() -> TlsConfig {
    TlsConfig::from_pem_files(cert_path("localhost.crt"), cert_path("localhost.key"))
        .expect("load certs/localhost.crt and certs/localhost.key")
}

/// An unstarted TLS server on 127.0.0.1 (free port) with the localhost certificate.
pub fn tls_server() -> Server {
    Server::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .tls(localhost_tls())
}

/// An unstarted plain (no TLS) server on 127.0.0.1 (free port).
pub fn plain_server() -> Server {
    Server::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// Starts a TLS server with `handler` and default settings.
pub fn spawn_tls<F>(handler: F) -> ServerHandle
where
    F: Fn(Request, ConnectionInfo) -> Response + Send + Sync + 'static,
{
    tls_server().spawn(handler).expect("spawn server")
}

/// The first address a server listens on.
pub fn addr(handle: &ServerHandle) -> SocketAddr {
    handle.local_addrs()[0]
}

/// A handler that describes the connection in its body, one `key=value` per field:
/// `protocol=Http2 tls=Some(Tls13) sni=localhost alpn=h2 is_tls=true path=/x`.
pub fn info_handler(req: Request, info: ConnectionInfo) -> Response {
    Response::new(Body::from(describe(&req, &info)))
}

pub fn describe(req: &Request, info: &ConnectionInfo) -> String {
    format!(
        "protocol={:?} tls={:?} sni={} alpn={} is_tls={} path={}",
        info.protocol(),
        info.tls_version(),
        info.server_name().unwrap_or("-"),
        info.alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_else(|| "-".to_string()),
        info.is_tls(),
        req.uri().path(),
    )
}

/// An echo handler: the response body is the request body, streamed.
pub fn echo_handler(req: Request, _info: ConnectionInfo) -> Response {
    Response::new(req.into_body())
}

/// A multi-threaded tokio runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build tokio runtime")
}

/// Runs `future` to completion under [`TIMEOUT`] on a fresh runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(async {
        tokio::time::timeout(TIMEOUT * 2, future)
            .await
            .expect("test timed out")
    })
}

/// Awaits `future` for at most `limit`, panicking with `what` on timeout.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// The dev CA as a rustls root store.
pub fn root_store() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert_path("ca.crt")).expect("open certs/ca.crt") {
        roots
            .add(cert.expect("parse certs/ca.crt"))
            .expect("add the dev CA");
    }
    roots
}

/// A rustls client trusting the dev CA (TLS 1.3 and 1.2) and offering `alpn`.
pub fn client_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(root_store())
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Like [`client_config`] but only TLS 1.2.
pub fn client_config_tls12(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("protocol versions")
    .with_root_certificates(root_store())
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// TCP connect under [`TIMEOUT`].
pub async fn tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TCP connect plus TLS handshake with SNI `localhost`, under [`TIMEOUT`].
pub async fn tls_connect_with(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let stream = tcp(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(TIMEOUT, TlsConnector::from(config).connect(name, stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// TCP connect plus TLS handshake offering `alpn`.
pub async fn tls_connect(addr: SocketAddr, alpn: &[&[u8]]) -> io::Result<TlsStream<TcpStream>> {
    tls_connect_with(addr, client_config(alpn)).await
}

/// The ALPN protocol a client TLS stream negotiated.
pub fn negotiated_alpn(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// One response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A hyper client connection, HTTP/1.1 or HTTP/2, whose connection task runs on tokio.
pub enum Client {
    H1 {
        sender: http1::SendRequest<Full<Bytes>>,
        authority: String,
        scheme: &'static str,
        conn: tokio::task::JoinHandle<hyper::Result<()>>,
    },
    H2 {
        sender: http2::SendRequest<Full<Bytes>>,
        authority: String,
        scheme: &'static str,
        conn: tokio::task::JoinHandle<hyper::Result<()>>,
    },
}

impl Client {
    /// HTTP/1.1 handshake over any stream.
    pub async fn h1<I>(io: I, authority: &str, tls: bool) -> hyper::Result<Client>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
        Ok(Client::H1 {
            sender,
            authority: authority.to_string(),
            scheme: if tls { "https" } else { "http" },
            conn: tokio::spawn(conn),
        })
    }

    /// HTTP/2 handshake over any stream.
    pub async fn h2<I>(io: I, authority: &str, tls: bool) -> hyper::Result<Client>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        Ok(Client::H2 {
            sender,
            authority: authority.to_string(),
            scheme: if tls { "https" } else { "http" },
            conn: tokio::spawn(conn),
        })
    }

    /// TLS connection offering exactly the protocol `version` by ALPN.
    pub async fn connect_tls(addr: SocketAddr, version: Version) -> Client {
        let authority = format!("localhost:{}", addr.port());
        if version == Version::HTTP_2 {
            let stream = tls_connect(addr, ALPN_H2).await.expect("TLS connect (h2)");
            assert_eq!(negotiated_alpn(&stream).as_deref(), Some(&b"h2"[..]));
            Client::h2(stream, &authority, true)
                .await
                .expect("h2 handshake")
        } else {
            let stream = tls_connect(addr, ALPN_H1).await.expect("TLS connect (h1)");
            Client::h1(stream, &authority, true)
                .await
                .expect("h1 handshake")
        }
    }

    /// Plain TCP connection: HTTP/1.1, or h2c with prior knowledge.
    pub async fn connect_plain(addr: SocketAddr, version: Version) -> Client {
        let stream = tcp(addr).await.expect("TCP connect");
        let authority = addr.to_string();
        if version == Version::HTTP_2 {
            Client::h2(stream, &authority, false)
                .await
                .expect("h2c handshake")
        } else {
            Client::h1(stream, &authority, false)
                .await
                .expect("h1 handshake")
        }
    }

    /// Builds a request for `path`: origin-form with `Host` on HTTP/1.1, absolute URI on
    /// HTTP/2 (hyper turns it into the `:scheme`/`:authority` pseudo-headers).
    pub fn request(&self, method: &str, path: &str, body: Bytes) -> hyper::Request<Full<Bytes>> {
        let builder = match self {
            Client::H1 { authority, .. } => hyper::Request::builder()
                .uri(path)
                .header(hyper::header::HOST, authority.as_str()),
            Client::H2 {
                authority, scheme, ..
            } => hyper::Request::builder().uri(format!("{scheme}://{authority}{path}")),
        };
        builder
            .method(method)
            .body(Full::new(body))
            .expect("build request")
    }

    /// Sends `req` and reads the whole response, under [`TIMEOUT`].
    pub async fn send(&mut self, req: hyper::Request<Full<Bytes>>) -> hyper::Result<Reply> {
        let response = tokio::time::timeout(TIMEOUT, async {
            match self {
                Client::H1 { sender, .. } => {
                    sender.ready().await?;
                    sender.send_request(req).await
                }
                Client::H2 { sender, .. } => {
                    sender.ready().await?;
                    sender.send_request(req).await
                }
            }
        })
        .await
        .expect("response head timed out")?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(TIMEOUT, body.collect())
            .await
            .expect("response body timed out")?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> hyper::Result<Reply> {
        let req = self.request("GET", path, Bytes::new());
        self.send(req).await
    }

    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> hyper::Result<Reply> {
        let req = self.request("POST", path, body.into());
        self.send(req).await
    }

    /// A second handle on the same HTTP/2 connection (for concurrent streams).
    pub fn clone_h2(&self) -> Client {
        match self {
            Client::H2 {
                sender,
                authority,
                scheme,
                ..
            } => Client::H2 {
                sender: sender.clone(),
                authority: authority.clone(),
                scheme,
                conn: tokio::spawn(async { Ok(()) }),
            },
            Client::H1 { .. } => panic!("clone_h2 on an HTTP/1.1 client"),
        }
    }

    /// Whether hyper considers the connection closed.
    pub fn is_closed(&self) -> bool {
        match self {
            Client::H1 { sender, .. } => sender.is_closed(),
            Client::H2 { sender, .. } => sender.is_closed(),
        }
    }

    /// The connection task, to await its end.
    pub fn conn_task(&mut self) -> &mut tokio::task::JoinHandle<hyper::Result<()>> {
        match self {
            Client::H1 { conn, .. } | Client::H2 { conn, .. } => conn,
        }
    }
}

/// One GET over TLS on a new connection, speaking `version`.
pub async fn get_tls(addr: SocketAddr, version: Version, path: &str) -> Reply {
    let mut client = Client::connect_tls(addr, version).await;
    client.get(path).await.expect("GET")
}

/// One POST over TLS on a new connection, speaking `version`.
pub async fn post_tls(addr: SocketAddr, version: Version, path: &str, body: Bytes) -> Reply {
    let mut client = Client::connect_tls(addr, version).await;
    client.post(path, body).await.expect("POST")
}

/// What curl reported.
#[derive(Debug)]
pub struct CurlReply {
    /// `%{http_version}`: "1.1" or "2".
    pub version: String,
    /// `%{http_code}`.
    pub status: u16,
    pub body: Vec<u8>,
    pub stderr: String,
}

/// Runs curl against `https://localhost:{port}{path}` (resolved to 127.0.0.1, trusting the
/// dev CA) with `args`, or against a plain `http://` URL when `tls` is false.
pub fn curl(addr: SocketAddr, tls: bool, path: &str, args: &[&str]) -> CurlReply {
    let url = if tls {
        format!("https://localhost:{}{path}", addr.port())
    } else {
        format!("http://{addr}{path}")
    };
    let resolve = format!("localhost:{}:{}", addr.port(), addr.ip());
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "30"])
        .args(["--resolve", &resolve])
        .arg("--cacert")
        .arg(cert_path("ca.crt"))
        .args(["-w", "\n%{http_version} %{http_code}"])
        .args(args)
        .arg(&url);
    let output = command.output().expect("run curl (is it installed?)");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "curl {args:?} {url} failed ({}): {stderr}",
        output.status
    );
    let stdout = output.stdout;
    let split = stdout
        .iter()
        .rposition(|&b| b == b'\n')
        .expect("curl write-out missing");
    let trailer = String::from_utf8_lossy(&stdout[split + 1..]).into_owned();
    let mut fields = trailer.split_whitespace();
    let version = fields.next().unwrap_or_default().to_string();
    let status = fields
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad curl write-out {trailer:?}; stderr: {stderr}"));
    CurlReply {
        version,
        status,
        body: stdout[..split].to_vec(),
        stderr,
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asserts two byte strings are equal without printing megabytes on failure.
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: got {} bytes, want {} bytes; first difference at offset {first_diff}",
        got.len(),
        want.len()
    );
}

/// A file in the system temp dir, removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(name: &str, contents: &[u8]) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-test-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = std::fs::File::create(&path).expect("create temp file");
        file.write_all(contents).expect("write temp file");
        TempFile { path }
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("temp path is UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Calls `handle.shutdown()` on another thread and waits at most `limit` for it, so that a
/// shutdown that never returns fails the test instead of hanging it. Returns how long the
/// shutdown took.
pub fn shutdown_within(handle: ServerHandle, limit: Duration) -> Duration {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(handle.shutdown());
    });
    match rx.recv_timeout(limit) {
        Ok(result) => {
            result.expect("shutdown returned an error");
            started.elapsed()
        }
        Err(_) => panic!(
            "ServerHandle::shutdown() did not return within {limit:?} \
             (the reactor never began draining)"
        ),
    }
}

/// Shuts a test's server down, which must take well under the default drain timeout since
/// the test has finished with every connection by then.
pub fn stop(handle: ServerHandle) {
    shutdown_within(handle, Duration::from_secs(10));
}

/// Environment variable naming a file to which [`skip`] appends one line per skipped test;
/// `.ci/run` sets it and reports how many tests skipped, and why.
pub const SKIP_LOG_ENV: &str = "PORTCULLIS_SKIP_LOG";
/// With this environment variable set to `1`, [`skip`] fails the test instead.
pub const NO_SKIP_ENV: &str = "PORTCULLIS_NO_SKIP";

/// Skips the calling test loudly: prints `SKIPPED test: why` to stderr and appends that line
/// to the file named by [`SKIP_LOG_ENV`] (when set), so that a skip is counted instead of
/// passing silently; panics instead when [`NO_SKIP_ENV`] is `1`. The caller returns after.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    if std::env::var(NO_SKIP_ENV).as_deref() == Ok("1") {
        panic!("{line} ({NO_SKIP_ENV}=1 forbids skips)");
    }
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", Path::new(&path).display()));
        writeln!(file, "{line}").unwrap_or_else(|e| panic!("{}: {e}", Path::new(&path).display()));
    }
}

/// A gate a handler can wait at until the test opens it (or 10 s pass).
#[derive(Clone, Default)]
pub struct Gate(pub Arc<(Mutex<(bool, usize)>, Condvar)>);

impl Gate {
    /// Waits until opened; counts the waiters.
    pub fn wait(&self) {
        let (lock, cv) = &*self.0;
        let mut state = lock.lock().unwrap();
        state.1 += 1;
        cv.notify_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !state.0 && Instant::now() < deadline {
            state = cv.wait_timeout(state, Duration::from_millis(50)).unwrap().0;
        }
    }

    /// Lets every waiter (and every later one) through.
    pub fn open(&self) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap().0 = true;
        cv.notify_all();
    }

    /// Waits (up to 10 s) until `n` handlers are waiting at the gate.
    pub fn wait_for_waiters(&self, n: usize) {
        let (lock, cv) = &*self.0;
        let mut state = lock.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.1 < n {
            assert!(Instant::now() < deadline, "no handler reached the gate");
            state = cv.wait_timeout(state, Duration::from_millis(50)).unwrap().0;
        }
    }
}
