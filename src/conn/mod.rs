//! One connection's life: accepted socket → TLS handshake (ALPN) → hyper HTTP/1 or
//! HTTP/2 → requests dispatched to workers → graceful end.
//!
//! The whole life is one task on the reactor ([`serve`]); hyper's HTTP/2 streams and
//! request-body pumps are further tasks beside it. No worker thread is involved until a
//! request exists, and none is held while the connection waits for the next one.

pub(crate) mod deadlines;
mod info;
pub(crate) mod proxy;
pub(crate) mod transport;

pub use info::{ConnectionInfo, Protocol, TlsVersion};
pub use proxy::{InvalidNetwork, IpNetwork, ProxyProtocol};

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use tracing::Instrument;

use crate::reactor::task::{BoxFuture, RunQueue};
use crate::reactor::timer::{with_deadline, Deadline, ReactorTimer, TimerQueue};
use crate::reactor::{AddressLimit, ReactorHandle};
use crate::server::Protocols;
use crate::service::{Dispatch, Service};
use crate::worker::WorkerPool;
use crate::Limits;
use deadlines::{take_response_cut, AbortReason, ConnectionWatch};
use transport::{Socket, Transport};

/// After GOAWAY for an idle or abusive HTTP/2 connection (or the idle close of an HTTP/1
/// one), how long the connection may take to wind down before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a connection we closed waits for the client to close its side, reading and
/// dropping what it still sends (see `Transport::poll_linger`).
pub(crate) const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// The TLS bytes rustls may hold unsent (its default is 64 KiB): a full response pipe
/// (`service::PIPE_CAPACITY`, 64 KiB of body) plus its HTTP/1 chunk or HTTP/2 frame headers,
/// with room to spare, so that what the connection takes from the pipe in one poll goes
/// out in one write. At 64 KiB, a full pipe's 32 bytes of chunk headers went out in a
/// record and a `writev` of their own: 8 MiB downloads took 31 `writev`s per MB against
/// the peer's 19, and 16 with this limit. A client that does not read can make a
/// connection hold this much, besides the pipe and hyper's buffer.
pub(crate) const TLS_SEND_BUFFER: usize = crate::service::PIPE_CAPACITY + 16 * 1024;

/// hyper's own limit on HTTP/1 header fields.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Everything a connection needs from its server; shared by all connections.
pub(crate) struct ServerContext {
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) protocols: Protocols,
    pub(crate) limits: Limits,
    pub(crate) service: Arc<dyn Service>,
    pub(crate) pool: WorkerPool,
    pub(crate) reactor: Arc<ReactorHandle>,
    /// The PROXY protocol on this server's listeners, if on.
    pub(crate) proxy: Option<ProxyProtocol>,
    /// With the PROXY protocol: `max_connections_per_ip` by the client's address.
    client_limit: Option<AddressLimit>,
    http1: http1::Builder,
    http2: http2::Builder<Spawner>,
}

impl ServerContext {
    pub(crate) fn new(
        tls: Option<Arc<rustls::ServerConfig>>,
        protocols: Protocols,
        limits: Limits,
        service: Arc<dyn Service>,
        pool: WorkerPool,
        reactor: Arc<ReactorHandle>,
    ) -> ServerContext {
        let timer = ReactorTimer::new(reactor.timers.clone());
        let mut h1 = http1::Builder::new();
        // hyper's header timer (on by default) would allocate, register and cancel a
        // deadline for every request; `drive` holds the request head to its deadline instead.
        h1.timer(timer.clone())
            .header_read_timeout(None)
            .max_header_size(limits.max_request_header_bytes)
            .keep_alive(true);
        if limits.max_request_headers != HYPER_DEFAULT_MAX_HEADERS {
            // hyper parses up to its default count on the stack; any other count costs a
            // heap allocation per request.
            h1.max_headers(limits.max_request_headers);
        }
        let mut h2 = http2::Builder::new(Spawner {
            run_queue: reactor.run_queue.clone(),
            timers: reactor.timers.clone(),
        });
        h2.timer(timer)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(limits.max_request_header_bytes as u32)
            .keep_alive_interval(limits.http2_keep_alive_interval)
            .keep_alive_timeout(limits.http2_keep_alive_timeout);
        ServerContext {
            tls,
            protocols,
            limits,
            service,
            pool,
            reactor,
            proxy: None,
            client_limit: None,
            http1: h1,
            http2: h2,
        }
    }

