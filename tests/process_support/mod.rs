//! Helpers of `tests/processes.rs`: the example binaries built once and started as real
//! processes (killed and reaped on drop), signals sent with `kill(1)`, `/proc` inspection, and a
//! small strict HTTP/1.1 client over any `Read + Write` stream.
//!
//! Every wait here is bounded: a server that never becomes ready, never answers or never exits
//! fails the test instead of hanging it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest wait for a started server to accept connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for any byte (or the end of the stream) from a server.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The examples the tests start.
const EXAMPLES: &[&str] = &["hello", "dump", "stream", "testbed", "prefork", "app", "files"];

/// The path of an example binary, built (debug profile) on first use by
/// `cargo build --example ...`, whose JSON messages tell exactly where each executable is
/// (whatever `CARGO_TARGET_DIR` or `build.target-dir` say).
pub fn example(name: &str) -> &'static Path {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(build_examples);
    built.get(name).unwrap_or_else(|| panic!("example {name:?} was not built (have: {:?})", built.keys()))
}

fn build_examples() -> HashMap<String, PathBuf> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--message-format=json"]);
    for name in EXAMPLES {
        cmd.args(["--example", name]);
    }
    let output = cmd.stdin(Stdio::null()).output().expect("run cargo build --example ...");
    assert!(
        output.status.success(),
        "cargo build of the examples failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut built = HashMap::new();
    for line in output.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_example = msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "example"));
        if let (true, Some(name), Some(exe)) = (is_example, msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            built.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    // Fallback when cargo printed no executable (it always does for fresh and fresh-cached
    // artifacts, but be robust): the conventional location.
    for name in EXAMPLES {
        built.entry(name.to_string()).or_insert_with(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
            target.join("debug").join("examples").join(name)
        });
    }
    for (name, path) in &built {
        assert!(path.is_file(), "example {name} should be at {}", path.display());
    }
    built
}

/// The lock every test that starts a server takes for as long as the server runs: tests that
/// spawn servers and depend on timing never run at the same time as each other, whatever the
/// harness's thread count. (Test binaries themselves run one after another.)
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that failed while holding it poisons it; the next test goes on all the same.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port that was free a moment ago on 127.0.0.1 (the listener is dropped before it is used:
/// a small race that [`ServerProcess::start`] survives by retrying with another port).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// Polls `done` every 20 ms for up to `timeout`.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// Sends `signal` (a name such as `TERM` or `INT`) to `pid` with `kill(1)`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// Where a server process listens.
#[derive(Debug, Clone)]
pub enum Bind {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A server example running as a child process. Dropping it stops it: SIGTERM, up to 2 s for a
/// graceful exit (so that a fork runner reaps its own children), then SIGKILL, and always a
/// `wait`.
pub struct ServerProcess {
    /// Held for the server's life: no two timing-dependent servers run at once.
    _alone: MutexGuard<'static, ()>,
    child: Child,
    pub pid: u32,
    pub bind: Bind,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl ServerProcess {
    /// Starts `example` with `args` on a free TCP port of 127.0.0.1 and waits until it accepts.
    pub fn start(example_name: &str, args: &[&str]) -> ServerProcess {
        ServerProcess::start_with(example_name, args, &[], &[])
    }

    /// [`ServerProcess::start`] with environment variables, and run under `prefix` (a command
    /// such as `prlimit --nofile=64:64 --`) when it is not empty.
    pub fn start_with(example_name: &str, args: &[&str], env: &[(&str, &str)], prefix: &[&str]) -> ServerProcess {
        let mut last = String::new();
        for _ in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut server = ServerProcess::spawn(example_name, args, env, prefix, Bind::Tcp(addr));
            match server.wait_ready() {
                Ok(()) => return server,
                Err(why) => last = why, // most likely the port was taken meanwhile: try another
            }
        }
        panic!("{example_name} {args:?} never became ready: {last}");
    }

    /// Starts `example` with `args` on the Unix socket `path` and waits until it accepts.
    pub fn start_unix(example_name: &str, path: &Path, args: &[&str]) -> ServerProcess {
        let mut server = ServerProcess::spawn(example_name, args, &[], &[], Bind::Unix(path.to_owned()));
        if let Err(why) = server.wait_ready() {
            panic!("{example_name} {args:?} on {} never became ready: {why}", path.display());
        }
        server
    }

    /// [`ServerProcess::start_with`] for a program at `path` (a copy of an example, say).
    pub fn start_program(path: &Path, args: &[&str], env: &[(&str, &str)], prefix: &[&str]) -> ServerProcess {
        let mut last = String::new();
        for _ in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut server = ServerProcess::spawn_program(path, args, env, prefix, Bind::Tcp(addr));
            match server.wait_ready() {
                Ok(()) => return server,
                Err(why) => last = why,
            }
        }
        panic!("{} {args:?} never became ready: {last}", path.display());
    }

    fn spawn(example_name: &str, args: &[&str], env: &[(&str, &str)], prefix: &[&str], bind: Bind) -> ServerProcess {
        ServerProcess::spawn_program(example(example_name), args, env, prefix, bind)
    }

    fn spawn_program(
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        prefix: &[&str],
        bind: Bind,
    ) -> ServerProcess {
        let example_name = program.display();
        let bind_arg = match &bind {
            Bind::Tcp(addr) => addr.to_string(),
            Bind::Unix(path) => format!("unix:{}", path.display()),
        };
        let alone = exclusive();
        // `prlimit` (and the like) exec the server in place: the pid stays the server's.
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        let mut child = command
            .envs(env.iter().copied())
            .arg("--bind")
            .arg(&bind_arg)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start example {example_name}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().expect("stdout")), Box::new(child.stderr.take().expect("stderr"))];
        for pipe in pipes {
            let output = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut out = output.lock().unwrap_or_else(|e| e.into_inner());
                    out.push_str(&line);
                    out.push('\n');
                }
            }));
        }
        let pid = child.id();
        ServerProcess { _alone: alone, child, pid, bind, output, readers, exit: None }
    }

    /// Polls `connect()` until it succeeds (the probe connection is closed at once).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                return Err(format!("exited with {status} before accepting; output:\n{}", self.output()));
            }
            let connected = match &self.bind {
                Bind::Tcp(addr) => TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok(),
                Bind::Unix(path) => UnixStream::connect(path).is_ok(),
            };
            if connected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not accepting after {READY_TIMEOUT:?}; output:\n{}", self.output()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCP address (panics for a Unix socket server).
    pub fn addr(&self) -> SocketAddr {
        match &self.bind {
            Bind::Tcp(addr) => *addr,
            Bind::Unix(path) => panic!("server listens on unix:{}", path.display()),
        }
    }

    /// A new TCP connection to the server, with read and write timeouts set.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(2)).expect("connect to the server");
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("set_read_timeout");
        stream.set_write_timeout(Some(READ_TIMEOUT)).expect("set_write_timeout");
        stream
    }

    /// [`ServerProcess::connect`] wrapped in an HTTP client.
    pub fn http(&self) -> Http<TcpStream> {
        Http::new(self.connect())
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn signal(&self, signal: &str) {
        assert!(self.exit.is_none(), "the server already exited");
        send_signal(self.pid, signal);
    }

    /// The exit status, if the process has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid.to_string())
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if self.wait_exit(Duration::from_secs(2)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// `/proc/PID/stat` fields the tests look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    pub session: u32,
    /// The controlling terminal's device number; 0 for none.
    pub tty_nr: u32,
}

/// `/proc/PID/stat`, or `None` if the process is gone.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp session ...`; comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let mut num = || fields.next()?.parse::<u32>().ok();
    Some(Stat { pid, state, ppid: num()?, pgrp: num()?, session: num()?, tty_nr: num()? })
}

