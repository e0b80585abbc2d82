//! [`Options`]: gunicorn's command line for any app built on this crate, from `main` in one call.
//!
//! The parsing is table-driven ([`SPECS`]): one row per option gives its name, its environment
//! variable, its default as `--help` shows it and what it means, so that the help, the
//! environment and the parser cannot disagree.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::ToSocketAddrs;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::access_log::AccessLog;
use crate::allow::AllowListError;
use crate::config::Config;
use crate::error::{BindError, Error};
use crate::handler::{BoxError, Handler};
use crate::logging::Level;
use crate::net::Listener;
use crate::reload;
use crate::runner::private::{App, Upgrader};
use crate::runner::{self, Runner};
use crate::server::{Server, DEFAULT_BACKLOG};
use crate::sys::unix::{activation, daemon, process, signal};

/// Exit status for a command line or environment that cannot be used (as gunicorn and most Unix
/// tools): the option is named in the message.
pub const USAGE_ERROR: u8 = 2;

/// Environment variable holding extra arguments, read before the command line's (gunicorn's
/// `GUNICORN_CMD_ARGS`). Split like a shell would: spaces separate, quotes group.
pub const CMD_ARGS_VAR: &str = "SGI_CMD_ARGS";

/// Set in a new master's environment, by the binary upgrade of the one that started it, to that
/// master's pid.
const UPGRADED_FROM_VAR: &str = "SGI_UPGRADED_FROM";

/// gunicorn's convention for the number of workers, honoured by hosting platforms.
const WEB_CONCURRENCY: &str = "WEB_CONCURRENCY";
/// gunicorn's variable for `--forwarded-allow-ips` (below `SGI_FORWARDED_ALLOW_IPS`).
const FORWARDED_ALLOW_IPS: &str = "FORWARDED_ALLOW_IPS";

/// The command line of a server binary: parses gunicorn's options (`--bind`, `--workers`,
/// `--daemon`, `--pidfile`, ...) from the command line, from `SGI_CMD_ARGS` and from one
/// `SGI_*` variable per option, over the app's own [`Config`]; then binds (or takes the sockets
/// systemd or a supervisor passed), detaches if asked, writes the pidfile, tells systemd when it
/// serves, and serves.
///
/// Precedence, lowest first: the crate's defaults, the app's [`Options::config`], the `SGI_*`
/// variables (and `WEB_CONCURRENCY` for `--workers`, `FORWARDED_ALLOW_IPS` for
/// `--forwarded-allow-ips`, below them), `SGI_CMD_ARGS`, the command line. A value
/// that cannot be used stops the program with status 2 and a message naming the option;
/// `--help` lists every option with its variable and default.
///
/// ```no_run
/// use std::process::ExitCode;
///
/// fn main() -> ExitCode {
///     let app = sgi::handler_fn(|_env, sr| Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body("hi\n")));
///     sgi::Options::from_env().serve(app)
/// }
/// ```
///
/// # Platform notes
/// Linux. `--daemon` forks, so it needs a single-threaded process (as the fork-based runners):
/// call [`Options::serve`] from `main` before anything spawns threads.
pub struct Options {
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    config: Config,
    defaults: Vec<String>,
    customize: Option<Box<dyn FnOnce(Server) -> Server>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options").field("program", &self.program).field("args", &self.args).finish_non_exhaustive()
    }
}

/// A command line or environment value that cannot be used: which option, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option}: {message}")]
pub struct OptionsError {
    option: String,
    message: String,
}

impl OptionsError {
    fn new(option: impl Into<String>, message: impl Into<String>) -> OptionsError {
        OptionsError { option: option.into(), message: message.into() }
    }

    /// The option (`--workers`) or variable (`SGI_WORKERS`) whose value is wrong.
    pub fn option(&self) -> &str {
        &self.option
    }
}

impl Options {
    /// The process's command line (`std::env::args`) and environment.
    pub fn from_env() -> Options {
        let mut args = std::env::args();
        let program = args.next().unwrap_or_else(|| "server".into());
        let env = std::env::vars()
            .filter(|(k, _)| k.starts_with("SGI_") || k == WEB_CONCURRENCY || k == FORWARDED_ALLOW_IPS)
            .collect();
        Options { program, args: args.collect(), env, config: Config::default(), defaults: Vec::new(), customize: None }
    }

