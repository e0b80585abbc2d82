//! The blocking connection driver: the keep-alive loop every blocking runner hands its
//! connections to. It owns the buffers and the timeouts; HTTP syntax is `http::*`'s business.
//!
//! One exchange: wait for a head (keep-alive idle timeout, shutdown-aware) → read it (header
//! deadline) → parse → call the handler (panics caught) with the body behind `wsgi.input` →
//! pull and write the response body → drain what the handler left unread (bounded) → keep alive
//! or close.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::body::Body;
use crate::config::Config;
use crate::environ::{BodySource, Environ, Input, RunnerFlags, Vars};
use crate::error::ParseError;
use crate::handler::{Handler, Response, StartResponse};
use crate::http::decode::Decoder;
use crate::http::encode::{self, BodyFraming, RequestInfo, ResponseHead};
use crate::http::parse::{self, ConnInfo, Framing, HeadScanner, RequestHead};
use crate::shutdown::ShutdownHandle;
use crate::sys::unix;

/// Initial size of a connection's read buffer; it grows up to the head limit when a head needs it.
const READ_BUFFER: usize = 8 * 1024;
/// Chunks up to this size are copied next to their framing and written with one call.
const COPY_CHUNK_LIMIT: usize = 16 * 1024;
/// How long, and how much, we keep reading after deciding to close a connection with unread
/// input, so the client reads our response before a reset (RFC 9112 §9.6).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// What the connection driver reads from and writes to.
pub(crate) trait Transport: Read + Write {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn shutdown_write(&self);
    /// The descriptor to poll for readability, when there is one.
    fn poll_fd(&self) -> Option<RawFd>;
    /// Reads without waiting where the transport can (`WouldBlock` when nothing is there).
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }
}

/// What every connection of one server shares.
pub(crate) struct ServeContext {
    pub(crate) config: Config,
    pub(crate) handler: Box<dyn Handler>,
    pub(crate) flags: RunnerFlags,
    pub(crate) shutdown: ShutdownHandle,
    pub(crate) server_name: Box<str>,
    pub(crate) server_port: Box<str>,
}

/// Serves one connection until it closes, times out, breaks, or the server shuts down.
pub(crate) fn serve_connection<S: Transport>(stream: S, peer: Option<SocketAddr>, ctx: &Arc<ServeContext>) {
    Conn::new(stream, peer, Arc::clone(ctx)).serve(Mode::Blocking);
}

/// How [`Conn::serve`] gets its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Wait on the socket for each request (serial, thread-per-connection and fork runners).
    Blocking,
    /// Serve only the requests whose heads are already in the buffer, then hand the connection
    /// back (the pool runner parks it in its poller until more bytes come).
    Buffered,
}

/// What became of a connection after [`Conn::serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// Still open, with no complete request in the buffer: wait for the socket to be readable.
    Park,
    /// Closed (or to be dropped).
    Closed,
}

/// A read buffer: `data[start..end]` holds bytes received and not yet consumed.
#[derive(Default)]
struct ReadBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room for at least `min` more bytes, moving unconsumed bytes to the front first.
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

    /// Reads once from `stream` into the spare room, retrying on `EINTR`.
    fn fill_from(&mut self, stream: &mut impl Read) -> io::Result<usize> {
        self.fill_with(|buf| stream.read(buf))
    }

    fn fill_with(&mut self, mut read: impl FnMut(&mut [u8]) -> io::Result<usize>) -> io::Result<usize> {
        let spare = self.spare(4096);
        let n = loop {
            match read(spare) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.end += n;
        Ok(n)
    }
}

