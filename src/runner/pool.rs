//! The thread-pool runner: a poller thread owns every connection between requests, a fixed set of
//! workers runs the handler.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
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

/// A fixed pool of worker threads behind a poller, like gunicorn's gthread worker, with
/// waitress's slow-client isolation.
///
/// One poller thread (the thread that calls `serve`) accepts connections and owns every
/// connection between requests: it reads request bytes as they arrive and hands a connection to
/// a worker only once a whole request head is buffered. A client that trickles its head, or sits
/// idle on keep-alive, costs a buffer in the poller, never a worker: 4 workers serve 64
/// keep-alive clients, or a thousand, and slowloris gets a `408` at the header deadline without
/// ever touching a worker. A worker serves the request (reading the body, if any, from the socket
/// with [`Config::body_timeout`](crate::Config::body_timeout)), then every further request
/// already buffered (pipelining), then gives the connection back to the poller.
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

/// Work for a worker: a connection with a complete head buffered, or one to answer with an error.
struct Job {
    conn: Box<Conn<Stream>>,
    reject: Option<ParseError>,
}

/// A connection waiting in the poller for bytes.
struct Parked {
    conn: Box<Conn<Stream>>,
    since: Instant,
}

/// What workers share with the poller.
struct Shared {
    ctx: Arc<ServeContext>,
    jobs: Mutex<Receiver<Job>>,
    // Boxed so that handing a connection between threads moves a pointer, not its buffers' headers.
    #[allow(clippy::vec_box)]
    returned: Mutex<Vec<Box<Conn<Stream>>>>,
    waker: Waker,
    /// Open connections: parked, queued or with a worker.
    open: AtomicUsize,
    /// Workers still running, for the graceful stop.
    running: Mutex<usize>,
    stopped: Condvar,
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
        let (job_tx, job_rx) = mpsc::sync_channel(self.workers * 2);
        let shared = Arc::new(Shared {
            ctx: Arc::clone(&ctx),
            jobs: Mutex::new(job_rx),
            returned: Mutex::new(Vec::new()),
            waker: Waker::new(poll.registry(), WAKER)?,
            open: AtomicUsize::new(0),
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
        let mut poller = Poller {
            poll,
            listener,
            accepting: true,
            max_connections: self.max_connections,
            parked: Vec::new(),
            free: Vec::new(),
            backlog: VecDeque::new(),
            jobs: job_tx,
            shared: Arc::clone(&shared),
            next_sweep: None,
        };
        let result = poller.run();
        // Graceful stop: stop listening and close idle connections now; queued requests still go
        // to the workers, which finish them and exit when the queue closes.
        let Poller { backlog, jobs, listener, parked, .. } = poller;
        drop(listener);
        drop(parked);
        for job in backlog {
            let _ = jobs.send(job);
        }
        drop(jobs);
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
    loop {
        let job = match shared.jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => break,
        };
        let Ok(Job { mut conn, reject }) = job else { break };
        // The socket stays non-blocking: the connection's reads and writes wait with poll(2).
        let served = match reject {
            Some(error) => {
                conn.reject(error);
                Served::Closed
            }
            None => conn.serve(Mode::Buffered),
        };
        if served == Served::Park {
            if let Ok(mut returned) = shared.returned.lock() {
                returned.push(conn);
            }
        } else {
            drop(conn);
            shared.open.fetch_sub(1, Ordering::SeqCst);
        }
        // Either a connection came back or a slot freed up: the poller has something to do.
        let _ = shared.waker.wake();
    }
    shared.worker_stopped();
}

impl Shared {
    fn worker_stopped(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        self.stopped.notify_all();
    }
}

struct Poller {
    poll: Poll,
    listener: Listener,
    accepting: bool,
    max_connections: usize,
    /// Parked connections, by token minus [`FIRST_CONN`].
    parked: Vec<Option<Parked>>,
    free: Vec<usize>,
    /// Jobs the queue had no room for, oldest first.
    backlog: VecDeque<Job>,
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
    /// When the next parked connection's timeout falls due.
    next_sweep: Option<Instant>,
}

impl Poller {
    fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.next_sweep.map(|t| t.saturating_duration_since(Instant::now()));
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
                    WAKER => self.take_returned()?,
                    Token(t) => self.on_readable(t - FIRST_CONN)?,
                }
            }
            self.flush_backlog();
            self.resume_accepting()?;
            if self.next_sweep.is_some_and(|t| t <= Instant::now()) {
                self.sweep();
            }
        }
    }

    fn accept(&mut self) -> Result<()> {
        while self.accepting {
            if self.shared.open.load(Ordering::SeqCst) >= self.max_connections {
                self.poll.registry().deregister(&mut SourceFd(&self.listener.as_raw_fd()))?;
                self.accepting = false;
                break;
            }
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.shared.open.fetch_add(1, Ordering::SeqCst);
                    let conn = Box::new(Conn::new(stream, peer, Arc::clone(&self.shared.ctx)));
                    self.park(conn)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => super::accept_error(&self.shared.ctx, e)?,
            }
        }
        Ok(())
    }

    fn resume_accepting(&mut self) -> Result<()> {
        if !self.accepting && self.shared.open.load(Ordering::SeqCst) < self.max_connections {
            self.poll.registry().register(&mut SourceFd(&self.listener.as_raw_fd()), LISTENER, Interest::READABLE)?;
            self.accepting = true;
            // Clients may have queued in the backlog meanwhile, and no new edge will announce them.
            self.accept()?;
        }
        Ok(())
    }

    fn take_returned(&mut self) -> Result<()> {
        let returned = match self.shared.returned.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(_) => Vec::new(),
        };
        for conn in returned {
            self.park(conn)?;
        }
        Ok(())
    }

    /// Registers a connection with the poller until bytes come. Registering reports bytes that
    /// are already waiting, so nothing sent while a worker had the connection is missed.
    fn park(&mut self, conn: Box<Conn<Stream>>) -> Result<()> {
        let index = self.free.pop().unwrap_or_else(|| {
            self.parked.push(None);
            self.parked.len() - 1
        });
        let fd = conn.stream().as_raw_fd();
        if let Err(e) = self.poll.registry().register(&mut SourceFd(&fd), Token(index + FIRST_CONN), Interest::READABLE)
        {
            self.free.push(index);
            self.close(conn);
            self.shared.ctx.config.log(&format!("cannot watch a connection: {e}"));
            return Ok(());
        }
        let parked = Parked { conn, since: Instant::now() };
        let due = due(&parked, self.shared.ctx.config.keepalive_timeout);
        self.next_sweep = min_instant(self.next_sweep, due);
        self.parked[index] = Some(parked);
        Ok(())
    }

    fn unpark(&mut self, index: usize) -> Option<Box<Conn<Stream>>> {
        let parked = self.parked.get_mut(index)?.take()?;
        self.free.push(index);
        let _ = self.poll.registry().deregister(&mut SourceFd(&parked.conn.stream().as_raw_fd()));
        Some(parked.conn)
    }

    fn close(&self, conn: Box<Conn<Stream>>) {
        drop(conn);
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
    }

    /// Reads what a parked connection has (edge-triggered: until it would block), and hands it
    /// to a worker once a whole head is in.
    fn on_readable(&mut self, index: usize) -> Result<()> {
        let Some(Some(parked)) = self.parked.get_mut(index) else { return Ok(()) };
        let verdict = loop {
            match parked.conn.read_available() {
                Ok(0) => break Err(None),
                Ok(_) => match parked.conn.poll_head() {
                    Ok(true) => break Ok(true),
                    Ok(false) => continue,
                    Err(e) => break Err(Some(e)),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break Err(None),
            }
        };
        match verdict {
            Ok(false) => {
                // A head has begun: its deadline may now be the nearest.
                let due = due(parked, self.shared.ctx.config.keepalive_timeout);
                self.next_sweep = min_instant(self.next_sweep, due);
            }
            Ok(true) => {
                let conn = self.unpark(index).expect("parked above");
                self.dispatch(Job { conn, reject: None });
            }
            Err(Some(error)) => {
                let conn = self.unpark(index).expect("parked above");
                self.dispatch(Job { conn, reject: Some(error) });
            }
            Err(None) => {
                let conn = self.unpark(index).expect("parked above");
                self.close(conn);
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, job: Job) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(job);
            return;
        }
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => self.backlog.push_back(job),
            Err(TrySendError::Disconnected(job)) => self.close(job.conn),
        }
    }

    fn flush_backlog(&mut self) {
        while let Some(job) = self.backlog.pop_front() {
            match self.jobs.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    self.backlog.push_front(job);
                    return;
                }
                Err(TrySendError::Disconnected(job)) => self.close(job.conn),
            }
        }
    }

    /// Closes idle connections whose time is up and answers `408` to heads that missed their
    /// deadline.
    fn sweep(&mut self) {
        let now = Instant::now();
        let mut next = None;
        for index in 0..self.parked.len() {
            let Some(parked) = &self.parked[index] else { continue };
            let due = due(parked, self.shared.ctx.config.keepalive_timeout);
            match due {
                Some(t) if t <= now => {
                    let late_head = parked.conn.head_deadline().is_some();
                    let conn = self.unpark(index).expect("parked");
                    if late_head {
                        self.dispatch(Job { conn, reject: Some(ParseError::Timeout) });
                    } else {
                        self.close(conn);
                    }
                }
                other => next = min_instant(next, other),
            }
        }
        self.next_sweep = next;
    }
}

/// When a parked connection times out: at its header deadline once a head has begun, else when
/// its keep-alive idle time is up.
fn due(parked: &Parked, keepalive: Option<Duration>) -> Option<Instant> {
    parked.conn.head_deadline().or_else(|| Some(parked.since + keepalive?))
}

fn min_instant(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
