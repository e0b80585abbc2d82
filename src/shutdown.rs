//! [`ShutdownHandle`]: asks a running server to stop, from any thread (or a signal handler).

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::sys::unix::{self, signal};

/// Asks a [`Server`](crate::Server) to stop: it stops accepting, lets the request in progress
/// finish, closes idle keep-alive connections and returns from `serve`.
///
/// Cheap to clone and `Send + Sync`. Triggering it writes one byte to a pipe that every waiting
/// runner polls, so nothing sleeps or polls on a timer, and no self-connection is made. The pipe
/// is never drained: once triggered, it stays readable for every waiter.
///
/// ```no_run
/// # fn main() -> Result<(), sgi::Error> {
/// let server = sgi::Server::bind("127.0.0.1:8000")?;
/// let stop = server.shutdown_handle();
/// std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_secs(60));
///     stop.shutdown();
/// });
/// server.serve(sgi::handler_fn(|_env, sr| Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body("bye"))))?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ShutdownHandle {
    inner: Arc<Inner>,
}

struct Inner {
    requested: AtomicBool,
    /// Whether SIGTERM / SIGINT are routed to this handle.
    signals: AtomicBool,
    /// Set in a forked child, whose copy of `requested` the parent never updates: there, the
    /// pipe itself is the truth.
    forked: AtomicBool,
    wake_read: OwnedFd,
    wake_write: OwnedFd,
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle").field("requested", &self.is_requested()).finish()
    }
}

impl ShutdownHandle {
    pub(crate) fn new() -> io::Result<ShutdownHandle> {
        let (wake_read, wake_write) = unix::pipe()?;
        Ok(ShutdownHandle {
            inner: Arc::new(Inner {
                requested: AtomicBool::new(false),
                signals: AtomicBool::new(false),
                forked: AtomicBool::new(false),
                wake_read,
                wake_write,
            }),
        })
    }

    /// Requests the shutdown. Idempotent.
    pub fn shutdown(&self) {
        if !self.inner.requested.swap(true, Ordering::SeqCst) {
            unix::write_byte(&self.inner.wake_write);
        }
    }

    /// Whether a shutdown was requested (through this handle, or by SIGTERM / SIGINT when the
    /// server handles signals).
    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
            || self.inner.signals.load(Ordering::Relaxed) && signal::stop_requested()
            || self.inner.forked.load(Ordering::Relaxed)
                && matches!(unix::wait_readable(&[self.wake_fd()], Some(std::time::Duration::ZERO)), Ok(Some(0)))
    }

    /// In a forked child: from now on, ask the shared pipe whether the parent is stopping.
    pub(crate) fn mark_forked_child(&self) {
        self.inner.forked.store(true, Ordering::SeqCst);
    }

    /// Routes SIGTERM and SIGINT to this handle until the guard is dropped.
    pub(crate) fn handle_signals(&self) -> io::Result<SignalGuard> {
        signal::handle_stop_signals(self.inner.wake_write.as_raw_fd())?;
        self.inner.signals.store(true, Ordering::SeqCst);
        Ok(SignalGuard { handle: self.clone() })
    }

    /// A descriptor that becomes readable, and stays so, once a shutdown is requested.
    /// Both ends of the wake pipe, for a forked worker to close (it gets a handle of its own).
    pub(crate) fn pipe_fds(&self) -> [RawFd; 2] {
        [self.inner.wake_read.as_raw_fd(), self.inner.wake_write.as_raw_fd()]
    }

    pub(crate) fn wake_fd(&self) -> RawFd {
        self.inner.wake_read.as_raw_fd()
    }
}

/// Gives SIGTERM and SIGINT their default actions back when dropped.
pub(crate) struct SignalGuard {
    handle: ShutdownHandle,
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        signal::restore_stop_signals();
        self.handle.inner.signals.store(false, Ordering::SeqCst);
    }
}
