//! Deadlines of a connection and of its request bodies.
//!
//! What a connection's deadlines watch: requests in flight, when the connection went idle,
//! since when its writes have been stalled, and whether anything asked to abort it.
//!
//! The transport, the dispatch glue and the worker-side body code update a shared
//! [`ConnectionWatch`]; the connection's driver (`conn::drive`) turns it into a single
//! reactor deadline and acts when it passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::reactor::timer::{Clock, Deadline, TimerQueue};

/// Why a connection is being cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AbortReason {
    /// A request body arrived too slowly (below the minimum rate, or stalled).
    BodyTooSlow,
    /// The client stopped taking response bytes for longer than the send timeout.
    SendStalled,
    /// HTTP/2: more handlers running than streams allowed (the client reset streams whose
    /// handlers still run: rapid reset).
    TooManyHandlers,
    /// HTTP/2: the client reset more requests than it let finish (rapid reset).
    ResetFlood,
    /// The server is at `max_connections` and this connection has been idle longest.
    MakeRoom,
}

impl AbortReason {
    /// Every reason, in discriminant order (for decoding the atomic).
    const ALL: [AbortReason; 5] = [
        AbortReason::BodyTooSlow,
        AbortReason::SendStalled,
        AbortReason::TooManyHandlers,
        AbortReason::ResetFlood,
        AbortReason::MakeRoom,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AbortReason::BodyTooSlow => "request body too slow",
            AbortReason::SendStalled => "client stopped reading the response",
            AbortReason::TooManyHandlers => "too many handlers in flight (streams reset)",
            AbortReason::ResetFlood => "client reset more requests than it let finish",
            AbortReason::MakeRoom => "idle longest while the server is at max_connections",
        }
    }
}

/// Shared state of one connection, cheap to update from any thread.
pub(crate) struct ConnectionWatch {
    /// The reactor's clock.
    clock: Clock,
    /// Reference point for the nanosecond timestamps below.
    epoch: Instant,
    /// Requests handed to the service whose responses are not finished.
    in_flight: AtomicUsize,
    /// Handler jobs running on workers for this connection.
    handlers: AtomicUsize,
    /// Requests whose response was delivered to hyper.
    answered: AtomicUsize,
    /// Requests dropped by hyper before their response was ready (stream reset,
    /// connection gone).
    abandoned: AtomicUsize,
    /// When `in_flight` last fell to zero (ns since `epoch`).
    idle_since: AtomicU64,
    /// When writes began to wait for the socket (ns since `epoch` + 1), 0 when flowing.
    write_stalled_since: AtomicU64,
    /// When the lingering close began to wait for the client's end (ns since `epoch` + 1),
    /// 0 before.
    lingering_since: AtomicU64,
    /// Why the connection must close: 0 while it need not, else `AbortReason as u8 + 1`.
    abort: AtomicU8,
    /// Set while the connection task polls hyper: changes made then are seen right after,
    /// so they need no wake-up.
    polling: AtomicBool,
    /// The connection task, woken when something changes that moves a deadline.
    waker: Mutex<Option<Waker>>,
}

