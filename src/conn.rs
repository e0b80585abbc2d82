//! The connection pump: drives one [`Session`] over one transport, calling the handler when the
//! session has a request and pulling the response body when it asks for one. Every runner uses
//! it; they differ only in what happens when the socket would block (a blocking runner waits
//! until the session's deadline, the others park the connection) and in which thread runs the
//! handler. HTTP itself is entirely the session's business.

use std::io;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::body::Body;
use crate::config::Config;
use crate::environ::{BodySource, Environ, Input, RunnerFlags};
use crate::handler::{Handler, Response, StartResponse};
use crate::http::parse::{ConnInfo, Framing, RequestHead};
use crate::http::session::{BodyRead, BufferPool, Next, Session};
use crate::net::{Interest, Local, Transport};
use crate::shutdown::ShutdownHandle;
use crate::sys::unix::Waited;

/// Most slices handed to one `writev`.
const WRITE_SLICES: usize = 16;

/// What every connection of one server shares.
pub(crate) struct ServeContext {
    pub(crate) config: Arc<Config>,
    pub(crate) handler: Box<dyn Handler>,
    pub(crate) flags: RunnerFlags,
    pub(crate) shutdown: ShutdownHandle,
}

/// How [`Conn::drive`] treats a socket that would block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Wait for it, until the session's deadline (serial, thread-per-connection and fork runners).
    Blocking,
    /// Hand the connection back (a pool worker).
    Worker,
    /// Hand the connection back, and stop as soon as it needs a worker: a request to run, a
    /// body to pull or a response to write (the pool's poller, which only reads).
    Poller,
    /// An event loop: do all the reading and writing, park when the socket would block. With
    /// `handlers`, also run requests whose body is all in hand and pull response bodies; stop
    /// (`Step::Work`) for everything else, which may block: a request whose body the handler
    /// will wait for, and, without `handlers`, every request and every body pull.
    Loop { handlers: bool },
    /// An event loop's offload thread: run the request, pull the body, and hand the connection
    /// back to its loop (`Step::Park`) as soon as it needs to read or write.
    Offload,
}

/// Where [`Conn::drive`] left the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Closed: drop it.
    Closed,
    /// Waiting for the socket to become readable or writable.
    Park(Interest),
    /// Needs a worker (poller mode only).
    Work,
}

/// Serves one connection accepted on `local` until it closes (blocking runners).
pub(crate) fn serve_connection<S: Transport>(
    stream: S,
    peer: Option<SocketAddr>,
    local: &Local,
    ctx: &Arc<ServeContext>,
) {
    Conn::new(stream, peer, local, Arc::clone(ctx), 0).drive(Mode::Blocking);
}

/// One client connection: its socket, its session, and the response body being sent. `Send`,
/// so the pool can move it between its poller and its workers.
pub(crate) struct Conn<S> {
    stream: S,
    session: Session,
    ctx: Arc<ServeContext>,
    /// A request the poller found, for the worker that takes the connection.
    ready: Option<RequestHead>,
    body: Option<Body>,
    /// `sendfile(2)` failed as unsupported here: file bodies are read and written instead.
    no_sendfile: bool,
}

impl<S: Transport> Conn<S> {
    /// `buffered_body`: see [`Session::new`].
    pub(crate) fn new(
        stream: S,
        peer: Option<SocketAddr>,
        local: &Local,
        ctx: Arc<ServeContext>,
        buffered_body: u64,
    ) -> Conn<S> {
        let mut info = ConnInfo::new(local.name.clone(), local.port.clone(), peer);
        info.expect_proxy_header = local.proxy_protocol;
        let session = Session::new(Arc::clone(&ctx.config), info, buffered_body, Instant::now());
        Conn { stream, session, ctx, ready: None, body: None, no_sendfile: false }
    }

