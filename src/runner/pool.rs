//! The thread-pool runner: a poller thread watches every connection between requests, a fixed
//! set of workers runs the handler.

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

/// A fixed pool of worker threads behind a poller, like gunicorn's gthread worker, with
/// waitress's slow-client isolation.
///
/// One poller thread (the thread that calls `serve`) accepts connections and watches every
/// connection between requests: it reads request bytes as they arrive and hands a connection to
/// a worker only once a whole request head is buffered. A client that trickles its head, or sits
/// idle on keep-alive, costs a buffer, never a worker: 4 workers serve 64 keep-alive clients, or
/// a thousand, and slowloris gets a `408` at the header deadline without ever touching a worker.
/// A worker serves the request (reading the body, if any, from the socket with
/// [`Config::body_timeout`](crate::Config::body_timeout)), then every further request that has
/// already arrived (pipelining, or a client quicker than the handoff), then leaves the
/// connection for the poller to watch.
///
/// Each socket is registered once, edge-triggered, and stays non-blocking for its whole life;
/// a connection parks in its slot, and whoever (poller or worker) finds bytes for it takes it.
/// A keep-alive request costs three system calls on the server besides the shared `epoll_wait`:
/// the poller's read, the worker's write, and the worker's read that finds nothing more.
///
/// Backpressure: connections with a complete request wait in a bounded queue (twice the number
/// of workers); when it is full they stay in the poller, which keeps their bytes unread. At
/// [`ThreadPool::max_connections`] open connections the poller stops accepting, and new clients
/// wait in the listen backlog.
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

