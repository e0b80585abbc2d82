//! Runners: how connections are scheduled. Every runner pumps the same connection state machine,
//! so they differ in concurrency only, never in how HTTP is parsed, framed or timed out.
//!
//! All of them share one accept policy: when `accept` fails for want of descriptors or memory
//! (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`), accepting pauses, 10 ms at first and doubling up to
//! 1 s while it keeps failing, with the listener out of the poll set and clients waiting in the
//! backlog, while reading, timeouts, closes and stops go on; one log line when a pause begins and
//! one when accepting works again. Retrying at once would spin without ever getting back to the
//! connections whose closing frees the descriptors.

mod arbiter;
mod event;
mod fork;
mod pool;
mod prefork;
mod queue;
mod serial;
mod threaded;

pub use event::EventLoop;
pub use fork::{Forking, DEFAULT_MAX_CHILDREN};
pub use pool::{ThreadPool, DEFAULT_MAX_CONNECTIONS, DEFAULT_WORKERS};
pub use prefork::{Prefork, DEFAULT_PREFORK_THREADS, DEFAULT_PREFORK_TIMEOUT};
pub use serial::Serial;
pub use threaded::Threaded;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::conn::ServeContext;
use crate::environ::RunnerFlags;
use crate::error::{Error, Result};
use crate::logging::Level;
use crate::net::{Listeners, Local, Stream};
use crate::sys::unix::{self, WakePipe};

/// The names [`by_name`] knows, in the order the documentation presents them.
pub const NAMES: &[&str] = crate::error::RUNNER_NAMES;

/// A way of scheduling connections, given to [`Server::runner`](crate::Server::runner).
///
/// Sealed: the runners are the ones this crate ships, each with its knobs on its own struct.
/// Pick one by type, or by name with [`by_name`].
pub trait Runner: private::Sealed + Send + 'static {
    /// The runner's name, as [`by_name`] takes it.
    fn name(&self) -> &'static str;

    /// The `wsgi.multithread` / `wsgi.multiprocess` / `wsgi.run_once` flags this runner gives
    /// every request.
    fn flags(&self) -> RunnerFlags;

    #[doc(hidden)]
    fn run(self: Box<Self>, server: private::Serving) -> Result<()>;
}

impl Runner for Box<dyn Runner> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn flags(&self) -> RunnerFlags {
        (**self).flags()
    }
    fn run(self: Box<Self>, server: private::Serving) -> Result<()> {
        (*self).run(server)
    }
}

impl private::Sealed for Box<dyn Runner> {}

/// Makes a runner from its name, for `--runner NAME` command lines. `workers` is the runner's
/// concurrency knob: pool threads for `pool`, event loops for `event`, the maximum of live
/// connections for `threads`, of live children for `fork` and of worker processes for
/// `prefork` (each a pool of [`DEFAULT_PREFORK_THREADS`] threads); `serial` ignores it.
///
/// # Errors
/// [`Error::UnknownRunner`] for a name not in [`NAMES`].
///
/// ```
/// let runner = sgi::runner::by_name("serial", 1)?;
/// assert_eq!(runner.name(), "serial");
/// assert!(sgi::runner::by_name("nope", 1).is_err());
/// # Ok::<(), sgi::Error>(())
/// ```
pub fn by_name(name: &str, workers: usize) -> Result<Box<dyn Runner>> {
    match name {
        "serial" => Ok(Box::new(Serial)),
        "threads" => Ok(Box::new(Threaded::new(workers))),
        "pool" => Ok(Box::new(ThreadPool::new(workers))),
        "fork" => Ok(Box::new(Forking::new(workers))),
        "event" => Ok(Box::new(EventLoop::new(workers))),
        "prefork" => Ok(Box::new(Prefork::new(workers))),
        other => Err(Error::UnknownRunner(other.into())),
    }
}

