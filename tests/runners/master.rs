//! The prefork master as a real process tree (`examples/prefork`): workers started, replaced
//! when they die, reloaded on HUP with no failed request, resized on TTIN / TTOU, stopped on
//! TERM with nothing lost; checked in `/proc` (children, zombies, descriptors). Bounded in time;
//! 127.0.0.1 only; each test runs alone (`process_support::exclusive`).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::process_support::{children_of, fd_count, wait_until, ServerProcess};

/// The master's live workers (zombies are counted apart).
fn workers(master: u32) -> BTreeSet<u32> {
    children_of(master).into_iter().filter(|s| s.state != 'Z').map(|s| s.pid).collect()
}

fn zombies(master: u32) -> Vec<u32> {
    children_of(master).into_iter().filter(|s| s.state == 'Z').map(|s| s.pid).collect()
}

/// One `GET path` with `Connection: close`: the body of a 200, or why not.
fn ask(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut got = String::new();
    s.read_to_string(&mut got).map_err(|e| format!("read: {e}"))?;
    match got.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => Ok(body.to_string()),
        _ => Err(format!("got {got:?}")),
    }
}

/// The worker pid in a `/` answer (`worker PID, up Ns, request N`).
fn answering_pid(body: &str) -> u32 {
    body.strip_prefix("worker ").and_then(|r| r.split(',').next()).and_then(|p| p.parse().ok()).unwrap()
}

/// Keeps requests going until `stop_by`: keep-alive ones (reconnecting when the server says
/// `Connection: close`), or one connection per request. Returns (answered, failures).
fn closed_loop(addr: SocketAddr, stop_by: Instant, keep_alive: bool) -> (usize, Vec<String>) {
    let mut answered = 0;
    let mut failures = Vec::new();
    let mut conn: Option<TcpStream> = None;
    while Instant::now() < stop_by {
        let mut stream = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect(addr) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s
                }
                Err(e) => {
                    failures.push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let close = if keep_alive { "" } else { "Connection: close\r\n" };
        if let Err(e) = stream.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\n{close}\r\n").as_bytes()) {
            failures.push(format!("write after {answered}: {e}"));
            continue;
        }
        match read_response(&mut stream) {
            Ok(closes) => {
                answered += 1;
                if keep_alive && !closes {
                    conn = Some(stream);
                }
            }
            Err(e) => failures.push(format!("after {answered}: {e}")),
        }
    }
    (answered, failures)
}

/// Reads one response with a `Content-Length` body; returns whether it closes the connection.
fn read_response(stream: &mut TcpStream) -> Result<bool, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200 ") {
                return Err(format!("status {head:?}"));
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .ok_or("no content-length")?;
            if buf.len() >= end + 4 + len {
                return Ok(head.contains("\r\nconnection: close"));
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed without an answer".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn start(workers: &str) -> ServerProcess {
    ServerProcess::start("prefork", &["--workers", workers, "--threads", "2"])
}

#[test]
fn the_master_keeps_its_workers_and_replaces_one_that_is_killed() {
    let server = start("2");
    let addr = server.addr();
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2), "two workers");
    let first = workers(server.pid);
    for w in &first {
        let s = crate::process_support::stat(*w).unwrap();
        assert_eq!(s.ppid, server.pid, "a worker is the master's child");
    }
    ask(addr, "/").unwrap();
    let victim = *first.iter().next().unwrap();
    let kill = std::process::Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap();
    assert!(kill.success());
    let replaced = wait_until(Duration::from_secs(5), || {
        let now = workers(server.pid);
        now.len() == 2 && !now.contains(&victim)
    });
    assert!(replaced, "workers now {:?}; output:\n{}", workers(server.pid), server.output());
    assert!(zombies(server.pid).is_empty(), "zombies: {:?}", zombies(server.pid));
    for _ in 0..10 {
        ask(addr, "/").unwrap();
    }
    assert!(server.output().contains(&format!("worker {victim} exited with status 137")), "{}", server.output());
}

