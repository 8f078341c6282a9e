//! Flags shared by the examples: `--addr`, `--cert`, `--key`, `--plain`, `--sni`,
//! client certificates, `--redirect-from`, `--reactors N`, `--max-workers N`, `--http1-only`,
//! `--http2-only`, `--reuse-port`, `--proxy-protocol`, `--proxy-from CIDR`, and the common
//! limits (`--help`). With TLS, `SIGHUP` reloads the certificate and key files. Started by
//! systemd with socket activation (`LISTEN_FDS`), the examples serve on the sockets passed
//! instead of `--addr`.

use std::time::Duration;

mod log_format;
mod log_writer;

use portcullis::{
    CertReloader, ConnectionInfo, HttpsRedirect, IntoResponse, Limits, Protocols, ProxyProtocol,
    Request, Server, ServerHandle, TlsConfig,
};

/// Parsed command line.
pub struct Args {
    pub addr: String,
    pub cert: String,
    pub key: String,
    pub plain: bool,
    /// `(server name, certificate chain, key)` for SNI.
    pub sni: Vec<(String, String, String)>,
    /// CA file for client certificates, and whether a certificate is required.
    pub client_ca: Option<(String, bool)>,
    /// A plain-HTTP listener that redirects to HTTPS, and its ACME challenge directory.
    pub redirect_from: Option<String>,
    pub acme_dir: Option<String>,
    pub protocols: Protocols,
    pub limits: Limits,
    /// The directory `file_server` serves (`--root`, default the current directory).
    pub root: String,
    /// Whether `--max-body-bytes` was given (examples with another default check it).
    pub max_body_bytes_set: bool,
    /// `SO_REUSEPORT` on the listener (`--reuse-port`).
    pub reuse_port: bool,
    /// A PROXY header required on every connection (`--proxy-protocol`), from these
    /// networks (`--proxy-from`, repeatable; loopback when none is given).
    pub proxy_protocol: bool,
    pub proxy_from: Vec<String>,
    /// Reactors (`--reactors`; 0: one per CPU).
    pub reactors: usize,
}

const USAGE: &str = "\
flags:
  --addr ADDR              listen address (default 127.0.0.1:8443)
  --cert FILE              PEM certificate chain (default certs/localhost.crt)
  --key FILE               PEM private key (default certs/localhost.key)
  --plain                  plain HTTP/1.1 and h2c instead of HTTPS
  --sni NAME=CERT,KEY      another certificate, for clients asking for NAME (repeatable)
  --require-client-cert CA clients must present a certificate signed by CA (mTLS)
  --request-client-cert CA ask for a client certificate signed by CA, accept none
  --redirect-from ADDR     also listen on plain HTTP at ADDR and redirect (308) to HTTPS
  --acme-dir DIR           serve /.well-known/acme-challenge/TOKEN from DIR (with --redirect-from)
  --root DIR               file_server: the directory to serve (default .)
  --http1-only             speak only HTTP/1.1
  --http2-only             speak only HTTP/2
  --reuse-port             SO_REUSEPORT: several processes share the port (rolling restarts)
  --proxy-protocol         require a PROXY header (v1 or v2) from a load balancer on every connection
  --proxy-from CIDR        a network the balancer connects from (repeatable; implies
                           --proxy-protocol; default 127.0.0.0/8 and ::1)
  --reactors N             event-loop threads for TLS and HTTP (default 0: one per CPU)
  --max-workers N          worker threads at most (default 512)
  --max-connections N      open connections at most (default 10000)
  --max-queued N           requests waiting for a worker before 503 (default 1024)
  --handshake-timeout SECS TLS handshake deadline (default 10)
  --header-timeout SECS    request header deadline (default 30)
  --idle-timeout SECS      keep-alive idle deadline (default 75)
  --body-timeout SECS      longest pause in a request body (default 60)
  --min-body-rate BYTES    slowest request body rate after 5 s, bytes/s (default 240)
  --send-timeout SECS      longest wait for the client to read (default 60)
  --min-response-rate B    slowest streamed response a client may take, bytes/s (240)
  --max-connections-per-ip N  most connections from one address (default 1000)
  --drain-timeout SECS     graceful shutdown deadline (default 30)
  --max-body-bytes N       largest request body, else 413 (default 30000000; echo: none)
