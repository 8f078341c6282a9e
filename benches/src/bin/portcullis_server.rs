//! portcullis serving the benchmark routes with plain blocking handlers.
//!
//! Routes (the same as `peer`):
//! - `/`                  → `Hello, World!\n`
//! - `/sleep`             → `std::thread::sleep(10 ms)`, then `slept\n`
//! - `/echo` (POST)       → `Response::new(req.into_body())`: the request body streamed back
//! - `/download?bytes=N`  → `Body::from_reader(std::io::repeat(b'x').take(N))`
//!
//! Flags: `--addr ADDR` (default 127.0.0.1:8443; port 0 picks one), `--max-workers N`
//! (default 512, portcullis' default), `--reactors N` (default 0: one per CPU the process
//! may run on, so 1 under `taskset -c 0`), `--tcp-notsent-lowat BYTES` (default
//! portcullis' default, 0: off), `--cert FILE`, `--key FILE`
//! (default ../certs/localhost.{crt,key}). Prints `listening on https://ADDR (N reactors)`
//! once it accepts.

use std::io::Read;
use std::time::Duration;

use portcullis::http::StatusCode;
use portcullis::{Body, Limits, Request, Response, Server, TlsConfig};

struct Args {
    addr: String,
    max_workers: Option<usize>,
    reactors: usize,
    notsent_lowat: Option<Option<u32>>,
    cert: String,
    key: String,
}

fn parse_args() -> Args {
    let dir = env!("CARGO_MANIFEST_DIR");
    let mut args = Args {
        addr: "127.0.0.1:8443".into(),
        max_workers: None,
        reactors: 0,
        notsent_lowat: None,
        cert: format!("{dir}/../certs/localhost.crt"),
        key: format!("{dir}/../certs/localhost.key"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--addr" => args.addr = value(),
            "--max-workers" => {
                let v = value();
                args.max_workers = Some(v.parse::<usize>().ok().filter(|n| *n > 0).unwrap_or_else(
                    || fail(&format!("--max-workers takes a positive number, not {v:?}")),
                ))
            }
            "--reactors" => {
                let v = value();
                args.reactors = v.parse::<usize>().unwrap_or_else(|_| {
                    fail(&format!(
                        "--reactors takes a number (0: one per CPU), not {v:?}"
                    ))
                })
            }
            "--tcp-notsent-lowat" => {
                let v = value();
                let bytes = v.parse::<u32>().unwrap_or_else(|_| {
                    fail(&format!(
                        "--tcp-notsent-lowat takes a number of bytes (0: off), not {v:?}"
                    ))
                });
                args.notsent_lowat = Some((bytes > 0).then_some(bytes));
            }
            "--cert" => args.cert = value(),
            "--key" => args.key = value(),
            "-h" | "--help" => {
                println!(
                    "flags: --addr ADDR  --max-workers N  --reactors N  --tcp-notsent-lowat BYTES  --cert FILE  --key FILE"
                );
                std::process::exit(0);
            }
            other => fail(&format!("unknown flag {other}")),
        }
    }
    args
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}\nflags: --addr ADDR  --max-workers N  --reactors N  --tcp-notsent-lowat BYTES  --cert FILE  --key FILE");
    std::process::exit(2);
}

fn main() -> std::io::Result<()> {
    let args = parse_args();
    // Every load generator connects from 127.0.0.1: the per-address limit (1 000 by
    // default) would cut the idle-memory scenario's thousands of connections.
    let mut limits = Limits::default();
    limits.max_connections_per_ip = usize::MAX;
    if let Some(lowat) = args.notsent_lowat {
        limits.tcp_notsent_lowat = lowat;
    }
    let mut server = Server::bind(args.addr.as_str())?
        .tls(TlsConfig::from_pem_files(&args.cert, &args.key)?)
        .limits(limits);
    if let Some(n) = args.max_workers {
        server = server.max_workers(n);
    }
    let handle = server.reactors(args.reactors).spawn(handle)?;
    for addr in handle.local_addrs() {
        println!(
            "listening on https://{addr} ({} reactors)",
            handle.reactors()
        );
    }
    handle.join()
}

fn handle(req: Request, _info: portcullis::ConnectionInfo) -> Response {
    match req.uri().path() {
        "/" => Response::new(Body::from("Hello, World!\n")),
        "/sleep" => {
            std::thread::sleep(Duration::from_millis(10));
            Response::new(Body::from("slept\n"))
        }
        "/echo" => Response::new(req.into_body()),
        "/download" => match download_len(req.uri().query()) {
            Some(n) => Response::new(Body::from_reader(std::io::repeat(b'x').take(n))),
            None => status(StatusCode::BAD_REQUEST, "want /download?bytes=N\n"),
        },
        _ => status(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn status(code: StatusCode, body: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    response
}

fn download_len(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("bytes="))
        .and_then(|n| n.parse().ok())
}
