//! The thread-per-connection runner.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::private::{Sealed, Serving};
use super::Runner;
use crate::conn::serve_connection;
use crate::environ::RunnerFlags;
use crate::error::Result;
use crate::logging::Level;
use crate::sys::unix::{self, WakePipe};

/// One thread per connection, at most `max_connections` at a time.
///
/// At the maximum the runner stops accepting until a connection ends: new clients wait in the
/// listen backlog (backpressure), no thread is spawned beyond the bound. Each thread blocks on
/// its own client, so a slow client costs one thread and never delays the others; an idle
/// keep-alive connection holds its thread until
/// [`Config::keepalive_timeout`](crate::Config::keepalive_timeout).
///
/// ```no_run
/// # fn main() -> Result<(), sgi::Error> {
/// sgi::Server::bind("127.0.0.1:8000")?
///     .runner(sgi::runner::Threaded::new(256))
///     .serve(sgi::handler_fn(|_env, sr| Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body("hi"))))
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Threaded {
    max_connections: usize,
}

impl Threaded {
    /// A runner serving at most `max_connections` connections at once (at least 1).
    pub fn new(max_connections: usize) -> Threaded {
        Threaded { max_connections: max_connections.max(1) }
    }
}

impl Default for Threaded {
    fn default() -> Threaded {
        Threaded::new(super::DEFAULT_MAX_CONNECTIONS)
    }
}

impl Sealed for Threaded {}

/// Counts a connection thread out when it ends, panic or not.
struct Slot {
    live: Arc<AtomicUsize>,
    freed: Arc<WakePipe>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.freed.notify();
    }
}

impl Runner for Threaded {
    fn name(&self) -> &'static str {
        "threads"
    }

    fn flags(&self) -> RunnerFlags {
        RunnerFlags { multithread: true, ..RunnerFlags::default() }
    }

    fn run(self: Box<Self>, server: Serving) -> Result<()> {
        let (listeners, ctx) = server.start()?;
        let live = Arc::new(AtomicUsize::new(0));
        let freed = Arc::new(WakePipe::new()?);
        let at_cap = || live.load(Ordering::SeqCst) >= self.max_connections;
        super::accept_loop(
            &listeners,
            &ctx,
            Some(&freed),
            at_cap,
            || {},
            |stream, peer, local| {
                live.fetch_add(1, Ordering::SeqCst);
                let slot = Slot { live: Arc::clone(&live), freed: Arc::clone(&freed) };
                let conn_ctx = Arc::clone(&ctx);
                let local = local.clone();
                let spawned = std::thread::Builder::new().name("sgi-conn".into()).spawn(move || {
                    let _slot = slot;
                    serve_connection(stream, peer, &local, &conn_ctx);
                });
                if let Err(e) = spawned {
                    ctx.config.log(Level::Error, &format!("cannot start a connection thread: {e}"));
                }
            },
        )?;
        // Graceful stop: no more accepting; idle connections saw the shutdown pipe and close;
        // requests in progress get until the grace period ends.
        drop(listeners);
        let deadline = Instant::now() + ctx.config.graceful_timeout;
        while live.load(Ordering::SeqCst) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let n = live.load(Ordering::SeqCst);
                ctx.config.log(Level::Warn, &format!("graceful timeout: abandoning {n} connection(s)"));
                break;
            }
            unix::wait_readable(&[freed.read_fd()], Some(left))?;
            freed.drain();
        }
        Ok(())
    }
}