SIGHUP re-reads the --cert/--key and --sni files; a bad file is logged and the old
certificates stay in use. SIGINT (Ctrl-C) or SIGTERM shuts down gracefully: in-flight
requests finish within --drain-timeout; a second signal exits at once.";

impl Args {
    /// Reads `std::env::args`, exiting with a usage message on a bad flag.
    pub fn parse() -> Args {
        let dir = env!("CARGO_MANIFEST_DIR");
        let mut args = Args {
            addr: "127.0.0.1:8443".into(),
            cert: format!("{dir}/certs/localhost.crt"),
            key: format!("{dir}/certs/localhost.key"),
            plain: false,
            sni: Vec::new(),
            client_ca: None,
            redirect_from: None,
            acme_dir: None,
            protocols: Protocols::Http1AndHttp2,
            limits: Limits::default(),
            root: ".".into(),
            max_body_bytes_set: false,
            reuse_port: false,
            proxy_protocol: false,
            proxy_from: Vec::new(),
            reactors: 0,
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
                "--sni" => args.sni.push(sni(&value())),
                "--require-client-cert" => args.client_ca = Some((value(), true)),
                "--request-client-cert" => args.client_ca = Some((value(), false)),
                "--redirect-from" => args.redirect_from = Some(value()),
                "--acme-dir" => args.acme_dir = Some(value()),
                "--root" => args.root = value(),
                "--http1-only" => args.protocols = Protocols::Http1Only,
                "--http2-only" => args.protocols = Protocols::Http2Only,
                "--reuse-port" => args.reuse_port = true,
                "--proxy-protocol" => args.proxy_protocol = true,
                "--proxy-from" => {
                    args.proxy_protocol = true;
                    args.proxy_from.push(value());
                }
                "--max-workers" => args.limits.max_workers = number(&flag, &value()),
                "--reactors" => args.reactors = number(&flag, &value()),
                "--max-connections" => args.limits.max_connections = number(&flag, &value()),
                "--max-queued" => args.limits.max_queued_requests = number(&flag, &value()),
                "--handshake-timeout" => args.limits.handshake_timeout = seconds(&flag, &value()),
                "--idle-timeout" => args.limits.idle_timeout = seconds(&flag, &value()),
                "--body-timeout" => args.limits.request_body_timeout = seconds(&flag, &value()),
                "--min-body-rate" => {
                    args.limits.min_request_body_rate = number(&flag, &value()) as u64
                }
                "--send-timeout" => args.limits.send_timeout = seconds(&flag, &value()),
                "--min-response-rate" => {
                    args.limits.min_response_body_rate = number(&flag, &value()) as u64
                }
                "--max-connections-per-ip" => {
                    args.limits.max_connections_per_ip = number(&flag, &value())
                }
                "--header-timeout" => args.limits.request_header_timeout = seconds(&flag, &value()),
                "--drain-timeout" => args.limits.drain_timeout = seconds(&flag, &value()),
                "--max-body-bytes" => {
                    args.limits.max_request_body_bytes = number(&flag, &value()) as u64;
                    args.max_body_bytes_set = true;
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => fail(&format!("unknown flag {other}")),
            }
        }
        args
    }

    /// The TLS configuration the flags describe.
    pub fn tls(&self) -> Result<TlsConfig, portcullis::TlsError> {
        let mut tls = TlsConfig::from_pem_files(&self.cert, &self.key)?;
        for (name, cert, key) in &self.sni {
            tls = tls.with_sni(name, cert, key)?;
        }
        match &self.client_ca {
            Some((ca, true)) => tls.require_client_cert(ca),
            Some((ca, false)) => tls.request_client_cert(ca),
            None => Ok(tls),
        }
    }

