//! The example binaries as real processes: the fork runner's children and descriptors, graceful
//! shutdown on SIGTERM for every runner, the second SIGINT, Unix sockets, and the concurrency
//! promises of the runners (no starvation, slowloris isolation, backpressure at the cap).
//!
//! The examples are built once (`cargo build --example ...`) and started on free ports of
//! 127.0.0.1; every wait is bounded, and every process started here is stopped and reaped by a
//! drop guard. Linux only: `/proc` is read to find children, their states and descriptors.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::conformance::Runner;
use crate::process_support::{children_of, fd_count, fd_list, stat, Http, ServerProcess, Stat, READ_TIMEOUT};

/// Polls `done` every 10 ms until it holds or `timeout` passes; whether it held.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The `environ` object of a `dump` response.
fn environ(body: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    let value: serde_json::Value = serde_json::from_slice(body).expect("dump answers JSON");
    value["environ"].as_object().expect("an environ object").clone()
}

fn env_str<'a>(env: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> &'a str {
    env.get(key).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("environ has no string {key}: {env:?}"))
}

/// The ten lines of the `stream` example.
fn stream_body() -> String {
    (1..=10).map(|i| format!("tick {i}\n")).collect()
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

// ---------------------------------------------------------------------------------------------
// 1. Fork runner: no zombies, no descriptor leak, children in the parent's group and session.
// ---------------------------------------------------------------------------------------------

/// One request on a new connection with `Connection: close`; checks the status, that the peer
/// the server saw is this very connection, and that the server closes afterwards.
fn dump_once(addr: SocketAddr, path: &str) -> Result<(), String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(|e| e.to_string())?;
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    let mut http = Http::new(stream);
    let response = http.get(path, true).map_err(|e| format!("{path}: {e}"))?;
    if response.head.status != 200 {
        return Err(format!("{path}: status {}", response.head.status));
    }
    let env = environ(&response.body);
    if env_str(&env, "REMOTE_ADDR") != "127.0.0.1" || env_str(&env, "REMOTE_PORT") != local.port().to_string() {
        return Err(format!("{path}: server saw peer {}:{}, we are {local}", env["REMOTE_ADDR"], env["REMOTE_PORT"]));
    }
    if env_str(&env, "PATH_INFO") != path {
        return Err(format!("{path}: answered for {}", env["PATH_INFO"]));
    }
    match http.closed_by_server() {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("{path}: bytes after a Connection: close response")),
        Err(e) => Err(format!("{path}: connection not closed after Connection: close: {e}")),
    }
}

#[test]
fn fork_runner_reaps_every_child_and_leaks_no_descriptor() {
    let server = ServerProcess::start("dump", &["--runner", "fork", "--workers", "16"]);
    let pid = server.pid;
    let addr = server.addr();
    let parent = stat(pid).expect("the server's /proc/PID/stat");

    for i in 0..10 {
        dump_once(addr, &format!("/warm/{i}")).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(3), || children_of(pid).is_empty()),
        "warm-up children still there: {:?}",
        children_of(pid)
    );
    let baseline = fd_count(pid);
    let baseline_fds = fd_list(pid);

    // A keep-alive connection holds its child: it must be a plain child of the server, in the
    // server's process group and session (not a daemon, not a group leader of its own).
    {
        let mut keep = server.http();
        let response = keep.get("/keep", false).unwrap();
        assert_eq!(response.head.status, 200);
        let kids: Vec<Stat> = children_of(pid);
        assert_eq!(kids.len(), 1, "one child per open connection: {kids:?}");
        for kid in &kids {
            assert_ne!(kid.state, 'Z', "a live connection's child is a zombie: {kid:?}");
            assert_eq!((kid.pgrp, kid.session), (parent.pgrp, parent.session), "child {kid:?} vs parent {parent:?}");
        }
        // The same connection keeps working: the child serves keep-alive.
        assert_eq!(keep.get("/keep/2", false).unwrap().head.status, 200);
        assert_eq!(children_of(pid).len(), 1);
    }

    // 1,000 connections, one request each, from 4 client threads.
    const THREADS: usize = 4;
    const PER_THREAD: usize = 250;
    let started = Instant::now();
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || -> Result<usize, String> {
                for i in 0..PER_THREAD {
                    dump_once(addr, &format!("/c{t}/{i}"))?;
                }
                Ok(PER_THREAD)
            })
        })
        .collect();
    let served: usize = clients.into_iter().map(|c| c.join().expect("client thread").unwrap()).sum();
    assert_eq!(served, THREADS * PER_THREAD);
    eprintln!("fork: 1000 connections in {:?}", started.elapsed());

    // Every child exits with its connection and is reaped; the parent is back to its baseline.
    let mut kids = Vec::new();
    let mut fds = 0;
    let settled = wait_until(Duration::from_secs(3), || {
        kids = children_of(pid);
        fds = fd_count(pid);
        kids.is_empty() && fds == baseline
    });
    if !settled {
        let zombies: Vec<&Stat> = kids.iter().filter(|k| k.state == 'Z').collect();
        assert!(zombies.is_empty(), "zombie children 3 s after the last connection: {zombies:?}");
        assert!(kids.is_empty(), "children still alive 3 s after the last connection closed: {kids:?}");
        panic!(
            "descriptor leak in the fork runner's parent: {fds} open, {baseline} after warm-up\nnow: {:#?}\nthen: {:#?}",
            fd_list(pid),
            baseline_fds
        );
    }
    let now = stat(pid).expect("the server is still running");
    assert_ne!(now.state, 'Z', "the server died");
    assert!(!server.output().contains("exited with status"), "a child failed:\n{}", server.output());
}

