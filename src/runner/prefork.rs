//! The prefork runner: a master process that keeps N worker processes serving the same
//! listeners, gunicorn's arbiter. The decisions are the [`Arbiter`]'s; this module does the
//! forking, signalling and reaping.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::arbiter::{Action, Arbiter, Event, Sig, BOOT_ERROR};
use super::private::{App, ReadyHook, Sealed, Serving, Upgrader, WorkerHooks};
use super::{Runner, ThreadPool};
use crate::config::Config;
use crate::conn::panic_message;
use crate::environ::{Environ, RunnerFlags};
use crate::error::{Error, Result};
use crate::handler::{BoxError, Handler, Response, StartResponse};
use crate::logging::Level;
use crate::net::Listeners;
use crate::shutdown::ShutdownHandle;
use crate::sys::unix::process::SharedWords;
use crate::sys::unix::{self, process, signal};

/// Default number of threads of the pool inside each worker ([`Prefork::threads`]).
pub const DEFAULT_PREFORK_THREADS: usize = 4;
/// Default for [`Prefork::timeout`]: gunicorn's.
pub const DEFAULT_PREFORK_TIMEOUT: Duration = Duration::from_secs(30);

/// Word of a worker's [`SharedWords`]: its last heartbeat, in [`process::monotonic_ms`].
const HEARTBEAT: usize = 0;
/// Word of a worker's [`SharedWords`]: when its oldest request in progress began (0: none).
const OLDEST_REQUEST: usize = 1;
/// Word of a worker's [`SharedWords`]: set once it served its `max_requests`.
const RECYCLE: usize = 2;
/// Handler calls tracked at once in a worker (one slot per thread that calls handlers).
const REQUEST_SLOTS: usize = 1024;

/// Exit status of a worker whose runner failed, or panicked outside a handler.
const WORKER_FAILED: i32 = 1;
/// What a worker writes to its status pipe once it serves.
const READY: u8 = b'R';

/// A master process and N worker processes on the same listeners, like gunicorn.
///
/// The master binds (or inherits) the listeners, forks the workers and never serves a request
/// itself; each worker runs another runner on the listeners: a [`ThreadPool`] of
/// [`DEFAULT_PREFORK_THREADS`] threads by default ([`Prefork::threads`]), or any other
/// ([`Prefork::inner`]: [`Serial`](super::Serial) for gunicorn's sync-worker isolation). A worker
/// calls the handler factory given to [`Server::serve_factory`](crate::Server::serve_factory)
/// after the fork, so that each builds its own state; with [`Server::serve`](crate::Server::serve)
/// every worker starts with a copy of the master's handler. A worker reports to the master once
/// its handler is made; a factory that fails (or panics) is a worker that cannot boot. The
/// hooks of [`Server::on_worker_fork`](crate::Server::on_worker_fork) and
/// [`Server::on_worker_exit`](crate::Server::on_worker_exit) run in each worker after the fork
/// and before it exits.
///
/// The master, on its signals (gunicorn's meanings):
///
/// | signal | effect |
/// |---|---|
/// | `TERM` | graceful stop: workers finish their requests within [`Config::graceful_timeout`](crate::Config::graceful_timeout), then are killed; `serve` returns once all are gone |
/// | `INT`, `QUIT` | quick stop: workers are killed at once |
/// | `HUP` | graceful reload: N new workers first (a new call of the factory in each); once every one of them serves, the old ones get `TERM`; if the new ones cannot boot, the old ones keep serving and the failure is logged |
/// | `USR1` | reopen the log files: the master's, and forwarded to every worker |
/// | `USR2` | binary upgrade, for a server started through [`Options`](crate::Options): re-execute the program on the same listeners (see the README) |
/// | `WINCH` | stop every worker gracefully and start none (`HUP` brings them back); ignored with a controlling terminal |
/// | `TTIN` / `TTOU` | one worker more / fewer (never fewer than one) |
/// | `CHLD` | reaping: a worker that died is replaced |
///
/// A worker that dies (a panic that escapes, an abort, `SIGKILL`, `SIGSEGV`) is reaped and
/// replaced; one that dies within a second of its start, or cannot boot, makes the next start
/// wait (100 ms, doubling up to 5 s), so that a crash loop does not spin; when no worker can
/// boot at all, the master stops every worker and `serve` returns [`Error::Workers`]. Signal
/// handlers only write the signal's number to a pipe; all work happens in the master's loop,
/// which also reaps every exited worker each turn. A worker whose master dies gets `SIGTERM`
/// (`PR_SET_PDEATHSIG`) and stops gracefully. The master owns a Unix socket's file: a worker
/// never removes it.
///
/// # Platform notes
/// Linux. `fork` is only sound in a single-threaded process: `serve` refuses with
/// [`Error::NotSingleThreaded`] if the process runs more than one thread when it starts, and the
/// master stays single-threaded. Start it from `main` before anything spawns threads.
///
/// ```no_run
/// # fn main() -> Result<(), sgi::Error> {
/// sgi::Server::bind("127.0.0.1:8000")?
///     .runner(sgi::runner::Prefork::new(4).threads(8))
///     .serve_factory(|| Ok(sgi::handler_fn(|_env, sr| Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body("hi")))))
/// # }
/// ```
pub struct Prefork {
    workers: usize,
    inner: Box<dyn Runner>,
    timeout: Option<Duration>,
    max_requests: u64,
    max_requests_jitter: u64,
    max_rss: Option<u64>,
}

