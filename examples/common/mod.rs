//! What every example does in `main`: gunicorn's command line through [`sgi::Options`]
//! (`--bind`, `--runner`, `--workers`, `--daemon`, ...; `--help` lists them), with the
//! descriptor limit raised first.

use std::process::ExitCode;

/// The options every example starts from: the process's command line and environment, after
/// raising the descriptor limit (one descriptor per connection: take all the process may have).
pub fn options() -> sgi::Options {
    if let Err(e) = sgi::raise_fd_limit() {
        eprintln!("warning: cannot raise the descriptor limit: {e}");
    }
    sgi::Options::from_env()
}

/// Serves `handler` as the command line says.
#[allow(dead_code)]
pub fn serve(handler: impl sgi::Handler) -> ExitCode {
    options().serve(handler)
}
