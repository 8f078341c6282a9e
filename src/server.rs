//! The server builder: bind, TLS, protocols, limits, serve, and the shutdown handle.

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Socket, Type};

use crate::conn::{self, ProxyProtocol, ServerContext};
use crate::reactor::leader::{BlockingRoutes, Monitor};
use crate::reactor::{Reactor, ReactorConfig, ReactorHandle, Shared};
use crate::response::IntoResponse;
use crate::service::{Request, Service};
use crate::worker::{PoolConfig, PoolStats, WorkerPool};
use crate::ConnectionInfo;
use crate::{Limits, TlsConfig};

/// Pending connections the kernel queues per listener before `accept` (nginx uses 511 on
/// Linux; the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 1024;

/// Which HTTP versions a server speaks.
///
/// With TLS this is the ALPN list offered: `h2` and `http/1.1`, or one of them (a client
/// that offers ALPN but none of these fails the handshake with `no_application_protocol`;
/// a client that offers no ALPN at all gets HTTP/1.1, or HTTP/2 under `Http2Only`). On a
/// plain listener, `Http1AndHttp2` serves HTTP/1.1 and, to clients that open with the
/// HTTP/2 preface, h2c with prior knowledge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocols {
    /// HTTP/2 and HTTP/1.1, chosen per connection (the default).
    #[default]
    Http1AndHttp2,
    /// HTTP/1.1 only.
    Http1Only,
    /// HTTP/2 only.
    Http2Only,
}

impl Protocols {
    pub(crate) fn alpn_ids(self) -> Vec<Vec<u8>> {
        match self {
            Protocols::Http1AndHttp2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Protocols::Http1Only => vec![b"http/1.1".to_vec()],
            Protocols::Http2Only => vec![b"h2".to_vec()],
        }
    }
}

/// An HTTP server that runs blocking handlers. Build it, then [`serve`](Server::serve)
/// (blocks) or [`spawn`](Server::spawn) (returns a [`ServerHandle`]).
///
/// ```no_run
/// use portcullis::{Body, Response, Server, TlsConfig};
///
/// fn main() -> std::io::Result<()> {
///     let tls = TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
///     Server::bind("127.0.0.1:8443")?
///         .tls(tls)
///         .serve(|_req, _info| Response::new(Body::from("Hello, World!\n")))
/// }
/// ```
///
/// Without [`tls`](Server::tls) the server speaks plain HTTP/1.1 and h2c.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<TcpListener>,
    tls: Option<TlsConfig>,
    protocols: Protocols,
    limits: Limits,
    proxy: Option<ProxyProtocol>,
    reuse_port: bool,
    shutdown_on_signals: bool,
    /// Reactor count asked for; `None`: one per available core.
    reactors: Option<usize>,
}

