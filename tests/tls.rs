//! TLS: clients that do not speak TLS, handshake timeouts, certificate and key loading
//! errors, key formats, caller-built rustls configurations, SNI and ALPN mismatches.

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hyper::{StatusCode, Version};
use portcullis::{Limits, TlsConfig, TlsError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

/// Sends `garbage` where a ClientHello belongs and returns what the server sent back
/// before closing, and how long the close took.
async fn send_garbage(addr: std::net::SocketAddr, garbage: &[u8]) -> (Vec<u8>, Duration) {
    let mut stream = tcp(addr).await.expect("connect");
    stream.write_all(garbage).await.expect("write garbage");
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within(
            Duration::from_secs(5),
            "the server to close",
            stream.read(&mut buf),
        )
        .await
        {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            // A reset is a close too.
            Err(_) => break,
        }
    }
    (received, started.elapsed())
}

fn assert_closed_with_at_most_an_alert(received: &[u8], what: &str) {
    if let Some(&first) = received.first() {
        // A TLS alert record: content type 21, then the version, length 2, level, reason.
        assert_eq!(
            first, 0x15,
            "{what}: expected nothing or a TLS alert, got {received:02x?}"
        );
        assert!(received.len() <= 7 * 2, "{what}: {received:02x?}");
    }
}

#[test]
fn garbage_instead_of_client_hello_is_closed_while_others_are_served() {
    let handle = spawn_tls(info_handler);
    let addr = addr(&handle);
    let mut random = pseudo_random(1024, 11);
    // A first byte that is a valid TLS content type (20..=24) could make the server wait
    // for the rest of a plausible record; that case is `partial_record_...` below.
    random[0] = 0x47;
    block_on(async move {
        for (what, garbage) in [
            (
                "HTTP/1.1 request",
                &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
            ),
            ("1 KiB of random bytes", &random[..]),
        ] {
            let bad = tokio::spawn({
                let garbage = garbage.to_vec();
                async move { send_garbage(addr, &garbage).await }
            });
            // A well-behaved client at the same time is served normally.
            let good = get_tls(addr, Version::HTTP_2, "/good").await;
            assert_eq!(good.status, StatusCode::OK);
            let (received, elapsed) = bad.await.expect("garbage task");
            eprintln!("{what}: server sent {received:02x?}, closed after {elapsed:?}");
            if what == "HTTP/1.1 request" {
                // Plain HTTP on the TLS port gets a plain-text 400 (as nginx and Go), not
                // an alert that curl would show as "HTTP/0.9".
                let text = String::from_utf8_lossy(&received);
                assert!(
                    text.starts_with("HTTP/1.1 400 Bad Request\r\n") && text.contains("HTTPS"),
                    "{what}: {text:?}"
                );
            } else {
                assert_closed_with_at_most_an_alert(&received, what);
            }
            assert!(elapsed < Duration::from_secs(5), "{what}: {elapsed:?}");
        }
    });
    stop(handle);
}

#[test]
fn silent_and_stalled_clients_are_closed_after_the_handshake_timeout() {
    let mut limits = Limits::default();
    limits.handshake_timeout = Duration::from_millis(500);
    let handle = tls_server()
        .limits(limits)
        .spawn(info_handler)
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        // Says nothing at all / starts a handshake record and stalls.
        for (what, bytes) in [
            ("silent client", &b""[..]),
            ("stalled record", &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]),
        ] {
            let (received, elapsed) = send_garbage(addr, bytes).await;
            eprintln!("{what}: server sent {received:02x?}, closed after {elapsed:?}");
            if what == "HTTP/1.1 request" {
                // Plain HTTP on the TLS port gets a plain-text 400 (as nginx and Go), not
                // an alert that curl would show as "HTTP/0.9".
                let text = String::from_utf8_lossy(&received);
                assert!(
                    text.starts_with("HTTP/1.1 400 Bad Request\r\n") && text.contains("HTTPS"),
                    "{what}: {text:?}"
                );
            } else {
                assert_closed_with_at_most_an_alert(&received, what);
            }
            assert!(
                elapsed >= Duration::from_millis(400),
                "{what}: closed after {elapsed:?}, before the handshake timeout"
            );
            assert!(
                elapsed < Duration::from_secs(3),
                "{what}: still open {elapsed:?} after a 500 ms handshake timeout"
            );
        }
        // A real client is unaffected.
        let reply = get_tls(addr, Version::HTTP_11, "/").await;
        assert_eq!(reply.status, StatusCode::OK);
    });
    stop(handle);
}