    /// The given arguments (without the program's name) and no environment: for tests and for
    /// programs that build their command line themselves.
    ///
    /// ```
    /// let options = sgi::Options::new(["--bind", "127.0.0.1:0", "--workers", "2"]);
    /// assert!(options.check().is_ok());
    /// assert_eq!(sgi::Options::new(["--workers", "many"]).check().unwrap_err().option(), "--workers");
    /// ```
    pub fn new<I, S>(args: I) -> Options
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let args = args.into_iter().map(Into::into).collect();
        Options {
            program: "server".into(),
            args,
            env: BTreeMap::new(),
            config: Config::default(),
            defaults: Vec::new(),
            customize: None,
        }
    }

    /// Sets an environment variable as this parser sees it (`SGI_WORKERS`, `SGI_CMD_ARGS`,
    /// `WEB_CONCURRENCY`, `FORWARDED_ALLOW_IPS`), without touching the process's environment.
    pub fn env(mut self, name: &str, value: &str) -> Options {
        self.env.insert(name.into(), value.into());
        self
    }

    /// The app's own configuration: the options given override what they name, and leave the
    /// rest as the app set it. Default: [`Config::default`].
    pub fn config(mut self, config: Config) -> Options {
        self.config = config;
        self
    }

    /// The app's own defaults, as command-line arguments (`["--runner", "prefork"]`): below the
    /// variables and the command line, above the crate's defaults.
    ///
    /// ```
    /// let options = sgi::Options::new(["--workers", "x"]).default_args(["--runner", "prefork"]);
    /// assert_eq!(options.check().unwrap_err().option(), "--workers");
    /// ```
    pub fn default_args<I, S>(mut self, args: I) -> Options
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.defaults = args.into_iter().map(Into::into).collect();
        self
    }

    /// Lets the app finish the [`Server`] before it serves: add hooks
    /// ([`Server::on_worker_fork`], [`Server::on_worker_exit`]) or more listeners.
    pub fn server(mut self, customize: impl FnOnce(Server) -> Server + 'static) -> Options {
        self.customize = Some(Box::new(customize));
        self
    }

    /// Checks the options and the environment without binding or serving, as `--check-config`
    /// does.
    ///
    /// # Errors
    /// The first option whose value cannot be used.
    pub fn check(&self) -> Result<(), OptionsError> {
        let settings = Settings::parse(&self.defaults, &self.args, &self.env)?;
        settings.runner()?;
        settings.apply(self.config.clone())?;
        settings.check_binds()
    }

    /// Serves `handler` as the options say; returns the process's exit status: 0 after a
    /// graceful stop (and for `--help`, `--version`, a good `--check-config`), 2 for unusable
    /// options, 1 when serving failed (the reason, with its causes, on stderr).
    pub fn serve(self, handler: impl Handler) -> ExitCode {
        self.run(App::Handler(Box::new(handler)))
    }

    /// [`Options::serve`] for handlers made by `factory` ([`Server::serve_factory`]: once per
    /// worker under prefork).
    pub fn serve_factory<H, F>(self, factory: F) -> ExitCode
    where
        H: Handler,
        F: Fn() -> Result<H, BoxError> + Send + Sync + 'static,
    {
        self.run(App::Factory(Box::new(move || factory().map(|h| Box::new(h) as Box<dyn Handler>))))
    }

    fn run(self, app: App) -> ExitCode {
        let settings = match Settings::parse(&self.defaults, &self.args, &self.env) {
            Ok(settings) => settings,
            Err(e) => return usage_error(&e),
        };
        if settings.help {
            print!("{}", help_text(&self.program));
            return ExitCode::SUCCESS;
        }
        if settings.version {
            println!("{} (sgi {})", program_name(&self.program), env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        let checked = settings.runner().and_then(|r| Ok((r, settings.apply(self.config)?)));
        let (runner, config) = match checked {
            Ok(both) => both,
            Err(e) => return usage_error(&e),
        };
        if settings.reload && settings.daemon {
            return usage_error(&OptionsError::new("--reload", "is for development, not with --daemon"));
        }
        if settings.check_config {
            return match settings.check_binds() {
                Ok(()) => {
                    println!("configuration OK");
                    ExitCode::SUCCESS
                }
                Err(e) => usage_error(&e),
            };
        }
        let supervised = self.env.contains_key(reload::SUPERVISOR_VAR);
        if settings.reload && !supervised {
            let grace = config.graceful_timeout;
            return match supervise(&self.program, &settings, grace) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", with_causes(&*e));
                    ExitCode::FAILURE
                }
            };
        }
        // A child of `--reload`, or a new master started by a binary upgrade, is in the
        // directory already (a relative --chdir must not apply twice); the new master is
        // detached already, too.
        let upgraded = self.env.contains_key(UPGRADED_FROM_VAR);
        let settings = Settings {
            chdir: settings.chdir.clone().filter(|_| !supervised && !upgraded),
            daemon: settings.daemon && !upgraded,
            ..settings
        };
        match start(&self.program, &settings, runner, config, app, self.customize) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", with_causes(&*e));
                ExitCode::FAILURE
            }
        }
    }
}

/// One option: what `--help` says of it and how it is read.
struct Spec {
    /// Without the dashes: `bind`.
    long: &'static str,
    short: Option<char>,
    /// The value's placeholder in `--help`; `None` for a flag.
    value: Option<&'static str>,
    /// As `--help` shows it.
    default: &'static str,
    /// Given more than once, the values add up (`--bind`).
    repeatable: bool,
    help: &'static str,
}

const fn opt(long: &'static str, value: &'static str, default: &'static str, help: &'static str) -> Spec {
    Spec { long, short: None, value: Some(value), default, repeatable: false, help }
}

const fn flag(long: &'static str, help: &'static str) -> Spec {
    Spec { long, short: None, value: None, default: "off", repeatable: false, help }
}

const fn short(spec: Spec, c: char) -> Spec {
    Spec { short: Some(c), ..spec }
}

const fn repeatable(spec: Spec) -> Spec {
    Spec { repeatable: true, ..spec }
}

/// Every option, in the order `--help` lists them.
const SPECS: &[Spec] = &[
    repeatable(short(opt("bind", "ADDR", "127.0.0.1:8000", "listen on HOST:PORT, [::1]:PORT, unix:PATH or fd://N; repeat to listen on several (a socket passed by systemd or a supervisor for the same address is taken instead of binding)"), 'b')),
    short(opt("runner", "NAME", "pool", "how connections are scheduled: serial, threads, pool, fork, event or prefork"), 'k'),
    short(opt("workers", "N", "WEB_CONCURRENCY, else the runner's", "pool: threads; threads: live connections; fork: live children; event: loops; prefork: worker processes"), 'w'),
    opt("threads", "N", "the runner's", "event: handler threads besides the loops (0: handlers on the loops); prefork: pool threads in each worker"),
    short(opt("timeout", "SECONDS", "30", "prefork: the longest a request may run, or a worker go without a heartbeat, before the worker is killed and replaced (0: never)"), 't'),
    opt("graceful-timeout", "SECONDS", "30", "on a graceful stop or reload, how long requests in progress may take to finish"),
    opt("keep-alive", "SECONDS", "5", "how long an idle keep-alive connection is kept (0: close after each response)"),
    opt("max-requests", "N", "0", "prefork: recycle a worker after N requests (0: never)"),
    opt("max-requests-jitter", "N", "0", "prefork: add 0 to N requests to each worker's --max-requests"),
    opt("max-rss-mb", "MIB", "off", "prefork: recycle a worker whose resident memory passes MIB"),
    opt("max-connections", "N", "the runner's", "pool and event: most connections held at once"),
    opt("backlog", "N", "1024", "connections the kernel queues before they are accepted"),
    opt("limit-request-line", "BYTES", "8192", "longest request line (a longer one is refused with 414)"),
    opt("limit-request-fields", "N", "100", "most header fields in a request (more are refused with 431); at most 512"),
    opt("limit-request-field_size", "BYTES", "8192", "longest header field (a longer one is refused with 431)"),
    opt("limit-request-body", "BYTES", "10485760", "largest request body (a larger one is refused with 413; 0: no limit)"),
    short(flag("daemon", "detach: fork twice, start a new session, chdir to / (or --chdir), stdio to /dev/null or the log file; the command returns once the server serves"), 'D'),
    short(opt("pidfile", "PATH", "none", "write the server's pid to PATH, held with a lock so that a second instance is refused; removed on exit"), 'p'),
    opt("chdir", "DIR", "the current directory", "change to DIR before binding and loading the app"),
    opt("umask", "MASK", "the inherited one", "file mode creation mask (octal, as 022), set before binding (Unix socket files) and for the files the app writes"),
    flag("reload", "development: a supervisor holds the sockets and restarts the server when its executable (or a --reload-extra-file) changes; clients wait in the backlog meanwhile"),
    repeatable(opt("reload-extra-file", "PATH", "none", "with --reload: another file whose change restarts the server (repeatable)")),
    opt("error-logfile", "PATH", "-", "where the server's error log goes (-: stderr); appended to, reopened on USR1"),
    opt("access-logfile", "PATH", "none", "write an access log line per response to PATH (-: stdout); appended to, reopened on USR1"),
    opt("access-logformat", "FORMAT", r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#, "the access log's format, in gunicorn's codes (see the README's table)"),
    opt("forwarded-allow-ips", "LIST", "FORWARDED_ALLOW_IPS, else 127.0.0.1,::1,unix", "peers whose X-Forwarded-For and X-Forwarded-Proto are believed: addresses, networks (10.0.0.0/8), unix (Unix socket peers), * (anyone) or nothing"),
    flag("trust-forwarded-header", "also believe those peers' RFC 7239 Forwarded header (only behind a proxy that sets or strips it)"),
    flag("proxy-protocol", "every listener expects a PROXY protocol header (v1 or v2) before the first request of each connection"),
    opt("proxy-allow-from", "LIST", "127.0.0.1,::1,unix", "peers allowed to send a PROXY protocol header, in --forwarded-allow-ips' syntax"),
    flag("check-config", "check the options and exit: 0 if they can be used, 2 if not"),
    short(flag("version", "print the version and exit"), 'v'),
    short(flag("help", "print this help and exit"), 'h'),
];

/// The environment variable of an option: `SGI_` and its name in capitals, dashes as
/// underscores (`--max-requests` is `SGI_MAX_REQUESTS`).
fn env_name(long: &str) -> String {
    format!("SGI_{}", long.to_ascii_uppercase().replace('-', "_"))
}

fn spec(long: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.long == long)
}

