//! Running like a service, through `sgi::Options` in the examples: the command line's exit
//! statuses, `--daemon` under a pseudo-terminal (checked in `/proc`), the pidfile and its lock,
//! sockets passed by systemd's protocol (`LISTEN_FDS`) or as `fd://N`, and `sd_notify`. Real
//! processes, 127.0.0.1 only, every wait bounded; each server test runs alone
//! (`process_support::exclusive`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::process_support::{example, exclusive, free_port, is_gone, send_signal, stat, wait_until};

/// A path in the temporary directory no other test uses.
fn temp_path(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("sgi-service-{}-{n}-{what}", std::process::id()))
}

/// Runs `command` to its end, for at most `limit` (then kills it and fails).
fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let until = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{command:?} did not end within {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `command` with no stdin and its output discarded.
fn spawn_quiet(command: &mut Command) -> std::process::Child {
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One `GET /` with `Connection: close` over any stream: the body of a 200, or why not.
fn get_over(mut stream: impl Read + Write) -> Result<String, String> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut got = String::new();
    stream.read_to_string(&mut got).map_err(|e| format!("read: {e}"))?;
    match got.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => Ok(body.to_string()),
        _ => Err(format!("got {got:?}")),
    }
}

fn get(addr: SocketAddr) -> Result<String, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    get_over(s)
}

fn get_unix(path: &Path) -> Result<String, String> {
    let s = UnixStream::connect(path).map_err(|e| format!("connect {}: {e}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    get_over(s)
}

/// A process this test started outside a `ServerProcess` (a daemon, a launched server): sent
/// `TERM` then `KILL` on drop if still alive, by its pid.
struct Started(u32);

impl Drop for Started {
    fn drop(&mut self) {
        if !is_gone(self.0) {
            send_signal(self.0, "TERM");
            if !wait_until(Duration::from_secs(5), || is_gone(self.0)) {
                send_signal(self.0, "KILL");
            }
        }
    }
}

fn read_pid(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

#[test]
fn unusable_options_exit_2_naming_the_option_and_check_config_serves_nothing() {
    let hello = example("hello");
    /// Arguments, environment, the option the message names.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (&["--workers", "x"], &[], "--workers"),
        (&[], &[("SGI_WORKERS", "x")], "SGI_WORKERS"),
        (&[], &[("WEB_CONCURRENCY", "-3")], "WEB_CONCURRENCY"),
        (&["--bind", "127.0.0.1:http"], &[], "--bind"),
        (&["--frobnicate"], &[], "--frobnicate"),
        (&["--runner", "pool", "--threads", "3"], &[], "--threads"),
        (&["--check-config", "--bind", "no-such-host.invalid:80"], &[], "--bind"),
    ];
    for (args, env, option) in cases {
        let out = run_bounded(Command::new(hello).args(*args).envs(env.iter().copied()), Duration::from_secs(10));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(option), "{args:?} {env:?}: {stderr}");
    }
    // A port in use is no error for --check-config: it binds nothing.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap().to_string();
    let out =
        run_bounded(Command::new(hello).args(["--check-config", "-b", &busy, "-w", "3"]), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("configuration OK"));
    let out = run_bounded(Command::new(hello).arg("--help"), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0));
    for option in ["--bind", "--daemon", "--pidfile", "SGI_CMD_ARGS", "WEB_CONCURRENCY"] {
        assert!(text(&out.stdout).contains(option), "--help lacks {option}");
    }
    // A port in use when serving is a failure to start, status 1, with the reason.
    let out = run_bounded(Command::new(hello).args(["-b", &busy]), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&format!("cannot bind {busy}")), "{}", text(&out.stderr));
}

