//! The event-loop runner: a few threads, each a readiness loop over connections of its own.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::private::{Sealed, Serving};
use super::{AcceptGate, Runner};
use crate::conn::{Conn, Mode, ServeContext, Step};
use crate::environ::RunnerFlags;
use crate::error::Result;
use crate::http::session::BufferPool;
use crate::net::{Listeners, Stream};
use crate::server::MAX_LISTENERS;

/// Default for [`EventLoop::max_connections`]: connections open at once, over all loops.
pub const DEFAULT_EVENT_MAX_CONNECTIONS: usize = 10_240;

const SHUTDOWN: Token = Token(0);
/// Listener `i` has token `FIRST_LISTENER - i`.
const FIRST_LISTENER: usize = usize::MAX;
/// How often a loop checks its connections' deadlines while it has any.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// With more connections than this on a loop, a connection lends its buffers as soon as it
/// waits between requests; with fewer, once it has been idle for [`LEND_AFTER_IDLE`].
const LEND_AT_PARK_ABOVE: usize = 256;
/// A connection idle this long lends its buffers to its loop's set.
const LEND_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Event loops, nginx's model: each of N threads waits for readiness on the listeners and on
/// connections of its own, and drives each ready connection's state machine as far as its socket
/// allows (reading, running the handler, writing), with no lock and no handoff between threads.
///
/// Handlers run on the loop: a handler (or a response body) that blocks stalls every connection
/// of its loop until it returns. This runner suits handlers that answer from memory or from
/// quick, non-blocking work; for handlers that wait on databases or upstreams, use the
/// [`ThreadPool`](super::ThreadPool). An idle or slow connection costs under 2 KiB and never a
/// thread, so one loop holds thousands of them. Request bodies are read by the handler on its
/// loop: large uploads slow their loop down to the client's pace, within
/// [`Config::min_body_rate`](crate::Config::min_body_rate).
///
/// ```no_run
/// # fn main() -> Result<(), sgi::Error> {
/// sgi::Server::bind("127.0.0.1:8000")?
///     .runner(sgi::runner::EventLoop::new(2))
///     .serve(sgi::handler_fn(|_env, sr| Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body("hi"))))
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct EventLoop {
    loops: usize,
    max_connections: usize,
}

impl EventLoop {
    /// `loops` event loops (at least 1), one thread each.
    pub fn new(loops: usize) -> EventLoop {
        EventLoop { loops: loops.max(1), max_connections: DEFAULT_EVENT_MAX_CONNECTIONS }
    }

    /// Most connections open at once over all loops, each loop taking an equal share; at its
    /// share a loop stops accepting. Default: [`DEFAULT_EVENT_MAX_CONNECTIONS`] (10,240).
    pub fn max_connections(mut self, max: usize) -> EventLoop {
        self.max_connections = max.max(1);
        self
    }
}

