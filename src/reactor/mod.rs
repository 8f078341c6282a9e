//! The reactor: one thread at a time owns a `mio::Poll`, accepts TCP connections, drives
//! every connection's state machine as a task, and keeps the deadlines.
//!
//! A server runs one reactor per core ([`Server::reactors`](crate::Server::reactors)).
//! Each owns its poll, tasks, timers and leader/followers; a connection stays on the
//! reactor that accepted it for its whole life. The reactors share only what makes the
//! limits global ([`Shared`]: the open-connection count and the per-address counts) and
//! the listening sockets: each reactor registers its own duplicate of every listener,
//! with `EPOLLEXCLUSIVE` when there are several reactors, so a new connection wakes one
//! idle reactor instead of all of them (see `docs/architecture.md` for why not
//! `SO_REUSEPORT` or a hand-off thread).
//!
//! A byte's path starts here: a listener becomes readable, [`Reactor::accept_ready`] takes
//! the socket, registers it under the token of the task that will own it, and polls that
//! task once at once (the request may already be in the socket). From then on every
//! readiness event for the token wakes the task, and the task retries its I/O.

pub(crate) mod coop;
pub(crate) mod leader;
pub(crate) mod task;
pub(crate) mod timer;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use task::{BoxFuture, Executor, RunQueue};
use timer::{Clock, TimerQueue};

/// Token of the waker that interrupts `poll` for wakes from other threads.
const WAKER_TOKEN: Token = Token(usize::MAX);

/// How long accepting pauses after the process ran out of file descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

fn listener_token(index: usize) -> Token {
    Token(usize::MAX - 1 - index)
}

/// Builds the task that serves one accepted connection: socket, peer address, local address.
pub(crate) type ConnectionFactory =
    Box<dyn FnMut(ReadyStream, SocketAddr, SocketAddr) -> BoxFuture + Send>;

/// What the reactor last learnt about a socket's readability. mio is edge-triggered: after
/// a read answered `WouldBlock`, the next one can only succeed once a new readable event
/// came, so reading again before that is a wasted system call — and a connection task is
/// polled several times per request (the request, the handler's answer, the response
/// written), each poll trying to read. Set when an event for the socket arrives, cleared
/// when a read would block; both happen on the thread that holds the reactor, so an edge
/// cannot slip between them.
///
/// Writes likewise wait for a writable event after one would block. That saves the system
/// call, and it is what keeps the send timeout honest: the kernel raises the event only
/// once the client took a good part of what was queued (with `TCP_NOTSENT_LOWAT`, when
/// less than half of it is left unsent), but it accepts a write as soon as *anything* was
/// sent. A slow reader opening its window by 32 bytes would otherwise let every poll (the
/// send timeout's own expiry among them) write a record and count as progress.
#[derive(Debug)]
pub(crate) struct Readiness {
    readable: AtomicBool,
    writable: AtomicBool,
    /// The peer closed its side or the socket failed: from then on every read goes to the
    /// socket (the end of the stream raises no further edge).
    closed: AtomicBool,
    /// Set by the connection once it serves HTTP: what the reactor asks when it must close
    /// an idle connection to make room (`max_connections`).
    evictable: OnceLock<Arc<dyn Evictable>>,
}

/// A connection the reactor may close to make room for a new one at `max_connections`.
pub(crate) trait Evictable: Send + Sync {
    /// For `Readiness`'s `Debug`.
    fn describe(&self) -> &'static str {
        "connection"
    }

    /// Since when nothing has been in flight, if nothing is.
    fn idle_since(&self) -> Option<Instant>;
    /// Asks the connection to close gracefully (HTTP/2: GOAWAY).
    fn evict(&self);
}

impl Readiness {
    fn new() -> Arc<Readiness> {
        // Readable at first: the request may be in the socket before its first event.
        Arc::new(Readiness {
            readable: AtomicBool::new(true),
            writable: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            evictable: OnceLock::new(),
        })
    }

    /// An event said the socket may read; `closed` if it also said the peer closed its
    /// side (or the socket failed).
    pub(crate) fn set_readable(&self, closed: bool) {
        if closed {
            self.closed.store(true, Ordering::Release);
        }
        self.readable.store(true, Ordering::Release);
    }