fn expect_error(cert: &Path, key: &Path) -> TlsError {
    match TlsConfig::from_pem_files(cert, key) {
        Ok(_) => panic!(
            "{} + {} loaded, expected an error",
            cert.display(),
            key.display()
        ),
        Err(e) => e,
    }
}

/// The error names `path` through `path()`, Display, and the io::Error made from it.
fn assert_names(err: TlsError, path: &Path) -> io::Error {
    assert_eq!(err.path(), path, "{err:?}");
    let shown = path.display().to_string();
    assert!(
        err.to_string().contains(&shown),
        "{err} does not name {shown}"
    );
    let io_err = io::Error::from(err);
    assert!(
        io_err.to_string().contains(&shown),
        "{io_err} does not name {shown}"
    );
    io_err
}

#[test]
fn missing_certificate_file() {
    let cert = cert_path("no-such.crt");
    let err = expect_error(&cert, &cert_path("localhost.key"));
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    let io_err = assert_names(err, &cert);
    assert_eq!(io_err.kind(), io::ErrorKind::NotFound);
}

#[test]
fn missing_key_file() {
    let key = cert_path("no-such.key");
    let err = expect_error(&cert_path("localhost.crt"), &key);
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    let io_err = assert_names(err, &key);
    assert_eq!(io_err.kind(), io::ErrorKind::NotFound);
}

#[test]
fn certificate_file_without_a_certificate() {
    let cert = TempFile::new("no-cert.crt", b"this is not a certificate\n");
    let err = expect_error(&cert.path, &cert_path("localhost.key"));
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    let io_err = assert_names(err, &cert.path);
    assert_eq!(io_err.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn certificate_file_with_a_key_only() {
    // The key file given as the certificate: no CERTIFICATE section.
    let err = expect_error(&cert_path("localhost.key"), &cert_path("localhost.key"));
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert_names(err, &cert_path("localhost.key"));
}

#[test]
fn certificate_file_with_garbage_pem() {
    let cert = TempFile::new(
        "garbage.crt",
        b"-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
    );
    let err = expect_error(&cert.path, &cert_path("localhost.key"));
    assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
    assert_names(err, &cert.path);
}

#[test]
fn key_file_with_garbage_pem() {
    let key = TempFile::new(
        "garbage.key",
        b"-----BEGIN PRIVATE KEY-----\n!!! not base64 !!!\n-----END PRIVATE KEY-----\n",
    );
    let err = expect_error(&cert_path("localhost.crt"), &key.path);
    assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
    let io_err = assert_names(err, &key.path);
    assert_eq!(io_err.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn key_file_holding_a_certificate() {
    // A different file than the certificate argument, so the path tells them apart.
    let key = cert_path("ca.crt");
    let err = expect_error(&cert_path("localhost.crt"), &key);
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    assert_names(err, &key);
}

#[test]
fn key_that_does_not_match_the_certificate() {
    let key = cert_path("example.com.key");
    let err = expect_error(&cert_path("localhost.crt"), &key);
    match &err {
        TlsError::KeyMismatch { cert, key: named } => {
            assert_eq!(cert, &cert_path("localhost.crt"));
            assert_eq!(named, &key);
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }
    assert_names(err, &key);
}

#[test]
fn in_memory_pem_errors_name_the_argument() {
    let cert = std::fs::read(cert_path("localhost.crt")).expect("read cert");
    let key = std::fs::read(cert_path("localhost.key")).expect("read key");
    TlsConfig::from_pem(&cert, &key).expect("valid PEM from memory");
    // Swapped: the "certificate chain" holds only a key.
    let err = TlsConfig::from_pem(&key, &cert).expect_err("swapped PEM accepted");
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert_eq!(err.path(), Path::new("<certificate chain>"));
    let err = TlsConfig::from_pem(&cert, &cert).expect_err("certificate as key accepted");
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err:?}");
    assert_eq!(err.path(), Path::new("<private key>"));
}

fn serve_with_key_fixture(cert: &str, key: &str) {
    let tls = TlsConfig::from_pem_files(cert_path(cert), cert_path(key))
        .unwrap_or_else(|e| panic!("load {cert} + {key}: {e}"));
    let handle = portcullis::Server::bind("127.0.0.1:0")
        .expect("bind")
        .tls(tls)
        .spawn(info_handler)
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let reply = get_tls(addr, version, "/key").await;
            assert_eq!(reply.status, StatusCode::OK, "{key} {version:?}");
            assert_eq!(reply.version, version);
            assert!(reply.text().contains("sni=localhost"), "{}", reply.text());
        }
    });
    let reply = curl(addr, true, "/key", &["--http2"]);
    assert_eq!(reply.status, 200, "curl with {key}: {}", reply.stderr);
    assert_eq!(reply.version, "2");
    stop(handle);
}

#[test]
fn pkcs1_rsa_key_serves_requests() {
    serve_with_key_fixture("rsa-pkcs1.crt", "rsa-pkcs1.key");
}

#[test]
fn sec1_ec_key_serves_requests() {
    serve_with_key_fixture("ec-sec1.crt", "ec-sec1.key");
}

fn load_chain_and_key() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let certs = CertificateDer::pem_file_iter(cert_path("localhost.crt"))
        .expect("open cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("parse cert");
    let key = PrivateKeyDer::from_pem_file(cert_path("localhost.key")).expect("parse key");
    (certs, key)
}

#[test]
fn from_rustls_with_empty_alpn_gets_the_servers_protocols() {
    let (certs, key) = load_chain_and_key();
    // TLS 1.2 only, no ALPN: portcullis fills in h2 + http/1.1.
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let handle = portcullis::Server::bind("127.0.0.1:0")
        .expect("bind")
        .tls(TlsConfig::from_rustls(Arc::new(config)))
        .spawn(info_handler)
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        let stream = tls_connect(addr, ALPN_BOTH).await.expect("connect");
        assert_eq!(negotiated_alpn(&stream).as_deref(), Some(&b"h2"[..]));
        let mut client = Client::h2(stream, &format!("localhost:{}", addr.port()), true)
            .await
            .expect("h2 handshake");
        let reply = client.get("/custom").await.expect("GET");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_2);
        assert_eq!(
            reply.text(),
            "protocol=Http2 tls=Some(Tls12) sni=localhost alpn=h2 is_tls=true path=/custom"
        );
    });
    stop(handle);
}

