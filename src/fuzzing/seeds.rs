//! The seed corpus of every target, built here so that it cannot drift from the input
//! format: `fuzz/seeds/` holds these inputs as files (written by `cargo run --bin
//! make_seeds` in `fuzz/`), and the regression tests replay them.

use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::{client_config, encode_chunks, H2_PREFACE};

/// A named input for one target.
pub struct Seed {
    /// The target: `tls_handshake`, `http1_connection`, `http2_connection` or `tls_http`.
    pub target: &'static str,
    /// A file name saying what the input is.
    pub name: &'static str,
    /// The input, in the target's format.
    pub data: Vec<u8>,
}

/// Every seed of every target.
///
/// ```
/// for seed in portcullis::fuzzing::seeds::all() {
///     assert!(!seed.data.is_empty(), "{}", seed.name);
/// }
/// ```
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target, name, data| seeds.push(Seed { target, name, data });
    for (name, chunks) in http1_inputs() {
        let chunks: Vec<(u8, &[u8])> = chunks.iter().map(|(d, b)| (*d, b.as_slice())).collect();
        add("http1_connection", name, encode_chunks(&chunks));
    }
    for (name, chunks) in http2_inputs() {
        let chunks: Vec<(u8, &[u8])> = chunks.iter().map(|(d, b)| (*d, b.as_slice())).collect();
        add("http2_connection", name, encode_chunks(&chunks));
    }
    for (name, choice) in [
        ("client_hello_h2_http11", 3),
        ("client_hello_h2", 0),
        ("client_hello_no_alpn", 2),
        ("client_hello_tls12_http11", 5),
    ] {
        add(
            "tls_handshake",
            name,
            encode_chunks(&[(0, &client_hello(choice))]),
        );
    }
    let get = http1_get("/");
    let mut h2 = H2_PREFACE.to_vec();
    h2.extend(h2_get_stream(1));
    for (name, choice, chunks) in [
        ("h2_get", 0u8, vec![(0u8, h2.clone())]),
        ("both_alpn_h2_get", 3, vec![(0, h2.clone())]),
        ("http11_get", 1, vec![(0, get.clone())]),
        ("no_alpn_get", 2, vec![(0, get.clone())]),
        (
            "tls12_http11_pipelined",
            5,
            vec![(0, get.clone()), (3, get.clone())],
        ),
        ("tls12_h2_post", 4, h2_post_chunks(true)),
    ] {
        let chunks: Vec<(u8, &[u8])> = chunks.iter().map(|(d, b)| (*d, b.as_slice())).collect();
        let mut data = vec![choice];
        data.extend(encode_chunks(&chunks));
        add("tls_http", name, data);
    }
    seeds
}

type Chunks = Vec<(u8, Vec<u8>)>;

fn http1_get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

