//! The fork-per-connection runner.

use std::cell::RefCell;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use super::private::{Sealed, Serving};
use super::Runner;
use crate::conn::serve_connection;
use crate::environ::RunnerFlags;
use crate::error::{Error, Result};
use crate::logging::Level;
use crate::sys::unix::{self, process, signal, WakePipe};

/// Default for [`Forking::new`]'s maximum of live children.
pub const DEFAULT_MAX_CHILDREN: usize = 256;

/// Exit code of a child whose connection code panicked outside the handler (a bug, logged).
const CHILD_PANICKED: i32 = 70;

/// One child process per connection, at most `max_children` at a time.
///
/// The parent accepts, forks, closes its copy of the connection and goes back to accepting; the
/// child closes the listener, serves the connection (keep-alive included) and leaves with
/// `_exit`. Children are reaped on SIGCHLD with `waitpid(-1, WNOHANG)`; at the maximum the parent
/// stops accepting until one exits. `wsgi.multiprocess` is true: each child has its own copy of
/// the handler's state, and nothing a request changes in memory survives it, which is also the
/// strongest isolation there is (a crash or leak ends with its connection).
///
/// On shutdown the parent stops accepting; idle children close, busy ones finish their request;
/// after [`Config::graceful_timeout`](crate::Config::graceful_timeout) the rest are killed with
/// SIGKILL, and every child is reaped before `serve` returns.
///
/// # Platform notes
/// `fork` is only sound in a single-threaded process: a lock held by another thread at the
/// moment of the fork stays held forever in the child. [`Server::serve`](crate::Server::serve)
/// with this runner checks the thread count (from `/proc/self/status`) and refuses with
/// [`Error::NotSingleThreaded`] if the process has more than one thread, so start it from
/// `main` before anything spawns threads (loggers, pools, async runtimes), and not from a test
/// harness thread. Signals are blocked across `fork` and the child resets its SIGCHLD handler
/// before unblocking them.
#[derive(Debug, Clone, Copy)]
pub struct Forking {
    max_children: usize,
}

impl Forking {
    /// A runner keeping at most `max_children` children alive (at least 1).
    pub fn new(max_children: usize) -> Forking {
        Forking { max_children: max_children.max(1) }
    }
}

impl Default for Forking {
    fn default() -> Forking {
        Forking::new(DEFAULT_MAX_CHILDREN)
    }
}

impl Sealed for Forking {}

impl Runner for Forking {
    fn name(&self) -> &'static str {
        "fork"
    }

    fn flags(&self) -> RunnerFlags {
        RunnerFlags { multiprocess: true, ..RunnerFlags::default() }
    }

    fn run(self: Box<Self>, server: Serving) -> Result<()> {
        let threads = process::thread_count()?;
        if threads > 1 {
            return Err(Error::NotSingleThreaded(threads));
        }
        let (listeners, ctx) = server.start()?;
        let exited = WakePipe::new()?;
        signal::handle_child_signal(exited.write_fd())?;
        // Shared by the accept loop's three callbacks, one at a time.
        let children = RefCell::new(HashSet::new());
        let reap = |children: &mut HashSet<libc::pid_t>| {
            process::reap(|exit| {
                if children.remove(&exit.pid) && exit.code() != 0 {
                    ctx.config.log(Level::Warn, &format!("child {} exited with status {}", exit.pid, exit.code()));
                }
            })
        };
        let at_cap = || children.borrow().len() >= self.max_children;
        let on_wake = || reap(&mut children.borrow_mut());
        super::accept_loop(&listeners, &ctx, Some(&exited), at_cap, on_wake, |stream, peer, local| {
            match process::fork(signal::reset_in_child) {
                Ok(process::Forked::Child) => {
                    // The child never returns from here: owners of these descriptors never drop
                    // (so neither is a Unix socket file removed).
                    for fd in listeners.fds() {
                        unix::close_in_child(fd);
                    }
                    unix::close_in_child(exited.read_fd());
                    unix::close_in_child(exited.write_fd());
                    ctx.shutdown.mark_forked_child();
                    let served = catch_unwind(AssertUnwindSafe(|| serve_connection(stream, peer, local, &ctx)));
                    process::exit_now(if served.is_ok() { 0 } else { CHILD_PANICKED });
                }
                Ok(process::Forked::Parent { child }) => {
                    children.borrow_mut().insert(child);
                    drop(stream);
                }
                Err(e) => {
                    ctx.config.log(Level::Error, &format!("fork failed: {e}"));
                    drop(stream);
                }
            }
        })?;
        let mut children = children.into_inner();
        // Graceful stop: children see the shutdown pipe; wait for them, then kill the rest.
        drop(listeners);
        let deadline = Instant::now() + ctx.config.graceful_timeout;
        loop {
            reap(&mut children);
            if children.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                ctx.config.log(Level::Warn, &format!("graceful timeout: killing {} child(ren)", children.len()));
                for &pid in &children {
                    process::kill(pid, libc::SIGKILL);
                }
                while !children.is_empty() {
                    process::wait_for(&mut children);
                }
                break;
            }
            unix::wait_readable(&[exited.read_fd()], Some(left))?;
            exited.drain();
        }
        signal::restore_child_signal();
        Ok(())
    }
}
