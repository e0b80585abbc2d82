//! The event-loop runner: a few threads, each a readiness loop over connections of its own,
//! with offload threads for the handlers that may block.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::private::{Sealed, Serving};
use super::queue::{Turn, WorkQueue};
use super::{AcceptGate, Runner};
use crate::conn::{Conn, Mode, ServeContext, Step};
use crate::environ::RunnerFlags;
use crate::error::Result;
use crate::http::session::BufferPool;
use crate::logging::Level;
use crate::net::{Listeners, Stream};
use crate::server::MAX_LISTENERS;

const SHUTDOWN: Token = Token(0);
/// An offload thread handed a connection back.
const WAKER: Token = Token(1);
/// Connection slot `i` has token `FIRST_CONN + i`.
const FIRST_CONN: usize = 2;
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
/// allows, with no lock and no handoff between threads for the reading and writing.
///
/// Where handlers run is the one choice to make:
/// - **On the loops** (`threads(0)`, the default): the fastest way to serve handlers that answer
///   from memory or from quick, non-blocking work. A handler (or a response body) that blocks
///   stalls every connection of its loop until it returns.
/// - **On offload threads** (`threads(M)`, gunicorn's gthread in spirit): a loop that has a
///   complete request hands the connection to one of M threads, which runs the handler and pulls
///   the response body, and hands it back at the first read or write. The loops keep all the
///   network I/O, so a slow client never holds a thread, and a handler that waits on a database
///   or an upstream holds one offload thread, never a loop. Each handoff costs a wake-up or two:
///   for quick handlers, handlers on the loops are faster.
///
/// Either way, a request whose body is larger than
/// [`Config::buffered_body`](crate::Config::buffered_body) (64 KiB), or that asks for
/// `100 Continue`, runs on an offload thread (with `threads(0)`, on one of as many threads as
/// there are loops), where its handler reads `wsgi.input` blocking, at no less than
/// [`Config::min_body_rate`](crate::Config::min_body_rate); smaller bodies are read by the loop
/// before the handler is called.
///
/// An idle or slow connection costs under 2 KiB and never a thread: its buffers go back to its
/// loop while it waits (at once with over 256 connections on the loop, else after 1 s idle).
/// Deadlines (head, idle, body, write, linger) are the connection state machine's, checked every
/// 100 ms. The default connection cap follows the descriptor limit (see
/// [`EventLoop::max_connections`]); when `accept` fails for want of descriptors or memory,
/// accepting pauses (see [the runner module](super)) while everything else goes on. Linux: the
/// loops wait with `epoll`.
///
/// ```no_run
/// # fn main() -> Result<(), sgi::Error> {
/// sgi::raise_fd_limit()?;
/// sgi::Server::bind("127.0.0.1:8000")?
///     .runner(sgi::runner::EventLoop::new(2).threads(8))
///     .serve(sgi::handler_fn(|_env, sr| Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body("hi"))))
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct EventLoop {
    loops: usize,
    threads: usize,
    max_connections: Option<usize>,
}

impl EventLoop {
    /// `loops` event loops (at least 1), one thread each, running the handlers themselves.
    pub fn new(loops: usize) -> EventLoop {
        EventLoop { loops: loops.max(1), threads: 0, max_connections: None }
    }

    /// Runs handlers and response bodies on `threads` offload threads instead of on the loops;
    /// 0 (the default) runs them on the loops. See [`EventLoop`] for when to use which.
    pub fn threads(mut self, threads: usize) -> EventLoop {
        self.threads = threads;
        self
    }