impl ConnectionWatch {
    pub(crate) fn new(clock: Clock) -> Arc<ConnectionWatch> {
        Arc::new(ConnectionWatch {
            epoch: clock.now(),
            clock,
            in_flight: AtomicUsize::new(0),
            handlers: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            write_stalled_since: AtomicU64::new(0),
            lingering_since: AtomicU64::new(0),
            abort: AtomicU8::new(0),
            polling: AtomicBool::new(false),
            waker: Mutex::new(None),
        })
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    fn wake(&self) {
        // Kept, not taken: the task registers once (see `register`).
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The connection task registers itself to be woken on changes. The waker stays
    /// registered for good, so the task need register again only if its waker changes.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some(current) if current.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    /// The connection task is (or is no longer) inside hyper's poll.
    pub(crate) fn set_polling(&self, polling: bool) {
        self.polling.store(polling, Ordering::Relaxed);
    }

    /// A request was handed over; the guard ends it when dropped.
    pub(crate) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// A handler job was queued for a worker; the guard ends it when dropped. Returns the
    /// number of handlers running for this connection, this one included.
    pub(crate) fn handler_started(self: &Arc<Self>) -> (HandlerRunning, usize) {
        let running = self.handlers.fetch_add(1, Ordering::AcqRel) + 1;
        (HandlerRunning(self.clone()), running)
    }

    /// A response was handed to hyper.
    pub(crate) fn request_answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was dropped before its response was ready. Once a connection has
    /// abandoned at least `limit` requests and more than it let finish, it is a reset flood.
    pub(crate) fn request_abandoned(&self, limit: usize) {
        let abandoned = self.abandoned.fetch_add(1, Ordering::Relaxed) + 1;
        if abandoned >= limit && abandoned > self.answered.load(Ordering::Relaxed) {
            self.abort(AbortReason::ResetFlood);
        }
    }

    /// The connection is ready for its first request (handshake done): its idle and
    /// request header deadlines count from now, as nginx's `client_header_timeout` starts
    /// after `ssl_handshake_timeout`.
    pub(crate) fn ready_for_requests(&self) {
        let now = self.nanos(self.clock.now());
        self.idle_since.store(now, Ordering::Release);
    }

    /// When the connection became idle (no request in flight), if it is idle.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.instant(self.idle_since.load(Ordering::Acquire)))
    }

    /// The transport could not write: the socket is full.
    pub(crate) fn write_stalled(&self) {
        if self.write_stalled_since.load(Ordering::Relaxed) == 0 {
            let now = self.nanos(self.clock.now()) + 1;
            self.write_stalled_since.store(now, Ordering::Relaxed);
        }
    }

    /// The transport wrote something.
    pub(crate) fn write_progressed(&self) {
        if self.write_stalled_since.load(Ordering::Relaxed) != 0 {
            self.write_stalled_since.store(0, Ordering::Relaxed);
        }
    }

    /// Since when writes have been waiting for the client, if they are.
    pub(crate) fn write_stalled_since(&self) -> Option<Instant> {
        match self.write_stalled_since.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.instant(n - 1)),
        }
    }

    /// The transport closed its side and waits for the client to close its own (see
    /// `Transport::poll_shutdown`).
    pub(crate) fn linger_started(&self) {
        if self.lingering_since.load(Ordering::Relaxed) == 0 {
            let now = self.nanos(self.clock.now()) + 1;
            self.lingering_since.store(now, Ordering::Relaxed);
        }
    }

    /// Since when the lingering close has waited for the client, if it has.
    pub(crate) fn lingering_since(&self) -> Option<Instant> {
        match self.lingering_since.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.instant(n - 1)),
        }
    }

    /// Asks the connection to close at once. The first reason is kept.
    pub(crate) fn abort(&self, reason: AbortReason) {
        let code = reason as u8 + 1;
        let _ = self
            .abort
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }

    /// Why the connection must close, if it must.
    pub(crate) fn aborted(&self) -> Option<AbortReason> {
        match self.abort.load(Ordering::Acquire) {
            0 => None,
            code => AbortReason::ALL.get(usize::from(code) - 1).copied(),
        }
    }
}

/// A request in flight on a connection (see [`ConnectionWatch::request_started`]).
pub(crate) struct InFlight(Arc<ConnectionWatch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let watch = &self.0;
        if watch.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            watch
                .idle_since
                .store(watch.nanos(watch.clock.now()), Ordering::Release);
            // An HTTP/1 response ends inside the connection's own poll, which arms the idle
            // deadline right after; an HTTP/2 stream ends in its own task.
            if !watch.polling.load(Ordering::Relaxed) {
                watch.wake();
            }
        }
    }
}

/// A handler running for a connection (see [`ConnectionWatch::handler_started`]).
pub(crate) struct HandlerRunning(Arc<ConnectionWatch>);

impl Drop for HandlerRunning {
    fn drop(&mut self) {
        self.0.handlers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How fast a request body must arrive: at least `min_rate` bytes per second once `grace`
/// has passed, and never a pause longer than `timeout`. Only time spent waiting for the
/// client counts; time the handler takes to read does not.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyRate {
    pub(crate) timeout: Duration,
    pub(crate) min_rate: u64,
    pub(crate) grace: Duration,
}

/// Enforces [`BodyRate`] on one request body, on the reactor.
pub(crate) struct BodyDeadline {
    rate: BodyRate,
    timer: Deadline,
    /// Bytes received so far.
    received: u64,
    /// Time spent waiting for the client before the current wait.
    waited: Duration,
    /// Start of the current wait for the client, if waiting.
    wait_started: Option<Instant>,
}

impl BodyDeadline {
    pub(crate) fn new(rate: BodyRate, timers: &Arc<TimerQueue>) -> BodyDeadline {
        BodyDeadline {
            rate,
            timer: Deadline::new(timers, timers.now() + rate.timeout),
            received: 0,
            waited: Duration::ZERO,
            wait_started: None,
        }
    }

    /// Bytes arrived: the current wait (if any) ends.
    pub(crate) fn received(&mut self, bytes: usize) {
        self.received += bytes as u64;
        self.pause();
    }

    /// The body is waiting for the handler, not the client: the clock stops.
    pub(crate) fn pause(&mut self) {
        if let Some(started) = self.wait_started.take() {
            self.waited += self.timer.now().saturating_duration_since(started);
        }
    }

