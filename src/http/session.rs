//! The connection state machine: everything one HTTP/1.1 connection does, except the socket.
//!
//! A [`Session`] takes the bytes a runner read ([`Session::read_buf`], [`Session::received`]),
//! says what it needs next ([`Session::poll`]: a request for the handler, a body chunk, a write,
//! a read, with the deadline of that wait), gives the bytes to send ([`Session::output`],
//! [`Session::wrote`]) and takes the handler's response ([`Session::respond`],
//! [`Session::body_chunk`], [`Session::body_end`]). It never touches a socket, a clock or a
//! thread: time comes in as `now`, so it is tested in memory with a fake clock, and every runner
//! pumps the same machine, so framing, keep-alive, drain, linger and timeouts exist once.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::access_log::{self, AccessLog, Record};
use crate::config::Config;
use crate::environ::Vars;
use crate::error::ParseError;
use crate::http::date::DateCache;
use crate::http::decode::Decoder;
use crate::http::encode::{self, BodyFraming, Framed, RequestInfo, ResponseHead};
use crate::http::parse::{self, ConnInfo, Framing, HeadScanner, RequestHead};
use crate::http::proxy;
use crate::logging::Level;

/// First size of a read buffer; it grows to hold a whole head (and a buffered body) when needed.
const READ_BUFFER: usize = 8 * 1024;
/// Least room offered to a read.
const MIN_READ: usize = 4 * 1024;
/// Chunks up to this size are copied next to their framing; larger ones are sent from where
/// they are.
const COPY_CHUNK_LIMIT: usize = 16 * 1024;
/// Output beyond this is written before another response or body chunk is added: responses to
/// pipelined requests are gathered into one write up to here.
const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// How long, and how much, input is read and discarded after deciding to close a connection
/// that may still be sending, so that the client reads our response before a reset (RFC 9112
/// §9.6).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
/// At a graceful stop, how long a connection idle in keep-alive still waits for a request that
/// may already be on its way; such a request is answered (with `Connection: close`).
pub(crate) const STOP_GRACE: Duration = Duration::from_millis(500);

/// What a session needs next from the code that drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// A request head is parsed (its variables are in [`Session::take_vars`]): call the
    /// handler, then [`Session::respond`].
    Request(RequestHead),
    /// Pull the next chunk of the response body: [`Session::body_chunk`], [`Session::body_end`]
    /// or [`Session::body_failed`].
    Body,
    /// Write [`Session::output`] (it is not empty), until the deadline at the latest.
    Write(Option<Instant>),
    /// Send the next part of the file body without reading it ([`Session::begin_direct`]),
    /// then [`Session::sent_directly`]; until the deadline at the latest.
    SendFile(Option<Instant>),
    /// Read into [`Session::read_buf`], until the deadline at the latest. `idle` when no request
    /// has begun: a graceful stop may end this wait.
    Read { deadline: Option<Instant>, idle: bool },
    /// Shut down the sending side of the socket (a lingering close has begun), then poll again.
    ShutdownWrite,
    /// Close the connection.
    Close,
}

/// What a read of the request body gave, for `wsgi.input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyRead {
    /// This many body bytes were written to the caller's buffer.
    Data(usize),
    /// The body is complete.
    End,
    /// The body is broken (framing, limit, timeout, or the client left); the connection closes.
    Failed(ParseError),
    /// Output is pending (`100 Continue`, or responses to earlier requests): write it, then read
    /// again.
    Flush(Option<Instant>),
    /// Bytes are needed: read, then read the body again.
    Read(Option<Instant>),
}

/// A finished response the access log has yet to hear of: it is logged once its last byte is
/// written (or the connection fails), so its line holds what the client actually got.
#[derive(Debug, Clone, Copy)]
struct Unlogged {
    status: u16,
    body_bytes: u64,
    started: Instant,
    /// Whether the request head was parsed: the session's variables are this request's.
    parsed: bool,
    /// Whether the response is the application's: the session's response head is its.
    app_head: bool,
    /// Framing bytes queued after the last body byte (a chunk's CRLF, the last chunk).
    framing_tail: usize,
}

/// Most of a refused request's first line that its access log line shows.
const MAX_LOGGED_LINE: usize = 2048;

/// A read buffer: `data[start..end]` holds bytes received and not yet consumed.
#[derive(Default)]
struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    #[inline]
    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Room for at least `min` more bytes, moving unconsumed bytes to the front first.
    #[inline]
    fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.data.len() - self.end < min {
            let len = (self.end + min).max(READ_BUFFER).max(self.data.len() * 2);
            self.data.resize(len, 0);
        }
        &mut self.data[self.end..]
    }
}

/// Bytes waiting to be written, in order: whole segments sent from where they are (large body
/// chunks), then a tail that small pieces are copied into. The tail's allocation is kept from
/// response to response.
#[derive(Default)]
struct Output {
    segments: VecDeque<Bytes>,
    tail: Vec<u8>,
    /// Bytes of the first segment (or, with no segments, of the tail) already written.
    written: usize,
    len: usize,
}

impl Output {
    #[inline]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn extend(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Appends with a closure writing into the tail.
    #[inline]
    fn extend_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let before = self.tail.len();
        write(&mut self.tail);
        self.len += self.tail.len() - before;
    }

    #[inline(always)]
    fn push(&mut self, chunk: Bytes) {
        if chunk.len() <= COPY_CHUNK_LIMIT {
            return self.extend(&chunk);
        }
        self.push_segment(chunk);
    }

    /// [`Output::push`] for a chunk too large to copy.
    #[inline(never)]
    fn push_segment(&mut self, chunk: Bytes) {
        if !self.tail.is_empty() {
            let tail = std::mem::take(&mut self.tail);
            let unwritten = if self.segments.is_empty() { self.written } else { 0 };
            // The tail is written before the new segment: it becomes a segment of its own.
            let mut tail = Bytes::from(tail);
            if unwritten > 0 {
                tail = tail.slice(unwritten..);
                self.written = 0;
            }
            self.segments.push_back(tail);
        }
        self.len += chunk.len();
        self.segments.push_back(chunk);
    }

    #[inline]
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        let mut skip = self.written;
        for segment in self.segments.iter().map(|b| &b[..]).chain(std::iter::once(&self.tail[..])) {
            if n == out.len() {
                break;
            }
            let part = &segment[skip.min(segment.len())..];
            skip = 0;
            if !part.is_empty() {
                out[n] = IoSlice::new(part);
                n += 1;
            }
        }
        n
    }

    #[inline]
    fn advance(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            match self.segments.front() {
                Some(front) => {
                    let left = front.len() - self.written;
                    if n < left {
                        self.written += n;
                        return;
                    }
                    n -= left;
                    self.written = 0;
                    self.segments.pop_front();
                }
                None => {
                    self.written += n;
                    break;
                }
            }
        }
        if self.len == 0 {
            self.segments.clear();
            self.tail.clear();
            self.written = 0;
        }
    }

    fn clear(&mut self) {
        self.segments.clear();
        self.tail.clear();
        self.written = 0;
        self.len = 0;
    }
}