/// A worker that aborts in a handler is replaced; the other requests go on.
#[test]
fn a_worker_that_crashes_is_replaced_and_the_others_keep_serving() {
    let server = start("2");
    let addr = server.addr();
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2));
    assert!(ask(addr, "/crash").is_err(), "the crashing request gets no answer");
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2 && zombies(server.pid).is_empty()));
    for _ in 0..10 {
        ask(addr, "/").unwrap();
    }
    assert!(server.output().contains("exited with status 134"), "SIGABRT: {}", server.output());
}

/// HUP under a closed-loop load of keep-alive and new-connection clients: every request is
/// answered, and afterwards only new workers serve.
#[test]
fn hup_under_load_fails_no_request_and_replaces_every_worker() {
    let server = start("2");
    let addr = server.addr();
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2));
    let old = workers(server.pid);
    let stop_by = Instant::now() + Duration::from_secs(4);
    let clients: Vec<_> = (0..6).map(|i| thread::spawn(move || closed_loop(addr, stop_by, i % 2 == 0))).collect();
    thread::sleep(Duration::from_secs(1));
    server.signal("HUP");
    let mut answered = 0;
    for c in clients {
        let (n, failures) = c.join().unwrap();
        assert!(failures.is_empty(), "{failures:#?}\noutput:\n{}", server.output());
        answered += n;
    }
    assert!(answered > 100, "only {answered} requests in 4 s");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let now = workers(server.pid);
            now.len() == 2 && now.is_disjoint(&old)
        }),
        "old {old:?}, now {:?}\n{}",
        workers(server.pid),
        server.output()
    );
    let pid = answering_pid(&ask(addr, "/").unwrap());
    assert!(!old.contains(&pid), "answered by old worker {pid}");
}

/// A reload whose new workers cannot boot (their factory fails) leaves the old ones serving.
#[test]
fn hup_with_a_failing_factory_keeps_the_old_workers() {
    let flag = PathBuf::from(format!("/tmp/sgi-prefork-fail-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let flag_env = flag.to_string_lossy().into_owned();
    let server = ServerProcess::start_with(
        "prefork",
        &["--workers", "2", "--threads", "2"],
        &[("PREFORK_FAIL_IF_EXISTS", &flag_env)],
        &[],
    );
    let addr = server.addr();
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2));
    let old = workers(server.pid);
    std::fs::write(&flag, b"").unwrap();
    server.signal("HUP");
    let gave_up = wait_until(Duration::from_secs(5), || server.output().contains("reload failed"));
    std::fs::remove_file(&flag).unwrap();
    assert!(gave_up, "{}", server.output());
    assert!(wait_until(Duration::from_secs(3), || workers(server.pid) == old), "{:?} vs {old:?}", workers(server.pid));
    for _ in 0..10 {
        let pid = answering_pid(&ask(addr, "/").unwrap());
        assert!(old.contains(&pid), "answered by {pid}, not an old worker");
    }
    // Once the factory works again, a reload goes through.
    server.signal("HUP");
    assert!(wait_until(Duration::from_secs(5), || {
        let now = workers(server.pid);
        now.len() == 2 && now.is_disjoint(&old)
    }));
}

/// When no worker can boot, the master stops with the reason and a failure status.
#[test]
fn when_no_worker_can_boot_the_master_exits_with_the_reason() {
    let flag = PathBuf::from(format!("/tmp/sgi-prefork-noboot-{}", std::process::id()));
    std::fs::write(&flag, b"").unwrap();
    let flag_env = flag.to_string_lossy().into_owned();
    let mut cmd = std::process::Command::new(crate::process_support::example("prefork"));
    cmd.args(["--bind", "127.0.0.1:0", "--workers", "2"]).env("PREFORK_FAIL_IF_EXISTS", &flag_env);
    let _alone = crate::process_support::exclusive();
    let started = Instant::now();
    let out = cmd.output().unwrap();
    std::fs::remove_file(&flag).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no worker could boot"), "{stderr}");
    assert!(stderr.contains("refusing to boot"), "the factory's reason is logged: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn ttin_and_ttou_change_the_number_of_workers() {
    let server = start("2");
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2));
    server.signal("TTIN");
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 3), "{:?}", workers(server.pid));
    // One at a time: two of the same signal sent at once may arrive as one (they coalesce while
    // pending).
    server.signal("TTOU");
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2), "{:?}", workers(server.pid));
    server.signal("TTOU");
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 1), "{:?}", workers(server.pid));
    server.signal("TTOU");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(workers(server.pid).len(), 1, "never fewer than one");
    ask(server.addr(), "/").unwrap();
}