/// `--daemon` started from a pseudo-terminal (so that a daemon that did not detach would keep
/// it): the command returns 0 once the daemon serves; the daemon has no controlling terminal,
/// leads no session, has its stdio on `/dev/null` and the error log, its cwd at `/`, and its pid
/// in the pidfile, which a second start is refused for and which is removed on `TERM`.
#[test]
fn a_daemon_detaches_for_good_and_holds_its_pidfile() {
    let _alone = exclusive();
    let pidfile = temp_path("daemon.pid");
    let log = temp_path("daemon.log");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let args = |bind: &str| {
        let mut c = Command::new("python3");
        // pty.spawn: the command runs in a new session with the pseudo-terminal as controlling
        // terminal and stdio.
        c.args(["-c", "import os, pty, sys; sys.exit(os.waitstatus_to_exitcode(pty.spawn(sys.argv[1:])))"])
            .arg(example("hello"))
            .args(["--daemon", "--bind", bind, "--pidfile"])
            .arg(&pidfile)
            .arg("--error-logfile")
            // Relative to where the command starts, though the daemon changes to `/`.
            .arg(log.file_name().unwrap())
            .current_dir(log.parent().unwrap());
        c
    };
    let out = run_bounded(&mut args(&addr.to_string()), Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    let pid = read_pid(&pidfile).expect("the pidfile holds the daemon's pid");
    let _daemon = Started(pid);
    // Serving when the command returned: no wait needed.
    assert!(get(addr).unwrap().contains("Hello"));
    let s = stat(pid).expect("the daemon runs");
    assert_eq!(s.tty_nr, 0, "no controlling terminal: {s:?}");
    assert_ne!(s.session, pid, "not a session leader (it could acquire a terminal): {s:?}");
    assert_ne!(s.pgrp, pid, "not a process group leader: {s:?}");
    let link = |what: &str| std::fs::read_link(format!("/proc/{pid}/{what}")).unwrap();
    assert_eq!(link("fd/0"), Path::new("/dev/null"));
    assert_eq!(link("fd/1"), Path::new("/dev/null"));
    assert_eq!(link("fd/2"), log);
    assert_eq!(link("cwd"), Path::new("/"));
    // A second start with the same pidfile is refused, on the terminal, while the first lives.
    let other = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let out = run_bounded(&mut args(&other.to_string()), Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("another instance is running"), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains(&pid.to_string()), "{}", text(&out.stdout));
    assert_eq!(read_pid(&pidfile), Some(pid), "the refused start left the pidfile alone");
    send_signal(pid, "TERM");
    assert!(wait_until(Duration::from_secs(10), || is_gone(pid)), "the daemon stops on TERM");
    assert!(wait_until(Duration::from_secs(2), || !pidfile.exists()), "the pidfile is removed on exit");
    let _ = std::fs::remove_file(&log);
}

/// A daemon that cannot serve (here: no prefork worker can boot) makes the command that
/// started it fail with the reason, instead of returning 0 for a service that is not there.
#[test]
fn a_daemon_that_cannot_start_fails_the_command_with_the_reason() {
    let _alone = exclusive();
    let flag = temp_path("noboot");
    std::fs::write(&flag, b"").unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let out = run_bounded(
        Command::new(example("prefork"))
            .args(["--daemon", "--workers", "1", "--bind", &addr.to_string()])
            .env("PREFORK_FAIL_IF_EXISTS", &flag),
        Duration::from_secs(20),
    );
    std::fs::remove_file(&flag).unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no worker could boot"), "{stderr}");
    assert!(TcpStream::connect(addr).is_err(), "nothing serves on {addr}");
}

/// Without `--daemon`: the pidfile holds the server's pid, a stale one (no lock held: its
/// process died) is replaced, a second instance is refused, and the file goes on `TERM`.
#[test]
fn a_pidfile_refuses_a_second_instance_and_replaces_a_stale_one() {
    let _alone = exclusive();
    let pidfile = temp_path("fg.pid");
    // What a crashed run leaves: a pid that may be anyone's now. The lock decides, not it.
    std::fs::write(&pidfile, "1\n").unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child =
        spawn_quiet(Command::new(example("hello")).args(["--bind", &addr.to_string(), "--pidfile"]).arg(&pidfile));
    let server = Started(child.id());
    assert!(wait_until(Duration::from_secs(10), || get(addr).is_ok()), "serves");
    assert_eq!(read_pid(&pidfile), Some(child.id()));
    let other = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let out = run_bounded(
        Command::new(example("hello")).args(["--bind", &other.to_string(), "--pidfile"]).arg(&pidfile),
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("another instance is running"), "{}", text(&out.stderr));
    assert!(TcpStream::connect(other).is_err(), "the refused instance does not serve");
    send_signal(server.0, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!pidfile.exists(), "removed on exit");
}

/// Starts `server args` the way systemd does: listening sockets on 127.0.0.1:`port` and at
/// `socket` on descriptors 3 and 4, `LISTEN_FDS=2`, `LISTEN_PID` the server's own pid (the
/// launcher execs it in place), `LISTEN_FDNAMES`. With `protocol` false, only the sockets
/// (for `fd://N`). Returns once the sockets listen.
fn launch(server: &Path, args: &[&str], protocol: bool, port: u16, socket: &Path) -> std::process::Child {
    const LAUNCHER: &str = r#"
import os, socket, sys
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("127.0.0.1", int(sys.argv[1])))
tcp.listen(128)
unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
unix.bind(sys.argv[2])
unix.listen(128)
copies = [os.dup(s.fileno()) for s in (tcp, unix)]
for i, fd in enumerate(copies):
    os.dup2(fd, 3 + i)
if sys.argv[3] == "1":
    os.environ.update(LISTEN_FDS="2", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="web:local")
print("launcher: listening", flush=True)
os.execv(sys.argv[4], sys.argv[4:])
"#;
    let mut child = Command::new("python3")
        .args(["-c", LAUNCHER, &port.to_string()])
        .arg(socket)
        .arg(if protocol { "1" } else { "0" })
        .arg(server)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "launcher: listening");
    // The rest of the server's stdout, drained so that it never blocks.
    thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    child
}