    /// Most connections open at once over all loops, each loop taking an equal share; at its
    /// share a loop stops accepting and new clients wait in the listen backlog. Default: what
    /// fits under the soft descriptor limit when the server starts, less a reserve for the
    /// handlers' own files (an eighth of the limit, between 16 and 4,096): 896 under the
    /// common limit of 1,024. See [`raise_fd_limit`](crate::raise_fd_limit).
    pub fn max_connections(mut self, max: usize) -> EventLoop {
        self.max_connections = Some(max.max(1));
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

/// A connection on its way to an offload thread, with the way back to its loop.
struct Job {
    conn: Box<Conn<Stream>>,
    slot: usize,
    home: Arc<Mailbox>,
}

/// A connection an offload thread is done with: `None` when it closed.
struct Returned {
    slot: usize,
    conn: Option<Box<Conn<Stream>>>,
}

/// Where offload threads hand connections back to one loop.
struct Mailbox {
    returned: Mutex<Vec<Returned>>,
    waker: Waker,
}

impl Mailbox {
    fn send(&self, slot: usize, conn: Option<Box<Conn<Stream>>>) {
        self.returned.lock().unwrap_or_else(|e| e.into_inner()).push(Returned { slot, conn });
        // A loop that stopped polling has no connection left to take back.
        let _ = self.waker.wake();
    }
}

/// An offload thread: runs requests and pulls bodies until its connection needs the network.
fn offload(queue: &WorkQueue<Job>) {
    while let Turn::Work(Job { mut conn, slot, home }) = queue.next_turn() {
        let back = match conn.drive(Mode::Offload) {
            // Closing the socket also removes it from the loop's interest list.
            Step::Closed => None,
            Step::Park(_) | Step::Work => Some(conn),
        };
        home.send(slot, back);
    }
}

impl Runner for EventLoop {
    fn name(&self) -> &'static str {
        "event"
    }

    fn flags(&self) -> RunnerFlags {
        // Handlers may run on the loops and on the offload threads at once.
        RunnerFlags { multithread: true, ..RunnerFlags::default() }
    }

    fn run(self: Box<Self>, server: Serving) -> Result<()> {
        let (listeners, ctx) = server.start()?;
        let listeners = Arc::new(listeners);
        let running = Arc::new(Running { count: Mutex::new(self.loops), changed: Condvar::new() });
        let max_connections = self.max_connections.unwrap_or_else(crate::limits::connection_cap_from_fd_limit);
        let share = max_connections.div_ceil(self.loops).max(1);
        let mode = Mode::Loop { handlers: self.threads == 0 };
        let queue = Arc::new(WorkQueue::jobs_only());
        // With handlers on the loops, offload threads still take the requests whose handler
        // would wait for its body.
        let offload_threads = if self.threads == 0 { self.loops } else { self.threads };
        let mut offloads = Vec::with_capacity(offload_threads);
        for i in 0..offload_threads {
            let queue = Arc::clone(&queue);
            match std::thread::Builder::new().name(format!("sgi-offload-{i}")).spawn(move || offload(&queue)) {
                Ok(h) => offloads.push(h),
                Err(e) if offloads.is_empty() => return Err(e.into()),
                Err(e) => ctx.config.log(Level::Error, &format!("cannot start offload thread {i}: {e}")),
            }
        }
        let mut handles = Vec::with_capacity(self.loops);
        let mut first_error = None;
        let backlog_taken = Arc::new(AtomicBool::new(false));
        for i in 0..self.loops {
            let made = EventLoopThread::new(
                Arc::clone(&ctx),
                Arc::clone(&listeners),
                share,
                mode,
                Arc::clone(&queue),
                Arc::clone(&backlog_taken),
            );
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
                    ctx.config.log(Level::Error, &format!("cannot start event loop {i}: {e}"));
                    first_error.get_or_insert(e);
                }
            }
        }
        // The loops hold the listeners now: the last to see the stop closes them.
        drop(listeners);
        if handles.is_empty() {
            queue.close();
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
        // A loop ends only once its connections have all come back from the offload threads.
        queue.close();
        if *count > 0 {
            ctx.config.log(Level::Warn, &format!("graceful timeout: abandoning {} event loop(s)", *count));
            return Ok(());
        }
        drop(count);
        let mut result = Ok(());
        for h in handles {
            if let Ok(Err(e)) = h.join() {
                result = Err(e.into());
            }
        }
        for h in offloads {
            let _ = h.join();
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
    /// Connection slots, grown as needed up to `max_connections`; `None` for a free slot or for
    /// a connection an offload thread has.
    conns: Vec<Option<Box<Conn<Stream>>>>,
    free: Vec<usize>,
    max_connections: usize,
    /// Connections open: here or on an offload thread.
    open: usize,
    mode: Mode,
    offload: Arc<WorkQueue<Job>>,
    mailbox: Arc<Mailbox>,
    /// Kept between wake-ups so that taking connections back allocates nothing.
    returned: Vec<Returned>,
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
        mode: Mode,
        offload: Arc<WorkQueue<Job>>,
        backlog_taken: Arc<AtomicBool>,
    ) -> io::Result<EventLoopThread> {
        let poll = Poll::new()?;
        poll.registry().register(&mut SourceFd(&ctx.shutdown.wake_fd()), SHUTDOWN, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        Ok(EventLoopThread {
            ctx,
            listeners: Some(listeners),
            poll,
            conns: Vec::new(),
            free: Vec::new(),
            max_connections,
            open: 0,
            mode,
            offload,
            mailbox: Arc::new(Mailbox { returned: Mutex::new(Vec::new()), waker }),
            returned: Vec::new(),
            buffers: BufferPool::new(64),
            gate: AcceptGate::default(),
            listening: false,
            stopping: false,
            backlog_taken,
            next_sweep: Instant::now() + SWEEP_INTERVAL,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            if !self.stopping && self.ctx.shutdown.is_requested() {
                self.begin_stop();
            }
            if self.stopping && self.open == 0 {
                return Ok(());
            }
            self.update_listeners()?;
            let now = Instant::now();
            let sweep = (self.open > 0).then_some(self.next_sweep);
            let wake_at = match (sweep, self.gate.resume_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Err(e) = self.poll.poll(&mut events, wake_at.map(|t| t.saturating_duration_since(now))) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.ctx.config.log(Level::Error, &format!("event loop stopping: {e}"));
                self.ctx.shutdown.shutdown();
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    SHUTDOWN => {}
                    WAKER => self.take_back(),
                    // Once a stop is requested nobody new is taken in (see `begin_stop`).
                    Token(t) if t > FIRST_LISTENER - MAX_LISTENERS => {
                        if !self.ctx.shutdown.is_requested() {
                            self.accept(FIRST_LISTENER - t)?;
                        }
                    }
                    Token(t) => self.drive(t - FIRST_CONN),
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
    /// stop rule in the crate docs); those on offload threads are told when they come back. A
    /// loop that sees the stop late, after a long handler, takes in nobody: what waits in the
    /// backlog came after the stop.
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

    /// Whether a new connection would fit under this loop's share.
    fn has_room(&self) -> bool {
        !self.free.is_empty() || self.conns.len() < self.max_connections
    }

    /// Puts the listeners in the poll set, or takes them out, as the connection cap, the accept
    /// gate and a stop say.
    fn update_listeners(&mut self) -> io::Result<()> {
        let Some(listeners) = self.listeners.clone() else { return Ok(()) };
        let wanted = !self.stopping && self.has_room() && self.gate.is_open(Instant::now());
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
        while self.has_room() && self.gate.is_open(Instant::now()) {
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
            let slot = self.free.last().copied().unwrap_or(self.conns.len());
            let fd = stream.as_raw_fd();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self.poll.registry().register(&mut SourceFd(&fd), Token(FIRST_CONN + slot), interest).is_err() {
                continue;
            }
            if self.free.pop().is_none() {
                self.conns.push(None);
            }
            self.open += 1;
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

    /// Drives a connection as far as its socket allows, and hands it to an offload thread if
    /// it has work that may block.
    fn drive(&mut self, slot: usize) {
        let many = self.open > LEND_AT_PARK_ABOVE;
        let Some(Some(conn)) = self.conns.get_mut(slot) else { return };
        conn.reclaim_buffers(&self.buffers);
        match conn.drive(self.mode) {
            Step::Closed => {
                conn.recycle_buffers(&self.buffers);
                // Closing the socket also removes it from the poller's interest list.
                self.conns[slot] = None;
                self.closed(slot);
            }
            Step::Work => {
                let conn = self.conns[slot].take().expect("driven just now");
                self.offload.push(Job { conn, slot, home: Arc::clone(&self.mailbox) });
            }
            Step::Park(_) => {
                if many {
                    // Many connections: an idle one holds no buffers from the moment it parks.
                    conn.release_buffers(&self.buffers, Instant::now(), Duration::ZERO);
                }
            }
        }
    }

    fn closed(&mut self, slot: usize) {
        self.free.push(slot);
        self.open -= 1;
    }

    /// Takes back the connections offload threads are done with, and drives them at once: the
    /// readiness announced while they were away will not be announced again.
    fn take_back(&mut self) {
        std::mem::swap(&mut *self.mailbox.returned.lock().unwrap_or_else(|e| e.into_inner()), &mut self.returned);
        let mut returned = std::mem::take(&mut self.returned);
        for Returned { slot, conn } in returned.drain(..) {
            let Some(mut conn) = conn else {
                self.closed(slot);
                continue;
            };
            if self.stopping {
                conn.begin_stop();
            }
            self.conns[slot] = Some(conn);
            self.drive(slot);
        }
        self.returned = returned;
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
