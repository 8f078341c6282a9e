//! The accepted socket as hyper sees it: plain TCP or rustls over TCP, non-blocking,
//! implementing `hyper::rt::Read` and `hyper::rt::Write`.
//!
//! The byte stream underneath is any [`Socket`]: a mio `TcpStream` when serving, an
//! in-memory stream when a fuzz input is replayed (`crate::fuzzing`); everything above it
//! is the same code.
//!
//! A poll returns `Pending` only right after the socket answered `WouldBlock` (or, for
//! reads, while the reactor knows that it would: see `reactor::Readiness`, which skips the
//! system call until the next readiness event); the reactor wakes the connection's task on
//! the next readiness edge. So no edge can be missed, whatever happened between two polls. Decrypted bytes
//! that rustls already holds are always handed out before the socket is read again, and
//! everything rustls wants to send is written out until the socket would block.

use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::reactor::{coop, ReadyStream};
use bytes::{Buf, Bytes};
use hyper::rt::ReadBufCursor;
use rustls::ServerConnection;

use super::deadlines::ConnectionWatch;

/// The most one read hands hyper. hyper offers its whole spare buffer (up to ~400 KiB once
/// its HTTP/1 read strategy has grown) uninitialized; a plain socket read must zero what it
/// asks for, and asking for all of it cost more than the data (HTTP/1.1 uploads used 2.3x
/// the peer's CPU per byte). TLS reads copy decrypted records without zeroing, two 16 KiB
/// records at most per read, so that one poll of a busy connection stays short.
const MAX_READ: usize = 32 * 1024;

/// The HTTP/2 connection preface a client with prior knowledge (h2c) starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A non-blocking byte stream a connection runs over: reads and writes answer
/// `WouldBlock` when they would wait, and the reactor wakes the connection's task when
/// they can go on.
pub(crate) trait Socket: Read + Write + Send + Unpin + 'static {
    /// Closes the writing half (after the last response, or after close_notify).
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// The connection serves HTTP: the reactor may close it when idle to make room.
    fn set_evictable(&self, _watch: Arc<ConnectionWatch>) {}

    /// `false` when a read would surely answer `WouldBlock` (the reactor knows the socket
    /// is empty): the TLS read path then skips rustls' buffer work and the error.
    fn may_read(&self) -> bool {
        true
    }

    /// `true` once the reactor knows the peer closed its side (or the socket failed): a
    /// short read then left nothing to come but the end of the stream.
    fn peer_closed(&self) -> bool {
        false
    }
}

impl Socket for ReadyStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        ReadyStream::shutdown_write(self)
    }

    fn set_evictable(&self, watch: Arc<ConnectionWatch>) {
        ReadyStream::set_evictable(self, watch);
    }

    fn may_read(&self) -> bool {
        ReadyStream::may_read(self)
    }

    fn peer_closed(&self) -> bool {
        ReadyStream::peer_closed(self)
    }
}

/// One accepted connection's byte stream.
pub(crate) struct Transport<S> {
    socket: S,
    tls: Option<Box<ServerConnection>>,
    /// Bytes already read while sniffing for the h2c preface, served before the socket.
    sniffed: Bytes,
    close_notify_sent: bool,
    /// The first bytes the client sent, kept during the handshake to recognise plain HTTP
    /// sent to the TLS port.
    first: [u8; 8],
    first_len: u8,
    /// The writing half is closed; the lingering close reads what the client still sends.
    write_shut: bool,
    /// Offers vectored writes (HTTP/2; see [`Transport::set_vectored`]).
    vectored: bool,
    /// Told when writes stall on a full socket and when they move again (send timeout).
    watch: Arc<ConnectionWatch>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl<S: Socket> Transport<S> {
    pub(crate) fn new(
        socket: S,
        tls: Option<ServerConnection>,
        watch: Arc<ConnectionWatch>,
    ) -> Transport<S> {
        Transport {
            socket,
            tls: tls.map(Box::new),
            sniffed: Bytes::new(),
            close_notify_sent: false,
            first: [0; 8],
            first_len: 0,
            write_shut: false,
            vectored: false,
            watch,
        }
    }

    /// Offers vectored writes from now on; call before the connection's protocol starts
    /// (h2 asks once, when it sets up its writer). For HTTP/2, as tokio-rustls offers them
    /// to the peer: curl then spent 1.01–1.02 s of CPU on 200 8 MiB downloads instead of
    /// 1.13 (the peer's 0.95–1.0), and `strace` shows the same writes for both servers (one
    /// `writev` per DATA frame: a 31-byte record with its head, a 16 406-byte one); the
    /// writes before were not traced. HTTP/1 does without: hyper would then queue each
    /// body chunk instead of copying it, which saved instructions per MB but no time, and
    /// cost 350–680 instructions per small response.
    pub(crate) fn set_vectored(&mut self, vectored: bool) {
        self.vectored = vectored;
    }

    /// See [`Socket::set_evictable`].
    pub(crate) fn set_evictable(&self, watch: Arc<ConnectionWatch>) {
        self.socket.set_evictable(watch);
    }

    /// The rustls session, after the handshake.
    pub(crate) fn tls(&self) -> Option<&ServerConnection> {
        self.tls.as_deref()
    }

    /// Reads from the socket itself, before TLS (the PROXY header).
    pub(crate) fn read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.read(buf)
    }