impl std::fmt::Debug for Prefork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefork")
            .field("workers", &self.workers)
            .field("inner", &self.inner.name())
            .field("timeout", &self.timeout)
            .field("max_requests", &self.max_requests)
            .field("max_requests_jitter", &self.max_requests_jitter)
            .field("max_rss", &self.max_rss)
            .finish()
    }
}

impl Prefork {
    /// A master keeping `workers` worker processes (at least 1), each running a pool of
    /// [`DEFAULT_PREFORK_THREADS`] threads.
    pub fn new(workers: usize) -> Prefork {
        Prefork {
            workers: workers.max(1),
            inner: Box::new(ThreadPool::new(DEFAULT_PREFORK_THREADS)),
            timeout: Some(DEFAULT_PREFORK_TIMEOUT),
            max_requests: 0,
            max_requests_jitter: 0,
            max_rss: None,
        }
    }

    /// Recycles a worker whose resident memory grows past `bytes` (uWSGI's `reload-on-rss`),
    /// checked every second: like [`max_requests`](Prefork::max_requests), its replacement
    /// first. `None` (the default): never.
    pub fn max_rss(mut self, bytes: Option<u64>) -> Prefork {
        self.max_rss = bytes;
        self
    }

    /// Recycles a worker once it has answered `max` requests (gunicorn's `--max-requests`,
    /// against slow leaks): its replacement is started first, and the worker retires
    /// gracefully once the replacement serves. 0 (the default): never.
    pub fn max_requests(mut self, max: u64) -> Prefork {
        self.max_requests = max;
        self
    }

    /// Adds to each worker's [`max_requests`](Prefork::max_requests) a number between 0 and
    /// `jitter`, different for each worker, so that workers started together are not all
    /// recycled at once (gunicorn's `--max-requests-jitter`).
    pub fn max_requests_jitter(mut self, jitter: u64) -> Prefork {
        self.max_requests_jitter = jitter;
        self
    }

    /// The longest one request may run (gunicorn's `--timeout`): a worker with a handler call
    /// older than this, or whose heartbeat (published by a thread of its own every quarter of
    /// the timeout, at most every second) stopped for as long, gets SIGTERM, then SIGKILL 2 s
    /// later, and a replacement at once. `None`: never. Default: [`DEFAULT_PREFORK_TIMEOUT`]
    /// (30 s). Measured from the handler's call to its return: a response body that takes long
    /// to produce afterwards is not counted.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Prefork {
        self.timeout = timeout;
        self
    }

    /// Each worker runs a [`ThreadPool`] of `threads` threads (gunicorn's `--threads`).
    pub fn threads(self, threads: usize) -> Prefork {
        self.inner(ThreadPool::new(threads))
    }

    /// Each worker runs `runner` (any runner but prefork and fork: a worker runs a heartbeat
    /// thread, and fork needs a single-threaded process).
    pub fn inner(mut self, runner: impl Runner) -> Prefork {
        self.inner = Box::new(runner);
        self
    }
}

impl Sealed for Prefork {}