    /// An event said the socket may take writes again (or failed: the write finds out).
    pub(crate) fn set_writable(&self) {
        self.writable.store(true, Ordering::Release);
    }
}

impl std::fmt::Debug for dyn Evictable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// An accepted socket that skips reads the reactor knows would block (see [`Readiness`]).
pub(crate) struct ReadyStream {
    socket: TcpStream,
    readiness: Arc<Readiness>,
    /// Holds the peer address's place under `max_connections_per_ip` (none when the
    /// server expects the PROXY protocol: the connection task counts the client's address
    /// once the header has named it, see [`AddressLimit`]).
    _peer: Option<PeerPlace>,
}

/// Connections open per peer address, shared by a reactor and its connections' sockets.
type PeerCounts = Arc<Mutex<HashMap<IpAddr, u32>>>;

fn lock_counts(counts: &PeerCounts) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
    // Nothing panics while holding this lock.
    counts.lock().unwrap_or_else(|e| e.into_inner())
}

/// `max_connections_per_ip` for addresses learnt after accept: behind a load balancer
/// that speaks the PROXY protocol every TCP peer is the balancer, so the connection task
/// takes the place of the client's own address (from the header) instead, in the same
/// server-wide counts.
#[derive(Clone)]
pub(crate) struct AddressLimit {
    counts: PeerCounts,
    limit: usize,
}

impl AddressLimit {
    /// Takes a place for `ip`, or `None` when it already has the limit's connections.
    pub(crate) fn take(&self, ip: IpAddr) -> Option<PeerPlace> {
        PeerPlace::take(&self.counts, ip, self.limit)
    }

