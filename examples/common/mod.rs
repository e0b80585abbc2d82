//! Command-line options every example takes: `--bind ADDR`, `--runner NAME` and the runner's knobs.

use std::process::exit;

/// Parsed options.
pub struct Options {
    pub bind: String,
    pub runner: Box<dyn sgi::runner::Runner>,
    /// `--keep-alive SECONDS`: the keep-alive idle timeout, when given.
    pub keep_alive: Option<std::time::Duration>,
}

/// Parses `--bind ADDR --runner NAME --workers N --threads M --timeout SECONDS --max-requests N
/// --max-requests-jitter N --max-rss-mb N --max-connections N --keep-alive SECONDS` (defaults: 127.0.0.1:8000, pool, 4 (event: one loop per CPU), the runner's own, the
/// runner's cap, the library's timeout); exits with a usage message on anything else.
pub fn options(example: &str) -> Options {
    let mut bind = "127.0.0.1:8000".to_string();
    // The prefork example exists to show the prefork runner; the others default to the pool.
    let mut runner = if example == "prefork" { "prefork" } else { "pool" }.to_string();
    let mut workers = None;
    let mut threads = None;
    let mut timeout = None;
    let mut max_requests = None;
    let mut max_requests_jitter = None;
    let mut max_rss_mb: Option<u64> = None;
    let mut max_connections = None;
    let mut keep_alive = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| usage(example, &format!("{name} needs a value")));
        match arg.as_str() {
            "--bind" => bind = value("--bind"),
            "--runner" => runner = value("--runner"),
            "--workers" => {
                let n = value("--workers").parse().unwrap_or_else(|_| usage(example, "--workers takes a number"));
                workers = Some(n);
            }
            "--threads" => {
                let n = value("--threads").parse().unwrap_or_else(|_| usage(example, "--threads takes a number"));
                threads = Some(n);
            }
            "--timeout" => {
                let s: u64 = value("--timeout").parse().unwrap_or_else(|_| usage(example, "--timeout takes seconds"));
                timeout = Some(s);
            }
            "--max-requests" => {
                let n =
                    value("--max-requests").parse().unwrap_or_else(|_| usage(example, "--max-requests takes a number"));
                max_requests = Some(n);
            }
            "--max-requests-jitter" => {
                let n = value("--max-requests-jitter")
                    .parse()
                    .unwrap_or_else(|_| usage(example, "--max-requests-jitter takes a number"));
                max_requests_jitter = Some(n);
            }
            "--max-rss-mb" => {
                let n = value("--max-rss-mb").parse().unwrap_or_else(|_| usage(example, "--max-rss-mb takes a number"));
                max_rss_mb = Some(n);
            }
            "--max-connections" => {
                let n = value("--max-connections")
                    .parse()
                    .unwrap_or_else(|_| usage(example, "--max-connections takes a number"));
                max_connections = Some(n);
            }
            "--keep-alive" => {
                let s: u64 =
                    value("--keep-alive").parse().unwrap_or_else(|_| usage(example, "--keep-alive takes seconds"));
                keep_alive = Some(std::time::Duration::from_secs(s));
            }
            "-h" | "--help" => usage(example, ""),
            other => usage(example, &format!("unknown argument {other:?}")),
        }
    }
    let workers_or_default = workers.unwrap_or(4);
    let prefork_only =
        timeout.is_some() || max_requests.is_some() || max_requests_jitter.is_some() || max_rss_mb.is_some();
    if prefork_only && runner != "prefork" {
        usage(example, "--timeout, --max-requests, --max-requests-jitter and --max-rss-mb are for the prefork runner");
    }
    let runner: Box<dyn sgi::runner::Runner> = match (runner.as_str(), threads, max_connections) {
        ("pool", None, Some(max)) => Box::new(sgi::runner::ThreadPool::new(workers_or_default).max_connections(max)),
        ("event", threads, max) => {
            let loops = workers.map_or_else(sgi::runner::EventLoop::default, sgi::runner::EventLoop::new);
            let mut event = loops.threads(threads.unwrap_or(0));
            if let Some(max) = max {
                event = event.max_connections(max);
            }
            Box::new(event)
        }
        ("prefork", threads, None) => {
            let mut prefork = sgi::runner::Prefork::new(workers_or_default)
                .threads(threads.unwrap_or(sgi::runner::DEFAULT_PREFORK_THREADS));
            if let Some(seconds) = timeout {
                // gunicorn's meaning: 0 turns the timeout off.
                prefork = prefork.timeout((seconds > 0).then(|| std::time::Duration::from_secs(seconds)));
            }
            prefork = prefork
                .max_requests(max_requests.unwrap_or(0))
                .max_requests_jitter(max_requests_jitter.unwrap_or(0))
                .max_rss(max_rss_mb.map(|mb| mb << 20));
            Box::new(prefork)
        }
        (_, Some(_), _) => usage(example, "--threads is for the event and prefork runners"),
        (_, _, Some(_)) => usage(example, "--max-connections is for the pool and event runners"),
        _ => sgi::runner::by_name(&runner, workers_or_default).unwrap_or_else(|e| usage(example, &e.to_string())),
    };
    Options { bind, runner, keep_alive }
}