/// Where a value came from, for messages and precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    AppDefaults,
    Env(String),
    CmdArgs,
    CommandLine,
}

/// The raw values, each with where it came from: the last source wins (a repeatable option's
/// values add up within one source).
#[derive(Debug, Default)]
struct Raw {
    values: BTreeMap<&'static str, (Source, Vec<String>)>,
}

impl Raw {
    fn set(&mut self, spec: &'static Spec, source: Source, value: String) {
        match self.values.get_mut(spec.long) {
            Some((was, values)) if spec.repeatable && *was == source => values.push(value),
            _ => {
                self.values.insert(spec.long, (source, vec![value]));
            }
        }
    }

    /// The option's name as its source spelled it: `--workers` or `SGI_WORKERS`.
    fn named(&self, long: &str) -> String {
        match self.values.get(long) {
            Some((Source::Env(var), _)) => var.clone(),
            Some((Source::CmdArgs, _)) => format!("--{long} (in {CMD_ARGS_VAR})"),
            Some((Source::AppDefaults, _)) => format!("--{long} (in the app's defaults)"),
            _ => format!("--{long}"),
        }
    }

    fn last(&self, long: &str) -> Option<&str> {
        self.values.get(long).and_then(|(_, v)| v.last()).map(String::as_str)
    }

    fn all(&self, long: &str) -> Vec<String> {
        self.values.get(long).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    fn flag(&self, long: &str) -> Result<bool, OptionsError> {
        match self.last(long) {
            None => Ok(false),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "" | "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(OptionsError::new(self.named(long), format!("expected true or false, got {v:?}"))),
            },
        }
    }

    fn number(&self, long: &str, min: u64, max: u64) -> Result<Option<u64>, OptionsError> {
        let Some(v) = self.last(long) else { return Ok(None) };
        let n: u64 = v
            .trim()
            .parse()
            .map_err(|_| OptionsError::new(self.named(long), format!("expected a whole number, got {v:?}")))?;
        if n < min || n > max {
            return Err(OptionsError::new(self.named(long), format!("{n} is out of range ({min} to {max})")));
        }
        Ok(Some(n))
    }

    fn seconds(&self, long: &str) -> Result<Option<Duration>, OptionsError> {
        Ok(self.number(long, 0, 365 * 24 * 3600)?.map(Duration::from_secs))
    }

    fn path(&self, long: &str) -> Result<Option<PathBuf>, OptionsError> {
        match self.last(long) {
            Some("") => Err(OptionsError::new(self.named(long), "expected a path, got nothing")),
            other => Ok(other.map(PathBuf::from)),
        }
    }
}

/// What a `--bind` names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bind {
    /// `host:port`, resolved when binding.
    Tcp(String),
    Unix(PathBuf),
    /// `fd://N`: a listening socket the process was started with.
    Fd(i32),
}

impl Bind {
    fn parse(spec: &str) -> Result<Bind, String> {
        if let Some(path) = spec.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return if path.is_empty() { Err("unix: needs a path".into()) } else { Ok(Bind::Unix(path.into())) };
        }
        if let Some(fd) = spec.strip_prefix("fd://") {
            return match fd.parse::<i32>() {
                Ok(n) if n >= 0 => Ok(Bind::Fd(n)),
                _ => Err(format!("fd://N needs a descriptor number, got {fd:?}")),
            };
        }
        let (host, port) = match spec.rsplit_once(':') {
            // `[::1]` alone, or `::1` unbracketed: not a port.
            Some((host, port)) if !port.contains(']') && (host.starts_with('[') || !host.contains(':')) => (host, port),
            _ => (spec, "8000"),
        };
        if host.is_empty() {
            return Err(format!("{spec:?} has no host (use 0.0.0.0:PORT or [::]:PORT for every address)"));
        }
        let port: u16 = port.parse().map_err(|_| format!("{spec:?}: the port must be a number up to 65535"))?;
        Ok(Bind::Tcp(format!("{host}:{port}")))
    }
}

/// The parsed options.
#[derive(Debug)]
struct Settings {
    raw: Raw,
    binds: Vec<Bind>,
    help: bool,
    version: bool,
    check_config: bool,
    daemon: bool,
    pidfile: Option<PathBuf>,
    chdir: Option<PathBuf>,
    umask: Option<u32>,
    error_logfile: Option<PathBuf>,
    /// `None` for standard output.
    access_logfile: Option<Option<PathBuf>>,
    proxy_protocol: bool,
    backlog: i32,
    reload: bool,
    reload_extra_files: Vec<PathBuf>,
}