impl Server {
    /// Binds every address `addrs` resolves to (so `"localhost:8443"` listens on both
    /// `127.0.0.1` and `::1`). IPv6 sockets are IPv6-only, so `[::]` and `0.0.0.0` can be
    /// bound side by side. Port 0 picks a free port; see [`Server::local_addrs`].
    ///
    /// ```
    /// let server = portcullis::Server::bind("127.0.0.1:0")?.also_bind("[::1]:0");
    /// # let _ = server;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn bind(addrs: impl ToSocketAddrs) -> io::Result<Server> {
        Server::new().also_bind(addrs)
    }

    /// A server with no listener yet: add them with [`also_bind`](Server::also_bind), after
    /// options that apply to binding ([`reuse_port`](Server::reuse_port)).
    ///
    /// ```
    /// let server = portcullis::Server::new().reuse_port(true).also_bind("127.0.0.1:0")?;
    /// # let _ = server;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new() -> Server {
        Server::from_listeners(Vec::new())
    }

    /// Sets `SO_REUSEPORT` on the listeners [`also_bind`](Server::also_bind) creates from
    /// now on, so that several processes (of the same user) can listen on the same port:
    /// the kernel spreads new connections among them. A new process can then start beside
    /// the old one before the old one stops (a rolling restart, see the README). Off by
    /// default: without it, a second process on the port fails to bind — which is what you
    /// want when it was started by mistake.
    ///
    /// Every process on the port must set it; bind after setting it (a listener bound
    /// before, by [`Server::bind`], already had its chance). When a listener closes, the
    /// connections still in its accept queue are reset unless the kernel migrates them
    /// (`sysctl net.ipv4.tcp_migrate_req=1`, Linux 5.14+).
    ///
    /// ```
    /// use portcullis::Server;
    ///
    /// let first = Server::new().reuse_port(true).also_bind("127.0.0.1:0")?;
    /// let addr = first.local_addrs()[0];
    /// let second = Server::new().reuse_port(true).also_bind(addr)?; // the same port
    /// assert!(Server::bind(addr).is_err()); // not without SO_REUSEPORT
    /// # let _ = second;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reuse_port(mut self, on: bool) -> Server {
        self.reuse_port = on;
        self
    }

    /// Adds the listeners for every address `addrs` resolves to.
    pub fn also_bind(mut self, addrs: impl ToSocketAddrs) -> io::Result<Server> {
        let mut bound = 0;
        for addr in addrs.to_socket_addrs()? {
            self.listeners.push(bind_listener(addr, self.reuse_port)?);
            bound += 1;
        }
        if bound == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the address resolved to nothing",
            ));
        }
        Ok(self)
    }

    /// Serves on listeners bound elsewhere (for example inherited from systemd).
    ///
    /// ```
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let server = portcullis::Server::from_listeners(vec![listener]);
    /// # let _ = server;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_listeners(listeners: Vec<TcpListener>) -> Server {
        Server {
            listeners,
            tls: None,
            protocols: Protocols::default(),
            limits: Limits::default(),
            proxy: None,
            reuse_port: false,
            shutdown_on_signals: true,
            reactors: None,
        }
    }

    /// Serves on the listening sockets a supervisor passed to this process (systemd's
    /// socket activation: `LISTEN_FDS` descriptors from 3 on, for the process named by
    /// `LISTEN_PID`). The supervisor holds the socket, so a restart refuses no connection:
    /// they wait in its queue. See [`listen_fds`](crate::listen_fds) for the rules.
    ///
    /// ```no_run
    /// use portcullis::{Body, Response, Server};
    ///
    /// fn main() -> std::io::Result<()> {
    ///     Server::from_listen_fds()?.serve(|_req, _info| Response::new(Body::from("hi\n")))
    /// }
    /// ```
    pub fn from_listen_fds() -> io::Result<Server> {
        let listeners = crate::activation::listen_fds()?;
        if listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no listening socket was passed to this process (LISTEN_FDS is not set)",
            ));
        }
        Ok(Server::from_listeners(listeners))
    }

    /// Expects a PROXY protocol header (v1 or v2) from a load balancer on every connection
    /// of this server's listeners, as [`ProxyProtocol`] describes; handlers then see the
    /// client's address in [`ConnectionInfo::peer_addr`]. Listeners that need different
    /// rules belong to another `Server`.
    ///
    /// ```
    /// use portcullis::{ProxyProtocol, Server};
    ///
    /// let server = Server::bind("127.0.0.1:0")?
    ///     .proxy_protocol(ProxyProtocol::trusting(["127.0.0.1/32"]).expect("a network"));
    /// # let _ = server;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn proxy_protocol(mut self, proxy: ProxyProtocol) -> Server {
        self.proxy = Some(proxy);
        self
    }

    /// Serves HTTPS with this certificate and key (plain HTTP without it).
    pub fn tls(mut self, tls: TlsConfig) -> Server {
        self.tls = Some(tls);
        self
    }

    /// Which HTTP versions to speak; both by default.
    pub fn protocols(mut self, protocols: Protocols) -> Server {
        self.protocols = protocols;
        self
    }

    /// Replaces every timeout and limit.
    pub fn limits(mut self, limits: Limits) -> Server {
        self.limits = limits;
        self
    }

    /// Shorthand for setting [`Limits::max_workers`].
    pub fn max_workers(mut self, max_workers: usize) -> Server {
        self.limits.max_workers = max_workers.max(1);
        self
    }

    /// How many reactors serve connections: by default one per core the process may run
    /// on (`std::thread::available_parallelism`, which follows `taskset` and cgroup CPU
    /// limits); 0 also means that. A reactor is the unit of protocol work — TLS
    /// handshakes and records, HTTP/1 parsing, HTTP/2 framing — and each keeps its
    /// connections for their whole life; 1 puts all of that on one thread at a time, as
    /// before 0.2. Every limit ([`Limits::max_connections`], the per-address cap, the
    /// workers, the queue) counts across all reactors together.
    ///
    /// ```
    /// use portcullis::{Body, Response, Server};
    ///
    /// let handle = Server::bind("127.0.0.1:0")?
    ///     .reactors(2)
    ///     .spawn(|_req, info| Response::new(Body::from(format!("reactor {}", info.reactor()))))?;
    /// assert_eq!(handle.reactors(), 2);
    /// handle.shutdown()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reactors(mut self, count: usize) -> Server {
        self.reactors = (count > 0).then_some(count);
        self
    }

    fn reactor_count(&self) -> usize {
        self.reactors.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// The bound addresses (with the real port when port 0 was asked for).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|listener| listener.local_addr().ok())
            .collect()
    }

    /// Whether [`serve`](Server::serve) shuts down gracefully on `SIGINT` (Ctrl-C) and
    /// `SIGTERM` (what systemd, Docker and Kubernetes send): on by default. See
    /// [`ServerHandle::shutdown_on_signals`]. Turn it off when the application handles
    /// these signals itself.
    ///
    /// ```
    /// let server = portcullis::Server::bind("127.0.0.1:0")?.shutdown_on_signals(false);
    /// # let _ = server;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown_on_signals(mut self, on: bool) -> Server {
        self.shutdown_on_signals = on;
        self
    }

    /// Serves `handler` on the calling thread until `SIGINT` or `SIGTERM`, then shuts
    /// down gracefully (see [`ServerHandle::shutdown`]) and returns `Ok(())`; a second
    /// signal ends the process at once. Use [`spawn`](Server::spawn) to keep the thread.
    pub fn serve<F, R>(self, handler: F) -> io::Result<()>
    where
        F: Fn(Request, ConnectionInfo) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        self.serve_service(handler)
    }

    /// Serves a [`Service`] on the calling thread, as [`serve`](Server::serve) does.
    pub fn serve_service<S: Service>(self, service: S) -> io::Result<()> {
        let on_signals = self.shutdown_on_signals;
        let handle = self.spawn_service(service)?;
        if on_signals {
            handle.shutdown_on_signals()?;
        }
        handle.join()
    }

    /// Starts serving `handler` on a background reactor thread.
    ///
    /// ```
    /// use portcullis::{Body, Response, Server};
    ///
    /// let handle = Server::bind("127.0.0.1:0")?
    ///     .spawn(|_req, _info| Response::new(Body::from("hi")))?;
    /// let addr = handle.local_addrs()[0];
    /// # let _ = addr;
    /// handle.shutdown()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn spawn<F, R>(self, handler: F) -> io::Result<ServerHandle>
    where
        F: Fn(Request, ConnectionInfo) -> R + Send + Sync + 'static,
        R: IntoResponse,
    {
        self.spawn_service(handler)
    }

    /// Starts serving a [`Service`] on a background reactor thread.
    ///
    /// Like Go's runtime, this raises the process's soft limit on open files
    /// (`RLIMIT_NOFILE`) to its hard limit, so that the default soft limit of 1024 does not
    /// cap the server at a thousand connections.
    pub fn spawn_service<S: Service>(self, service: S) -> io::Result<ServerHandle> {
        if self.listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the server has no listener",
            ));
        }
        let local_addrs = self.local_addrs();
        let count = self.reactor_count();
        let limits = self.limits;
        raise_open_file_limit();
        for listener in &self.listeners {
            limit_unsent_bytes(listener, limits.tcp_notsent_lowat);
        }
        // Behind a load balancer speaking the PROXY protocol every TCP peer is the
        // balancer: the connections count their clients' addresses (from the header)
        // instead of the reactors counting the peer at accept.
        let shared = Shared::new(
            limits.max_connections,
            limits.max_connections_per_ip,
            self.proxy.is_none(),
        );
        let client_limit = self.proxy.as_ref().map(|_| shared.address_limit());
        // Every reactor accepts on its own duplicate of every listener (the same socket).
        let mut listener_sets = Vec::with_capacity(count);
        for _ in 1..count {
            let set = self
                .listeners
                .iter()
                .map(TcpListener::try_clone)
                .collect::<io::Result<Vec<_>>>()?;
            listener_sets.push(set);
        }
        listener_sets.push(self.listeners);
        let mut reactors = Vec::with_capacity(count);
        for (index, listeners) in listener_sets.into_iter().enumerate() {
            reactors.push(Reactor::new(
                listeners,
                shared.clone(),
                ReactorConfig {
                    index,
                    shared_listeners: count > 1,
                    drain_timeout: limits.drain_timeout,
                },
            )?);
        }
        let handles: Vec<Arc<ReactorHandle>> =
            reactors.iter().map(|r| r.handle().clone()).collect();
        shared.set_reactors(handles.clone());
        let pool = WorkerPool::new(PoolConfig {
            max_workers: limits.max_workers.max(1),
            max_queued: limits.max_queued_requests,
            idle_timeout: limits.worker_idle_timeout,
        });
        let tls = self.tls.map(|tls| tls.for_protocols(self.protocols));
        let service: Arc<dyn Service> = Arc::new(service);
        let blocking_routes = Arc::new(BlockingRoutes::new());
        // One monitor thread watches every reactor's leader (see `reactor::leader`).
        let monitor = Monitor::new();
        let running = Arc::new(AtomicUsize::new(count));
        let mut threads = Vec::with_capacity(count);
        for reactor in reactors {
            // One context per reactor: the connection glue (timers, HTTP/2 stream
            // spawner, shutdown flag) belongs to the reactor the connection lives on;
            // the certificates, service, limits and pool are the same for all.
            let reactor_handle = reactor.handle().clone();
            let ctx = Arc::new(
                ServerContext::new(
                    tls.clone(),
                    self.protocols,
                    limits.clone(),
                    service.clone(),
                    pool.clone(),
                    reactor_handle.clone(),
                )
                .with_proxy_protocol(self.proxy.clone(), client_limit.clone()),
            );
            let thread_pool = pool.clone();
            let routes = blocking_routes.clone();
            let monitor = monitor.clone();
            let running = running.clone();
            let all = handles.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pc-wait-{}", reactor_handle.index))
                .spawn(move || {
                    let result = reactor.run(
                        Box::new(move |socket, peer, local| {
                            conn::serve(ctx.clone(), socket, peer, local)
                        }),
                        thread_pool.clone(),
                        routes,
                        monitor,
                    );
                    if let Err(error) = &result {
                        // Serving on fewer reactors than asked would hide the failure.
                        tracing::error!(%error, reactor = reactor_handle.index, "reactor failed; shutting down");
                        all.iter().for_each(|r| r.begin_shutdown());
                    }
                    if running.fetch_sub(1, Ordering::AcqRel) == 1 {
                        thread_pool.shutdown();
                    }
                    result
                });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(error) => {
                    handles.iter().for_each(|r| r.begin_shutdown());
                    return Err(error);
                }
            }
        }
        for addr in &local_addrs {
            tracing::info!(%addr, reactors = count, "listening");
        }
        Ok(ServerHandle {
            reactors: handles,
            pool,
            local_addrs,
            threads,
        })
    }
}

