//! Every timeout and limit portcullis enforces, with its default and the reason for it.
//!
//! Defaults are chosen against nginx, Go's `net/http` and ASP.NET Kestrel, the servers
//! people put on public ports; each field says which it follows.

use std::time::Duration;

/// Timeouts and limits of a [`Server`](crate::Server).
///
/// Start from [`Limits::default()`] and change what you need:
///
/// ```
/// use std::time::Duration;
///
/// let mut limits = portcullis::Limits::default();
/// limits.handshake_timeout = Duration::from_secs(5);
/// limits.max_workers = 64;
/// assert_eq!(limits.max_connections, 10_000);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// Time a new connection has to complete its TLS handshake (or, on a plain listener,
    /// to send its first bytes) before it is closed. Stops connections that open TCP and
    /// never speak.
    ///
    /// Default 10 s: nginx allows 60 s (`ssl_handshake_timeout`) and Go bounds the
    /// handshake by its read timeout; a real client needs one or two round trips, so
    /// 10 s leaves room for slow mobile links while freeing sockets six times sooner.
    pub handshake_timeout: Duration,

    /// Time an HTTP/1 client has to send a complete request head, counted from the end of
    /// the previous response (so it also closes idle keep-alive connections). On expiry the
    /// connection is closed. Stops slowloris.
    ///
    /// Default 30 s, as Kestrel (`RequestHeadersTimeout`) and hyper; nginx uses 60 s
    /// (`client_header_timeout`).
    pub request_header_timeout: Duration,

    /// Longest request head accepted (request line and headers, HTTP/1); larger ones get
    /// `431 Request Header Fields Too Large`. For HTTP/2 it is the advertised
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`.
    ///
    /// Default 32 KiB, as Kestrel (`MaxRequestHeadersTotalSize`) and nginx's
    /// `large_client_header_buffers 4 8k`; Go allows 1 MiB.
    pub max_request_header_bytes: usize,

    /// Most header fields accepted in one HTTP/1 request.
    ///
    /// Default 100, as Kestrel (`MaxRequestHeaderCount`) and hyper.
    pub max_request_headers: usize,

    /// Most streams a client may have open at once on one HTTP/2 connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    ///
    /// Default 100, as Kestrel (`MaxStreamsPerConnection`); nginx uses 128, Go 250.
    pub max_concurrent_streams: u32,

    /// Most connections open at once. When it is reached the server stops accepting (new
    /// clients wait in the kernel's backlog) and resumes as soon as one closes.
    ///
    /// Default 10 000: nginx's is `worker_connections` (512) per worker process, Go and
    /// Kestrel have no limit. An idle connection costs portcullis memory only, about the
    /// size of rustls' buffers.
    pub max_connections: usize,

    /// Most worker threads running handlers at once. The pool starts empty and grows on
    /// demand.
    ///
    /// Default 512, as tokio's blocking pool (`max_blocking_threads`).
    pub max_workers: usize,

    /// Requests that may wait for a worker when all are busy. Beyond that the server
    /// answers `503 Service Unavailable` with `Retry-After` at once.
    ///
    /// Default 1024 (nginx's and Go's equivalent is the listen backlog; Kestrel queues
    /// without bound on the thread pool).
    pub max_queued_requests: usize,

    /// How long an idle worker thread lives before it exits.
    ///
    /// Default 10 s, as tokio's blocking pool (`thread_keep_alive`).
    pub worker_idle_timeout: Duration,

    /// How long a graceful shutdown waits for in-flight requests before it closes the
    /// remaining connections.
    ///
    /// Default 30 s, as Kestrel (`ShutdownTimeout`) and systemd's stop timeout; Go waits
    /// for as long as the caller's context allows.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            request_header_timeout: Duration::from_secs(30),
            max_request_header_bytes: 32 * 1024,
            max_request_headers: 100,
            max_concurrent_streams: 100,
            max_connections: 10_000,
            max_workers: 512,
            max_queued_requests: 1024,
            worker_idle_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
        }
    }
}
