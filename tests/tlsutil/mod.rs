//! Helpers for the SNI, reload, resumption and mTLS tests: which certificate a server
//! presented, TLS clients that accept any server certificate (to see the default one
//! served to an unknown name), client certificates, and the example binaries.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::common::{cert_path, root_store, tcp, TIMEOUT};

/// The leaf (first) certificate of a PEM chain file under `certs/`.
pub fn leaf(name: &str) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(cert_path(name))
        .expect("open certificate")
        .next()
        .expect("a certificate in the file")
        .expect("parse certificate")
}

/// Every certificate of a PEM chain file under `certs/`.
pub fn chain(name: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(cert_path(name))
        .expect("open certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("parse certificates")
}

/// A private key file under `certs/`.
pub fn key(name: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(cert_path(name)).expect("parse key")
}

/// Accepts any server certificate (signatures are still checked): to see which
/// certificate a server presents to a name it has none for.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that accepts any server certificate, offering HTTP/1.1 by ALPN.
pub fn any_cert_client() -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A client trusting the dev CA, offering HTTP/1.1, with `versions`, and presenting the
/// client certificate `client` (`"client"` → `certs/client.crt` + `certs/client.key`).
pub fn client_with_cert(
    client: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(root_store());
    let mut config = match client {
        Some(name) => builder
            .with_client_auth_cert(chain(&format!("{name}.crt")), key(&format!("{name}.key")))
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// TCP connect plus TLS handshake; `server_name` `None` connects by IP address, which
/// sends no SNI.
pub async fn handshake(
    addr: SocketAddr,
    server_name: Option<&str>,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let stream = tcp(addr).await?;
    let name = match server_name {
        Some(name) => ServerName::try_from(name.to_string()).expect("server name"),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    tokio::time::timeout(TIMEOUT, TlsConnector::from(config).connect(name, stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// The leaf certificate the server presented on `stream`.
pub fn served_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}

/// Which file under `certs/` a served leaf came from, for readable assertion messages.
pub fn which(cert: &CertificateDer<'_>) -> &'static str {
    for name in [
        "localhost.crt",
        "example.com.crt",
        "ec-sec1.crt",
        "rsa-pkcs1.crt",
    ] {
        if leaf(name).as_ref() == cert.as_ref() {
            return name;
        }
    }
    "an unknown certificate"
}

/// Where `cargo test` put the example binary `name`: `target/<profile>/examples/`, next to
/// the `deps/` directory this test binary runs from.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples (run the whole suite, or \
         `cargo build --examples` first)",
        path.display()
    );
    path
}

/// An example binary running as a child process; killed on drop.
pub struct Example {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines the example printed to stdout after its `listening on` lines.
    pub stdout: mpsc::Receiver<String>,
    /// Lines the example printed to stderr.
    pub stderr: mpsc::Receiver<String>,
}

impl Example {
    /// Starts example `name` with `args` (plus `--addr 127.0.0.1:0` unless given) and
    /// waits for its first `listening on SCHEME://ADDR` line.
    pub fn start(name: &str, args: &[&str]) -> Example {
        let mut command = Command::new(example_binary(name));
        if !args.contains(&"--addr") {
            command.args(["--addr", "127.0.0.1:0"]);
        }
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the example");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines_err(child.stderr.take().expect("stderr"));
        let first = stdout
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                let errors: Vec<String> = stderr.try_iter().collect();
                panic!("{name} printed no `listening on` line; stderr: {errors:?}")
            });
        let addr = first
            .rsplit("://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from {name}: {first:?}"));
        Example {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    /// Waits up to `limit` for a stdout line containing `needle`.
    pub fn wait_stdout(&self, needle: &str, limit: Duration) -> String {
        wait_line(&self.stdout, needle, limit, "stdout")
    }

    /// Waits up to `limit` for a stderr line containing `needle`.
    pub fn wait_stderr(&self, needle: &str, limit: Duration) -> String {
        wait_line(&self.stderr, needle, limit, "stderr")
    }

    /// Sends `signal` to the example.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: `kill` takes plain integers; the child is ours and not yet reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, limit: Duration, what: &str) -> String {
    let deadline = std::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no {what} line containing {needle:?} within {limit:?}; saw {seen:?}"),
        }
    }
}

fn lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn lines_err(err: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
