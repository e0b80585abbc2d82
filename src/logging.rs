//! Where the server's own messages go: a sink the application chose ([`Config::error_log`]), else
//! the `log` facade when a logger is installed (cargo feature `log`, on by default), else
//! standard error. A server that has something to say about a failure never says it to nobody.
//!
//! [`Config::error_log`]: crate::Config::error_log

use std::fmt;
use std::sync::Arc;

/// How much a message matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// Something failed: a handler, a worker, a system call the server needs.
    Error,
    /// Something went wrong that the server worked around: a stalled write, a body shorter than
    /// its `Content-Length`, a socket it had to close.
    Warn,
    /// What a busy server does all day: refused requests, workers started and stopped.
    Info,
}

impl Level {
    /// The name gunicorn's log lines carry.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARNING",
            Level::Info => "INFO",
        }
    }
}

/// What a message is about, as a `log` target: `sgi::conn` for one connection (the message
/// names its peer), `sgi::server` for the server as a whole (runners, workers, the master),
/// `sgi::access` for access log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Conn,
    Server,
    Access,
}

impl Target {
    #[cfg_attr(not(feature = "log"), allow(dead_code))]
    fn name(self) -> &'static str {
        match self {
            Target::Conn => "sgi::conn",
            Target::Server => "sgi::server",
            Target::Access => "sgi::access",
        }
    }
}

/// A sink that hears each message's level, for the options layer's log file.
pub(crate) type LeveledLog = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// The sink of a [`crate::Config`].
#[derive(Clone, Default)]
pub(crate) enum Sink {
    /// The `log` facade if a logger is installed, else standard error.
    #[default]
    Default,
    /// The application's ([`crate::Config::error_log`]): every message, its level left out.
    Plain(crate::config::ErrorLog),
    /// Every message with its level.
    Leveled(LeveledLog),
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sink::Default => "Default",
            Sink::Plain(_) => "Plain",
            Sink::Leveled(_) => "Leveled",
        })
    }
}

impl Sink {
    pub(crate) fn emit(&self, level: Level, target: Target, message: &str) {
        match self {
            Sink::Plain(f) => f(message),
            Sink::Leveled(f) => f(level, message),
            Sink::Default => {
                if !to_facade(level, target, message) {
                    eprintln!("[sgi] {message}");
                }
            }
        }
    }
}

/// Gives an access log line to the `log` facade (info, `sgi::access`), or to standard error when
/// no logger listens.
pub(crate) fn access_line(line: &str) {
    if !to_facade(Level::Info, Target::Access, line) {
        eprintln!("{line}");
    }
}

/// Gives `message` to the `log` facade, if a logger listens at all; `false` if none does (no
/// logger installed leaves the maximum level at `Off`), so the caller writes it elsewhere.
#[cfg(feature = "log")]
fn to_facade(level: Level, target: Target, message: &str) -> bool {
    if log::max_level() == log::LevelFilter::Off {
        return false;
    }
    let level = match level {
        Level::Error => log::Level::Error,
        Level::Warn => log::Level::Warn,
        Level::Info => log::Level::Info,
    };
    log::log!(target: target.name(), level, "{message}");
    true
}

#[cfg(not(feature = "log"))]
fn to_facade(_: Level, _: Target, _: &str) -> bool {
    false
}

#[cfg(all(test, feature = "log"))]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static SEEN: Mutex<Vec<(log::Level, String, String)>> = Mutex::new(Vec::new());

    struct Recorder;

    impl log::Log for Recorder {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            let entry = (record.level(), record.target().to_owned(), record.args().to_string());
            SEEN.lock().unwrap().push(entry);
        }
        fn flush(&self) {}
    }

    #[test]
    fn messages_reach_an_installed_logger_with_their_level_and_target() {
        // Before a logger: nobody listens, so the default sink must write elsewhere.
        assert!(!to_facade(Level::Error, Target::Conn, "before"));
        log::set_logger(&Recorder).unwrap();
        log::set_max_level(log::LevelFilter::Info);
        Sink::Default.emit(Level::Error, Target::Conn, "127.0.0.1:5: GET /: handler panicked: boom");
        Sink::Default.emit(Level::Info, Target::Server, "worker 7 booted");
        // Other tests of this binary log through the same logger now: only these two are ours.
        let seen: Vec<_> =
            SEEN.lock().unwrap().iter().filter(|e| e.2.contains("boom") || e.2.contains("worker 7")).cloned().collect();
        assert_eq!(
            seen,
            [
                (log::Level::Error, "sgi::conn".into(), "127.0.0.1:5: GET /: handler panicked: boom".into()),
                (log::Level::Info, "sgi::server".into(), "worker 7 booted".into()),
            ]
        );
    }
}