impl Default for EventLoop {
    /// One loop per CPU this process may run on.
    fn default() -> EventLoop {
        EventLoop::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Sealed for EventLoop {}

/// Loops still running, for the graceful stop.
struct Running {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Running {
    fn done(&self) {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.changed.notify_all();
    }
}

impl Runner for EventLoop {
    fn name(&self) -> &'static str {
        "event"
    }

    fn flags(&self) -> RunnerFlags {
        RunnerFlags { multithread: self.loops > 1, ..RunnerFlags::default() }
    }

    fn run(self: Box<Self>, server: Serving) -> Result<()> {
        let Serving { listeners, ctx } = server;
        let listeners = Arc::new(listeners);
        let running = Arc::new(Running { count: Mutex::new(self.loops), changed: Condvar::new() });
        let share = self.max_connections.div_ceil(self.loops).max(1);
        let mut handles = Vec::with_capacity(self.loops);
        let mut first_error = None;
        let backlog_taken = Arc::new(AtomicBool::new(false));
        for i in 0..self.loops {
            let made =
                EventLoopThread::new(Arc::clone(&ctx), Arc::clone(&listeners), share, Arc::clone(&backlog_taken));
            let spawned = made.and_then(|mut l| {
                let running = Arc::clone(&running);
                std::thread::Builder::new().name(format!("sgi-loop-{i}")).spawn(move || {
                    let result = l.run();
                    running.done();
                    result
                })
            });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    running.done();
                    ctx.config.log(&format!("cannot start event loop {i}: {e}"));
                    first_error.get_or_insert(e);
                }
            }
        }
        // The loops hold the listeners now: the last to see the stop closes them.
        drop(listeners);
        if handles.is_empty() {
            return Err(first_error.map_or_else(|| io::Error::other("no event loop").into(), Into::into));
        }
        while !ctx.shutdown.is_requested() {
            crate::sys::unix::wait_readable(&[ctx.shutdown.wake_fd()], None)?;
        }
        let count = running.count.lock().unwrap_or_else(|e| e.into_inner());
        let (count, _) = running
            .changed
            .wait_timeout_while(count, ctx.config.graceful_timeout, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        if *count > 0 {
            ctx.config.log(&format!("graceful timeout: abandoning {} event loop(s)", *count));
            return Ok(());
        }
        drop(count);
        let mut result = Ok(());
        for h in handles {
            if let Ok(Err(e)) = h.join() {
                result = Err(e.into());
            }
        }
        result
    }
}

/// One loop: its poller and its connections.
struct EventLoopThread {
    ctx: Arc<ServeContext>,
    /// Shared by the loops; each lets go of them when it sees the stop, so that the last loop
    /// to see it closes them.
    listeners: Option<Arc<Listeners>>,
    poll: Poll,
    conns: Vec<Option<Box<Conn<Stream>>>>,
    free: Vec<usize>,
    open: AtomicUsize,
    buffers: BufferPool,
    gate: AcceptGate,
    listening: bool,
    stopping: bool,
    /// Shared by the loops: whether one of them took in the backlogs at the stop.
    backlog_taken: Arc<AtomicBool>,
    next_sweep: Instant,
}

impl EventLoopThread {
    fn new(
        ctx: Arc<ServeContext>,
        listeners: Arc<Listeners>,
        max_connections: usize,
        backlog_taken: Arc<AtomicBool>,
    ) -> io::Result<EventLoopThread> {
        let poll = Poll::new()?;
        poll.registry().register(&mut SourceFd(&ctx.shutdown.wake_fd()), SHUTDOWN, Interest::READABLE)?;
        Ok(EventLoopThread {
            ctx,
            listeners: Some(listeners),
            poll,
            conns: (0..max_connections).map(|_| None).collect(),
            free: (0..max_connections).rev().collect(),
            open: AtomicUsize::new(0),
            buffers: BufferPool::new(64),
            gate: AcceptGate::default(),
            listening: false,
            stopping: false,
            backlog_taken,
            next_sweep: Instant::now() + SWEEP_INTERVAL,
        })
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            if !self.stopping && self.ctx.shutdown.is_requested() {
                self.begin_stop();
            }
            if self.stopping && self.open() == 0 {
                return Ok(());
            }
            self.update_listeners()?;
            let now = Instant::now();
            let sweep = (self.open() > 0).then_some(self.next_sweep);
            let wake_at = match (sweep, self.gate.resume_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Err(e) = self.poll.poll(&mut events, wake_at.map(|t| t.saturating_duration_since(now))) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.ctx.config.log(&format!("event loop stopping: {e}"));
                self.ctx.shutdown.shutdown();
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    SHUTDOWN => {}
                    // Once a stop is requested nobody new is taken in (see `begin_stop`).
                    Token(t) if t > FIRST_LISTENER - MAX_LISTENERS => {
                        if !self.ctx.shutdown.is_requested() {
                            self.accept(FIRST_LISTENER - t)?;
                        }
                    }
                    Token(t) => self.drive(t - 1),
                }
            }
            if Instant::now() >= self.next_sweep {
                self.sweep();
                self.next_sweep = Instant::now() + SWEEP_INTERVAL;
            }
        }
    }

    /// The graceful stop: the first loop to see it takes in what the listeners hold (clients
    /// that connected before it may have sent a request already); every loop stops listening,
    /// lets go of the listeners (the last one closes them) and tells its connections (see the
    /// stop rule in the crate docs). A loop that sees the stop late, after a long handler, takes
    /// in nobody: what waits in the backlog came after the stop.
    fn begin_stop(&mut self) {
        self.stopping = true;
        if let Some(listeners) = self.listeners.take() {
            if !self.backlog_taken.swap(true, Ordering::SeqCst) {
                self.listeners = Some(Arc::clone(&listeners));
                for index in 0..listeners.len() {
                    let _ = self.accept(index);
                }
                self.listeners = None;
            }
            if self.listening {
                for fd in listeners.fds() {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                }
                self.listening = false;
            }
        }
        for slot in 0..self.conns.len() {
            if let Some(conn) = &mut self.conns[slot] {
                conn.begin_stop();
                self.drive(slot);
            }
        }
    }

    /// Puts the listeners in the poll set, or takes them out, as the connection cap, the accept
    /// gate and a stop say.
    fn update_listeners(&mut self) -> io::Result<()> {
        let Some(listeners) = self.listeners.clone() else { return Ok(()) };
        let wanted = !self.stopping && !self.free.is_empty() && self.gate.is_open(Instant::now());
        if wanted == self.listening {
            return Ok(());
        }
        for index in 0..listeners.len() {
            let fd = listeners.fd(index);
            let mut source = SourceFd(&fd);
            if wanted {
                self.poll.registry().register(&mut source, Token(FIRST_LISTENER - index), Interest::READABLE)?;
            } else {
                self.poll.registry().deregister(&mut source)?;
            }
        }
        self.listening = wanted;
        if wanted {
            // Clients may have queued in the backlogs meanwhile, and no new edge will announce them.
            for index in 0..listeners.len() {
                self.accept(index)?;
            }
        }
        Ok(())
    }

    /// Accepts what listener `index` has (other loops may take some first), up to this loop's
    /// share of connections. Errors other than the gate's are fatal.
    fn accept(&mut self, index: usize) -> io::Result<()> {
        let Some(listeners) = self.listeners.clone() else { return Ok(()) };
        while self.gate.is_open(Instant::now()) {
            let Some(&slot) = self.free.last() else { return Ok(()) };
            let (stream, peer, local) = match listeners.accept(index) {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => {
                    if self.gate.failed(&self.ctx, e).is_err() {
                        return Err(io::Error::other("accept failed"));
                    }
                    continue;
                }
            };
            self.gate.accepted(&self.ctx);
            let fd = stream.as_raw_fd();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self.poll.registry().register(&mut SourceFd(&fd), Token(slot + 1), interest).is_err() {
                continue;
            }
            self.free.pop();
            self.open.fetch_add(1, Ordering::Relaxed);
            let buffered = self.ctx.config.buffered_body;
            let mut conn = Box::new(Conn::new(stream, peer, local, Arc::clone(&self.ctx), buffered));
            if self.stopping {
                conn.begin_stop();
            }
            self.conns[slot] = Some(conn);
            // Registering reports bytes already waiting, so the first request is not missed.
        }
        Ok(())
    }

    /// Drives a connection as far as its socket allows.
    fn drive(&mut self, slot: usize) {
        let many = self.open() > LEND_AT_PARK_ABOVE;
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return };
        conn.reclaim_buffers(&self.buffers);
        if conn.drive(Mode::Worker) == Step::Closed {
            // Closing the socket also removes it from the poller's interest list.
            self.conns[slot] = None;
            self.free.push(slot);
            self.open.fetch_sub(1, Ordering::Relaxed);
        } else if many {
            // Many connections: an idle one holds no buffers from the moment it parks.
            conn.release_buffers(&self.buffers, Instant::now(), Duration::ZERO);
        }
    }

    /// Acts on the deadlines that passed, and takes the buffers of connections idle a while.
    fn sweep(&mut self) {
        let now = Instant::now();
        for slot in 0..self.conns.len() {
            let Some(conn) = &mut self.conns[slot] else { continue };
            if conn.next_deadline().is_some_and(|t| t <= now) {
                self.drive(slot);
            } else {
                conn.release_buffers(&self.buffers, now, LEND_AFTER_IDLE);
            }
        }
    }
}