    /// Binds, configures TLS, spawns the server and prints the `listening on` line; with
    /// `--redirect-from`, also the plain-HTTP redirect listener. With TLS, SIGHUP reloads
    /// the certificates. SIGINT and SIGTERM shut the servers down gracefully, and the
    /// handle's `join` then returns `Ok(())`.
    pub fn start<F, R>(&self, handler: F) -> std::io::Result<ServerHandle>
    where
        F: Fn(Request, ConnectionInfo) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        let inherited = portcullis::listen_fds()?;
        let server = if inherited.is_empty() {
            Server::new()
                .reuse_port(self.reuse_port)
                .also_bind(self.addr.as_str())?
        } else {
            Server::from_listeners(inherited)
        };
        let mut server = server
            .protocols(self.protocols)
            .limits(self.limits.clone())
            .reactors(self.reactors);
        if self.proxy_protocol {
            let networks: &[String] = if self.proxy_from.is_empty() {
                &["127.0.0.0/8".into(), "::1".into()]
            } else {
                &self.proxy_from
            };
            let proxy = ProxyProtocol::trusting(networks)
                .unwrap_or_else(|error| fail(&format!("--proxy-from: {error}")));
            server = server.proxy_protocol(proxy);
        }
        if !self.plain {
            let tls = self.tls()?;
            if let Some(reloader) = tls.reloader() {
                reload_on_sighup(reloader)?;
            }
            server = server.tls(tls);
        }
        let handle = server.spawn(handler)?;
        // Ctrl-C or SIGTERM: stop accepting, finish in-flight requests (up to
        // --drain-timeout), and let `join` return; a second signal exits at once.
        handle.shutdown_on_signals()?;
        let scheme = if self.plain { "http" } else { "https" };
        for addr in handle.local_addrs() {
            println!("listening on {scheme}://{addr}");
        }
        if let Some(from) = &self.redirect_from {
            let mut redirect = HttpsRedirect::new(handle.local_addrs()[0].port());
            if let Some(dir) = &self.acme_dir {
                redirect = redirect.acme_challenge_dir(dir);
            }
            let redirect = Server::bind(from.as_str())?.spawn_service(redirect)?;
            redirect.shutdown_on_signals()?;
            for addr in redirect.local_addrs() {
                println!("redirecting from http://{addr}");
            }
            // The thread owns the handle: dropping it would shut the listener down.
            std::thread::spawn(move || redirect.join());
        }
        Ok(handle)
    }
}

/// Reloads the certificates each time the process gets SIGHUP. SIGHUP is blocked in this
/// thread (and so in every thread started after it: the server's reactor and workers) and
/// taken with `sigwait` by one thread, so no async-signal-safe handler is needed. Call it
/// before starting other threads.
fn reload_on_sighup(reloader: CertReloader) -> std::io::Result<()> {
    let set = block_sighup();
    std::thread::Builder::new()
        .name("sighup-reload".into())
        .spawn(move || loop {
            let mut signal = 0;
            // SAFETY: `set` is initialised and `signal` is a valid place to write to.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                continue;
            }
            match reloader.reload() {
                Ok(()) => println!("SIGHUP: reloaded the certificates"),
                Err(error) => {
                    eprintln!("SIGHUP: keeping the old certificates: {error}");
                    tracing::error!(%error, "certificate reload failed");
                }
            }
        })?;
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`: one access line per request).
///
/// Lines are formatted on the thread that logs and handed to a writer thread through a
/// buffer (`log_writer`), so a request never waits for stderr (a pipe to journald, a
/// file) and a busy server writes thousands of lines per system call; nothing is dropped.
/// Colours only when stderr is a terminal, so a log file holds plain text.
///
/// Keep the returned guard until `main` returns: dropping it writes what is waiting.
/// SIGHUP is blocked first, so that the writer thread (and every thread after it) never
/// takes the signal that `reload_on_sighup` waits for.
pub fn init_logging() -> log_writer::FlushGuard {
    use std::io::IsTerminal;

    block_sighup();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = log_writer::buffered_stderr();
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .event_format(log_format::LineFormat::new(ansi))
        .with_writer(move || writer.clone())
        .init();
    guard
}

/// Blocks SIGHUP in this thread and the threads it starts from now on.
fn block_sighup() -> libc::sigset_t {
    // SAFETY: `sigset_t` is plain data; `sigemptyset` initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed signal set; SIGHUP is a valid signal.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    // SAFETY: `set` is initialised; the old mask is not wanted (null is allowed).
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    set
}

/// `NAME=CERT,KEY`.
fn sni(value: &str) -> (String, String, String) {
    let parsed = value.split_once('=').and_then(|(name, files)| {
        let (cert, key) = files.split_once(',')?;
        Some((name.to_string(), cert.to_string(), key.to_string()))
    });
    parsed.unwrap_or_else(|| fail(&format!("--sni takes NAME=CERT,KEY, not {value:?}")))
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
