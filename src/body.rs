//! Request and response bodies, seen from the handler as plain `std::io`.
//!
//! A request body arrives on the reactor (hyper polls it there) and is read on a worker;
//! a streamed response body is produced on a worker and sent on the reactor. Both cross
//! over a [`Pipe`]: a small bounded queue of chunks with one blocking side and one
//! asynchronous side, so backpressure reaches the socket in both directions and a body of
//! any size never has to sit whole in memory.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};

use crate::worker::WorkerPool;

/// Size of the chunks read from a response [`Read`] source.
pub(crate) const STREAM_CHUNK: usize = 16 * 1024;

/// How a pipe's producer ended.
#[derive(Clone, Debug)]
enum End {
    Complete,
    Failed(io::ErrorKind, Arc<str>),
    /// A request body grew past the limit (`Limits::max_request_body_bytes`).
    TooLarge(u64),
}

impl End {
    /// The error a read at this end gets, or `None` at a complete end.
    fn error(&self) -> Option<io::Error> {
        match self {
            End::Complete => None,
            End::Failed(kind, message) => Some(io::Error::new(*kind, message.to_string())),
            End::TooLarge(limit) => Some(io::Error::new(
                io::ErrorKind::InvalidData,
                BodyTooLarge { limit: *limit },
            )),
        }
    }
}

struct PipeState {
    chunks: VecDeque<Bytes>,
    buffered: usize,
    end: Option<End>,
    /// The consumer has asked for data at least once.
    demanded: bool,
    consumer_gone: bool,
    /// The response to the request whose body this is has been sent.
    response_done: bool,
    /// Request pipes: the pump has stopped reading the body (see [`Pipe::producer_done`]).
    producer_done: bool,
    /// The producer has started reading from the client since the consumer first asked.
    producer_reading: bool,
    /// Waits for `producer_reading` (an HTTP/1 response held back until `100 Continue`
    /// is queued).
    reading_waker: Option<Waker>,
    /// Threads blocked in [`Pipe::wait`]: without any, a change needs no `futex` call.
    blocked: usize,
    /// Waker of the asynchronous producer (the connection feeding a request body).
    waker: Option<Waker>,
    /// Waker of the asynchronous consumer (the connection sending a response body; for an
    /// echo both sides are asynchronous).
    consumer_waker: Option<Waker>,
    /// The blocked side, as the fuzz harness counts it.
    #[cfg(feature = "fuzzing")]
    waiters: crate::worker::Waiters,
}

/// What [`Pipe::poll_room`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Room {
    /// A chunk may be pushed.
    Available,
    /// The consumer dropped its end; `demanded` says whether it ever read.
    ConsumerGone { demanded: bool },
}

/// A bounded queue of body chunks between the reactor and a worker.
pub(crate) struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
    /// Only a pulled body's changes (see [`Pull::set_fast`]).
    capacity: AtomicUsize,
}

impl Pipe {
    /// A pipe that accepts new chunks while fewer than `capacity` bytes are queued.
    pub(crate) fn new(capacity: usize) -> Arc<Pipe> {
        Arc::new(Pipe {
            state: Mutex::new(PipeState {
                chunks: VecDeque::new(),
                buffered: 0,
                end: None,
                demanded: false,
                consumer_gone: false,
                response_done: false,
                producer_done: false,
                producer_reading: false,
                reading_waker: None,
                waker: None,
                consumer_waker: None,
                blocked: 0,
                #[cfg(feature = "fuzzing")]
                waiters: Default::default(),
            }),
            changed: Condvar::new(),
            capacity: AtomicUsize::new(capacity),
        })
    }

