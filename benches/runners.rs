//! Every runner on the same handlers: `examples/bench_app` is started once per runner and
//! workload, each in its own process, and loaded from `SGI_BENCH_CLIENTS` (32) client threads
//! speaking raw HTTP/1.1 over blocking sockets.
//!
//! cargo bench --bench runners [-- FILTER --warm-up-time S --measurement-time S]
//!
//! Workloads (criterion groups), each with one benchmark per name in `sgi::runner::NAMES`, and
//! `event_offload` (the event runner with `--threads`, as many offload threads as the pool has
//! workers):
//! - `hello_keepalive`: `GET /hello` on keep-alive connections;
//! - `hello_close`: `GET /hello` with `Connection: close`, a new connection per request (the
//!   client reads to EOF, so the server closes first and keeps the TIME_WAIT);
//! - `cpu_50us`: `GET /cpu`, about 50 µs of CPU work per request, keep-alive;
//! - `io_5ms`: `GET /io`, a 5 ms sleep per request, keep-alive.
//!
//! One criterion iteration is one request (throughput is in requests/s). A batch of `iters`
//! requests is shared out dynamically among the clients (each takes the next request when its
//! last one is answered), and the batch's wall-clock time is the measurement. A keep-alive client
//! opens its connection at its first request of a batch and closes it at the batch's end: a
//! runner that holds a connection for its whole life (serial, a fixed pool of threads) would
//! otherwise keep clients waiting in the backlog until a keep-alive timeout, so runners are
//! compared on what they do with the connections they get, and the batch's tail shows how long
//! the last ones waited.
//!
//! Environment:
//! - `SGI_BENCH_CLIENTS` (32): concurrent clients;
//! - `SGI_BENCH_WORKERS`: `--workers` for the runners (the example's default, 4, when unset);
//! - `SGI_BENCH_RUNNERS`: comma-separated subset of the benchmark names (`sgi::runner::NAMES`
//!   and `event_offload`);
//! - `SGI_BENCH_SERVER_CPUS`: a `taskset -c` CPU list to pin the servers to (unpinned when unset);
//! - `SGI_BENCH_NO_BUILD=1`: do not run `cargo build --release --example bench_app` first.
//!
//! Servers are killed (their descendants too, for process-based runners) when their benchmark
//! ends, on panic as well, and get SIGTERM if the bench process dies without cleaning up. A
//! benchmark whose requests failed is reported on stderr and makes the run exit with status 1
//! once every benchmark ran.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};

/// How long a client waits for a response (or a connect) before counting the request as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Failed requests in one batch after which the batch is cut short.
const MAX_ERRORS_PER_BATCH: u64 = 100;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    KeepAlive,
    Close,
}

struct Workload {
    group: &'static str,
    path: &'static str,
    mode: Mode,
}

const WORKLOADS: &[Workload] = &[
    Workload { group: "hello_keepalive", path: "/hello", mode: Mode::KeepAlive },
    Workload { group: "hello_close", path: "/hello", mode: Mode::Close },
    Workload { group: "cpu_50us", path: "/cpu", mode: Mode::KeepAlive },
    Workload { group: "io_5ms", path: "/io", mode: Mode::KeepAlive },
];

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

// ---- the server process ---------------------------------------------------------------------

/// Builds `examples/bench_app` (release) and returns its path, next to this bench's binary:
/// `target/release/deps/runners-HASH` -> `target/release/examples/bench_app`.
fn bench_app() -> PathBuf {
    if env_var("SGI_BENCH_NO_BUILD").as_deref() != Some("1") {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--example", "bench_app", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .stdout(Stdio::null())
            .status()
            .expect("run cargo build for examples/bench_app");
        assert!(status.success(), "cargo build --release --example bench_app failed: {status}");
    }
    let exe = std::env::current_exe().expect("bench executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("bench binary in target/PROFILE/deps");
    let app = profile_dir.join("examples").join("bench_app");
    assert!(app.is_file(), "{} not found (build it: cargo build --release --example bench_app)", app.display());
    app
}

/// A running `bench_app`; dropping it stops the process and everything it forked.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `app` with the arguments that select a runner (see [`runner_args`]).
    fn start(app: &Path, runner_args: &[String]) -> Server {
        let mut command = match env_var("SGI_BENCH_SERVER_CPUS") {
            // taskset execs the server, so the child's pid is the server's.
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpus]).arg(app);
                c
            }
            None => Command::new(app),
        };
        command.args(["--bind", "127.0.0.1:0"]).args(runner_args);
        // If this bench dies without running its destructors (killed by a signal, `timeout`), the
        // server gets SIGTERM, which sgi turns into a graceful stop (fork's children included).
        let bench_pid = std::process::id();
        // SAFETY: between fork and exec only async-signal-safe calls are made: prctl, getppid,
        // kill and getpid, none of which allocates or takes a lock.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                if u32::try_from(libc::getppid()).ok() != Some(bench_pid) {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
                Ok(())
            });
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", app.display()));
        // The example prints "bench_app: serving on http://ADDR/ with the NAME runner" once bound;
        // the rest of its stdout is drained so that it never blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let first = rx.recv_timeout(Duration::from_secs(10));
        let mut server = Server { child, addr: "127.0.0.1:0".parse().expect("addr") };
        let line = match first {
            Ok(Some(Ok(line))) => line,
            other => {
                let deadline = Instant::now() + Duration::from_secs(1);
                let mut status = server.child.try_wait();
                while matches!(status, Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                    status = server.child.try_wait();
                }
                panic!("bench_app {runner_args:?} did not start ({other:?}, exit status {status:?})")
            }
        };
        server.addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("bench_app {runner_args:?}: cannot read the address in {line:?}"));
        // One request end to end before measuring anything.
        let mut conn = Conn::connect(server.addr).unwrap_or_else(|e| panic!("connect to {runner_args:?}: {e}"));
        let (status, _) = conn
            .exchange(b"GET /hello HTTP/1.1\r\nHost: b\r\n\r\n")
            .unwrap_or_else(|e| panic!("first request to {runner_args:?}: {e}"));
        assert_eq!(status, 200, "GET /hello with {runner_args:?}");
        server
    }
}