fn stop(mut child: std::process::Child) {
    send_signal(child.id(), "TERM");
    let until = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the server did not stop on TERM");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Socket activation on every runner: both passed sockets answer, and a server that did not
/// create the Unix socket file leaves it in place.
#[test]
fn every_runner_serves_the_sockets_systemd_passes() {
    for runner in ["serial", "threads", "pool", "fork", "event", "prefork"] {
        let _alone = exclusive();
        let (port, socket) = (free_port(), temp_path("activated.sock"));
        let child = launch(example("hello"), &["--runner", runner, "--workers", "2"], true, port, &socket);
        let _server = Started(child.id());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(wait_until(Duration::from_secs(10), || get(addr).is_ok()), "{runner}: TCP socket");
        assert!(get_unix(&socket).unwrap().contains("Hello"), "{runner}: Unix socket");
        stop(child);
        assert!(socket.exists(), "{runner}: the inherited socket's file is its creator's to remove");
        std::fs::remove_file(&socket).unwrap();
    }
}

/// A `--bind` for an address a passed socket already serves takes that socket (binding the
/// TCP address anew would fail: the passed socket holds it; a Unix socket bound anew would be
/// removed on exit); `fd://N` takes a descriptor passed without the protocol.
#[test]
fn binds_take_the_inherited_socket_for_their_address_and_fd_n() {
    let _alone = exclusive();
    let (port, socket) = (free_port(), temp_path("activated.sock"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let unix_bind = format!("unix:{}", socket.display());
    let child = launch(example("hello"), &["--bind", &addr.to_string(), "--bind", &unix_bind], true, port, &socket);
    let _server = Started(child.id());
    assert!(wait_until(Duration::from_secs(10), || get(addr).is_ok()), "the passed TCP socket answers");
    assert!(get_unix(&socket).is_ok());
    stop(child);
    assert!(socket.exists(), "the Unix socket was the passed one, not bound anew");
    std::fs::remove_file(&socket).unwrap();

    let (port, socket) = (free_port(), temp_path("activated.sock"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let child = launch(example("hello"), &["--bind", "fd://3", "--bind", "fd://4"], false, port, &socket);
    let _server = Started(child.id());
    assert!(wait_until(Duration::from_secs(10), || get(addr).is_ok()), "fd://3 answers");
    assert!(get_unix(&socket).is_ok(), "fd://4 answers");
    stop(child);
    std::fs::remove_file(&socket).unwrap();
}

/// Under `systemd-socket-activate` (Debian package `systemd`), systemd's own launcher.
#[test]
fn systemd_socket_activate_starts_it() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        panic!("systemd-socket-activate is required (Debian package systemd; .ci/run installs it)");
    }
    let _alone = exclusive();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = spawn_quiet(
        Command::new("systemd-socket-activate")
            .args(["--listen", &addr.to_string()])
            .arg(example("hello"))
            .args(["--runner", "event"]),
    );
    let _server = Started(child.id());
    // It starts the server on the first connection, which waits in the backlog meanwhile.
    assert!(wait_until(Duration::from_secs(10), || get(addr).is_ok()), "served through the activated socket");
    assert!(get(addr).unwrap().contains("Hello"));
    stop(child);
}

/// `NOTIFY_SOCKET`: `READY=1` with `MAINPID` once the server serves (prefork: once its workers
/// do), `STOPPING=1` when it stops.
#[test]
fn systemd_is_told_when_the_server_is_ready_and_stopping() {
    for runner in ["pool", "prefork"] {
        let _alone = exclusive();
        let path = temp_path("notify.sock");
        let notify = UnixDatagram::bind(&path).unwrap();
        notify.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = spawn_quiet(
            Command::new(example("hello"))
                .args(["--runner", runner, "--workers", "2", "--bind", &addr.to_string()])
                .env("NOTIFY_SOCKET", &path),
        );
        let pid = child.id();
        let _server = Started(pid);
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("a notification");
        assert_eq!(text(&buf[..n]), format!("READY=1\nMAINPID={pid}"), "{runner}");
        assert!(get(addr).is_ok(), "{runner}: serving once ready");
        send_signal(pid, "TERM");
        let n = notify.recv(&mut buf).expect("a notification");
        assert_eq!(text(&buf[..n]), "STOPPING=1", "{runner}");
        stop(child);
        std::fs::remove_file(&path).unwrap();
    }
}

/// `--reload`: replacing the executable (as `cargo build` does: a new file renamed over the
/// old) restarts the server as a new child that answers with the new code, while a client
/// connecting every 10 ms sees no refused connection and no failed request; killing the
/// supervisor ends the child.
#[test]
fn reload_restarts_on_a_new_executable_and_refuses_no_connection() {
    let _alone = exclusive();
    let dir = temp_path("reload");
    std::fs::create_dir(&dir).unwrap();
    let app = dir.join("app");
    std::fs::copy(example("hello"), &app).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut supervisor =
        spawn_quiet(Command::new(&app).args(["--reload", "--bind", &addr.to_string(), "--graceful-timeout", "5"]));
    let guard = Started(supervisor.id());
    assert!(wait_until(Duration::from_secs(10), || get(addr).is_ok_and(|b| b.contains("Hello"))));
    let children = || -> Vec<u32> {
        crate::process_support::children_of(guard.0).into_iter().filter(|s| s.state != 'Z').map(|s| s.pid).collect()
    };
    let first = children();
    assert_eq!(first.len(), 1, "one child serves: {first:?}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = std::sync::Arc::clone(&stop);
        thread::spawn(move || {
            let (mut answered, mut failures) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get(addr) {
                    Ok(_) => answered += 1,
                    Err(e) => failures.push(e),
                }
                thread::sleep(Duration::from_millis(10));
            }
            (answered, failures)
        })
    };
    thread::sleep(Duration::from_millis(300));
    let staged = dir.join("app.new");
    std::fs::copy(example("dump"), &staged).unwrap();
    std::fs::rename(&staged, &app).unwrap();
    let switched = wait_until(Duration::from_secs(15), || get(addr).is_ok_and(|b| b.contains("environ")));
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (answered, failures) = client.join().unwrap();
    assert!(switched, "the new executable never answered");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        answered + failures.len(),
        &failures[..failures.len().min(5)]
    );
    let second = children();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(first, second, "a new child serves");
    send_signal(guard.0, "KILL");
    supervisor.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || is_gone(second[0])), "the child outlived its supervisor");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `USR1` reopens the error log at its path (after `logrotate` moved it): the next line goes to