// ---------------------------------------------------------------------------------------------
// 2. Fork runner refuses a multi-threaded process.
// ---------------------------------------------------------------------------------------------

#[test]
fn fork_runner_refuses_a_multithreaded_process() {
    // However the harness runs this test, the process has at least this thread and the parked one.
    let (release, parked) = mpsc::channel::<()>();
    let parker = thread::spawn(move || {
        let _ = parked.recv();
    });

    let server = sgi::Server::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("local_addr");
    // A client already waiting in the backlog: a runner that went on to accept and fork would
    // answer it (in a child).
    let mut client = TcpStream::connect(addr).expect("connect");
    client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");

    let started = Instant::now();
    let result = server.runner(sgi::runner::Forking::new(4)).serve(sgi::handler_fn(|_env, sr| {
        Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body("forked anyway"))
    }));
    let took = started.elapsed();
    match result {
        Err(sgi::Error::NotSingleThreaded(n)) => assert!(n >= 2, "NotSingleThreaded({n}) in a process with 2+ threads"),
        other => panic!("expected Err(NotSingleThreaded(n >= 2)), got {other:?}"),
    }
    assert!(took < Duration::from_secs(2), "serve took {took:?} to refuse");

    // Nobody answered the waiting client: the listener closed with it unaccepted.
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = Vec::new();
    match client.read_to_end(&mut got) {
        Ok(_) => assert!(got.is_empty(), "the waiting client was answered: {:?}", String::from_utf8_lossy(&got)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the waiting client's connection was neither answered nor closed: {e}"),
    }
    drop(release);
    parker.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// 3. Graceful shutdown on SIGTERM, for every runner.
// ---------------------------------------------------------------------------------------------

/// Probes `addr` every 10 ms from now on; the time until a connection is refused, if within 5 s.
fn probe_refusal(addr: SocketAddr) -> thread::JoinHandle<Option<Duration>> {
    let t0 = Instant::now();
    thread::spawn(move || {
        while t0.elapsed() < Duration::from_secs(5) {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Some(t0.elapsed()),
                Err(_) => {}
                Ok(probe) => drop(probe),
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    })
}

/// When a runner stops listening after SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerClose {
    /// At once: new connections are refused while the in-flight request finishes.
    AtSignal,
    /// Only once the in-flight request is done: until then new connections complete their
    /// handshake in the kernel's backlog, are never accepted, and are reset at exit.
    AfterInFlight,
}

/// A streamed response in flight at SIGTERM comes whole; the connection then closes; new
/// connections are refused (see [`ListenerClose`] for when); exit status 0 soon after.
pub(crate) fn graceful_stop_with_request_in_flight(runner: Runner, listener: ListenerClose) {
    let mut server = ServerProcess::start("stream", &runner.args(&[]));
    let addr = server.addr();
    let mut http = server.http();
    let requested = Instant::now();
    http.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let head = http.read_head().unwrap();
    assert_eq!(head.status, 200);
    assert!(head.is_chunked(), "{head:?}");
    let first = http.read_chunk().unwrap().expect("a first chunk");
    assert_eq!(first, b"tick 1\n");

    server.signal("TERM");
    let signalled = Instant::now();
    let refusal = probe_refusal(addr);
    // A client that comes after the signal, while the response is still streaming.
    thread::sleep(Duration::from_millis(100));
    let late = match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(mut late) => {
            late.write_all(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            Some(late)
        }
        Err(e) => {
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{runner}: late connect: {e}");
            None
        }
    };

    let mut body = first;
    loop {
        match http.read_chunk() {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => panic!(
                "{runner}: response cut after {:?} ({e}); output:\n{}",
                String::from_utf8_lossy(&body),
                server.output()
            ),
        }
    }
    let completed = Instant::now();
    assert_eq!(String::from_utf8_lossy(&body), stream_body(), "{runner}");
    assert!(completed - requested >= Duration::from_millis(900), "{runner}: the stream takes 1 s");
    // The server then closes the connection rather than keep it alive.
    assert!(http.closed_by_server().unwrap_or(false), "{runner}: connection left open after shutdown");

    let status = server.wait_exit(Duration::from_secs(5));
    let exited = Instant::now();
    let status = status.unwrap_or_else(|| panic!("{runner}: still running 5 s after its last response"));
    assert!(status.success(), "{runner}: exit status {status}; output:\n{}", server.output());
    assert!(
        exited - completed < Duration::from_secs(2),
        "{runner}: exit {:?} after the last response",
        exited - completed
    );

    let refused_after = refusal.join().unwrap();
    let refused_after =
        refused_after.unwrap_or_else(|| panic!("{runner}: connections still accepted 5 s after SIGTERM"));
    let in_flight_for = completed - signalled;
    eprintln!(
        "{runner}: refused {refused_after:?} after SIGTERM; response done {in_flight_for:?} and exit {:?} after SIGTERM",
        exited - signalled
    );
    match listener {
        ListenerClose::AtSignal => {
            assert!(
                refused_after < Duration::from_millis(300),
                "{runner}: new connections still accepted {refused_after:?} after SIGTERM (in-flight response ended {in_flight_for:?} after it)"
            );
            assert!(late.is_none(), "{runner}: a connection made 100 ms after SIGTERM was accepted");
        }
        ListenerClose::AfterInFlight => {
            // The connection, idle after its response, gets the stop grace before it closes.
            assert!(
                refused_after < in_flight_for + STOP_GRACE + Duration::from_millis(300),
                "{runner}: new connections still accepted {refused_after:?} after SIGTERM, the in-flight response ended {in_flight_for:?} after it"
            );
        }
    }
    // A late client is never half-served: refused, or reset without a byte of response.
    if let Some(mut late) = late {
        late.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = Vec::new();
        match late.read_to_end(&mut got) {
            Ok(_) => assert!(got.is_empty(), "{runner}: late client answered: {:?}", String::from_utf8_lossy(&got)),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{runner}: late client: {e}"),
        }
    }
}

/// How long a connection idle in keep-alive at a graceful stop still waits for a request that may
/// be on its way (the library's `STOP_GRACE`).
const STOP_GRACE: Duration = Duration::from_millis(500);

/// During a graceful stop the pool closes its listener at once and its idle keep-alive
/// connections after the stop grace (a request already on its way would still be answered),
/// while a worker still finishes the request in flight.
#[test]
fn pool_stops_listening_and_closes_idle_connections_at_sigterm() {
    let mut server = ServerProcess::start("stream", &["--runner", "pool"]);
    let mut idle = server.http();
    assert_eq!(idle.get("/", false).unwrap().body, stream_body().as_bytes());
    let mut http = server.http();
    http.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(http.read_head().unwrap().status, 200);
    assert_eq!(http.read_chunk().unwrap().as_deref(), Some(&b"tick 1\n"[..]));

    server.signal("TERM");
    let signalled = Instant::now();
    let refusal = probe_refusal(server.addr());
    let idle_closed = idle.closed_by_server();
    let idle_closed_after = signalled.elapsed();
    let refused_after = refusal.join().unwrap();
    assert!(server.wait_exit(Duration::from_secs(5)).is_some_and(|s| s.success()));
    let idle_ok = matches!(idle_closed, Ok(true))
        && idle_closed_after >= STOP_GRACE
        && idle_closed_after < STOP_GRACE + Duration::from_millis(500);
    let listener_ok = refused_after.is_some_and(|t| t < Duration::from_millis(300));
    assert!(
        idle_ok && listener_ok,
        "after SIGTERM: idle keep-alive connection closed after {idle_closed_after:?} ({idle_closed:?}), \
         expected just after the {STOP_GRACE:?} grace; new connections refused after {refused_after:?}, \
         expected at once (< 300 ms)"
    );
}

/// What the pool does get right while draining: a request whose head was already received when
/// SIGTERM came, queued behind a busy worker, is still answered (with `Connection: close`).
#[test]
fn pool_answers_requests_queued_at_sigterm() {
    let mut server = ServerProcess::start("stream", &["--runner", "pool", "--workers", "1"]);
    let mut busy = server.http();
    busy.send(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(busy.read_head().unwrap().status, 200);
    assert_eq!(busy.read_chunk().unwrap().as_deref(), Some(&b"tick 1\n"[..]));
    let mut queued = server.http();
    queued.send(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    thread::sleep(Duration::from_millis(100)); // the poller reads and queues it

    server.signal("TERM");
    let mut rest = Vec::new();
    while let Some(chunk) = busy.read_chunk().unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest.len(), stream_body().len() - "tick 1\n".len());
    let response = queued.read_response().unwrap();
    assert_eq!(response.head.status, 200);
    assert_eq!(response.head.header("connection"), Some("close"), "{:?}", response.head);
    assert_eq!(String::from_utf8_lossy(&response.body), stream_body());
    let status = server.wait_exit(Duration::from_secs(5)).expect("exit after the queued request");
    assert!(status.success(), "exit status {status}; output:\n{}", server.output());
}

/// An idle keep-alive connection at SIGTERM is closed at once and does not hold the exit.
pub(crate) fn idle_keepalive_does_not_delay_exit(runner: Runner) {
    let mut server = ServerProcess::start("hello", &runner.args(&[]));
    let mut idle = server.http();
    let response = idle.get("/", false).unwrap();
    assert_eq!(response.head.status, 200);
    assert_eq!(response.body, b"Hello, World!");
    assert_eq!(response.head.header("connection"), None, "{runner}: keep-alive expected: {:?}", response.head);

    let signalled = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(4));
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| panic!("{runner}: idle keep-alive held the exit for 4 s"));
    assert!(status.success(), "{runner}: exit status {status}; output:\n{}", server.output());
    assert!(took < Duration::from_millis(1500), "{runner}: exit took {took:?} with an idle keep-alive connection");
    assert!(idle.closed_by_server().unwrap_or(true), "{runner}: idle connection not closed");
}