fn usage(example: &str, problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!(
        "usage: cargo run --release --example {example} -- [--bind ADDR] [--runner NAME] [--workers N] \
         [--threads M] [--timeout SECONDS] [--max-requests N] [--max-requests-jitter N] \
         [--max-rss-mb N] [--max-connections N] [--keep-alive SECONDS]\n  runners: {}",
        sgi::runner::NAMES.join(", ")
    );
    exit(if problem.is_empty() { 0 } else { 2 })
}

/// Binds, prints the URL, and serves `handler` until the process is stopped.
#[allow(dead_code)]
pub fn serve(example: &str, handler: impl sgi::Handler) {
    serve_with(example, sgi::Config::default(), handler);
}

/// [`serve`] with a configuration of the example's choosing.
pub fn serve_with(example: &str, config: sgi::Config, handler: impl sgi::Handler) {
    let (server, config) = prepare(example, config);
    if let Err(e) = server.config(config).serve(handler) {
        fail(&e);
    }
}

/// [`serve_with`] for handlers made by `factory`, once per worker under prefork.
#[allow(dead_code)]
pub fn serve_factory<H: sgi::Handler>(
    example: &str,
    config: sgi::Config,
    factory: impl Fn() -> Result<H, sgi::BoxError> + Send + Sync + 'static,
) {
    let (server, config) = prepare(example, config);
    if let Err(e) = server.config(config).serve_factory(factory) {
        fail(&e);
    }
}

/// Parses the options, raises the descriptor limit, binds and prints the URL.
pub fn prepare(example: &str, config: sgi::Config) -> (sgi::Server, sgi::Config) {
    let options = options(example);
    // One descriptor per connection: take all the process may have.
    if let Err(e) = sgi::raise_fd_limit() {
        eprintln!("warning: cannot raise the descriptor limit: {e}");
    }
    let server = sgi::Server::listen(&options.bind).unwrap_or_else(|e| fail(&e));
    let url = match server.local_addr() {
        Ok(addr) => format!("http://{addr}/"),
        Err(_) => options.bind.clone(),
    };
    println!("{example}: serving on {url} with the {} runner", options.runner.name());
    let config = match options.keep_alive {
        Some(t) => config.keepalive_timeout(Some(t)),
        None => config,
    };
    (server.runner(options.runner), config)
}

/// Prints an error with every cause under it (`error: cannot bind 127.0.0.1:8000: Address
/// already in use (os error 98)`), then exits with status 1.
pub fn fail(error: &dyn std::error::Error) -> ! {
    let mut message = format!("error: {error}");
    let mut cause = error.source();
    while let Some(e) = cause {
        message.push_str(&format!(": {e}"));
        cause = e.source();
    }
    eprintln!("{message}");
    exit(1)
}
