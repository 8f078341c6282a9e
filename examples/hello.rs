//! The quick start: "Hello, World!" over HTTPS (HTTP/1.1 and HTTP/2 by ALPN).
//!
//! ```text
//! cargo run --release --example hello
//! curl --cacert certs/ca.crt https://localhost:8443/
//! ```
//!
//! Flags: `--addr`, `--cert`, `--key`, `--plain`, `--sni`, `--redirect-from`,
//! `--max-workers N` and more (`--help`). `kill -HUP PID` reloads the certificate files.

mod support;

use portcullis::http::header::{self, HeaderValue};
use portcullis::{Body, Response};

/// A start-up error (a certificate that cannot be read, an address in use) is printed as
/// its message: `portcullis::Error`'s `Debug` is its `Display`.
fn main() -> Result<(), portcullis::Error> {
    let _logs = support::init_logging();
    let args = support::Args::parse();
    let server = args.start(|_req, _info| {
        let mut response = Response::new(Body::from("Hello, World!\n"));
        let headers = response.headers_mut();
        // Browsers use HTTPS only for this host for a year (HSTS), and trust the content
        // type as sent; tests/interop/run.sh checks both with testssl.sh.
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    })?;
    server.join()?;
    Ok(())
}