    /// Chunks are accepted while fewer bytes than this are queued.
    fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, PipeState> {
        // No code panics while holding this lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the blocked side, if it is blocked.
    fn notify_blocking_side(&self, state: &mut PipeState) {
        if Self::release_blocked(state) {
            self.changed.notify_all();
        }
    }

    /// Whether a thread is blocked and must be notified; it stops counting as waiting.
    fn release_blocked(state: &mut PipeState) -> bool {
        if state.blocked == 0 {
            return false;
        }
        #[cfg(feature = "fuzzing")]
        state.waiters.release();
        true
    }

    /// Blocks until the other side changes something, at most `timeout`.
    fn wait<'a>(
        &self,
        state: MutexGuard<'a, PipeState>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, PipeState> {
        let mut state = state;
        #[cfg(feature = "fuzzing")]
        let ticket = state.waiters.enter();
        state.blocked += 1;
        let mut state = match timeout {
            None => self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
            Some(timeout) => {
                self.changed
                    .wait_timeout(state, timeout)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
        state.blocked -= 1;
        #[cfg(feature = "fuzzing")]
        state.waiters.leave(ticket);
        state
    }

    fn wake_async_side(mut state: MutexGuard<'_, PipeState>) {
        let wakers = [
            state.waker.take(),
            state.consumer_waker.take(),
            state.reading_waker.take(),
        ];
        drop(state);
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }

    /// The consumer asks for data: a producer waiting for demand may start.
    fn demand(state: &mut PipeState) {
        if !state.demanded {
            state.demanded = true;
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }

    /// For a request body whose handler has returned without reading it: if the body is
    /// still wanted (it is, say, inside the response), asks the producer to start, as a
    /// first read would. Returns whether it is still wanted.
    pub(crate) fn demand_if_wanted(&self) -> bool {
        let mut state = self.lock();
        if state.consumer_gone {
            return false;
        }
        Self::demand(&mut state);
        true
    }

    /// Asynchronous producer: about to read from the client for the consumer.
    pub(crate) fn mark_reading(&self) {
        let mut state = self.lock();
        state.producer_reading = true;
        if let Some(waker) = state.reading_waker.take() {
            waker.wake();
        }
    }

    /// Ready once the producer has started reading (or can no longer).
    pub(crate) fn poll_reading(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.producer_reading || state.end.is_some() || state.consumer_gone {
            return Poll::Ready(());
        }
        state.reading_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Asynchronous producer: whether a chunk may be pushed now. With `wait_for_demand`
    /// it stays pending until the consumer first asks for data (so that a request with
    /// `Expect: 100-continue` is not invited to send a body nobody reads).
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>, wait_for_demand: bool) -> Poll<Room> {
        let mut state = self.lock();
        if state.consumer_gone {
            return Poll::Ready(Room::ConsumerGone {
                demanded: state.demanded,
            });
        }
        if state.buffered < self.capacity() && (state.demanded || !wait_for_demand) {
            return Poll::Ready(Room::Available);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Request pipes: the response has gone out (or was dropped).
    pub(crate) fn mark_response_done(&self) {
        let mut state = self.lock();
        state.response_done = true;
        Self::wake_async_side(state);
    }

    /// Asynchronous producer: ready once [`Pipe::mark_response_done`] was called.
    pub(crate) fn poll_response_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.response_done {
            return Poll::Ready(());
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Asynchronous producer: queues a chunk (after `poll_room` said there is room).
    pub(crate) fn push(&self, chunk: Bytes) {
        let mut state = self.lock();
        if state.consumer_gone || chunk.is_empty() {
            return;
        }
        state.buffered += chunk.len();
        state.chunks.push_back(chunk);
        self.notify_blocking_side(&mut state);
        let consumer = state.consumer_waker.take();
        drop(state);
        if let Some(consumer) = consumer {
            consumer.wake();
        }
    }

    /// Blocking producer: waits for room (at most `timeout`), then queues the chunk.
    /// (Response bodies are pulled instead, see [`Pull`]; kept for the pipe's tests.) Fails
    /// with `BrokenPipe` when the consumer (the connection) is gone and with `TimedOut`
    /// when it took nothing for `timeout`.
    #[cfg(test)]
    pub(crate) fn push_blocking(&self, chunk: Bytes, timeout: Duration) -> io::Result<()> {
        let give_up = std::time::Instant::now() + timeout;
        let mut state = self.lock();
        while state.buffered >= self.capacity() && !state.consumer_gone {
            let left = give_up.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took no response bytes within the send timeout",
                ));
            }
            state = self.wait(state, Some(left));
        }
        if state.consumer_gone {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client connection is gone",
            ));
        }
        state.buffered += chunk.len();
        state.chunks.push_back(chunk);
        self.notify_blocking_side(&mut state);
        Self::wake_async_side(state);
        Ok(())
    }

    /// Pulled producer (a worker): queues a chunk without waiting; true while there is
    /// still room for another.
    fn push_pulled(&self, chunk: Bytes) -> bool {
        let mut state = self.lock();
        if state.consumer_gone {
            return false;
        }
        state.buffered += chunk.len();
        state.chunks.push_back(chunk);
        let room = state.buffered < self.capacity();
        let consumer = state.consumer_waker.take();
        drop(state);
        if let Some(consumer) = consumer {
            consumer.wake();
        }
        room
    }

    /// Bytes queued and not yet taken.
    pub(crate) fn buffered(&self) -> usize {
        self.lock().buffered
    }

    /// Whether the consumer has dropped its end.
    fn is_consumer_gone(&self) -> bool {
        self.lock().consumer_gone
    }

    /// Either producer: no more chunks will come. The first call wins.
    pub(crate) fn finish(&self, result: io::Result<()>) {
        let mut state = self.lock();
        if state.end.is_none() {
            state.end = Some(match result {
                Ok(()) => End::Complete,
                Err(e) => End::Failed(e.kind(), e.to_string().into()),
            });
        }
        self.notify_blocking_side(&mut state);
        Self::wake_async_side(state);
    }

    /// Asynchronous producer of a request body: the body grew past `limit`; the consumer's
    /// next read fails with [`BodyTooLarge`] (after what is queued).
    pub(crate) fn finish_too_large(&self, limit: u64) {
        let mut state = self.lock();
        if state.end.is_none() {
            state.end = Some(End::TooLarge(limit));
        }
        self.notify_blocking_side(&mut state);
        Self::wake_async_side(state);
    }

    /// Request pipes: whether the consumer let the body go before its end, which the
    /// producer has not reached yet (it is draining the rest).
    pub(crate) fn is_draining(&self) -> bool {
        let state = self.lock();
        (state.consumer_gone || matches!(state.end, Some(End::TooLarge(_)))) && !state.producer_done
    }

    /// Ready once the producer is done (the body ended, failed or the drain stopped).
    pub(crate) fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.producer_done {
            return Poll::Ready(());
        }
        state.consumer_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The producer is done with the body (a request pump at its end).
    pub(crate) fn producer_done(&self) {
        let mut state = self.lock();
        state.producer_done = true;
        Self::wake_async_side(state);
    }

    /// Whether [`finish_too_large`](Pipe::finish_too_large) ended the body.
    pub(crate) fn is_too_large(&self) -> bool {
        matches!(self.lock().end, Some(End::TooLarge(_)))
    }

    /// Blocking consumer: the next chunk, `None` at a complete end, an error at a failed
    /// one (a truncated body is never reported as a clean end).
    pub(crate) fn pop_blocking(&self) -> io::Result<Option<Bytes>> {
        let mut state = self.lock();
        Self::demand(&mut state);
        loop {
            if let Some(chunk) = state.chunks.pop_front() {
                state.buffered -= chunk.len();
                self.notify_blocking_side(&mut state);
                Self::wake_async_side(state);
                return Ok(Some(chunk));
            }
            match &state.end {
                Some(end) => return end.error().map_or(Ok(None), Err),
                None => state = self.wait(state, None),
            }
        }
    }

    /// Asynchronous consumer: the next chunk, or the end.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let mut state = self.lock();
        // A request body sent on as a response body is read here, not by the handler.
        Self::demand(&mut state);
        if let Some(chunk) = state.chunks.pop_front() {
            state.buffered -= chunk.len();
            // A producer blocked on a full pipe is let go once half of it has drained, so
            // that it pushes several chunks per wake-up instead of one; and after the
            // lock is released, so that it does not wake only to wait for the lock.
            let release =
                state.buffered <= self.capacity() / 2 && Self::release_blocked(&mut state);
            // An asynchronous producer (an echo) waiting for room.
            let producer = state.waker.take();
            drop(state);
            if release {
                self.changed.notify_all();
            }
            if let Some(producer) = producer {
                producer.wake();
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        match &state.end {
            Some(end) => Poll::Ready(end.error().map(Err)),
            None => {
                state.consumer_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// The consumer is gone: drop what is queued and release a blocked producer.
    pub(crate) fn close_consumer(&self) {
        let mut state = self.lock();
        state.consumer_gone = true;
        state.chunks.clear();
        state.buffered = 0;
        self.notify_blocking_side(&mut state);
        Self::wake_async_side(state);
    }
}

/// The reading end of a request body pipe; leaving it tells the reactor to stop reading.
pub(crate) struct PipeReader {
    pipe: Arc<Pipe>,
    current: Bytes,
    /// The bytes not handed out yet (`current` included), when the request declared its
    /// length (`Content-Length`).
    left: Option<u64>,
    /// Handed on whole (see [`PipeReader::into_forward`]): leaving does not close the pipe.
    forwarded: bool,
}

impl PipeReader {
    pub(crate) fn new(pipe: Arc<Pipe>, length: Option<u64>) -> PipeReader {
        PipeReader {
            pipe,
            current: Bytes::new(),
            left: length,
            forwarded: false,
        }
    }

    /// The pipe, the part of a chunk not read yet and the length still to come, for a new
    /// consumer to go on with.
    fn into_forward(mut self) -> (Arc<Pipe>, Bytes, Option<u64>) {
        self.forwarded = true;
        (
            self.pipe.clone(),
            std::mem::take(&mut self.current),
            self.left,
        )
    }

    /// Counts `n` bytes handed out.
    fn handed_out(&mut self, n: usize) {
        if let Some(left) = &mut self.left {
            *left = left.saturating_sub(n as u64);
        }
    }

    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let chunk = if self.current.is_empty() {
            self.pipe.pop_blocking()?
        } else {
            Some(std::mem::take(&mut self.current))
        };
        if let Some(chunk) = &chunk {
            self.handed_out(chunk.len());
        }
        Ok(chunk)
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        if !self.forwarded {
            self.pipe.close_consumer();
        }
    }
}

enum Kind {
    Empty,
    Bytes(Bytes),
    Reader(Box<dyn Read + Send + 'static>, ChunkBuffers),
    Incoming(PipeReader),
}

/// The read buffers of one streamed body, reused: `Read::read` wants initialized memory, so
/// a new buffer is zeroed before the reader fills it; a chunk goes out as `Bytes` that give
/// their buffer back here once the connection has sent them, so each buffer is zeroed once
/// rather than once per chunk. (Zeroing every 16 KiB chunk cost as much as a second copy of
/// every byte sent: 1 M instructions per MB of an 8 MiB download, against the peer's none.)
#[derive(Default)]
struct ChunkBuffers {
    spare: Option<Arc<Mutex<Vec<Vec<u8>>>>>,
}

/// Spare buffers kept per body: what the pipe and hyper hold at once, and a few more.
const SPARE_CHUNK_BUFFERS: usize = 8;

impl ChunkBuffers {
    /// Reads the next chunk from `reader` into a spare buffer (or a new one).
    fn read_chunk(&mut self, reader: &mut dyn Read) -> io::Result<Option<Bytes>> {
        let spare = self.spare.get_or_insert_with(Default::default);
        let mut buf = lock_spare(spare)
            .pop()
            .unwrap_or_else(|| vec![0; STREAM_CHUNK]);
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(len) => {
                    return Ok(Some(Bytes::from_owner(Chunk {
                        buf,
                        len,
                        home: Arc::downgrade(spare),
                    })))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn lock_spare(spare: &Mutex<Vec<Vec<u8>>>) -> MutexGuard<'_, Vec<Vec<u8>>> {
    // Nothing panics while holding this lock.
    spare.lock().unwrap_or_else(|e| e.into_inner())
}

/// A chunk read into a buffer of [`ChunkBuffers`], which it goes back to when dropped (if
/// the body is still streaming).
struct Chunk {
    buf: Vec<u8>,
    len: usize,
    home: Weak<Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            let mut spare = lock_spare(&home);
            if spare.len() < SPARE_CHUNK_BUFFERS {
                spare.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// An HTTP body: what a handler reads from a request and gives back in a response.
///
/// A request body is a blocking [`Read`] that streams from the connection as the handler
/// reads it (a handler that never reads it costs nothing); [`Body::chunks`] gives the same
/// data chunk by chunk. A response body is built from bytes ([`From`]), from any
/// [`Read`] ([`Body::from_reader`], streamed with backpressure), or empty.
///
/// # Examples
///
/// ```
/// use std::io::Read;
/// use portcullis::Body;
///
/// let mut body = Body::from("hello");
/// let mut text = String::new();
/// body.read_to_string(&mut text)?;
/// assert_eq!(text, "hello");
///
/// let streamed = Body::from_reader(std::io::repeat(b'x').take(1 << 20));
/// assert_eq!(streamed.exact_len(), None);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Body {
    kind: Kind,
}

impl Body {
    /// A body with no bytes.
    pub fn empty() -> Body {
        Body { kind: Kind::Empty }
    }

    /// A body streamed from `reader` on the worker thread, in chunks of 16 KiB, at the pace
    /// the client accepts them. Without a `Content-Length` header in the response it goes
    /// out chunked (HTTP/1.1) or as DATA frames until the end (HTTP/2).
    pub fn from_reader<R: Read + Send + 'static>(reader: R) -> Body {
        Body {
            kind: Kind::Reader(Box::new(reader), ChunkBuffers::default()),
        }
    }

    /// A request body that the connection streams into `pipe`; `length` is what the
    /// request declared (`Content-Length`), if it did.
    pub(crate) fn incoming(pipe: Arc<Pipe>, length: Option<u64>) -> Body {
        Body {
            kind: Kind::Incoming(PipeReader::new(pipe, length)),
        }
    }

    /// The number of bytes left in the body, when known: always for bytes in memory; for a
    /// request body that declared its length (`Content-Length`), that length less what
    /// was read; `None` for a reader or a request body without a declared length.
    ///
    /// A request body whose length is known keeps it when handed back as the response
    /// (an echo), which then goes out with a `Content-Length` instead of chunked.
    pub fn exact_len(&self) -> Option<u64> {
        match &self.kind {
            Kind::Empty => Some(0),
            Kind::Bytes(bytes) => Some(bytes.len() as u64),
            Kind::Incoming(reader) => reader.left,
            Kind::Reader(..) => None,
        }
    }

    /// Reads the whole body into memory. A request body is refused past
    /// [`Limits::max_request_body_bytes`](crate::Limits::max_request_body_bytes) (the
    /// error converts into a `413` [`Error`](crate::Error)); a cut or stalled one is an
    /// error too, never a short `Ok`.
    ///
    /// ```
    /// let bytes = portcullis::Body::from("abc").into_bytes()?;
    /// assert_eq!(bytes, "abc");
    /// # Ok::<(), portcullis::Error>(())
    /// ```
    pub fn into_bytes(mut self) -> Result<Bytes, crate::Error> {
        if let Kind::Bytes(bytes) = &mut self.kind {
            return Ok(std::mem::take(bytes));
        }
        let mut chunks = Vec::new();
        while let Some(chunk) = self.next_chunk()? {
            chunks.push(chunk);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => Bytes::from(chunks.concat()),
        })
    }

    /// Reads the whole body into a `Vec`, as [`into_bytes`](Body::into_bytes) does.
    ///
    /// ```
    /// let bytes = portcullis::Body::from(vec![1, 2, 3]).into_vec()?;
    /// assert_eq!(bytes, [1, 2, 3]);
    /// # Ok::<(), portcullis::Error>(())
    /// ```
    pub fn into_vec(self) -> Result<Vec<u8>, crate::Error> {
        Ok(Vec::from(self.into_bytes()?))
    }

    /// Reads the whole body as UTF-8 text, as [`into_bytes`](Body::into_bytes) does; text
    /// that is not UTF-8 is a `400` [`Error`](crate::Error).
    ///
    /// ```
    /// let text = portcullis::Body::from("héllo").into_string()?;
    /// assert_eq!(text, "héllo");
    /// let bad = portcullis::Body::from(vec![0xff, 0xfe]).into_string().unwrap_err();
    /// assert_eq!(bad.status(), 400);
    /// # Ok::<(), portcullis::Error>(())
    /// ```
    pub fn into_string(self) -> Result<String, crate::Error> {
        Ok(String::from_utf8(self.into_vec()?)?)
    }

    /// Reads the whole body, as [`into_bytes`](Body::into_bytes) does, and parses it as
    /// JSON (feature `json`); JSON that does not parse or does not fit `T` is a `400`
    /// [`Error`](crate::Error) saying why.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// struct NewNote {
    ///     text: String,
    /// }
    ///
    /// let note: NewNote = portcullis::Body::from(r#"{"text":"milk"}"#).into_json()?;
    /// assert_eq!(note.text, "milk");
    /// let bad = portcullis::Body::from("{").into_json::<NewNote>();
    /// assert_eq!(bad.err().map(|e| e.status()), Some(portcullis::http::StatusCode::BAD_REQUEST));
    /// # Ok::<(), portcullis::Error>(())
    /// ```
    #[cfg(feature = "json")]
    pub fn into_json<T: serde::de::DeserializeOwned>(self) -> Result<T, crate::Error> {
        Ok(serde_json::from_slice(&self.into_bytes()?)?)
    }

    /// The body chunk by chunk, as the connection delivers it (request bodies) or in
    /// 16 KiB reads (reader bodies).
    ///
    /// ```
    /// let mut body = portcullis::Body::from("abc");
    /// let chunks: Vec<_> = body.chunks().collect::<std::io::Result<_>>()?;
    /// assert_eq!(chunks, vec![bytes::Bytes::from("abc")]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn chunks(&mut self) -> Chunks<'_> {
        Chunks { body: self }
    }

    pub(crate) fn into_stream_source(self) -> StreamSource {
        match self.kind {
            Kind::Empty => StreamSource::Full(Bytes::new()),
            Kind::Bytes(bytes) => StreamSource::Full(bytes),
            Kind::Incoming(reader) => {
                let (pipe, first, length) = reader.into_forward();
                StreamSource::Forward {
                    pipe,
                    first,
                    length,
                }
            }
            Kind::Reader(..) => StreamSource::Stream(self),
        }
    }

    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        match &mut self.kind {
            Kind::Empty => Ok(None),
            Kind::Bytes(bytes) if bytes.is_empty() => Ok(None),
            Kind::Bytes(bytes) => Ok(Some(std::mem::take(bytes))),
            Kind::Incoming(reader) => reader.next_chunk(),
            Kind::Reader(reader, buffers) => buffers.read_chunk(reader),
        }
    }
}

/// What the response side does with a body.
pub(crate) enum StreamSource {
    /// Already in memory: sent from the reactor, the worker is free at once.
    Full(Bytes),
    /// Must be read on the worker, chunk by chunk.
    Stream(Body),
    /// The request body, sent on as the response body (an echo): the reactor takes it
    /// from the request's pipe itself, starting with `first`, and no worker is held.
    /// `length`: the bytes still to come, `first` included, when the request declared it.
    Forward {
        pipe: Arc<Pipe>,
        first: Bytes,
        length: Option<u64>,
    },
}

/// How many times deeper the pipe of a pulled body is for a client that takes it fast
/// (see [`Pull::set_fast`]).
pub(crate) const FAST_PIPE_FACTOR: usize = 4;

/// A streamed response body that the connection pulls: a worker is taken only to read the
/// next chunks while the pipe has room for them, and given back as soon as it is full; a
/// client that does not read costs the chunks queued, never a thread.
///
/// The connection (on the reactor) calls [`Pull::want_more`] each time it takes a chunk;
/// below half the pipe's capacity that schedules one refill, which reads until the pipe is
/// full or the body ends. Both sides decide under the same lock, so a refill is never
/// missed and never runs twice at once. A refill is an inline job of the reactor's leader
/// (`reactor::leader`) like a quick handler: no thread switch, and a reader that blocks
/// (a slow disk, a pipe from another process) is taken over by the monitor like a handler
/// that blocks, its refills then going to the pool for a while. (Handing every refill to a
/// pool thread cost two thread switches per 32 KiB: 1.5× the peer's CPU per MB sent.)
///
/// A client that takes the body fast gets a pipe [`FAST_PIPE_FACTOR`] times as deep
/// ([`Pull::set_fast`]): each refill then lets the connection write several TLS records'
/// worth back to back. With the 64 KiB pipe, pinned to one CPU, 8 MiB HTTP/1.1 downloads
/// cost 1 010–1 060 ms of server CPU per 200 against the peer's 740–820: one write per
/// refill found curl asleep each time (15 500 wake-ups against 3 900), and each wake-up of
/// a thread on the other CPU cost the sender in the kernel; with 256 KiB, 740–770 ms.
pub(crate) struct Pull {
    pub(crate) pipe: Arc<Pipe>,
    /// The pipe's capacity for a client that is not known to be fast.
    capacity: usize,
    source: Mutex<PullSource>,
    pool: WorkerPool,
    /// The route (see `leader::route_of`) refills are judged by when they block.
    route: usize,
}

struct PullSource {
    /// The body, while no worker reads it and it has not ended.
    body: Option<Body>,
    /// A job is queued or running.
    scheduled: bool,
}

impl Pull {
    /// A pulled body over a pipe of `capacity` bytes. The caller (the thread that just ran
    /// the handler) fills the pipe first with [`Pull::produce`].
    pub(crate) fn new(body: Body, capacity: usize, pool: WorkerPool, route: usize) -> Arc<Pull> {
        Arc::new(Pull {
            pipe: Pipe::new(capacity),
            capacity,
            source: Mutex::new(PullSource {
                body: Some(body),
                scheduled: true,
            }),
            pool,
            route,
        })
    }

    fn lock(&self) -> MutexGuard<'_, PullSource> {
        // Nothing panics while holding this lock (the user's reader runs outside it).
        self.source.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn low(&self) -> bool {
        self.pipe.buffered() < self.pipe.capacity() / 2
    }

    /// Deepens the pipe to [`FAST_PIPE_FACTOR`] times its capacity for a client that takes
    /// the body fast, or brings it back. Chunks already queued stay; refills stop short of
    /// the new capacity.
    pub(crate) fn set_fast(&self, fast: bool) {
        let factor = if fast { FAST_PIPE_FACTOR } else { 1 };
        self.pipe
            .capacity
            .store(self.capacity * factor, Ordering::Relaxed);
    }

    /// The connection took a chunk: starts a refill on a worker when the pipe runs low.
    pub(crate) fn want_more(self: &Arc<Self>) {
        if !self.low() {
            return;
        }
        let mut source = self.lock();
        if source.scheduled || source.body.is_none() {
            return;
        }
        source.scheduled = true;
        drop(source);
        let this = self.clone();
        // Holding the pool place the leader gives it, if it runs inline.
        let refill = Box::new(move |_place: Option<crate::worker::InlineRun>| this.produce());
        let Err(refill) = crate::reactor::leader::defer(self.route, refill) else {
            return;
        };
        if self
            .pool
            .try_execute(Box::new(move || refill(None)))
            .is_err()
        {
            tracing::warn!("all workers busy and the queue is full; response body cut short");
            self.lock().body = None;
            self.pipe.finish(Err(io::Error::other(
                "no worker free to read the response body",
            )));
        }
    }

    /// On a worker: reads chunks until the pipe is full, the body ends, or the client is
    /// gone; then gives the body back for the next refill.
    pub(crate) fn produce(&self) {
        let Some(mut body) = self.lock().body.take() else {
            self.lock().scheduled = false;
            return;
        };
        loop {
            if self.pipe.is_consumer_gone() {
                self.lock().scheduled = false;
                return;
            }
            let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body.next_chunk()));
            let room = match next {
                Ok(Ok(Some(chunk))) => self.pipe.push_pulled(chunk),
                Ok(Ok(None)) => {
                    self.pipe.finish(Ok(()));
                    break;
                }
                Ok(Err(error)) => {
                    tracing::info!(%error, "response body ended early");
                    self.pipe.finish(Err(error));
                    break;
                }
                Err(_) => {
                    tracing::error!("response body reader panicked");
                    self.pipe
                        .finish(Err(io::Error::other("response body reader panicked")));
                    break;
                }
            };
            if room {
                continue;
            }
            let mut source = self.lock();
            // Decided under the lock `want_more` takes: either it sees the body back and
            // schedules, or this sees the pipe drained and goes on.
            if self.low() {
                continue;
            }
            source.body = Some(body);
            source.scheduled = false;
            return;
        }
        // Ended: the body (a file, say) is dropped here, on the worker.
        self.lock().scheduled = false;
        drop(body);
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.kind {
            Kind::Empty => Ok(0),
            Kind::Bytes(bytes) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                bytes.advance(n);
                Ok(n)
            }
            Kind::Reader(reader, _) => reader.read(buf),
            Kind::Incoming(reader) => {
                while reader.current.is_empty() {
                    match reader.pipe.pop_blocking()? {
                        Some(chunk) => reader.current = chunk,
                        None => return Ok(0),
                    }
                }
                let n = reader.current.len().min(buf.len());
                buf[..n].copy_from_slice(&reader.current[..n]);
                reader.current.advance(n);
                reader.handed_out(n);
                Ok(n)
            }
        }
    }
}

/// The error inside the `io::Error` a request body read fails with once the body grows
/// past [`Limits::max_request_body_bytes`](crate::Limits::max_request_body_bytes);
/// [`Error`](crate::Error) maps it to `413`.
#[derive(Debug)]
pub(crate) struct BodyTooLarge {
    pub(crate) limit: u64,
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body is larger than {} bytes (Limits::max_request_body_bytes)",
            self.limit
        )
    }
}