impl Settings {
    fn parse(defaults: &[String], args: &[String], env: &BTreeMap<String, String>) -> Result<Settings, OptionsError> {
        let mut raw = Raw::default();
        read_args(defaults, Source::AppDefaults, &mut raw)?;
        if let Some(n) = env.get(WEB_CONCURRENCY) {
            raw.set(spec("workers").expect("a known option"), Source::Env(WEB_CONCURRENCY.into()), n.clone());
        }
        if let Some(list) = env.get(FORWARDED_ALLOW_IPS) {
            let spec = spec("forwarded-allow-ips").expect("a known option");
            raw.set(spec, Source::Env(FORWARDED_ALLOW_IPS.into()), list.clone());
        }
        for spec in SPECS {
            let var = env_name(spec.long);
            if let Some(value) = env.get(&var) {
                if spec.repeatable {
                    // `SGI_BIND=127.0.0.1:8000,unix:/run/app.sock`
                    for one in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
                        raw.set(spec, Source::Env(var.clone()), one.into());
                    }
                } else {
                    raw.set(spec, Source::Env(var.clone()), value.clone());
                }
            }
        }
        if let Some(extra) = env.get(CMD_ARGS_VAR) {
            let words = split_words(extra).map_err(|e| OptionsError::new(CMD_ARGS_VAR, e))?;
            read_args(&words, Source::CmdArgs, &mut raw)?;
        }
        read_args(args, Source::CommandLine, &mut raw)?;
        let binds = raw
            .all("bind")
            .iter()
            .map(|b| Bind::parse(b).map_err(|e| OptionsError::new(raw.named("bind"), e)))
            .collect::<Result<Vec<_>, _>>()?;
        let umask = match raw.last("umask") {
            None => None,
            Some(v) => {
                let digits = v.strip_prefix("0o").unwrap_or(v);
                match u32::from_str_radix(digits, 8) {
                    Ok(mask) if mask <= 0o777 => Some(mask),
                    _ => {
                        return Err(OptionsError::new(
                            raw.named("umask"),
                            format!("expected an octal mask such as 022, got {v:?}"),
                        ))
                    }
                }
            }
        };
        // Absolute now, relative to where the command started: a daemon changes to `/` before
        // it points stderr there, and a reopen after `USR1` must find the same file.
        let error_logfile = match raw.path("error-logfile")?.filter(|p| p.as_os_str() != "-") {
            Some(path) => {
                Some(absolute(&path).map_err(|e| OptionsError::new(raw.named("error-logfile"), e.to_string()))?)
            }
            None => None,
        };
        let access_logfile = match raw.path("access-logfile")? {
            Some(path) if path.as_os_str() == "-" => Some(None),
            Some(path) => {
                Some(Some(absolute(&path).map_err(|e| OptionsError::new(raw.named("access-logfile"), e.to_string()))?))
            }
            None => None,
        };
        if let Some(format) = raw.last("access-logformat") {
            AccessLog::check_format(format)
                .map_err(|e| OptionsError::new(raw.named("access-logformat"), e.to_string()))?;
        }
        Ok(Settings {
            binds,
            access_logfile,
            proxy_protocol: raw.flag("proxy-protocol")?,
            help: raw.flag("help")?,
            version: raw.flag("version")?,
            check_config: raw.flag("check-config")?,
            daemon: raw.flag("daemon")?,
            pidfile: raw.path("pidfile")?,
            chdir: raw.path("chdir")?,
            umask,
            error_logfile,
            reload: raw.flag("reload")?,
            reload_extra_files: raw.all("reload-extra-file").into_iter().map(PathBuf::from).collect(),
            backlog: raw.number("backlog", 1, i32::MAX as u64)?.map_or(DEFAULT_BACKLOG, |n| n as i32),
            raw,
        })
    }

    /// The runner the options name, with its knobs.
    fn runner(&self) -> Result<Box<dyn Runner>, OptionsError> {
        let raw = &self.raw;
        let name = raw.last("runner").unwrap_or("pool");
        if !runner::NAMES.contains(&name) {
            let known = runner::NAMES.join(", ");
            return Err(OptionsError::new(
                raw.named("runner"),
                format!("unknown runner {name:?} (expected one of: {known})"),
            ));
        }
        let workers = raw.number("workers", 1, 100_000)?.map(|n| n as usize);
        let threads = raw.number("threads", 0, 100_000)?.map(|n| n as usize);
        let max_connections = raw.number("max-connections", 1, 100_000_000)?.map(|n| n as usize);
        let only = |long: &str, runners: &[&str]| -> Result<(), OptionsError> {
            if raw.last(long).is_some() && !runners.contains(&name) {
                let message = format!(
                    "is for the {} runner{}, not {name}",
                    runners.join(" and "),
                    if runners.len() > 1 { "s" } else { "" }
                );
                return Err(OptionsError::new(raw.named(long), message));
            }
            Ok(())
        };
        only("threads", &["event", "prefork"])?;
        only("max-connections", &["pool", "event"])?;
        for long in ["timeout", "max-requests", "max-requests-jitter", "max-rss-mb"] {
            only(long, &["prefork"])?;
        }
        if name == "prefork" && threads == Some(0) {
            return Err(OptionsError::new(raw.named("threads"), "a prefork worker needs at least one thread"));
        }
        Ok(match name {
            "pool" => {
                let pool = runner::ThreadPool::new(workers.unwrap_or(runner::DEFAULT_WORKERS));
                Box::new(match max_connections {
                    Some(max) => pool.max_connections(max),
                    None => pool,
                })
            }
            "event" => {
                let loops = workers.map_or_else(runner::EventLoop::default, runner::EventLoop::new);
                let event = loops.threads(threads.unwrap_or(0));
                Box::new(match max_connections {
                    Some(max) => event.max_connections(max),
                    None => event,
                })
            }
            "prefork" => {
                let mut prefork = runner::Prefork::new(workers.unwrap_or(runner::DEFAULT_WORKERS))
                    .threads(threads.unwrap_or(runner::DEFAULT_PREFORK_THREADS));
                if let Some(timeout) = raw.seconds("timeout")? {
                    // gunicorn's meaning: 0 turns the timeout off.
                    prefork = prefork.timeout((!timeout.is_zero()).then_some(timeout));
                }
                let max_rss = raw.number("max-rss-mb", 1, 1 << 30)?.map(|mb| mb << 20);
                Box::new(
                    prefork
                        .max_requests(raw.number("max-requests", 0, u64::MAX)?.unwrap_or(0))
                        .max_requests_jitter(raw.number("max-requests-jitter", 0, u64::MAX >> 1)?.unwrap_or(0))
                        .max_rss(max_rss),
                )
            }
            other => {
                runner::by_name(other, workers.unwrap_or(runner::DEFAULT_WORKERS)).expect("a name from runner::NAMES")
            }
        })
    }

    /// The app's configuration with what the options set.
    fn apply(&self, mut config: Config) -> Result<Config, OptionsError> {
        let raw = &self.raw;
        if let Some(t) = raw.seconds("graceful-timeout")? {
            config = config.graceful_timeout(t);
        }
        if let Some(t) = raw.seconds("keep-alive")? {
            config =
                if t.is_zero() { config.max_requests_per_connection(1) } else { config.keepalive_timeout(Some(t)) };
        }
        if let Some(n) = raw.number("limit-request-line", 16, 1 << 20)? {
            config = config.max_request_line(n as usize);
        }
        if let Some(n) = raw.number("limit-request-fields", 1, crate::config::MAX_HEADERS_CEILING as u64)? {
            config = config.max_headers(n as usize);
        }
        if let Some(n) = raw.number("limit-request-field_size", 16, 1 << 20)? {
            config = config.max_header_field(n as usize);
        }
        if let Some(n) = raw.number("limit-request-body", 0, u64::MAX)? {
            config = config.max_body((n > 0).then_some(n));
        }
        if let Some(path) = &self.error_logfile {
            let log = log_file(path).map_err(|e| OptionsError::new(raw.named("error-logfile"), e))?;
            config = config.leveled_error_log(Arc::new(log));
        }
        if let Some(list) = raw.last("forwarded-allow-ips") {
            let list = list
                .parse()
                .map_err(|e: AllowListError| OptionsError::new(raw.named("forwarded-allow-ips"), e.to_string()))?;
            config = config.forwarded_allow_ips(list);
        }
        if raw.flag("trust-forwarded-header")? {
            config = config.trust_forwarded_header(true);
        }
        if let Some(list) = raw.last("proxy-allow-from") {
            let list = list
                .parse()
                .map_err(|e: AllowListError| OptionsError::new(raw.named("proxy-allow-from"), e.to_string()))?;
            config = config.proxy_allow_ips(list);
        }
        if let Some(target) = &self.access_logfile {
            let log = match target {
                None => AccessLog::to_stdout(),
                Some(path) => AccessLog::to_file(path).map_err(|e| {
                    OptionsError::new(raw.named("access-logfile"), format!("cannot open {}: {e}", path.display()))
                })?,
            };
            let format = raw.last("access-logformat").unwrap_or(crate::access_log::DEFAULT_ACCESS_LOG_FORMAT);
            let log =
                log.format(format).map_err(|e| OptionsError::new(raw.named("access-logformat"), e.to_string()))?;
            config = config.access_log(Some(log));
        }
        Ok(config)
    }

    /// `--chdir` and `--umask`, before anything is bound or opened.
    fn enter_directory_and_umask(&self) -> Result<(), BoxError> {
        if let Some(dir) = &self.chdir {
            std::env::set_current_dir(dir).map_err(|e| format!("cannot change to {}: {e}", dir.display()))?;
        }
        if let Some(mask) = self.umask {
            daemon::set_umask(mask);
        }
        Ok(())
    }

    /// Each TCP address resolves, each descriptor is a listening socket: what can be checked
    /// without binding.
    fn check_binds(&self) -> Result<(), OptionsError> {
        for bind in &self.binds {
            if let Bind::Tcp(addr) = bind {
                let resolved = addr.to_socket_addrs().map(|mut a| a.next().is_some());
                if !matches!(resolved, Ok(true)) {
                    return Err(OptionsError::new(self.raw.named("bind"), format!("{addr} does not resolve")));
                }
            }
        }
        Ok(())
    }
}

