//! The PROXY protocol (versions 1 and 2): the header an L4 load balancer (HAProxy's
//! `send-proxy`/`send-proxy-v2`, an AWS NLB, …) writes at the start of a TCP connection to
//! say whose connection it relays.
//!
//! The header is read before TLS, under the handshake deadline, straight from the socket
//! on the reactor: no worker is involved. Bytes read past it (the start of the TLS
//! ClientHello or of an HTTP request) are handed to the next step unchanged.
//!
//! The parser is our own, about 200 lines: the format is small and fixed (a text line of
//! at most 107 bytes, or a 16-byte binary head and its length), and owning it lets the
//! reader ask the socket for no more than the header's own length, give every refusal a
//! precise reason, and cap the size at [`MAX_HEADER_BYTES`]. TLVs are skipped.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::task::Poll;

use bytes::Bytes;

use super::transport::{Socket, Transport};
use crate::reactor::timer::Deadline;

/// The 12-byte signature that starts a version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What starts a version 1 header.
const V1_PREFIX: &[u8] = b"PROXY ";

/// A version 1 header is one line of at most 107 bytes, CRLF included (the spec's bound).
const V1_MAX_BYTES: usize = 107;

/// A version 2 header's fixed part: signature, version/command, family, length.
const V2_HEAD_BYTES: usize = 16;

/// The largest header accepted, TLVs included. HAProxy's TLVs (ALPN, authority, unique ID,
/// TLS facts) and AWS's (VPC endpoint) fit in a few hundred bytes; the format allows 64 KiB,
/// which a peer could use to make every connection buffer that much.
pub(crate) const MAX_HEADER_BYTES: usize = 4096;

/// An IP network in CIDR notation: `10.0.0.0/8`, `2001:db8::/32`, or a single address
/// (`192.0.2.7`, the same as `/32` or `/128`).
///
/// ```
/// let net: portcullis::IpNetwork = "10.0.0.0/8".parse()?;
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(!net.contains("192.0.2.1".parse().unwrap()));
/// # Ok::<(), portcullis::InvalidNetwork>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`,
    /// what a dual-stack socket reports) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A string that is not an IP network in CIDR notation (see [`IpNetwork`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidNetwork {
    input: String,
}

impl fmt::Display for InvalidNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an IP network: expected ADDRESS or ADDRESS/PREFIX, like 10.0.0.0/8 or 2001:db8::/32",
            self.input
        )
    }
}

impl std::error::Error for InvalidNetwork {}

impl FromStr for IpNetwork {
    type Err = InvalidNetwork;

    fn from_str(s: &str) -> Result<IpNetwork, InvalidNetwork> {
        let invalid = || InvalidNetwork { input: s.into() };
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| invalid())?
            }
            Some(_) => return Err(invalid()),
        };
        if prefix > max {
            return Err(invalid());
        }
        Ok(IpNetwork { addr, prefix })
    }
}

/// The PROXY protocol on a server's listeners: which peers may send the header, and
/// whether it is required. Set with [`Server::proxy_protocol`](crate::Server::proxy_protocol).
///
/// With a header, [`ConnectionInfo::peer_addr`](crate::ConnectionInfo::peer_addr) (and the
/// access log) is the client's address from the header, and
/// [`ConnectionInfo::balancer_addr`](crate::ConnectionInfo::balancer_addr) the balancer's.
///
/// - Required (the default): every connection must come from a trusted network and start
///   with a header; any other connection is closed at once.
/// - [`optional`](ProxyProtocol::optional): a trusted peer may send a header or speak
///   directly; anyone else speaks directly, and a header from them is refused.
///
/// A refused, malformed, truncated or oversized header, or none in time (the handshake
/// deadline, [`Limits::handshake_timeout`](crate::Limits::handshake_timeout)), closes the
/// connection with a `tracing` event, before TLS and without a worker.
///
/// ```no_run
/// use portcullis::{Body, ProxyProtocol, Response, Server, TlsConfig};
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let tls = TlsConfig::from_pem_files("certs/localhost.crt", "certs/localhost.key")?;
///     Server::bind("0.0.0.0:8443")?
///         .tls(tls)
///         .proxy_protocol(ProxyProtocol::trusting(["10.0.0.0/8", "127.0.0.1"])?)
///         .serve(|_req, info| {
///             Response::new(Body::from(format!("hello, {}\n", info.peer_addr())))
///         })?;
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyProtocol {
    trusted: Vec<IpNetwork>,
    required: bool,
}

