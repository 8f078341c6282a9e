//! The handler trait, and its glue to hyper: each request is handed to a worker thread (or,
//! when its body is complete, to the reactor's leader thread, which runs it after the task
//! poll and gives the reactor away if it blocks: `reactor::leader`), and the connection
//! awaits the response without blocking the reactor.
//!
//! Why not run the handler inside hyper's poll of the service future? hyper's HTTP/1
//! dispatcher feeds the request body from the same task that polls that future, so a
//! handler blocking there on its body waits for bytes only it could deliver (astra 0.4
//! deadlocks this way on bodies of 64 KiB and more). Here the request body is pumped by
//! its own reactor task into a bounded [`Pipe`] that the worker reads from.

use std::any::Any;
use std::future::{poll_fn, Future};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use http_body::Body as _;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::body::{Body, Pipe, Pull, Room, StreamSource};
use crate::conn::deadlines::{
    AbortReason, BodyDeadline, BodyRate, ConnectionWatch, HandlerRunning, InFlight, ResponsePace,
    ResponseRate,
};
use crate::conn::{ConnectionInfo, Protocol, ServerContext};
use crate::reactor::leader;
use crate::reactor::timer::{Clock, TimerQueue};
use crate::response::IntoResponse;
use crate::worker::InlineRun;

/// A request as a handler receives it: the `http` crate's type with a streaming [`Body`].
pub type Request = http::Request<Body>;

/// A response as a handler returns it.
///
/// This is a type alias of `http::Response<Body>`: build one with `Response::new(body)`,
/// with [`IntoResponse`] (`"text".into_response()`, `(status, body)`, [`Html`](crate::response::Html), ...)
/// or with the builder from [`response::builder`](crate::response::builder):
///
/// ```
/// use portcullis::{response, Body, IntoResponse, Response};
///
/// let response: Response = response::builder()
///     .status(404)
///     .header("content-type", "text/plain")
///     .body("not found\n")
///     .into_response();
/// assert_eq!(response.status(), 404);
/// ```
pub type Response = http::Response<Body>;

/// Bytes queued between the connection and a worker, per body and direction.
pub(crate) const PIPE_CAPACITY: usize = 64 * 1024;

/// A pulled body's client is judged fast or not per this many bytes taken (see
/// [`ReaderSpeed`]).
const SPEED_WINDOW: u64 = 1024 * 1024;

/// A client that takes [`SPEED_WINDOW`] within this (about 20 MB/s or more) reads fast: its
/// pulled body gets the deeper pipe ([`Pull::set_fast`]).
const FAST_WINDOW: Duration = Duration::from_millis(50);

/// Mixed into a request path's route to name the refills of its streamed responses.
const REFILL_ROUTE: usize = 0x5bd1_e995;

/// What serves requests. Any `Fn(Request, ConnectionInfo) -> R + Send + Sync` whose `R` is
/// [`IntoResponse`] is one (a [`Response`], a string, a `Result<T, Error>`, ...);
/// implement the trait yourself for a stateful service.
///
/// `call` runs on a worker thread, or on the reactor thread that read the request (which
/// hands the reactor to another thread if `call` takes long), and may block: read files,
/// sleep, call blocking clients.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use portcullis::{Body, ConnectionInfo, Request, Response, Service};
///
/// struct Counter {
///     hits: AtomicU64,
/// }
///
/// impl Service for Counter {
///     fn call(&self, _req: Request, _info: ConnectionInfo) -> Response {
///         let n = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
///         Response::new(Body::from(format!("hit number {n}\n")))
///     }
/// }
/// # let _ = Counter { hits: AtomicU64::new(0) };
/// ```
pub trait Service: Send + Sync + 'static {
    /// Answers one request.
    fn call(&self, request: Request, info: ConnectionInfo) -> Response;
}

impl<F, R> Service for F
where
    F: Fn(Request, ConnectionInfo) -> R + Send + Sync + 'static,
    R: IntoResponse,
{
    fn call(&self, request: Request, info: ConnectionInfo) -> Response {
        self(request, info).into_response()
    }
}

/// hyper's view of the user's service, one per connection.
#[derive(Clone)]
pub(crate) struct Dispatch {
    ctx: Arc<ServerContext>,
    info: ConnectionInfo,
    watch: Arc<ConnectionWatch>,
}

impl Dispatch {
    pub(crate) fn new(
        ctx: Arc<ServerContext>,
        info: ConnectionInfo,
        watch: Arc<ConnectionWatch>,
    ) -> Dispatch {
        Dispatch { ctx, info, watch }
    }

    fn body_rate(&self) -> BodyRate {
        let limits = &self.ctx.limits;
        BodyRate {
            timeout: limits.request_body_timeout,
            min_rate: limits.min_request_body_rate,
            grace: limits.min_rate_grace,
        }
    }

    /// Starts the reactor task that moves `incoming` into `pipe` (see [`pump_request_body`]).
    fn spawn_pump(&self, incoming: Incoming, pipe: Arc<Pipe>, expects_continue: bool) {
        let deadline = BodyDeadline::new(self.body_rate(), &self.ctx.reactor.timers);
        self.ctx.reactor.run_queue.spawn(Box::pin(pump_request_body(
            incoming,
            pipe,
            expects_continue,
            self.info.protocol(),
            deadline,
            self.watch.clone(),
            self.ctx.limits.max_request_body_bytes,
            self.ctx.reactor.timers.clone(),
        )));
    }

