//! The reactor: one thread that owns a `mio::Poll`, accepts TCP connections, drives every
//! connection's state machine as a task, and keeps the deadlines.
//!
//! A byte's path starts here: a listener becomes readable, [`Reactor::accept_ready`] takes
//! the socket, registers it under the token of the task that will own it, and polls that
//! task once at once (the request may already be in the socket). From then on every
//! readiness event for the token wakes the task, and the task retries its I/O.

pub(crate) mod task;
pub(crate) mod timer;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use task::{BoxFuture, RunQueue, TaskId};
use timer::TimerQueue;

/// Token of the waker that interrupts `poll` for wakes from other threads.
const WAKER_TOKEN: Token = Token(usize::MAX);

/// How long accepting pauses after the process ran out of file descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How many rounds of ready tasks run before the reactor looks at the sockets again.
const TASK_ROUNDS_PER_POLL: usize = 32;

fn listener_token(index: usize) -> Token {
    Token(usize::MAX - 1 - index)
}

/// Builds the task that serves one accepted connection: socket, peer address, local address.
pub(crate) type ConnectionFactory =
    Box<dyn FnMut(TcpStream, SocketAddr, SocketAddr) -> BoxFuture + Send>;

/// State the reactor shares with the outside: the shutdown flag and the run queue.
pub(crate) struct ReactorHandle {
    shutdown: AtomicBool,
    pub(crate) run_queue: Arc<RunQueue>,
    pub(crate) timers: Arc<TimerQueue>,
}