impl ProxyProtocol {
    /// Requires a header on every connection, accepted only from peers in `networks`
    /// (CIDR strings, see [`IpNetwork`]).
    ///
    /// ```
    /// let proxy = portcullis::ProxyProtocol::trusting(["10.0.0.0/8", "::1"])?;
    /// assert!(portcullis::ProxyProtocol::trusting(["10.0.0.0/33"]).is_err());
    /// # let _ = proxy;
    /// # Ok::<(), portcullis::InvalidNetwork>(())
    /// ```
    pub fn trusting<I>(networks: I) -> Result<ProxyProtocol, InvalidNetwork>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let trusted = networks
            .into_iter()
            .map(|net| net.as_ref().trim().parse())
            .collect::<Result<Vec<IpNetwork>, InvalidNetwork>>()?;
        Ok(ProxyProtocol {
            trusted,
            required: true,
        })
    }

    /// Also serves connections without a header (direct clients), as described at
    /// [`ProxyProtocol`].
    ///
    /// ```
    /// let proxy = portcullis::ProxyProtocol::trusting(["10.0.0.0/8"])?.optional();
    /// # let _ = proxy;
    /// # Ok::<(), portcullis::InvalidNetwork>(())
    /// ```
    pub fn optional(mut self) -> ProxyProtocol {
        self.required = false;
        self
    }

    /// The networks a header is accepted from.
    pub fn trusted_networks(&self) -> &[IpNetwork] {
        &self.trusted
    }

    /// Whether a connection without a header is closed.
    pub fn is_required(&self) -> bool {
        self.required
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }
}

/// What a header said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u8,
    /// Source and destination of the relayed connection; `None` for a v2 LOCAL command
    /// (the balancer's own health check), v1 `UNKNOWN`, and families with no IP address,
    /// where the socket's own addresses stand.
    pub(crate) addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Why a header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// The bytes do not start with either signature.
    Missing,
    /// A v1 line longer than 107 bytes.
    V1TooLong,
    /// A v1 line that is not `PROXY TCP4|TCP6|UNKNOWN src dst sport dport`.
    V1Malformed(&'static str),
    /// A v2 version other than 2, or a command other than LOCAL or PROXY.
    V2BadVersionOrCommand(u8),
    /// A v2 address family or transport that a TCP listener cannot have.
    V2BadFamily(u8),
    /// A v2 length too short for its address family.
    V2ShortAddresses { length: usize, needed: usize },
    /// Longer than [`MAX_HEADER_BYTES`].
    Oversized(usize),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Missing => {
                f.write_str("the connection does not start with a PROXY header")
            }
            HeaderError::V1TooLong => write!(f, "PROXY v1 line longer than {V1_MAX_BYTES} bytes"),
            HeaderError::V1Malformed(what) => write!(f, "malformed PROXY v1 line: {what}"),
            HeaderError::V2BadVersionOrCommand(byte) => {
                write!(f, "PROXY v2 header with version/command byte {byte:#04x}")
            }
            HeaderError::V2BadFamily(byte) => {
                write!(
                    f,
                    "PROXY v2 header with unusable family/transport byte {byte:#04x}"
                )
            }
            HeaderError::V2ShortAddresses { length, needed } => write!(
                f,
                "PROXY v2 header of {length} bytes cannot hold its {needed} bytes of addresses"
            ),
            HeaderError::Oversized(size) => write!(
                f,
                "PROXY v2 header of {size} bytes is over the {MAX_HEADER_BYTES}-byte limit"
            ),
        }
    }
}

/// How far parsing got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole header, and how many bytes it took.
    Complete(Header, usize),
    /// Read at most this many more bytes, then parse again. Never past a v2 header's end.
    NeedMore(usize),
}