impl Default for Server {
    /// The same as [`Server::new`].
    fn default() -> Server {
        Server::new()
    }
}

/// Raises the soft limit on open files to the hard limit, as Go's runtime does since
/// Go 1.19: Linux's default soft limit of 1024 would cap the server at about a thousand
/// connections, far below [`Limits::max_connections`].
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` only writes to the valid, exclusively borrowed `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let soft = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `setrlimit` only reads the valid `limit`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        tracing::debug!(
            from = soft,
            to = limit.rlim_max,
            "raised the open-file limit"
        );
    }
}

/// Sets `TCP_NOTSENT_LOWAT` ([`Limits::tcp_notsent_lowat`]) on a listener: the
/// connections it accepts inherit it, so it costs no system call per connection.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn limit_unsent_bytes(listener: &TcpListener, bytes: Option<u32>) {
    let Some(bytes) = bytes else {
        return;
    };
    if let Err(error) = socket2::SockRef::from(listener).set_tcp_notsent_lowat(bytes) {
        let addr = listener.local_addr().ok();
        tracing::warn!(%error, ?addr, "cannot limit unsent bytes per connection (TCP_NOTSENT_LOWAT)");
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn limit_unsent_bytes(_listener: &TcpListener, _bytes: Option<u32>) {}

fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let bind = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(socket.into())
    };
    bind().map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// A running server. Dropping the handle begins a graceful shutdown without waiting.