/// the new file. Under prefork the master forwards the signal to its workers, which log the
/// rejected requests themselves, and none of them dies of it.
#[test]
fn usr1_reopens_the_error_log_in_the_server_and_in_every_worker() {
    for runner in ["pool", "prefork"] {
        let _alone = exclusive();
        let log = temp_path("error.log");
        let rotated = temp_path("error.log.1");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = spawn_quiet(
            Command::new(example("hello"))
                .args(["--runner", runner, "--workers", "2", "--bind", &addr.to_string(), "--error-logfile"])
                .arg(&log),
        );
        let server = Started(child.id());
        assert!(wait_until(Duration::from_secs(10), || get(addr).is_ok()), "{runner}: serves");
        // A request line that is not HTTP: refused with 400, and logged.
        let refuse = || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"NOT HTTP\r\n\r\n").unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
        };
        let lines = |path: &Path| std::fs::read_to_string(path).unwrap_or_default().lines().count();
        refuse();
        assert!(wait_until(Duration::from_secs(5), || lines(&log) >= 1), "{runner}: the refusal is logged");
        std::fs::rename(&log, &rotated).unwrap();
        let before = lines(&rotated);
        let live = || -> Vec<u32> {
            let mut pids: Vec<u32> = crate::process_support::children_of(server.0)
                .into_iter()
                .filter(|s| s.state != 'Z')
                .map(|s| s.pid)
                .collect();
            pids.sort_unstable();
            pids
        };
        let workers = live();
        send_signal(server.0, "USR1");
        // Each worker reopens on its next line: refuse often enough to reach both.
        let reopened = wait_until(Duration::from_secs(10), || {
            refuse();
            lines(&log) >= 1
        });
        assert!(reopened, "{runner}: no line in the reopened log; the rotated one has {}", lines(&rotated));
        assert!(lines(&rotated) >= before);
        assert_eq!(live(), workers, "{runner}: no worker died of USR1");
        assert!(child.try_wait().unwrap().is_none(), "{runner}: USR1 stopped the server");
        stop(child);
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&rotated);
        drop(server);
    }
}