/// The bounded queue between the poller and the workers.
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a job is pushed or the queue closes.
    ready: Condvar,
    capacity: usize,
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job: a push wakes one only when one waits.
    idle: usize,
    closed: bool,
}

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState { jobs: VecDeque::with_capacity(capacity), idle: 0, closed: false }),
            ready: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job, or gives it back when the queue is full.
    fn try_push(&self, job: Job) -> std::result::Result<(), Job> {
        let mut state = self.lock();
        if state.jobs.len() >= self.capacity {
            return Err(job);
        }
        state.jobs.push_back(job);
        let wake = state.idle > 0;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next job; `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state.idle += 1;
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            state.idle -= 1;
        }
    }

    /// Lets the workers finish what is queued, then stop.
    fn close(&self, remaining: impl IntoIterator<Item = Job>) {
        let mut state = self.lock();
        state.jobs.extend(remaining);
        state.closed = true;
        drop(state);
        self.ready.notify_all();
    }
}

/// What workers share with the poller.
struct Shared {
    ctx: Arc<ServeContext>,
    queue: Queue,
    slots: Vec<Mutex<Slot>>,
    free: Mutex<Vec<usize>>,
    waker: Waker,
    /// Open connections: parked, queued or with a worker.
    open: AtomicUsize,
    /// The poller stopped accepting at the connection cap and wants a wake-up when one closes.
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
        let shared = Arc::new(Shared {
            ctx: Arc::clone(&ctx),
            queue: Queue::new(self.workers * 2),
            slots: (0..self.max_connections).map(|_| Mutex::default()).collect(),
            free: Mutex::new((0..self.max_connections).rev().collect()),
            waker: Waker::new(poll.registry(), WAKER)?,
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
        let mut poller =
            Poller { poll, listener, accepting: true, backlog: VecDeque::new(), shared: Arc::clone(&shared) };
        let result = poller.run();
        // Graceful stop: stop listening and close idle connections now; queued requests still go
        // to the workers, which finish them and exit when the queue closes.
        let Poller { backlog, listener, .. } = poller;
        drop(listener);
        for index in 0..shared.slots.len() {
            let parked = shared.slot(index).conn.take();
            drop(parked);
        }
        shared.queue.close(backlog);
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

/// A worker: takes jobs until the queue closes.
fn work(shared: &Shared) {
    while let Some(Job { conn, slot, reject }) = shared.queue.pop() {
        match reject {
            Some(error) => {
                let mut conn = conn;
                conn.reject(error);
                shared.close(conn, slot);
            }
            None => serve(shared, conn, slot),
        }
    }
    shared.worker_stopped();
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

struct Poller {
    poll: Poll,
    listener: Listener,
    accepting: bool,
    /// Jobs the queue had no room for, oldest first.
    backlog: VecDeque<Job>,
    shared: Arc<Shared>,
}

impl Poller {
    fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(256);
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        loop {
            // An idle server sleeps until something happens; a busy one also wakes to sweep.
            let timeout = if self.shared.open.load(Ordering::SeqCst) == 0 && self.backlog.is_empty() {
                None
            } else {
                Some(next_sweep.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            if self.shared.ctx.shutdown.is_requested() {
                return Ok(());
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept()?,
                    SHUTDOWN => return Ok(()),
                    WAKER => {}
                    Token(t) => self.on_readable(t - FIRST_CONN),
                }
            }
            self.flush_backlog();
            self.resume_accepting()?;
            if Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + SWEEP_INTERVAL;
            }
        }
    }

    fn accept(&mut self) -> Result<()> {
        while self.accepting {
            let free = self.shared.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(index) = free else {
                // At the cap: leave new clients in the backlog until a connection closes.
                self.poll.registry().deregister(&mut SourceFd(&self.listener.as_raw_fd()))?;
                self.accepting = false;
                self.shared.paused.store(true, Ordering::SeqCst);
                break;
            };
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    let fd = stream.as_raw_fd();
                    let registered = stream.set_nonblocking(true).and_then(|()| {
                        let token = Token(index + FIRST_CONN);
                        self.poll.registry().register(&mut SourceFd(&fd), token, Interest::READABLE)
                    });
                    if registered.is_err() {
                        self.shared.free.lock().unwrap_or_else(|e| e.into_inner()).push(index);
                        continue;
                    }
                    self.shared.open.fetch_add(1, Ordering::SeqCst);
                    let conn = Box::new(Conn::new(stream, peer, Arc::clone(&self.shared.ctx)));
                    // Registering reports bytes already waiting, so the first request is not missed.
                    *self.shared.slot(index) = Slot { conn: Some(conn), pending: false, since: Some(Instant::now()) };
                }
                Err(e) => {
                    self.shared.free.lock().unwrap_or_else(|e| e.into_inner()).push(index);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        break;
                    }
                    super::accept_error(&self.shared.ctx, e)?;
                }
            }
        }
        Ok(())
    }

    fn resume_accepting(&mut self) -> Result<()> {
        if !self.accepting && self.shared.open.load(Ordering::SeqCst) < self.shared.slots.len() {
            self.shared.paused.store(false, Ordering::SeqCst);
            self.poll.registry().register(&mut SourceFd(&self.listener.as_raw_fd()), LISTENER, Interest::READABLE)?;
            self.accepting = true;
            // Clients may have queued in the backlog meanwhile, and no new edge will announce them.
            self.accept()?;
        }
        Ok(())
    }

    /// Bytes came for a connection: read them if it is parked, else tell whoever has it.
    fn on_readable(&mut self, index: usize) {
        let Some(slot) = self.shared.slots.get(index) else { return };
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
        match read_until_head(&mut conn) {
            Read::Head => self.dispatch(Job { conn, slot: index, reject: None }),
            Read::Blocked => {
                if let Some(conn) = self.shared.park(conn, index) {
                    // Cannot happen while the poller holds the connection; read it again anyway.
                    self.on_readable_again(conn, index);
                }
            }
            Read::Gone => self.shared.close(conn, index),
            Read::Bad(error) => self.dispatch(Job { conn, slot: index, reject: Some(error) }),
        }
    }

    fn on_readable_again(&mut self, conn: Box<Conn<Stream>>, index: usize) {
        self.shared.slot(index).conn = Some(conn);
        self.on_readable(index);
    }

    fn dispatch(&mut self, job: Job) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(job);
            return;
        }
        if let Err(job) = self.shared.queue.try_push(job) {
            self.backlog.push_back(job);
        }
    }

    fn flush_backlog(&mut self) {
        while let Some(job) = self.backlog.pop_front() {
            if let Err(job) = self.shared.queue.try_push(job) {
                self.backlog.push_front(job);
                return;
            }
        }
    }

    /// Closes parked connections idle past the keep-alive timeout and answers `408` to heads
    /// that missed their deadline.
    fn sweep(&mut self) {
        let now = Instant::now();
        let keepalive = self.shared.ctx.config.keepalive_timeout;
        for index in 0..self.shared.slots.len() {
            let expired = {
                let mut slot = self.shared.slot(index);
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
                self.dispatch(Job { conn, slot: index, reject: Some(ParseError::Timeout) });
            } else {
                self.shared.close(conn, index);
            }
        }
    }
}