/// Reads `--name value`, `--name=value`, `-x value` and flags.
fn read_args(args: &[String], source: Source, raw: &mut Raw) -> Result<(), OptionsError> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (spec, inline) = if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (long, None),
            };
            let spec = spec(name).ok_or_else(|| OptionsError::new(arg.as_str(), "unknown option (see --help)"))?;
            (spec, inline)
        } else if let Some(c) = arg.strip_prefix('-').filter(|s| s.chars().count() == 1).and_then(|s| s.chars().next())
        {
            let spec = SPECS
                .iter()
                .find(|s| s.short == Some(c))
                .ok_or_else(|| OptionsError::new(arg.as_str(), "unknown option (see --help)"))?;
            (spec, None)
        } else {
            return Err(OptionsError::new(arg.as_str(), "unexpected argument (options start with --; see --help)"));
        };
        let value = match (spec.value, inline) {
            (None, None) => "true".to_string(),
            (None, Some(_)) => return Err(OptionsError::new(format!("--{}", spec.long), "takes no value")),
            (Some(_), Some(v)) => v,
            (Some(placeholder), None) => args.next().cloned().ok_or_else(|| {
                OptionsError::new(format!("--{}", spec.long), format!("needs a value ({placeholder})"))
            })?,
        };
        raw.set(spec, source.clone(), value);
    }
    Ok(())
}

/// Splits `SGI_CMD_ARGS` as a shell would: blanks separate words, single quotes keep
/// everything, double quotes keep all but `\"` and `\\`, a backslash outside quotes escapes
/// the next character.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("a backslash at the end".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

fn program_name(program: &str) -> &str {
    Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or(program)
}

/// `--help`: every option, its variable and its default.
fn help_text(program: &str) -> String {
    let mut text = format!(
        "usage: {} [OPTIONS]\n\nOptions (each also read from its variable; {CMD_ARGS_VAR} adds arguments before the command line's):\n",
        program_name(program)
    );
    for spec in SPECS {
        let short = spec.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let value = spec.value.map(|v| format!(" {v}")).unwrap_or_default();
        let _ = writeln!(text, "  {short}--{}{value}", spec.long);
        let _ = writeln!(text, "      {}", spec.help);
        let _ = writeln!(text, "      [{}; default: {}]", env_name(spec.long), spec.default);
    }
    text
}

fn usage_error(e: &OptionsError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(USAGE_ERROR)
}

/// `error: cannot bind 127.0.0.1:8000: Address already in use (os error 98)`.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let _ = write!(message, ": {e}");
        cause = e.source();
    }
    message
}