/// The allocations a session reuses from request to request, handed to a pool while the
/// connection sits idle so that ten thousand idle connections do not hold ten thousand sets.
#[derive(Default)]
pub(crate) struct Buffers {
    read: Vec<u8>,
    write: Vec<u8>,
    vars: Vars,
    head: ResponseHead,
}

/// Idle sessions' buffers, for the next session that has bytes to read: bounded, so that a burst
/// of connections leaves no lasting memory behind.
pub(crate) struct BufferPool {
    spare: std::sync::Mutex<Vec<Buffers>>,
    keep: usize,
}

impl BufferPool {
    /// A pool that keeps at most `keep` sets.
    pub(crate) fn new(keep: usize) -> BufferPool {
        BufferPool { spare: std::sync::Mutex::new(Vec::new()), keep }
    }

    fn take(&self) -> Buffers {
        self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default()
    }

    fn give(&self, buffers: Buffers) {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < self.keep {
            spare.push(buffers);
        }
    }
}

/// Where the connection stands.
enum Phase {
    /// Waiting for, or reading, a request head.
    Head,
    /// A head is parsed; its (small) body is being buffered before the request is handed out.
    Buffering(Exchange),
    /// The request was handed out: the handler runs, then its response is written.
    Exchange(Exchange),
    /// Writing what is pending, then closing (after a lingering read, if `linger`).
    Closing(Closing),
    Closed,
}

struct Closing {
    linger: bool,
    /// When the lingering read ends, once the sending side is shut down.
    until: Option<Instant>,
    discarded: usize,
}

/// One request and its response.
struct Exchange {
    req: RequestHead,
    decoder: Decoder,
    continue_pending: bool,
    body_error: Option<ParseError>,
    /// When reading the body must have progressed by (see [`body_progress`]).
    body_deadline: Option<Instant>,
    /// Body bytes read and discarded after the response.
    drained: u64,
    started: Instant,
    response: Response,
}

enum Response {
    /// The handler has not answered yet.
    Pending,
    /// The body is being pulled; `head` until it is encoded, with the first non-empty chunk.
    Streaming {
        head: Option<ResponseHead>,
        framing: BodyFraming,
        body_len: Option<u64>,
        written: u64,
        keep_alive: bool,
        /// The body goes out straight from a file ([`Next::SendFile`]), not through the output.
        direct: bool,
    },
    /// Everything is queued; what remains is the drain of an unread request body.
    Done { keep_alive: bool },
}

/// The state machine of one connection. See the module documentation.
pub(crate) struct Session {
    config: Arc<Config>,
    info: ConnInfo,
    rbuf: ReadBuf,
    out: Output,
    vars: Vars,
    head: ResponseHead,
    scanner: HeadScanner,
    phase: Phase,
    served: usize,
    /// Bodies up to this many bytes are read before their request is handed out.
    buffered_body: u64,
    /// When a graceful stop began, if one has.
    stopping: Option<Instant>,
    /// When the wait for the next request began.
    idle_since: Instant,
    /// When the first byte of the head being received came.
    head_started: Option<Instant>,
    /// When writing last made progress (or output became pending).
    write_progress: Instant,
    /// The client will send nothing more.
    eof: bool,
    /// The response whose access log line waits for its last byte (with an access log only).
    unlogged: Option<Unlogged>,
    /// The first line of a request refused before it was parsed, for its access log line.
    raw_line: Vec<u8>,
    /// The `Date` of the responses, known for a second at a time.
    date: DateCache,
}

impl Session {
    /// A session for a connection accepted at `now`. `buffered_body`: bodies up to that size are
    /// read whole before their request is handed out (0 for runners that give each connection a
    /// thread of its own).
    pub(crate) fn new(config: Arc<Config>, mut info: ConnInfo, buffered_body: u64, now: Instant) -> Session {
        info.trusted_proxy = config.forwarded_allow_ips.contains(info.peer);
        Session {
            config,
            info,
            rbuf: ReadBuf::default(),
            out: Output::default(),
            vars: Vars::default(),
            head: ResponseHead::default(),
            scanner: HeadScanner::default(),
            phase: Phase::Head,
            served: 0,
            buffered_body,
            stopping: None,
            idle_since: now,
            head_started: None,
            write_progress: now,
            eof: false,
            unlogged: None,
            raw_line: Vec::new(),
            date: DateCache::default(),
        }
    }

    /// Room to read into; report what was read with [`Session::received`].
    #[inline]
    pub(crate) fn read_buf(&mut self) -> &mut [u8] {
        self.rbuf.spare(MIN_READ)
    }

    /// `n` bytes were read into [`Session::read_buf`] at `now`.
    #[inline]
    pub(crate) fn received(&mut self, n: usize, now: Instant) {
        self.rbuf.end += n;
        match &mut self.phase {
            Phase::Closing(c) => {
                c.discarded += self.rbuf.filled().len();
                self.rbuf.clear();
            }
            Phase::Closed => self.rbuf.clear(),
            Phase::Head => {}
            Phase::Buffering(x) | Phase::Exchange(x) => {
                if !x.decoder.is_done() {
                    x.body_deadline = body_progress(&self.config, x.body_deadline, n, now);
                }
            }
        }
    }

    /// The client closed its sending side (a read returned 0).
    #[inline]
    pub(crate) fn received_eof(&mut self) {
        self.eof = true;
    }

    /// Writing failed for good (the client is gone): nothing more will be sent.
    pub(crate) fn write_failed(&mut self) {
        self.note_cut_short();
        let unsent = self.out.len;
        self.out.clear();
        self.phase = Phase::Closed;
        // No clock here: the response was cut when writing last made progress.
        self.log_access(self.write_progress, unsent);
    }

    /// The sending side was shut down at `now` ([`Next::ShutdownWrite`]).
    pub(crate) fn shut_down(&mut self, now: Instant) {
        if let Phase::Closing(c) = &mut self.phase {
            c.until = Some(now + LINGER_TIME);
        }
    }

