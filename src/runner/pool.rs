//! The thread-pool runner: a fixed set of worker threads that take turns watching every
//! connection (leader/followers) and run the handler.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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

/// Default number of worker threads of [`ThreadPool::default`].
pub const DEFAULT_WORKERS: usize = 8;
/// Default for [`ThreadPool::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

const SHUTDOWN: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// Listener `i` has token `FIRST_LISTENER - i`: from the top, far from the connections'.
const FIRST_LISTENER: usize = usize::MAX;
/// With more connections open than this, a connection that parks between requests lends its
/// buffers at once (memory first); with fewer, it keeps them until it has been idle for
/// [`LEND_AFTER_IDLE`]. A busy keep-alive connection then never takes the buffer set's lock,
/// which on a loaded core is what stalls: a lock holder preempted for a time slice.
const LEND_AT_PARK_ABOVE: usize = 256;
/// How long a parked connection sits idle before a sweep takes its buffers.
const LEND_AFTER_IDLE: Duration = Duration::from_secs(1);
/// How often parked connections are checked for their deadlines while any is open.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// A fixed pool of worker threads that also watch the connections between requests, like
/// gunicorn's gthread worker, with waitress's slow-client isolation.
///
/// The workers take turns (leader/followers): one of them, the leader, waits for readiness on
/// every connection and the listener, accepts, and reads request bytes as they arrive; a
/// connection becomes work only once a whole request head is buffered, and a body of up to
/// [`Config::buffered_body`](crate::Config::buffered_body) (64 KiB) with it. No client holds a
/// worker while it waits on the network:
/// - a client that trickles its head, or sits idle on keep-alive, costs a few hundred bytes of
///   state, never a worker (its buffers go back to the pool while it is idle): 4 workers serve
///   64 keep-alive clients, or ten thousand, and slowloris gets a `408` at the header deadline;
/// - a response the client is slow to read goes back to the poller with what is left of it
///   when a write would block, and whichever worker finds the socket writable again goes on
///   pulling the body; a write that makes no progress for
///   [`Config::write_timeout`](crate::Config::write_timeout) drops the connection;
/// - a body too large to buffer is read by the handler on its worker, at no less than
///   [`Config::min_body_rate`](crate::Config::min_body_rate) (else `408`), so a trickling upload
///   holds a worker for at most about [`Config::body_timeout`](crate::Config::body_timeout).
///
/// When a wait brings complete requests, the leader queues them, hands the leadership to an
/// idle worker, and serves the oldest queued request itself. A worker serves its request, then
/// every further request that has already arrived (pipelining: their responses go out in one
/// write), then parks the connection again.
///
/// Each socket is registered once, edge-triggered for reading and writing, and stays
/// non-blocking for its whole life; a parked connection waits in its slot, and whoever finds it
/// ready takes it. Deadlines (head, idle, body, write, linger) are the connection state
/// machine's; the leader acts on those that passed every 100 ms. When `accept` fails for want of
/// descriptors or memory, accepting pauses (see [the runner module](super)) while everything
/// else goes on.
///
/// Backpressure: requests wait in a queue that holds at most one per open connection; at
/// [`ThreadPool::max_connections`] open connections the pool stops accepting, and new clients
/// wait in the listen backlog. While every worker is busy nobody accepts or reads: new requests
/// wait in the kernel until a worker is free.
///
/// ```no_run
/// # fn main() -> Result<(), sgi::Error> {
/// sgi::Server::bind("127.0.0.1:8000")?
///     .runner(sgi::runner::ThreadPool::new(16))
///     .serve(sgi::handler_fn(|_env, sr| Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body("hi"))))
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ThreadPool {
    workers: usize,
    max_connections: usize,
}

impl ThreadPool {
    /// A pool of `workers` threads (at least 1).
    pub fn new(workers: usize) -> ThreadPool {
        ThreadPool { workers: workers.max(1), max_connections: DEFAULT_MAX_CONNECTIONS }
    }

    /// Most connections open at once, parked or busy; at the maximum, accepting pauses.
    /// Default: [`DEFAULT_MAX_CONNECTIONS`] (1024).
    pub fn max_connections(mut self, max: usize) -> ThreadPool {
        self.max_connections = max.max(1);
        self
    }
}

impl Default for ThreadPool {
    fn default() -> ThreadPool {
        ThreadPool::new(DEFAULT_WORKERS)
    }
}

impl Sealed for ThreadPool {}

/// Work for a worker: a connection with a request to run or a response to write.
struct Job {
    conn: Box<Conn<Stream>>,
    slot: usize,
}