/// TERM with a slow request in flight: it is answered, then the master exits 0 and leaves no
/// worker behind.
#[test]
fn term_loses_no_request_in_flight() {
    let mut server = start("2");
    let addr = server.addr();
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2));
    let all = workers(server.pid);
    let slow = thread::spawn(move || ask(addr, "/slow?ms=1500"));
    thread::sleep(Duration::from_millis(300));
    server.signal("TERM");
    let answer = slow.join().unwrap();
    assert!(answer.is_ok(), "{answer:?}\n{}", server.output());
    let status = server.wait_exit(Duration::from_secs(5)).expect("the master exits");
    assert!(status.success(), "{status}\n{}", server.output());
    for pid in all {
        assert!(crate::process_support::stat(pid).is_none(), "worker {pid} outlived its master");
    }
}

/// A master killed with SIGKILL takes its workers with it (they get SIGTERM and stop).
#[test]
fn workers_stop_when_their_master_dies() {
    let mut server = start("2");
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2));
    let all = workers(server.pid);
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(5)).expect("the master is gone");
    let gone = wait_until(Duration::from_secs(5), || all.iter().all(|&p| crate::process_support::stat(p).is_none()));
    assert!(gone, "orphaned workers: {all:?}");
}

/// 100 reloads: the master's descriptors stay as they were, and no zombie is left.
#[test]
fn the_masters_descriptors_stay_flat_across_reloads() {
    let server = start("1");
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 1));
    let before = fd_count(server.pid);
    for i in 0..100 {
        let old = workers(server.pid);
        server.signal("HUP");
        let swapped = wait_until(Duration::from_secs(5), || {
            let now = workers(server.pid);
            now.len() == 1 && now.is_disjoint(&old)
        });
        assert!(swapped, "reload {i}: {:?}\n{}", workers(server.pid), server.output());
    }
    assert!(wait_until(Duration::from_secs(2), || zombies(server.pid).is_empty()));
    assert_eq!(fd_count(server.pid), before, "the master's descriptors changed across 100 reloads");
    ask(server.addr(), "/").unwrap();
}

/// The master owns a Unix socket's file: workers that die or retire never remove it; the
/// master removes it when it stops.
#[test]
fn the_unix_socket_file_survives_worker_exits() {
    let path = PathBuf::from(format!("/tmp/sgi-prefork-{}.sock", std::process::id()));
    let mut server = ServerProcess::start_unix("prefork", &path, &["--workers", "2", "--threads", "2"]);
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2));
    let old = workers(server.pid);
    let victim = *old.iter().next().unwrap();
    std::process::Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap();
    server.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || workers(server.pid).is_disjoint(&old) && workers(server.pid).len() == 2)
    );
    assert!(path.exists(), "the socket file went with a worker");
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert!(got.starts_with("HTTP/1.1 200 "), "{got:?}");
    server.signal("TERM");
    server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(!path.exists(), "the master removes its socket file at the end");
}

/// A handler that hangs past `--timeout` gets its worker killed (SIGTERM, then SIGKILL) and
/// replaced at once; its client sees the connection end; the other worker served throughout.
#[test]
fn a_hanging_handler_is_killed_at_the_timeout_and_its_worker_replaced() {
    let server = ServerProcess::start("prefork", &["--workers", "2", "--threads", "2", "--timeout", "2"]);
    let addr = server.addr();
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2));
    let before = workers(server.pid);
    let started = Instant::now();
    let hung = thread::spawn(move || ask(addr, "/slow?ms=60000"));
    thread::sleep(Duration::from_millis(500));
    // Meanwhile the other requests are answered.
    for _ in 0..5 {
        ask(addr, "/").unwrap();
    }
    let answer = hung.join().unwrap();
    let took = started.elapsed();
    assert!(answer.is_err(), "the hung request was answered: {answer:?}");
    assert!(took < Duration::from_secs(10), "ended after {took:?}");
    assert!(took > Duration::from_secs(2), "ended after {took:?}, before the timeout");
    assert!(
        wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2 && workers(server.pid) != before),
        "{:?} vs {before:?}",
        workers(server.pid)
    );
    assert!(server.output().contains("timed out (a request running for"), "{}", server.output());
    ask(addr, "/").unwrap();
}