/// Parses the header at the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let head = &buf[..buf.len().min(V2_SIGNATURE.len())];
    if head == &V2_SIGNATURE[..head.len()] {
        if buf.len() < V2_HEAD_BYTES {
            return Ok(Parsed::NeedMore(V2_HEAD_BYTES - buf.len()));
        }
        return parse_v2(buf);
    }
    let head = &buf[..buf.len().min(V1_PREFIX.len())];
    if head == &V1_PREFIX[..head.len()] {
        return parse_v1(buf);
    }
    Err(HeaderError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let window = &buf[..buf.len().min(V1_MAX_BYTES)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if buf.len() >= V1_MAX_BYTES {
            return Err(HeaderError::V1TooLong);
        }
        return Ok(Parsed::NeedMore(V1_MAX_BYTES - buf.len()));
    };
    match buf.get(cr + 1) {
        None => return Ok(Parsed::NeedMore(1)),
        Some(b'\n') => {}
        Some(_) => return Err(HeaderError::V1Malformed("CR not followed by LF")),
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..cr])
        .map_err(|_| HeaderError::V1Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    let addresses = match family {
        // The receiver ignores the rest of the line and uses the socket's addresses.
        "UNKNOWN" => None,
        "TCP4" | "TCP6" => {
            let mut next = |what| fields.next().ok_or(HeaderError::V1Malformed(what));
            let (src, dst) = (next("no source address")?, next("no destination address")?);
            let (sport, dport) = (next("no source port")?, next("no destination port")?);
            if fields.next().is_some() {
                return Err(HeaderError::V1Malformed("extra fields"));
            }
            let ip = |text: &str| -> Result<IpAddr, HeaderError> {
                let ip = if family == "TCP4" {
                    text.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    text.parse::<Ipv6Addr>().map(IpAddr::V6)
                };
                ip.map_err(|_| HeaderError::V1Malformed("bad address for the family"))
            };
            Some((
                SocketAddr::new(ip(src)?, v1_port(sport)?),
                SocketAddr::new(ip(dst)?, v1_port(dport)?),
            ))
        }
        _ => return Err(HeaderError::V1Malformed("unknown protocol family")),
    };
    Ok(Parsed::Complete(
        Header {
            version: 1,
            addresses,
        },
        cr + 2,
    ))
}

/// A decimal port, digits only (no sign, no leading zero but `0` itself).
fn v1_port(text: &str) -> Result<u16, HeaderError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(HeaderError::V1Malformed("bad port"));
    }
    text.parse()
        .map_err(|_| HeaderError::V1Malformed("port out of range"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let version_command = buf[12];
    let family_transport = buf[13];
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_HEAD_BYTES + length;
    if total > MAX_HEADER_BYTES {
        return Err(HeaderError::Oversized(total));
    }
    let local = match version_command {
        0x20 => true,
        0x21 => false,
        other => return Err(HeaderError::V2BadVersionOrCommand(other)),
    };
    if buf.len() < total {
        return Ok(Parsed::NeedMore(total - buf.len()));
    }
    let body = &buf[V2_HEAD_BYTES..total];
    let complete = |addresses| {
        Ok(Parsed::Complete(
            Header {
                version: 2,
                addresses,
            },
            total,
        ))
    };
    if local {
        // The balancer's own connection (a health check): addresses are ignored.
        return complete(None);
    }
    let needed = match family_transport {
        // UNSPEC: unknown origin, the socket's addresses stand.
        0x00 => return complete(None),
        0x11 => 12,
        0x21 => 36,
        // AF_UNIX stream: no IP address to report; the socket's addresses stand.
        0x31 => 216,
        other => return Err(HeaderError::V2BadFamily(other)),
    };
    if length < needed {
        return Err(HeaderError::V2ShortAddresses { length, needed });
    }
    // What follows the addresses (TLVs) is skipped.
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let addresses = match family_transport {
        0x11 => {
            let ip = |at: usize| Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]);
            Some((
                SocketAddr::new(ip(0).into(), port(8)),
                SocketAddr::new(ip(4).into(), port(10)),
            ))
        }
        0x21 => {
            let ip = |at: usize| {
                let mut octets = [0; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            Some((
                SocketAddr::new(ip(0).into(), port(32)),
                SocketAddr::new(ip(16).into(), port(34)),
            ))
        }
        _ => None,
    };
    complete(addresses)
}

/// A connection's addresses once any PROXY header has been read: what
/// [`ConnectionInfo`](crate::ConnectionInfo) reports, and what per-client accounting (the
/// access log, a per-IP connection limit) must key on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClientAddrs {
    /// The client: from the header, or the TCP peer when there was none.
    pub(crate) client: SocketAddr,
    /// The TCP peer when it sent a header (the balancer).
    pub(crate) balancer: Option<SocketAddr>,
}

/// Why the header step closed a connection.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Required, and the peer is not in a trusted network.
    UntrustedPeer,
    /// A header from a peer outside the trusted networks.
    UntrustedHeader,
    /// The header was bad (or absent where required).
    Header(HeaderError),
    /// The peer closed before the header ended.
    Truncated(usize),
    /// The socket failed.
    Io(io::Error),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::UntrustedPeer => {
                f.write_str("the peer is outside the networks trusted to send PROXY headers")
            }
            Refused::UntrustedHeader => {
                f.write_str("PROXY header from a peer outside the trusted networks")
            }
            Refused::Header(error) => error.fmt(f),
            Refused::Truncated(read) => write!(
                f,
                "the peer closed the connection after {read} bytes of PROXY header"
            ),
            Refused::Io(error) => write!(f, "reading the PROXY header: {error}"),
        }
    }
}