    /// The bytes to write next, as up to `slices.len()` slices; returns how many were filled.
    #[inline]
    pub(crate) fn output<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        self.out.slices(slices)
    }

    /// `n` bytes of [`Session::output`] were written at `now`.
    #[inline]
    pub(crate) fn wrote(&mut self, n: usize, now: Instant) {
        self.out.advance(n);
        if n > 0 {
            self.write_progress = now;
        }
        if self.out.is_empty() && self.unlogged.is_some() {
            self.log_access(now, 0);
        }
    }

    /// Begins a graceful stop: the response in progress says `Connection: close`, and a
    /// connection idle in keep-alive gets [`STOP_GRACE`] for a request already on its way.
    pub(crate) fn begin_stop(&mut self, now: Instant) {
        self.stopping.get_or_insert(now);
    }

    #[inline]
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// The variables of the request just handed out, for its environ.
    #[inline]
    pub(crate) fn take_vars(&mut self) -> Vars {
        std::mem::take(&mut self.vars)
    }

    /// Gives the variable storage back for the next request.
    #[inline]
    pub(crate) fn put_vars(&mut self, vars: Vars) {
        self.vars = vars;
    }

    /// Storage for the response head, lent to the handler's `StartResponse`.
    #[inline]
    pub(crate) fn take_response_head(&mut self) -> ResponseHead {
        std::mem::take(&mut self.head)
    }

    /// Whether the session sits between requests with nothing buffered either way, holding
    /// buffers it does not need.
    #[inline]
    fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Head)
            && self.rbuf.filled().is_empty()
            && self.out.is_empty()
            && self.rbuf.data.capacity() > 0
    }

    /// Hands the buffers to `pool` if the session has been idle (a parked keep-alive
    /// connection) for at least `idle_for` at `now`.
    pub(crate) fn release_buffers(&mut self, pool: &BufferPool, now: Instant, idle_for: Duration) {
        if !self.is_idle() || now.saturating_duration_since(self.idle_since) < idle_for {
            return;
        }
        self.give_buffers(pool);
    }

    /// Hands the buffers of a session that is done with them (its connection closed) to `pool`,
    /// for the next connection: a new connection then starts without allocating, or zeroing, a
    /// read buffer (about 13,000 of the 21,000 instructions a `Connection: close` request cost).
    pub(crate) fn recycle_buffers(&mut self, pool: &BufferPool) {
        if self.rbuf.data.capacity() == 0 {
            return;
        }
        self.give_buffers(pool);
    }

    /// Empties the buffers and hands them to `pool`.
    fn give_buffers(&mut self, pool: &BufferPool) {
        self.rbuf.clear();
        self.out.clear();
        pool.give(Buffers {
            read: std::mem::take(&mut self.rbuf.data),
            write: std::mem::take(&mut self.out.tail),
            vars: std::mem::take(&mut self.vars),
            head: std::mem::take(&mut self.head),
        });
    }

    /// Takes buffers from `pool` if the session gave its own away.
    #[inline]
    pub(crate) fn reclaim_buffers(&mut self, pool: &BufferPool) {
        if self.rbuf.data.capacity() > 0 || !matches!(self.phase, Phase::Head) {
            return;
        }
        let b = pool.take();
        self.rbuf.data = b.read;
        self.out.tail = b.write;
        self.vars = b.vars;
        // Another connection's variables, kept for its next request, must not pass for ours.
        self.vars.clear();
        self.head = b.head;
    }

    /// Gives back response-head storage the handler did not use.
    #[inline]
    pub(crate) fn put_response_head(&mut self, head: ResponseHead) {
        self.head = head;
    }

    /// Whether the response body is wanted ([`Next::Body`] may follow); once not, drop it.
    #[inline]
    pub(crate) fn wants_body(&self) -> bool {
        matches!(&self.phase, Phase::Exchange(Exchange { response: Response::Streaming { .. }, .. }))
    }

    /// Whether the body of the request being served is all in the read buffer (or there is
    /// none), so that `wsgi.input` can be read to the end without waiting on the network.
    pub(crate) fn body_in_hand(&self) -> bool {
        let Phase::Exchange(x) = &self.phase else { return true };
        if x.continue_pending {
            return false;
        }
        x.decoder.remaining_length().is_some_and(|n| self.rbuf.filled().len() as u64 >= n)
    }

    /// Whether the connection is still usable (not closed after a failure).
    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        !matches!(self.phase, Phase::Closed)
    }

    /// The peer as `addr:port` (empty for a Unix socket), for log lines.
    pub(crate) fn peer(&self) -> String {
        if self.info.remote_addr.is_empty() {
            "unix socket".into()
        } else {
            format!("{}:{}", self.info.remote_addr, self.info.remote_port)
        }
    }

    /// When the session next needs attention if nothing happens on the socket.
    #[inline]
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if !self.out.is_empty() {
            return self.write_deadline();
        }
        match &self.phase {
            Phase::Head => self.head_deadline(),
            Phase::Buffering(x) => x.body_deadline,
            Phase::Exchange(x) => match x.response {
                Response::Pending | Response::Done { .. } => x.body_deadline,
                Response::Streaming { direct: true, .. } => self.write_deadline(),
                Response::Streaming { .. } => None,
            },
            Phase::Closing(c) => c.until,
            Phase::Closed => None,
        }
    }

    #[inline]
    fn write_deadline(&self) -> Option<Instant> {
        Some(self.write_progress + self.config.write_timeout?)
    }

    #[inline]
    fn head_deadline(&self) -> Option<Instant> {
        // During a stop, a head (or the wait for one) gets the grace, from the stop or from its
        // own start if later: a client that trickles cannot hold a stopping server up.
        let since = self.head_started.unwrap_or(self.idle_since);
        let grace = self.stopping.map(|t| t.max(since) + STOP_GRACE);
        let own = match self.head_started {
            Some(t0) => self.config.header_timeout.map(|t| t0 + t),
            None => self.config.keepalive_timeout.map(|t| self.idle_since + t),
        };
        match (own, grace) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acts on a deadline that has passed: a write that stalled is abandoned, a head or body
    /// that did not come in time gets `408`, an idle connection closes.
    fn expire(&mut self, now: Instant) {
        let sending_file =
            matches!(self.phase, Phase::Exchange(Exchange { response: Response::Streaming { direct: true, .. }, .. }));
        if !self.out.is_empty() || sending_file {
            self.log(
                Level::Warn,
                &format!("write stalled for {:?}: connection dropped", self.config.write_timeout.unwrap_or_default()),
            );
            return self.write_failed();
        }
        match &mut self.phase {
            Phase::Head if self.head_started.is_some() => self.reject(ParseError::Timeout, now),
            Phase::Head => self.phase = Phase::Closed,
            Phase::Buffering(_) => self.reject(ParseError::Timeout, now),
            Phase::Exchange(x) => {
                x.body_error.get_or_insert(ParseError::Timeout);
                if let Response::Done { .. } = x.response {
                    // Draining after the response: give up on the connection.
                    self.phase = Phase::Closed;
                }
            }
            Phase::Closing(_) | Phase::Closed => self.phase = Phase::Closed,
        }
    }

    /// What the session needs next, at `now`. Call it after every event.
    pub(crate) fn poll(&mut self, now: Instant) -> Next {
        loop {
            let next = match self.step(now) {
                None => continue,
                // `step` leaves the write deadline to here, where `self` is free to borrow.
                Some(Next::Write(_)) => Next::Write(self.write_deadline()),
                Some(Next::SendFile(_)) => Next::SendFile(self.write_deadline()),
                Some(next) => next,
            };
            let deadline = match next {
                Next::Write(d) | Next::SendFile(d) | Next::Read { deadline: d, .. } => d,
                _ => None,
            };
            // A wait whose deadline has passed is not a wait: act on it and look again.
            if deadline.is_some_and(|d| d <= now) {
                self.expire(now);
                continue;
            }
            if self.config.access_log.is_some() && matches!(next, Next::Read { .. } | Next::Close) {
                // The connection waits, or is done: the lines of its responses go out now.
                access_log::flush_thread();
            }
            return next;
        }
    }

    /// One move of [`Session::poll`]: what is needed next, or `None` when the phase changed and
    /// the question must be asked again.
    fn step(&mut self, now: Instant) -> Option<Next> {
        let write = Some(Next::Write(None));
        match &mut self.phase {
            Phase::Closed => return Some(Next::Close),
            Phase::Closing(c) => {
                if !self.out.is_empty() {
                    return write;
                }
                if !c.linger {
                    self.phase = Phase::Closed;
                    return None;
                }
                let Some(until) = c.until else { return Some(Next::ShutdownWrite) };
                if self.eof || c.discarded >= LINGER_BYTES || until <= now {
                    self.phase = Phase::Closed;
                    return None;
                }
                return Some(Next::Read { deadline: Some(until), idle: false });
            }
            Phase::Exchange(x) => match x.response {
                // The handler runs: a driver has nothing to ask until it answers.
                Response::Pending => return if self.out.is_empty() { Some(Next::Close) } else { write },
                Response::Streaming { direct: true, written, framing, .. } => {
                    if !self.out.is_empty() {
                        return write;
                    }
                    if framing == BodyFraming::Length(written) {
                        self.body_end(now);
                        return None;
                    }
                    return Some(Next::SendFile(None));
                }
                Response::Streaming { ref head, .. } => {
                    // A chunk is written before the next is pulled, so a stream paces itself;
                    // until this response has one, earlier responses may wait to go with it.
                    if head.is_none() && !self.out.is_empty() {
                        return write;
                    }
                    return Some(Next::Body);
                }
                Response::Done { keep_alive } => {
                    if keep_alive && !x.decoder.is_done() && x.body_error.is_none() {
                        // Still draining, or the drain ended and the phase moved on.
                        return self.drain();
                    }
                    let keep_alive = keep_alive && x.body_error.is_none() && x.decoder.is_done();
                    let linger = !x.decoder.is_done() || !self.rbuf.filled().is_empty();
                    if keep_alive && self.unlogged.is_some() {
                        // The next request would take the variables this one's log line reads:
                        // it waits for the last byte, unless it is here already (pipelined),
                        // when the line is written with the last byte queued.
                        if !self.out.is_empty() && self.rbuf.filled().is_empty() {
                            return write;
                        }
                        self.log_access(now, 0);
                    }
                    if keep_alive {
                        self.next_request(now);
                    } else {
                        self.phase = Phase::Closing(Closing { linger, until: None, discarded: 0 });
                    }
                }
            },
            Phase::Buffering(x) => {
                // Only `Content-Length` bodies are buffered, and none of it is decoded yet.
                let n = x.decoder.remaining_length().unwrap_or(0);
                if self.rbuf.filled().len() as u64 >= n {
                    let Phase::Buffering(x) = std::mem::replace(&mut self.phase, Phase::Head) else { unreachable!() };
                    let req = x.req;
                    self.phase = Phase::Exchange(x);
                    return Some(Next::Request(req));
                }
                if self.eof {
                    self.reject(ParseError::IncompleteBody, now);
                    return None;
                }
                if !self.out.is_empty() {
                    return write;
                }
                return Some(Next::Read { deadline: x.body_deadline, idle: false });
            }
            Phase::Head => {
                if self.out.len >= OUTPUT_HIGH_WATER {
                    return write;
                }
                match self.parse_head(now) {
                    Err(e) => self.reject(e, now),
                    Ok(Some(req)) => {
                        if let Some(next) = self.begin_exchange(req, now) {
                            return Some(next);
                        }
                    }
                    Ok(None) if !self.out.is_empty() => return write,
                    Ok(None) if self.eof => self.phase = Phase::Closed,
                    Ok(None) => {
                        let idle = self.head_started.is_none();
                        return Some(Next::Read { deadline: self.head_deadline(), idle });
                    }
                }
            }
        }
        None
    }

    /// Reads and discards what the handler left of the request body, up to the drain limit.
    /// `None` when the drain ended (well or not) and the phase moved on.
    fn drain(&mut self) -> Option<Next> {
        let Phase::Exchange(x) = &mut self.phase else { return None };
        let mut scratch = [0u8; 4096];
        loop {
            match x.decoder.decode(self.rbuf.filled(), &mut scratch) {
                Ok((0, 0)) => break,
                Ok((consumed, produced)) => {
                    self.rbuf.consume(consumed);
                    x.drained += produced as u64;
                }
                Err(e) => {
                    x.body_error = Some(e);
                    return None;
                }
            }
            if x.decoder.is_done() {
                return None;
            }
        }
        if x.drained > self.config.drain_limit || self.eof {
            // Not worth waiting for: close instead (lingering, as the client may still send).
            x.body_error.get_or_insert(ParseError::IncompleteBody);
            return None;
        }
        if !self.out.is_empty() {
            return Some(Next::Write(self.write_deadline()));
        }
        Some(Next::Read { deadline: x.body_deadline, idle: false })
    }

    /// Parses the head at the front of the buffer, if it is all there.
    fn parse_head(&mut self, now: Instant) -> Result<Option<RequestHead>, ParseError> {
        if self.info.expect_proxy_header && !self.take_proxy_header(now)? {
            return Ok(None);
        }
        let skip = parse::leading_empty_lines(self.rbuf.filled());
        if skip > 0 {
            self.rbuf.consume(skip);
            self.scanner = HeadScanner::default();
            self.head_started.get_or_insert(now);
        }
        let buf = self.rbuf.filled();
        if buf.is_empty() {
            return Ok(None);
        }
        self.head_started.get_or_insert(now);
        let mut parsed = None;
        if self.scanner.is_fresh() {
            parsed = parse::try_parse_head(buf, &self.config, &self.info, &mut self.vars)?;
        }
        if parsed.is_none() {
            // In pieces: find the end first, so each byte is scanned once however it trickles in.
            let Some(len) = self.scanner.scan(buf, &self.config)? else { return Ok(None) };
            parsed = Some(parse::parse_head(&buf[..len], &self.config, &self.info, &mut self.vars)?);
        }
        let req = parsed.expect("parsed on one path or the other");
        self.rbuf.consume(req.len);
        self.scanner = HeadScanner::default();
        self.head_started = None;
        Ok(Some(req))
    }

    /// Reads the PROXY protocol header the connection begins with: `Ok(false)` while it is
    /// incomplete (bounded by [`proxy::MAX_HEADER_LEN`] and by the head's timeout).
    fn take_proxy_header(&mut self, now: Instant) -> Result<bool, ParseError> {
        let buf = self.rbuf.filled();
        if buf.is_empty() {
            return Ok(false);
        }
        self.head_started.get_or_insert(now);
        if !self.config.proxy_allow_ips.contains(self.info.peer) {
            self.log(Level::Warn, "a PROXY protocol header from a peer not in proxy_allow_ips: refused");
            return Err(ParseError::ProxyProtocol);
        }
        let (header, len) = match proxy::parse(buf) {
            Ok(Some(parsed)) => parsed,
            // The parser decides within its bound; this only makes the bound plain here.
            Ok(None) if buf.len() >= proxy::MAX_HEADER_LEN => return Err(ParseError::ProxyProtocol),
            Ok(None) => return Ok(false),
            Err(e) => {
                self.log(Level::Info, &format!("PROXY protocol: {}", e.description()));
                return Err(ParseError::ProxyProtocol);
            }
        };
        self.rbuf.consume(len);
        self.info.expect_proxy_header = false;
        if let proxy::ProxyHeader::Proxied { source, destination } = header {
            let (source, destination) = (canonical(source), canonical(destination));
            let info = &mut self.info;
            info.remote_addr = source.ip().to_string().into();
            info.remote_port = source.port().to_string().into();
            info.server_name = destination.ip().to_string().into();
            info.server_port = destination.port().to_string().into();
            info.peer = Some(source.ip());
            info.trusted_proxy = self.config.forwarded_allow_ips.contains(info.peer);
        }
        Ok(true)
    }

    /// Starts the exchange of a parsed request; the request is handed out now, or once its body
    /// is buffered.
    fn begin_exchange(&mut self, req: RequestHead, now: Instant) -> Option<Next> {
        let config = &self.config;
        let decoder = match req.framing {
            Framing::Empty => Decoder::length(0),
            Framing::Length(n) => Decoder::length(n),
            Framing::Chunked => Decoder::chunked(config.max_body, config.max_chunk_extension, config.max_trailer),
        };
        let body_deadline = if decoder.is_done() { None } else { config.body_timeout.map(|t| now + t) };
        let exchange = Exchange {
            req,
            decoder,
            continue_pending: req.expect_continue,
            body_error: None,
            body_deadline,
            drained: 0,
            started: now,
            response: Response::Pending,
        };
        let buffer = match req.framing {
            // A client that asked for `100 Continue` sends nothing until the handler reads.
            Framing::Length(n) => !req.expect_continue && n <= self.buffered_body,
            Framing::Empty | Framing::Chunked => false,
        };
        if buffer {
            self.phase = Phase::Buffering(exchange);
            return None;
        }
        self.phase = Phase::Exchange(exchange);
        Some(Next::Request(req))
    }

    /// Reads request body bytes into `out`, for `wsgi.input`.
    pub(crate) fn read_body(&mut self, out: &mut [u8], now: Instant) -> BodyRead {
        // The connection failed under the handler: the body will not come.
        let Phase::Exchange(x) = &mut self.phase else { return BodyRead::Failed(ParseError::IncompleteBody) };
        if let Some(e) = x.body_error {
            return BodyRead::Failed(e);
        }
        if x.decoder.is_done() || out.is_empty() {
            return BodyRead::End;
        }
        if std::mem::take(&mut x.continue_pending) {
            if self.out.is_empty() {
                self.write_progress = now;
            }
            self.out.extend(encode::CONTINUE);
        }
        loop {
            match x.decoder.decode(self.rbuf.filled(), out) {
                Err(e) => {
                    x.body_error = Some(e);
                    return BodyRead::Failed(e);
                }
                Ok((consumed, produced)) => {
                    self.rbuf.consume(consumed);
                    if produced > 0 {
                        return BodyRead::Data(produced);
                    }
                    if x.decoder.is_done() {
                        return BodyRead::End;
                    }
                    if consumed == 0 {
                        break;
                    }
                }
            }
        }
        let failed = if self.eof {
            Some(ParseError::IncompleteBody)
        } else if x.body_deadline.is_some_and(|d| d <= now) {
            Some(ParseError::Timeout)
        } else {
            None
        };
        if let Some(e) = failed {
            x.body_error = Some(e);
            return BodyRead::Failed(e);
        }
        if !self.out.is_empty() {
            return BodyRead::Flush(self.write_deadline());
        }
        BodyRead::Read(x.body_deadline)
    }

    /// The handler answered with `head`; `body_len` is its body's length when known. Returns
    /// whether the body is wanted ([`Next::Body`] follows); when not (no body may be sent, or the
    /// response was refused), drop it.
    pub(crate) fn respond(&mut self, head: ResponseHead, body_len: Option<u64>, now: Instant) -> bool {
        let Some((head, framed)) = self.accept_response(head, body_len, now) else { return false };
        if framed.framing != BodyFraming::NoBody {
            let Framed { framing, keep_alive, .. } = framed;
            if let Phase::Exchange(x) = &mut self.phase {
                let direct = false;
                x.response =
                    Response::Streaming { head: Some(head), framing, body_len, written: 0, keep_alive, direct };
            }
            return true;
        }
        self.queue_whole(head, framed, None, now);
        false
    }

    /// The handler answered with `head` and `body`, all of it in hand: queued at once, exactly as
    /// [`Session::respond`], then [`Session::body_chunk`] with it and [`Session::body_end`] would.
    pub(crate) fn respond_whole(&mut self, head: ResponseHead, body: Bytes, now: Instant) {
        let Some((head, framed)) = self.accept_response(head, Some(body.len() as u64), now) else { return };
        // Its length known, the body is framed by it, or not sent at all.
        let body = (framed.framing != BodyFraming::NoBody).then_some(body);
        self.queue_whole(head, framed, body, now);
    }

    /// How the response `head`, with a body of `body_len` bytes when known, goes out; `None` when
    /// there is no exchange, or the response is refused (and a 500 queued instead).
    #[inline(always)]
    fn accept_response(
        &mut self,
        head: ResponseHead,
        body_len: Option<u64>,
        now: Instant,
    ) -> Option<(ResponseHead, Framed)> {
        let keep_alive = self.keep_alive();
        let Phase::Exchange(x) = &self.phase else { return None };
        let info = RequestInfo { is_head: x.req.is_head, http10: x.req.http10 };
        let framing = head.framing(info, body_len);
        if let (Some(declared), Some(actual), BodyFraming::Length(_)) = (head.content_length, body_len, framing) {
            if declared != actual {
                self.log_request(
                    Level::Error,
                    &format!("Content-Length {declared} but a body of {actual} bytes: answered 500"),
                );
                self.head = head;
                self.error_response(500, "internal server error", now);
                return None;
            }
        }
        let keep_alive = keep_alive && framing != BodyFraming::Close;
        Some((head, Framed { info, framing, body_len, keep_alive }))
    }

    /// Queues a whole response: its head, and its body if it has one; the exchange is done.
    #[inline(always)]
    fn queue_whole(&mut self, head: ResponseHead, framed: Framed, body: Option<Bytes>, now: Instant) {
        if self.out.is_empty() {
            self.write_progress = now;
        }
        let keep_alive = framed.keep_alive;
        let (config, date) = (&self.config, &mut self.date);
        self.out.extend_with(|buf| head.encode(buf, framed, config, date, now));
        let body_bytes = match body {
            Some(chunk) => {
                let n = chunk.len() as u64;
                if n > 0 {
                    self.out.push(chunk);
                }
                n
            }
            None => 0,
        };
        self.finish(head.status, body_bytes, true, 0, now);
        self.head = head;
        if let Phase::Exchange(x) = &mut self.phase {
            x.response = Response::Done { keep_alive };
        }
    }

    /// RFC 9112 §9.3: whether the connection persists after this response. The client wants it
    /// (HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with `keep-alive`), and nothing on our
    /// side forbids it: no stop under way, the request count not reached, the body's framing
    /// intact, no body the client was never asked for (`100-continue` not sent) and no longer
    /// remainder than we drain.
    fn keep_alive(&self) -> bool {
        let Phase::Exchange(x) = &self.phase else { return false };
        let client_wants_it = x.req.keep_alive && !self.eof;
        let body_never_asked_for = x.continue_pending && !x.decoder.is_done();
        let too_long_to_drain = x.decoder.remaining_length().is_some_and(|left| left > self.config.drain_limit);
        client_wants_it
            && self.stopping.is_none()
            && self.served + 1 < self.config.max_requests_per_connection
            && x.body_error.is_none()
            && !body_never_asked_for
            && !too_long_to_drain
    }

    /// Frames and queues one chunk of the response body.
    pub(crate) fn body_chunk(&mut self, chunk: Bytes, now: Instant) {
        if chunk.is_empty() {
            return;
        }
        let Phase::Exchange(Exchange { req, response, .. }) = &mut self.phase else { return };
        let Response::Streaming { head, framing, body_len, written, keep_alive, .. } = response else { return };
        if self.out.is_empty() {
            self.write_progress = now;
        }
        let info = RequestInfo { is_head: req.is_head, http10: req.http10 };
        if let Some(h) = head.take() {
            let framed = Framed { info, framing: *framing, body_len: *body_len, keep_alive: *keep_alive };
            self.out.extend_with(|buf| h.encode(buf, framed, &self.config, &mut self.date, now));
            self.head = h;
        }
        let mut cut = false;
        let chunk = match *framing {
            BodyFraming::Length(n) => {
                let room = usize::try_from(n - *written).unwrap_or(usize::MAX);
                if chunk.len() > room {
                    cut = true;
                    chunk.slice(..room)
                } else {
                    chunk
                }
            }
            _ => chunk,
        };
        *written += chunk.len() as u64;
        let length_reached = matches!(*framing, BodyFraming::Length(n) if *written == n);
        if *framing == BodyFraming::Chunked {
            self.out.extend_with(|buf| encode::chunk_prefix(buf, chunk.len()));
            self.out.push(chunk);
            self.out.extend(encode::CHUNK_SUFFIX);
        } else {
            self.out.push(chunk);
        }
        if cut {
            self.log_request(Level::Warn, "response body longer than its Content-Length: cut");
        }
        if length_reached {
            self.body_end(now);
        }
    }

    /// Whether the body being pulled may go out straight from a file instead
    /// ([`Session::begin_direct`]): its length is the response's `Content-Length`, so no
    /// framing goes between its bytes.
    pub(crate) fn can_send_directly(&self) -> bool {
        matches!(
            self.phase,
            Phase::Exchange(Exchange {
                response: Response::Streaming { framing: BodyFraming::Length(_), direct: false, .. },
                ..
            })
        )
    }

    /// The body will be sent straight from a file: the head is queued now, then
    /// [`Next::SendFile`] asks for each part, reported with [`Session::sent_directly`].
    pub(crate) fn begin_direct(&mut self, now: Instant) {
        let Phase::Exchange(Exchange { req, response, .. }) = &mut self.phase else { return };
        let Response::Streaming { head, framing, body_len, keep_alive, direct, .. } = response else { return };
        *direct = true;
        if let Some(h) = head.take() {
            if self.out.is_empty() {
                self.write_progress = now;
            }
            let info = RequestInfo { is_head: req.is_head, http10: req.http10 };
            let framed = Framed { info, framing: *framing, body_len: *body_len, keep_alive: *keep_alive };
            self.out.extend_with(|buf| h.encode(buf, framed, &self.config, &mut self.date, now));
            self.head = h;
        }
    }

    /// `n` bytes of the body went out straight from the file at `now`.
    pub(crate) fn sent_directly(&mut self, n: usize, now: Instant) {
        let Phase::Exchange(Exchange { response: Response::Streaming { written, .. }, .. }) = &mut self.phase else {
            return;
        };
        *written += n as u64;
        if n > 0 {
            self.write_progress = now;
        }
    }

    /// The file cannot be sent directly after all: the rest of the body is pulled.
    pub(crate) fn direct_unsupported(&mut self) {
        if let Phase::Exchange(Exchange { response: Response::Streaming { direct, .. }, .. }) = &mut self.phase {
            *direct = false;
        }
    }

    /// The response body ended.
    pub(crate) fn body_end(&mut self, now: Instant) {
        let Phase::Exchange(Exchange { req, response, .. }) = &mut self.phase else { return };
        let Response::Streaming { head, framing, written, mut keep_alive, .. } = response else { return };
        let (status, written, framing) = (head.as_ref().map(|h| h.status), *written, *framing);
        if let Some(h) = head.take() {
            // Nothing came: now the length is known.
            let framing = match framing {
                BodyFraming::Chunked | BodyFraming::Close => BodyFraming::Length(0),
                other => other,
            };
            let info = RequestInfo { is_head: req.is_head, http10: req.http10 };
            if self.out.is_empty() {
                self.write_progress = now;
            }
            let framed = Framed { info, framing, body_len: Some(0), keep_alive };
            self.out.extend_with(|buf| h.encode(buf, framed, &self.config, &mut self.date, now));
            self.head = h;
        }
        match framing {
            BodyFraming::Chunked => self.out.extend(encode::LAST_CHUNK),
            BodyFraming::Length(n) if written < n => {
                self.log_request(
                    Level::Warn,
                    &format!("response body shorter than its Content-Length ({written} of {n} bytes)"),
                );
                keep_alive = false;
            }
            BodyFraming::Close => keep_alive = false,
            _ => {}
        }
        let status = status.unwrap_or(self.head.status);
        let framing_tail = match framing {
            BodyFraming::Chunked if written > 0 => encode::CHUNK_SUFFIX.len() + encode::LAST_CHUNK.len(),
            BodyFraming::Chunked => encode::LAST_CHUNK.len(),
            _ => 0,
        };
        self.finish(status, written, true, framing_tail, now);
        if let Phase::Exchange(x) = &mut self.phase {
            x.response = Response::Done { keep_alive };
        }
    }

    /// Pulling the response body failed (an error or a panic, described by `message`): a `500`
    /// if nothing was sent yet, else the connection closes so the client sees the response cut.
    pub(crate) fn body_failed(&mut self, message: &str, now: Instant) {
        self.log_request(Level::Error, message);
        let Phase::Exchange(Exchange { response: Response::Streaming { head, .. }, .. }) = &mut self.phase else {
            return;
        };
        match head.take() {
            Some(h) => {
                self.head = h;
                self.error_response(500, "internal server error", now);
            }
            None => {
                // Part of the body is out: what is queued still goes, then the connection closes.
                self.note_cut_short();
                self.phase = Phase::Closing(Closing { linger: false, until: None, discarded: 0 });
            }
        }
    }

    /// The handler failed (returned an error or panicked, described by `message`): its error
    /// status, or the body's when the request body broke.
    pub(crate) fn handler_failed(&mut self, message: &str, now: Instant) {
        self.log_request(Level::Error, message);
        let error = match &self.phase {
            Phase::Exchange(x) => x.body_error,
            _ => None,
        };
        match error {
            Some(e) => self.error_response(e.status(), e.description(), now),
            None => self.error_response(500, "internal server error", now),
        }
        if let (Some(ParseError::Timeout), Phase::Closing(c)) = (error, &mut self.phase) {
            // A client too slow to send its body is not given more time to send it.
            c.linger = false;
        }
    }

    /// Answers a request that could not be accepted, and closes.
    fn reject(&mut self, error: ParseError, now: Instant) {
        self.log(Level::Info, &format!("rejected request: {} {}", error.status(), error.description()));
        // A client that timed out is not waited for: lingering would give it the time it was refused.
        let linger = error != ParseError::Timeout;
        self.error_response(error.status(), error.description(), now);
        if let Phase::Closing(c) = &mut self.phase {
            c.linger = linger;
        }
    }

    /// Queues an error response and closes after it (lingering).
    fn error_response(&mut self, status: u16, message: &str, now: Instant) {
        let is_head = match &self.phase {
            Phase::Buffering(x) | Phase::Exchange(x) => x.req.is_head,
            // Not parsed: the method is still at the front of the buffer.
            _ => self.rbuf.filled().starts_with(b"HEAD "),
        };
        if self.out.is_empty() {
            self.write_progress = now;
        }
        let config = &self.config;
        self.out.extend_with(|buf| encode::error_response(buf, status, message, is_head, config));
        self.finish(status, 0, false, 0, now);
        self.phase = Phase::Closing(Closing { linger: true, until: None, discarded: 0 });
    }

    /// A response is all queued: `app_head` when it is the application's (not an error page).
    fn finish(&mut self, status: u16, body_bytes: u64, app_head: bool, framing_tail: usize, now: Instant) {
        if self.config.access_log.is_none() {
            return;
        }
        let (started, parsed) = match &self.phase {
            Phase::Buffering(x) | Phase::Exchange(x) => (x.started, true),
            _ => (self.head_started.unwrap_or(now), false),
        };
        if !parsed {
            let buf = self.rbuf.filled();
            let line = &buf[..buf.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(buf.len())];
            self.raw_line.clear();
            self.raw_line.extend_from_slice(&line[..line.len().min(MAX_LOGGED_LINE)]);
        }
        self.unlogged = Some(Unlogged { status, body_bytes, started, parsed, app_head, framing_tail });
    }

    /// A streamed response whose head went out ends before its body did (the client left, the
    /// body failed): its access log line is due all the same, with what was sent.
    fn note_cut_short(&mut self) {
        if self.config.access_log.is_none() || self.unlogged.is_some() {
            return;
        }
        let Phase::Exchange(x) = &self.phase else { return };
        let Response::Streaming { head: None, written, framing, .. } = x.response else { return };
        let (status, started) = (self.head.status, x.started);
        let framing_tail = if framing == BodyFraming::Chunked { encode::CHUNK_SUFFIX.len() } else { 0 };
        let entry = Unlogged { status, body_bytes: written, started, parsed: true, app_head: true, framing_tail };
        self.unlogged = Some(entry);
    }

    /// Writes the access log line of the response in flight, `unsent` bytes of the output
    /// never having gone out, at `now`.
    fn log_access(&mut self, now: Instant, unsent: usize) {
        let (Some(entry), Some(log)) = (self.unlogged.take(), &self.config.access_log) else { return };
        AccessLog::log(
            log,
            &Record {
                vars: entry.parsed.then_some(&self.vars),
                raw_line: &self.raw_line,
                remote_addr: &self.info.remote_addr,
                status: entry.status,
                // The unsent bytes are the end of the output: this response's body, then its framing.
                body_bytes: entry.body_bytes.saturating_sub(unsent.saturating_sub(entry.framing_tail) as u64),
                duration: now.saturating_duration_since(entry.started),
                response: entry.app_head.then_some(&self.head),
            },
        );
    }

    fn next_request(&mut self, now: Instant) {
        self.served += 1;
        self.phase = Phase::Head;
        self.idle_since = now;
        self.head_started = None;
    }

    /// Logs `message`, naming the peer.
    fn log(&self, level: Level, message: &str) {
        self.config.log_conn(level, &format!("{}: {message}", self.peer()));
    }

    /// Logs `message` with the peer and the request line of the exchange in progress.
    fn log_request(&self, level: Level, message: &str) {
        let get = |k: &[u8]| String::from_utf8_lossy(self.vars.get(k).unwrap_or(b"")).into_owned();
        self.log(level, &format!("{} {}: {message}", get(b"REQUEST_METHOD"), get(b"RAW_URI")));
    }
}