    /// Turns the PROXY protocol on for every connection; `client_limit` counts the
    /// clients' addresses the headers name under `max_connections_per_ip`.
    pub(crate) fn with_proxy_protocol(
        mut self,
        proxy: Option<ProxyProtocol>,
        client_limit: Option<AddressLimit>,
    ) -> ServerContext {
        self.proxy = proxy;
        self.client_limit = client_limit;
        self
    }

    fn timer(&self) -> ReactorTimer {
        ReactorTimer::new(self.reactor.timers.clone())
    }
}

/// hyper's executor for HTTP/2 stream futures: they run as tasks on the reactor that
/// drives their connection, inside the connection's tracing span, each under a
/// [`ResponseWatchdog`].
#[derive(Clone)]
pub(crate) struct Spawner {
    run_queue: Arc<RunQueue>,
    timers: Arc<TimerQueue>,
}

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let watched = ResponseWatchdog {
            stream: future,
            cut: None,
            timers: self.timers.clone(),
        };
        self.run_queue
            .spawn(Box::pin(watched.instrument(tracing::Span::current())));
    }
}

/// Ends an HTTP/2 stream whose client takes its streamed response too slowly: the
/// response body, polled inside the stream's task, reports when it must be cut if the
/// client does not take more (`deadlines::ResponsePace`); when that instant passes first,
/// the stream's future is dropped, which resets the stream (`RST_STREAM`), frees its
/// buffers and stops its body's reader. A zero window never lets hyper poll the body, so
/// this deadline lives outside it.
struct ResponseWatchdog<F> {
    stream: F,
    cut: Option<Deadline>,
    timers: Arc<TimerQueue>,
}

impl<F: Future<Output = ()>> Future for ResponseWatchdog<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `stream` is structurally pinned: it is never moved out of `self`, and
        // `ResponseWatchdog` has no `Drop` impl; the other fields are `Unpin` and are never
        // pinned.
        let this = unsafe { self.get_unchecked_mut() };
        if let Some(cut) = &mut this.cut {
            if Pin::new(cut).poll(cx).is_ready() {
                tracing::info!(
                    "resetting stream: the client takes the response below the minimum data rate or not at all"
                );
                return Poll::Ready(());
            }
        }
        let _stale = take_response_cut();
        // SAFETY: see above.
        let stream = unsafe { Pin::new_unchecked(&mut this.stream) };
        if stream.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        match take_response_cut() {
            None => {}
            Some(None) => this.cut = None,
            Some(Some(at)) => {
                match &mut this.cut {
                    Some(cut) => cut.reset(at),
                    None => this.cut = Some(Deadline::new(&this.timers, at)),
                }
                if let Some(cut) = &mut this.cut {
                    if Pin::new(cut).poll(cx).is_ready() {
                        tracing::info!(
                            "resetting stream: the client takes the response below the minimum data rate or not at all"
                        );
                        return Poll::Ready(());
                    }
                }
            }
        }
        Poll::Pending
    }
}

/// The task for one accepted connection.
pub(crate) fn serve<S: Socket>(
    ctx: Arc<ServerContext>,
    socket: S,
    peer: SocketAddr,
    local: SocketAddr,
) -> BoxFuture {
    let span = tracing::info_span!(
        "conn",
        %peer,
        client = tracing::field::Empty,
        protocol = tracing::field::Empty
    );
    Box::pin(run(ctx, socket, peer, local).instrument(span))
}

/// A server-side TLS session for a new connection, holding up to [`TLS_SEND_BUFFER`].
fn tls_session(
    config: &Arc<rustls::ServerConfig>,
) -> Result<rustls::ServerConnection, rustls::Error> {
    let mut tls = rustls::ServerConnection::new(config.clone())?;
    tls.set_buffer_limit(Some(TLS_SEND_BUFFER));
    Ok(tls)
}

