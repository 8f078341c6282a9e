//! Certificate reload on a running server: new handshakes get the new certificate, open
//! connections keep working, a bad file is refused with an error naming it and the old
//! certificate stays; the examples reload on SIGHUP.

mod common;
mod tlsutil;

use std::path::Path;
use std::time::Duration;

use common::*;
use hyper::StatusCode;
use portcullis::{Server, TlsConfig, TlsError};
use tlsutil::*;

/// A certificate and key copied to temporary files, to be overwritten as a renewal would.
struct CertFiles {
    cert: TempFile,
    key: TempFile,
}

impl CertFiles {
    fn new(name: &str) -> CertFiles {
        CertFiles {
            cert: TempFile::new("site.crt", &read(&format!("{name}.crt"))),
            key: TempFile::new("site.key", &read(&format!("{name}.key"))),
        }
    }

    /// Overwrites both files with the pair `name` from `certs/`.
    fn replace_with(&self, name: &str) {
        write(&self.cert.path, &read(&format!("{name}.crt")));
        write(&self.key.path, &read(&format!("{name}.key")));
    }
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(cert_path(name)).expect("read certs/ file")
}

fn write(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents).expect("write temp file");
}

async fn cert_of_new_connection(addr: std::net::SocketAddr) -> &'static str {
    let stream = handshake(addr, Some("localhost"), client_config(ALPN_H1))
        .await
        .expect("handshake");
    let cert = which(&served_leaf(&stream));
    let mut client = Client::h1(stream, "localhost", true).await.expect("h1");
    assert_eq!(client.get("/").await.expect("GET").status, StatusCode::OK);
    cert
}

#[test]
fn reload_swaps_certificate_for_new_handshakes_and_keeps_open_connections() {
    let files = CertFiles::new("localhost");
    let tls = TlsConfig::from_pem_files(&files.cert.path, &files.key.path).expect("load");
    let reloader = tls.reloader().expect("reloader");
    let handle = Server::bind("127.0.0.1:0")
        .expect("bind")
        .tls(tls)
        .spawn(info_handler)
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        // A keep-alive connection opened before the reload.
        let stream = handshake(addr, Some("localhost"), client_config(ALPN_H1))
            .await
            .expect("handshake");
        assert_eq!(which(&served_leaf(&stream)), "localhost.crt");
        let mut old = Client::h1(stream, "localhost", true).await.expect("h1");
        assert_eq!(
            old.get("/before").await.expect("GET").status,
            StatusCode::OK
        );

        // Renewal: new files in place, then reload.
        files.replace_with("ec-sec1");
        reloader.reload().expect("reload the renewed files");
        assert_eq!(cert_of_new_connection(addr).await, "ec-sec1.crt");

        // The connection opened before the reload still works.
        let reply = old.get("/after").await.expect("GET on the old connection");
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.text().contains("path=/after"), "{}", reply.text());

        // A key that does not match: refused, named, and the running certificate stays.
        write(&files.key.path, &read("example.com.key"));
        let err = reloader.reload().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        assert_eq!(err.path(), files.key.path, "{err}");
        assert!(err.to_string().contains(files.key.as_str()), "{err}");
        assert_eq!(cert_of_new_connection(addr).await, "ec-sec1.crt");

        // A certificate file that is not PEM at all.
        write(&files.key.path, &read("ec-sec1.key"));
        write(&files.cert.path, b"this is not a certificate\n");
        let err = reloader.reload().unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert_eq!(err.path(), files.cert.path);
        assert_eq!(cert_of_new_connection(addr).await, "ec-sec1.crt");

        // A key file that is missing.
        let err = reloader
            .reload_from_pem_files(&files.cert.path, "/nonexistent/site.key")
            .unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/site.key"), "{err}");
        assert_eq!(cert_of_new_connection(addr).await, "ec-sec1.crt");

        // Other files: the reloader reads them from then on.
        reloader
            .reload_from_pem_files(cert_path("rsa-pkcs1.crt"), cert_path("rsa-pkcs1.key"))
            .expect("switch to the RSA pair");
        assert_eq!(cert_of_new_connection(addr).await, "rsa-pkcs1.crt");
        reloader.reload().expect("reload the RSA pair");
        assert_eq!(cert_of_new_connection(addr).await, "rsa-pkcs1.crt");

        assert_eq!(old.get("/last").await.expect("GET").status, StatusCode::OK);
    });
    stop(handle);
}

