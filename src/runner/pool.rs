//! The thread-pool runner: a fixed set of worker threads that take turns watching every
//! connection (leader/followers) and run the handler.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::private::{Sealed, Serving};
use super::Runner;
use crate::conn::{Conn, Mode, ServeContext, Served};
use crate::environ::RunnerFlags;
use crate::error::{ParseError, Result};
use crate::net::{Listener, Stream};

/// Default number of worker threads of [`ThreadPool::default`].
pub const DEFAULT_WORKERS: usize = 8;
/// Default for [`ThreadPool::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

const LISTENER: Token = Token(0);
const SHUTDOWN: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CONN: usize = 3;
/// How often parked connections are checked for their timeouts while any is open.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// A fixed pool of worker threads that also watch the connections between requests, like
/// gunicorn's gthread worker, with waitress's slow-client isolation.
///
/// The workers take turns (leader/followers): one of them, the leader, waits for readiness on
/// every connection and the listener, accepts, and reads request bytes as they arrive; a
/// connection becomes work only once a whole request head is buffered. A client that trickles
/// its head, or sits idle on keep-alive, costs a buffer, never a worker: 4 workers serve 64
/// keep-alive clients, or a thousand, and slowloris gets a `408` at the header deadline without
/// ever holding a worker. When a wait brings complete requests, the leader queues all but one,
/// hands the leadership to an idle worker, and serves the one it kept itself, so a request is
/// usually served on the thread that read it, with no handoff. A worker serves its request
/// (reading the body, if any, with [`Config::body_timeout`](crate::Config::body_timeout)), then
/// every further request that has already arrived (pipelining, or a quick client), then parks
/// the connection again.
///
/// Each socket is registered once, edge-triggered, and stays non-blocking for its whole life;
/// a parked connection waits in its slot, and whoever finds bytes for it takes it. A keep-alive
/// request costs three system calls besides the shared `epoll_wait`: the read that brings it,
/// the write of the response, and the read that finds nothing more.
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

/// Work for a worker: a connection with a complete head parsed, or one to answer with an error.
struct Job {
    conn: Box<Conn<Stream>>,
    slot: usize,
    reject: Option<ParseError>,
}

/// Where a connection lives while nobody works on it.
#[derive(Default)]
struct Slot {
    /// The parked connection; `None` while the poller or a worker has it (or the slot is free).
    conn: Option<Box<Conn<Stream>>>,
    /// Bytes were announced while someone else had the connection: whoever parks it next must
    /// read again first, as the edge that announced them will not come again.
    pending: bool,
    /// When the connection was parked.
    since: Option<Instant>,
}

/// The queue between leaders and workers, and the leadership itself.
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a job is queued, the leadership is free, or the pool stops.
    changed: Condvar,
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// Workers waiting: a change wakes one only when one waits.
    idle: usize,
    /// Whether a worker is leading (waiting for readiness).
    leading: bool,
    /// No new leader: the pool is stopping.
    stopping: bool,
    /// No more jobs will come: workers exit once the queue is empty.
    closed: bool,
}

/// What a worker does next.
enum Turn {
    Work(Job),
    Lead,
    Exit,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a job, or for the leadership to be free.
    fn next_turn(&self) -> Turn {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Turn::Work(job);
            }
            if state.closed {
                return Turn::Exit;
            }
            if !state.leading && !state.stopping {
                state.leading = true;
                return Turn::Lead;
            }
            state.idle += 1;
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            state.idle -= 1;
        }
    }

    /// Ends a turn as leader: queues the jobs it found, frees the leadership, and wakes idle
    /// workers, one to lead and one per queued job.
    fn end_lead(&self, jobs: impl Iterator<Item = Job>) {
        let mut state = self.lock();
        state.jobs.extend(jobs);
        state.leading = false;
        let wake = state.idle.min(state.jobs.len() + 1);
        drop(state);
        for _ in 0..wake {
            self.changed.notify_one();
        }
    }

    /// No new leader from now on.
    fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }

    /// Lets the workers finish what is queued, then exit.
    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