#[test]
fn the_access_log_has_each_response_as_sent_and_reopens_on_usr1() {
    for runner in ["pool", "prefork"] {
        let _alone = exclusive();
        let log = temp_path("access.log");
        let rotated = temp_path("access.log.1");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = spawn_quiet(
            Command::new(example("stream"))
                .args(["--runner", runner, "--workers", "2", "--bind", &addr.to_string()])
                .args(["--access-logformat", r#"%(s)s "%(r)s" %(B)s %(D)s "%(a)s""#, "--access-logfile"])
                .arg(&log),
        );
        let server = Started(child.id());
        let url = format!("http://{addr}/ticks?n=1");
        let curl = || {
            let out = Command::new("curl").args(["-sS", "-N", "-A", "probe/1", &url]).output().expect("curl runs");
            assert!(out.status.success(), "{runner}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()), "{runner}: serves");
        assert_eq!(curl().lines().count(), 10);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"NOT HTTP\r\n\r\n").unwrap();
        let _ = s.read_to_end(&mut Vec::new());
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        assert!(wait_until(Duration::from_secs(5), || read(&log).lines().count() >= 2), "{runner}: {:?}", read(&log));
        let text = read(&log);
        let lines: Vec<&str> = text.lines().collect();
        // The stream: 71 bytes over about a second, timed to its last byte.
        let fields: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(&fields[..4], ["200", "\"GET", "/ticks?n=1", "HTTP/1.1\""], "{runner}: {}", lines[0]);
        assert_eq!(fields[4], "71", "{runner}: {}", lines[0]);
        let micros: u64 = fields[5].parse().unwrap();
        assert!(micros >= 900_000, "{runner}: the stream took {micros} µs to its last byte, by the log");
        assert_eq!(fields[6], "\"probe/1\"");
        // Refused before any handler ran, with the status the client got.
        assert!(lines[1].starts_with("400 \"NOT HTTP\" 0 "), "{runner}: {}", lines[1]);
        assert!(lines[1].ends_with(" \"-\""), "{runner}: {}", lines[1]);

        std::fs::rename(&log, &rotated).unwrap();
        send_signal(server.0, "USR1");
        // Each worker reopens at its next line: ask until one lands in the new file.
        let reopened = wait_until(Duration::from_secs(15), || {
            curl();
            read(&log).lines().count() >= 1
        });
        assert!(reopened, "{runner}: nothing in the reopened access log");
        // Lines before the signal reached a worker went to the rotated file; none were lost.
        assert!(read(&rotated).lines().count() >= lines.len(), "{runner}: {:?}", read(&rotated));
        stop(child);
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&rotated);
        drop(server);
    }
}

#[test]
fn static_files_answer_curls_ranges_and_conditions_and_refuse_traversal_on_every_runner() {
    let css = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/assets/style.css")).unwrap();
    for runner in ["serial", "threads", "pool", "fork", "event", "prefork"] {
        let _alone = exclusive();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = spawn_quiet(Command::new(example("app")).args(["--runner", runner, "--bind", &addr.to_string()]));
        let server = Started(child.id());
        let url = |path: &str| format!("http://{addr}{path}");
        let curl = |args: &[&str]| {
            let out = Command::new("curl").args(["-sS", "--path-as-is", "-D", "-"]).args(args).output().unwrap();
            assert!(out.status.success(), "{runner}: curl {args:?}: {out:?}");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            (head.to_owned(), body.to_owned())
        };
        assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()), "{runner}: serves");
        let (head, body) = curl(&[&url("/static/style.css")]);
        assert!(head.starts_with("HTTP/1.1 200"), "{runner}: {head}");
        assert_eq!(body.as_bytes(), css, "{runner}");
        let etag = head.lines().find_map(|l| l.strip_prefix("ETag: ")).unwrap().to_owned();
        let modified = head.lines().find_map(|l| l.strip_prefix("Last-Modified: ")).unwrap().to_owned();
        // One range, an open one, a suffix, and one past the end.
        let (head, body) = curl(&["-r", "5-9", &url("/static/style.css")]);
        assert!(head.starts_with("HTTP/1.1 206"), "{runner}: {head}");
        assert!(head.contains(&format!("Content-Range: bytes 5-9/{}", css.len())), "{runner}: {head}");
        assert_eq!(body.as_bytes(), &css[5..10]);
        let (_, body) = curl(&["-r", "-6", &url("/static/style.css")]);
        assert_eq!(body.as_bytes(), &css[css.len() - 6..]);
        let (head, _) = curl(&["-r", "99999-", &url("/static/style.css")]);
        assert!(head.starts_with("HTTP/1.1 416"), "{runner}: {head}");
        assert!(head.contains(&format!("Content-Range: bytes */{}", css.len())), "{runner}: {head}");
        // Conditional requests: by entity tag, by date.
        let (head, body) = curl(&["-H", &format!("If-None-Match: {etag}"), &url("/static/style.css")]);
        assert!(head.starts_with("HTTP/1.1 304") && body.is_empty(), "{runner}: {head}");
        let (head, _) = curl(&["-H", &format!("If-Modified-Since: {modified}"), &url("/static/style.css")]);
        assert!(head.starts_with("HTTP/1.1 304"), "{runner}: {head}");
        // HEAD (curl prints its head twice here: once for -I, once for -D).
        let (head, rest) = curl(&["-I", &url("/static/style.css")]);
        assert!(head.contains(&format!("Content-Length: {}", css.len())), "{runner}: {head}");
        assert!(!rest.contains("font-family"), "{runner}: a body for HEAD");
        // Out of the root, however it is spelled.
        for path in ["/static/../app.rs", "/static/%2e%2e/app.rs", "/static/..%2fapp.rs", "/static/.%2E/app.rs"] {
            let (head, _) = curl(&[&url(path)]);
            assert!(head.starts_with("HTTP/1.1 404"), "{runner}: {path}: {head}");
        }
        stop(child);
        drop(server);
    }
}