/// Where a connection lives while nobody works on it.
#[derive(Default)]
struct Slot {
    /// The parked connection; `None` while the poller or a worker has it (or the slot is free).
    conn: Option<Box<Conn<Stream>>>,
    /// Readiness was announced while someone else had the connection: whoever parks it next
    /// must drive it again first, as the edge that announced it will not come again.
    pending: bool,
}

/// What the workers share.
struct Shared {
    ctx: Arc<ServeContext>,
    queue: WorkQueue<Job>,
    /// The readiness poller and the listener, used by whichever worker leads.
    poller: Mutex<Poller>,
    slots: Vec<Mutex<Slot>>,
    free: Mutex<Vec<usize>>,
    waker: Waker,
    /// Open connections: parked, queued or with a worker.
    open: AtomicUsize,
    /// Accepting paused at the connection cap, or a stop under way: a closing connection wakes
    /// the leader.
    watch_closes: AtomicBool,
    /// Buffers of parked idle connections.
    buffers: BufferPool,
    /// Workers still running, for the graceful stop.
    running: Mutex<usize>,
    stopped: Condvar,
}

impl Shared {
    fn slot(&self, index: usize) -> MutexGuard<'_, Slot> {
        self.slots[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes a connection and frees its slot.
    fn close(&self, mut conn: Box<Conn<Stream>>, index: usize) {
        conn.recycle_buffers(&self.buffers);
        // Closing the socket also removes it from the poller's interest list.
        drop(conn);
        *self.slot(index) = Slot::default();
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(index);
        self.open.fetch_sub(1, Ordering::SeqCst);
        if self.watch_closes.load(Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// Parks a connection whose socket would block, unless readiness was announced meanwhile:
    /// then it is handed back to be driven again.
    fn park(&self, mut conn: Box<Conn<Stream>>, index: usize) -> Option<Box<Conn<Stream>>> {
        if self.ctx.shutdown.is_requested() {
            conn.begin_stop();
        }
        if self.open.load(Ordering::Relaxed) > LEND_AT_PARK_ABOVE {
            conn.release_buffers(&self.buffers, Instant::now(), Duration::ZERO);
        }
        let mut slot = self.slot(index);
        if std::mem::take(&mut slot.pending) {
            return Some(conn);
        }
        slot.conn = Some(conn);
        None
    }

    fn worker_stopped(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        self.stopped.notify_all();
    }
}

impl Runner for ThreadPool {
    fn name(&self) -> &'static str {
        "pool"
    }

    fn flags(&self) -> RunnerFlags {
        RunnerFlags { multithread: true, ..RunnerFlags::default() }
    }

    fn run(self: Box<Self>, server: Serving) -> Result<()> {
        let (listeners, ctx) = server.start()?;
        let poll = Poll::new()?;
        poll.registry().register(&mut SourceFd(&ctx.shutdown.wake_fd()), SHUTDOWN, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let poller = Poller {
            poll,
            events: Events::with_capacity(256),
            listeners: Some(listeners),
            listening: false,
            gate: AcceptGate::default(),
            stopping: false,
            found: Vec::new(),
            next_sweep: Instant::now() + SWEEP_INTERVAL,
            error: None,
        };
        let shared = Arc::new(Shared {
            ctx: Arc::clone(&ctx),
            queue: WorkQueue::with_leadership(),
            poller: Mutex::new(poller),
            slots: (0..self.max_connections).map(|_| Mutex::default()).collect(),
            free: Mutex::new((0..self.max_connections).rev().collect()),
            waker,
            open: AtomicUsize::new(0),
            watch_closes: AtomicBool::new(false),
            // Enough for every worker and the leader to be busy, plus a burst.
            buffers: BufferPool::new(4 * self.workers + 16),
            running: Mutex::new(self.workers),
            stopped: Condvar::new(),
        });
        let mut handles = Vec::with_capacity(self.workers);
        for i in 0..self.workers {
            let for_worker = Arc::clone(&shared);
            let spawned = std::thread::Builder::new().name(format!("sgi-worker-{i}")).spawn(move || work(&for_worker));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    shared.worker_stopped();
                    if handles.is_empty() {
                        shared.queue.close();
                        return Err(e.into());
                    }
                    ctx.config.log(Level::Error, &format!("cannot start worker thread {i}: {e}"));
                }
            }
        }
        // This thread only waits for the stop; the leader of the moment conducts it (see
        // `Poller::begin_stop`), and the workers exit once every connection is closed.
        while !ctx.shutdown.is_requested() {
            crate::sys::unix::wait_readable(&[ctx.shutdown.wake_fd()], None)?;
        }
        let deadline = Instant::now() + ctx.config.graceful_timeout;
        let running = shared.running.lock().unwrap_or_else(|e| e.into_inner());
        let (running, _) = shared
            .stopped
            .wait_timeout_while(running, deadline.saturating_duration_since(Instant::now()), |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        let busy = *running;
        drop(running);
        let result = shared.poller.try_lock().ok().and_then(|mut p| p.error.take()).map_or(Ok(()), Err);
        if busy > 0 {
            ctx.config.log(Level::Warn, &format!("graceful timeout: abandoning {busy} busy worker(s)"));
            shared.queue.close();
            return result;
        }
        for h in handles {
            let _ = h.join();
        }
        result
    }
}

/// A worker: serves queued requests, and leads when nobody does, until the pool closes.
fn work(shared: &Shared) {
    loop {
        match shared.queue.next_turn() {
            Turn::Work(job) => serve(shared, job),
            Turn::Exit => break,
            Turn::Lead => {
                let mine = {
                    let mut poller = shared.poller.lock().unwrap_or_else(|e| e.into_inner());
                    poller.lead(shared);
                    shared.queue.end_lead(poller.found.drain(..))
                };
                if let Some(job) = mine {
                    serve(shared, job);
                }
            }
        }
    }
    shared.worker_stopped();
}

/// Serves a connection for as long as it does not wait on the network, then parks it.
fn serve(shared: &Shared, Job { mut conn, slot }: Job) {
    loop {
        conn.reclaim_buffers(&shared.buffers);
        match conn.drive(Mode::Worker) {
            Step::Closed => return shared.close(conn, slot),
            Step::Park(_) | Step::Work => match shared.park(conn, slot) {
                Some(again) => conn = again,
                None => return,
            },
        }
    }
}

/// The readiness side of the pool, used by the leader of the moment.
struct Poller {
    poll: Poll,
    events: Events,
    /// `None` once the pool stops accepting for good.
    listeners: Option<Listeners>,
    /// Whether the listeners are in the poll set.
    listening: bool,
    gate: AcceptGate,
    /// The graceful stop has begun.
    stopping: bool,
    /// Jobs found by the current turn of leadership.
    found: Vec<Job>,
    next_sweep: Instant,
    /// A fatal error of the listener or the poller, for `serve` to return.
    error: Option<crate::Error>,
}

impl Poller {
    /// Waits for readiness until at least one connection needs a worker (in `found`), or the
    /// pool is done: stopped with no connection left, or failed.
    fn lead(&mut self, shared: &Shared) {
        loop {
            if shared.ctx.shutdown.is_requested() && !self.stopping {
                self.begin_stop(shared);
            }
            if self.error.is_some() || self.stopping && shared.open.load(Ordering::SeqCst) == 0 {
                shared.queue.close();
                return;
            }
            if let Err(e) = self.update_listener(shared) {
                self.fail(shared, e.into());
                continue;
            }
            let now = Instant::now();
            // An idle server sleeps until something happens; a busy one also wakes to sweep.
            let sweep = (shared.open.load(Ordering::SeqCst) > 0).then_some(self.next_sweep);
            let wake_at = match (sweep, self.gate.resume_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = wake_at.map(|t| t.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.fail(shared, e.into());
                }
                continue;
            }
            // Taken out for the loop, which needs `self`; an empty `Events` allocates nothing.
            let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
            for event in events.iter() {
                match event.token() {
                    SHUTDOWN | WAKER => {}
                    Token(t) if t > FIRST_LISTENER - MAX_LISTENERS => self.accept(shared, FIRST_LISTENER - t),
                    Token(t) => self.on_ready(shared, t - FIRST_CONN),
                }
            }
            self.events = events;
            if Instant::now() >= self.next_sweep {
                self.sweep(shared);
                self.next_sweep = Instant::now() + SWEEP_INTERVAL;
            }
            if !self.found.is_empty() {
                return;
            }
        }
    }

    /// Records a fatal error and stops the pool.
    fn fail(&mut self, shared: &Shared, error: crate::Error) {
        shared.ctx.config.log(Level::Error, &format!("pool stopping: {error}"));
        self.error = Some(error);
        shared.ctx.shutdown.shutdown();
    }

    /// The graceful stop: take in the clients that connected before it (they may have sent a
    /// request already), stop listening, and tell every parked connection, so that one idle in
    /// keep-alive still answers a request on its way, then closes.
    fn begin_stop(&mut self, shared: &Shared) {
        self.stopping = true;
        shared.watch_closes.store(true, Ordering::SeqCst);
        if let Some(listeners) = &self.listeners {
            for index in 0..listeners.len() {
                self.accept(shared, index);
            }
        }
        if let Some(listeners) = self.listeners.take() {
            if self.listening {
                for fd in listeners.fds() {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                }
            }
        }
        self.listening = false;
        for index in 0..shared.slots.len() {
            let parked = shared.slot(index).conn.take();
            let Some(mut conn) = parked else { continue };
            conn.begin_stop();
            self.drive(shared, conn, index);
        }
    }

    /// Puts the listener in the poll set, or takes it out, as the connection cap and the accept
    /// gate say.
    fn update_listener(&mut self, shared: &Shared) -> io::Result<()> {
        let Some(listeners) = &self.listeners else { return Ok(()) };
        let at_cap = shared.open.load(Ordering::SeqCst) >= shared.slots.len();
        let wanted = !at_cap && self.gate.is_open(Instant::now());
        shared.watch_closes.store(at_cap || self.stopping, Ordering::SeqCst);
        if wanted == self.listening {
            return Ok(());
        }
        let count = listeners.len();
        for index in 0..count {
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
            for index in 0..count {
                self.accept(shared, index);
            }
        }
        Ok(())
    }

    /// Accepts what listener `index` has, up to the connection cap.
    fn accept(&mut self, shared: &Shared, index: usize) {
        let listener_index = index;
        loop {
            let Some(listeners) = &self.listeners else { return };
            if !self.gate.is_open(Instant::now()) {
                return;
            }
            let free = shared.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
            // At the cap: new clients wait in the backlog until a connection closes.
            let Some(index) = free else { return };
            match listeners.accept(listener_index) {
                Ok((stream, peer, local)) => {
                    self.gate.accepted(&shared.ctx);
                    let fd = stream.as_raw_fd();
                    let token = Token(index + FIRST_CONN);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self.poll.registry().register(&mut SourceFd(&fd), token, interest).is_err() {
                        shared.free.lock().unwrap_or_else(|e| e.into_inner()).push(index);
                        continue;
                    }
                    shared.open.fetch_add(1, Ordering::SeqCst);
                    let buffered = shared.ctx.config.buffered_body;
                    let mut conn = Box::new(Conn::new(stream, peer, local, Arc::clone(&shared.ctx), buffered));
                    if self.stopping {
                        conn.begin_stop();
                    }
                    // Registering reports bytes already waiting, so the first request is not missed.
                    *shared.slot(index) = Slot { conn: Some(conn), pending: false };
                }
                Err(e) => {
                    shared.free.lock().unwrap_or_else(|e| e.into_inner()).push(index);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        return;
                    }
                    if let Err(e) = self.gate.failed(&shared.ctx, e) {
                        return self.fail(shared, e);
                    }
                }
            }
        }
    }

    /// The socket of a connection became ready: drive it if it is parked, else tell whoever has it.
    fn on_ready(&mut self, shared: &Shared, index: usize) {
        let Some(slot) = shared.slots.get(index) else { return };
        let taken = {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            match slot.conn.take() {
                Some(conn) => Some(conn),
                None => {
                    slot.pending = true;
                    None
                }
            }
        };
        if let Some(conn) = taken {
            self.drive(shared, conn, index);
        }
    }

    /// Reads what a connection has; a connection that needs a worker becomes a job.
    fn drive(&mut self, shared: &Shared, mut conn: Box<Conn<Stream>>, index: usize) {
        loop {
            conn.reclaim_buffers(&shared.buffers);
            match conn.drive(Mode::Poller) {
                Step::Work => self.found.push(Job { conn, slot: index }),
                Step::Closed => shared.close(conn, index),
                Step::Park(_) => {
                    // Only a stale announcement can leave `pending` set: drive again.
                    if let Some(again) = shared.park(conn, index) {
                        conn = again;
                        continue;
                    }
                }
            }
            return;
        }
    }

    /// Acts on the deadlines of parked connections: a head or body that did not come in time
    /// gets `408`, an idle connection closes, a stalled write is dropped. Connections parked
    /// idle for [`LEND_AFTER_IDLE`] lend their buffers to the pool meanwhile.
    fn sweep(&mut self, shared: &Shared) {
        let now = Instant::now();
        for index in 0..shared.slots.len() {
            let expired = {
                let mut slot = shared.slot(index);
                match &mut slot.conn {
                    Some(conn) if conn.next_deadline().is_some_and(|t| t <= now) => slot.conn.take(),
                    Some(conn) => {
                        conn.release_buffers(&shared.buffers, now, LEND_AFTER_IDLE);
                        None
                    }
                    None => None,
                }
            };
            if let Some(conn) = expired {
                self.drive(shared, conn, index);
            }
        }
    }
}
