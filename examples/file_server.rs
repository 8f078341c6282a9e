//! Serves a directory over HTTPS with `portcullis::files::StaticFiles`: content types,
//! byte ranges, `ETag` / `Last-Modified` revalidation, `HEAD`, directory indexes and
//! listings; paths that would leave the directory get `404`.
//!
//! ```text
//! cargo run --release --example file_server -- --root ./public
//! curl --cacert certs/ca.crt https://localhost:8443/
//! ```
//!
//! Takes `--root DIR` (default: the current directory) and the same flags as `hello`.

mod support;

use portcullis::files::StaticFiles;

/// A start-up error (a certificate that cannot be read, an address in use) is printed as
/// its message: `portcullis::Error`'s `Debug` is its `Display`.
fn main() -> Result<(), portcullis::Error> {
    let _logs = support::init_logging();
    let args = support::Args::parse();
    let files = StaticFiles::new(&args.root)?;
    let server = args.start(move |req, _info| files.respond(&req))?;
    server.join()?;
    Ok(())
}
