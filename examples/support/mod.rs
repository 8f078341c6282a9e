//! Flags shared by the examples: `--addr`, `--cert`, `--key`, `--plain`,
//! `--max-workers N`, `--http1-only`, `--http2-only`, and the common limits (`--help`).

use std::time::Duration;

use portcullis::{
    ConnectionInfo, Limits, Protocols, Request, Response, Server, ServerHandle, TlsConfig,
};

/// Parsed command line.
pub struct Args {
    pub addr: String,
    pub cert: String,
    pub key: String,
    pub plain: bool,
    pub protocols: Protocols,
    pub limits: Limits,
}

const USAGE: &str = "\
flags:
  --addr ADDR              listen address (default 127.0.0.1:8443)
  --cert FILE              PEM certificate chain (default certs/localhost.crt)
  --key FILE               PEM private key (default certs/localhost.key)
  --plain                  plain HTTP/1.1 and h2c instead of HTTPS
  --http1-only             speak only HTTP/1.1
  --http2-only             speak only HTTP/2
  --max-workers N          worker threads at most (default 512)
  --max-connections N      open connections at most (default 10000)
  --max-queued N           requests waiting for a worker before 503 (default 1024)
  --handshake-timeout SECS TLS handshake deadline (default 10)
  --header-timeout SECS    request header deadline (default 30)
  --idle-timeout SECS      keep-alive idle deadline (default 75)
  --body-timeout SECS      longest pause in a request body (default 60)
  --min-body-rate BYTES    slowest request body rate after 5 s, bytes/s (default 240)
  --send-timeout SECS      longest wait for the client to read (default 60)
  --drain-timeout SECS     graceful shutdown deadline (default 30)";

impl Args {
    /// Reads `std::env::args`, exiting with a usage message on a bad flag.
    pub fn parse() -> Args {
        let dir = env!("CARGO_MANIFEST_DIR");
        let mut args = Args {
            addr: "127.0.0.1:8443".into(),
            cert: format!("{dir}/certs/localhost.crt"),
            key: format!("{dir}/certs/localhost.key"),
            plain: false,
            protocols: Protocols::Http1AndHttp2,
            limits: Limits::default(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "--addr" => args.addr = value(),
                "--cert" => args.cert = value(),
                "--key" => args.key = value(),
                "--plain" => args.plain = true,
                "--http1-only" => args.protocols = Protocols::Http1Only,
                "--http2-only" => args.protocols = Protocols::Http2Only,
                "--max-workers" => args.limits.max_workers = number(&flag, &value()),
                "--max-connections" => args.limits.max_connections = number(&flag, &value()),
                "--max-queued" => args.limits.max_queued_requests = number(&flag, &value()),
                "--handshake-timeout" => args.limits.handshake_timeout = seconds(&flag, &value()),
                "--idle-timeout" => args.limits.idle_timeout = seconds(&flag, &value()),
                "--body-timeout" => args.limits.request_body_timeout = seconds(&flag, &value()),
                "--min-body-rate" => {
                    args.limits.min_request_body_rate = number(&flag, &value()) as u64
                }
                "--send-timeout" => args.limits.send_timeout = seconds(&flag, &value()),
                "--header-timeout" => args.limits.request_header_timeout = seconds(&flag, &value()),
                "--drain-timeout" => args.limits.drain_timeout = seconds(&flag, &value()),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => fail(&format!("unknown flag {other}")),
            }
        }
        args
    }

    /// Binds, configures TLS, spawns the server and prints the `listening on` line.
    pub fn start<F>(&self, handler: F) -> std::io::Result<ServerHandle>
    where
        F: Fn(Request, ConnectionInfo) -> Response + Send + Sync + 'static,
    {
        let mut server = Server::bind(self.addr.as_str())?
            .protocols(self.protocols)
            .limits(self.limits.clone());
        if !self.plain {
            server = server.tls(TlsConfig::from_pem_files(&self.cert, &self.key)?);
        }
        let handle = server.spawn(handler)?;
        let scheme = if self.plain { "http" } else { "https" };
        for addr in handle.local_addrs() {
            println!("listening on {scheme}://{addr}");
        }
        Ok(handle)
    }
}

/// Logs to stderr; `RUST_LOG` picks the level (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn number(flag: &str, value: &str) -> usize {
    value
        .parse()
        .unwrap_or_else(|_| fail(&format!("{flag} takes a whole number, not {value:?}")))
}

fn seconds(flag: &str, value: &str) -> Duration {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| fail(&format!("{flag} takes seconds, not {value:?}")))
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}\n{USAGE}");
    std::process::exit(2);
}