    /// Bytes read from the socket before TLS or HTTP began (past a PROXY header): they go
    /// to rustls, or to hyper on a plain connection, before anything else is read.
    pub(crate) fn unread(&mut self, bytes: Bytes) {
        debug_assert!(self.sniffed.is_empty());
        self.sniffed = bytes;
    }

    /// Drives the TLS handshake to completion (a no-op for plain connections).
    pub(crate) fn poll_handshake(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            while tls.wants_write() {
                match tls.write_tls(&mut self.socket) {
                    Ok(_) => {}
                    Err(e) if would_block(&e) => return Poll::Pending,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if !tls.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            // Bytes read before TLS began (past a PROXY header) come first. The first
            // bytes are recorded either way (plain HTTP on the TLS port).
            let read = if self.sniffed.is_empty() {
                tls.read_tls(&mut Recording {
                    socket: &mut self.socket,
                    first: &mut self.first,
                    first_len: &mut self.first_len,
                })
            } else {
                let mut replay = &self.sniffed[..];
                let read = tls.read_tls(&mut Recording {
                    socket: &mut replay,
                    first: &mut self.first,
                    first_len: &mut self.first_len,
                });
                self.sniffed.advance(*read.as_ref().unwrap_or(&0));
                read
            };
            match read {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed the connection during the TLS handshake",
                    )))
                }
                Ok(_) => {
                    if let Err(error) = tls.process_new_packets() {
                        let seen = &self.first[..usize::from(self.first_len)];
                        if looks_like_http(seen) {
                            // As nginx and Go: a plain-text answer the client can show,
                            // rather than an alert it reads as HTTP/0.9.
                            let _ = self.socket.write(PLAIN_HTTP_ANSWER);
                            let _ = self.socket.shutdown_write();
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "plain HTTP sent to the TLS port; answered 400",
                            )));
                        }
                        send_alert(tls, &mut self.socket);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
                    }
                }
                Err(e) if would_block(&e) => return Poll::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// On a plain connection, reads until it can tell whether the client opened with the
    /// HTTP/2 preface (h2c with prior knowledge). The bytes read are replayed to hyper.
    pub(crate) fn poll_sniff_h2_preface(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<io::Result<bool>> {
        let mut seen = Vec::from(std::mem::take(&mut self.sniffed));
        let result = loop {
            if seen.len() >= H2_PREFACE.len() {
                break Poll::Ready(Ok(seen[..H2_PREFACE.len()] == *H2_PREFACE));
            }
            if seen[..] != H2_PREFACE[..seen.len()] {
                break Poll::Ready(Ok(false));
            }
            let mut buf = [0; 24];
            let want = H2_PREFACE.len() - seen.len();
            match self.socket.read(&mut buf[..want]) {
                Ok(0) => break Poll::Ready(Ok(false)),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if would_block(&e) => break Poll::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Poll::Ready(Err(e)),
            }
        };
        self.sniffed = Bytes::from(seen);
        result
    }

    /// Writes out what rustls holds until it is empty or the socket would block.
    fn poll_flush_tls(&mut self) -> Poll<io::Result<()>> {
        let Some(tls) = self.tls.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        while tls.wants_write() {
            match tls.write_tls(&mut self.socket) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => self.watch.write_progressed(),
                Err(e) if would_block(&e) => {
                    self.watch.write_stalled();
                    return Poll::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The answer to plain HTTP on a TLS port.
pub(crate) const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 70\r\n\
Connection: close\r\n\r\n\
400 Bad Request: this port speaks HTTPS, not plain HTTP; use https://\n";

/// Whether the first bytes of a connection are the start of an HTTP/1 request line: a
/// method token of capital letters, then a space. (A TLS record starts with a content
/// type byte below 0x20, so the two cannot be confused.)
pub(crate) fn looks_like_http(first: &[u8]) -> bool {
    let Some(space) = first.iter().position(|&b| b == b' ') else {
        return false;
    };
    space >= 3 && first[..space].iter().all(u8::is_ascii_uppercase)
}

/// A reader that keeps the first bytes read through it.
struct Recording<'a, S> {
    socket: &'a mut S,
    first: &'a mut [u8; 8],
    first_len: &'a mut u8,
}

impl<S: Read> Read for Recording<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.socket.read(buf)?;
        let have = usize::from(*self.first_len);
        let take = n.min(self.first.len() - have);
        self.first[have..have + take].copy_from_slice(&buf[..take]);
        *self.first_len += take as u8;
        Ok(n)
    }
}

/// Best effort: after rustls rejected the peer's data it queues an alert; send it.
fn send_alert(tls: &mut ServerConnection, socket: &mut dyn Write) {
    while tls.wants_write() {
        if tls.write_tls(socket).is_err() {
            break;
        }
    }
}

impl<S: Socket> hyper::rt::Read for Transport<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // The poll's budget (see `reactor::coop`): once spent, the task goes behind the
        // others, whatever the peer keeps sending.
        if coop::poll_proceed(cx).is_pending() {
            return Poll::Pending;
        }
        let before = buf.remaining();
        let result = this.read_into(&mut buf);
        coop::spend(before - buf.remaining());
        result
    }
}