    /// Hands a request with its body to the worker pool, or, when the body is complete
    /// (`complete`), to the reactor's leader to run right after this poll (see
    /// `reactor::leader`).
    fn submit(
        &self,
        request: Request,
        log: AccessLog,
        running: HandlerRunning,
        complete: bool,
    ) -> Arc<Slot> {
        let slot = Slot::new(SlotState::Waiting);
        let route = leader::route_of(request.uri().path());
        let job = HandlerJob {
            ctx: self.ctx.clone(),
            request,
            info: self.info.clone(),
            sender: SlotSender::new(slot.clone()),
            log,
            _running: running,
            route,
        };
        let job: Box<dyn FnOnce() + Send> = if complete {
            match leader::defer(route, Box::new(move |inline| job.run(inline))) {
                Ok(()) => return slot,
                Err(job) => Box::new(move || job(None)),
            }
        } else {
            Box::new(move || job.run(None))
        };
        if self.ctx.pool.try_execute(job).is_err() {
            // The job was dropped unrun: its sender already recorded the refusal.
            tracing::warn!("all workers busy and the queue is full; answering 503");
        }
        slot
    }
}

/// Every outcome is a response: a panic is a `500` on both protocols (the handler's
/// response head cannot have gone out), a shed request a `503`.
pub(crate) type Never = std::convert::Infallible;

impl hyper::service::Service<http::Request<Incoming>> for Dispatch {
    type Response = http::Response<ResponseBody>;
    type Error = Never;
    type Future = ResponseFuture;

    fn call(&self, request: http::Request<Incoming>) -> ResponseFuture {
        let protocol = self.info.protocol();
        // Starting a request spends the poll's budget too (pipelined HTTP/1 requests
        // already in hyper's buffer cost no read): see `reactor::coop`.
        crate::reactor::coop::spend(crate::reactor::coop::REQUEST_COST);
        let (parts, incoming) = request.into_parts();
        let mut log = AccessLog::new(&parts, &self.info, self.watch.request_started());
        let bodiless = http_body::Body::is_end_stream(&incoming);
        if let Some(problem) = malformed(&parts, bodiless) {
            // As nginx and Go do; answered here, no worker involved.
            tracing::info!(problem, "bad request");
            log.status = StatusCode::BAD_REQUEST;
            let mut response = plain_response(StatusCode::BAD_REQUEST, problem, log);
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return self.ready(Outcome::Response(response));
        }
        let limit = self.ctx.limits.max_request_body_bytes;
        if let Some(declared) = incoming.size_hint().exact().filter(|&n| n > limit) {
            // Refused before any handler runs; with `Expect: 100-continue` the body is
            // never invited.
            tracing::info!(limit, declared, "request body too large");
            log.status = StatusCode::PAYLOAD_TOO_LARGE;
            let expects_continue = parts
                .headers
                .get(http::header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if declared > DRAIN_MAX_BYTES || (expects_continue && protocol == Protocol::Http1) {
                // Too much to drain (or never invited): HTTP/1 closes after the answer.
                let close = protocol == Protocol::Http1;
                return self.ready(Outcome::Response(too_large_response(close, log)));
            }
            // Read and discard what the client is already sending (bounded), so that it
            // gets the answer rather than a reset in the middle of its upload; an HTTP/2
            // answer waits for the end of the drain.
            let pipe = Pipe::new(PIPE_CAPACITY);
            pipe.close_consumer();
            self.spawn_pump(incoming, pipe.clone(), false);
            let mut future = self.ready(Outcome::Response(too_large_response(false, log)));
            if protocol == Protocol::Http2 {
                future.draining = Some(pipe);
            }
            return future;
        }
        let (running, handlers) = self.watch.handler_started();
        if protocol == Protocol::Http2 && handlers > self.ctx.limits.max_concurrent_streams as usize
        {
            // More handlers than streams: the client reset streams whose handlers still
            // run. Refuse without a worker; the connection gets GOAWAY.
            self.watch.abort(AbortReason::TooManyHandlers);
            return self.ready(Outcome::Refused(Some(log)));
        }
        if bodiless {
            let request = http::Request::from_parts(parts, Body::empty());
            return self.waiting(self.submit(request, log, running, true));
        }
        let expects_continue = parts
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let small = incoming
            .size_hint()
            .exact()
            .is_some_and(|n| n <= self.ctx.limits.buffered_body_limit as u64);
        if small && !expects_continue {
            return self.response_future(State::Collecting(Box::new(Collecting {
                incoming,
                chunks: Vec::new(),
                deadline: BodyDeadline::new(self.body_rate(), &self.ctx.reactor.timers),
                parts: Some(parts),
                log: Some(log),
                running: Some(running),
                dispatch: self.clone(),
            })));
        }
        let length = incoming.size_hint().exact();
        let pipe = Pipe::new(PIPE_CAPACITY);
        self.spawn_pump(incoming, pipe.clone(), expects_continue);
        log.request_body = Some(pipe.clone());
        let awaiting_continue =
            (expects_continue && protocol == Protocol::Http1).then(|| pipe.clone());
        let draining = (protocol == Protocol::Http2).then(|| pipe.clone());
        let request = http::Request::from_parts(parts, Body::incoming(pipe, length));
        let mut future = self.waiting(self.submit(request, log, running, false));
        future.awaiting_continue = awaiting_continue;
        future.draining = draining;
        future
    }
}

/// What hyper lets through but a request must not have: RFC 9112 §3.2 requires exactly
/// one `Host` header in an HTTP/1.1 request; §6.1 and §6.3 make any `Transfer-Encoding`
/// but one final `chunked` a framing error, and portcullis (as Go) accepts no coding but
/// `chunked`, so that two parsers can never disagree on where the body ends.
///
/// `bodiless`: hyper found no body. It reads a body whenever `Transfer-Encoding` is
/// present (and refuses the request when the last coding is not `chunked`, or on
/// HTTP/1.0), so a bodiless request has no such header and the lookup is skipped.
fn malformed(parts: &http::request::Parts, bodiless: bool) -> Option<&'static str> {
    if parts.version <= http::Version::HTTP_11 && !bodiless {
        let mut codings = parts
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter();
        if let Some(coding) = codings.next() {
            if codings.next().is_some() {
                return Some("400 Bad Request: more than one Transfer-Encoding header\n");
            }
            if !coding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
            {
                return Some("400 Bad Request: Transfer-Encoding must be chunked alone\n");
            }
        }
    }
    if parts.version == http::Version::HTTP_11 {
        let mut hosts = parts.headers.get_all(http::header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) => return Some("400 Bad Request: missing Host header\n"),
            (Some(_), Some(_)) => return Some("400 Bad Request: more than one Host header\n"),
            (Some(_), None) => {}
        }
    }
    None
}