/// The header step of a connection's opening: with `policy` set, reads the header (or
/// finds none, where allowed) under `deadline`. Returns the connection's addresses, or
/// `None` when the connection must close (the event is logged here).
///
/// Per-client accounting keys on the returned `client`, never on `peer`, which is the
/// balancer's address on a PROXY listener.
pub(crate) async fn receive_header<S: Socket>(
    policy: Option<&ProxyProtocol>,
    transport: &mut Transport<S>,
    peer: SocketAddr,
    deadline: &mut Deadline,
) -> Option<ClientAddrs> {
    let direct = ClientAddrs {
        client: peer,
        balancer: None,
    };
    let Some(policy) = policy else {
        return Some(direct);
    };
    let trusted = policy.trusts(peer.ip());
    if !trusted && policy.required {
        tracing::info!(reason = %Refused::UntrustedPeer, "closing connection: PROXY protocol");
        return None;
    }
    let mut buf = Vec::with_capacity(V2_HEAD_BYTES);
    let reading = std::future::poll_fn(|_cx| loop {
        let want = match parse(&buf) {
            Ok(Parsed::Complete(header, used)) => {
                transport.unread(Bytes::copy_from_slice(&buf[used..]));
                return Poll::Ready(Ok(Some(header)));
            }
            Ok(Parsed::NeedMore(n)) => n,
            Err(HeaderError::Missing) if !policy.required => {
                transport.unread(Bytes::from(std::mem::take(&mut buf)));
                return Poll::Ready(Ok(None));
            }
            Err(error) => return Poll::Ready(Err(Refused::Header(error))),
        };
        let start = buf.len();
        buf.resize(start + want, 0);
        let result = transport.read_raw(&mut buf[start..]);
        buf.truncate(start + *result.as_ref().unwrap_or(&0));
        match result {
            Ok(0) if start == 0 && !policy.required => return Poll::Ready(Ok(None)),
            Ok(0) => return Poll::Ready(Err(Refused::Truncated(start))),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Poll::Ready(Err(Refused::Io(e))),
        }
    });
    let mut reading = std::pin::pin!(reading);
    let outcome = std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = std::future::Future::poll(reading.as_mut(), cx) {
            return Poll::Ready(Some(out));
        }
        std::future::Future::poll(std::pin::Pin::new(&mut *deadline), cx).map(|()| None)
    })
    .await;
    match outcome {
        None => {
            tracing::info!(
                reason = "no complete PROXY header before the handshake deadline",
                "closing connection: PROXY protocol"
            );
            None
        }
        Some(Err(reason)) => {
            tracing::info!(%reason, "closing connection: PROXY protocol");
            None
        }
        Some(Ok(None)) => Some(direct),
        Some(Ok(Some(_))) if !trusted => {
            tracing::info!(reason = %Refused::UntrustedHeader, "closing connection: PROXY protocol");
            None
        }
        Some(Ok(Some(header))) => {
            let client = match header.addresses {
                Some((source, _destination)) => source,
                None => peer,
            };
            tracing::debug!(version = header.version, %client, "PROXY header");
            Some(ClientAddrs {
                client,
                balancer: Some(peer),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn complete(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Complete(header, used)) => (header, used),
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n\x16\x03\x01";
        let (header, used) = complete(line);
        assert_eq!(
            used,
            line.len() - 3,
            "the bytes after the line are not the header's"
        );
        assert_eq!(
            header.addresses,
            Some((sa("192.0.2.1:56324"), sa("198.51.100.2:443")))
        );
        let (header, _) = complete(b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n");
        assert_eq!(
            header.addresses,
            Some((sa("[2001:db8::1]:65535"), sa("[::1]:0")))
        );
        let (header, used) = complete(b"PROXY UNKNOWN ffff:: whatever\r\nGET");
        assert_eq!((header.addresses, used), (None, 31));
    }

    #[test]
    fn v1_malformed_lines_are_refused() {
        for line in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 1\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 443\r\n",
            b"PROXY TCP6 192.0.2.1 ::1 1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +80 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 080 443\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 80 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 80 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 80 443\rX",
        ] {
            assert!(
                matches!(parse(line), Err(HeaderError::V1Malformed(_))),
                "{:?} must be refused, got {:?}",
                String::from_utf8_lossy(line),
                parse(line)
            );
        }
    }

    #[test]
    fn v1_without_end_of_line_is_too_long_at_107_bytes() {
        let mut line = b"PROXY TCP6 ".to_vec();
        line.resize(106, b'1');
        assert_eq!(parse(&line), Ok(Parsed::NeedMore(1)));
        line.push(b'1');
        assert_eq!(parse(&line), Err(HeaderError::V1TooLong));
        // 105 bytes and CRLF: the longest line there may be.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(105, b'x');
        line.extend_from_slice(b"\r\n");
        assert_eq!(complete(&line).1, 107);
    }

    #[test]
    fn v2_tcp4_and_tcp6_with_tlvs_skipped() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        // TLVs: ALPN "h2", authority "example.com", and a NOOP.
        body.extend_from_slice(&[0x01, 0, 2, b'h', b'2', 0x02, 0, 11]);
        body.extend_from_slice(b"example.com");
        body.extend_from_slice(&[0x04, 0, 0]);
        let mut header = v2(0x21, 0x11, &body);
        let len = header.len();
        header.extend_from_slice(b"\x16\x03\x01");
        let (parsed, used) = complete(&header);
        assert_eq!(used, len);
        assert_eq!(
            parsed.addresses,
            Some((sa("192.0.2.1:56324"), sa("198.51.100.2:443")))
        );

        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        body.extend_from_slice(&[0x12, 0x34, 0x01, 0xbb]);
        let (parsed, used) = complete(&v2(0x21, 0x21, &body));
        assert_eq!(used, 16 + 36);
        assert_eq!(
            parsed.addresses,
            Some((sa("[2001:db8::7]:4660"), sa("[::1]:443")))
        );
    }

    #[test]
    fn v2_local_unspec_and_unix_keep_the_socket_addresses() {
        let local = v2(0x20, 0x11, &[1; 12]);
        assert_eq!(
            complete(&local),
            (
                Header {
                    version: 2,
                    addresses: None
                },
                28
            )
        );
        assert_eq!(complete(&v2(0x21, 0x00, &[])).0.addresses, None);
        assert_eq!(complete(&v2(0x21, 0x31, &[0; 216])).0.addresses, None);
    }

    #[test]
    fn v2_bad_fields_are_refused() {
        assert_eq!(
            parse(&v2(0x11, 0x11, &[0; 12])),
            Err(HeaderError::V2BadVersionOrCommand(0x11))
        );
        assert_eq!(
            parse(&v2(0x22, 0x11, &[0; 12])),
            Err(HeaderError::V2BadVersionOrCommand(0x22))
        );
        assert_eq!(
            parse(&v2(0x21, 0x12, &[0; 12])),
            Err(HeaderError::V2BadFamily(0x12))
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 12])),
            Err(HeaderError::V2ShortAddresses {
                length: 12,
                needed: 36
            })
        );
    }

    #[test]
    fn v2_oversized_is_refused_from_its_length_field() {
        let mut head = V2_SIGNATURE.to_vec();
        head.extend_from_slice(&[0x21, 0x11]);
        head.extend_from_slice(&((MAX_HEADER_BYTES - 16 + 1) as u16).to_be_bytes());
        assert_eq!(
            parse(&head),
            Err(HeaderError::Oversized(MAX_HEADER_BYTES + 1))
        );
        let mut head = head[..14].to_vec();
        head.extend_from_slice(&((MAX_HEADER_BYTES - 16) as u16).to_be_bytes());
        assert_eq!(parse(&head), Ok(Parsed::NeedMore(MAX_HEADER_BYTES - 16)));
    }

    #[test]
    fn truncated_headers_ask_for_more_and_never_past_a_v2_end() {
        let full = v2(0x21, 0x11, &[10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 187]);
        for cut in 0..full.len() {
            match parse(&full[..cut]) {
                Ok(Parsed::NeedMore(n)) => assert!(cut + n <= full.len(), "cut {cut}: {n}"),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let line = b"PROXY TCP4 10.0.0.1 10.0.0.2 80 443\r\n";
        for cut in 0..line.len() {
            assert!(
                matches!(parse(&line[..cut]), Ok(Parsed::NeedMore(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn garbage_is_not_a_header() {
        for garbage in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"GET / HTTP/1.1\r\n",
            b"PROXZ",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\0\x0c",
            b"PRI * HTTP/2.0",
        ] {
            assert_eq!(parse(garbage), Err(HeaderError::Missing), "{garbage:?}");
        }
    }

    #[test]
    fn networks_parse_and_match() {
        let net: IpNetwork = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.255.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let any: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("203.0.113.9".parse().unwrap()));
        let one: IpNetwork = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let v6: IpNetwork = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "x",
            "10.0.0.0/+8",
        ] {
            let error = bad.parse::<IpNetwork>().unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
