//! The async peer portcullis is measured against: hyper 1.x served by hyper-util's
//! auto (HTTP/1.1 + HTTP/2) connection builder on a multi-thread tokio runtime, TLS by
//! tokio-rustls on rustls 0.23 with the *ring* provider (the same rustls, provider,
//! protocol versions and ALPN list as portcullis).
//!
//! Routes (the same as `portcullis_server`):
//! - `/`                  → `Hello, World!\n`
//! - `/sleep`             → sleeps 10 ms in `tokio::task::spawn_blocking`, then `slept\n`
//! - `/echo` (POST)       → streams the request body back
//! - `/download?bytes=N`  → N bytes of `x`, streamed in 16 KiB chunks without a length
//!
//! Flags: `--addr ADDR` (default 127.0.0.1:8443; port 0 picks one), `--threads N` (runtime
//! worker threads, default: available parallelism, which respects `taskset`),
//! `--cert FILE`, `--key FILE` (default ../certs/localhost.{crt,key}).
//! Prints `listening on https://ADDR` once it accepts.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Same chunk size as portcullis' `Body::from_reader`.
const CHUNK: usize = 16 * 1024;

type ResBody = BoxBody<Bytes, hyper::Error>;

struct Args {
    addr: String,
    threads: usize,
    cert: String,
    key: String,
}

fn parse_args() -> Args {
    let dir = env!("CARGO_MANIFEST_DIR");
    let mut args = Args {
        addr: "127.0.0.1:8443".into(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cert: format!("{dir}/../certs/localhost.crt"),
        key: format!("{dir}/../certs/localhost.key"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--addr" => args.addr = value(),
            "--threads" => {
                let v = value();
                args.threads = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| {
                        fail(&format!("--threads takes a positive number, not {v:?}"))
                    })
            }
            "--cert" => args.cert = value(),
            "--key" => args.key = value(),
            "-h" | "--help" => {
                println!("flags: --addr ADDR  --threads N  --cert FILE  --key FILE");
                std::process::exit(0);
            }
            other => fail(&format!("unknown flag {other}")),
        }
    }
    args
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}\nflags: --addr ADDR  --threads N  --cert FILE  --key FILE");
    std::process::exit(2);
}

fn tls_config(cert: &str, key: &str) -> Result<ServerConfig, Box<dyn std::error::Error>> {
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let mut config =
        ServerConfig::builder_with_provider(portcullis::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let config = tls_config(&args.cert, &args.key)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    runtime.block_on(serve(args.addr, Arc::new(config)))
}

async fn serve(addr: String, config: Arc<ServerConfig>) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(addr.as_str()).await?;
    println!("listening on https://{}", listener.local_addr()?);
    let acceptor = TlsAcceptor::from(config);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer so that hyper's HTTP/1 header read timeout (30 s) is armed, as in portcullis.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (tcp, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    _ => return,
                };
            let _ = builder
                .serve_connection(TokioIo::new(tls), service_fn(handle))
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<ResBody>, Infallible> {
    let response = match req.uri().path() {
        "/" => text("Hello, World!\n"),
        "/sleep" => {
            let _ =
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(10))).await;
            text("slept\n")
        }
        "/echo" => Response::new(req.into_body().boxed()),
        "/download" => match download_len(req.uri().query()) {
            Some(n) => Response::new(Repeat { remaining: n }.boxed()),
            None => status(StatusCode::BAD_REQUEST, "want /download?bytes=N\n"),
        },
        _ => status(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

fn text(body: &'static str) -> Response<ResBody> {
    Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    )
}

fn status(code: StatusCode, body: &'static str) -> Response<ResBody> {
    let mut response = text(body);
    *response.status_mut() = code;
    response
}

fn download_len(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("bytes="))
        .and_then(|n| n.parse().ok())
}

/// `remaining` bytes of `x`, in fresh 16 KiB chunks (as portcullis reads them from
/// `std::io::repeat`), with no length known up front.
struct Repeat {
    remaining: u64,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown length, like a `Body::from_reader` response: chunked on HTTP/1.1.
        SizeHint::default()
    }
}