/// An idle master waits: a few ticks of CPU in 2 s, not a core. (A master that kept a worker's
/// status pipe after its end of file polled it, readable forever, in a busy loop.)
#[test]
fn an_idle_master_uses_almost_no_cpu() {
    let server = start("2");
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2));
    ask(server.addr(), "/").unwrap();
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid)).unwrap();
        let fields: Vec<u64> =
            stat[stat.rfind(')').unwrap() + 2..].split(' ').skip(11).take(2).map(|f| f.parse().unwrap()).collect();
        fields[0] + fields[1]
    };
    let before = ticks();
    thread::sleep(Duration::from_secs(2));
    let spent = ticks() - before;
    // 2 s is 200 ticks of one core; the master's 100 ms turns cost well under one each.
    assert!(spent < 20, "the master used {spent} ticks of CPU in 2 s while idle");
}

/// `--max-requests 5`: a worker that answered 5 requests is recycled, its replacement first, so
/// that a client sending one request after another never finds nobody serving.
#[test]
fn a_worker_is_recycled_after_max_requests_with_its_replacement_first() {
    let server = ServerProcess::start("prefork", &["--workers", "1", "--threads", "2", "--max-requests", "5"]);
    let addr = server.addr();
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 1));
    let mut pids = BTreeSet::new();
    let mut most = 0;
    for i in 0..20 {
        let body = ask(addr, "/").unwrap_or_else(|e| panic!("request {i}: {e}\n{}", server.output()));
        pids.insert(answering_pid(&body));
        most = most.max(workers(server.pid).len());
        thread::sleep(Duration::from_millis(50));
    }
    assert!(pids.len() >= 3, "20 requests at 5 per worker were answered by {pids:?}\n{}", server.output());
    assert!(most <= 2, "at most the worker and its replacement at once, saw {most}");
    assert!(server.output().contains("served its requests"), "{}", server.output());
}

/// `--max-rss-mb 64`: a worker that grows past 64 MiB is recycled, replacement first.
#[test]
fn a_worker_that_grows_past_max_rss_is_recycled() {
    let server = ServerProcess::start("prefork", &["--workers", "1", "--threads", "2", "--max-rss-mb", "64"]);
    let addr = server.addr();
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 1));
    let first = answering_pid(&ask(addr, "/").unwrap());
    ask(addr, "/grow?mb=100").unwrap();
    let replaced = wait_until(Duration::from_secs(6), || {
        let now = workers(server.pid);
        now.len() == 1 && !now.contains(&first)
    });
    assert!(replaced, "{:?}\n{}", workers(server.pid), server.output());
    assert_ne!(answering_pid(&ask(addr, "/").unwrap()), first);
}

/// kill -9 a worker under a closed-loop load: only what was in flight on it fails (at most one
/// request per client), the others go on, and the worker is replaced.
#[test]
fn killing_a_worker_under_load_fails_only_its_requests_in_flight() {
    let server = start("2");
    let addr = server.addr();
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2));
    let victim = *workers(server.pid).iter().next().unwrap();
    let clients = 6;
    let stop_by = Instant::now() + Duration::from_secs(3);
    let loads: Vec<_> = (0..clients).map(|i| thread::spawn(move || closed_loop(addr, stop_by, i % 2 == 0))).collect();
    thread::sleep(Duration::from_secs(1));
    std::process::Command::new("kill").args(["-KILL", &victim.to_string()]).status().unwrap();
    let (mut answered, mut failures) = (0, Vec::new());
    for load in loads {
        let (n, f) = load.join().unwrap();
        answered += n;
        failures.extend(f);
    }
    assert!(failures.len() <= clients, "{} failures for {clients} clients: {failures:#?}", failures.len());
    assert!(answered > 100, "only {answered} answered");
    assert!(wait_until(Duration::from_secs(5), || {
        let now = workers(server.pid);
        now.len() == 2 && !now.contains(&victim)
    }));
}