    /// The limit, for the event that says a connection was refused.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// One connection's place among its address's connections; given back when the socket
/// (or the connection task holding it) ends.
pub(crate) struct PeerPlace {
    counts: PeerCounts,
    ip: IpAddr,
}

impl PeerPlace {
    /// Takes a place for `ip`, or `None` when it already has `limit` connections.
    fn take(counts: &PeerCounts, ip: IpAddr, limit: usize) -> Option<PeerPlace> {
        let mut map = lock_counts(counts);
        let open = map.entry(ip).or_insert(0);
        if *open as usize >= limit {
            return None;
        }
        *open += 1;
        Some(PeerPlace {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut map = lock_counts(&self.counts);
        if let Some(open) = map.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl io::Read for ReadyStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.readiness.readable.load(Ordering::Acquire) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let result = self.socket.read(buf);
        // A short read emptied the socket as surely as a `WouldBlock` would have said so
        // (tokio concludes the same): bytes arriving after it raise a new event.
        let drained = match &result {
            Ok(n) => *n > 0 && *n < buf.len(),
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        };
        if drained && !self.readiness.closed.load(Ordering::Acquire) {
            self.readiness.readable.store(false, Ordering::Release);
        }
        result
    }
}

impl io::Write for ReadyStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_when_writable(|socket| socket.write(buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.write_when_writable(|socket| socket.write_vectored(bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

impl ReadyStream {
    /// Runs `write` unless the last write would block and no writable event came since;
    /// a write that would block waits for the next writable event (see [`Readiness`]).
    fn write_when_writable(
        &mut self,
        write: impl FnOnce(&mut TcpStream) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if !self.readiness.writable.load(Ordering::Acquire) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let result = write(&mut self.socket);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            && !self.readiness.closed.load(Ordering::Acquire)
        {
            self.readiness.writable.store(false, Ordering::Release);
        }
        result
    }

    /// Whether a read may find data: `false` once a read found the socket empty, until the
    /// reactor sees it readable again (a read then answers `WouldBlock` without a system
    /// call).
    pub(crate) fn may_read(&self) -> bool {
        self.readiness.readable.load(Ordering::Acquire)
    }

    /// Whether an event said the peer closed its side (or the socket failed).
    pub(crate) fn peer_closed(&self) -> bool {
        self.readiness.closed.load(Ordering::Acquire)
    }

    /// The connection serves HTTP now: the reactor may close it when idle to make room.
    pub(crate) fn set_evictable(&self, evictable: Arc<dyn Evictable>) {
        let _ = self.readiness.evictable.set(evictable);
    }

    /// Closes the writing half.
    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        self.socket.shutdown(std::net::Shutdown::Write)
    }
}

/// State the reactor shares with the outside: the shutdown flag and the run queue.
pub(crate) struct ReactorHandle {
    /// Which of the server's reactors this is (0 when there is one).
    pub(crate) index: usize,
    shutdown: AtomicBool,
    /// Set by another reactor to make this one accept now: a place under
    /// `max_connections` freed up while this one had stopped at the limit, or the other
    /// holds more than its share of connections and leaves the backlog to this one.
    resume_accept: AtomicBool,
    /// Connections open on this reactor; written only by the reactor itself (a plain
    /// store, once per accepted or ended connection), read by the others to balance.
    open: AtomicUsize,
    pub(crate) run_queue: Arc<RunQueue>,
    pub(crate) timers: Arc<TimerQueue>,
}

impl ReactorHandle {
    pub(crate) fn new(
        index: usize,
        run_queue: Arc<RunQueue>,
        timers: Arc<TimerQueue>,
    ) -> Arc<ReactorHandle> {
        Arc::new(ReactorHandle {
            index,
            shutdown: AtomicBool::new(false),
            resume_accept: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            run_queue,
            timers,
        })
    }

    /// Asks the reactor to try accepting again (a place under `max_connections` freed up
    /// on another reactor).
    fn resume_accepting(&self) {
        self.resume_accept.store(true, Ordering::Release);
        self.run_queue.wake_now();
    }

    /// Asks the reactor to stop accepting and drain.
    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        // Not `notify`: the reactor checks the flag only after `poll` returns, so a wake-up
        // skipped because it was awake could let it sleep through the shutdown.
        self.run_queue.wake_now();
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

/// What all the reactors of one server share, so that the connection limits mean the same
/// whatever the reactor count. Touched once per accepted and once per ended connection,
/// never per request.
pub(crate) struct Shared {
    max_connections: usize,
    max_connections_per_ip: usize,
    /// Whether `max_connections_per_ip` is counted at accept by the TCP peer's address
    /// (`false` behind the PROXY protocol: see [`AddressLimit`]).
    per_ip_at_accept: bool,
    /// Connections open (or being accepted) on every reactor together.
    open: AtomicUsize,
    /// Connections open per peer address (`max_connections_per_ip`).
    per_ip: PeerCounts,
    /// Set by a reactor that stopped accepting at `max_connections`: the next connection
    /// to end, on any reactor, wakes every reactor to accept again.
    waiting: AtomicBool,
    reactors: OnceLock<Vec<Arc<ReactorHandle>>>,
}

impl Shared {
    /// `per_ip_at_accept`: count `max_connections_per_ip` by the TCP peer at accept; when
    /// `false` the connections count their clients' addresses themselves
    /// ([`Shared::address_limit`]).
    pub(crate) fn new(
        max_connections: usize,
        max_connections_per_ip: usize,
        per_ip_at_accept: bool,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            max_connections: max_connections.max(1),
            max_connections_per_ip: max_connections_per_ip.max(1),
            per_ip_at_accept,
            open: AtomicUsize::new(0),
            per_ip: PeerCounts::default(),
            waiting: AtomicBool::new(false),
            reactors: OnceLock::new(),
        })
    }

    /// The reactors to wake when a place frees up; set once they all exist.
    pub(crate) fn set_reactors(&self, reactors: Vec<Arc<ReactorHandle>>) {
        let _ = self.reactors.set(reactors);
    }

    /// The per-address limit in the server-wide counts, for connections that learn their
    /// client's address after accept (PROXY protocol).
    pub(crate) fn address_limit(&self) -> AddressLimit {
        AddressLimit {
            counts: self.per_ip.clone(),
            limit: self.max_connections_per_ip,
        }
    }

    /// Takes a place under `max_connections` for a connection about to be accepted.
    fn reserve(&self) -> bool {
        if self.open.fetch_add(1, Ordering::SeqCst) < self.max_connections {
            return true;
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
        false
    }

    /// Gives back `count` places; wakes the reactors that stopped accepting at the limit.
    fn release(&self, count: usize) {
        self.open.fetch_sub(count, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) && self.waiting.swap(false, Ordering::SeqCst) {
            for reactor in self.reactors.get().into_iter().flatten() {
                reactor.resume_accepting();
            }
        }
    }

    /// Called by a reactor that found no place: the next release wakes it. `true` if a
    /// place freed up meanwhile (taken for the caller), so it can accept at once.
    fn wait_for_room(&self) -> bool {
        self.waiting.store(true, Ordering::SeqCst);
        self.reserve()
    }
}

struct Listener {
    socket: TcpListener,
    local_addr: SocketAddr,
}

/// Settings the reactor itself enforces.
pub(crate) struct ReactorConfig {
    /// Which of the server's reactors this is.
    pub(crate) index: usize,
    /// Whether other reactors accept on the same listeners (then they are registered with
    /// `EPOLLEXCLUSIVE`).
    pub(crate) shared_listeners: bool,
    pub(crate) drain_timeout: Duration,
}

/// A reactor that holds this many connections more than the least-loaded one (plus an
/// eighth of that one's count) leaves new connections to it. `EPOLLEXCLUSIVE` wakes the
/// first reactor found asleep, which favours the same one whenever the server is idle;
/// without this, connections opened at a quiet moment (a client's keep-alive pool) would
/// pile up on reactor 0 and later load that one core only.
const BALANCE_SLACK: usize = 4;

/// Most connections one reactor accepts in a row before it polls its other work again,
/// leaving the rest of a burst to the other reactors (with `EPOLLEXCLUSIVE`, an idle one
/// is woken by each new arrival).
const ACCEPT_BATCH: usize = 32;

/// The event loop. Create with [`Reactor::new`], then [`Reactor::run`] until shutdown.
pub(crate) struct Reactor {
    poll: Poll,
    listeners: Vec<Listener>,
    tasks: Executor,
    handle: Arc<ReactorHandle>,
    config: ReactorConfig,
    new_connection: Option<ConnectionFactory>,
    /// Connections open on this reactor (the server-wide count is in `shared`).
    connections: usize,
    shared: Arc<Shared>,
    /// An idle connection was asked to close to make room; cleared when one ends.
    evicting: bool,
    /// Set when `max_connections` stopped accepting; cleared when a connection ends.
    accept_full: bool,
    /// Set when a connection closed below the limit: the backlog may hold connections
    /// whose readiness edge was consumed while accepting was paused.
    accept_again: bool,
    /// Set after EMFILE/ENFILE: accepting resumes at this instant.
    accept_paused_until: Option<Instant>,
    drain_deadline: Option<Instant>,
    events: Events,
    /// Handler jobs the leader has yet to run inline (see [`leader`]); they travel with
    /// the reactor when another thread takes it over.
    inline_jobs: VecDeque<leader::Deferred>,
    /// How many times the reactor has looked at its sockets (`poll`) so far.
    looks: u64,
}

impl Reactor {
    /// Creates the poll, registers the listeners (made non-blocking).
    pub(crate) fn new(
        listeners: Vec<std::net::TcpListener>,
        shared: Arc<Shared>,
        config: ReactorConfig,
    ) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
        let run_queue = RunQueue::new(waker);
        let timers = TimerQueue::new(run_queue.clone(), Clock::default());
        let mut registered = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            listener.set_nonblocking(true)?;
            let local_addr = listener.local_addr()?;
            let mut socket = TcpListener::from_std(listener);
            if config.shared_listeners {
                register_exclusive(&poll, &mut socket, listener_token(index))?;
            } else {
                poll.registry()
                    .register(&mut socket, listener_token(index), Interest::READABLE)?;
            }
            registered.push(Listener { socket, local_addr });
        }
        Ok(Reactor {
            poll,
            listeners: registered,
            tasks: Executor::new(run_queue.clone()),
            handle: ReactorHandle::new(config.index, run_queue, timers),
            config,
            new_connection: None,
            connections: 0,
            shared,
            evicting: false,
            accept_full: false,
            accept_again: false,
            accept_paused_until: None,
            drain_deadline: None,
            events: Events::with_capacity(1024),
            inline_jobs: VecDeque::new(),
            looks: 0,
        })
    }

    pub(crate) fn handle(&self) -> &Arc<ReactorHandle> {
        &self.handle
    }

    /// Runs until shutdown has drained every connection (or the drain timeout passed). The
    /// calling thread leads; complete requests run their handlers inline, and other threads
    /// take the reactor over when one blocks (see [`leader`]). Jobs that do not run inline go
    /// to `pool`, which also holds a place for each inline one.
    pub(crate) fn run(
        mut self,
        new_connection: ConnectionFactory,
        pool: crate::worker::WorkerPool,
        blocking_routes: Arc<leader::BlockingRoutes>,
        monitor: Arc<leader::Monitor>,
    ) -> io::Result<()> {
        self.new_connection = Some(new_connection);
        leader::run(Box::new(self), pool, blocking_routes, monitor)
    }

    /// One turn of the event loop: polls ready tasks, then (unless they deferred handler
    /// jobs, which the leader runs first) waits for I/O, timers or wakes. `Some` once the
    /// reactor has stopped.
    ///
    /// `now` is the clock as the caller just read it, if it did.
    fn turn(&mut self, now: Option<Instant>) -> Option<io::Result<()>> {
        let turn_time = timer::TurnTime::start(now.unwrap_or_else(Instant::now));
        let ran = self.tasks.run_ready();
        drop(turn_time);
        self.connections_ended(ran.ended);
        if ran.deferred {
            // The leader runs the handlers just deferred, then turns again: the tasks
            // their responses wake first, then the rest of this turn's ready tasks.
            return None;
        }
        if self.drain_deadline.is_some() && self.connections == 0 {
            tracing::info!("all connections drained");
            return Some(Ok(()));
        }
        let now = Instant::now();
        if let Some(deadline) = self.drain_deadline {
            if now >= deadline {
                tracing::warn!(
                    connections = self.connections,
                    "drain timeout passed; closing the remaining connections"
                );
                return Some(Ok(()));
            }
        }
        // No handler waits here: `run_ready` returns (above) after any poll that deferred
        // one, and reaches this look at the sockets after at most `TASK_POLLS_PER_IO_CHECK`
        // polls however many connections keep deferring handlers. (Skipping the look while
        // handlers were deferred once starved every other connection, accepts and timers
        // included: 50 connections pipelining requests they never read held new clients'
        // handshakes for seconds.)
        let timeout = self.poll_timeout(now);
        self.looks += 1;
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err(e)),
        }
        self.handle.run_queue.clear_notified();
        let mut accept = std::mem::take(&mut self.accept_again);
        let first_listener = usize::MAX - 1 - self.listeners.len();
        for event in self.events.iter() {
            let token = event.token();
            if token == WAKER_TOKEN {
                continue;
            }
            if token.0 >= first_listener {
                accept = true;
            } else {
                let closed = event.is_read_closed() || event.is_error();
                let writable = event.is_writable() || event.is_write_closed() || closed;
                self.tasks
                    .mark_io_ready(token.0, event.is_readable() || closed, writable, closed);
            }
        }
        let now = Instant::now();
        self.handle.timers.fire_expired(now);
        if self.handle.is_shutting_down() && self.drain_deadline.is_none() {
            self.begin_drain(now);
        }
        let mut asked = false;
        if self.handle.resume_accept.load(Ordering::Acquire) {
            self.handle.resume_accept.store(false, Ordering::Release);
            asked = true;
        }
        if let Some(until) = self.accept_paused_until {
            if now >= until {
                self.accept_paused_until = None;
                accept = true;
            }
        }
        if accept || asked {
            self.accept_ready(asked);
        }
        None
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if self.tasks.has_ready()
            || self.accept_again
            || self.handle.run_queue.prepare_to_sleep()
            || self.handle.resume_accept.load(Ordering::Acquire)
        {
            return Some(Duration::ZERO);
        }
        let mut timeout = self.handle.timers.next_timeout(now);
        for at in [self.accept_paused_until, self.drain_deadline]
            .into_iter()
            .flatten()
        {
            let left = at.saturating_duration_since(now) + Duration::from_millis(1);
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        timeout
    }

    /// Stops accepting (the listening sockets close, so new connections are refused) and
    /// wakes every task so that connections can begin their graceful shutdown.
    fn begin_drain(&mut self, now: Instant) {
        tracing::info!(
            connections = self.connections,
            "shutting down: no longer accepting, draining connections"
        );
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
        self.drain_deadline = Some(now + self.config.drain_timeout);
        self.tasks.mark_all_ready();
    }

    /// Accepts until the listeners would block, the connection limit is reached, the
    /// process is out of descriptors, or [`ACCEPT_BATCH`] connections came in a row (then
    /// it goes on at the next turn). With several reactors, one that holds more than its
    /// share of connections wakes the least-loaded one to accept instead — unless it was
    /// itself `asked` to accept by another (so the backlog is never left to nobody).
    fn accept_ready(&mut self, asked: bool) {
        if self.drain_deadline.is_some() || self.accept_paused_until.is_some() {
            return;
        }
        let mut accepted = 0;
        for index in 0..self.listeners.len() {
            loop {
                if accepted == ACCEPT_BATCH {
                    self.accept_again = true;
                    return;
                }
                if self.config.shared_listeners && !asked && self.leave_to_another() {
                    return;
                }
                if !self.shared.reserve() && !self.wait_for_room(asked) {
                    return;
                }
                // A place under `max_connections` is held from here: `start_connection`
                // keeps it, every other way out gives it back.
                match self.listeners[index].socket.accept() {
                    Ok((socket, peer)) => {
                        accepted += 1;
                        self.start_connection(index, socket, peer);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.shared.release(1);
                        break;
                    }
                    Err(e) if is_transient_accept_error(&e) => {
                        self.shared.release(1);
                        continue;
                    }
                    Err(e) => {
                        self.shared.release(1);
                        // EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener stays readable, so
                        // retrying now would spin. Keep serving, try again a little later.
                        tracing::error!(
                            error = %e,
                            backoff_ms = ACCEPT_BACKOFF.as_millis() as u64,
                            "accept failed; pausing accepts"
                        );
                        self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        return;
                    }
                }
            }
        }
    }

    /// Whether this reactor holds more than its share of connections; if so, wakes the
    /// least-loaded reactor to accept in its place.
    fn leave_to_another(&self) -> bool {
        let Some(reactors) = self.shared.reactors.get() else {
            return false;
        };
        let Some(least) = reactors
            .iter()
            .min_by_key(|r| r.open.load(Ordering::Relaxed))
        else {
            return false;
        };
        let fewest = least.open.load(Ordering::Relaxed);
        if self.connections <= fewest + BALANCE_SLACK + fewest / 8 {
            return false;
        }
        least.resume_accepting();
        true
    }

    /// `max_connections` are open (on all reactors together): accepting pauses until one
    /// ends, and meanwhile the longest-idle connection here makes room. `true` if a place
    /// freed up after all (and is now held).
    /// A reactor with no idle connection to close asks the others (unless it was itself
    /// `asked` by one, so that they do not ask each other in circles).
    fn wait_for_room(&mut self, asked: bool) -> bool {
        if self.shared.wait_for_room() {
            return true;
        }
        if !self.accept_full {
            tracing::warn!(
                limit = self.shared.max_connections,
                "connection limit reached; accepting pauses until one closes"
            );
        }
        self.accept_full = true;
        // As nginx: the longest-idle keep-alive connection makes room, one at a time
        // (accepting resumes when it has closed) — but only for a connection that waits:
        // reaching the limit alone closes nothing.
        if !self.evicting && self.backlog_waiting() {
            if self.tasks.evict_longest_idle() {
                self.evicting = true;
            } else if !asked && self.config.shared_listeners {
                let me = self.handle.index;
                for other in self.shared.reactors.get().into_iter().flatten() {
                    if other.index != me {
                        other.resume_accepting();
                    }
                }
            }
        }
        false
    }

    /// Whether a connection waits in a listener's backlog (a zero-timeout `poll(2)`; only
    /// at the connection limit, where accepting cannot tell).
    fn backlog_waiting(&self) -> bool {
        self.listeners
            .iter()
            .any(|listener| has_pending_connection(&listener.socket))
    }

    fn start_connection(&mut self, listener: usize, mut socket: TcpStream, peer: SocketAddr) {
        let place = if self.shared.per_ip_at_accept {
            let Some(place) = PeerPlace::take(
                &self.shared.per_ip,
                peer.ip(),
                self.shared.max_connections_per_ip,
            ) else {
                tracing::info!(
                    %peer,
                    limit = self.shared.max_connections_per_ip,
                    "closing new connection: too many from this address"
                );
                self.shared.release(1);
                return;
            };
            Some(place)
        } else {
            None
        };
        let listen_addr = self.listeners[listener].local_addr;
        let local_addr = if listen_addr.ip().is_unspecified() {
            socket.local_addr().unwrap_or(listen_addr)
        } else {
            listen_addr
        };
        if let Err(error) = socket.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
        let key = self.tasks.next_key();
        // Registered under the task's key before anything can make it ready, and the task
        // is polled right below, so a request already in the socket is never missed.
        if let Err(error) = self.poll.registry().register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::error!(%error, %peer, "cannot register accepted socket");
            return;
        }
        let Some(new_connection) = self.new_connection.as_mut() else {
            return;
        };
        let readiness = Readiness::new();
        let socket = ReadyStream {
            socket,
            readiness: readiness.clone(),
            _peer: place,
        };
        let future = new_connection(socket, peer, local_addr);
        self.connections += 1;
        self.handle.open.store(self.connections, Ordering::Relaxed);
        if self.tasks.start_io(future, readiness) {
            self.connections_ended(1);
        }
    }

    /// Counts connection tasks that ended, and resumes accepting below the limit.
    fn connections_ended(&mut self, ended: usize) {
        if ended == 0 {
            return;
        }
        self.connections -= ended;
        self.handle.open.store(self.connections, Ordering::Relaxed);
        self.shared.release(ended);
        self.evicting = false;
        if self.accept_full {
            self.accept_full = false;
            self.accept_again = true;
            tracing::info!("below the connection limit again; accepting resumes");
        }
    }
}

/// Registers a listener shared with other reactors: `EPOLLEXCLUSIVE` wakes one (or a few)
/// of the reactors sleeping in `epoll_wait` for a new connection instead of all of them,
/// and reactors that are busy find the readiness at their next poll. Edge-triggered like
/// every mio registration. Falls back to a plain registration where the kernel refuses the
/// flag (before Linux 4.5): every reactor is woken then, and all but one find nothing.
#[cfg(target_os = "linux")]
fn register_exclusive(poll: &Poll, socket: &mut TcpListener, token: Token) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32,
        u64: token.0 as u64,
    };
    // SAFETY: both descriptors are open for the duration of the call (the poll and the
    // socket are borrowed), and `event` is a valid epoll_event that the kernel only reads.
    let added = unsafe {
        libc::epoll_ctl(
            poll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            socket.as_raw_fd(),
            &mut event,
        )
    };
    if added == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    tracing::warn!(%error, "EPOLLEXCLUSIVE refused; every reactor wakes for each connection");
    poll.registry().register(socket, token, Interest::READABLE)
}