// ---------------------------------------------------------------------------------------------
// 4. A second SIGINT exits at once.
// ---------------------------------------------------------------------------------------------

#[test]
fn second_sigint_exits_at_once() {
    let mut server = ServerProcess::start("stream", &["--runner", "pool"]);
    let mut http = server.http();
    http.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(http.read_head().unwrap().status, 200);
    assert_eq!(http.read_chunk().unwrap().as_deref(), Some(&b"tick 1\n"[..]));

    server.signal("INT");
    thread::sleep(Duration::from_millis(100));
    assert!(server.try_wait().is_none(), "the first SIGINT must stop gracefully, not exit");
    let second = Instant::now();
    server.signal("INT");
    let status = server.wait_exit(Duration::from_secs(2)).expect("still running 2 s after the second SIGINT");
    let took = second.elapsed();
    assert_eq!(status.code(), Some(130), "exit status {status}");
    assert!(took < Duration::from_millis(500), "exit took {took:?} after the second SIGINT");

    // The response was cut: the process did not wait for the stream.
    let mut more = 0;
    loop {
        match http.read_chunk() {
            Ok(Some(_)) => more += 1,
            Ok(None) => panic!("the stream completed ({more} more chunks): the second SIGINT did not exit at once"),
            Err(_) => break,
        }
    }
    assert!(more < 9, "{more} more chunks");
}