/// The worker hooks: each worker runs the after-fork hook when it starts and the before-exit
/// hook when it stops gracefully (replaced by a reload, or stopped with its master), once each.
#[test]
fn every_worker_runs_its_fork_and_exit_hooks() {
    let log = PathBuf::from(format!("/tmp/sgi-prefork-hooks-{}", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let log_env = log.to_string_lossy().into_owned();
    let mut server = ServerProcess::start_with(
        "prefork",
        &["--workers", "2", "--threads", "2"],
        &[("PREFORK_HOOK_LOG", &log_env)],
        &[],
    );
    assert!(wait_until(Duration::from_secs(5), || workers(server.pid).len() == 2));
    let first = workers(server.pid);
    server.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || {
        let now = workers(server.pid);
        now.len() == 2 && now.is_disjoint(&first)
    }));
    let second = workers(server.pid);
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10)).expect("the master exits");
    assert!(status.success(), "{status}\n{}", server.output());
    let lines = std::fs::read_to_string(&log).unwrap_or_default();
    std::fs::remove_file(&log).unwrap();
    let mut lines: Vec<&str> = lines.lines().collect();
    lines.sort_unstable();
    let mut expected: Vec<String> =
        first.iter().chain(&second).flat_map(|pid| [format!("exit {pid}"), format!("fork {pid}")]).collect();
    expected.sort_unstable();
    assert_eq!(lines, expected, "{}", server.output());
}

/// The binary upgrade under a closed-loop load (keep-alive clients and a client per request),
/// from a temporary copy of the binary that is then replaced by one that answers differently:
/// `USR2` starts the new master (the pidfile moves to `.oldbin`), `WINCH` stops the old
/// workers, `TERM` retires the old master. No request fails, no connection is refused, and the
/// answers switch to the new binary. Run without a controlling terminal (`setsid`), as a daemon
/// or a service is: a master with a terminal ignores `WINCH` (a window resize sends it too).
#[test]
fn a_binary_upgrade_under_load_fails_no_request() {
    let dir = PathBuf::from(format!("/tmp/sgi-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let app = dir.join("app");
    std::fs::copy(crate::process_support::example("prefork"), &app).unwrap();
    let pidfile = dir.join("app.pid");
    let oldbin = dir.join("app.pid.oldbin");
    let pidfile_arg = pidfile.to_string_lossy().into_owned();
    let args = ["--runner", "prefork", "--workers", "2", "--threads", "2", "--pidfile", &pidfile_arg];
    let mut old = ServerProcess::start_program(&app, &args, &[], &["setsid"]);
    let addr = old.addr();
    assert!(wait_until(Duration::from_secs(5), || workers(old.pid).len() == 2));
    let read_pid = |path: &PathBuf| std::fs::read_to_string(path).ok().and_then(|p| p.trim().parse::<u32>().ok());
    assert_eq!(read_pid(&pidfile), Some(old.pid));
    let stop_by = Instant::now() + Duration::from_secs(8);
    let clients: Vec<_> = (0..4).map(|i| thread::spawn(move || closed_loop(addr, stop_by, i % 2 == 0))).collect();
    thread::sleep(Duration::from_millis(500));
    // The new code, put in place as a deployment does: a new file renamed over the old.
    let staged = dir.join("app.new");
    std::fs::copy(crate::process_support::example("dump"), &staged).unwrap();
    std::fs::rename(&staged, &app).unwrap();
    old.signal("USR2");
    let new_master = || read_pid(&pidfile).filter(|&p| p != old.pid);
    assert!(wait_until(Duration::from_secs(10), || new_master().is_some()), "no new pidfile\n{}", old.output());
    let new = new_master().unwrap();
    let _new_guard = StopOnDrop(new);
    assert_eq!(read_pid(&oldbin), Some(old.pid), "the old master's pidfile is PIDFILE.oldbin");
    assert!(
        wait_until(Duration::from_secs(10), || workers(new).len() == 2),
        "the new master's workers\n{}",
        old.output()
    );
    old.signal("WINCH");
    assert!(
        wait_until(Duration::from_secs(10), || workers(old.pid) == BTreeSet::from([new])),
        "WINCH stops the old workers (the new master is the one child left)\n{}",
        old.output()
    );
    for _ in 0..10 {
        let body = ask(addr, "/").unwrap();
        assert!(body.contains("\"environ\""), "answered by the old code: {body:?}");
    }
    old.signal("TERM");
    let status = old.wait_exit(Duration::from_secs(10)).expect("the old master retires");
    assert!(status.success(), "{status}\n{}", old.output());
    assert!(!oldbin.exists(), "the old master removes its .oldbin");
    let mut answered = 0;
    for c in clients {
        let (n, failures) = c.join().unwrap();
        assert!(failures.is_empty(), "{failures:#?}\noutput:\n{}", old.output());
        answered += n;
    }
    assert!(answered > 100, "only {answered} requests");
    assert!(ask(addr, "/").unwrap().contains("\"environ\""), "the new master serves on");
    assert_eq!(read_pid(&pidfile), Some(new));
    crate::process_support::send_signal(new, "TERM");
    assert!(
        wait_until(Duration::from_secs(10), || crate::process_support::is_gone(new)),
        "the new master stops on TERM"
    );
    assert!(wait_until(Duration::from_secs(2), || !pidfile.exists()), "and removes its pidfile");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stops a master this test's server started (a binary upgrade's new master), by pid, when the
/// test ends however it ends: it holds the old one's output pipes open.
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let gone = || crate::process_support::is_gone(self.0);
        if !gone() {
            crate::process_support::send_signal(self.0, "TERM");
            if !wait_until(Duration::from_secs(5), gone) {
                crate::process_support::send_signal(self.0, "KILL");
            }
        }
    }
}