/// The pid and all its descendants, parents first.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", all[i])) {
            for task in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                    all.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
                }
            }
        }
        i += 1;
    }
    all
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) on a pid of a process this bench started (or one of its descendants);
    // no memory is involved.
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let tree = process_tree(self.child.id());
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left (the server, or workers it did not take down) is killed outright.
        for pid in tree.iter().rev() {
            if *pid != self.child.id() || matches!(self.child.try_wait(), Ok(None)) {
                signal(*pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

// ---- the client side ------------------------------------------------------------------------

/// One client connection with its read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn { stream, buf: Vec::with_capacity(1024) })
    }

    /// Sends `request` and reads the whole response; returns its status and whether the
    /// connection is done (`Connection: close`, or a body delimited by EOF). An EOF before the
    /// first byte of the response is `ErrorKind::UnexpectedEof` (a closed keep-alive connection).
    fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, bool)> {
        self.stream.write_all(request)?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill()? == 0 {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed before a response"));
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| invalid("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.strip_prefix("HTTP/1.1 "))
            .and_then(|l| l.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("bad status line"))?;
        let (mut length, mut close) = (None, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().map_err(|_| invalid("bad Content-Length"))?);
            } else if name.eq_ignore_ascii_case("connection") {
                close |= value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(invalid("chunked responses are not expected from bench_app"));
            }
        }
        match length {
            Some(n) => {
                while self.buf.len() < head_end + n {
                    if self.fill()? == 0 {
                        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "body cut short"));
                    }
                }
                Ok((status, close))
            }
            None => {
                while self.fill()? != 0 {}
                Ok((status, true))
            }
        }
    }

    /// Reads until the server closes the connection.
    fn read_to_eof(&mut self) -> std::io::Result<()> {
        while self.fill()? != 0 {}
        Ok(())
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(message: &str) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, message.to_string())
}

/// What the client threads share with the thread that times the batches.
struct Shared {
    addr: SocketAddr,
    request: Vec<u8>,
    mode: Mode,
    /// Requests of the current batch not yet taken by a client.
    remaining: AtomicI64,
    start: Barrier,
    done: Barrier,
    stop: AtomicBool,
    /// Requests that failed in the current batch.
    batch_errors: AtomicU64,
    errors: AtomicU64,
    /// Keep-alive connections the server closed (limit of requests per connection, timeout),
    /// after which the request was sent again on a new connection.
    reconnects: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.batch_errors.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_ERRORS_PER_BATCH {
            self.remaining.store(0, Ordering::Relaxed);
        }
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(what);
    }
}

