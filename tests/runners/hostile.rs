//! Hostile clients against real server processes (`examples/testbed`), over 127.0.0.1: readers
//! that never read, uploads that trickle, more clients than descriptors, and a graceful stop
//! under a closed-loop load. Each test is bounded in time and, like every test here, runs alone
//! (`process_support::exclusive`), since each measures what a busy 2-core machine lets through.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::conformance::Runner;
use crate::process_support::ServerProcess;

/// One `GET /hello` on a new connection, within `timeout`: whether `Hello, World!` came back.
fn probe(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&got);
    if text.starts_with("HTTP/1.1 200 ") && text.ends_with("Hello, World!") {
        Ok(())
    } else {
        Err(format!("got {text:?}"))
    }
}

/// Probes once a second for `seconds`; returns (answered, failures).
fn probe_every_second(addr: SocketAddr, seconds: u32) -> (u32, Vec<String>) {
    let start = Instant::now();
    let mut answered = 0;
    let mut failures = Vec::new();
    for i in 0..seconds {
        let at = start + Duration::from_millis(500 + 1000 * u64::from(i));
        thread::sleep(at.saturating_duration_since(Instant::now()));
        match probe(addr, Duration::from_secs(3)) {
            Ok(()) => answered += 1,
            Err(e) => failures.push(format!("probe {i} at {:.1?}: {e}", start.elapsed())),
        }
    }
    (answered, failures)
}

fn assert_mostly_answered(what: &str, answered: u32, failures: &[String], server: &ServerProcess) {
    let total = answered + failures.len() as u32;
    assert!(
        answered * 100 >= total * 95,
        "{what}: {answered} of {total} probes answered: {failures:#?}\nserver output:\n{}",
        server.output()
    );
}

/// Four new clients every 10 s ask for 30 MiB and never read; a probe each second must still be
/// answered. A pool whose workers wrote responses with blocking writes answered none of them.
fn readers_that_never_read_do_not_starve_others(args: &[&str]) {
    let server = ServerProcess::start("testbed", args);
    let addr = server.addr();
    let done = Arc::new(AtomicBool::new(false));
    let attack = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut held = Vec::new();
            for _batch in 0..2 {
                for _ in 0..4 {
                    if let Ok(mut s) = TcpStream::connect(addr) {
                        let _ = s.write_all(b"GET /big?mb=30 HTTP/1.1\r\nHost: x\r\n\r\n");
                        held.push(s);
                    }
                }
                for _ in 0..100 {
                    if done.load(Ordering::SeqCst) {
                        return held.len();
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            }
            held.len()
        })
    };
    let (answered, failures) = probe_every_second(addr, 18);
    done.store(true, Ordering::SeqCst);
    assert_eq!(attack.join().unwrap(), 8, "every slow reader connected");
    assert_mostly_answered("slow readers", answered, &failures, &server);
}

/// Four new clients every 10 s declare a 10 MB body, send 100 kB at once and then a byte a
/// second; a probe each second must still be answered, and the trickling uploads get `408`
/// once their credit at the minimum rate (500 B/s) runs out (here after the 2 s body timeout).
fn uploads_that_trickle_do_not_starve_others(args: &[&str]) {
    let server = ServerProcess::start_with("testbed", args, &[("SGI_BODY_TIMEOUT_MS", "2000")], &[]);
    let addr = server.addr();
    let done = Arc::new(AtomicBool::new(false));
    let attack = {
        let done = Arc::clone(&done);
        thread::spawn(move || -> Vec<u8> {
            let mut uploads: Vec<TcpStream> = Vec::new();
            let mut first = None;
            let head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n";
            for second in 0..20 {
                if second % 10 == 0 {
                    for _ in 0..4 {
                        if let Ok(mut s) = TcpStream::connect(addr) {
                            let _ = s.write_all(&[head.as_slice(), &[b'x'; 100_000]].concat());
                            if first.is_none() {
                                first = s.try_clone().ok();
                            }
                            uploads.push(s);
                        }
                    }
                }
                thread::sleep(Duration::from_secs(1));
                if done.load(Ordering::SeqCst) {
                    break;
                }
                // A byte a second on each upload the server has not closed.
                uploads.retain_mut(|s| s.write_all(b"y").is_ok());
            }
            let mut answer = Vec::new();
            if let Some(mut s) = first {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read_to_end(&mut answer);
            }
            answer
        })
    };
    let (answered, failures) = probe_every_second(addr, 18);
    done.store(true, Ordering::SeqCst);
    let answer = attack.join().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "a trickling upload is answered 408, got {answer:?}");
    assert_mostly_answered("slow uploads", answered, &failures, &server);
}

#[test]
fn readers_that_never_read_do_not_starve_the_pool() {
    readers_that_never_read_do_not_starve_others(&["--runner", "pool", "--workers", "4"]);
}

/// One loop: a loop that waited on a slow reader would answer no probe at all.
#[test]
fn readers_that_never_read_do_not_starve_the_event_loop() {
    readers_that_never_read_do_not_starve_others(&["--runner", "event", "--workers", "1"]);
}

#[test]
fn uploads_that_trickle_do_not_starve_the_pool() {
    uploads_that_trickle_do_not_starve_others(&["--runner", "pool", "--workers", "4"]);
}

/// One loop, handlers on it: the uploads' handlers, which wait for their bodies, run on the
/// offload threads; had they run on the loop, it would answer no probe until each got its 408.
#[test]
fn uploads_that_trickle_do_not_starve_the_event_loop() {
    uploads_that_trickle_do_not_starve_others(&["--runner", "event", "--workers", "1"]);
}