/// Rolling back an upgrade: after `USR2` and `WINCH`, `HUP` brings the old master's workers
/// back, and `TERM` to the new master leaves the old one serving with its pidfile back in place.
#[test]
fn a_binary_upgrade_rolls_back_with_hup() {
    let dir = PathBuf::from(format!("/tmp/sgi-rollback-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let app = dir.join("app");
    std::fs::copy(crate::process_support::example("prefork"), &app).unwrap();
    let pidfile = dir.join("app.pid");
    let pidfile_arg = pidfile.to_string_lossy().into_owned();
    let args = ["--runner", "prefork", "--workers", "2", "--threads", "2", "--pidfile", &pidfile_arg];
    let old = ServerProcess::start_program(&app, &args, &[], &["setsid"]);
    let addr = old.addr();
    assert!(wait_until(Duration::from_secs(5), || workers(old.pid).len() == 2));
    let read_pid = |path: &PathBuf| std::fs::read_to_string(path).ok().and_then(|p| p.trim().parse::<u32>().ok());
    let staged = dir.join("app.new");
    std::fs::copy(crate::process_support::example("dump"), &staged).unwrap();
    std::fs::rename(&staged, &app).unwrap();
    old.signal("USR2");
    assert!(wait_until(Duration::from_secs(10), || read_pid(&pidfile).is_some_and(|p| p != old.pid)));
    let new = read_pid(&pidfile).unwrap();
    let _new_guard = StopOnDrop(new);
    assert!(wait_until(Duration::from_secs(10), || workers(new).len() == 2));
    old.signal("WINCH");
    // The new master is the old one's child: the one left.
    assert!(wait_until(Duration::from_secs(10), || workers(old.pid) == BTreeSet::from([new])));
    // The new code is bad after all: the old workers come back, and the new master goes.
    old.signal("HUP");
    assert!(wait_until(Duration::from_secs(10), || workers(old.pid).len() == 3), "HUP brings the old workers back");
    crate::process_support::send_signal(new, "TERM");
    assert!(wait_until(Duration::from_secs(10), || crate::process_support::is_gone(new)));
    assert!(
        wait_until(Duration::from_secs(5), || read_pid(&pidfile) == Some(old.pid)),
        "the pidfile is the old master's again"
    );
    for _ in 0..10 {
        let body = ask(addr, "/").unwrap();
        assert!(body.starts_with("worker "), "answered by the new code: {body:?}");
    }
    drop(old);
    let _ = std::fs::remove_dir_all(&dir);
}