    /// Waiting for the client: `Ready` once the body is too slow.
    pub(crate) fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let now = self.timer.now();
        let started = *self.wait_started.get_or_insert(now);
        // The total wait at which the average rate falls below the minimum.
        let allowed = if self.rate.min_rate == 0 {
            Duration::MAX
        } else {
            self.rate.grace.max(Duration::from_secs_f64(
                self.received as f64 / self.rate.min_rate as f64,
            ))
        };
        let by_pause = started + self.rate.timeout;
        // Waited longer than allowed: expired now. A wait past the end of time (the rate
        // rule off, `allowed` = MAX): only the pause rule applies.
        let by_rate = match allowed.checked_sub(self.waited) {
            None => started,
            Some(left) => started.checked_add(left).unwrap_or(by_pause),
        };
        let expires = by_rate.min(by_pause);
        if now >= expires {
            return Poll::Ready(());
        }
        if self.timer.at() != expires {
            self.timer.reset(expires);
        }
        Pin::new(&mut self.timer).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_abort_reason_round_trips_and_the_first_one_wins() {
        for (i, reason) in AbortReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "ALL must follow discriminant order");
            let watch = ConnectionWatch::new(Clock::default());
            assert_eq!(watch.aborted(), None);
            watch.abort(reason);
            watch.abort(AbortReason::ALL[(i + 1) % AbortReason::ALL.len()]);
            assert_eq!(watch.aborted(), Some(reason));
        }
    }
}

/// The minimum rate and the inactivity timeout a streamed response is held to.
#[derive(Clone)]
pub(crate) struct ResponseRate {
    pub(crate) clock: Clock,
    /// Bytes per second, 0 for none ([`Limits::min_response_body_rate`](crate::Limits)).
    pub(crate) min_rate: u64,
    pub(crate) grace: Duration,
    pub(crate) send_timeout: Duration,
}

/// What a streamed response body measures of its client: the time the client (its socket
/// or its HTTP/2 window) kept data that was ready from being sent, and the bytes sent.
pub(crate) struct ResponsePace {
    rate: ResponseRate,
    /// Data is ready and waits for the client since then.
    waiting_since: Option<Instant>,
    /// Time spent waiting for the client, before `waiting_since`.
    waited: Duration,
    sent: u64,
}

impl ResponsePace {
    pub(crate) fn new(rate: ResponseRate) -> ResponsePace {
        ResponsePace {
            rate,
            waiting_since: None,
            waited: Duration::ZERO,
            sent: 0,
        }
    }

    /// The connection took a chunk of `sent` bytes (0 when none was ready); `data_ready`
    /// when more is already queued, so that from now on only the client holds it back.
    /// Reports to the task polling the body (see [`report_response_cut`]) when it must be
    /// cut if not polled again.
    pub(crate) fn polled(&mut self, sent: usize, data_ready: bool) {
        let now = self.rate.clock.now();
        if let Some(since) = self.waiting_since.take() {
            self.waited += now.saturating_duration_since(since);
        }
        self.sent += sent as u64;
        if !data_ready {
            report_response_cut(None);
            return;
        }
        self.waiting_since = Some(now);
        let mut cut = now + self.rate.send_timeout;
        if self.rate.min_rate > 0 {
            // The waited time at which the bytes sent fall below the minimum rate.
            let allowed = Duration::from_secs_f64(self.sent as f64 / self.rate.min_rate as f64)
                .max(self.rate.grace);
            cut = cut.min(now + allowed.saturating_sub(self.waited));
        }
        report_response_cut(Some(cut));
    }

    /// The body ended or was dropped: nothing to watch any more.
    pub(crate) fn done(&mut self) {
        self.waiting_since = None;
        report_response_cut(None);
    }
}

thread_local! {
    /// What the last response body polled on this thread asked of its task's watchdog:
    /// `Some(Some(at))` cut it at `at` unless polled again, `Some(None)` nothing to watch,
    /// `None` no report.
    static RESPONSE_CUT: std::cell::Cell<Option<Option<Instant>>> =
        const { std::cell::Cell::new(None) };
}

/// Called by a streamed response body from inside its task's poll.
pub(crate) fn report_response_cut(at: Option<Instant>) {
    RESPONSE_CUT.with(|cut| cut.set(Some(at)));
}

/// Called by the task around its poll: the report of the body polled meanwhile, if any.
pub(crate) fn take_response_cut() -> Option<Option<Instant>> {
    RESPONSE_CUT.with(|cut| cut.take())
}

impl crate::reactor::Evictable for ConnectionWatch {
    fn idle_since(&self) -> Option<Instant> {
        ConnectionWatch::idle_since(self)
    }

    fn evict(&self) {
        self.abort(AbortReason::MakeRoom);
    }
}