/// Gone, or a zombie: a process reparented to a reaper that is slow (or absent, in a container)
/// stays a zombie.
pub fn is_gone(pid: u32) -> bool {
    match stat(pid) {
        None => true,
        Some(s) => s.state == 'Z',
    }
}

/// Every process whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .filter(|s| s.ppid == pid)
        .collect()
}

/// Number of open descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd").count()
}

/// The open descriptors of `pid`, with what they point to, for failure messages.
pub fn fd_list(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let mut fds: Vec<String> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_default();
            Some(format!("{} -> {target}", e.file_name().to_string_lossy()))
        })
        .collect();
    fds.sort();
    fds
}

/// A response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A strict HTTP/1.1 client on one connection: requests are raw bytes, responses are parsed
/// (status line, fields, then a `Content-Length` or chunked body, whose last chunk must be
/// exactly `0\r\n\r\n`).
pub struct Http<S: Read + Write> {
    reader: BufReader<S>,
}

impl<S: Read + Write> Http<S> {
    pub fn new(stream: S) -> Http<S> {
        Http { reader: BufReader::new(stream) }
    }

    pub fn stream(&mut self) -> &mut S {
        self.reader.get_mut()
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Sends `GET path` (keep-alive unless `close`) and reads the response.
    pub fn get(&mut self, path: &str, close: bool) -> io::Result<Response> {
        let connection = if close { "Connection: close\r\n" } else { "" };
        self.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{connection}\r\n").as_bytes())?;
        self.read_response()
    }

    /// A line ending in CRLF, without it; EOF before the end is an error.
    fn line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        if !line.ends_with(b"\r\n") {
            return Err(bad(format!("line not ended by CRLF: {:?}", String::from_utf8_lossy(&line))));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| bad("line is not UTF-8"))
    }

    pub fn read_head(&mut self) -> io::Result<Head> {
        let status_line = self.line()?;
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                return Ok(Head { status, headers });
            }
            let (name, value) = line.split_once(':').ok_or_else(|| bad(format!("bad field {line:?}")))?;
            headers.push((name.to_string(), value.trim().to_string()));
        }
    }

    /// The next chunk of a chunked body; `None` after the last chunk and its empty trailer.
    pub fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let size_line = self.line()?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad(format!("bad chunk size line {size_line:?}")))?;
        if size == 0 {
            let trailer = self.line()?;
            if !trailer.is_empty() {
                return Err(bad(format!("unexpected trailer {trailer:?}")));
            }
            return Ok(None);
        }
        let mut data = vec![0; size];
        self.reader.read_exact(&mut data)?;
        if !self.line()?.is_empty() {
            return Err(bad("chunk data not followed by CRLF"));
        }
        Ok(Some(data))
    }

    /// The body after `head`.
    pub fn read_body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        if head.is_chunked() {
            let mut body = Vec::new();
            while let Some(chunk) = self.read_chunk()? {
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        } else if let Some(len) = head.header("content-length") {
            let len: usize = len.parse().map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
            let mut body = vec![0; len];
            self.reader.read_exact(&mut body)?;
            Ok(body)
        } else {
            let mut body = Vec::new();
            self.reader.read_to_end(&mut body)?;
            Ok(body)
        }
    }

    pub fn read_response(&mut self) -> io::Result<Response> {
        let head = self.read_head()?;
        let body = self.read_body(&head)?;
        Ok(Response { head, body })
    }

    /// Whether the server closed the connection (EOF, or a reset) with nothing more to read.
    pub fn closed_by_server(&mut self) -> io::Result<bool> {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(true),
            Err(e) => Err(e),
        }
    }
}