    /// When the connection next needs attention if its socket stays quiet.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.session.next_deadline()
    }

    /// Lends the session's buffers to `pool` if it has been idle for at least `idle_for`.
    pub(crate) fn release_buffers(&mut self, pool: &BufferPool, now: Instant, idle_for: Duration) {
        self.session.release_buffers(pool, now, idle_for);
    }

    /// Gives the buffers of a closed connection to `pool`, for the next one.
    pub(crate) fn recycle_buffers(&mut self, pool: &BufferPool) {
        self.session.recycle_buffers(pool);
    }

    /// Takes buffers back from `pool` before driving a session that lent its own.
    pub(crate) fn reclaim_buffers(&mut self, pool: &BufferPool) {
        self.session.reclaim_buffers(pool);
    }

    /// A graceful stop began: see [`Session::begin_stop`].
    pub(crate) fn begin_stop(&mut self) {
        self.session.begin_stop(Instant::now());
    }

    /// Drives the connection until it closes or, outside blocking mode, until the socket would
    /// block (or, in poller mode, a worker is needed).
    pub(crate) fn drive(&mut self, mode: Mode) -> Step {
        let ready = if matches!(mode, Mode::Poller | Mode::Loop { .. }) { None } else { self.ready.take() };
        let mut now = match ready {
            Some(req) => self.exchange(req),
            None => Instant::now(),
        };
        loop {
            // Reads and writes do not block here, so the clock is read again only after what
            // may take time: the handler, a body pull, a blocking wait.
            if mode == Mode::Blocking {
                now = Instant::now();
            }
            match self.session.poll(now) {
                Next::Close => return Step::Closed,
                Next::Request(req) if mode == Mode::Poller => {
                    self.ready = Some(req);
                    return Step::Work;
                }
                Next::Request(req) if mode == (Mode::Loop { handlers: false }) => {
                    self.ready = Some(req);
                    return Step::Work;
                }
                Next::Request(req) if mode == (Mode::Loop { handlers: true }) && !self.session.body_in_hand() => {
                    self.ready = Some(req);
                    return Step::Work;
                }
                Next::Request(req) => now = self.exchange(req),
                Next::Body | Next::Write(_) | Next::SendFile(_) if mode == Mode::Poller => return Step::Work,
                Next::Body if mode == (Mode::Loop { handlers: false }) => return Step::Work,
                Next::Write(_) | Next::SendFile(_) if mode == Mode::Offload => return Step::Park(Interest::Writable),
                // A file body of known length: the kernel sends it from the page cache.
                Next::Body if self.sends_file_directly() => self.session.begin_direct(now),
                Next::Read { .. } | Next::ShutdownWrite if mode == Mode::Offload => {
                    return Step::Park(Interest::Readable)
                }
                // A stream may take its time to produce its next chunk: the clock is read after.
                Next::Body => now = self.pull_body(),
                Next::Write(deadline) => {
                    if let Some(step) = self.write(mode, deadline, now) {
                        return step;
                    }
                }
                Next::SendFile(deadline) => {
                    if let Some(step) = self.send_file(mode, deadline, now) {
                        return step;
                    }
                }
                Next::ShutdownWrite => {
                    self.stream.shutdown_write();
                    self.session.shut_down(now);
                }
                Next::Read { deadline, idle } => {
                    if let Some(step) = self.read(mode, deadline, idle, now) {
                        return step;
                    }
                }
            }
        }
    }

    /// One read into the session; `Some` when the connection parks instead.
    fn read(&mut self, mode: Mode, deadline: Option<Instant>, idle: bool, mut now: Instant) -> Option<Step> {
        let Conn { stream, session, ctx, .. } = self;
        if mode == Mode::Blocking && idle {
            // Nothing is expected yet: wait before reading, and let a stop end the wait.
            let wake = (!session.is_stopping()).then(|| ctx.shutdown.wake_fd());
            if wait(stream, session, Interest::Readable, wake, deadline, &ctx.shutdown) != Waited::Ready {
                return None;
            }
            now = Instant::now();
        }
        match read_once(stream, session, now) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match mode {
                Mode::Blocking => {
                    wait(stream, session, Interest::Readable, None, deadline, &ctx.shutdown);
                    None
                }
                _ => Some(Step::Park(Interest::Readable)),
            },
            _ => None,
        }
    }

    /// One write of the session's output; `Some` when the connection parks instead.
    fn write(&mut self, mode: Mode, deadline: Option<Instant>, now: Instant) -> Option<Step> {
        let Conn { stream, session, ctx, .. } = self;
        match write_once(stream, session, now) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match mode {
                Mode::Blocking => {
                    wait(stream, session, Interest::Writable, None, deadline, &ctx.shutdown);
                    None
                }
                _ => Some(Step::Park(Interest::Writable)),
            },
            _ => None,
        }
    }

    /// Whether the body to pull next is a file that can go out with `sendfile(2)`.
    fn sends_file_directly(&self) -> bool {
        !self.no_sendfile
            && self.body.as_ref().is_some_and(|b| b.unsent_file().is_some())
            && self.session.can_send_directly()
    }

    /// One `sendfile(2)` of the file body; `Some` when the connection parks instead.
    fn send_file(&mut self, mode: Mode, deadline: Option<Instant>, now: Instant) -> Option<Step> {
        let Conn { stream, session, ctx, body, .. } = self;
        let Some((file, at, remaining)) = body.as_ref().and_then(Body::unsent_file) else {
            session.body_end(now);
            return None;
        };
        let count = usize::try_from(remaining).unwrap_or(usize::MAX);
        match stream.send_file(file, at, count) {
            // The file is shorter than the length announced: the session says so and closes.
            Ok(0) => session.body_end(now),
            Ok(n) => {
                if let Some(b) = body.as_mut() {
                    b.sent_from_file(n as u64);
                }
                session.sent_directly(n, now);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match mode {
                Mode::Blocking => {
                    wait(stream, session, Interest::Writable, None, deadline, &ctx.shutdown);
                }
                _ => return Some(Step::Park(Interest::Writable)),
            },
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                self.no_sendfile = true;
                session.direct_unsupported();
            }
            Err(_) => session.write_failed(),
        }
        if !self.session.wants_body() {
            self.body = None;
        }
        None
    }

    /// Runs the handler for one request and gives its response to the session; returns the
    /// time it was done.
    fn exchange(&mut self, req: RequestHead) -> Instant {
        let ctx = &*self.ctx;
        let mut head_storage = self.session.take_response_head();
        let vars = self.session.take_vars();
        let mut source = HandlerInput { stream: &mut self.stream, session: &mut self.session };
        let has_body = req.framing != Framing::Empty;
        let input = Input::new(if has_body { Some(&mut source as &mut dyn BodySource) } else { None });
        let mut env = Environ::new(vars, input, &ctx.config, ctx.flags);
        // Sound to assert: after a panic the environ and the response are dropped, never observed.
        let result =
            catch_unwind(AssertUnwindSafe(|| ctx.handler.call(&mut env, StartResponse::new(&mut head_storage))));
        let vars = env.into_vars();
        self.session.put_vars(vars);
        let now = Instant::now();
        if ctx.shutdown.is_requested() {
            self.session.begin_stop(now);
        }
        match result {
            Ok(Ok(Response { head, body })) => match body.into_bytes() {
                // A body in one piece needs no pulling: queued at once, as pulling it would.
                Ok(bytes) => self.session.respond_whole(head, bytes, now),
                Err(body) => {
                    if self.session.respond(head, body.len(), now) {
                        self.body = Some(body);
                    }
                }
            },
            Ok(Err(e)) => {
                self.session.put_response_head(head_storage);
                self.session.handler_failed(&format!("handler error: {e}"), now);
            }
            Err(panic) => {
                self.session.put_response_head(head_storage);
                self.session.handler_failed(&format!("handler panicked: {}", panic_message(&*panic)), now);
            }
        }
        now
    }

    /// Pulls one chunk of the response body into the session, catching errors and panics;
    /// returns the time the chunk came. The session hears of the chunk at that time, not at the
    /// time the pull began: a chunk that took longer to make than the write timeout must not
    /// look like a write that stalled.
    fn pull_body(&mut self) -> Instant {
        let Some(body) = &mut self.body else {
            let now = Instant::now();
            self.session.body_end(now);
            return now;
        };
        let pulled = catch_unwind(AssertUnwindSafe(|| body.next_chunk()));
        let now = Instant::now();
        match pulled {
            Ok(Ok(Some(chunk))) => {
                self.session.body_chunk(chunk, now);
                if body.is_done() {
                    self.session.body_end(now);
                }
            }
            Ok(Ok(None)) => self.session.body_end(now),
            Ok(Err(e)) => self.session.body_failed(&format!("response body failed: {e}"), now),
            Err(panic) => self.session.body_failed(&format!("response body panicked: {}", panic_message(&*panic)), now),
        }
        if !self.session.wants_body() {
            // WSGI's `close()`: as soon as the body is no longer needed.
            self.body = None;
        }
        now
    }
}