/// An error log appended to `path`, one line per message: `[2026-12-01 14:00:00 +0000] [pid]
/// [LEVEL] message`, gunicorn's layout. Reopened at its path on the first message after a `SIGUSR1`
/// (`logrotate` moved it away); if it cannot be, messages go on to the file already open.
fn log_file(path: &Path) -> Result<impl Fn(Level, &str) + Send + Sync + 'static, String> {
    let open = |path: &Path| std::fs::OpenOptions::new().create(true).append(true).open(path);
    let file = open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let path = path.to_owned();
    let state = Mutex::new((file, signal::log_generation()));
    Ok(move |level: Level, message: &str| {
        let (time, pid, level) = (crate::http::date::log_timestamp(), std::process::id(), level.name());
        let line = format!("[{time}] [{pid}] [{level}] {message}\n");
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = signal::log_generation();
        if state.1 != generation {
            state.1 = generation;
            if let Ok(reopened) = open(&path) {
                state.0 = reopened;
            }
        }
        // One write per line: with O_APPEND, processes sharing the file never interleave within it.
        let _ = state.0.write_all(line.as_bytes());
    })
}

/// The binary upgrade on `USR2` (nginx's sequence): the pidfile moves to `PIDFILE.oldbin`
/// (keeping its lock) and the program, as the file at its path is now, starts on the same
/// listeners, passed by systemd's protocol; it is not this master's to take down, so it does
/// not die with it.
struct Reexec {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Open for as long as the master serves: the listeners are its.
    fds: Vec<RawFd>,
    pidfile: Option<Arc<Mutex<daemon::Pidfile>>>,
    /// Where the pidfile was before the upgrade moved it.
    moved_from: Option<PathBuf>,
}

impl Reexec {
    fn new(listeners: &[Listener], pidfile: Option<Arc<Mutex<daemon::Pidfile>>>) -> std::io::Result<Reexec> {
        use std::os::unix::ffi::OsStrExt;
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| std::io::Error::other("a NUL byte in an argument or variable"))
        };
        // Resolved now, before anything replaces the file: that path is where the new code goes.
        let program = cstring(std::env::current_exe()?.as_os_str().as_bytes())?;
        let argv = std::env::args_os().map(|a| cstring(a.as_bytes())).collect::<std::io::Result<_>>()?;
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            let name = key.as_bytes();
            if name.starts_with(b"LISTEN_") || name == UPGRADED_FROM_VAR.as_bytes() {
                continue;
            }
            env.push(cstring(&[name, b"=", value.as_bytes()].concat())?);
        }
        env.push(cstring(format!("{UPGRADED_FROM_VAR}={}", std::process::id()).as_bytes())?);
        let fds = listeners.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        Ok(Reexec { program, argv, env, fds, pidfile, moved_from: None })
    }
}

impl Upgrader for Reexec {
    fn start(&mut self) -> std::io::Result<libc::pid_t> {
        if let Some(pidfile) = &self.pidfile {
            let mut pidfile = pidfile.lock().unwrap_or_else(|e| e.into_inner());
            let path = pidfile.path().to_owned();
            let mut old = path.clone().into_os_string();
            old.push(".oldbin");
            pidfile.rename(Path::new(&old))?;
            self.moved_from = Some(path);
        }
        let started = process::spawn_with_listeners(&self.program, &self.argv, &self.env, &self.fds, false);
        if started.is_err() {
            self.abandon();
        }
        started
    }

    fn abandon(&mut self) {
        let (Some(pidfile), Some(path)) = (&self.pidfile, self.moved_from.take()) else { return };
        // Over whatever the new master, now gone, may have left there.
        let _ = pidfile.lock().unwrap_or_else(|e| e.into_inner()).rename(&path);
    }
}

/// `--reload`: binds (or takes the inherited sockets), then supervises a child that serves
/// them and restarts it on a change.
fn supervise(program: &str, settings: &Settings, grace: Duration) -> Result<(), BoxError> {
    settings.enter_directory_and_umask()?;
    let listeners = listeners(settings)?;
    let addresses: Vec<String> = listeners.iter().map(url).collect();
    eprintln!("{}: reloading on changes, for {}", program_name(program), addresses.join(", "));
    let extra = settings.reload_extra_files.iter().map(|p| absolute(p)).collect::<std::io::Result<Vec<_>>>()?;
    Ok(reload::supervise(listeners, extra, grace)?)
}

/// Everything after the options are known good: chdir, umask, sockets, pidfile, detaching,
/// serving.
fn start(
    program: &str,
    settings: &Settings,
    runner: Box<dyn Runner>,
    config: Config,
    app: App,
    customize: Option<Box<dyn FnOnce(Server) -> Server>>,
) -> Result<(), BoxError> {
    settings.enter_directory_and_umask()?;
    if settings.daemon {
        let threads = process::thread_count()?;
        if threads > 1 {
            return Err(Error::NotSingleThreaded(threads).into());
        }
    }
    // Locked first, and before detaching: a second instance is refused on the terminal it was
    // started from, before it tries the first one's addresses; the daemon inherits the lock.
    let pidfile = match &settings.pidfile {
        Some(path) => Some(Arc::new(Mutex::new(daemon::Pidfile::lock(&absolute(path)?)?))),
        None => None,
    };
    let listeners = listeners(settings)?;
    let addresses: Vec<String> = listeners.iter().map(url).collect();
    // On stdout, before a daemon leaves the terminal: what tests and scripts wait for.
    println!("{}: serving on {} with the {} runner", program_name(program), addresses.join(", "), runner.name());
    let detached = if settings.daemon { Some(Arc::new(Mutex::new(daemon::daemonize()?))) } else { None };
    let serve = || -> Result<(), BoxError> {
        if settings.daemon {
            if settings.chdir.is_none() {
                std::env::set_current_dir("/")?;
            }
            daemon::redirect_stdio(None, settings.error_logfile.as_deref())?;
        }
        if let Some(pidfile) = &pidfile {
            pidfile.lock().unwrap_or_else(|e| e.into_inner()).write_pid(std::process::id())?;
        }
        let upgrade = (runner.name() == "prefork").then(|| Reexec::new(&listeners, pidfile.clone())).transpose()?;
        // USR1 reopens the log files (the prefork master forwards it to its workers).
        signal::handle_reopen_signal()?;
        let mut server =
            Server::from_listeners(listeners)?.config(config).runner(runner).proxy_protocol(settings.proxy_protocol);
        if let Some(upgrade) = upgrade {
            server = server.upgrader(Box::new(upgrade));
        }
        if let Some(customize) = customize {
            server = customize(server);
        }
        let to_parent = detached.clone();
        server = server.on_ready(move || {
            if let Some(detached) = to_parent {
                detached.lock().unwrap_or_else(|e| e.into_inner()).ready();
            }
            if let Err(e) = activation::notify(&format!("READY=1\nMAINPID={}", std::process::id())) {
                eprintln!("warning: cannot notify systemd: {e}");
            }
        });
        let served = server.serve_app(app);
        let _ = activation::notify("STOPPING=1");
        Ok(served?)
    };
    let served = serve();
    if let (Err(e), Some(detached)) = (&served, &detached) {
        // The command that started the daemon reports the reason, if it still waits (the
        // daemon failed before it served).
        detached.lock().unwrap_or_else(|e| e.into_inner()).fail(&with_causes(&**e));
    }
    drop(pidfile);
    served
}

fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

/// The listeners the binds name: a socket the process inherited (systemd's `LISTEN_FDS`, or
/// `fd://N`) for the same address first, a new one otherwise; with no `--bind`, every inherited
/// socket, or 127.0.0.1:8000 when there is none.
fn listeners(settings: &Settings) -> crate::Result<Vec<Listener>> {
    let mut inherited: Vec<Option<activation::Inherited>> =
        activation::take_listen_fds()?.into_iter().map(Some).collect();
    if settings.binds.is_empty() && !inherited.is_empty() {
        return Ok(inherited.into_iter().flatten().map(|i| i.listener).collect());
    }
    let default = [Bind::Tcp("127.0.0.1:8000".into())];
    let binds = if settings.binds.is_empty() { &default[..] } else { &settings.binds[..] };
    let mut listeners = Vec::new();
    for bind in binds {
        let taken = inherited.iter_mut().find(|i| i.as_ref().is_some_and(|i| serves(&i.listener, bind)));
        if let Some(taken) = taken.and_then(Option::take) {
            listeners.push(taken.listener);
            continue;
        }
        listeners.push(match bind {
            Bind::Tcp(addr) => {
                let mut server = Server::bind_with_backlog(addr.as_str(), settings.backlog)?;
                server.take_listeners().remove(0)
            }
            Bind::Unix(path) => {
                // Absolute, so that the file is found again to be removed after a daemon's chdir.
                let path = absolute(path)?;
                Listener::bind_unix(&path)
                    .map_err(|source| BindError::error(format!("unix:{}", path.display()), source))?
            }
            Bind::Fd(fd) => {
                activation::listener_from_fd(*fd).map_err(|source| BindError::error(format!("fd://{fd}"), source))?
            }
        });
    }
    for unused in inherited.into_iter().flatten() {
        let named = unused.name.map(|n| format!(" named {n:?}")).unwrap_or_default();
        eprintln!("warning: an inherited socket{named} ({}) matches no --bind: closed", describe(&unused.listener));
    }
    Ok(listeners)
}

/// Whether an inherited socket is the one `bind` asks for.
fn serves(listener: &Listener, bind: &Bind) -> bool {
    use std::os::fd::AsRawFd;
    match (listener, bind) {
        (Listener::Tcp(l), Bind::Tcp(addr)) => {
            let Ok(local) = l.local_addr() else { return false };
            addr.to_socket_addrs().is_ok_and(|mut all| all.any(|a| a == local))
        }
        (Listener::Unix(l, _), Bind::Unix(path)) => {
            let local = l.local_addr().ok();
            let local = local.as_ref().and_then(|a| a.as_pathname());
            match (local, absolute(path)) {
                (Some(local), Ok(wanted)) => absolute(local).is_ok_and(|l| l == wanted),
                _ => false,
            }
        }
        (l, Bind::Fd(fd)) => l.as_raw_fd() == *fd,
        _ => false,
    }
}

/// `http://127.0.0.1:8000/`, `http://[::1]:8000/` or `unix:/run/app.sock`.
fn url(listener: &Listener) -> String {
    match listener {
        Listener::Tcp(l) => l.local_addr().map_or_else(|_| "tcp".into(), |a| format!("http://{a}/")),
        Listener::Unix(..) => describe(listener),
    }
}

