//! TLS session resumption, on by default: TLS 1.3 tickets, TLS 1.2 tickets and the TLS 1.2
//! session-ID cache, seen from a rustls client; and (ignored, run by hand) the cost of a
//! full handshake against a resumed one.

mod common;
mod tlsutil;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use tlsutil::*;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::{Resumption, Tls12Resumption};
use tokio_rustls::rustls::HandshakeKind;

/// A client trusting the dev CA with its own session store.
fn resuming_client(
    version: &'static rustls::SupportedProtocolVersion,
    tls12: Tls12Resumption,
) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .expect("versions")
    .with_root_certificates(root_store())
    .with_no_client_auth();
    config.resumption = Resumption::in_memory_sessions(64).tls12_resumption(tls12);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One connection with one request; returns how the handshake went. The request makes
/// the client read what the server sent after the handshake (TLS 1.3 tickets).
async fn connect_once(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> (HandshakeKind, rustls::ProtocolVersion) {
    let stream = handshake(addr, Some("localhost"), config)
        .await
        .expect("handshake");
    let (_, conn) = stream.get_ref();
    let kind = conn.handshake_kind().expect("handshake finished");
    let version = conn.protocol_version().expect("version");
    let mut client = Client::h1(stream, "localhost", true).await.expect("h1");
    assert_eq!(client.get("/").await.expect("GET").status, StatusCode::OK);
    drop(client);
    (kind, version)
}

fn assert_second_is_resumed(
    version: &'static rustls::SupportedProtocolVersion,
    tls12: Tls12Resumption,
) {
    let handle = spawn_tls(info_handler);
    let addr = addr(&handle);
    let config = resuming_client(version, tls12);
    block_on(async move {
        let (first, negotiated) = connect_once(addr, config.clone()).await;
        assert_eq!(negotiated, version.version);
        assert_eq!(first, HandshakeKind::Full, "first connection");
        for i in 0..3 {
            let (kind, _) = connect_once(addr, config.clone()).await;
            assert_eq!(
                kind,
                HandshakeKind::Resumed,
                "connection {} after the first",
                i + 1
            );
        }
    });
    stop(handle);
}

#[test]
fn tls13_tickets_resume() {
    assert_second_is_resumed(&rustls::version::TLS13, Tls12Resumption::SessionIdOrTickets);
}

#[test]
fn tls12_tickets_resume() {
    assert_second_is_resumed(&rustls::version::TLS12, Tls12Resumption::SessionIdOrTickets);
}

#[test]
fn tls12_session_cache_resumes_without_tickets() {
    assert_second_is_resumed(&rustls::version::TLS12, Tls12Resumption::SessionIdOnly);
}

#[test]
fn tickets_are_not_valid_on_another_server() {
    // Each server has its own ticket keys: a ticket from one is a full handshake on another.
    let one = spawn_tls(info_handler);
    let two = spawn_tls(info_handler);
    let (a, b) = (addr(&one), addr(&two));
    let config = resuming_client(&rustls::version::TLS13, Tls12Resumption::Disabled);
    block_on(async move {
        assert_eq!(connect_once(a, config.clone()).await.0, HandshakeKind::Full);
        // rustls keys its session store by server name, so the ticket is offered to `b`.
        assert_eq!(connect_once(b, config.clone()).await.0, HandshakeKind::Full);
    });
    stop(one);
    stop(two);
}

/// Run by hand (in release for real figures):
/// `cargo test --release --test resumption -- --ignored --nocapture handshake_cost`.
/// Sequential connections from a rustls client (one `GET /` each, so that TLS 1.3 tickets
/// are read), full versus resumed handshakes, TLS 1.3 and TLS 1.2. Prints connections per
/// second (client and server together, in this process) and the CPU time the server's
/// reactor thread — where handshakes run — spent per connection.
#[test]
#[ignore = "a measurement, not a check; run by hand"]
fn handshake_cost() {
    const N: usize = 2000;
    let handle = spawn_tls(info_handler);
    let addr = addr(&handle);
    block_on(async move {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            for (want, tls12) in [
                (HandshakeKind::Full, None),
                (
                    HandshakeKind::Resumed,
                    Some(Tls12Resumption::SessionIdOrTickets),
                ),
            ] {
                let mut config =
                    (*resuming_client(version, tls12.unwrap_or(Tls12Resumption::Disabled))).clone();
                if tls12.is_none() {
                    config.resumption = Resumption::disabled();
                }
                let config = Arc::new(config);
                // Warm up (and get a ticket).
                let _ = connect_once(addr, config.clone()).await;
                let cpu_before = reactor_cpu();
                let started = Instant::now();
                for i in 0..N {
                    let (kind, _) = connect_once(addr, config.clone()).await;
                    assert_eq!(kind, want, "connection {i}");
                }
                let elapsed = started.elapsed();
                let cpu = reactor_cpu() - cpu_before;
                println!(
                    "{:?} {want:?}: {N} connections in {:.2} s = {:.0}/s; server reactor CPU {:.0} µs per connection",
                    version.version,
                    elapsed.as_secs_f64(),
                    N as f64 / elapsed.as_secs_f64(),
                    cpu.as_secs_f64() * 1e6 / N as f64,
                );
            }
        }
    });
    stop(handle);
}

/// CPU time (user + system) of this process's reactor threads, from /proc.
fn reactor_cpu() -> Duration {
    // SAFETY: sysconf takes a plain constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("portcullis-reac") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the ")" that ends the command name: state is field 3, utime 14,
        // stime 15.
        let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += field(14) + field(15);
    }
    Duration::from_secs_f64(total as f64 / ticks)
}