/// The first pause after running out of descriptors or memory; it doubles while `accept` keeps
/// failing, up to [`MAX_ACCEPT_PAUSE`].
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(10);
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// Whether the accept loop may accept now. When `accept` fails for want of descriptors or
/// memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) retrying at once would spin without ever
/// getting back to the connections that hold them, so accepting pauses (the listener leaves the
/// poll set, clients wait in the backlog) while everything else goes on: reading, timeouts,
/// closes and stops. One log line when a pause begins, one when accepting works again.
#[derive(Debug)]
pub(crate) struct AcceptGate {
    resume_at: Option<Instant>,
    pause: Duration,
    /// When the current run of failures began, if one is under way.
    failing_since: Option<Instant>,
}

impl Default for AcceptGate {
    fn default() -> AcceptGate {
        AcceptGate { resume_at: None, pause: FIRST_ACCEPT_PAUSE, failing_since: None }
    }
}

impl AcceptGate {
    /// When a pause ends, if one is under way.
    pub(crate) fn resume_at(&self) -> Option<Instant> {
        self.resume_at
    }

    /// Whether accepting is allowed at `now`.
    pub(crate) fn is_open(&mut self, now: Instant) -> bool {
        match self.resume_at {
            Some(t) if now < t => false,
            Some(_) => {
                self.resume_at = None;
                true
            }
            None => true,
        }
    }

    /// `accept` succeeded.
    pub(crate) fn accepted(&mut self, ctx: &ServeContext) {
        if let Some(since) = self.failing_since.take() {
            ctx.config.log(Level::Info, &format!("accepting connections again after {:.1?}", since.elapsed()));
        }
        self.pause = FIRST_ACCEPT_PAUSE;
    }

    /// `accept` failed with `e`: transient errors are skipped, running out of descriptors or
    /// memory pauses accepting, anything else ends `serve` with the error.
    pub(crate) fn failed(&mut self, ctx: &ServeContext, e: io::Error) -> Result<()> {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::Interrupted
            | ErrorKind::WouldBlock
            | ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset => Ok(()),
            _ if e.raw_os_error() == Some(libc::EPROTO) => Ok(()),
            _ if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                let now = Instant::now();
                if self.failing_since.is_none() {
                    self.failing_since = Some(now);
                    ctx.config.log(
                        Level::Error,
                        &format!("cannot accept connections: {e}; pausing accepts until some close"),
                    );
                }
                self.resume_at = Some(now + self.pause);
                self.pause = (self.pause * 2).min(MAX_ACCEPT_PAUSE);
                Ok(())
            }
            _ => Err(Error::Io(e)),
        }
    }
}

/// The accept loop of the runners that wait with `poll(2)` (serial, threads, fork): waits for
/// the listener, the stop pipe and the runner's own `wake_pipe` (a connection or child ended);
/// calls `on_wake` after each wait, stops accepting while `at_cap` says so or the gate is
/// closed, and hands every accepted connection to `serve`. Returns when a stop is requested.
pub(crate) fn accept_loop(
    listeners: &Listeners,
    ctx: &ServeContext,
    wake_pipe: Option<&WakePipe>,
    mut at_cap: impl FnMut() -> bool,
    mut on_wake: impl FnMut(),
    mut serve: impl FnMut(Stream, Option<SocketAddr>, &Local),
) -> Result<()> {
    let mut gate = AcceptGate::default();
    let mut fds = Vec::with_capacity(2 + listeners.len());
    loop {
        let now = Instant::now();
        let listening = !at_cap() && gate.is_open(now);
        fds.clear();
        fds.push(ctx.shutdown.wake_fd());
        fds.extend(wake_pipe.map(WakePipe::read_fd));
        let first_listener = fds.len();
        if listening {
            fds.extend(listeners.fds());
        }
        let timeout = gate.resume_at().map(|t| t.saturating_duration_since(now));
        let ready = unix::wait_readable(&fds, timeout)?;
        if let Some(pipe) = wake_pipe {
            pipe.drain();
        }
        on_wake();
        if ctx.shutdown.is_requested() {
            return Ok(());
        }
        let Some(index) = ready.and_then(|i| i.checked_sub(first_listener)) else { continue };
        match listeners.accept(index) {
            Ok((stream, peer, local)) => {
                gate.accepted(ctx);
                serve(stream, peer, local);
            }
            Err(e) => gate.failed(ctx, e)?,
        }
    }
}