pub struct ServerHandle {
    reactors: Vec<Arc<ReactorHandle>>,
    pool: WorkerPool,
    local_addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// The addresses the server listens on.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// How many reactors serve connections (see [`Server::reactors`]); a request's
    /// reactor is [`ConnectionInfo::reactor`].
    pub fn reactors(&self) -> usize {
        self.reactors.len()
    }

    /// Worker pool figures right now.
    pub fn worker_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Begins a graceful shutdown (as [`shutdown`](ServerHandle::shutdown)) when the
    /// process gets `SIGINT` or `SIGTERM`; a second signal ends the process at once with
    /// status 128 + the signal number (130, 143). Returns at once; [`join`](ServerHandle::join)
    /// then returns `Ok(())` when the server has drained. [`Server::serve`] does this
    /// itself.
    ///
    /// The handlers are installed process-wide on first use (`sigaction`), so every
    /// server that asked is shut down by the same signal.
    ///
    /// ```no_run
    /// use portcullis::{Body, Response, Server};
    ///
    /// let handle = Server::bind("127.0.0.1:8080")?
    ///     .spawn(|_req, _info| Response::new(Body::from("hi")))?;
    /// handle.shutdown_on_signals()?;
    /// handle.join()?; // returns after Ctrl-C, once in-flight requests are done
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shutdown_on_signals(&self) -> io::Result<()> {
        let reactors: Vec<_> = self.reactors.iter().map(Arc::downgrade).collect();
        crate::signals::on_shutdown_signal(Box::new(move || {
            for reactor in reactors.iter().filter_map(std::sync::Weak::upgrade) {
                reactor.begin_shutdown();
            }
        }))
    }

