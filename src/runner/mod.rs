//! Runners: how connections are scheduled. Every runner hands its connections to the same
//! connection driver, so they differ in concurrency only, never in how HTTP is parsed or written.

mod fork;
mod pool;
mod serial;
mod threaded;

pub use fork::{Forking, DEFAULT_MAX_CHILDREN};
pub use pool::{ThreadPool, DEFAULT_MAX_CONNECTIONS, DEFAULT_WORKERS};
pub use serial::Serial;
pub use threaded::Threaded;

use crate::environ::RunnerFlags;
use crate::error::{Error, Result};

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
/// concurrency knob: pool threads for `pool`, the maximum of live connections for `threads` and of
/// live children for `fork`; `serial` ignores it.
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
        other => Err(Error::UnknownRunner(other.into())),
    }
}

/// Decides what an `accept` error means for the accept loop: transient ones are skipped, running
/// out of descriptors or memory backs off for a moment (the backlog holds the clients meanwhile),
/// anything else ends `serve` with the error.
pub(crate) fn accept_error(ctx: &crate::conn::ServeContext, e: std::io::Error) -> Result<()> {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset => {
            Ok(())
        }
        _ if matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EPROTO)
        ) =>
        {
            ctx.config.log(&format!("accept failed, backing off: {e}"));
            std::thread::sleep(std::time::Duration::from_millis(100));
            Ok(())
        }
        _ => Err(Error::Io(e)),
    }
}

pub(crate) mod private {
    use std::sync::Arc;

    use crate::conn::ServeContext;
    use crate::net::Listener;

    pub trait Sealed {}

    /// Everything a runner needs to serve: the listener and the shared connection context.
    pub struct Serving {
        pub(crate) listener: Listener,
        pub(crate) ctx: Arc<ServeContext>,
    }

    impl std::fmt::Debug for Serving {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Serving").field("listener", &self.listener).finish_non_exhaustive()
        }
    }
}