pub(crate) mod private {
    use std::sync::Arc;

    use crate::config::Config;
    use crate::conn::ServeContext;
    use crate::environ::RunnerFlags;
    use crate::error::{Error, Result};
    use crate::handler::{BoxError, Handler};
    use crate::net::Listeners;
    use crate::shutdown::ShutdownHandle;

    pub trait Sealed {}

    /// Makes the handler: called once by most runners, once per worker by prefork.
    pub(crate) type Factory = Box<dyn Fn() -> Result<Box<dyn Handler>, BoxError> + Send + Sync>;

    /// A hook the app gives [`Server::on_worker_fork`](crate::Server::on_worker_fork) or
    /// [`Server::on_worker_exit`](crate::Server::on_worker_exit).
    pub(crate) type Hook = Arc<dyn Fn() + Send + Sync>;

    /// Called once the server serves ([`Server::on_ready`](crate::Server::on_ready)).
    pub(crate) type ReadyHook = Box<dyn FnOnce() + Send>;

    /// How a prefork master re-executes its program on `USR2` (the options layer knows the
    /// program, its arguments and the pidfile).
    pub(crate) trait Upgrader: Send {
        /// Starts the new master on the same listeners; returns its pid.
        fn start(&mut self) -> std::io::Result<libc::pid_t>;
        /// The new master exited: put back what `start` moved (the pidfile).
        fn abandon(&mut self);
    }

    /// What a prefork worker runs of the app's besides its handler.
    #[derive(Clone, Default)]
    pub(crate) struct WorkerHooks {
        /// In the worker, right after the fork, before the factory.
        pub(crate) after_fork: Option<Hook>,
        /// In the worker, once it stops serving, before it exits.
        pub(crate) before_exit: Option<Hook>,
    }

    /// The application: a handler, or a factory that makes one.
    pub(crate) enum App {
        Handler(Box<dyn Handler>),
        Factory(Factory),
    }

    /// Everything a runner needs to serve: the listeners, the configuration, and the app.
    pub struct Serving {
        pub(crate) listeners: Listeners,
        pub(crate) config: Arc<Config>,
        pub(crate) flags: RunnerFlags,
        pub(crate) shutdown: ShutdownHandle,
        pub(crate) app: App,
        pub(crate) hooks: WorkerHooks,
        /// Taken and called once the runner serves: by [`Serving::start`], or by the prefork
        /// master once its first workers serve.
        pub(crate) ready: Option<ReadyHook>,
        /// For the prefork master's binary upgrade (`USR2`).
        pub(crate) upgrade: Option<Box<dyn Upgrader>>,
    }

    impl Serving {
        /// The listeners and the connection context, the handler made if a factory was given.
        ///
        /// # Errors
        /// [`Error::Factory`] if the factory failed.
        pub(crate) fn start(self) -> Result<(Listeners, Arc<ServeContext>)> {
            let handler = match self.app {
                App::Handler(h) => h,
                App::Factory(make) => make().map_err(Error::Factory)?,
            };
            if let Some(ready) = self.ready {
                ready();
            }
            let ctx = ServeContext { config: self.config, handler, flags: self.flags, shutdown: self.shutdown };
            Ok((self.listeners, Arc::new(ctx)))
        }
    }

    impl std::fmt::Debug for Serving {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Serving").field("listeners", &self.listeners).finish_non_exhaustive()
        }
    }
}
