//! Client certificates (mutual TLS): required, optional, a certificate from another CA,
//! the verified chain in `ConnectionInfo`, and bad CA files.

mod common;
mod tlsutil;

use common::*;
use hyper::StatusCode;
use portcullis::{Body, ConnectionInfo, Request, Response, Server, TlsConfig, TlsError};
use tlsutil::*;
use tokio_rustls::rustls;

/// Answers which client certificate the connection presented, by file name.
fn whose_cert(_req: Request, info: ConnectionInfo) -> Response {
    let text = match info.peer_certificates() {
        None => "client=none".to_string(),
        Some(chain) => {
            let name = if chain[0].as_ref() == leaf("client.crt").as_ref() {
                "client.crt"
            } else {
                "unknown"
            };
            format!("client={name} chain={}", chain.len())
        }
    };
    Response::new(Body::from(text))
}

fn server(required: bool) -> portcullis::ServerHandle {
    let tls = localhost_tls();
    let tls = if required {
        tls.require_client_cert(cert_path("ca.crt"))
    } else {
        tls.request_client_cert(cert_path("ca.crt"))
    }
    .expect("client CA");
    Server::bind("127.0.0.1:0")
        .expect("bind")
        .tls(tls)
        .spawn(whose_cert)
        .expect("spawn")
}

/// Connects presenting `client` (a `certs/` base name) and asks for `/`: the handler's
/// answer, or the error (a refused client certificate shows up at the handshake in TLS 1.2
/// and at the first read in TLS 1.3).
fn ask(
    addr: std::net::SocketAddr,
    client: Option<&str>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<String, String> {
    let config = client_with_cert(client, &[version]);
    block_on(async move {
        let stream = handshake(addr, Some("localhost"), config)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut h1 = Client::h1(stream, "localhost", true)
            .await
            .map_err(|e| format!("h1: {e}"))?;
        let reply = h1.get("/").await.map_err(|e| format!("GET: {e}"))?;
        if reply.status != StatusCode::OK {
            return Err(format!("status {}", reply.status));
        }
        Ok(reply.text())
    })
}

/// Connects presenting `client` and returns how the server refused it: the TLS alert the
/// client received, at the handshake (TLS 1.2) or at the first read after it (TLS 1.3,
/// where the server judges the certificate after the client has finished). Panics if the
/// server answered instead.
fn refusal(
    addr: std::net::SocketAddr,
    client: Option<&str>,
    version: &'static rustls::SupportedProtocolVersion,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = client_with_cert(client, &[version]);
    block_on(async move {
        let mut stream = match handshake(addr, Some("localhost"), config).await {
            Ok(stream) => stream,
            Err(e) => return format!("handshake: {e}"),
        };
        let _ = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        let mut buf = vec![0u8; 4096];
        match within(TIMEOUT, "the server's refusal", stream.read(&mut buf)).await {
            Ok(0) => "EOF without an alert".to_string(),
            Ok(n) => panic!(
                "{:?} {client:?}: the server answered: {:?}",
                version.version,
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => format!("read: {e}"),
        }
    })
}

const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

#[test]
fn required_client_certificate() {
    let handle = server(true);
    let addr = addr(&handle);
    for version in VERSIONS {
        let v = version.version;
        // Signed by the trusted CA: accepted, and the handler sees the chain (leaf + CA).
        assert_eq!(
            ask(addr, Some("client"), version).as_deref(),
            Ok("client=client.crt chain=2"),
            "{v:?}"
        );
        // No certificate: refused with the alert that says so.
        let err = refusal(addr, None, version);
        eprintln!("{v:?} without a certificate: {err}");
        assert!(
            err.contains("received fatal alert: CertificateRequired"),
            "{v:?} without a certificate: {err}"
        );
        // Signed by another CA: refused as an unknown CA.
        let err = refusal(addr, Some("other-client"), version);
        eprintln!("{v:?} with another CA's certificate: {err}");
        assert!(
            err.contains("received fatal alert: UnknownCA"),
            "{v:?} with another CA's certificate: {err}"
        );
    }
    // The server is still fine afterwards.
    assert!(ask(addr, Some("client"), &rustls::version::TLS13).is_ok());
    stop(handle);
}

#[test]
fn requested_client_certificate_is_optional() {
    let handle = server(false);
    let addr = addr(&handle);
    for version in VERSIONS {
        let v = version.version;
        assert_eq!(
            ask(addr, Some("client"), version).as_deref(),
            Ok("client=client.crt chain=2"),
            "{v:?}"
        );
        assert_eq!(
            ask(addr, None, version).as_deref(),
            Ok("client=none"),
            "{v:?}"
        );
        // A certificate that is sent must still verify.
        let err = refusal(addr, Some("other-client"), version);
        assert!(
            err.contains("received fatal alert: UnknownCA"),
            "{v:?} with another CA's certificate: {err}"
        );
    }
    stop(handle);
}

#[test]
fn no_client_certificate_without_client_auth() {
    // A server that does not ask never sees one, even from a client that has one.
    let handle = spawn_tls(whose_cert);
    let addr = addr(&handle);
    assert_eq!(
        ask(addr, Some("client"), &rustls::version::TLS13).as_deref(),
        Ok("client=none")
    );
    stop(handle);
}

#[test]
fn resumed_session_keeps_the_client_certificate() {
    let handle = server(true);
    let addr = addr(&handle);
    let config = client_with_cert(Some("client"), &[&rustls::version::TLS13]);
    block_on(async move {
        for round in 0..2 {
            let stream = handshake(addr, Some("localhost"), config.clone())
                .await
                .expect("handshake");
            let kind = stream.get_ref().1.handshake_kind();
            let mut h1 = Client::h1(stream, "localhost", true).await.expect("h1");
            let reply = h1.get("/").await.expect("GET");
            assert_eq!(reply.text(), "client=client.crt chain=2", "round {round}");
            if round == 1 {
                assert_eq!(kind, Some(rustls::HandshakeKind::Resumed));
            }
        }
    });
    stop(handle);
}

#[test]
fn bad_client_ca_files_are_named() {
    let err = localhost_tls()
        .require_client_cert("/nonexistent/ca.crt")
        .unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");

    let err = localhost_tls()
        .request_client_cert(cert_path("localhost.key"))
        .unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(err.path().ends_with("localhost.key"));

    let custom = TlsConfig::from_rustls(localhost_tls().rustls_config().clone());
    let err = custom.require_client_cert(cert_path("ca.crt")).unwrap_err();
    assert!(matches!(err, TlsError::CustomConfig { .. }), "{err:?}");
}