async fn run<S: Socket>(ctx: Arc<ServerContext>, socket: S, peer: SocketAddr, local: SocketAddr) {
    let tls = match &ctx.tls {
        Some(config) => match tls_session(config) {
            Ok(tls) => Some(tls),
            Err(error) => {
                tracing::error!(%error, "cannot start a TLS session");
                return;
            }
        },
        None => None,
    };
    let watch = ConnectionWatch::new(ctx.reactor.timers.clock().clone());
    let mut transport = Transport::new(socket, tls, watch.clone());
    // One deadline for the PROXY header and the handshake together.
    let mut deadline = ctx.timer().deadline_in(ctx.limits.handshake_timeout);
    let Some(addrs) =
        proxy::receive_header(ctx.proxy.as_ref(), &mut transport, peer, &mut deadline).await
    else {
        return;
    };
    if addrs.balancer.is_some() {
        tracing::Span::current().record("client", tracing::field::display(addrs.client));
    }
    // Behind a balancer, the per-address limit counts the client the header named (or the
    // peer itself when it sent none), held until the connection ends.
    let _client_place = match &ctx.client_limit {
        None => None,
        Some(limit) => match limit.take(addrs.client.ip()) {
            Some(place) => Some(place),
            None => {
                tracing::info!(
                    client = %addrs.client,
                    limit = limit.limit(),
                    "closing connection: too many from this address"
                );
                return;
            }
        },
    };
    let Some(protocol) = open(&ctx, &mut transport, deadline).await else {
        return;
    };
    tracing::Span::current().record("protocol", tracing::field::display(protocol));
    watch.ready_for_requests();
    transport.set_evictable(watch.clone());
    let info = ConnectionInfo::new(addrs, local, protocol, transport.tls(), ctx.reactor.index);
    let dispatch = Dispatch::new(ctx.clone(), info, watch.clone());
    let end = match protocol {
        Protocol::Http1 => {
            let connection = ctx.http1.serve_connection(transport, dispatch);
            let header_timeout = Some(ctx.limits.request_header_timeout);
            drive(&ctx, &watch, header_timeout, Box::pin(connection)).await
        }
        Protocol::Http2 => {
            transport.set_vectored(true);
            let connection = ctx.http2.serve_connection(transport, dispatch);
            drive(&ctx, &watch, None, Box::pin(connection)).await
        }
    };
    match end {
        End::Closed(Ok(())) => tracing::debug!("connection closed"),
        End::Closed(Err(error)) => tracing::info!(%error, "connection ended with an error"),
        End::Cut(reason) => tracing::info!(reason, "closing connection"),
    }
}

/// Handshake (TLS) or preface sniffing (plain) under the handshake deadline. Returns the
/// protocol to speak, or `None` when the connection should just close.
async fn open<S: Socket>(
    ctx: &ServerContext,
    transport: &mut Transport<S>,
    deadline: Deadline,
) -> Option<Protocol> {
    let is_tls = ctx.tls.is_some();
    let reactor = &ctx.reactor;
    let opening = poll_fn(|cx| {
        if reactor.is_shutting_down() {
            return Poll::Ready(Err(std::io::Error::other("server is shutting down")));
        }
        if is_tls {
            return transport.poll_handshake(cx).map_ok(|()| None);
        }
        match ctx.protocols {
            Protocols::Http1Only => Poll::Ready(Ok(Some(Protocol::Http1))),
            Protocols::Http2Only => Poll::Ready(Ok(Some(Protocol::Http2))),
            Protocols::Http1AndHttp2 => transport
                .poll_sniff_h2_preface(cx)
                .map_ok(|h2| Some(if h2 { Protocol::Http2 } else { Protocol::Http1 })),
        }
    });
    let plain_protocol = match with_deadline(deadline, opening).await {
        None => {
            tracing::info!(
                timeout_ms = ctx.limits.handshake_timeout.as_millis() as u64,
                "closing connection: handshake timed out"
            );
            return None;
        }
        Some(Err(error)) => {
            tracing::info!(%error, "closing connection: handshake failed");
            return None;
        }
        Some(Ok(protocol)) => protocol,
    };
    if let Some(protocol) = plain_protocol {
        return Some(protocol);
    }
    let alpn = transport.tls().and_then(|tls| tls.alpn_protocol());
    if crate::tls::is_acme_validation(alpn) {
        tracing::info!("answered an ACME tls-alpn-01 validation; closing");
        return None;
    }
    Some(match (alpn, ctx.protocols) {
        (Some(b"h2"), _) | (None, Protocols::Http2Only) => Protocol::Http2,
        _ => Protocol::Http1,
    })
}