impl<S: Socket> Transport<S> {
    /// One read for hyper, at most [`MAX_READ`] bytes.
    fn read_into(&mut self, buf: &mut ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        let this = self;
        if !this.sniffed.is_empty() {
            let n = this.sniffed.len().min(buf.remaining());
            buf.put_slice(&this.sniffed[..n]);
            this.sniffed.advance(n);
            return Poll::Ready(Ok(()));
        }
        let Some(tls) = this.tls.as_deref_mut() else {
            loop {
                let want = buf.remaining().min(MAX_READ);
                let result = this.socket.read(buf.initialize_unfilled_to(want));
                return match result {
                    Ok(n) => {
                        // SAFETY: `initialize_unfilled_to` initialized the slice and `read`
                        // filled its first `n` bytes.
                        unsafe { buf.advance(n) };
                        Poll::Ready(Ok(()))
                    }
                    Err(e) if would_block(&e) => Poll::Pending,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Poll::Ready(Err(e)),
                };
            }
        };
        // Decrypted bytes are copied straight out of rustls' buffer (no zeroing), record
        // after record, until `want` bytes or the socket would block: large reads make
        // large body chunks, so an upload costs fewer wake-ups and writes downstream.
        let want = buf.remaining().min(MAX_READ);
        let mut copied = 0;
        let mut peer_closed = false;
        loop {
            // Plaintext rustls already decrypted comes first: the socket may have nothing
            // more to say and never become readable again.
            match tls.reader().fill_buf() {
                Ok([]) => {
                    // A clean close_notify: the end, once what was copied is taken.
                    return Poll::Ready(Ok(()));
                }
                Ok(plain) => {
                    let n = plain.len().min(want - copied);
                    buf.put_slice(&plain[..n]);
                    tls.reader().consume(n);
                    copied += n;
                    if copied == want {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                Err(e) if would_block(&e) => {}
                // The bytes copied first; the error comes again on the next read.
                Err(_) if copied > 0 => return Poll::Ready(Ok(())),
                // Includes UnexpectedEof: TCP closed without close_notify (truncation).
                Err(e) => return Poll::Ready(Err(e)),
            }
            if peer_closed {
                return Poll::Ready(if copied > 0 {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                });
            }
            let read = if this.socket.may_read() {
                tls.read_tls(&mut this.socket)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
            match read {
                Ok(0) => peer_closed = true,
                Ok(_) => {
                    if let Err(error) = tls.process_new_packets() {
                        send_alert(tls, &mut this.socket);
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
                    }
                }
                Err(e) if would_block(&e) => {
                    // Key updates and the like may be waiting to go out.
                    let _ = this.poll_flush_tls();
                    return if copied > 0 {
                        Poll::Ready(Ok(()))
                    } else {
                        Poll::Pending
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) if copied > 0 => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<S: Socket> Transport<S> {
    /// Hands plaintext to rustls (which takes it until its outgoing buffer limit; then the
    /// socket must drain it first) or, for plain TCP, to the socket. `to_tls` and
    /// `to_socket` write the same bytes, whole or in part; `empty` when there are none.
    fn poll_write_with(
        &mut self,
        empty: bool,
        mut to_tls: impl FnMut(&mut ServerConnection) -> io::Result<usize>,
        mut to_socket: impl FnMut(&mut S) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let Some(tls) = self.tls.as_deref_mut() else {
                return match to_socket(&mut self.socket) {
                    Ok(n) => {
                        self.watch.write_progressed();
                        Poll::Ready(Ok(n))
                    }
                    Err(e) if would_block(&e) => {
                        self.watch.write_stalled();
                        Poll::Pending
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Poll::Ready(Err(e)),
                };
            };
            let n = to_tls(tls)?;
            if n > 0 || empty {
                return Poll::Ready(Ok(n));
            }
            match self.poll_flush_tls() {
                Poll::Ready(Ok(())) => {}
                other => return other.map_ok(|()| 0),
            }
        }
    }
}

/// Vectored writes of up to this many bytes in all are copied together on the stack and
/// written as one slice: rustls' `write_vectored` allocates a list of the slices, which
/// costs more than copying a frame head and a short payload.
const SMALL_VECTORED_WRITE: usize = 1024;

impl<S: Socket> hyper::rt::Write for Transport<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(
            buf.is_empty(),
            |tls| tls.writer().write(buf),
            |socket| socket.write(buf),
        )
    }

    fn is_write_vectored(&self) -> bool {
        self.vectored
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|buf| buf.len()).sum();
        if total <= SMALL_VECTORED_WRITE {
            let mut joined = [0u8; SMALL_VECTORED_WRITE];
            let mut len = 0;
            for buf in bufs {
                joined[len..len + buf.len()].copy_from_slice(buf);
                len += buf.len();
            }
            return self.poll_write(cx, &joined[..len]);
        }
        self.get_mut().poll_write_with(
            false,
            |tls| tls.writer().write_vectored(bufs),
            |socket| socket.write_vectored(bufs),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_tls()
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(tls) = this.tls.as_deref_mut() {
            if !this.close_notify_sent {
                tls.send_close_notify();
                this.close_notify_sent = true;
            }
            match this.poll_flush_tls() {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        if !this.write_shut {
            match this.socket.shutdown_write() {
                Ok(()) => this.write_shut = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        this.poll_linger()
    }
}

impl<S: Socket> Transport<S> {
    /// Lingering close, as nginx's `lingering_close`: after our FIN, reads and drops what
    /// the client still sends until it closes its side too. Closing a socket with unread
    /// bytes in it makes the kernel answer RST, and a RST makes the client's TCP stack —
    /// or a load balancer in between — throw away responses not yet read: the last
    /// responses before a graceful close (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`)
    /// would be lost. `conn::drive` ends the wait after [`super::LINGER_TIMEOUT`].
    fn poll_linger(&mut self) -> Poll<io::Result<()>> {
        let mut scratch = [0; 4096];
        loop {
            match self.socket.read(&mut scratch) {
                Ok(0) => return Poll::Ready(Ok(())),
                // The client closed and this short read emptied the socket: the next read
                // would only return the end (a system call per closed connection saved).
                Ok(n) if n < scratch.len() && self.socket.peer_closed() => {
                    return Poll::Ready(Ok(()))
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => {
                    self.watch.linger_started();
                    return Poll::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Reset or otherwise gone: nothing left to protect.
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_recognised_and_tls_is_not() {
        assert!(looks_like_http(b"GET / HT"));
        assert!(looks_like_http(b"OPTIONS "));
        assert!(!looks_like_http(b"\x16\x03\x01\x02\x00\x01\x00\x01"));
        assert!(!looks_like_http(b"get / HT"));
        assert!(!looks_like_http(b"GE"));
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    /// A socket that takes every byte, vectored or not.
    struct Sink(Vec<u8>);

    impl Read for Sink {
        fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            bufs.iter().map(|buf| self.write(buf)).sum()
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Socket for Sink {
        fn shutdown_write(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_writes_keep_their_order_small_or_large() {
        use hyper::rt::Write as _;
        let watch = ConnectionWatch::new(Default::default());
        let mut transport = Transport::new(Sink(Vec::new()), None, watch);
        transport.set_vectored(true);
        assert!(transport.is_write_vectored());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut want = Vec::new();
        // Small (joined on the stack) and large (handed over as they are) writes.
        for sizes in [&[9usize, 300, 2][..], &[9, SMALL_VECTORED_WRITE, 7]] {
            let parts: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| vec![b'a' + i as u8; n])
                .collect();
            let slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
            let total: usize = sizes.iter().sum();
            match Pin::new(&mut transport).poll_write_vectored(&mut cx, &slices) {
                Poll::Ready(Ok(n)) => assert_eq!(n, total, "{sizes:?}"),
                other => panic!("{sizes:?}: {other:?}"),
            }
            want.extend(parts.concat());
        }
        assert_eq!(transport.socket.0, want);
    }
}