impl std::error::Error for BodyTooLarge {}

/// Iterator over a body's chunks, from [`Body::chunks`].
pub struct Chunks<'a> {
    body: &'a mut Body,
}

impl Iterator for Chunks<'_> {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        self.body.next_chunk().transpose()
    }
}

impl Default for Body {
    fn default() -> Body {
        Body::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Empty => f.write_str("Body::Empty"),
            Kind::Bytes(bytes) => write!(f, "Body::Bytes({} bytes)", bytes.len()),
            Kind::Reader(..) => f.write_str("Body::Reader"),
            Kind::Incoming(_) => f.write_str("Body::Incoming"),
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body {
            kind: Kind::Bytes(bytes),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::from(Bytes::from(bytes))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Body {
        Body::from(Bytes::from(text))
    }
}

/// Copies the text, so a borrowed `&str` (`req.uri().path()`) works as well as a literal;
/// `Body::from(Bytes::from_static(..))` avoids the copy of a `'static` one.
impl From<&str> for Body {
    fn from(text: &str) -> Body {
        Body::from(Bytes::copy_from_slice(text.as_bytes()))
    }
}

/// Copies the bytes (see `From<&str>`).
impl From<&[u8]> for Body {
    fn from(bytes: &[u8]) -> Body {
        Body::from(Bytes::copy_from_slice(bytes))
    }
}

impl From<std::borrow::Cow<'_, str>> for Body {
    fn from(text: std::borrow::Cow<'_, str>) -> Body {
        match text {
            std::borrow::Cow::Borrowed(text) => Body::from(text),
            std::borrow::Cow::Owned(text) => Body::from(text),
        }
    }
}

impl From<()> for Body {
    fn from((): ()) -> Body {
        Body::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_chunk_gives_its_buffer_back_and_a_kept_one_is_never_overwritten() {
        // 16 KiB of 'a', then 5 bytes of 'b', then 16 KiB of 'c'.
        let data: Vec<u8> = [
            vec![b'a'; STREAM_CHUNK],
            vec![b'b'; 5],
            vec![b'c'; STREAM_CHUNK],
        ]
        .concat();
        struct Steps(Vec<Vec<u8>>);
        impl Read for Steps {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some(next) = self.0.first_mut() else {
                    return Ok(0);
                };
                let n = next.len().min(buf.len());
                buf[..n].copy_from_slice(&next[..n]);
                next.drain(..n);
                if next.is_empty() {
                    self.0.remove(0);
                }
                Ok(n)
            }
        }
        let mut body = Body::from_reader(Steps(vec![
            data[..STREAM_CHUNK].to_vec(),
            data[STREAM_CHUNK..STREAM_CHUNK + 5].to_vec(),
            data[STREAM_CHUNK + 5..].to_vec(),
        ]));
        let first = body.next_chunk().unwrap().unwrap();
        assert_eq!(&first[..], &data[..STREAM_CHUNK]);
        let spare = |body: &Body| match &body.kind {
            Kind::Reader(_, buffers) => buffers.spare.as_ref().map_or(0, |s| lock_spare(s).len()),
            _ => unreachable!(),
        };
        let first_at = first.as_ptr();
        assert_eq!(spare(&body), 0);
        drop(first); // sent: its buffer is spare again
        assert_eq!(
            spare(&body),
            1,
            "the sent chunk's buffer was not given back"
        );
        let second = body.next_chunk().unwrap().unwrap();
        assert_eq!(spare(&body), 0);
        assert_eq!(second.as_ptr(), first_at, "the spare buffer was not reused");
        // A short read shows only what it read, not what the buffer held before.
        assert_eq!(&second[..], b"bbbbb");
        // Kept (still queued): the next chunk must go to another buffer.
        let third = body.next_chunk().unwrap().unwrap();
        assert_ne!(third.as_ptr(), second.as_ptr());
        assert_eq!(&second[..], b"bbbbb", "a queued chunk was overwritten");
        assert_eq!(&third[..], &data[STREAM_CHUNK + 5..]);
        assert!(body.next_chunk().unwrap().is_none());
        // Chunks outliving their body just free their buffer.
        drop(body);
        drop((second, third));
    }