    /// Begins the graceful shutdown described at [`shutdown`](ServerHandle::shutdown)
    /// without waiting for it; [`join`](ServerHandle::join) waits.
    pub fn begin_shutdown(&self) {
        self.reactors.iter().for_each(|r| r.begin_shutdown());
    }

    /// Stops accepting (new connections are refused), lets in-flight requests finish —
    /// HTTP/2 connections get GOAWAY, HTTP/1 responses carry `Connection: close`, idle
    /// connections close at once — and returns when every connection has ended or the
    /// drain timeout ([`Limits::drain_timeout`]) has passed.
    pub fn shutdown(self) -> io::Result<()> {
        self.begin_shutdown();
        self.join()
    }

    /// Waits for the server to stop (after a shutdown from elsewhere, or forever): for
    /// every reactor to drain. The first reactor's error, if any, is returned.
    pub fn join(mut self) -> io::Result<()> {
        let mut outcome = Ok(());
        for thread in std::mem::take(&mut self.threads) {
            let result = match thread.join() {
                Ok(result) => result,
                Err(_) => Err(io::Error::other("a reactor thread panicked")),
            };
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    }
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addrs", &self.local_addrs)
            .field("reactors", &self.reactors.len())
            .field("workers", &self.pool.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.begin_shutdown();
        }
    }
}