/// Reads once into the session. `WouldBlock` is returned; every other outcome is recorded in
/// the session (a failed read means the client is gone).
fn read_once(stream: &mut impl Transport, session: &mut Session, now: Instant) -> io::Result<()> {
    match stream.read(session.read_buf()) {
        Ok(0) => session.received_eof(),
        Ok(n) => session.received(n, now),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
        Err(_) => session.write_failed(),
    }
    Ok(())
}

/// Writes once from the session's output. `WouldBlock` is returned; every other outcome is
/// recorded in the session.
fn write_once(stream: &mut impl Transport, session: &mut Session, now: Instant) -> io::Result<()> {
    let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
    let n = session.output(&mut slices);
    let result = stream.write_vectored(&slices[..n]);
    match result {
        Ok(0) => session.write_failed(),
        Ok(n) => session.wrote(n, now),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
        Err(_) => session.write_failed(),
    }
    Ok(())
}

/// Waits for the socket; a stop seen through `wake` is passed on to the session. A failed wait
/// (which `poll(2)` reports only for bad arguments) closes the connection.
fn wait(
    stream: &impl Transport,
    session: &mut Session,
    interest: Interest,
    wake: Option<RawFd>,
    deadline: Option<Instant>,
    shutdown: &ShutdownHandle,
) -> Waited {
    match stream.wait(interest, wake, deadline) {
        Ok(Waited::Woken) => {
            if shutdown.is_requested() {
                session.begin_stop(Instant::now());
            }
            Waited::Woken
        }
        Ok(waited) => waited,
        Err(_) => {
            session.write_failed();
            Waited::TimedOut
        }
    }
}