/// What the workers share.
struct Shared {
    ctx: Arc<ServeContext>,
    queue: Queue,
    /// The readiness poller and the listener, used by whichever worker leads.
    poller: Mutex<Poller>,
    slots: Vec<Mutex<Slot>>,
    free: Mutex<Vec<usize>>,
    waker: Waker,
    /// Open connections: parked, queued or with a worker.
    open: AtomicUsize,
    /// Accepting paused at the connection cap: a closing connection wakes the leader.
    paused: AtomicBool,
    /// Workers still running, for the graceful stop.
    running: Mutex<usize>,
    stopped: Condvar,
}

impl Shared {
    fn slot(&self, index: usize) -> MutexGuard<'_, Slot> {
        self.slots[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes a connection and frees its slot.
    fn close(&self, conn: Box<Conn<Stream>>, index: usize) {
        // Closing the socket also removes it from the poller's interest list.
        drop(conn);
        *self.slot(index) = Slot::default();
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(index);
        self.open.fetch_sub(1, Ordering::SeqCst);
        if self.paused.load(Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// Parks a connection whose socket would block, unless bytes were announced meanwhile: then
    /// it is handed back to be read again.
    fn park(&self, conn: Box<Conn<Stream>>, index: usize) -> Option<Box<Conn<Stream>>> {
        let mut slot = self.slot(index);
        if std::mem::take(&mut slot.pending) {
            return Some(conn);
        }
        slot.conn = Some(conn);
        slot.since = Some(Instant::now());
        None
    }

    fn worker_stopped(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        self.stopped.notify_all();
    }
}

/// What reading a connection's socket until it would block gave.
enum Read {
    /// A whole head is parsed and waiting.
    Head,
    /// Nothing more for now.
    Blocked,
    /// The client closed, or the socket failed.
    Gone,
    /// The head is bad: answer this.
    Bad(ParseError),
}

/// Reads until a whole head is in or the socket would block.
fn read_until_head(conn: &mut Conn<Stream>) -> Read {
    loop {
        match conn.poll_head() {
            Ok(true) => return Read::Head,
            Ok(false) => {}
            Err(e) => return Read::Bad(e),
        }
        match conn.read_available() {
            Ok(0) => return Read::Gone,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Read::Gone,
        }
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
        let Serving { listener, ctx } = server;
        listener.set_nonblocking(true)?;
        let poll = Poll::new()?;
        poll.registry().register(&mut SourceFd(&listener.as_raw_fd()), LISTENER, Interest::READABLE)?;
        poll.registry().register(&mut SourceFd(&ctx.shutdown.wake_fd()), SHUTDOWN, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let poller = Poller {
            poll,
            events: Events::with_capacity(256),
            listener: Some(listener),
            accepting: true,
            found: Vec::new(),
            next_sweep: Instant::now() + SWEEP_INTERVAL,
            error: None,
        };
        let shared = Arc::new(Shared {
            ctx: Arc::clone(&ctx),
            queue: Queue {
                state: Mutex::new(QueueState {
                    jobs: VecDeque::new(),
                    idle: 0,
                    leading: false,
                    stopping: false,
                    closed: false,
                }),
                changed: Condvar::new(),
            },
            poller: Mutex::new(poller),
            slots: (0..self.max_connections).map(|_| Mutex::default()).collect(),
            free: Mutex::new((0..self.max_connections).rev().collect()),
            waker,
            open: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
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
                        return Err(e.into());
                    }
                    ctx.config.log(&format!("cannot start worker thread {i}: {e}"));
                }
            }
        }
        // This thread only waits for the stop, then conducts it.
        while !ctx.shutdown.is_requested() {
            crate::sys::unix::wait_readable(&[ctx.shutdown.wake_fd()], None)?;
        }
        // Graceful stop: no new leader; once the current one is back, stop listening and close
        // idle connections; queued requests are still served, then the workers exit.
        shared.queue.stop();
        let _ = shared.waker.wake();
        let result = {
            let mut poller = shared.poller.lock().unwrap_or_else(|e| e.into_inner());
            // Clients that connected while every worker was busy may have sent a request already:
            // take them in, so the sweep below serves them, before closing the listener.
            poller.accept(&shared);
            poller.listener = None;
            poller.error.take().map_or(Ok(()), Err)
        };
        // A request that arrived while every worker was busy is still in its socket: serve it;
        // close the connections with nothing (or only part of a head) to serve.
        let mut last = Vec::new();
        for index in 0..shared.slots.len() {
            let parked = shared.slot(index).conn.take();
            let Some(mut conn) = parked else { continue };
            match read_until_head(&mut conn) {
                Read::Head => last.push(Job { conn, slot: index, reject: None }),
                _ => shared.close(conn, index),
            }
        }
        shared.queue.end_lead(last.into_iter());
        shared.queue.close();
        let running = shared.running.lock().unwrap_or_else(|e| e.into_inner());
        let (running, _) = shared
            .stopped
            .wait_timeout_while(running, ctx.config.graceful_timeout, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        if *running > 0 {
            ctx.config.log(&format!("graceful timeout: abandoning {} busy worker(s)", *running));
            return result;
        }
        drop(running);
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
            Turn::Work(job) => handle(shared, job),
            Turn::Exit => break,
            Turn::Lead => {
                let mine = {
                    let mut poller = shared.poller.lock().unwrap_or_else(|e| e.into_inner());
                    let mine = poller.lead(shared);
                    let rest = poller.found.drain(..);
                    shared.queue.end_lead(rest);
                    mine
                };
                if let Some(job) = mine {
                    handle(shared, job);
                }
            }
        }
    }
    shared.worker_stopped();
}

fn handle(shared: &Shared, Job { mut conn, slot, reject }: Job) {
    match reject {
        Some(error) => {
            conn.reject(error);
            shared.close(conn, slot);
        }
        None => serve(shared, conn, slot),
    }
}

/// Serves a connection's requests for as long as they keep coming without a wait, then parks it.
fn serve(shared: &Shared, mut conn: Box<Conn<Stream>>, slot: usize) {
    loop {
        if conn.serve(Mode::Buffered) == Served::Closed {
            return shared.close(conn, slot);
        }
        match read_until_head(&mut conn) {
            Read::Head => continue,
            Read::Gone => return shared.close(conn, slot),
            Read::Bad(error) => {
                conn.reject(error);
                return shared.close(conn, slot);
            }
            // Stopping: an idle connection is closed, not parked where nobody will look again.
            Read::Blocked if shared.ctx.shutdown.is_requested() => return shared.close(conn, slot),
            Read::Blocked => match shared.park(conn, slot) {
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
    listener: Option<Listener>,
    accepting: bool,
    /// Jobs found by the current turn of leadership.
    found: Vec<Job>,
    next_sweep: Instant,
    /// A fatal error of the listener or the poller, for `serve` to return.
    error: Option<crate::Error>,
}

impl Poller {
    /// Waits for readiness until at least one request is complete (returned; any others are in
    /// `found`) or the pool stops (`None`).
    fn lead(&mut self, shared: &Shared) -> Option<Job> {
        loop {
            if shared.ctx.shutdown.is_requested() || self.listener.is_none() || self.error.is_some() {
                return None;
            }
            // An idle server sleeps until something happens; a busy one also wakes to sweep.
            let timeout = if shared.open.load(Ordering::SeqCst) == 0 {
                None
            } else {
                Some(self.next_sweep.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.fail(shared, e.into());
                }
                continue;
            }
            // Taken out for the loop, which needs `self`; an empty `Events` allocates nothing.
            let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
            let mut stop = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(shared),
                    SHUTDOWN => stop = true,
                    WAKER => {}
                    Token(t) => self.on_readable(shared, t - FIRST_CONN),
                }
            }
            self.events = events;
            if stop {
                return self.take_found();
            }
            self.resume_accepting(shared);
            if Instant::now() >= self.next_sweep {
                self.sweep(shared);
                self.next_sweep = Instant::now() + SWEEP_INTERVAL;
            }
            if !self.found.is_empty() {
                return self.take_found();
            }
        }
    }

    /// The first job found, for the leader itself; the rest stay in `found` for the queue.
    fn take_found(&mut self) -> Option<Job> {
        (!self.found.is_empty()).then(|| self.found.remove(0))
    }

    /// Records a fatal error and stops the pool.
    fn fail(&mut self, shared: &Shared, error: crate::Error) {
        shared.ctx.config.log(&format!("pool stopping: {error}"));
        self.error = Some(error);
        shared.ctx.shutdown.shutdown();
    }

    fn accept(&mut self, shared: &Shared) {
        while self.accepting {
            let Some(listener) = &self.listener else { return };
            let free = shared.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(index) = free else {
                // At the cap: leave new clients in the backlog until a connection closes.
                let _ = self.poll.registry().deregister(&mut SourceFd(&listener.as_raw_fd()));
                self.accepting = false;
                shared.paused.store(true, Ordering::SeqCst);
                return;
            };
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let fd = stream.as_raw_fd();
                    let registered = stream.set_nonblocking(true).and_then(|()| {
                        let token = Token(index + FIRST_CONN);
                        self.poll.registry().register(&mut SourceFd(&fd), token, Interest::READABLE)
                    });
                    if registered.is_err() {
                        shared.free.lock().unwrap_or_else(|e| e.into_inner()).push(index);
                        continue;
                    }
                    shared.open.fetch_add(1, Ordering::SeqCst);
                    let conn = Box::new(Conn::new(stream, peer, Arc::clone(&shared.ctx)));
                    // Registering reports bytes already waiting, so the first request is not missed.
                    *shared.slot(index) = Slot { conn: Some(conn), pending: false, since: Some(Instant::now()) };
                }
                Err(e) => {
                    shared.free.lock().unwrap_or_else(|e| e.into_inner()).push(index);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        return;
                    }
                    if let Err(e) = super::accept_error(&shared.ctx, e) {
                        return self.fail(shared, e);
                    }
                }
            }
        }
    }