fn http1_inputs() -> Vec<(&'static str, Chunks)> {
    let b = |s: &str| s.as_bytes().to_vec();
    let big_body = vec![b'u'; 3000];
    let mut big_post =
        b("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3000\r\n\r\n");
    big_post.extend_from_slice(&big_body[..1000]);
    vec![
        ("get", vec![(0, http1_get("/"))]),
        (
            "get_split_head",
            vec![(0, b("GET /a HTTP/1.1\r\nHo")), (5, b("st: localhost\r\n\r\n"))],
        ),
        (
            "pipelined",
            vec![(
                0,
                b("GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /bytes HTTP/1.1\r\nHost: a\r\n\
                   Content-Length: 5\r\n\r\nhelloGET /status/404 HTTP/1.1\r\nHost: a\r\n\r\n"),
            )],
        ),
        (
            "chunked_upload",
            vec![
                (0, b("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")),
                (2, b("5\r\nhello\r\n")),
                (2, b("6\r\n world\r\n0\r\n\r\n")),
            ],
        ),
        (
            "large_body_streamed",
            vec![(0, big_post), (1, big_body[1000..2000].to_vec()), (1, big_body[2000..].to_vec())],
        ),
        (
            "expect_continue",
            vec![
                (0, b("PUT /e HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n")),
                (1, vec![b'x'; 2000]),
            ],
        ),
        ("head", vec![(0, b("HEAD /bytes HTTP/1.1\r\nHost: a\r\n\r\n"))]),
        ("http10_no_host", vec![(0, b("GET / HTTP/1.0\r\n\r\n"))]),
        ("connection_close", vec![(0, b("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))]),
        ("slow_head", vec![(0, b("GET / HTTP/1.1\r\n")), (250, b("Host: a\r\n\r\n"))]),
        (
            "slow_body",
            vec![
                (0, b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab")),
                (250, b("cd")),
            ],
        ),
        ("bad_request", vec![(0, b("GET / HTTP/1.1\r\nHost a\r\n\r\n"))]),
    ]
}

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A header block: `:method` (GET or POST), `:scheme https`, `:path`, `:authority`.
fn h2_headers(post: bool, path: &str) -> Vec<u8> {
    // Indexed: :method GET (2) / POST (3), :scheme https (7). Literal with indexed name:
    // :path (4), :authority (1), without indexing, no Huffman coding.
    let mut block = vec![if post { 0x83 } else { 0x82 }, 0x87];
    for (index, value) in [(4u8, path), (1, "localhost")] {
        block.push(index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

fn h2_get_stream(stream: u32) -> Vec<u8> {
    let mut out = frame(4, 0, 0, &[]);
    out.extend(frame(1, 0x5, stream, &h2_headers(false, "/")));
    out
}

fn h2_post_chunks(with_preface: bool) -> Chunks {
    let mut first = if with_preface {
        H2_PREFACE.to_vec()
    } else {
        Vec::new()
    };
    first.extend(frame(4, 0, 0, &[]));
    first.extend(frame(1, 0x4, 1, &h2_headers(true, "/upload")));
    vec![
        (0, first),
        (1, frame(0, 0, 1, &[b'd'; 700])),
        (1, frame(0, 0x1, 1, &[b'e'; 700])),
    ]
}

fn http2_inputs() -> Vec<(&'static str, Chunks)> {
    let settings_ack = frame(4, 1, 0, &[]);
    let mut many = frame(4, 0, 0, &[]);
    for stream in [1, 3, 5, 7] {
        many.extend(frame(1, 0x5, stream, &h2_headers(false, "/bytes")));
    }
    let mut reset = frame(4, 0, 0, &[]);
    reset.extend(frame(1, 0x4, 1, &h2_headers(true, "/")));
    reset.extend(frame(3, 0, 1, &8u32.to_be_bytes()));
    let mut continuation = frame(4, 0, 0, &[]);
    let block = h2_headers(false, "/status/204");
    continuation.extend(frame(1, 0x1, 1, &block[..3]));
    continuation.extend(frame(9, 0x4, 1, &block[3..]));
    let mut control = frame(4, 0, 0, &[0, 4, 0, 0, 0x40, 0]);
    control.extend(frame(6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]));
    control.extend(frame(8, 0, 0, &1000u32.to_be_bytes()));
    control.extend(frame(7, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]));
    vec![
        ("get", vec![(0, h2_get_stream(1)), (0, settings_ack)]),
        ("post_with_data", h2_post_chunks(false)),
        ("many_streams", vec![(0, many)]),
        ("reset_stream", vec![(0, reset)]),
        ("continuation", vec![(0, continuation)]),
        ("ping_window_goaway", vec![(0, control)]),
        (
            "idle_then_get",
            vec![
                (0, frame(4, 0, 0, &[])),
                (250, frame(1, 0x5, 1, &h2_headers(false, "/"))),
            ],
        ),
    ]
}

/// The first flight of a rustls client: a real ClientHello.
fn client_hello(choice: usize) -> Vec<u8> {
    let name = ServerName::try_from("localhost").expect("a valid DNS name");
    let Ok(mut client) = rustls::ClientConnection::new(Arc::clone(&client_config(choice)), name)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while client.wants_write() {
        if client.write_tls(&mut out).is_err() {
            break;
        }
    }
    out
}