#[test]
fn reload_covers_sni_certificates_all_or_nothing() {
    let default = CertFiles::new("localhost");
    let named = CertFiles::new("example.com");
    let tls = TlsConfig::from_pem_files(&default.cert.path, &default.key.path)
        .expect("load")
        .with_sni("example.com", &named.cert.path, &named.key.path)
        .expect("sni");
    let reloader = tls.reloader().expect("reloader");
    let handle = Server::bind("127.0.0.1:0")
        .expect("bind")
        .tls(tls)
        .spawn(info_handler)
        .expect("spawn");
    let addr = addr(&handle);
    let served = |name: &'static str| {
        block_on(async move {
            let stream = handshake(addr, Some(name), any_cert_client())
                .await
                .expect("handshake");
            which(&served_leaf(&stream))
        })
    };
    assert_eq!(served("example.com"), "example.com.crt");

    // The default renews fine but the SNI certificate no longer covers its name: nothing
    // changes, and the error names the SNI file.
    default.replace_with("ec-sec1");
    named.replace_with("rsa-pkcs1");
    let err = reloader.reload().unwrap_err();
    assert!(matches!(err, TlsError::NameMismatch { .. }), "{err:?}");
    assert_eq!(err.path(), named.cert.path);
    assert_eq!(served("localhost"), "localhost.crt");
    assert_eq!(served("example.com"), "example.com.crt");

    // Fix the SNI files: both change at once.
    named.replace_with("example.com");
    reloader.reload().expect("reload");
    assert_eq!(served("localhost"), "ec-sec1.crt");
    assert_eq!(served("example.com"), "example.com.crt");

    // Adding a name on a running server.
    reloader
        .reload_sni_from_pem_files(
            "www.example.com",
            cert_path("example.com.crt"),
            cert_path("example.com.key"),
        )
        .expect("add a name");
    assert_eq!(served("www.example.com"), "example.com.crt");
    stop(handle);
}

#[test]
fn hello_example_reloads_on_sighup() {
    let files = CertFiles::new("localhost");
    let hello = Example::start(
        "hello",
        &["--cert", files.cert.as_str(), "--key", files.key.as_str()],
    );
    let addr = hello.addr;
    assert_eq!(block_on(cert_of_new_connection(addr)), "localhost.crt");

    files.replace_with("ec-sec1");
    hello.signal(libc::SIGHUP);
    hello.wait_stdout("SIGHUP: reloaded", Duration::from_secs(10));
    assert_eq!(block_on(cert_of_new_connection(addr)), "ec-sec1.crt");

    // A broken renewal: logged, and the server keeps serving the last good certificate.
    write(
        &files.key.path,
        b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
    );
    hello.signal(libc::SIGHUP);
    let line = hello.wait_stderr("keeping the old certificates", Duration::from_secs(10));
    assert!(line.contains(files.key.as_str()), "{line}");
    assert_eq!(block_on(cert_of_new_connection(addr)), "ec-sec1.crt");
}

/// With 2 reactors, a reload reaches both: new connections on each get the new
/// certificate (the reactors share one certificate resolver).
#[test]
fn reload_reaches_every_reactor() {
    let files = CertFiles::new("localhost");
    let tls = TlsConfig::from_pem_files(&files.cert.path, &files.key.path).expect("load");
    let reloader = tls.reloader().expect("reloader");
    let handle = Server::bind("127.0.0.1:0")
        .expect("bind")
        .tls(tls)
        .reactors(2)
        .spawn(|_req, info: portcullis::ConnectionInfo| {
            portcullis::Response::new(portcullis::Body::from(info.reactor().to_string()))
        })
        .expect("spawn");
    let addr = addr(&handle);
    block_on(async move {
        files.replace_with("ec-sec1");
        reloader.reload().expect("reload the renewed files");
        // Kept open so that new connections spread over both reactors.
        let mut seen = std::collections::BTreeMap::new();
        let mut kept = Vec::new();
        for _ in 0..24 {
            let stream = handshake(addr, Some("localhost"), client_config(ALPN_H1))
                .await
                .expect("handshake");
            let cert = which(&served_leaf(&stream));
            let mut client = Client::h1(stream, "localhost", true).await.expect("h1");
            let reactor = client.get("/").await.expect("GET").text();
            assert_eq!(
                cert, "ec-sec1.crt",
                "reactor {reactor} served the old certificate"
            );
            *seen.entry(reactor).or_insert(0) += 1;
            kept.push(client);
        }
        assert_eq!(
            seen.len(),
            2,
            "new connections did not reach both reactors: {seen:?}"
        );
    });
    stop(handle);
}
