//! Streams each request body back as the response body, at the pace of both sides:
//! an upload of any size never sits whole in memory.
//!
//! ```text
//! cargo run --release --example echo
//! curl --cacert certs/ca.crt --data-binary @some-file https://localhost:8443/
//! ```
//!
//! Takes the same flags as `hello`; `kill -HUP PID` reloads the certificate files.

mod support;

use portcullis::{Body, Response};

/// A start-up error (a certificate that cannot be read, an address in use) is printed as
/// its message: `portcullis::Error`'s `Debug` is its `Display`.
fn main() -> Result<(), portcullis::Error> {
    let _logs = support::init_logging();
    let mut args = support::Args::parse();
    if !args.max_body_bytes_set {
        // The body streams back and never sits whole in memory: no size limit.
        args.limits.max_request_body_bytes = u64::MAX;
    }
    let server = args.start(|req, _info| {
        let mut response = Response::new(Body::empty());
        if let Some(kind) = req.headers().get(portcullis::http::header::CONTENT_TYPE) {
            response
                .headers_mut()
                .insert(portcullis::http::header::CONTENT_TYPE, kind.clone());
        }
        *response.body_mut() = req.into_body();
        response
    })?;
    server.join()?;
    Ok(())
}