/// One handler call, as it runs on a worker.
struct HandlerJob {
    /// The service, the pool (refills of a streamed response body run there) and the
    /// limits a streamed response is held to.
    ctx: Arc<ServerContext>,
    request: Request,
    info: ConnectionInfo,
    sender: SlotSender,
    log: AccessLog,
    /// Counts against the connection's handlers until the job is done.
    _running: HandlerRunning,
    /// The request path's route (`leader::route_of`).
    route: usize,
}

impl HandlerJob {
    /// The handler, then (for streamed bodies) the body's first chunks. `inline` is the pool
    /// place held when the reactor's leader runs the handler itself.
    fn run(self, inline: Option<InlineRun>) {
        let HandlerJob {
            ctx,
            request,
            info,
            sender,
            mut log,
            _running,
            route,
        } = self;
        // At DEBUG, as tower-http's `TraceLayer` makes its request spans: under
        // `tracing_subscriber::fmt` the span cost 5 200 instructions per request, a third of
        // an unlogged hello request. `RUST_LOG=info,portcullis::request=debug` turns it on.
        let span = tracing::debug_span!(
            target: "portcullis::request",
            "request",
            method = %request.method(),
            path = request.uri().path()
        );
        let _entered = span.enter();
        if sender.is_abandoned() {
            // The stream was reset or the connection closed while the job waited for a
            // worker: nobody can receive the response, so the handler does not run. (A
            // handler already running cannot be stopped; this keeps a reset flood from
            // queueing work for the pool.)
            tracing::debug!("request cancelled before a worker took it");
            return;
        }
        let response = match catch_unwind(AssertUnwindSafe(|| ctx.service.call(request, info))) {
            Ok(response) => response,
            Err(panic) => {
                tracing::error!(panic = panic_message(&*panic), "handler panicked");
                sender.send(Outcome::Panicked(log));
                return;
            }
        };
        let too_large = log
            .request_body
            .as_ref()
            .is_some_and(|pipe| pipe.is_too_large());
        if too_large && response.status() != StatusCode::PAYLOAD_TOO_LARGE {
            // The body grew past the limit and no head has gone out: whatever the handler
            // made of its failed read, the client learns why.
            tracing::info!(
                status = response.status().as_u16(),
                "the request body was too large; answering 413 instead"
            );
            // The pump drains the rest (bounded) and closes an HTTP/1 connection itself if
            // the drain is cut short.
            sender.send(Outcome::Response(too_large_response(false, log)));
            return;
        }
        let (parts, body) = response.into_parts();
        log.status = parts.status;
        let body = match body.into_stream_source() {
            StreamSource::Full(bytes) => {
                let body = ResponseBody::full(bytes, log);
                sender.send(Outcome::Response(http::Response::from_parts(parts, body)));
                return;
            }
            StreamSource::Forward {
                pipe,
                first,
                length,
            } => {
                let mut body = ResponseBody::stream(pipe, first, log, response_rate(&ctx));
                body.length = length;
                sender.send(Outcome::Response(http::Response::from_parts(parts, body)));
                return;
            }
            StreamSource::Stream(body) => body,
        };
        // Pulled (see `Pull`): the thread that ran the handler, a worker or the reactor's
        // leader, fills the pipe once (reading until it is full, never waiting on it), then
        // is free; the connection asks for each refill when it has taken half. On the
        // leader this is part of the inline job, watched by the monitor like the handler.
        // (Sent to the pool instead, every first fill woke a worker that then competed with
        // the reactor for its CPU: pinned to one, 8 MiB downloads took 2 300–2 500 reactor
        // preemptions in 5 s and 660–670 µs of CPU per MB, against 870–1 200 and 480–530.)
        // Refills are judged apart from the handler: a route whose handler blocks (a
        // database) may stream from a reader that does not (a file).
        let rate = response_rate(&ctx);
        let pull = Pull::new(body, PIPE_CAPACITY, ctx.pool.clone(), route ^ REFILL_ROUTE);
        sender.send(Outcome::Response(http::Response::from_parts(
            parts,
            ResponseBody::pulled(pull.clone(), log, rate),
        )));
        pull.produce();
        // The pool place of an inline run is held until the first fill is done.
        drop(inline);
    }
}

