//! HTTPS with certificates the server obtains and renews itself from an ACME CA (Let's
//! Encrypt by default). Needs the `acme` feature.
//!
//! ```text
//! cargo run --release --features acme --example acme -- \
//!     --domain example.com --domain www.example.com --email admin@example.com \
//!     --cache-dir /var/cache/portcullis-acme --addr [::]:443 --http-addr [::]:80
//! ```
//!
//! Flags:
//! - `--domain NAME` (repeatable, at least one): each name gets its own certificate;
//! - `--directory URL`: the ACME directory (default: Let's Encrypt production;
//!   `--staging` for Let's Encrypt's staging directory);
//! - `--directory-ca PEM`: trust this CA for the directory's own HTTPS (test CAs);
//! - `--email ADDRESS`: the account's contact;
//! - `--cache-dir DIR`: account key and certificates (default `acme-cache`);
//! - `--addr ADDR`: the HTTPS listener (default `[::]:443`);
//! - `--http-addr ADDR`: also a plain-HTTP listener (port 80) that redirects to HTTPS
//!   and serves HTTP-01 tokens;
//! - `--challenge tls-alpn-01|http-01` (default `tls-alpn-01`; `http-01` needs
//!   `--http-addr`).
//!
//! Prints `listening on https://ADDR` once it serves (a cached certificate at once, else a
//! self-signed placeholder until the CA's arrives). `RUST_LOG` picks the log level
//! (default `info`); every ACME step is logged.

use std::net::SocketAddr;
use std::path::PathBuf;

use portcullis::acme::{Acme, Challenge};
use portcullis::{Body, HttpsRedirect, Response, Server};

struct Args {
    domains: Vec<String>,
    directory: Option<String>,
    directory_ca: Option<PathBuf>,
    email: Option<String>,
    cache_dir: PathBuf,
    addr: String,
    http_addr: Option<String>,
    challenge: Challenge,
}

fn fail(message: &str) -> ! {
    eprintln!(
        "error: {message}\nflags: --domain NAME (repeatable)  --directory URL | --staging  \
         --directory-ca PEM  --email ADDRESS  --cache-dir DIR  --addr ADDR  --http-addr ADDR  \
         --challenge tls-alpn-01|http-01"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        domains: Vec::new(),
        directory: None,
        directory_ca: None,
        email: None,
        cache_dir: PathBuf::from("acme-cache"),
        addr: "[::]:443".to_string(),
        http_addr: None,
        challenge: Challenge::TlsAlpn01,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--staging" {
            args.directory = Some(Acme::LETS_ENCRYPT_STAGING.to_string());
            continue;
        }
        if flag == "--help" || flag == "-h" {
            fail("usage");
        }
        let Some(value) = it.next() else {
            fail(&format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--domain" => args.domains.push(value),
            "--directory" => args.directory = Some(value),
            "--directory-ca" => args.directory_ca = Some(PathBuf::from(value)),
            "--email" => args.email = Some(value),
            "--cache-dir" => args.cache_dir = PathBuf::from(value),
            "--addr" => args.addr = value,
            "--http-addr" => args.http_addr = Some(value),
            "--challenge" => {
                args.challenge = match value.as_str() {
                    "tls-alpn-01" => Challenge::TlsAlpn01,
                    "http-01" => Challenge::Http01,
                    other => fail(&format!("unknown challenge {other:?}")),
                }
            }
            other => fail(&format!("unknown flag {other:?}")),
        }
    }
    if args.domains.is_empty() {
        fail("give at least one --domain");
    }
    if args.challenge == Challenge::Http01 && args.http_addr.is_none() {
        fail("--challenge http-01 needs --http-addr (the CA fetches the token over plain HTTP)");
    }
    args
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args();

    let mut acme = Acme::new(&args.domains, &args.cache_dir).challenge(args.challenge);
    if let Some(directory) = &args.directory {
        acme = acme.directory(directory);
    }
    if let Some(ca) = &args.directory_ca {
        acme = acme.directory_ca(ca);
    }
    if let Some(email) = &args.email {
        acme = acme.contact_email(email);
    }
    // Bind first, so that the CA's first validation finds the listeners there.
    let https = Server::bind(args.addr.as_str())?;
    let https_addr: SocketAddr = https.local_addrs()[0];
    let plain = match &args.http_addr {
        Some(http_addr) => Some(Server::bind(http_addr.as_str())?),
        None => None,
    };
    let acme = acme.start()?;
    let redirect = match plain {
        Some(plain) => {
            let service =
                HttpsRedirect::new(https_addr.port()).acme_challenge_dir(acme.http01_dir());
            let handle = plain.spawn_service(service)?;
            println!("listening on http://{}", handle.local_addrs()[0]);
            Some(handle)
        }
        None => None,
    };
    let server = https.tls(acme.tls_config()).spawn(|req, info| {
        Response::new(Body::from(format!(
            "Hello over HTTPS ({:?}, {})\n",
            info.protocol(),
            req.uri().path()
        )))
    })?;
    println!("listening on https://{}", server.local_addrs()[0]);
    server.join()?;
    if let Some(redirect) = redirect {
        redirect.shutdown()?;
    }
    drop(acme);
    Ok(())
}