#[test]
fn from_rustls_keeps_the_callers_alpn() {
    let (certs, key) = load_chain_and_key();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let handle = portcullis::Server::bind("127.0.0.1:0")
        .expect("bind")
        .tls(TlsConfig::from_rustls(Arc::new(config)))
        .spawn(info_handler)
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        let stream = tls_connect(addr, ALPN_BOTH).await.expect("connect");
        assert_eq!(negotiated_alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
        let mut client = Client::h1(stream, &format!("localhost:{}", addr.port()), true)
            .await
            .expect("h1 handshake");
        let reply = client.get("/custom").await.expect("GET");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, Version::HTTP_11);
        assert!(
            reply.text().starts_with("protocol=Http1 tls=Some(Tls13)"),
            "{}",
            reply.text()
        );
    });
    stop(handle);
}

#[test]
fn client_offering_only_unknown_alpn_fails_the_handshake() {
    let handle = spawn_tls(info_handler);
    let addr = addr(&handle);
    block_on(async move {
        // Observed: the server answers the ClientHello with a fatal
        // `no_application_protocol` alert (RFC 7301 §3.2), so the client's handshake fails
        // with rustls' "received fatal alert: NoApplicationProtocol".
        let err = tls_connect(addr, &[b"spdy/3"])
            .await
            .expect_err("a client offering only spdy/3 completed the handshake");
        assert!(
            err.to_string().contains("NoApplicationProtocol"),
            "unexpected handshake error: {err}"
        );
        // The server is fine.
        let reply = get_tls(addr, Version::HTTP_2, "/").await;
        assert_eq!(reply.status, StatusCode::OK);
    });
    stop(handle);
}

#[test]
fn client_without_sni_is_served_and_reported() {
    let handle = spawn_tls(info_handler);
    let addr = addr(&handle);
    block_on(async move {
        // Connecting by IP address sends no SNI; the certificate has IP:127.0.0.1.
        let stream = tcp(addr).await.expect("connect");
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = within(
            Duration::from_secs(10),
            "TLS handshake",
            TlsConnector::from(client_config(ALPN_H1)).connect(name, stream),
        )
        .await
        .expect("TLS handshake by IP");
        let mut client = Client::h1(stream, &addr.to_string(), true)
            .await
            .expect("h1 handshake");
        let reply = client.get("/nosni").await.expect("GET");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.text(),
            "protocol=Http1 tls=Some(Tls13) sni=- alpn=http/1.1 is_tls=true path=/nosni"
        );
    });
    stop(handle);
}

#[test]
fn tls_error_paths_are_the_given_paths() {
    // Relative paths are reported as given, not canonicalised.
    let rel: PathBuf = ["does", "not", "exist.key"].iter().collect();
    let err = expect_error(&cert_path("localhost.crt"), &rel);
    assert_eq!(err.path(), rel.as_path());
}