/// hyper's two connection types, both able to shut down gracefully.
trait GracefulShutdown: Future<Output = hyper::Result<()>> {
    fn begin_graceful_shutdown(self: Pin<&mut Self>);
}

impl<S: Socket> GracefulShutdown for http1::Connection<Transport<S>, Dispatch> {
    fn begin_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<S: Socket> GracefulShutdown for http2::Connection<Transport<S>, Dispatch, Spawner> {
    fn begin_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How a connection ended.
enum End {
    /// hyper finished it.
    Closed(hyper::Result<()>),
    /// A deadline or limit cut it.
    Cut(&'static str),
}

/// Which deadline is next.
#[derive(Clone, Copy)]
enum Next {
    Idle,
    Header,
    SendStalled,
    ResponseTooSlow,
    CloseGrace,
    Linger,
}

/// Polls a hyper connection to its end, and enforces the connection's deadlines:
/// - shutdown: asks hyper to finish gracefully (GOAWAY for HTTP/2, `Connection: close`
///   after the in-flight response for HTTP/1, an idle keep-alive connection closes at
///   once); the reactor's drain timeout bounds it;
/// - idle timeout: no request in flight for [`Limits::idle_timeout`] → graceful close,
///   cut after [`CLOSE_GRACE`];
/// - request header timeout (HTTP/1, `header_timeout`): no complete request head within
///   [`Limits::request_header_timeout`] of the end of the previous response (of the
///   handshake, for the first request) → cut, as nginx's `client_header_timeout`. Counted
///   from the same instant as the idle timeout, so a keep-alive connection costs no timer
///   work per request (hyper's own header timer would register and cancel one each time);
/// - send timeout: writes stalled on a full socket for [`Limits::send_timeout`] → cut;
/// - aborts requested by request bodies (too slow) and workers (client not reading) → cut;
///   too many handlers for one HTTP/2 connection, or more requests reset than finished
///   (rapid reset) → GOAWAY, cut after [`CLOSE_GRACE`].
async fn drive<C: GracefulShutdown>(
    ctx: &ServerContext,
    watch: &ConnectionWatch,
    header_timeout: Option<Duration>,
    // Boxed: moved by value, hyper's connection would take its size twice over in this
    // future (the caller's slot and this one's), which every idle connection pays for.
    mut connection: Pin<Box<C>>,
) -> End {
    let mut graceful = false;
    let mut cut_at: Option<Instant> = None;
    let timer = ctx.timer();
    let mut deadline = timer.deadline_in(ctx.limits.idle_timeout);
    // HTTP/1: when the response being streamed must be cut unless the client takes more
    // (see `ResponseWatchdog` for HTTP/2).
    let mut response_cut: Option<Instant> = None;
    // The waker registered with `watch` (the same at every poll but the first).
    let mut registered: Option<Waker> = None;
    poll_fn(|cx: &mut Context<'_>| {
        if !registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            watch.register(cx.waker());
            registered = Some(cx.waker().clone());
        }
        let mut begin_graceful = |reason: Option<&str>| {
            if !graceful {
                graceful = true;
                if let Some(reason) = reason {
                    tracing::info!(reason, "closing connection gracefully");
                }
                connection.as_mut().begin_graceful_shutdown();
            }
        };
        match watch.aborted() {
            None => {}
            Some(
                reason @ (AbortReason::TooManyHandlers
                | AbortReason::ResetFlood
                | AbortReason::MakeRoom),
            ) => {
                begin_graceful(Some(reason.as_str()));
                cut_at.get_or_insert_with(|| timer.now() + CLOSE_GRACE);
            }
            Some(reason) => return Poll::Ready(End::Cut(reason.as_str())),
        }
        if ctx.reactor.is_shutting_down() {
            begin_graceful(None);
        }
        watch.set_polling(true);
        let _stale = take_response_cut();
        let polled = connection.as_mut().poll(cx);
        if let Some(cut) = take_response_cut() {
            response_cut = cut;
        }
        watch.set_polling(false);
        if let Poll::Ready(result) = polled {
            return Poll::Ready(End::Closed(result));
        }
        loop {
            let now = timer.now();
            let mut next: Option<(Instant, Next)> = cut_at.map(|at| (at, Next::CloseGrace));
            let mut consider = |at: Instant, what: Next| {
                if next.is_none_or(|(earliest, _)| at < earliest) {
                    next = Some((at, what));
                }
            };
            if let Some(since) = watch.idle_since() {
                if !graceful {
                    consider(since + ctx.limits.idle_timeout, Next::Idle);
                }
                if let Some(timeout) = header_timeout {
                    consider(since + timeout, Next::Header);
                }
            }
            if let Some(since) = watch.write_stalled_since() {
                consider(since + ctx.limits.send_timeout, Next::SendStalled);
            }
            if let Some(at) = response_cut {
                consider(at, Next::ResponseTooSlow);
            }
            if let Some(since) = watch.lingering_since() {
                consider(since + LINGER_TIMEOUT, Next::Linger);
            }
            let Some((at, what)) = next else {
                return Poll::Pending;
            };
            if now >= at {
                match what {
                    Next::Idle => {
                        graceful = true;
                        tracing::debug!("idle timeout: closing connection");
                        connection.as_mut().begin_graceful_shutdown();
                        cut_at = Some(now + CLOSE_GRACE);
                        // hyper may finish at once (an idle HTTP/1 connection does).
                        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                            return Poll::Ready(End::Closed(result));
                        }
                        continue;
                    }
                    Next::Header => {
                        return Poll::Ready(End::Cut(
                            "request header timeout: no complete request head in time",
                        ))
                    }
                    Next::SendStalled => {
                        return Poll::Ready(End::Cut("send timeout: the client stopped reading"))
                    }
                    Next::ResponseTooSlow => return Poll::Ready(End::Cut(
                        "the client takes the response below the minimum data rate or not at all",
                    )),
                    Next::CloseGrace => {
                        return Poll::Ready(End::Cut("did not close within the grace period"))
                    }
                    Next::Linger => {
                        return Poll::Ready(End::Cut(
                            "the client did not close its side after ours (lingering close)",
                        ))
                    }
                }
            }
            // Moved only when it must fire sooner (or has fired): a later instant — the idle
            // deadline moves on with every request — is re-armed when the old one fires, so
            // that a busy connection does not touch the timer queue per request.
            if at < deadline.at() || deadline.at() <= now {
                deadline.reset(at);
            }
            if Pin::new(&mut deadline).poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use std::io::Write;

    /// A session with `localhost`, its handshake done in memory.
    fn established() -> rustls::ServerConnection {
        let tls = crate::TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")
            .expect("the development certificate");
        let mut server = tls_session(tls.rustls_config()).expect("a server session");
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls_pki_types::CertificateDer::from_pem_file("certs/ca.crt").expect("the CA");
        roots.add(ca).expect("the CA is a valid root");
        let provider = tls.rustls_config().crypto_provider().clone();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the server's provider")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = "localhost".try_into().expect("a DNS name");
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), name).expect("a client session");
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).expect("client bytes");
            server.read_tls(&mut &bytes[..]).expect("server reads");
            server.process_new_packets().expect("server accepts");
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).expect("server bytes");
            client.read_tls(&mut &bytes[..]).expect("client reads");
            client.process_new_packets().expect("client accepts");
            if !server.is_handshaking() && !client.is_handshaking() {
                return server;
            }
        }
        panic!("the in-memory handshake did not finish");
    }

    #[test]
    fn a_full_response_pipe_and_its_chunk_headers_go_to_tls_in_one_write() {
        let mut server = established();
        // What one poll takes from a full pipe over HTTP/1.1: four 16 KiB chunks, each with
        // its `4000\r\n` header and `\r\n` trailer.
        let plaintext = vec![b'x'; crate::service::PIPE_CAPACITY + 4 * 8];
        let taken = server.writer().write(&plaintext).expect("a write");
        assert_eq!(
            taken,
            plaintext.len(),
            "rustls took only part: the rest would go out in a record and a write of its own"
        );
        // rustls' own default (64 KiB) would not have taken it all.
        let mut default = established();
        default.set_buffer_limit(Some(64 * 1024));
        let taken = default.writer().write(&plaintext).expect("a write");
        assert!(taken < plaintext.len());
    }
}