/// Sets a stream's read timeout only when it changes: a `setsockopt` per read would cost a
/// syscall on every request.
fn set_read_timeout(stream: &impl Transport, cache: &mut Option<Option<Duration>>, timeout: Option<Duration>) {
    if *cache != Some(timeout) {
        // Zero means "no timeout" to the socket API; a deadline that has just passed is 1 ms.
        let t = timeout.map(|t| t.max(Duration::from_millis(1)));
        if stream.set_read_timeout(t).is_ok() {
            *cache = Some(timeout);
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Reads decoded body bytes into `out`, reading the stream as needed. Shared by `wsgi.input`
/// and the drain after the handler.
fn read_body<S: Transport>(
    stream: &mut S,
    rbuf: &mut ReadBuf,
    decoder: &mut Decoder,
    out: &mut [u8],
    timeout: Option<Duration>,
    timeout_cache: &mut Option<Option<Duration>>,
) -> Result<usize, ParseError> {
    loop {
        if decoder.is_done() {
            return Ok(0);
        }
        if !rbuf.filled().is_empty() {
            let (consumed, produced) = decoder.decode(rbuf.filled(), out)?;
            rbuf.consume(consumed);
            if produced > 0 || decoder.is_done() {
                return Ok(produced);
            }
            if consumed > 0 {
                continue;
            }
        }
        set_read_timeout(stream, timeout_cache, timeout);
        match rbuf.fill_from(stream) {
            Ok(0) => return Err(ParseError::IncompleteBody),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Err(ParseError::Timeout),
            Err(_) => return Err(ParseError::IncompleteBody),
        }
    }
}

/// `wsgi.input`'s view of the connection while the handler runs.
struct BodyReader<'a, S> {
    stream: &'a mut S,
    rbuf: &'a mut ReadBuf,
    decoder: Decoder,
    continue_pending: bool,
    error: Option<ParseError>,
    timeout: Option<Duration>,
    timeout_cache: &'a mut Option<Option<Duration>>,
}

impl<S: Transport> BodySource for BodyReader<'_, S> {
    fn read_body(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.error {
            return Err(e.into());
        }
        if self.continue_pending {
            self.continue_pending = false;
            self.stream.write_all(encode::CONTINUE)?;
        }
        read_body(self.stream, self.rbuf, &mut self.decoder, buf, self.timeout, self.timeout_cache).map_err(|e| {
            self.error = Some(e);
            e.into()
        })
    }
}

/// What became of a response.
enum After {
    KeepAlive,
    Close,
    /// Close, but keep reading a little first: the client may still be sending.
    Linger,
}

/// One chunk pulled from a response body, with its panics and errors caught.
enum Pull<'a> {
    Chunk(&'a [u8]),
    End,
    Failed(String),
}

fn pull(body: &mut Body) -> Pull<'_> {
    match catch_unwind(AssertUnwindSafe(move || {
        let body = { body }; // moved, not reborrowed: the chunk outlives the closure
        body.next_chunk()
    })) {
        Ok(Ok(Some(chunk))) => Pull::Chunk(chunk),
        Ok(Ok(None)) => Pull::End,
        Ok(Err(e)) => Pull::Failed(format!("response body failed: {e}")),
        Err(panic) => Pull::Failed(format!("response body panicked: {}", panic_message(&*panic))),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("?")
}

fn write_all_vectored(stream: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match stream.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One client connection: its socket, its buffers (reused from request to request), and where
/// it stands between requests. `Send`, so the pool runner can move it between its poller and
/// its workers.
pub(crate) struct Conn<S> {
    stream: S,
    ctx: Arc<ServeContext>,
    peer: Option<SocketAddr>,
    info: ConnInfo,
    rbuf: ReadBuf,
    out: Vec<u8>,
    vars: Vars,
    head: ResponseHead,
    read_timeout: Option<Option<Duration>>,
    /// Where the search for the end of the next head stands.
    scanner: HeadScanner,
    /// When the first byte of the next head came.
    head_started: Option<Instant>,
    /// A head parsed (into `vars`) and not yet served.
    ready: Option<RequestHead>,
    served: usize,
}

impl<S: Transport> Conn<S> {
    pub(crate) fn new(stream: S, peer: Option<SocketAddr>, ctx: Arc<ServeContext>) -> Conn<S> {
        let info = ConnInfo {
            server_name: ctx.server_name.clone(),
            server_port: ctx.server_port.clone(),
            remote_addr: peer.map_or_else(|| "".into(), |p| p.ip().to_string().into()),
            remote_port: peer.map_or_else(|| "".into(), |p| p.port().to_string().into()),
        };
        let _ = stream.set_write_timeout(ctx.config.write_timeout);
        Conn {
            stream,
            ctx,
            peer,
            info,
            rbuf: ReadBuf::default(),
            out: Vec::with_capacity(1024),
            vars: Vars::default(),
            head: ResponseHead::default(),
            read_timeout: None,
            scanner: HeadScanner::default(),
            head_started: None,
            ready: None,
            served: 0,
        }
    }

    /// Serves requests until the connection closes ([`Mode::Blocking`]), or until no complete
    /// head is left in the buffer ([`Mode::Buffered`]).
    pub(crate) fn serve(&mut self, mode: Mode) -> Served {
        let max = self.ctx.config.max_requests_per_connection;
        while self.served < max {
            let req = match self.next_head(mode) {
                Ok(Some(req)) => req,
                Ok(None) if mode == Mode::Buffered && !self.ctx.shutdown.is_requested() => return Served::Park,
                Ok(None) => return Served::Closed,
                Err(e) => {
                    self.fail(e);
                    return Served::Closed;
                }
            };
            self.served += 1;
            let last = self.served == max || self.ctx.shutdown.is_requested();
            match self.exchange(req, last) {
                After::KeepAlive => {}
                After::Close => return Served::Closed,
                After::Linger => {
                    self.linger();
                    return Served::Closed;
                }
            }
        }
        Served::Closed
    }

    /// Whether a complete head is buffered, parsing it if so (without reading). Also what a
    /// poller calls after each read it does for a parked connection.
    pub(crate) fn poll_head(&mut self) -> Result<bool, ParseError> {
        if self.ready.is_some() {
            return Ok(true);
        }
        let skip = parse::leading_empty_lines(self.rbuf.filled());
        if skip > 0 {
            self.rbuf.consume(skip);
            self.scanner = HeadScanner::default();
            self.head_started.get_or_insert_with(Instant::now);
        }
        let buf = self.rbuf.filled();
        if buf.is_empty() {
            return Ok(false);
        }
        self.head_started.get_or_insert_with(Instant::now);
        let config = &self.ctx.config;
        let mut parsed = None;
        if self.scanner.is_fresh() {
            parsed = parse::try_parse_head(buf, config, &self.info, &mut self.vars)?;
        }
        if parsed.is_none() {
            // In pieces: find the end first, so each byte is scanned once however it trickles in.
            let Some(len) = self.scanner.scan(buf, config)? else { return Ok(false) };
            parsed = Some(parse::parse_head(&buf[..len], config, &self.info, &mut self.vars)?);
        }
        let req = parsed.expect("parsed on one path or the other");
        self.rbuf.consume(req.len);
        self.scanner = HeadScanner::default();
        self.head_started = None;
        self.ready = Some(req);
        Ok(true)
    }

    /// When the head being received must be complete, if one has begun.
    pub(crate) fn head_deadline(&self) -> Option<Instant> {
        Some(self.head_started? + self.ctx.config.header_timeout?)
    }

    /// Reads what the socket has without waiting, for a poller: `WouldBlock` when nothing is
    /// there, `Ok(0)` at end of stream.
    pub(crate) fn read_available(&mut self) -> io::Result<usize> {
        let stream = &mut self.stream;
        self.rbuf.fill_with(|buf| stream.try_read(buf))
    }

    /// Answers a request that could not be accepted, and closes: for a poller that found the
    /// error (timeout, bad head) and handed the connection to a worker to answer it.
    pub(crate) fn reject(&mut self, error: ParseError) {
        self.fail(error);
    }

    /// The next complete head: from the buffer, or (blocking mode) read from the socket.
    /// `None` when the connection should close quietly (client gone, idle timeout, shutdown), or
    /// in buffered mode when no complete head is buffered.
    fn next_head(&mut self, mode: Mode) -> Result<Option<RequestHead>, ParseError> {
        let ctx = Arc::clone(&self.ctx);
        let config = &ctx.config;
        loop {
            if self.poll_head()? {
                return Ok(self.ready.take());
            }
            if mode == Mode::Buffered {
                return Ok(None);
            }
            let timeout = match self.head_started {
                None => {
                    if self.served > 0 && self.ctx.shutdown.is_requested() {
                        return Ok(None);
                    }
                    if !self.wait_for_request() {
                        return Ok(None);
                    }
                    // Readable now: this read does not block, whatever the timeout.
                    config.header_timeout
                }
                Some(t0) => match config.header_timeout {
                    None => None,
                    Some(limit) => match limit.checked_sub(t0.elapsed()) {
                        Some(left) if !left.is_zero() => Some(left),
                        _ => return Err(ParseError::Timeout),
                    },
                },
            };
            set_read_timeout(&self.stream, &mut self.read_timeout, timeout);
            match self.rbuf.fill_from(&mut self.stream) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if is_timeout(&e) && self.head_started.is_some() => return Err(ParseError::Timeout),
                Err(_) => return Ok(None),
            }
        }
    }

    /// Waits until the client sends something; false on keep-alive timeout or shutdown.
    fn wait_for_request(&self) -> bool {
        let Some(fd) = self.stream.poll_fd() else { return true };
        let wake = self.ctx.shutdown.wake_fd();
        matches!(unix::wait_readable(&[fd, wake], self.ctx.config.keepalive_timeout), Ok(Some(0)))
    }

    /// Runs the handler for one parsed request and writes its response.
    fn exchange(&mut self, req: RequestHead, last: bool) -> After {
        let ctx = Arc::clone(&self.ctx);
        let config = &ctx.config;
        let decoder = match req.framing {
            Framing::Empty => Decoder::length(0),
            Framing::Length(n) => Decoder::length(n),
            Framing::Chunked => Decoder::chunked(config.max_body, config.max_chunk_extension, config.max_trailer),
        };
        let Conn { stream, rbuf, head, read_timeout, vars, peer, .. } = self;
        let mut body = BodyReader {
            stream,
            rbuf,
            decoder,
            continue_pending: req.expect_continue,
            error: None,
            timeout: config.body_timeout,
            timeout_cache: read_timeout,
        };
        let has_body = !body.decoder.is_done();
        let input = Input::new(if has_body { Some(&mut body as &mut dyn BodySource) } else { None });
        let mut env = Environ::new(std::mem::take(vars), input, config, *peer, ctx.flags);
        let result = catch_unwind(AssertUnwindSafe(|| ctx.handler.call(&mut env, StartResponse::new(head))));
        *vars = env.into_vars();
        let BodyReader { mut decoder, continue_pending, error, .. } = body;

        let response = match result {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                self.log_request_error(&format!("handler error: {e}"));
                return self.respond_error(error.map_or(500, ParseError::status), error);
            }
            Err(panic) => {
                self.log_request_error(&format!("handler panicked: {}", panic_message(&*panic)));
                return self.respond_error(error.map_or(500, ParseError::status), error);
            }
        };
        // A body that broke its framing leaves the connection unusable; a body never asked for
        // with `100-continue` may never come.
        let body_never_asked_for = continue_pending && !decoder.is_done();
        // Known before the head goes out, so the response can say `Connection: close`: a body
        // remainder too long to drain, or a shutdown requested while the handler ran.
        let too_long_to_drain = decoder.remaining_length().is_some_and(|left| left > config.drain_limit);
        let last = last || ctx.shutdown.is_requested();
        let keep_alive = req.keep_alive && !last && error.is_none() && !body_never_asked_for && !too_long_to_drain;
        let info = RequestInfo { is_head: req.is_head, http10: req.http10 };
        match self.write_response(response, info, keep_alive) {
            After::KeepAlive if !decoder.is_done() => self.drain(&mut decoder),
            After::Close if !decoder.is_done() || !self.rbuf.filled().is_empty() => After::Linger,
            other => other,
        }
    }

    /// Writes a response, pulling its body chunk by chunk; headers go with the first non-empty one.
    fn write_response(&mut self, response: Response, req: RequestInfo, mut keep_alive: bool) -> After {
        let config = &self.ctx.config;
        let Response { head, mut body } = response;
        let body_len = body.len();
        let mut framing = head.framing(req, body_len);
        keep_alive &= framing != BodyFraming::Close;
        self.out.clear();
        if framing == BodyFraming::NoBody {
            head.encode(&mut self.out, req, framing, body_len, keep_alive, config);
            self.head = head;
            return match self.stream.write_all(&self.out) {
                Ok(()) if keep_alive => After::KeepAlive,
                _ => After::Close,
            };
        }
        let mut head_sent = false;
        let mut written: u64 = 0;
        loop {
            let chunk = match pull(&mut body) {
                Pull::Chunk([]) => continue,
                Pull::Chunk(c) => c,
                Pull::End => {
                    if !head_sent {
                        // Nothing came: now the length is known.
                        if matches!(framing, BodyFraming::Chunked | BodyFraming::Close) {
                            framing = BodyFraming::Length(0);
                        }
                        head.encode(&mut self.out, req, framing, Some(0), keep_alive, config);
                    }
                    match framing {
                        BodyFraming::Chunked => self.out.extend_from_slice(encode::LAST_CHUNK),
                        BodyFraming::Length(n) if written < n => {
                            self.log_request_error(&format!(
                                "response body shorter than its Content-Length ({written} of {n} bytes)"
                            ));
                            keep_alive = false;
                        }
                        _ => {}
                    }
                    break;
                }
                Pull::Failed(message) => {
                    self.log_request_error(&message);
                    if head_sent {
                        return After::Close;
                    }
                    self.out.clear();
                    encode::error_response(&mut self.out, 500, "internal server error", config);
                    let _ = self.stream.write_all(&self.out);
                    return After::Close;
                }
            };
            if !head_sent {
                head.encode(&mut self.out, req, framing, body_len, keep_alive, config);
                head_sent = true;
            }
            let (data, done) = match framing {
                BodyFraming::Length(n) => {
                    let room = usize::try_from(n - written).unwrap_or(usize::MAX);
                    if chunk.len() > room {
                        self.ctx.config.log("response body longer than its Content-Length: cut");
                    }
                    let data = &chunk[..chunk.len().min(room)];
                    written += data.len() as u64;
                    (data, written == n)
                }
                _ => (chunk, false),
            };
            let chunked = framing == BodyFraming::Chunked;
            if chunked {
                encode::chunk_prefix(&mut self.out, data.len());
            }
            let result = if data.len() <= COPY_CHUNK_LIMIT {
                self.out.extend_from_slice(data);
                if chunked {
                    self.out.extend_from_slice(encode::CHUNK_SUFFIX);
                }
                self.stream.write_all(&self.out)
            } else {
                let suffix: &[u8] = if chunked { encode::CHUNK_SUFFIX } else { b"" };
                write_all_vectored(
                    &mut self.stream,
                    &mut [IoSlice::new(&self.out), IoSlice::new(data), IoSlice::new(suffix)],
                )
            };
            self.out.clear();
            if result.is_err() {
                return After::Close;
            }
            if done {
                break;
            }
        }
        drop(body);
        self.head = head;
        match self.stream.write_all(&self.out) {
            Ok(()) if keep_alive => After::KeepAlive,
            _ => After::Close,
        }
    }

    /// Reads and discards what the handler left of the request body, up to the drain limit.
    fn drain(&mut self, decoder: &mut Decoder) -> After {
        let config = &self.ctx.config;
        if decoder.remaining_length().is_some_and(|left| left > config.drain_limit) {
            return After::Linger;
        }
        let mut scratch = [0u8; 4096];
        let mut drained = 0u64;
        while !decoder.is_done() {
            match read_body(
                &mut self.stream,
                &mut self.rbuf,
                decoder,
                &mut scratch,
                config.body_timeout,
                &mut self.read_timeout,
            ) {
                Ok(n) => drained += n as u64,
                Err(_) => return After::Close,
            }
            if drained > config.drain_limit {
                return After::Linger;
            }
        }
        After::KeepAlive
    }

    fn respond_error(&mut self, status: u16, error: Option<ParseError>) -> After {
        self.out.clear();
        let message = error.map_or("internal server error", ParseError::description);
        encode::error_response(&mut self.out, status, message, &self.ctx.config);
        let _ = self.stream.write_all(&self.out);
        After::Linger
    }

    /// Answers a request that could not be accepted, and closes. A client that timed out is
    /// not waited for: lingering on it would hand a slow client the time it was refused.
    fn fail(&mut self, error: ParseError) {
        self.respond_error(error.status(), Some(error));
        if error == ParseError::Timeout {
            self.stream.shutdown_write();
        } else {
            self.linger();
        }
    }

    /// Closes our side, then reads and discards for a bounded time, so that the client gets the
    /// response instead of a reset caused by its unread bytes.
    fn linger(&mut self) {
        self.stream.shutdown_write();
        let deadline = Instant::now() + LINGER_TIME;
        let mut discarded = 0;
        let mut scratch = [0u8; 4096];
        while discarded < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            set_read_timeout(&self.stream, &mut self.read_timeout, Some(left));
            match self.stream.read(&mut scratch) {
                Ok(0) => return,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn log_request_error(&self, message: &str) {
        let get = |k: &[u8]| String::from_utf8_lossy(self.vars.get(k).unwrap_or(b"")).into_owned();
        let peer = self.peer.map_or_else(String::new, |p| p.to_string());
        self.ctx.config.log(&format!("{} {} from {peer}: {message}", get(b"REQUEST_METHOD"), get(b"RAW_URI")));
    }
}
