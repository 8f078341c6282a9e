//! portcullis serves plain blocking handler functions over HTTPS — HTTP/1.1 and HTTP/2,
//! chosen per connection by ALPN — safe to put directly on a public port.
//!
//! ```no_run
//! use portcullis::{Body, Response, Server, TlsConfig};
//!
//! fn main() -> std::io::Result<()> {
//!     let tls = TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
//!     Server::bind("127.0.0.1:8443")?
//!         .tls(tls)
//!         .serve(|_req, _info| {
//!             // Any blocking code is fine here: std::fs, std::thread::sleep, a blocking
//!             // database client.
//!             Response::new(Body::from("Hello, World!\n"))
//!         })
//! }
//! ```
//!
//! Reactors — one per core by default ([`Server::reactors`]), each a mio event loop —
//! accept connections, run the rustls handshakes without blocking and drive hyper's
//! HTTP/1 and HTTP/2 state machines; a connection stays on one reactor for life. A complete request's handler runs
//! on the thread that read it, and another thread takes the reactor over if the handler
//! blocks (leader/followers); a request with a streaming body goes to a pool of worker
//! threads, and its body streams between the two through bounded pipes. An idle or slow
//! connection costs memory, never a thread. See `docs/architecture.md` for the path of a
//! connection and [`Limits`] for every timeout and limit.
//!
//! Handlers may return anything that is [`IntoResponse`] — a [`Response`], a string, a
//! status, [`response::Html`], `response::Json` (feature `json`), or a `Result` whose
//! error is an [`Error`], so `?` works inside them; [`Body::into_string`] and similar helpers read
//! request bodies under [`Limits::max_request_body_bytes`]. [`Server::serve`] shuts down
//! gracefully on `SIGINT` and `SIGTERM`.
//!
//! For production HTTPS, [`TlsConfig`] picks certificates by server name
//! ([`TlsConfig::with_sni`]), swaps them on a running server ([`CertReloader`]), resumes
//! sessions by default, and checks client certificates
//! ([`TlsConfig::require_client_cert`]); [`HttpsRedirect`] serves the plain-HTTP port
//! (redirects and ACME http-01 challenges).

#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

#[cfg(feature = "acme")]
pub mod acme;
mod activation;
mod body;
mod conn;
mod error;
pub mod files;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod limits;
mod reactor;
mod redirect;
pub mod response;
mod server;
mod service;
mod signals;
mod tls;
mod worker;

pub use activation::listen_fds;
pub use body::{Body, Chunks};
pub use bytes::Bytes;
pub use conn::{ConnectionInfo, InvalidNetwork, IpNetwork, Protocol, ProxyProtocol, TlsVersion};
pub use error::Error;
pub use files::StaticFiles;
pub use http;
pub use limits::Limits;
pub use redirect::HttpsRedirect;
pub use response::IntoResponse;
pub use rustls;
pub use server::{Protocols, Server, ServerHandle};
pub use service::{Request, Response, Service};
pub use tls::{crypto_provider, CertReloader, TlsConfig, TlsError, SESSION_CACHE_SIZE};
pub use worker::PoolStats;

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The code blocks of `docs/https.md`, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/https.md")]
pub struct HttpsDocDoctests;