    #[test]
    fn pipe_applies_backpressure_to_a_blocking_producer() {
        let pipe = Pipe::new(4);
        let producer = {
            let pipe = pipe.clone();
            std::thread::spawn(move || {
                for i in 0..10u8 {
                    pipe.push_blocking(Bytes::from(vec![i; 4]), Duration::from_secs(10))?;
                }
                pipe.finish(Ok(()));
                Ok::<_, io::Error>(())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        // The producer is stuck behind the capacity: one chunk queued, not ten.
        assert_eq!(pipe.lock().chunks.len(), 1);
        let mut seen = Vec::new();
        while let Some(chunk) = pipe.pop_blocking().unwrap() {
            seen.push(chunk[0]);
        }
        producer.join().unwrap().unwrap();
        assert_eq!(seen, (0..10).collect::<Vec<u8>>());
    }

    #[test]
    fn a_failed_end_is_an_error_not_eof() {
        let pipe = Pipe::new(1024);
        pipe.push(Bytes::from_static(b"abc"));
        pipe.finish(Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "truncated",
        )));
        let mut body = Body::incoming(pipe, None);
        let mut out = Vec::new();
        let err = body.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(out, b"abc");
    }

    #[test]
    fn dropping_the_reader_releases_the_producer() {
        let pipe = Pipe::new(1);
        pipe.push_blocking(Bytes::from_static(b"x"), Duration::from_secs(10))
            .unwrap();
        let producer = {
            let pipe = pipe.clone();
            std::thread::spawn(move || {
                pipe.push_blocking(Bytes::from_static(b"y"), Duration::from_secs(10))
            })
        };
        drop(Body::incoming(pipe, None));
        let err = producer.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn reader_bodies_stream_in_chunks() {
        let mut body = Body::from_reader(io::repeat(7).take(40_000));
        let sizes: Vec<usize> = body.chunks().map(|c| c.unwrap().len()).collect();
        assert_eq!(
            sizes,
            vec![STREAM_CHUNK, STREAM_CHUNK, 40_000 - 2 * STREAM_CHUNK]
        );
    }
}
