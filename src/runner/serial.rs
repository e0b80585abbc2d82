//! The serial runner: one connection at a time, on the calling thread.

use super::private::{Sealed, Serving};
use super::Runner;
use crate::conn::serve_connection;
use crate::environ::RunnerFlags;
use crate::error::Result;

/// Serves one connection at a time on the thread that calls `serve`: PEP 3333's single-threaded
/// mode, for handlers that are not thread-safe in spirit and for debugging.
///
/// A second client waits in the listen backlog until the first connection ends, so the
/// keep-alive idle timeout ([`Config::keepalive_timeout`](crate::Config::keepalive_timeout))
/// bounds how long one idle client can hold the whole server, and the header deadline bounds a
/// slow one.
///
/// ```no_run
/// # fn main() -> Result<(), sgi::Error> {
/// sgi::Server::bind("127.0.0.1:8000")?
///     .runner(sgi::runner::Serial)
///     .serve(sgi::handler_fn(|_env, sr| Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body("hi"))))
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Serial;

impl Sealed for Serial {}

impl Runner for Serial {
    fn name(&self) -> &'static str {
        "serial"
    }

    fn flags(&self) -> RunnerFlags {
        RunnerFlags::default()
    }

    fn run(self: Box<Self>, server: Serving) -> Result<()> {
        let (listeners, ctx) = server.start()?;
        let serve = |stream, peer, local: &_| serve_connection(stream, peer, local, &ctx);
        super::accept_loop(&listeners, &ctx, None, || false, || {}, serve)
    }
}