/// One loop and three offload threads: two handlers that sleep 3 s hold two threads, and a
/// probe sent meanwhile is answered at once on the third: the loop itself kept reading and
/// writing. With handlers on the loop, the probe could not even be read before both sleeps had
/// ended (6 s).
#[test]
fn blocking_handlers_hold_offload_threads_not_the_event_loop() {
    let server = ServerProcess::start("testbed", &["--runner", "event", "--workers", "1", "--threads", "3"]);
    let addr = server.addr();
    let sleepers: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
                let mut got = String::new();
                s.read_to_string(&mut got).unwrap();
                got
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let mut idle = TcpStream::connect(addr).unwrap();
    let sent = Instant::now();
    probe(addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("probe: {e}\n{}", server.output()));
    let waited = sent.elapsed();
    assert!(waited < Duration::from_millis(1500), "probe answered after {waited:?}");
    for sleeper in sleepers {
        assert!(sleeper.join().unwrap().ends_with("done"));
    }
    // A connection that sat idle meanwhile is still served by the loop.
    idle.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut got = String::new();
    idle.read_to_string(&mut got).unwrap();
    assert!(got.ends_with("Hello, World!"), "{got:?}");
}

/// CPU time (user + system, in clock ticks) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5), counted from 1 with pid and comm first.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A server with 64 descriptors and 100 clients: accepting pauses (one log line, little CPU),
/// the clients leave, and the server answers again within 2 s; SIGTERM stops it at once. A
/// runner that retried `accept` in a loop never noticed the clients leave, and hung at SIGTERM.
/// `workers`: the runner's concurrency knob, set so that the connection cap is above the
/// descriptor limit.
fn serves_again_after_running_out_of_descriptors(args: &[&str]) {
    let runner = args.join(" ");
    let mut server = ServerProcess::start_with("testbed", args, &[], &["prlimit", "--nofile=64:64", "--"]);
    let addr = server.addr();
    let clients: Vec<TcpStream> = (0..100).filter_map(|_| TcpStream::connect(addr).ok()).collect();
    assert_eq!(clients.len(), 100, "the backlog takes them all");
    thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(server.pid);
    thread::sleep(Duration::from_secs(2));
    let spent = cpu_ticks(server.pid) - before;
    // 2 s is 200 ticks of one core; a spinning accept loop uses all of them.
    assert!(spent < 40, "{runner}: {spent} ticks of CPU in 2 s while out of descriptors");
    assert!(probe(addr, Duration::from_millis(300)).is_err(), "{runner}: answered while out of descriptors?");

    drop(clients);
    let left = Instant::now();
    let served = loop {
        if probe(addr, Duration::from_secs(1)).is_ok() {
            break left.elapsed();
        }
        assert!(left.elapsed() < Duration::from_secs(5), "{runner}: not serving 5 s after the clients left");
    };
    assert!(served < Duration::from_secs(2), "{runner}: serving again only {served:?} after the clients left");

    let output = server.output();
    let pauses = output.matches("pausing accepts").count();
    assert!((1..=5).contains(&pauses), "{runner}: {pauses} pause lines:\n{output}");

    server.signal("TERM");
    let signalled = Instant::now();
    let status = server.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| panic!("{runner}: hung at SIGTERM"));
    assert!(status.success(), "{runner}: exit status {status}");
    assert!(signalled.elapsed() < Duration::from_secs(3), "{runner}: {:?} to stop", signalled.elapsed());
}

#[test]
fn pool_serves_again_after_running_out_of_descriptors() {
    serves_again_after_running_out_of_descriptors(&["--runner", "pool", "--workers", "4"]);
}

#[test]
fn threads_serve_again_after_running_out_of_descriptors() {
    serves_again_after_running_out_of_descriptors(&["--runner", "threads", "--workers", "1000"]);
}

#[test]
fn event_loops_serve_again_after_running_out_of_descriptors() {
    let args = ["--runner", "event", "--workers", "2", "--max-connections", "1000"];
    serves_again_after_running_out_of_descriptors(&args);
}

/// One keep-alive client that sends its next request as soon as it has an answer, until the
/// server says `Connection: close`. Returns the requests answered, or what went wrong.
fn closed_loop_client(addr: SocketAddr, stop_by: Instant) -> Result<usize, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answered = 0;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < stop_by {
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .map_err(|e| format!("write after {answered} answers: {e}"))?;
        let (head_end, len) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| format!("no content-length in {head:?}"))?;
                if buf.len() >= end + 4 + len {
                    break (end + 4, len);
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Err(format!("closed without an answer after {answered} answers")),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read after {answered} answers: {e}")),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200 ") {
            return Err(format!("status {head:?}"));
        }
        answered += 1;
        buf.drain(..head_end + len);
        if head.contains("\r\nconnection: close\r\n") {
            return Ok(answered);
        }
    }
    Err(format!("never told to close ({answered} answers)"))
}

/// Closed-loop keep-alive clients across a SIGTERM: every request sent is answered, the last
/// with `Connection: close`, and the server exits cleanly.
pub(crate) fn graceful_stop_under_closed_loop_load(runner: Runner, clients: usize) {
    let mut server = ServerProcess::start("testbed", &runner.args(&["--workers", "4"]));
    let addr = server.addr();
    let stop_by = Instant::now() + Duration::from_secs(10);
    let loads: Vec<_> = (0..clients).map(|_| thread::spawn(move || closed_loop_client(addr, stop_by))).collect();
    thread::sleep(Duration::from_millis(1000));
    server.signal("TERM");
    let results: Vec<Result<usize, String>> = loads.into_iter().map(|h| h.join().unwrap()).collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{runner}: {failed:#?}\nserver output:\n{}", server.output());
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|&n| n > 1)), "{runner}: {results:?}");
    let status = server.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| panic!("{runner}: still running"));
    assert!(status.success(), "{runner}: exit status {status}");
}
