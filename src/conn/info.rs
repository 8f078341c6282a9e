//! What a handler may know about the connection its request came on.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use super::proxy::ClientAddrs;

/// The HTTP version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 (or 1.0).
    Http1,
    /// HTTP/2, negotiated by ALPN `h2` or by prior knowledge on a plain listener (h2c).
    Http2,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        })
    }
}

/// The TLS version a connection negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

#[derive(Debug)]
struct Inner {
    peer_addr: SocketAddr,
    balancer_addr: Option<SocketAddr>,
    local_addr: SocketAddr,
    protocol: Protocol,
    tls_version: Option<TlsVersion>,
    server_name: Option<Box<str>>,
    alpn: Option<Box<[u8]>>,
    peer_certificates: Option<Box<[CertificateDer<'static>]>>,
    reactor: usize,
}

/// Facts about the connection a request arrived on, handed to every handler call.
/// Cloning is cheap (one reference count).
///
/// ```no_run
/// use portcullis::{Body, ConnectionInfo, Request, Response};
///
/// fn handler(_req: Request, info: ConnectionInfo) -> Response {
///     Response::new(Body::from(format!(
///         "{} over {} (TLS {:?}, SNI {:?})\n",
///         info.peer_addr(),
///         info.protocol(),
///         info.tls_version(),
///         info.server_name(),
///     )))
/// }
/// ```
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    inner: Arc<Inner>,
}

impl ConnectionInfo {
    pub(crate) fn new(
        addrs: ClientAddrs,
        local_addr: SocketAddr,
        protocol: Protocol,
        tls: Option<&rustls::ServerConnection>,
        reactor: usize,
    ) -> ConnectionInfo {
        let tls_version = tls
            .and_then(|tls| tls.protocol_version())
            .and_then(|version| match version {
                rustls::ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
                rustls::ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
                _ => None,
            });
        ConnectionInfo {
            inner: Arc::new(Inner {
                peer_addr: addrs.client,
                balancer_addr: addrs.balancer,
                local_addr,
                protocol,
                tls_version,
                server_name: tls.and_then(|tls| tls.server_name()).map(Into::into),
                alpn: tls.and_then(|tls| tls.alpn_protocol()).map(Into::into),
                peer_certificates: tls
                    .and_then(|tls| tls.peer_certificates())
                    .filter(|chain| !chain.is_empty())
                    .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect()),
                reactor,
            }),
        }
    }

    /// The client's address. On a listener with the
    /// [PROXY protocol](crate::Server::proxy_protocol), the client's own address from the
    /// load balancer's header (the TCP peer is then [`balancer_addr`](Self::balancer_addr)).
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer_addr
    }

    /// The load balancer's address (the TCP peer) when the connection came with a PROXY
    /// header, `None` when the client connected directly. After a header that names no
    /// client (a v2 `LOCAL` command — the balancer's health check — or v1 `UNKNOWN`),
    /// [`peer_addr`](Self::peer_addr) is this same address.
    ///
    /// ```no_run
    /// use portcullis::{Body, ConnectionInfo, Request, Response};
    ///
    /// fn handler(_req: Request, info: ConnectionInfo) -> Response {
    ///     let via = match info.balancer_addr() {
    ///         Some(balancer) => format!(" via {balancer}"),
    ///         None => String::new(),
    ///     };
    ///     Response::new(Body::from(format!("client {}{via}\n", info.peer_addr())))
    /// }
    /// ```
    pub fn balancer_addr(&self) -> Option<SocketAddr> {
        self.inner.balancer_addr
    }

    /// The server's address this connection was accepted on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// HTTP/1.1 or HTTP/2.
    pub fn protocol(&self) -> Protocol {
        self.inner.protocol
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.inner.tls_version.is_some()
    }

    /// The negotiated TLS version, `None` on a plain connection.
    pub fn tls_version(&self) -> Option<TlsVersion> {
        self.inner.tls_version
    }

    /// The server name the client asked for (SNI, in lower case), if it sent one. The
    /// certificate the connection got is the one configured for this name with
    /// [`TlsConfig::with_sni`](crate::TlsConfig::with_sni), or the default certificate
    /// when the name has none (or the client sent no name).
    pub fn server_name(&self) -> Option<&str> {
        self.inner.server_name.as_deref()
    }

    /// The ALPN protocol identifier negotiated (`b"h2"`, `b"http/1.1"`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.inner.alpn.as_deref()
    }

    /// The client's certificate chain (leaf first, DER), verified against the CA given to
    /// [`TlsConfig::require_client_cert`](crate::TlsConfig::require_client_cert) or
    /// [`request_client_cert`](crate::TlsConfig::request_client_cert); `None` when the
    /// client sent no certificate (or the connection is not TLS, or the server does not
    /// ask for one). On a resumed TLS session it is the chain verified at the first
    /// handshake.
    ///
    /// ```no_run
    /// use portcullis::{http, Body, ConnectionInfo, Request, Response};
    ///
    /// fn handler(_req: Request, info: ConnectionInfo) -> Response {
    ///     match info.peer_certificates() {
    ///         Some(chain) => Response::new(Body::from(format!(
    ///             "hello, holder of a {}-byte client certificate\n",
    ///             chain[0].len()
    ///         ))),
    ///         None => http::Response::builder()
    ///             .status(401)
    ///             .body(Body::from("a client certificate is needed\n"))
    ///             .unwrap_or_default(),
    ///     }
    /// }
    /// ```
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.inner.peer_certificates.as_deref()
    }

    /// Which of the server's reactors serves this connection, from 0 to
    /// [`ServerHandle::reactors`](crate::ServerHandle::reactors) − 1 (see
    /// [`Server::reactors`](crate::Server::reactors)). A connection stays on one reactor
    /// for its whole life.
    ///
    /// ```no_run
    /// use portcullis::{Body, ConnectionInfo, Request, Response};
    ///
    /// fn handler(_req: Request, info: ConnectionInfo) -> Response {
    ///     Response::new(Body::from(format!("served by reactor {}\n", info.reactor())))
    /// }
    /// ```
    pub fn reactor(&self) -> usize {
        self.inner.reactor
    }
}