impl Runner for Prefork {
    fn name(&self) -> &'static str {
        "prefork"
    }

    fn flags(&self) -> RunnerFlags {
        RunnerFlags { multiprocess: true, ..self.inner.flags() }
    }

    fn run(self: Box<Self>, server: Serving) -> Result<()> {
        let threads = process::thread_count()?;
        if threads > 1 {
            return Err(Error::NotSingleThreaded(threads));
        }
        if matches!(self.inner.name(), "prefork" | "fork") {
            let message = format!("a prefork worker cannot run the {} runner", self.inner.name());
            return Err(Error::Io(io::Error::other(message)));
        }
        let (signal_read, signal_write) = unix::pipe()?;
        signal::handle_master_signals(signal_write.as_raw_fd())?;
        let Serving { listeners, config, flags, shutdown, app, hooks, ready, upgrade } = server;
        let master = Master {
            arbiter: Arbiter::new(self.workers, config.graceful_timeout),
            signals: File::from(signal_read),
            signal_write: signal_write.as_raw_fd(),
            statuses: BTreeMap::new(),
            pid: process::pid(),
            worker: Some(WorkerKit { listeners, inner: self.inner, app, hooks }),
            timeout: self.timeout,
            max_requests: (self.max_requests, self.max_requests_jitter),
            max_rss: self.max_rss,
            liveness: BTreeMap::new(),
            ready,
            upgrade,
            new_master: None,
            config,
            flags,
            shutdown,
        };
        let result = master.run();
        signal::restore_master_signals();
        drop(signal_write);
        result
    }
}

/// What a worker takes with it: the master keeps it, and each forked copy takes its own.
struct WorkerKit {
    listeners: Listeners,
    inner: Box<dyn Runner>,
    app: App,
    hooks: WorkerHooks,
}

/// The master's loop state.
struct Master {
    arbiter: Arbiter,
    /// The signal pipe: each signal the master handles writes its number.
    signals: File,
    signal_write: RawFd,
    /// The status pipe (read end) of each worker still booting: it writes [`READY`] once it
    /// serves, and the pipe is closed then.
    statuses: BTreeMap<i32, File>,
    pid: libc::pid_t,
    /// `None` only in a forked worker, which took it.
    worker: Option<WorkerKit>,
    timeout: Option<Duration>,
    /// `max_requests` and its jitter (0: never recycle).
    max_requests: (u64, u64),
    max_rss: Option<u64>,
    /// What each live worker publishes: its heartbeat, its oldest request, whether it is due
    /// for recycling.
    liveness: BTreeMap<i32, Arc<SharedWords>>,
    /// Called when the first workers all serve.
    ready: Option<ReadyHook>,
    /// How to start a new master on `USR2`, and the one started, while it lives.
    upgrade: Option<Box<dyn Upgrader>>,
    new_master: Option<i32>,
    config: Arc<Config>,
    flags: RunnerFlags,
    shutdown: ShutdownHandle,
}

impl Master {
    fn run(mut self) -> Result<()> {
        let mut actions = Vec::new();
        let mut events = vec![Event::Start];
        loop {
            let now = Instant::now();
            for event in events.drain(..) {
                self.arbiter.handle(event, now, &mut actions);
            }
            // Acting may bring events (a worker spawned), which may bring actions again.
            while !actions.is_empty() {
                for action in std::mem::take(&mut actions) {
                    match action {
                        Action::Spawn { generation } => {
                            let event = match self.spawn() {
                                Ok(pid) => Event::Spawned { pid, generation },
                                Err(e) => {
                                    self.config.log(Level::Error, &format!("cannot fork a worker: {e}"));
                                    Event::SpawnFailed
                                }
                            };
                            let mut more = Vec::new();
                            self.arbiter.handle(event, Instant::now(), &mut more);
                            actions.extend(more);
                        }
                        Action::Signal { pid, sig } => {
                            process::kill(pid, if sig == Sig::Term { libc::SIGTERM } else { libc::SIGKILL })
                        }
                        Action::Log(level, line) => self.config.log(level, &line),
                        Action::Serving => {
                            if let Some(ready) = self.ready.take() {
                                ready();
                            }
                        }
                        Action::Done(result) => return result.map_err(|why| Error::Workers(why.into())),
                    }
                }
            }
            let mut fds = vec![self.signals.as_raw_fd(), self.shutdown.wake_fd()];
            fds.extend(self.statuses.values().map(AsRawFd::as_raw_fd));
            let timeout = self.arbiter.next_tick(Instant::now());
            unix::wait_readable(&fds, timeout)?;
            self.read_signals(&mut events);
            self.read_statuses(&mut events);
            // Every turn, not only on SIGCHLD: no zombie outlives one turn of the loop.
            self.check_liveness(&mut events);
            process::reap(|exit| {
                if Some(exit.pid) == self.new_master {
                    self.new_master = None;
                    let line =
                        format!("the new master {} exited with status {}: upgrade abandoned", exit.pid, exit.code());
                    self.config.log(Level::Warn, &line);
                    if let Some(upgrade) = &mut self.upgrade {
                        upgrade.abandon();
                    }
                    return;
                }
                self.statuses.remove(&exit.pid);
                self.liveness.remove(&exit.pid);
                events.push(Event::Exited { pid: exit.pid, code: exit.code() });
            });
            events.push(Event::Tick);
        }
    }

