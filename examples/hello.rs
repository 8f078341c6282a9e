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

use portcullis::{Body, Response};

fn main() -> std::io::Result<()> {
    support::init_logging();
    let args = support::Args::parse();
    let server = args.start(|_req, _info| Response::new(Body::from("Hello, World!\n")))?;
    server.join()
}