/// `clients` threads waiting for batches.
struct Clients {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Clients {
    fn new(addr: SocketAddr, workload: &Workload, clients: usize) -> Clients {
        let connection = if workload.mode == Mode::Close { "Connection: close\r\n" } else { "" };
        let shared = Arc::new(Shared {
            addr,
            request: format!("GET {} HTTP/1.1\r\nHost: b\r\n{connection}\r\n", workload.path).into_bytes(),
            mode: workload.mode,
            remaining: AtomicI64::new(0),
            start: Barrier::new(clients + 1),
            done: Barrier::new(clients + 1),
            stop: AtomicBool::new(false),
            batch_errors: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            first_error: Mutex::new(None),
        });
        let threads = (0..clients)
            .map(|_| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || client(&shared))
            })
            .collect();
        Clients { shared, threads }
    }

    /// Serves one batch of `requests` and returns its wall-clock time.
    fn batch(&self, requests: u64) -> Duration {
        let shared = &self.shared;
        shared.batch_errors.store(0, Ordering::Relaxed);
        shared.remaining.store(i64::try_from(requests).unwrap_or(i64::MAX), Ordering::Relaxed);
        let started = Instant::now();
        shared.start.wait();
        shared.done.wait();
        started.elapsed()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.start.wait();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn client(shared: &Shared) {
    loop {
        shared.start.wait();
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let mut conn: Option<Conn> = None;
        while shared.remaining.fetch_sub(1, Ordering::Relaxed) > 0 {
            let result = match shared.mode {
                Mode::KeepAlive => keepalive_request(shared, &mut conn),
                Mode::Close => close_request(shared),
            };
            match result {
                Ok(200) => {}
                Ok(status) => shared.fail(format!("status {status}")),
                Err(e) => {
                    conn = None;
                    shared.fail(e.to_string());
                }
            }
        }
        drop(conn);
        shared.done.wait();
    }
}

/// One request on the client's keep-alive connection, opened if needed; a reused connection the
/// server has closed in the meantime is replaced once.
fn keepalive_request(shared: &Shared, conn: &mut Option<Conn>) -> std::io::Result<u16> {
    let reused = conn.is_some();
    let c = match conn {
        Some(c) => c,
        None => conn.insert(Conn::connect(shared.addr)?),
    };
    let result = match c.exchange(&shared.request) {
        Err(e)
            if reused
                && matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                ) =>
        {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            conn.insert(Conn::connect(shared.addr)?).exchange(&shared.request)
        }
        other => other,
    };
    let (status, close) = result?;
    if close {
        *conn = None;
    }
    Ok(status)
}

/// One request on a new connection with `Connection: close`, read until the server closes it.
fn close_request(shared: &Shared) -> std::io::Result<u16> {
    let mut conn = Conn::connect(shared.addr)?;
    let (status, close) = conn.exchange(&shared.request)?;
    if !close {
        return Err(invalid("no Connection: close in the response to Connection: close"));
    }
    conn.read_to_eof()?;
    Ok(status)
}

// ---- the benchmarks -------------------------------------------------------------------------

/// The benchmarks of each workload: a name, and the arguments that select its runner.
fn runner_args() -> Vec<(String, Vec<String>)> {
    let workers = env_var("SGI_BENCH_WORKERS");
    let with_workers = |name: &str| {
        let mut args = vec!["--runner".to_string(), name.to_string()];
        if let Some(w) = &workers {
            args.extend(["--workers".to_string(), w.clone()]);
        }
        args
    };
    let mut all: Vec<(String, Vec<String>)> =
        sgi::runner::NAMES.iter().map(|&n| (n.to_string(), with_workers(n))).collect();
    // One loop does all the I/O; the handlers run on as many threads as the pool has workers.
    let threads = workers.clone().unwrap_or_else(|| "4".to_string());
    let offload = ["--runner", "event", "--workers", "1", "--threads", &threads].map(String::from).to_vec();
    all.push(("event_offload".to_string(), offload));
    all
}

fn runners(c: &mut Criterion, failures: &mut Vec<String>) {
    let app = bench_app();
    let clients: usize = env_var("SGI_BENCH_CLIENTS").map_or(32, |v| v.parse().expect("SGI_BENCH_CLIENTS: a number"));
    let selected: Option<Vec<String>> =
        env_var("SGI_BENCH_RUNNERS").map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    for workload in WORKLOADS {
        let mut group = c.benchmark_group(workload.group);
        group.throughput(Throughput::Elements(1));
        for (runner, args) in runner_args() {
            let runner = runner.as_str();
            if selected.as_ref().is_some_and(|names| !names.iter().any(|n| n == runner)) {
                continue;
            }
            // Started on first use, so a benchmark filtered out on the command line costs nothing.
            let mut running: Option<(Clients, Server)> = None;
            group.bench_function(runner, |b| {
                let (pool, _server) = running.get_or_insert_with(|| {
                    let server = Server::start(&app, &args);
                    (Clients::new(server.addr, workload, clients), server)
                });
                b.iter_custom(|iters| pool.batch(iters));
            });
            // The clients go first (they close their connections), then the server.
            if let Some((pool, server)) = running.take() {
                let errors = pool.shared.errors.load(Ordering::Relaxed);
                let reconnects = pool.shared.reconnects.load(Ordering::Relaxed);
                let first = pool.shared.first_error.lock().unwrap_or_else(|e| e.into_inner()).take();
                drop(pool);
                drop(server);
                if reconnects > 0 {
                    eprintln!("{}/{runner}: {reconnects} keep-alive connections closed by the server", workload.group);
                }
                if errors > 0 {
                    let message = format!(
                        "{}/{runner}: {errors} failed requests, first: {}",
                        workload.group,
                        first.unwrap_or_default()
                    );
                    eprintln!("FAILED {message}");
                    failures.push(message);
                }
            }
        }
        group.finish();
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut failures = Vec::new();
    runners(&mut c, &mut failures);
    c.final_summary();
    if !failures.is_empty() {
        eprintln!("{} benchmark(s) had failed requests:", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}
