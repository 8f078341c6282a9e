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
    /// the previous response, or from the end of the TLS handshake for the first request
    /// (so it also closes idle keep-alive connections). On expiry the connection is
    /// closed. Stops slowloris.
    ///
    /// Default 30 s, as Kestrel (`RequestHeadersTimeout`) and hyper; nginx uses 60 s
    /// (`client_header_timeout`).
    pub request_header_timeout: Duration,

    /// How long a connection may stay open with no request in flight. An idle HTTP/2
    /// connection gets GOAWAY, an idle HTTP/1 connection is closed.
    ///
    /// Default 75 s, as nginx (`keepalive_timeout`); Kestrel uses 130 s, Go its read
    /// timeout. For HTTP/1 the [`request_header_timeout`](Limits::request_header_timeout)
    /// also runs while a keep-alive connection waits for its next request, so an idle
    /// HTTP/1 connection closes after the shorter of the two.
    pub idle_timeout: Duration,

    /// Longest pause allowed while a request body is expected from the client (time the
    /// handler takes to read does not count). A handler reading a body that stalls gets
    /// an `io::Error` of kind `TimedOut` and the connection is closed.
    ///
    /// Default 60 s, as nginx (`client_body_timeout`).
    pub request_body_timeout: Duration,

    /// Slowest average rate, in bytes per second, at which a request body may arrive once
    /// [`min_rate_grace`](Limits::min_rate_grace) has passed; only time spent waiting for
    /// the client counts. Stops slow-POST ("R-U-Dead-Yet") attacks. 0 disables it.
    ///
    /// Default 240 bytes/s, as Kestrel (`MinRequestBodyDataRate`).
    pub min_request_body_rate: u64,

    /// Time before [`min_request_body_rate`](Limits::min_request_body_rate) and
    /// [`min_response_body_rate`](Limits::min_response_body_rate) apply.
    ///
    /// Default 5 s, as Kestrel.
    pub min_rate_grace: Duration,

    /// Largest request body accepted, in bytes. A request that declares a larger
    /// `Content-Length` gets `413 Content Too Large` before its handler runs (with
    /// `Expect: 100-continue`, without inviting the body). A body without a declared length
    /// that grows past it fails the handler's next read (an `io::Error` that
    /// [`Error`](crate::Error) maps to `413`), and the client gets `413` whatever the
    /// handler returns, since no response head has gone out. The body helpers
    /// ([`Body::into_bytes`](crate::Body::into_bytes), `into_string`, `into_json`) read
    /// under this limit. `u64::MAX` turns it off.
    ///
    /// Default 30 000 000 bytes, as Kestrel (`MaxRequestBodySize`), the server whose model
    /// is closest to this one (the body streams to application code). nginx refuses bodies
    /// over 1 MiB (`client_max_body_size`), but nginx spools them to disk for its backends;
    /// here a handler that collects a body holds it in memory, and 30 MB lets ordinary
    /// uploads (photos, documents) through while bounding what one request can make a
    /// handler hold. An API that takes only small JSON documents should lower it (the
    /// `json_api` example uses 1 MiB).
    pub max_request_body_bytes: u64,

    /// Request bodies whose `Content-Length` is at most this many bytes are read whole on
    /// the reactor before the handler runs (as nginx buffers bodies for its backends), so a
    /// slow client never holds a worker thread for them. Larger or unsized bodies stream
    /// to the handler. Not applied to requests with `Expect: 100-continue`.
    ///
    /// Default 64 KiB.
    pub buffered_body_limit: usize,

    /// Longest time a response may wait for the client to take more bytes. A client that
    /// stops reading is disconnected, and a worker streaming to it gets an error and is
    /// freed.
    ///
    /// Default 60 s, as nginx (`send_timeout`, also measured between two writes);
    /// Kestrel uses a minimum rate of 240 bytes/s instead.
    pub send_timeout: Duration,

    /// Slowest average rate, in bytes per second, at which a client must take a streamed
    /// response body ([`Body::from_reader`](crate::Body::from_reader), static files) once
    /// [`min_rate_grace`](Limits::min_rate_grace) has passed. Only time during which the
    /// server had data ready and the client's socket or HTTP/2 window held it back counts.
    /// Below it the HTTP/2 stream is reset, or the HTTP/1 connection closed, and a
    /// `tracing` event says why. Stops slow readers and window trickling, which would
    /// otherwise keep a response's buffers alive for ever. 0 disables it (the
    /// [`send_timeout`](Limits::send_timeout) still applies).
    ///
    /// Default 240 bytes/s, as Kestrel (`MinResponseDataRate`).
    pub min_response_body_rate: u64,

    /// Most bytes of response the kernel may hold for one connection without having sent
    /// them yet (Linux and Android: `TCP_NOTSENT_LOWAT`, set on the listeners and inherited
    /// by every connection they accept; other systems ignore it). Bytes on their way to
    /// the client do not count, so a fast client is not held back; a client that reads
    /// slowly pins this much kernel memory instead of a send buffer that the kernel would
    /// otherwise grow to `net.ipv4.tcp_wmem`'s maximum (4 MiB). Measured with 1 000
    /// slow readers of a large file: 2.4 GB of socket memory (the system-wide TCP
    /// memory limit, which then hurts every connection) without it, 0.24 GB with the
    /// default. `None` leaves the kernel's setting.
    ///
    /// Default 128 KiB. nginx, Go and Kestrel leave the kernel's setting; Cloudflare runs
    /// nginx with 16 KiB for HTTP/2 prioritization.
    ///
    /// ```
    /// let mut limits = portcullis::Limits::default();
    /// assert_eq!(limits.tcp_notsent_lowat, Some(128 * 1024));
    /// limits.tcp_notsent_lowat = Some(16 * 1024);
    /// ```
    pub tcp_notsent_lowat: Option<u32>,

    /// HTTP/2: send a PING after this long without frames from the client, and close the
    /// connection if it is not answered within
    /// [`http2_keep_alive_timeout`](Limits::http2_keep_alive_timeout).
    ///
    /// Default off, as Go (`ReadIdleTimeout`) and Kestrel (`KeepAlivePingDelay`); the idle
    /// timeout already closes unused connections.
    pub http2_keep_alive_interval: Option<Duration>,

    /// HTTP/2: how long to wait for a PING's answer. Default 20 s, as Kestrel and Go.
    pub http2_keep_alive_timeout: Duration,

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
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`). It also caps the handlers running for one
    /// connection: a client that resets streams cannot stop a handler that is already
    /// blocking, so once that many handlers run, further requests get `503` and the
    /// connection gets GOAWAY (Go's fix for CVE-2023-39325). Handlers still waiting in the
    /// queue when their stream is reset do not run at all. Reset floods (CVE-2023-44487,
    /// "rapid reset") get GOAWAY from the h2 crate's own limit on streams reset before they
    /// are accepted, and from portcullis once a connection has reset twice this many
    /// requests and more than it let finish.
    ///
    /// Default 100, as Kestrel (`MaxStreamsPerConnection`); nginx uses 128, Go 250.
    pub max_concurrent_streams: u32,

    /// Most connections open at once. When it is reached the server stops accepting (new
    /// clients wait in the kernel's backlog) and, as nginx does, asks the connection that
    /// has been idle longest (no request in flight) to close (HTTP/2: GOAWAY; HTTP/1: closed
    /// between requests); accepting resumes as soon as one closes. The count is for the
    /// whole server, whatever [`Server::reactors`](crate::Server::reactors) is (the idle
    /// connection asked to close is the longest-idle one of the reactor that took the new
    /// connection, or of another reactor when that one has none idle).
    ///
    /// Default 10 000: nginx's is `worker_connections` (512) per worker process, Go and
    /// Kestrel have no limit. An idle connection costs portcullis memory only, about the
    /// size of rustls' buffers.
    pub max_connections: usize,

    /// Most connections open at once from one IP address, counted from `accept` (TLS
    /// handshakes included). Beyond it new connections from that address are closed at
    /// once, so that one client cannot take [`max_connections`](Limits::max_connections)
    /// for itself. Counted across all reactors.
    ///
    /// Default 1 000, a tenth of `max_connections`: no one address can fill the server,
    /// while a large NAT (an office, a carrier-grade NAT) with a few hundred active browsers
    /// at up to 6 HTTP/1.1 connections each still fits. nginx (`limit_conn`) and Kestrel
    /// have no default; lower it if your clients are not behind NATs. On a server that
    /// expects the PROXY protocol ([`Server::proxy_protocol`](crate::Server::proxy_protocol))
    /// every TCP peer is the load balancer, so the address counted is the client's own,
    /// from the header, from the moment the header is read (before the TLS handshake).
    pub max_connections_per_ip: usize,

    /// Most handlers running at once: on worker threads, or inline on a reactor thread (a
    /// complete request's handler runs on the thread that read it; see the README). The
    /// pool starts empty and grows on demand.
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
            idle_timeout: Duration::from_secs(75),
            request_body_timeout: Duration::from_secs(60),
            min_request_body_rate: 240,
            min_rate_grace: Duration::from_secs(5),
            max_request_body_bytes: 30_000_000,
            buffered_body_limit: 64 * 1024,
            send_timeout: Duration::from_secs(60),
            min_response_body_rate: 240,
            tcp_notsent_lowat: Some(128 * 1024),
            http2_keep_alive_interval: None,
            http2_keep_alive_timeout: Duration::from_secs(20),
            max_request_header_bytes: 32 * 1024,
            max_request_headers: 100,
            max_concurrent_streams: 100,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_workers: 512,
            max_queued_requests: 1024,
            worker_idle_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
        }
    }
}