fn describe(listener: &Listener) -> String {
    match listener {
        Listener::Tcp(l) => l.local_addr().map_or_else(|_| "tcp".into(), |a| a.to_string()),
        Listener::Unix(l, _) => l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
            .unwrap_or_else(|| "unix".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, OptionsError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::parse(&[], &args, &env)
    }

    fn error(args: &[&str], env: &[(&str, &str)]) -> OptionsError {
        let checked = parse(args, env).and_then(|s| {
            s.runner()?;
            s.apply(Config::default())?;
            Ok(())
        });
        checked.expect_err("refused")
    }

    #[test]
    fn binds_take_every_form_and_add_up() {
        let s = parse(
            &["--bind", "127.0.0.1:80", "-b", "[::1]:81", "--bind=unix:/tmp/x.sock", "-b", "fd://3", "-b", "localhost"],
            &[],
        )
        .unwrap();
        assert_eq!(
            s.binds,
            vec![
                Bind::Tcp("127.0.0.1:80".into()),
                Bind::Tcp("[::1]:81".into()),
                Bind::Unix("/tmp/x.sock".into()),
                Bind::Fd(3),
                Bind::Tcp("localhost:8000".into())
            ]
        );
        for bad in ["127.0.0.1:http", "unix:", "fd://x", ":80", "127.0.0.1:70000"] {
            assert_eq!(parse(&["--bind", bad], &[]).unwrap_err().option(), "--bind", "{bad}");
        }
    }

    #[test]
    fn the_command_line_overrides_cmd_args_which_override_the_variables() {
        let env = [("SGI_WORKERS", "3"), ("WEB_CONCURRENCY", "2"), ("SGI_CMD_ARGS", "--workers 5 --runner 'event'")];
        let s = parse(&[], &env).unwrap();
        assert_eq!(s.raw.last("workers"), Some("5"));
        assert_eq!(s.raw.last("runner"), Some("event"));
        let s = parse(&["-w", "7"], &env).unwrap();
        assert_eq!(s.raw.last("workers"), Some("7"));
        let s = parse(&[], &[("SGI_WORKERS", "3"), ("WEB_CONCURRENCY", "2")]).unwrap();
        assert_eq!(s.raw.last("workers"), Some("3"), "SGI_WORKERS over WEB_CONCURRENCY");
        let s = parse(&[], &[("WEB_CONCURRENCY", "2")]).unwrap();
        assert_eq!(s.raw.last("workers"), Some("2"));
        let s = parse(&[], &[("FORWARDED_ALLOW_IPS", "10.0.0.0/8")]).unwrap();
        assert_eq!(s.raw.last("forwarded-allow-ips"), Some("10.0.0.0/8"), "gunicorn's variable");
        let s = parse(&[], &[("SGI_FORWARDED_ALLOW_IPS", "*"), ("FORWARDED_ALLOW_IPS", "10.0.0.0/8")]).unwrap();
        assert_eq!(s.raw.last("forwarded-allow-ips"), Some("*"), "SGI_FORWARDED_ALLOW_IPS over it");
        // A later source's binds replace an earlier one's; one source's add up.
        let s = parse(&["-b", "127.0.0.1:2", "-b", "127.0.0.1:3"], &[("SGI_BIND", "127.0.0.1:1,unix:/tmp/a")]).unwrap();
        assert_eq!(s.binds, vec![Bind::Tcp("127.0.0.1:2".into()), Bind::Tcp("127.0.0.1:3".into())]);
        let s = parse(&[], &[("SGI_BIND", "127.0.0.1:1,unix:/tmp/a")]).unwrap();
        assert_eq!(s.binds.len(), 2);
    }

    #[test]
    fn every_bad_value_names_its_option() {
        /// Arguments, environment, the option the error names.
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            (&["--workers", "x"], &[], "--workers"),
            (&["--workers", "0"], &[], "--workers"),
            (&[], &[("WEB_CONCURRENCY", "lots")], "WEB_CONCURRENCY"),
            (&[], &[("SGI_TIMEOUT", "-1"), ("SGI_RUNNER", "prefork")], "SGI_TIMEOUT"),
            (&[], &[("SGI_CMD_ARGS", "--threads=x --runner event")], "--threads (in SGI_CMD_ARGS)"),
            (&[], &[("SGI_CMD_ARGS", "--bind 'unterminated")], "SGI_CMD_ARGS"),
            (&["--runner", "gevent"], &[], "--runner"),
            (&["--threads", "2"], &[], "--threads"),
            (&["--timeout", "5"], &[], "--timeout"),
            (&["--max-requests", "5", "--runner", "event"], &[], "--max-requests"),
            (&["--max-connections", "5", "--runner", "serial"], &[], "--max-connections"),
            (&["--runner", "prefork", "--threads", "0"], &[], "--threads"),
            (&["--keep-alive", "soon"], &[], "--keep-alive"),
            (&["--graceful-timeout", "1.5"], &[], "--graceful-timeout"),
            (&["--limit-request-line", "1"], &[], "--limit-request-line"),
            (&["--limit-request-fields", "100000"], &[], "--limit-request-fields"),
            (&["--limit-request-field_size", "big"], &[], "--limit-request-field_size"),
            (&["--limit-request-body", "-5"], &[], "--limit-request-body"),
            (&["--backlog", "0"], &[], "--backlog"),
            (&["--umask", "999"], &[], "--umask"),
            (&["--pidfile="], &[], "--pidfile"),
            (&["--error-logfile", "/nonexistent-dir/x.log"], &[], "--error-logfile"),
            (&["--access-logfile", "/nonexistent-dir/x.log"], &[], "--access-logfile"),
            (&["--access-logformat", "%(h)s %(nope)s"], &[], "--access-logformat"),
            (&["--forwarded-allow-ips", "10.0.0.1/8"], &[], "--forwarded-allow-ips"),
            (&[], &[("SGI_PROXY_ALLOW_FROM", "not-an-ip")], "SGI_PROXY_ALLOW_FROM"),
            (&["--proxy-protocol=on"], &[], "--proxy-protocol"),
            (&["--daemon=yes"], &[], "--daemon"),
            (&[], &[("SGI_DAEMON", "maybe")], "SGI_DAEMON"),
            (&["--frobnicate"], &[], "--frobnicate"),
            (&["-x"], &[], "-x"),
            (&["serve"], &[], "serve"),
            (&["--workers"], &[], "--workers"),
        ];
        for (args, env, option) in cases {
            let e = error(args, env);
            assert_eq!(e.option(), *option, "{args:?} {env:?}: {e}");
        }
    }

    #[test]
    fn options_reach_the_runner_and_the_config() {
        let s = parse(&["--runner", "prefork", "-w", "3", "--threads", "2", "-t", "0", "--max-requests", "9"], &[])
            .unwrap();
        let runner = s.runner().unwrap();
        assert_eq!(runner.name(), "prefork");
        let debug = format!("{:?}", runner.flags());
        assert!(debug.contains("multiprocess: true"), "{debug}");
        let s = parse(
            &[
                "--keep-alive",
                "0",
                "--limit-request-body",
                "0",
                "--limit-request-fields",
                "20",
                "--graceful-timeout",
                "3",
            ],
            &[],
        )
        .unwrap();
        let config = s.apply(Config::default().max_body(Some(5))).unwrap();
        assert_eq!(config.get_max_body(), None);
        assert_eq!(config.max_requests_per_connection, 1);
        assert_eq!(config.max_headers, 20);
        assert_eq!(config.graceful_timeout, Duration::from_secs(3));
        // What the options do not name stays as the app set it.
        let s = parse(&[], &[]).unwrap();
        assert_eq!(s.apply(Config::default().max_body(Some(5))).unwrap().get_max_body(), Some(5));
        let s = parse(&["--umask", "0o27"], &[("SGI_DAEMON", "0")]).unwrap();
        assert_eq!(s.umask, Some(0o27));
        assert!(!s.daemon);
        assert!(parse(&["-D"], &[("SGI_DAEMON", "0")]).unwrap().daemon, "the command line wins");
        assert!(parse(&[], &[("SGI_DAEMON", "yes")]).unwrap().daemon);
    }

    #[test]
    fn words_split_as_a_shell_would() {
        assert_eq!(split_words(r#" -b 'a b'  --x="c \" d" e\ f "#).unwrap(), ["-b", "a b", "--x=c \" d", "e f"]);
        assert_eq!(split_words("''").unwrap(), [""]);
        assert!(split_words("'a").is_err());
        assert!(split_words("a\\").is_err());
    }

    #[test]
    fn the_help_lists_every_option_with_its_variable_and_default() {
        let help = help_text("/usr/bin/app");
        assert!(help.starts_with("usage: app [OPTIONS]"));
        for spec in SPECS {
            assert!(help.contains(&format!("--{}", spec.long)), "{}", spec.long);
            assert!(help.contains(&format!("[{}; default: {}]", env_name(spec.long), spec.default)), "{}", spec.long);
        }
        assert_eq!(env_name("limit-request-field_size"), "SGI_LIMIT_REQUEST_FIELD_SIZE");
    }
}