impl Drop for Session {
    /// A connection dropped with a response in flight (a runner abandoning it at the end of a
    /// graceful stop): its access log line still gets written, with what was sent.
    fn drop(&mut self) {
        self.note_cut_short();
        if self.unlogged.is_some() {
            self.log_access(self.write_progress, self.out.len);
            access_log::flush_thread();
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The body deadline after `n` more body bytes came at `now`: without a minimum rate, the stall
/// timeout from now; with one, the deadline moves by the time those bytes earn at the minimum
/// rate, never beyond the stall timeout from now (a burst buys no lasting credit).
fn body_progress(config: &Config, deadline: Option<Instant>, n: usize, now: Instant) -> Option<Instant> {
    let stall = now + config.body_timeout?;
    match (config.min_body_rate, deadline) {
        (Some(rate), Some(deadline)) if rate > 0 => {
            let earned = Duration::from_secs_f64(n as f64 / rate as f64);
            Some((deadline + earned).min(stall))
        }
        _ => Some(stall),
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

/// The in-memory pump behind [`crate::private::fuzz_connection`].
pub(crate) fn fuzz(data: &[u8]) {
    use crate::environ::{BodySource, Environ, Input, RunnerFlags};
    use crate::handler::{Response as HandlerResponse, StartResponse};
    use std::io::Read;

    let Some((ctl, stream)) = data.split_first_chunk::<4>() else { return };
    let read_max = 1 + usize::from(ctl[0]);
    let write_max = 1 + usize::from(ctl[1]) * 64;
    let behaviour = ctl[2] % 6;
    let buffered_body = if ctl[3] & 1 == 1 { 64 } else { 0 };
    // A body in one piece handed over whole, as the connection pump does, or pulled.
    let whole = ctl[3] & 2 == 2;
    let config = Arc::new(
        Config::default()
            .max_head(4096)
            .max_request_line(1024)
            .max_body(Some(8192))
            .drain_limit(1024)
            .error_log(|_| {}),
    );
    let info = ConnInfo::new("s".into(), "1".into(), "192.0.2.1:2".parse().ok());
    let t0 = Instant::now();
    let mut now = t0;
    let mut session = Session::new(Arc::clone(&config), info, buffered_body, now);
    let mut input = stream;
    let mut eof_sent = false;
    let mut written = Vec::new();
    let mut body: Option<crate::body::Body> = None;
    let bound = 4 * (config.max_head + buffered_body as usize) + 2 * READ_BUFFER + 2 * MIN_READ;

    struct Source<'a, 'b> {
        session: &'a mut Session,
        input: &'a mut &'b [u8],
        now: Instant,
        written: &'a mut Vec<u8>,
    }
    impl BodySource for Source<'_, '_> {
        fn read_body(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            loop {
                match self.session.read_body(buf, self.now) {
                    BodyRead::Data(n) => return Ok(n),
                    BodyRead::End => return Ok(0),
                    BodyRead::Failed(e) => return Err(e.into()),
                    BodyRead::Flush(_) => {
                        let mut slices = [IoSlice::new(&[]); 16];
                        let n = self.session.output(&mut slices);
                        let len: usize = slices[..n].iter().map(|s| s.len()).sum();
                        for s in &slices[..n] {
                            self.written.extend_from_slice(s);
                        }
                        self.session.wrote(len, self.now);
                    }
                    BodyRead::Read(deadline) => {
                        if self.input.is_empty() {
                            // The client sends nothing more: first the clock runs out, then the
                            // stream ends.
                            match deadline {
                                Some(d) if d > self.now => self.now = d,
                                _ => self.session.received_eof(),
                            }
                            continue;
                        }
                        let room = self.session.read_buf();
                        let n = room.len().min(self.input.len()).min(64);
                        room[..n].copy_from_slice(&self.input[..n]);
                        *self.input = &self.input[n..];
                        self.session.received(n, self.now);
                    }
                }
            }
        }
    }

    // Every turn reads, writes or moves the clock: a bound in bytes catches a loop.
    for turn in 0.. {
        assert!(
            turn < 100_000 + 4 * (stream.len() + written.len()),
            "the connection never ended ({:?} of fake time)",
            now - t0
        );
        assert!(session.rbuf.data.len() <= bound, "read buffer {} over {bound}", session.rbuf.data.len());
        assert!(session.out.len <= OUTPUT_HIGH_WATER + 64 * 1024, "output {} unbounded", session.out.len);
        match session.poll(now) {
            Next::Close => {
                check_framing(&written);
                return;
            }
            Next::SendFile(_) => unreachable!("the fuzz pump never sends a body straight from a file"),
            Next::Request(_) => {
                let mut storage = session.take_response_head();
                let vars = session.take_vars();
                let mut rest = input;
                let result = {
                    let mut source = Source { session: &mut session, input: &mut rest, now, written: &mut written };
                    let mut env = Environ::new(vars, Input::new(Some(&mut source)), &config, RunnerFlags::default());
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let mut buf = [0u8; 100];
                        match behaviour {
                            1 => {
                                let mut all = Vec::new();
                                env.input().read_to_end(&mut all)?;
                            }
                            2 => {
                                let _read_some = env.input().read(&mut buf)?;
                            }
                            4 => return Err("fails on purpose".into()),
                            5 => panic!("panics on purpose"),
                            _ => {}
                        }
                        let started = StartResponse::new(&mut storage).start("200 OK", [("X-Fuzz", "1")])?;
                        let answer: crate::body::Body = if behaviour == 3 {
                            crate::body::Body::from_chunks(vec![b"ab".to_vec(), Vec::new(), vec![b'c'; 20_000]])
                        } else {
                            "hello".into()
                        };
                        Ok::<HandlerResponse, crate::handler::BoxError>(started.body(answer))
                    }));
                    let vars = env.into_vars();
                    (result, vars, source.now)
                };
                let (result, vars, later) = result;
                input = rest;
                now = later;
                session.put_vars(vars);
                match result {
                    Ok(Ok(HandlerResponse { head, body: b })) => match b.into_bytes() {
                        Ok(bytes) if whole => session.respond_whole(head, bytes, now),
                        Ok(bytes) => {
                            let b = crate::body::Body::from(bytes);
                            if session.respond(head, b.len(), now) {
                                body = Some(b);
                            }
                        }
                        Err(b) => {
                            if session.respond(head, b.len(), now) {
                                body = Some(b);
                            }
                        }
                    },
                    Ok(Err(e)) => session.handler_failed(&format!("{e}"), now),
                    Err(_) => session.handler_failed("panicked", now),
                }
            }
            Next::Body => {
                let b = body.as_mut().expect("a body while the session wants one");
                match b.next_chunk() {
                    Ok(Some(chunk)) => session.body_chunk(chunk, now),
                    Ok(None) => session.body_end(now),
                    Err(e) => session.body_failed(&format!("{e}"), now),
                }
                if !session.wants_body() {
                    body = None;
                }
            }
            Next::Write(_) => {
                let mut slices = [IoSlice::new(&[]); 16];
                let n = session.output(&mut slices);
                let mut taken = 0;
                for s in &slices[..n] {
                    let take = s.len().min(write_max - taken);
                    written.extend_from_slice(&s[..take]);
                    taken += take;
                    if taken == write_max {
                        break;
                    }
                }
                session.wrote(taken, now);
            }
            Next::Read { deadline, .. } => {
                if !input.is_empty() {
                    let room = session.read_buf();
                    let n = room.len().min(input.len()).min(read_max);
                    room[..n].copy_from_slice(&input[..n]);
                    input = &input[n..];
                    session.received(n, now);
                } else if !eof_sent {
                    eof_sent = true;
                    session.received_eof();
                } else {
                    now = deadline.expect("after the end of input, every wait has a deadline");
                }
            }
            Next::ShutdownWrite => session.shut_down(now),
        }
    }
}

/// Checks that `bytes` are whole, well-framed HTTP/1.1 responses, one after another. A response
/// that declares a length may be one to `HEAD` (no body follows); the checker accepts that when
/// what follows is another response or the end.
fn check_framing(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole response head") + 4;
        let head = std::str::from_utf8(&bytes[..end]).expect("an ASCII head");
        bytes = &bytes[end..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        assert!(status_line.starts_with("HTTP/1.1 ") && status_line.len() >= 12, "status line {status_line:?}");
        let status: u16 = status_line[9..12].parse().expect("a status code");
        let mut length = None;
        let mut chunked = false;
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(": ").expect("name: value");
            assert!(!name.is_empty() && name.bytes().all(crate::http::parse::is_tchar), "header name {name:?}");
            if name.eq_ignore_ascii_case("content-length") {
                assert!(length.replace(value.parse::<usize>().expect("a numeric Content-Length")).is_none());
            }
            if name.eq_ignore_ascii_case("transfer-encoding") {
                assert_eq!(value, "chunked");
                chunked = true;
            }
        }
        assert!(!(chunked && length.is_some()), "both Content-Length and chunked");
        if status < 200 || status == 204 || status == 304 {
            continue;
        }
        if chunked {
            loop {
                let line_end = bytes.windows(2).position(|w| w == b"\r\n").expect("a chunk-size line");
                let size = usize::from_str_radix(std::str::from_utf8(&bytes[..line_end]).unwrap(), 16).expect("hex");
                bytes = &bytes[line_end + 2..];
                if size == 0 {
                    assert!(bytes.starts_with(b"\r\n"), "the last chunk ends the body");
                    bytes = &bytes[2..];
                    break;
                }
                assert!(bytes.len() >= size + 2 && &bytes[size..size + 2] == b"\r\n", "chunk data and CRLF");
                bytes = &bytes[size + 2..];
            }
        } else if let Some(n) = length {
            let next_is_response = |b: &[u8]| b.is_empty() || b.starts_with(b"HTTP/1.1 ");
            if bytes.len() >= n && next_is_response(&bytes[n..]) {
                bytes = &bytes[n..];
            } else {
                // A HEAD answer: no body, and a response or the end must follow at once.
                assert!(next_is_response(bytes), "a body of {n} bytes, or none for HEAD");
            }
        } else {
            // Close-delimited: the rest is the body.
            return;
        }
    }
}