// ---------------------------------------------------------------------------------------------
// 5. Unix domain sockets.
// ---------------------------------------------------------------------------------------------

/// Removes a socket file left behind by a failed test.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) fn unix_socket(runner: Runner) {
    let path = PathBuf::from(format!("/tmp/sgi-processes-{}-{}.sock", std::process::id(), runner.args(&[]).join("")));
    let _cleanup = RemoveOnDrop(path.clone());
    let mut server = ServerProcess::start_unix("hello", &path, &runner.args(&[]));

    for _ in 0..3 {
        let stream = UnixStream::connect(&path).expect("connect to the unix socket");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut http = Http::new(stream);
        http.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let response = http.read_response().unwrap();
        assert_eq!(response.head.status, 200, "{runner}");
        assert_eq!(response.body, b"Hello, World!", "{runner}");
        assert!(http.closed_by_server().unwrap(), "{runner}: connection not closed");
    }
    // Keep-alive works over a Unix socket too.
    let stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut http = Http::new(stream);
    for _ in 0..3 {
        http.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(http.read_response().unwrap().body, b"Hello, World!");
    }
    drop(http);

    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| panic!("{runner}: no exit after SIGTERM"));
    assert!(status.success(), "{runner}: exit status {status}; output:\n{}", server.output());
    assert!(!path.exists(), "{runner}: socket file {} left behind", path.display());
}

