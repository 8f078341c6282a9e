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

fn main() -> std::io::Result<()> {
    let root = root_flag();
    support::init_logging();
    let files = StaticFiles::new(&root)?;
    let args = support::Args::parse();
    let server = args.start(move |req, _info| files.respond(&req))?;
    server.join()
}

/// The directory from `--root DIR`, else the current directory.
///
/// The shared flag parser in `support` rejects flags it does not know, so `--root DIR` is
/// taken out here and the process runs itself again without it (the directory travels in
/// an environment variable). Stopgap until `support::Args` can take extra flags.
fn root_flag() -> String {
    const VAR: &str = "PORTCULLIS_FILE_SERVER_ROOT";
    let mut args: Vec<String> = std::env::args().collect();
    let Some(at) = args.iter().position(|a| a == "--root") else {
        return std::env::var(VAR).unwrap_or_else(|_| ".".into());
    };
    let Some(root) = args.get(at + 1).cloned() else {
        eprintln!("error: --root needs a value");
        std::process::exit(2);
    };
    args.drain(at..at + 2);
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(
        std::env::current_exe().unwrap_or_else(|_| args[0].clone().into()),
    )
    .args(&args[1..])
    .env(VAR, &root)
    .exec();
    eprintln!(
        "error: cannot run {} again without --root: {error}",
        args[0]
    );
    std::process::exit(1);
}