/// The minimum rate and send timeout a streamed response is held to.
fn response_rate(ctx: &ServerContext) -> ResponseRate {
    let limits = &ctx.limits;
    ResponseRate {
        clock: ctx.reactor.timers.clock().clone(),
        min_rate: limits.min_response_body_rate,
        grace: limits.min_rate_grace,
        send_timeout: limits.send_timeout,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "non-string panic payload"
    }
}

/// Most bytes of a request body read and discarded after its handler let it go unread
/// (or after it grew past the body limit), so that the client, still uploading, gets the
/// response rather than a reset or a closed connection in the middle of its upload (nginx
/// and Go read and discard too, within bounds). Past it the rest is refused: HTTP/1
/// closes the connection after the response, HTTP/2 resets the stream.
const DRAIN_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// Longest pause of the client while a body is being drained before the drain stops.
const DRAIN_MAX_PAUSE: Duration = Duration::from_secs(3);

/// Slowest average rate of a drain, after [`DRAIN_MAX_PAUSE`] of waiting: a drain waits
/// for the client at most `DRAIN_MAX_BYTES / DRAIN_MIN_RATE` (32 s) in all.
const DRAIN_MIN_RATE: u64 = 256 * 1024;

/// Reactor task: moves a request body from hyper into the pipe the handler reads, as
/// fast as the handler reads it, under the body deadline (a stall or a rate below the
/// minimum fails the body with `TimedOut` and closes the connection) and the body limit
/// (past `limit` bytes the body fails with `BodyTooLarge`, which answers `413`).
///
/// When the handler drops a body it has not read to the end, or the body grew past the
/// limit, the rest is read and discarded here (no worker involved), at most
/// [`DRAIN_MAX_BYTES`] and while the client does not pause longer than
/// [`DRAIN_MAX_PAUSE`]: an HTTP/1 connection stays usable and an HTTP/2 client is not
/// reset in the middle of its upload. A drain cut short holds the body until the response
/// is complete and then drops it: HTTP/1 closes the connection, h2 sends
/// `RST_STREAM(NO_ERROR)`: "stop sending, the answer is complete" (RFC 9113 §8.1).
///
/// A request that asked for `100 Continue` is not read at all until the handler reads, so a
/// handler that ignores its body answers without inviting it (HTTP/1).
#[allow(clippy::too_many_arguments)]
async fn pump_request_body(
    mut incoming: Incoming,
    pipe: Arc<Pipe>,
    expects_continue: bool,
    protocol: Protocol,
    mut deadline: BodyDeadline,
    watch: Arc<ConnectionWatch>,
    limit: u64,
    timers: Arc<TimerQueue>,
) {
    /// Discarding: bytes still allowed, and the pause deadline.
    struct Drain {
        left: u64,
        deadline: BodyDeadline,
    }
    let start_drain = || Drain {
        left: DRAIN_MAX_BYTES,
        deadline: BodyDeadline::new(
            BodyRate {
                timeout: DRAIN_MAX_PAUSE,
                min_rate: DRAIN_MIN_RATE,
                grace: DRAIN_MAX_PAUSE,
            },
            &timers,
        ),
    };
    let mut drain: Option<Drain> = None;
    let mut reading = false;
    let mut received = 0u64;
    // Ok(true): the body ended; Ok(false): the drain stopped before its end.
    let result = poll_fn(|cx| loop {
        if drain.is_none() {
            match pipe.poll_room(cx, expects_continue) {
                Poll::Pending => {
                    deadline.pause();
                    return Poll::Pending;
                }
                Poll::Ready(Room::Available) => {}
                Poll::Ready(Room::ConsumerGone { demanded }) => {
                    if protocol == Protocol::Http1 && expects_continue && !demanded {
                        return Poll::Ready(Ok(true));
                    }
                    drain = Some(start_drain());
                }
            }
        }
        if !reading {
            // Polling the body makes hyper queue `100 Continue` (HTTP/1).
            reading = true;
            pipe.mark_reading();
        }
        match Pin::new(&mut incoming).poll_frame(cx) {
            Poll::Pending => {
                if let Some(drain) = &mut drain {
                    if drain.deadline.poll_expired(cx).is_ready() {
                        return Poll::Ready(Ok(false));
                    }
                }
                if deadline.poll_expired(cx).is_ready() {
                    if drain.is_some() && protocol == Protocol::Http2 {
                        // One stream's drain is not worth the connection.
                        return Poll::Ready(Ok(false));
                    }
                    watch.abort(AbortReason::BodyTooSlow);
                    return Poll::Ready(Err(body_too_slow()));
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => return Poll::Ready(Ok(true)),
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let len = data.len() as u64;
                    deadline.received(data.len());
                    received = received.saturating_add(len);
                    match &mut drain {
                        Some(drain) => {
                            drain.deadline.received(data.len());
                            if len > drain.left {
                                return Poll::Ready(Ok(false));
                            }
                            drain.left -= len;
                        }
                        None if received > limit => {
                            tracing::info!(limit, "request body too large");
                            pipe.finish_too_large(limit);
                            drain = Some(start_drain());
                        }
                        None => pipe.push(data),
                    }
                }
            }
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(body_error(error))),
        }
    })
    .await;
    match result {
        Ok(true) => {
            pipe.finish(Ok(()));
            pipe.producer_done();
        }
        Ok(false) => {
            tracing::debug!("stopped discarding an unread request body");
            pipe.finish(Err(io::Error::other("the request body was not read")));
            pipe.producer_done();
            // Dropping the body before the response is out would reset an HTTP/2 stream
            // before its answer.
            poll_fn(|cx| pipe.poll_response_done(cx)).await;
        }
        Err(error) => {
            tracing::info!(%error, "request body failed");
            pipe.finish(Err(error));
            pipe.producer_done();
        }
    }
}