impl ReactorHandle {
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

struct Task {
    id: Arc<TaskId>,
    waker: Waker,
    future: BoxFuture,
    /// Connection tasks count against `max_connections` and keep a draining reactor alive.
    is_connection: bool,
}

struct Listener {
    socket: TcpListener,
    local_addr: SocketAddr,
}

/// Settings the reactor itself enforces.
pub(crate) struct ReactorConfig {
    pub(crate) max_connections: usize,
    pub(crate) drain_timeout: Duration,
}

/// The event loop. Create with [`Reactor::new`], then [`Reactor::run`] until shutdown.
pub(crate) struct Reactor {
    poll: Poll,
    listeners: Vec<Listener>,
    tasks: Slab<Task>,
    handle: Arc<ReactorHandle>,
    config: ReactorConfig,
    new_connection: Option<ConnectionFactory>,
    connections: usize,
    /// Set when `max_connections` stopped accepting; cleared when a connection ends.
    accept_full: bool,
    /// Set when a connection closed below the limit: the backlog may hold connections
    /// whose readiness edge was consumed while accepting was paused.
    accept_again: bool,
    /// Set after EMFILE/ENFILE: accepting resumes at this instant.
    accept_paused_until: Option<Instant>,
    drain_deadline: Option<Instant>,
    /// Tasks made ready by I/O events, to poll next.
    ready: Vec<Arc<TaskId>>,
    /// Scratch buffers of `run_tasks`.
    polling: Vec<Arc<TaskId>>,
    spawned: Vec<BoxFuture>,
}

impl Reactor {
    /// Creates the poll, registers the listeners (made non-blocking).
    pub(crate) fn new(
        listeners: Vec<std::net::TcpListener>,
        config: ReactorConfig,
    ) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
        let run_queue = RunQueue::new(waker);
        let timers = TimerQueue::new(run_queue.clone());
        let mut registered = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            listener.set_nonblocking(true)?;
            let local_addr = listener.local_addr()?;
            let mut socket = TcpListener::from_std(listener);
            poll.registry()
                .register(&mut socket, listener_token(index), Interest::READABLE)?;
            registered.push(Listener { socket, local_addr });
        }
        Ok(Reactor {
            poll,
            listeners: registered,
            tasks: Slab::new(),
            handle: Arc::new(ReactorHandle {
                shutdown: AtomicBool::new(false),
                run_queue,
                timers,
            }),
            config,
            new_connection: None,
            connections: 0,
            accept_full: false,
            accept_again: false,
            accept_paused_until: None,
            drain_deadline: None,
            ready: Vec::new(),
            polling: Vec::new(),
            spawned: Vec::new(),
        })
    }

    pub(crate) fn handle(&self) -> &Arc<ReactorHandle> {
        &self.handle
    }

    /// Runs until shutdown has drained every connection (or the drain timeout passed).
    pub(crate) fn run(mut self, new_connection: ConnectionFactory) -> io::Result<()> {
        self.new_connection = Some(new_connection);
        let mut events = Events::with_capacity(1024);
        loop {
            self.run_tasks();
            if self.drain_deadline.is_some() && self.connections == 0 {
                tracing::info!("all connections drained");
                return Ok(());
            }
            let now = Instant::now();
            if let Some(deadline) = self.drain_deadline {
                if now >= deadline {
                    tracing::warn!(
                        connections = self.connections,
                        "drain timeout passed; closing the remaining connections"
                    );
                    return Ok(());
                }
            }
            let timeout = self.poll_timeout(now);
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.handle.run_queue.clear_notified();
            let mut accept = std::mem::take(&mut self.accept_again);
            for event in events.iter() {
                let token = event.token();
                if token == WAKER_TOKEN {
                    continue;
                }
                if token.0 >= usize::MAX - 1 - self.listeners.len() {
                    accept = true;
                } else if let Some(task) = self.tasks.get(token.0) {
                    if task.id.mark_queued() {
                        self.ready.push(task.id.clone());
                    }
                }
            }
            let now = Instant::now();
            self.handle.timers.fire_expired(now);
            if self.handle.is_shutting_down() && self.drain_deadline.is_none() {
                self.begin_drain(now);
            }
            if let Some(until) = self.accept_paused_until {
                if now >= until {
                    self.accept_paused_until = None;
                    accept = true;
                }
            }
            if accept {
                self.accept_ready();
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.ready.is_empty() || self.accept_again || self.handle.run_queue.prepare_to_sleep() {
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
        for (_, task) in self.tasks.iter() {
            if task.id.mark_queued() {
                self.ready.push(task.id.clone());
            }
        }
    }

    /// Accepts until the listeners would block, the connection limit is reached, or the
    /// process is out of descriptors.
    fn accept_ready(&mut self) {
        if self.drain_deadline.is_some() || self.accept_paused_until.is_some() {
            return;
        }
        for index in 0..self.listeners.len() {
            loop {
                if self.connections >= self.config.max_connections {
                    if !self.accept_full {
                        tracing::warn!(
                            limit = self.config.max_connections,
                            "connection limit reached; accepting pauses until one closes"
                        );
                    }
                    self.accept_full = true;
                    return;
                }
                match self.listeners[index].socket.accept() {
                    Ok((socket, peer)) => self.start_connection(index, socket, peer),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if is_transient_accept_error(&e) => continue,
                    Err(e) => {
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

    fn start_connection(&mut self, listener: usize, mut socket: TcpStream, peer: SocketAddr) {
        let listen_addr = self.listeners[listener].local_addr;
        let local_addr = if listen_addr.ip().is_unspecified() {
            socket.local_addr().unwrap_or(listen_addr)
        } else {
            listen_addr
        };
        if let Err(error) = socket.set_nodelay(true) {
            tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
        }
        let key = self.tasks.vacant_key();
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
        let future = new_connection(socket, peer, local_addr);
        self.connections += 1;
        self.start_task(future, true);
    }

    /// Adds a task under the slab's next vacant key and polls it once.
    fn start_task(&mut self, future: BoxFuture, is_connection: bool) {
        let key = self.tasks.vacant_key();
        let id = TaskId::new(key, &self.handle.run_queue);
        self.tasks.insert(Task {
            waker: Waker::from(id.clone()),
            id,
            future,
            is_connection,
        });
        self.poll_task(key);
    }

    /// Polls every ready and newly spawned task, a bounded number of rounds.
    fn run_tasks(&mut self) {
        // Both buffers are kept across calls, so the hot path does not allocate.
        let mut ready = std::mem::take(&mut self.polling);
        let mut spawned = std::mem::take(&mut self.spawned);
        for _ in 0..TASK_ROUNDS_PER_POLL {
            self.handle.run_queue.take_spawned(&mut spawned);
            for future in spawned.drain(..) {
                self.start_task(future, false);
            }
            std::mem::swap(&mut ready, &mut self.ready);
            self.handle.run_queue.take_ready(&mut self.ready);
            ready.append(&mut self.ready);
            if ready.is_empty() {
                break;
            }
            for id in ready.drain(..) {
                id.unqueue();
                let current = self
                    .tasks
                    .get(id.key)
                    .is_some_and(|task| Arc::ptr_eq(&task.id, &id));
                if current {
                    self.poll_task(id.key);
                }
            }
        }
        ready.clear();
        self.polling = ready;
        self.spawned = spawned;
    }

    fn poll_task(&mut self, key: usize) {
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let mut cx = Context::from_waker(&task.waker);
        if task.future.as_mut().poll(&mut cx).is_pending() {
            return;
        }
        let task = self.tasks.remove(key);
        if task.is_connection {
            self.connections -= 1;
            if self.accept_full && self.connections < self.config.max_connections {
                self.accept_full = false;
                self.accept_again = true;
                tracing::info!("below the connection limit again; accepting resumes");
            }
        }
    }
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