    fn read_signals(&mut self, events: &mut Vec<Event>) {
        let mut buf = [0u8; 64];
        let mut reopen = false;
        let mut upgrade = false;
        loop {
            match self.signals.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => events.extend(buf[..n].iter().filter_map(|&s| match i32::from(s) {
                    libc::SIGTERM => Some(Event::GracefulStop),
                    libc::SIGINT | libc::SIGQUIT => Some(Event::QuickStop),
                    libc::SIGHUP => Some(Event::Reload),
                    libc::SIGTTIN => Some(Event::MoreWorkers),
                    libc::SIGTTOU => Some(Event::FewerWorkers),
                    libc::SIGUSR1 => {
                        reopen = true;
                        None
                    }
                    libc::SIGUSR2 => {
                        upgrade = true;
                        None
                    }
                    // A terminal's window change sends WINCH too: only a master without one
                    // (a daemon, a service) takes it as "stop the workers" (gunicorn's rule).
                    libc::SIGWINCH if !unix::has_controlling_terminal() => Some(Event::StopWorkers),
                    _ => None, // SIGCHLD: the reaping below
                })),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // WouldBlock: all read
            }
        }
        if reopen {
            // The master's own log files, then every worker's.
            signal::reopen_logs();
            for &pid in self.liveness.keys() {
                process::kill(pid, libc::SIGUSR1);
            }
        }
        if upgrade {
            self.start_new_master();
        }
        // `ShutdownHandle::shutdown` is a graceful stop too.
        if self.shutdown.is_requested() && !self.arbiter.is_stopping() {
            events.push(Event::GracefulStop);
        }
    }

    /// `USR2`: re-executes the program (the file at its path now: the new code) on the same
    /// listeners. From then on this master leaves the Unix socket files to the new one.
    fn start_new_master(&mut self) {
        if self.new_master.is_some() || self.arbiter.is_stopping() {
            self.config.log(Level::Warn, "binary upgrade refused: one is under way, or the master is stopping");
            return;
        }
        let Some(upgrade) = &mut self.upgrade else {
            self.config.log(Level::Warn, "binary upgrade refused: the server was not started by sgi::Options");
            return;
        };
        match upgrade.start() {
            Ok(pid) => {
                self.config.log(Level::Info, &format!("binary upgrade: new master {pid} started"));
                self.new_master = Some(pid);
                if let Some(kit) = self.worker.take() {
                    self.worker = Some(WorkerKit { listeners: kit.listeners.without_files(), ..kit });
                }
            }
            Err(e) => {
                self.config.log(Level::Error, &format!("binary upgrade failed: cannot start the new master: {e}"))
            }
        }
    }

    /// A worker whose oldest request, or last heartbeat, is older than the timeout is overdue;
    /// one that served its `max_requests` is due for recycling.
    fn check_liveness(&self, events: &mut Vec<Event>) {
        for (&pid, words) in &self.liveness {
            // Swapped back, so that it is reported once.
            if words.word(RECYCLE).swap(0, Ordering::Relaxed) != 0 {
                events.push(Event::Recycle { pid });
            }
        }
        let Some(timeout) = self.timeout else { return };
        let limit = timeout.as_millis() as u64;
        let now = process::monotonic_ms();
        for (&pid, words) in &self.liveness {
            let heartbeat = words.word(HEARTBEAT).load(Ordering::Relaxed);
            let oldest = words.word(OLDEST_REQUEST).load(Ordering::Relaxed);
            let why = if heartbeat != 0 && now.saturating_sub(heartbeat) > limit {
                format!("no heartbeat for {} ms", now - heartbeat)
            } else if oldest != 0 && now.saturating_sub(oldest) > limit {
                format!("a request running for {} ms", now - oldest)
            } else {
                continue;
            };
            events.push(Event::Overdue { pid, why });
        }
    }

    /// Reads the status pipes: a worker that reported [`READY`], or closed its pipe without
    /// (it is gone), is done with it, and its pipe is closed: a pipe at end of file is always
    /// readable, and would keep the master's loop from ever waiting.
    fn read_statuses(&mut self, events: &mut Vec<Event>) {
        let mut buf = [0u8; 8];
        self.statuses.retain(|&pid, pipe| match pipe.read(&mut buf) {
            Ok(0) => false,
            Ok(n) if buf[..n].contains(&READY) => {
                events.push(Event::Ready { pid });
                false
            }
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted,
        });
    }

    /// Forks one worker; returns its pid. The worker never returns from here.
    fn spawn(&mut self) -> io::Result<i32> {
        let (status_read, status_write) = unix::pipe()?;
        let words = Arc::new(SharedWords::new()?);
        match process::fork(signal::reset_in_child)? {
            process::Forked::Parent { child } => {
                drop(status_write);
                self.statuses.insert(child, File::from(status_read));
                self.liveness.insert(child, words);
                Ok(child)
            }
            process::Forked::Child => {
                process::die_with_parent(self.pid);
                // What only the master needs: its signal pipe, its stop pipe, the other
                // workers' status pipes, this worker's read end.
                let mut master_fds = vec![self.signals.as_raw_fd(), self.signal_write, status_read.as_raw_fd()];
                master_fds.extend(self.shutdown.pipe_fds());
                master_fds.extend(self.statuses.values().map(AsRawFd::as_raw_fd));
                for fd in master_fds {
                    unix::close_in_child(fd);
                }
                // This process's copy of what the master keeps: it never returns to the master's
                // loop, so taking it away from there is safe.
                let kit = self.worker.take().expect("the master keeps the worker kit");
                let (max, jitter) = self.max_requests;
                // Different for each worker, without a random number generator.
                let max = if max == 0 { 0 } else { max + u64::from(process::pid().unsigned_abs()) % (jitter + 1) };
                let watch = Watch { timeout: self.timeout, max_requests: max, max_rss: self.max_rss, words };
                worker(kit, &self.config, self.flags, File::from(status_write), watch)
            }
        }
    }
}