#[test]
fn a_large_file_goes_out_whole_to_a_slow_reader_and_a_fast_one_on_every_runner() {
    let dir = temp_path("files");
    std::fs::create_dir_all(&dir).unwrap();
    // Larger than any socket buffer: sendfile meets a full socket and the connection waits.
    let contents: Vec<u8> = (0..6_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(dir.join("big.bin"), &contents).unwrap();
    for runner in ["serial", "threads", "pool", "fork", "event", "prefork"] {
        let _alone = exclusive();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = spawn_quiet(Command::new(example("files")).env("FILES_ROOT", &dir).args([
            "--runner",
            runner,
            "--bind",
            &addr.to_string(),
        ]));
        let server = Started(child.id());
        assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()), "{runner}: serves");
        let url = format!("http://{addr}/big.bin");
        for rate in [None, Some("20M")] {
            let mut curl = Command::new("curl");
            curl.args(["-sS", "--fail", &url]);
            if let Some(rate) = rate {
                curl.args(["--limit-rate", rate]);
            }
            let out = curl.output().unwrap();
            assert!(out.status.success(), "{runner} {rate:?}: {:?}", String::from_utf8_lossy(&out.stderr));
            assert!(out.stdout == contents, "{runner} {rate:?}: {} bytes, not the file's", out.stdout.len());
        }
        stop(child);
        drop(server);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