/// `wsgi.input`'s view of the connection while the handler runs: reads block (on this thread,
/// whatever the runner) until the session's body deadline.
struct HandlerInput<'a, S> {
    stream: &'a mut S,
    session: &'a mut Session,
}

impl<S: Transport> BodySource for HandlerInput<'_, S> {
    fn read_body(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.session.read_body(buf, Instant::now()) {
                BodyRead::Data(n) => return Ok(n),
                BodyRead::End => return Ok(0),
                BodyRead::Failed(e) => return Err(e.into()),
                BodyRead::Flush(deadline) => match write_once(self.stream, self.session, Instant::now()) {
                    Err(_) => {
                        let waited = self.stream.wait(Interest::Writable, None, deadline);
                        if !matches!(waited, Ok(Waited::Ready)) {
                            self.session.write_failed();
                            return Err(io::ErrorKind::TimedOut.into());
                        }
                    }
                    Ok(()) if !self.session.is_open() => return Err(io::ErrorKind::BrokenPipe.into()),
                    Ok(()) => {}
                },
                BodyRead::Read(deadline) => {
                    if read_once(self.stream, self.session, Instant::now()).is_err() {
                        // Timing out is the session's to notice on the next read.
                        let _ = self.stream.wait(Interest::Readable, None, deadline);
                    }
                }
            }
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Stream;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A socket that counts how the body went out.
    struct Counting {
        inner: Stream,
        sendfile_bytes: Arc<std::sync::atomic::AtomicUsize>,
        written_bytes: Arc<std::sync::atomic::AtomicUsize>,
        sendfile_works: bool,
    }

    impl Transport for Counting {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(buf)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let n = self.inner.write_vectored(bufs)?;
            self.written_bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }
        fn shutdown_write(&self) {
            self.inner.shutdown_write()
        }
        fn wait(&self, interest: Interest, wake: Option<RawFd>, deadline: Option<Instant>) -> io::Result<Waited> {
            self.inner.wait(interest, wake, deadline)
        }
        fn send_file(&mut self, file: &std::fs::File, offset: u64, count: usize) -> io::Result<usize> {
            if !self.sendfile_works {
                return Err(io::ErrorKind::Unsupported.into());
            }
            let n = self.inner.send_file(file, offset, count)?;
            self.sendfile_bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }
    }

    /// Serves one connection whose handler answers with `len` bytes of a 3 MB file from
    /// `offset`; returns what the client got, and the body bytes sent by sendfile and by writes.
    fn serve_file(offset: u64, len: u64, head: bool, sendfile_works: bool) -> (Vec<u8>, usize, usize) {
        let path = std::env::temp_dir().join(format!("sgi-conn-sendfile-{}-{offset}-{head}", std::process::id()));
        let contents: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &contents).unwrap();
        let served = path.clone();
        let handler = crate::handler_fn(move |_env, start_response| {
            let file = std::fs::File::open(&served)?;
            Ok(start_response
                .start("200 OK", [("Content-Type", "application/octet-stream")])?
                .body(Body::from_file_range(file, offset, len)?))
        });
        let ctx = Arc::new(ServeContext {
            config: Arc::new(Config::default()),
            handler: Box::new(handler),
            flags: RunnerFlags::default(),
            shutdown: ShutdownHandle::new().unwrap(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let method = if head { "HEAD" } else { "GET" };
        client.write_all(format!("{method} / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        let counts = (Arc::new(Default::default()), Arc::new(Default::default()));
        let stream = Counting {
            inner: Stream::Tcp(accepted),
            sendfile_bytes: Arc::clone(&counts.0),
            written_bytes: Arc::clone(&counts.1),
            sendfile_works,
        };
        let local = Local { name: "127.0.0.1".into(), port: "80".into(), proxy_protocol: false };
        // The client reads while the server writes: the socket buffer is far smaller than the body.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });
        Conn::new(stream, Some(peer), &local, ctx, 0).drive(Mode::Blocking);
        let got = reader.join().unwrap();
        std::fs::remove_file(&path).unwrap();
        let body_start = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head_len = body_start;
        let expected = &contents[offset as usize..(offset + len) as usize];
        if !head {
            assert_eq!(&got[body_start..], expected, "the body, byte for byte");
        }
        let load = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::Relaxed);
        (got, load(&counts.0), load(&counts.1) - head_len)
    }

    #[test]
    fn a_file_body_goes_out_with_sendfile_and_nothing_else() {
        let (got, by_sendfile, by_write) = serve_file(1000, 2_500_000, false, true);
        assert!(String::from_utf8_lossy(&got).contains("Content-Length: 2500000\r\n"));
        assert_eq!((by_sendfile, by_write), (2_500_000, 0));
    }

    #[test]
    fn without_sendfile_a_file_body_is_read_and_written() {
        let (_, by_sendfile, by_write) = serve_file(7, 2_000_000, false, false);
        assert_eq!((by_sendfile, by_write), (0, 2_000_000));
    }

    #[test]
    fn a_head_request_sends_no_file() {
        let (got, by_sendfile, by_write) = serve_file(0, 3_000_000, true, true);
        assert!(String::from_utf8_lossy(&got).contains("Content-Length: 3000000\r\n"));
        assert_eq!((by_sendfile, by_write), (0, 0));
    }
}