/// A worker's life: make the handler, report, serve until told to stop, exit. Never returns
/// into the master's code, and never runs the master's destructors (a Unix socket's file is
/// the master's to remove).
fn worker(kit: WorkerKit, config: &Arc<Config>, flags: RunnerFlags, mut status: File, watch: Watch) -> ! {
    let pid = process::pid();
    let WorkerKit { listeners, inner, app, hooks } = kit;
    let forked = match &hooks.after_fork {
        Some(hook) => catch_unwind(AssertUnwindSafe(|| hook()))
            .map_err(|panic| format!("the after-fork hook panicked: {}", panic_message(&*panic))),
        None => Ok(()),
    };
    let handler = forked.and_then(|()| match app {
        App::Handler(handler) => Ok(handler),
        App::Factory(make) => match catch_unwind(AssertUnwindSafe(make)) {
            Ok(made) => made.map_err(|e| format!("the handler factory failed: {e}")),
            Err(panic) => Err(format!("the handler factory panicked: {}", panic_message(&*panic))),
        },
    });
    let handler = handler.unwrap_or_else(|why| {
        config.log(Level::Error, &format!("worker {pid} cannot boot: {why}"));
        process::exit_now(BOOT_ERROR);
    });
    let served = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
        let shutdown = ShutdownHandle::new()?;
        let _signals = shutdown.handle_signals()?;
        let in_flight = Arc::new(InFlight::new());
        if watch.timeout.is_some() || watch.max_rss.is_some() {
            watcher(&watch, Arc::clone(&in_flight))?;
        }
        let handler: Box<dyn Handler> = if watch.timeout.is_some() || watch.max_requests > 0 {
            Box::new(Watched {
                inner: handler,
                in_flight: watch.timeout.is_some().then_some(in_flight),
                max_requests: watch.max_requests,
                served: AtomicU64::new(0),
                words: watch.words,
            })
        } else {
            handler
        };
        let _ = status.write_all(&[READY]);
        drop(status);
        let listeners = listeners.without_files();
        let serving = Serving {
            listeners,
            config: Arc::clone(config),
            flags,
            shutdown,
            app: App::Handler(handler),
            hooks: WorkerHooks::default(),
            ready: None,
            upgrade: None,
        };
        inner.run(serving)
    }));
    if let Some(hook) = &hooks.before_exit {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| hook())) {
            config
                .log(Level::Error, &format!("worker {pid}: the before-exit hook panicked: {}", panic_message(&*panic)));
        }
    }
    let code = match served {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            config.log(Level::Error, &format!("worker {pid} stopped: {e}"));
            WORKER_FAILED
        }
        Err(panic) => {
            config.log(Level::Error, &format!("worker {pid} panicked: {}", panic_message(&*panic)));
            WORKER_FAILED
        }
    };
    process::exit_now(code)
}