fn body_too_slow() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the request body arrived too slowly (stalled, or below the minimum rate)",
    )
}

fn body_error(error: hyper::Error) -> io::Error {
    let kind = if error.is_timeout() {
        io::ErrorKind::TimedOut
    } else if error.is_incomplete_message() {
        io::ErrorKind::UnexpectedEof
    } else {
        io::ErrorKind::ConnectionAborted
    };
    io::Error::new(kind, error)
}

/// A small request body being read whole on the reactor before the handler runs.
struct Collecting {
    incoming: Incoming,
    chunks: Vec<Bytes>,
    deadline: BodyDeadline,
    parts: Option<http::request::Parts>,
    log: Option<AccessLog>,
    running: Option<HandlerRunning>,
    dispatch: Dispatch,
}

impl Collecting {
    /// The whole body, or the status to answer with instead.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, StatusCode>> {
        loop {
            match Pin::new(&mut self.incoming).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.deadline.received(data.len());
                        self.chunks.push(data);
                    }
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Ok(match self.chunks.len() {
                        0 => Bytes::new(),
                        1 => self.chunks.pop().unwrap_or_default(),
                        _ => Bytes::from(self.chunks.concat()),
                    }))
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::info!(error = %body_error(error), "request body failed");
                    return Poll::Ready(Err(StatusCode::BAD_REQUEST));
                }
                Poll::Pending => {
                    if self.deadline.poll_expired(cx).is_ready() {
                        tracing::info!(error = %body_too_slow(), "request body failed");
                        return Poll::Ready(Err(StatusCode::REQUEST_TIMEOUT));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// How a handler call ended.
enum Outcome {
    Response(http::Response<ResponseBody>),
    Panicked(AccessLog),
    /// Shed: the pool was full or shutting down (the job was dropped unrun), or the
    /// connection has too many handlers running.
    Refused(Option<AccessLog>),
}

// The slot lives in its own `Arc`, allocated once per request; boxing the big variant
// would only add a second allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Default)]
enum SlotState {
    #[default]
    Waiting,
    WaitingWith(Waker),
    Done(Outcome),
    Taken,
}

struct Slot {
    state: Mutex<SlotState>,
}

/// Response slots alive in the process: the fuzz harness checks that none outlives its
/// connection (a leak the fuzzer found: every sent slot was forgotten).
#[cfg(feature = "fuzzing")]
pub(crate) static LIVE_SLOTS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

#[cfg(feature = "fuzzing")]
impl Drop for Slot {
    fn drop(&mut self) {
        LIVE_SLOTS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Slot {
    fn new(state: SlotState) -> Arc<Slot> {
        #[cfg(feature = "fuzzing")]
        LIVE_SLOTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Arc::new(Slot {
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The worker's end of the response slot. Dropped without sending, it records
/// [`Outcome::Refused`], so a request is never left waiting forever.
struct SlotSender {
    slot: Arc<Slot>,
    sent: bool,
}

impl SlotSender {
    fn new(slot: Arc<Slot>) -> SlotSender {
        SlotSender { slot, sent: false }
    }

    /// Whether the connection dropped its end (the response future) already.
    fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.slot) == 1
    }

    fn send(mut self, outcome: Outcome) {
        self.put(outcome);
        self.sent = true;
    }

    fn put(&self, outcome: Outcome) {
        let previous = std::mem::replace(&mut *self.slot.lock(), SlotState::Done(outcome));
        if let SlotState::WaitingWith(waker) = previous {
            waker.wake();
        }
    }
}

impl Drop for SlotSender {
    fn drop(&mut self) {
        if !self.sent {
            self.put(Outcome::Refused(None));
        }
    }
}

enum State {
    Collecting(Box<Collecting>),
    Waiting(Arc<Slot>),
    /// HTTP/1 with `Expect: 100-continue`: the handler returned without reading its body
    /// but kept it (inside the response, say). hyper sends `100 Continue` only until a
    /// response head is written, so the head waits until the body has started to be read.
    Continuing(Option<Box<Outcome>>, Arc<Pipe>),
    /// HTTP/2: the handler let its request body go unread and the pump is draining it;
    /// the response waits for the end of the drain (see `ResponseFuture::draining`).
    Draining(Option<Box<Outcome>>, Arc<Pipe>),
    Done,
}

/// The connection's end: resolves when the worker has the response head.
pub(crate) struct ResponseFuture {
    state: State,
    protocol: Protocol,
    /// Told whether the request was answered or abandoned (reset-flood detection).
    watch: Arc<ConnectionWatch>,
    /// Abandoned requests tolerated before the abandoned/answered ratio applies.
    reset_allowance: usize,
    /// HTTP/1 with `Expect: 100-continue`: the body, not yet asked for by the handler.
    awaiting_continue: Option<Arc<Pipe>>,
    /// HTTP/2: the request body's pipe. If the handler let the body go unread, the
    /// response head waits until the pump has drained it (bounded), so that a client still
    /// uploading (curl 7.88) is not answered, then reset, in the middle of its upload.
    draining: Option<Arc<Pipe>>,
}

impl Drop for ResponseFuture {
    fn drop(&mut self) {
        if !matches!(self.state, State::Done) && self.protocol == Protocol::Http2 {
            self.watch.request_abandoned(self.reset_allowance);
        }
    }
}

impl Dispatch {
    fn ready(&self, outcome: Outcome) -> ResponseFuture {
        self.waiting(Slot::new(SlotState::Done(outcome)))
    }

    fn waiting(&self, slot: Arc<Slot>) -> ResponseFuture {
        self.response_future(State::Waiting(slot))
    }

    fn response_future(&self, state: State) -> ResponseFuture {
        ResponseFuture {
            state,
            protocol: self.info.protocol(),
            watch: self.watch.clone(),
            // A browser leaving a page may reset every stream in flight at once; twice
            // the stream limit keeps that well clear of the flood rule.
            reset_allowance: 2 * self.ctx.limits.max_concurrent_streams as usize,
            awaiting_continue: None,
            draining: None,
        }
    }
}

impl ResponseFuture {
    fn poll_slot(&self, slot: &Slot, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut state = slot.lock();
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Done(outcome) => Poll::Ready(outcome),
            SlotState::WaitingWith(waker) if waker.will_wake(cx.waker()) => {
                *state = SlotState::WaitingWith(waker);
                Poll::Pending
            }
            SlotState::Waiting | SlotState::WaitingWith(_) => {
                *state = SlotState::WaitingWith(cx.waker().clone());
                Poll::Pending
            }
            SlotState::Taken => Poll::Pending,
        }
    }

    /// The wait before answering (a drain, a read that sends `100 Continue`) is over:
    /// answers with the handler's outcome kept for it.
    fn answer_kept(
        &mut self,
        outcome: Option<Box<Outcome>>,
    ) -> Poll<Result<http::Response<ResponseBody>, Never>> {
        self.state = State::Done;
        let Some(outcome) = outcome else {
            return Poll::Pending;
        };
        self.watch.request_answered();
        Poll::Ready(self.answer(*outcome))
    }

    fn answer(&self, outcome: Outcome) -> Result<http::Response<ResponseBody>, Never> {
        match outcome {
            Outcome::Response(mut response) => {
                response.body_mut().start_pace();
                Ok(response)
            }
            Outcome::Panicked(mut log) => {
                // HTTP/2 too: the head cannot have gone out, so the client gets an answer
                // rather than a reset stream it cannot tell from a network failure.
                log.status = StatusCode::INTERNAL_SERVER_ERROR;
                Ok(plain_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "500 Internal Server Error\n",
                    log,
                ))
            }
            Outcome::Refused(log) => {
                let mut log = log.unwrap_or_else(AccessLog::unknown);
                log.status = StatusCode::SERVICE_UNAVAILABLE;
                let mut response = plain_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "503 Service Unavailable: the server is busy, retry shortly\n",
                    log,
                );
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                Ok(response)
            }
        }
    }

    /// Answers a body that could not be collected (400, 408) without a handler.
    fn refuse_body(&self, status: StatusCode, mut log: AccessLog) -> http::Response<ResponseBody> {
        log.status = status;
        let text = if status == StatusCode::REQUEST_TIMEOUT {
            "408 Request Timeout: the request body arrived too slowly\n"
        } else {
            "400 Bad Request: the request body was cut short\n"
        };
        let mut response = plain_response(status, text, log);
        if self.protocol == Protocol::Http1 {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<ResponseBody>, Never>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Collecting(collecting) => {
                    let body = match collecting.poll_body(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(body) => body,
                    };
                    let State::Collecting(collecting) =
                        std::mem::replace(&mut this.state, State::Done)
                    else {
                        return Poll::Pending;
                    };
                    let Collecting {
                        parts,
                        log,
                        running,
                        dispatch,
                        ..
                    } = *collecting;
                    let (Some(parts), Some(log), Some(running)) = (parts, log, running) else {
                        return Poll::Pending;
                    };
                    match body {
                        Ok(bytes) => {
                            let request = http::Request::from_parts(parts, Body::from(bytes));
                            this.state =
                                State::Waiting(dispatch.submit(request, log, running, true));
                        }
                        Err(status) => {
                            this.watch.request_answered();
                            return Poll::Ready(Ok(this.refuse_body(status, log)));
                        }
                    }
                }
                State::Waiting(slot) => {
                    let slot = slot.clone();
                    let outcome = match this.poll_slot(&slot, cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(outcome) => outcome,
                    };
                    if let Some(pipe) = this.draining.take() {
                        if pipe.is_draining() {
                            this.state = State::Draining(Some(Box::new(outcome)), pipe);
                            continue;
                        }
                    }
                    if let Some(pipe) = this.awaiting_continue.take() {
                        if pipe.demand_if_wanted() {
                            this.state = State::Continuing(Some(Box::new(outcome)), pipe);
                            continue;
                        }
                    }
                    this.state = State::Done;
                    this.watch.request_answered();
                    return Poll::Ready(this.answer(outcome));
                }
                State::Draining(outcome, pipe) => {
                    if pipe.poll_ended(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let outcome = outcome.take();
                    return this.answer_kept(outcome);
                }
                State::Continuing(outcome, pipe) => {
                    if pipe.poll_reading(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let outcome = outcome.take();
                    return this.answer_kept(outcome);
                }
                State::Done => return Poll::Pending,
            }
        }
    }
}

/// `413 Content Too Large`; with `close`, an HTTP/1 connection closes after it (the rest
/// of the body is not read).
fn too_large_response(close: bool, log: AccessLog) -> http::Response<ResponseBody> {
    let mut log = log;
    log.status = StatusCode::PAYLOAD_TOO_LARGE;
    let mut response = plain_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "413 Content Too Large: the request body is larger than this server accepts\n",
        log,
    );
    if close {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn plain_response(
    status: StatusCode,
    text: &'static str,
    log: AccessLog,
) -> http::Response<ResponseBody> {
    let mut response =
        http::Response::new(ResponseBody::full(Bytes::from_static(text.as_bytes()), log));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// One line of access log, written when the response body is done. It also holds the
/// request's place among the connection's requests in flight.
struct AccessLog {
    /// What the line says of the request; `None` when no subscriber records access events,
    /// so that a server without access logging neither copies the request line nor reads
    /// the clock for it. Boxed: the log travels inside the handler job, the response
    /// body and the outcome, each moved several times per request.
    request: Option<Box<LoggedRequest>>,
    status: StatusCode,
    sent: u64,
    /// The request body's pipe, told when the response is done.
    request_body: Option<Arc<Pipe>>,
    _in_flight: Option<InFlight>,
}

/// The request as its access event describes it.
struct LoggedRequest {
    /// The client's address (from the PROXY header behind a load balancer) and the
    /// protocol, when known.
    client: Option<(std::net::SocketAddr, Protocol)>,
    method: Method,
    uri: Uri,
    started: Instant,
}

impl AccessLog {
    fn recorded() -> bool {
        tracing::enabled!(target: "portcullis::access", tracing::Level::INFO)
    }

    fn new(parts: &http::request::Parts, info: &ConnectionInfo, in_flight: InFlight) -> AccessLog {
        let request = AccessLog::recorded().then(|| {
            Box::new(LoggedRequest {
                client: Some((info.peer_addr(), info.protocol())),
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                started: Instant::now(),
            })
        });
        AccessLog {
            request,
            status: StatusCode::OK,
            sent: 0,
            request_body: None,
            _in_flight: Some(in_flight),
        }
    }

    /// For a request whose log went with a job that never ran.
    fn unknown() -> AccessLog {
        let request = AccessLog::recorded().then(|| {
            Box::new(LoggedRequest {
                client: None,
                method: Method::GET,
                uri: Uri::default(),
                started: Instant::now(),
            })
        });
        AccessLog {
            request,
            status: StatusCode::OK,
            sent: 0,
            request_body: None,
            _in_flight: None,
        }
    }

    fn finish(&self, outcome: &str) {
        let Some(request) = &self.request else {
            return;
        };
        tracing::info!(
            target: "portcullis::access",
            client = request.client.map(|(addr, _)| tracing::field::display(addr)),
            protocol = request.client.map(|(_, protocol)| tracing::field::display(protocol)),
            method = %request.method,
            path = request.uri.path(),
            status = self.status.as_u16(),
            bytes = self.sent,
            duration_us = request.started.elapsed().as_micros() as u64,
            outcome,
        );
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if let Some(pipe) = &self.request_body {
            pipe.mark_response_done();
        }
    }
}

enum ResponseKind {
    Full(Option<Bytes>),
    /// A response pipe fed by a worker, or a request pipe fed by the connection (an
    /// echo), after `first` (what the handler left of a chunk it began to read).
    Stream(Arc<Pipe>, Option<Bytes>),
    /// A reader's body, read on a worker chunk by chunk when the connection asks.
    Pulled(Arc<Pull>, ReaderSpeed),
}

/// How fast the client takes a pulled body, judged afresh per [`SPEED_WINDOW`] bytes: one
/// that takes them within [`FAST_WINDOW`] gets the deeper pipe, one that does not gets the
/// usual one back. A slow reader never reaches the deeper pipe; a fast one that stops
/// reading holds at most the deeper pipe's bytes.
struct ReaderSpeed {
    clock: Clock,
    /// When the current window began.
    since: Instant,
    /// The body's bytes taken in all at which the current window ends.
    until: u64,
}

impl ReaderSpeed {
    fn new(clock: Clock) -> ReaderSpeed {
        ReaderSpeed {
            since: clock.now(),
            clock,
            until: SPEED_WINDOW,
        }
    }

    /// The connection has taken `sent` bytes of `pull`'s body in all.
    fn taken(&mut self, sent: u64, pull: &Pull) {
        if sent < self.until {
            return;
        }
        let now = self.clock.now();
        pull.set_fast(now.saturating_duration_since(self.since) <= FAST_WINDOW);
        self.since = now;
        self.until = sent + SPEED_WINDOW;
    }
}

/// The response body as hyper polls it, on the reactor.
pub(crate) struct ResponseBody {
    kind: ResponseKind,
    log: AccessLog,
    complete: bool,
    /// A streamed body's length when known (a forwarded request body that declared it):
    /// hyper then sends `Content-Length` rather than chunks.
    length: Option<u64>,
    /// Streamed bodies: the client's pace, held to the send timeout and minimum rate.
    pace: Option<Box<ResponsePace>>,
}

impl ResponseBody {
    fn full(bytes: Bytes, log: AccessLog) -> ResponseBody {
        ResponseBody {
            kind: ResponseKind::Full(Some(bytes).filter(|b| !b.is_empty())),
            log,
            complete: false,
            length: None,
            pace: None,
        }
    }

    fn stream(pipe: Arc<Pipe>, first: Bytes, log: AccessLog, rate: ResponseRate) -> ResponseBody {
        ResponseBody {
            kind: ResponseKind::Stream(pipe, Some(first).filter(|b| !b.is_empty())),
            log,
            complete: false,
            length: None,
            pace: Some(Box::new(ResponsePace::new(rate))),
        }
    }

    fn pulled(pull: Arc<Pull>, log: AccessLog, rate: ResponseRate) -> ResponseBody {
        ResponseBody {
            kind: ResponseKind::Pulled(pull, ReaderSpeed::new(rate.clock.clone())),
            log,
            complete: false,
            length: None,
            pace: Some(Box::new(ResponsePace::new(rate))),
        }
    }

    /// The response goes to the client: from now on its pace counts (a client that opens
    /// with a zero window never lets hyper poll the body at all).
    fn start_pace(&mut self) {
        if let Some(pace) = &mut self.pace {
            pace.polled(0, true);
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let next = match &mut this.kind {
            ResponseKind::Full(bytes) => Poll::Ready(bytes.take().map(Ok)),
            ResponseKind::Stream(_, first @ Some(_)) => Poll::Ready(first.take().map(Ok)),
            ResponseKind::Stream(pipe, None) => pipe.poll_pop(cx),
            ResponseKind::Pulled(pull, speed) => {
                let next = pull.pipe.poll_pop(cx);
                if let Poll::Ready(Some(Ok(chunk))) = &next {
                    // Before `want_more`, which sizes the refill by the pipe's capacity.
                    speed.taken(this.log.sent + chunk.len() as u64, pull);
                }
                pull.want_more();
                next
            }
        };
        match &next {
            Poll::Ready(Some(Ok(chunk))) => this.log.sent += chunk.len() as u64,
            Poll::Ready(None) => this.complete = true,
            _ => {}
        }
        if let Some(pace) = &mut this.pace {
            match &next {
                // Until hyper asks for the next chunk, the client (its window or socket) is
                // what holds the one just handed over: data ready, client's time.
                Poll::Ready(Some(Ok(chunk))) => pace.polled(chunk.len(), true),
                // Nothing ready yet: the server's time.
                Poll::Pending => pace.polled(0, false),
                Poll::Ready(_) => pace.done(),
            }
        }
        next.map(|chunk| chunk.map(|chunk| chunk.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, ResponseKind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Full(None) => SizeHint::with_exact(0),
            ResponseKind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ResponseKind::Stream(..) | ResponseKind::Pulled(..) => match self.length {
                Some(length) => SizeHint::with_exact(length.saturating_sub(self.log.sent)),
                None => SizeHint::default(),
            },
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        match &self.kind {
            // Releases a worker blocked on a client that went away.
            ResponseKind::Stream(pipe, _) => pipe.close_consumer(),
            // Stops a refill in progress; the reader is dropped with the last reference.
            ResponseKind::Pulled(pull, _) => pull.pipe.close_consumer(),
            ResponseKind::Full(_) => {}
        }
        if let Some(pace) = &mut self.pace {
            pace.done();
        }
        let complete = self.complete || matches!(self.kind, ResponseKind::Full(None));
        self.log
            .finish(if complete { "complete" } else { "incomplete" });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{PoolConfig, WorkerPool};
    use std::io::Read;

    /// Takes every chunk queued in `pull`'s pipe; returns their bytes.
    fn drain(pull: &Pull) -> usize {
        let mut cx = Context::from_waker(Waker::noop());
        let mut taken = 0;
        while let Poll::Ready(Some(Ok(chunk))) = pull.pipe.poll_pop(&mut cx) {
            taken += chunk.len();
        }
        taken
    }

    #[test]
    fn a_fast_reader_gets_the_deeper_pipe_and_a_slow_one_gives_it_back() {
        let pool = WorkerPool::new(PoolConfig {
            max_workers: 1,
            max_queued: 1,
            idle_timeout: Duration::from_millis(100),
        });
        let body = Body::from_reader(io::repeat(b'x').take(64 << 20));
        let pull = Pull::new(body, PIPE_CAPACITY, pool, 0);
        let (clock, hands) = Clock::manual();
        let mut speed = ReaderSpeed::new(clock);
        pull.produce();
        assert_eq!(
            drain(&pull),
            PIPE_CAPACITY,
            "a new body starts with the usual pipe"
        );

        // Short of the first window nothing is judged, however fast.
        speed.taken(SPEED_WINDOW - 1, &pull);
        pull.produce();
        assert_eq!(drain(&pull), PIPE_CAPACITY);

        // The first MiB taken within 10 ms: fast, the refills go four times as deep.
        hands.advance(Duration::from_millis(10));
        speed.taken(SPEED_WINDOW, &pull);
        pull.produce();
        assert_eq!(drain(&pull), crate::body::FAST_PIPE_FACTOR * PIPE_CAPACITY);

        // The next MiB took 200 ms: the usual pipe again.
        hands.advance(Duration::from_millis(200));
        speed.taken(2 * SPEED_WINDOW, &pull);
        pull.produce();
        assert_eq!(drain(&pull), PIPE_CAPACITY);

        // And back to the deeper one when the client speeds up again.
        hands.advance(FAST_WINDOW);
        speed.taken(3 * SPEED_WINDOW + 5, &pull);
        pull.produce();
        assert_eq!(drain(&pull), crate::body::FAST_PIPE_FACTOR * PIPE_CAPACITY);
    }
}
