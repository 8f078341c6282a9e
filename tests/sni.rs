//! SNI: several certificates chosen by the client's server name, the default for clients
//! that send none or an unknown one, and the name in `ConnectionInfo`.

mod common;
mod tlsutil;

use common::*;
use hyper::StatusCode;
use portcullis::{TlsConfig, TlsError};
use tlsutil::*;

fn sni_tls() -> TlsConfig {
    TlsConfig::from_pem_files(cert_path("localhost.crt"), cert_path("localhost.key"))
        .expect("default certificate")
        .with_sni(
            "example.com",
            cert_path("example.com.crt"),
            cert_path("example.com.key"),
        )
        .expect("example.com certificate")
        .with_sni(
            "www.example.com",
            cert_path("example.com.crt"),
            cert_path("example.com.key"),
        )
        .expect("www.example.com certificate")
}

/// Handshakes with `server_name` (None: no SNI), asks for `/`, and returns the leaf the
/// server presented and the handler's description of the connection.
async fn served(addr: std::net::SocketAddr, server_name: Option<&str>) -> (&'static str, String) {
    let stream = handshake(addr, server_name, any_cert_client())
        .await
        .expect("handshake");
    let cert = which(&served_leaf(&stream));
    let authority = server_name.unwrap_or("127.0.0.1").to_string();
    let mut client = Client::h1(stream, &authority, true).await.expect("h1");
    let reply = client.get("/").await.expect("GET /");
    assert_eq!(reply.status, StatusCode::OK);
    (cert, reply.text())
}

#[test]
fn certificate_is_chosen_by_server_name() {
    let handle = tls_server_with(sni_tls())
        .spawn(info_handler)
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        for (name, want_cert, want_sni) in [
            (Some("example.com"), "example.com.crt", "sni=example.com"),
            (
                Some("www.example.com"),
                "example.com.crt",
                "sni=www.example.com",
            ),
            // Names are compared without regard to case; rustls lower-cases them.
            (
                Some("WWW.Example.COM"),
                "example.com.crt",
                "sni=www.example.com",
            ),
            (Some("localhost"), "localhost.crt", "sni=localhost"),
            // Unknown name: the default certificate, and the name as the client sent it.
            (Some("unknown.test"), "localhost.crt", "sni=unknown.test"),
            // No SNI at all (connecting by IP address): the default certificate.
            (None, "localhost.crt", "sni=-"),
        ] {
            let (cert, text) = served(addr, name).await;
            assert_eq!(cert, want_cert, "certificate for {name:?}");
            assert!(text.contains(want_sni), "{name:?}: handler saw {text:?}");
        }
    });
    stop(handle);
}

#[test]
fn verifying_client_accepts_each_name() {
    // A normal client (verifying against the dev CA) connects to both names.
    let handle = tls_server_with(sni_tls())
        .spawn(info_handler)
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        for name in ["example.com", "localhost"] {
            let stream = handshake(addr, Some(name), client_config(ALPN_H1))
                .await
                .unwrap_or_else(|e| panic!("verified handshake for {name}: {e}"));
            let mut client = Client::h1(stream, name, true).await.expect("h1");
            let reply = client.get("/").await.expect("GET");
            assert!(
                reply.text().contains(&format!("sni={name}")),
                "{}",
                reply.text()
            );
        }
    });
    stop(handle);
}

#[test]
fn certificate_not_valid_for_the_name_is_refused() {
    let err = TlsConfig::from_pem_files(cert_path("localhost.crt"), cert_path("localhost.key"))
        .expect("default")
        .with_sni(
            "example.com",
            cert_path("localhost.crt"),
            cert_path("localhost.key"),
        )
        .unwrap_err();
    match &err {
        TlsError::NameMismatch { path, name, .. } => {
            assert!(path.ends_with("localhost.crt"), "{err}");
            assert_eq!(name, "example.com");
        }
        other => panic!("expected NameMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("localhost.crt"), "{err}");
    assert!(err.to_string().contains("example.com"), "{err}");
}

#[test]
fn sni_key_must_match_its_certificate() {
    let err = TlsConfig::from_pem_files(cert_path("localhost.crt"), cert_path("localhost.key"))
        .expect("default")
        .with_sni(
            "example.com",
            cert_path("example.com.crt"),
            cert_path("localhost.key"),
        )
        .unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert!(err.path().ends_with("localhost.key"), "{err}");
}

#[test]
fn rustls_built_config_refuses_sni() {
    let config = localhost_tls().rustls_config().clone();
    let err = TlsConfig::from_rustls(config)
        .with_sni(
            "example.com",
            cert_path("example.com.crt"),
            cert_path("example.com.key"),
        )
        .unwrap_err();
    assert!(matches!(err, TlsError::CustomConfig { .. }), "{err:?}");
}

fn tls_server_with(tls: TlsConfig) -> portcullis::Server {
    portcullis::Server::bind("127.0.0.1:0")
        .expect("bind")
        .tls(tls)
}