/// When each handler call in progress began, one slot per thread that calls handlers.
struct InFlight {
    slots: Vec<AtomicU64>,
    next: AtomicUsize,
}

thread_local! {
    /// This thread's slot in the worker's [`InFlight`], once it has called a handler.
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

impl InFlight {
    fn new() -> InFlight {
        InFlight { slots: (0..REQUEST_SLOTS).map(|_| AtomicU64::new(0)).collect(), next: AtomicUsize::new(0) }
    }

    /// This thread's slot; `None` past [`REQUEST_SLOTS`] threads (their calls go untimed).
    fn slot(&self) -> Option<&AtomicU64> {
        let index = SLOT.with(|slot| match slot.get() {
            Some(i) => i,
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                slot.set(Some(i));
                i
            }
        });
        self.slots.get(index)
    }

    /// The start of the oldest call in progress, 0 if none.
    fn oldest(&self) -> u64 {
        let used = self.next.load(Ordering::Relaxed).min(REQUEST_SLOTS);
        self.slots[..used].iter().map(|s| s.load(Ordering::Relaxed)).filter(|&t| t != 0).min().unwrap_or(0)
    }
}

/// What a worker publishes to its master, and when.
struct Watch {
    timeout: Option<Duration>,
    /// Requests after which the worker asks to be recycled (0: never).
    max_requests: u64,
    /// Resident memory above which it asks to be recycled.
    max_rss: Option<u64>,
    words: Arc<SharedWords>,
}

/// The app's handler, with each call's start noted for the master's timeout, and the calls
/// counted for `max_requests`.
struct Watched {
    inner: Box<dyn Handler>,
    in_flight: Option<Arc<InFlight>>,
    max_requests: u64,
    served: AtomicU64,
    words: Arc<SharedWords>,
}

/// Clears a call's slot when the call ends, by return or by panic.
struct CallDone<'a>(Option<&'a AtomicU64>);

impl Drop for CallDone<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            slot.store(0, Ordering::Relaxed);
        }
    }
}

impl Handler for Watched {
    fn call(&self, env: &mut Environ<'_>, start_response: StartResponse<'_>) -> Result<Response, BoxError> {
        if self.max_requests > 0 && self.served.fetch_add(1, Ordering::Relaxed) + 1 == self.max_requests {
            // Once: the master starts a replacement, then retires this worker gracefully.
            self.words.word(RECYCLE).store(1, Ordering::Relaxed);
        }
        let slot = self.in_flight.as_deref().and_then(InFlight::slot);
        if let Some(slot) = slot {
            slot.store(process::monotonic_ms(), Ordering::Relaxed);
        }
        let _done = CallDone(slot);
        self.inner.call(env, start_response)
    }
}

/// Starts the thread that publishes the worker's heartbeat and oldest call to its master.
/// Starts the thread that publishes the worker's heartbeat and oldest call (with a timeout)
/// and asks for recycling once its memory passes `max_rss` bytes.
fn watcher(watch: &Watch, in_flight: Arc<InFlight>) -> io::Result<()> {
    let every = watch
        .timeout
        .map_or(Duration::from_secs(1), |t| (t / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)));
    let (timeout, max_rss, words) = (watch.timeout, watch.max_rss, Arc::clone(&watch.words));
    words.word(HEARTBEAT).store(process::monotonic_ms(), Ordering::Relaxed);
    let mut asked = false;
    std::thread::Builder::new().name("sgi-watcher".into()).spawn(move || loop {
        if timeout.is_some() {
            words.word(HEARTBEAT).store(process::monotonic_ms(), Ordering::Relaxed);
            words.word(OLDEST_REQUEST).store(in_flight.oldest(), Ordering::Relaxed);
        }
        if let Some(max) = max_rss.filter(|_| !asked) {
            if rss_bytes().is_some_and(|rss| rss > max) {
                asked = true;
                words.word(RECYCLE).store(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(every);
    })?;
    Ok(())
}

/// This process's resident memory, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}