    fn resume_accepting(&mut self, shared: &Shared) {
        let Some(listener) = &self.listener else { return };
        if !self.accepting && shared.open.load(Ordering::SeqCst) < shared.slots.len() {
            shared.paused.store(false, Ordering::SeqCst);
            let fd = listener.as_raw_fd();
            if let Err(e) = self.poll.registry().register(&mut SourceFd(&fd), LISTENER, Interest::READABLE) {
                return self.fail(shared, e.into());
            }
            self.accepting = true;
            // Clients may have queued in the backlog meanwhile, and no new edge will announce them.
            self.accept(shared);
        }
    }

    /// Bytes came for a connection: read them if it is parked, else tell whoever has it.
    fn on_readable(&mut self, shared: &Shared, index: usize) {
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
        let Some(mut conn) = taken else { return };
        loop {
            match read_until_head(&mut conn) {
                Read::Head => self.found.push(Job { conn, slot: index, reject: None }),
                Read::Blocked => {
                    // Only a stale announcement can leave `pending` set: read again.
                    if let Some(again) = shared.park(conn, index) {
                        conn = again;
                        continue;
                    }
                }
                Read::Gone => shared.close(conn, index),
                Read::Bad(error) => self.found.push(Job { conn, slot: index, reject: Some(error) }),
            }
            return;
        }
    }

    /// Closes parked connections idle past the keep-alive timeout and answers `408` to heads
    /// that missed their deadline.
    fn sweep(&mut self, shared: &Shared) {
        let now = Instant::now();
        let keepalive = shared.ctx.config.keepalive_timeout;
        for index in 0..shared.slots.len() {
            let expired = {
                let mut slot = shared.slot(index);
                let due = match &slot.conn {
                    Some(conn) => conn.head_deadline().or_else(|| Some(slot.since? + keepalive?)),
                    None => None,
                };
                match due {
                    Some(t) if t <= now => slot.conn.take(),
                    _ => None,
                }
            };
            let Some(conn) = expired else { continue };
            if conn.head_deadline().is_some() {
                self.found.push(Job { conn, slot: index, reject: Some(ParseError::Timeout) });
            } else {
                shared.close(conn, index);
            }
        }
    }
}