// ---------------------------------------------------------------------------------------------
// 6. Many keep-alive clients: no starvation.
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// 7. Slowloris does not stall the others.
//
// Not for the serial runner: it serves one connection at a time by design, so a client that
// trickles its head holds the whole server until the header deadline (20 s by default, not
// settable from the examples). Its documentation says so.
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// 8. Backpressure at the cap of the threads runner.
// ---------------------------------------------------------------------------------------------

#[test]
fn threads_runner_backpressure_at_the_cap() {
    let server = ServerProcess::start("hello", &["--runner", "threads", "--workers", "2"]);
    let mut first = server.http();
    let mut second = server.http();
    for http in [&mut first, &mut second] {
        let response = http.get("/", false).unwrap();
        assert_eq!(response.head.status, 200);
        assert_eq!(response.head.header("connection"), None, "keep-alive expected");
    }

    // Both slots are held by idle keep-alive connections: a third client waits.
    let mut third = server.http();
    third.send(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    third.stream().set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut byte = [0u8; 1];
    match third.stream().peek(&mut byte) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("the third connection was served beyond the cap of 2: {other:?}"),
    }
    third.stream().set_read_timeout(Some(READ_TIMEOUT)).unwrap();

    // One slot frees up: the third is answered now, not at the 5 s keep-alive timeout.
    let freed = Instant::now();
    drop(first);
    let response = third.read_response().unwrap();
    let took = freed.elapsed();
    assert_eq!(response.head.status, 200);
    assert_eq!(response.body, b"Hello, World!");
    assert!(took < Duration::from_secs(1), "the third client was answered {took:?} after a slot freed");
    // The second connection was never disturbed.
    assert_eq!(second.get("/", false).unwrap().body, b"Hello, World!");
}

// ---------------------------------------------------------------------------------------------
// 9. Many idle connections on one event loop (a bounded C10K: `benches/idle.py` runs 10,000).
// ---------------------------------------------------------------------------------------------

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Sends `GET /` on every connection, then reads every answer.
fn ask_each(conns: &mut [TcpStream]) -> Result<(), String> {
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").map_err(|e| format!("write {i}: {e}"))?;
    }
    let expected = b"Hello, World!";
    for (i, c) in conns.iter_mut().enumerate() {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.ends_with(expected) {
            let n = c.read(&mut buf).map_err(|e| format!("read {i}: {e}"))?;
            if n == 0 {
                return Err(format!("connection {i} closed; got {:?}", String::from_utf8_lossy(&got)));
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    Ok(())
}

/// 2,000 keep-alive connections on one loop, each answered, left idle for 3 s, and answered
/// again: the server holds one descriptor per connection and well under 4 KiB of memory for
/// each (a connection that kept its buffers while idle would cost over 8 KiB), and gives every
/// descriptor back once the clients leave.
#[test]
fn an_event_loop_holds_thousands_of_idle_connections() {
    const CONNS: usize = 2000;
    let limit = sgi::raise_fd_limit().expect("raise the descriptor limit");
    assert!(limit >= 2 * CONNS as u64 + 200, "this test needs a descriptor limit of 4,200 (have {limit})");
    let server = ServerProcess::start("hello", &["--runner", "event", "--workers", "1", "--keep-alive", "60"]);
    let addr = server.addr();
    let (fds_before, rss_before) = (fd_count(server.pid), rss_kib(server.pid));
    let mut conns: Vec<TcpStream> = (0..CONNS).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    for c in &conns {
        c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    }
    ask_each(&mut conns).unwrap_or_else(|e| panic!("first round: {e}\n{}", server.output()));
    thread::sleep(Duration::from_secs(3));
    let (fds_idle, rss_idle) = (fd_count(server.pid), rss_kib(server.pid));
    let per_conn = (rss_idle.saturating_sub(rss_before)) as f64 * 1024.0 / CONNS as f64;
    assert!(per_conn < 4096.0, "{per_conn:.0} bytes of RSS per idle connection");
    ask_each(&mut conns).unwrap_or_else(|e| panic!("after 3 s idle: {e}\n{}", server.output()));
    drop(conns);
    let left = Instant::now();
    while fd_count(server.pid) > fds_before && left.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(50));
    }
    // Counted against the end, not the start: the start's count may still hold the connection
    // with which the harness saw the server listening.
    let fds_after = fd_count(server.pid);
    assert!(fds_after <= fds_before, "descriptors left behind: {fds_after} (was {fds_before})");
    assert_eq!(fds_idle - fds_after, CONNS, "one descriptor per connection ({fds_before} at the start)");
}