#[cfg(not(target_os = "linux"))]
fn register_exclusive(poll: &Poll, socket: &mut TcpListener, token: Token) -> io::Result<()> {
    poll.registry().register(socket, token, Interest::READABLE)
}

/// Errors that concern only the one connection being accepted.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::PermissionDenied
    )
}

/// Whether a connection waits in the listener's backlog (no system call is made unless
/// the server is at `max_connections`).
fn has_pending_connection(listener: &TcpListener) -> bool {
    use std::os::fd::AsRawFd;
    let mut poll_fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll_fd` is a valid, initialised pollfd that lives across the call, the
    // count passed is 1, and a zero timeout makes the call return at once.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, 0) };
    ready > 0 && poll_fd.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// After a write would block, the next one waits for the reactor to see the socket
    /// writable again, even once the kernel would take it.
    #[test]
    fn a_write_after_would_block_waits_for_a_writable_event() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut peer =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let (accepted, _) = listener.accept().expect("accept");
        accepted.set_nonblocking(true).expect("nonblocking");
        let mut stream = ReadyStream {
            socket: TcpStream::from_std(accepted),
            readiness: Readiness::new(),
            _peer: None,
        };
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0;
        loop {
            match stream.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        let mut scratch = vec![0u8; 1 << 20];
        let mut taken = 0;
        while taken < written {
            taken += peer.read(&mut scratch).expect("peer read");
        }
        let err = stream
            .write(b"x")
            .expect_err("a write before a writable event");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // The kernel itself would have taken it.
        assert_eq!(stream.socket.write(b"x").expect("raw write"), 1);
        stream.readiness.set_writable();
        assert_eq!(stream.write(b"y").expect("write after the event"), 1);
        assert_eq!(
            stream
                .write_vectored(&[io::IoSlice::new(b"z")])
                .expect("vectored"),
            1
        );
    }
}
