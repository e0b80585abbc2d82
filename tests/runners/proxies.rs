//! sgi behind the real thing: nginx (Debian's 1.22) and HAProxy (2.6), each test running its own
//! instance in the foreground, as the current user, on free ports of 127.0.0.1, with its config,
//! logs, and nginx's pid file and temporary paths in a directory of its own. The system services are
//! never started (`.ci/run` installs the packages with a `policy-rc.d` that forbids it).
//!
//! The whole of 127.0.0.0/8 is routed to `lo` on Linux, so three loopback addresses tell the
//! parties apart: the client connects from 127.0.0.3 (bound before connecting, with `socket2`),
//! the proxies connect to sgi from 127.0.0.2 (`proxy_bind`, `source`), and sgi listens on
//! 127.0.0.1 trusting 127.0.0.2 alone. A client on a trusted address would be skipped by the
//! rightmost-untrusted rule of `X-Forwarded-For`, and its spoof believed, as documented: the test
//! would then prove nothing.
//!
//! Every proxy is stopped by a guard (SIGTERM, then SIGKILL after a bound, with nginx's workers),
//! so a failing assertion leaves nothing running. The sgi server is a `ServerProcess`, which holds
//! `process_support::exclusive` for its life, hence for the whole test: the proxies are started
//! after it and stopped before it.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::process_support::{
    children_of, free_port, is_gone, wait_until, Http, Response, ServerProcess, READ_TIMEOUT,
};

/// Where the test's client connects from: an address no server here trusts.
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Where the proxies connect to sgi from: the one address sgi trusts (TCP tests).
const PROXY_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The access log's format in these tests: the address sgi logs and what the proxy sent.
const ACCESS_FORMAT: &str = r#"%(h)s "%(r)s" %(s)s "%({x-forwarded-for}i)s""#;

/// How long a proxy may take to accept connections, or to exit on SIGTERM.
const PROXY_BOUND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Temporary directories, proxies and their guard.
// ---------------------------------------------------------------------------------------------

/// A directory of the test's own, mode 0755 whatever the umask: nginx's workers, which run as
/// another user when the test runs as root, must be able to traverse it to reach a socket in it.
/// Removed on drop, unless the test is failing (then kept, and named, for a look at the logs).
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sgi-proxies-{}-{n}-{what}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Fails, saying why, when another user could not reach this directory (a `TMPDIR` inside
    /// root's home, say): every ancestor must be searchable by others.
    fn assert_reachable_by_others(&self) {
        for dir in self.0.ancestors() {
            let mode = std::fs::metadata(dir).unwrap().permissions().mode();
            assert!(
                mode & 0o001 != 0,
                "{} (mode {mode:o}) is not searchable by nginx's worker user: set TMPDIR elsewhere",
                dir.display()
            );
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("proxies: the failed test's files are kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A program in `PATH` or in the sbin directories, which are not on a non-root user's `PATH`.
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is required by these tests (Debian package {name}; .ci/run installs it)"))
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and has no memory effects.
    unsafe { libc::geteuid() == 0 }
}

/// A proxy running in the foreground as this test's child. Dropping it stops it: SIGTERM, up to
/// [`PROXY_BOUND`] for it to exit (nginx's master stops its workers first), then SIGKILL to it
/// and to any child it had (nginx's workers, which a killed master would leave serving).
struct Proxy {
    name: &'static str,
    child: Child,
    /// The ports it listens on, in the order its config lists them.
    ports: Vec<u16>,
    /// Its error log and captured output, for failure messages.
    logs: Vec<PathBuf>,
}

impl Proxy {
    /// Starts the proxy `command` builds for free ports (as many as `ports`) and waits until every
    /// port accepts; tries other ports twice if it exits first (a port taken meanwhile).
    fn start(dir: &TempDir, name: &'static str, ports: usize, command: impl Fn(&[u16]) -> Command) -> Proxy {
        let mut last = String::new();
        for _ in 0..3 {
            let mut chosen: Vec<u16> = Vec::new();
            while chosen.len() < ports {
                let port = free_port();
                if !chosen.contains(&port) {
                    chosen.push(port);
                }
            }
            let out_path = dir.join(&format!("{name}.out"));
            let out = File::create(&out_path).unwrap();
            let child = command(&chosen)
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("start {name}: {e}"));
            let mut proxy =
                Proxy { name, child, ports: chosen, logs: vec![out_path, dir.join(&format!("{name}-error.log"))] };
            match proxy.wait_ready() {
                Ok(()) => return proxy,
                Err(why) => last = why,
            }
        }
        panic!("{name} never accepted connections: {last}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let until = Instant::now() + PROXY_BOUND;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exited with {status}:\n{}", self.logs()));
            }
            let accepting = self.ports.iter().all(|&port| {
                TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200))
                    .is_ok()
            });
            if accepting {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!("not accepting after {PROXY_BOUND:?}:\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    /// Everything it logged so far.
    fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|path| format!("== {}\n{}", path.display(), std::fs::read_to_string(path).unwrap_or_default()))
            .collect()
    }

    /// Its live child processes (nginx's workers).
    fn children(&self) -> Vec<u32> {
        children_of(self.child.id()).into_iter().filter(|s| s.state != 'Z').map(|s| s.pid).collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let pid = self.child.id();
        let children = self.children();
        if self.child.try_wait().unwrap_or(None).is_none() {
            // SAFETY: kill has no memory effects; the pid is our unreaped child's.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            let until = Instant::now() + PROXY_BOUND;
            while self.child.try_wait().unwrap_or(None).is_none() {
                if Instant::now() > until {
                    eprintln!("proxies: {} did not exit on SIGTERM; killing it", self.name);
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for child in children {
            if !is_gone(child) {
                // SAFETY: as above; a worker outliving its killed master.
                unsafe { libc::kill(child as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// nginx in the foreground (`daemon off`), one worker, everything it writes in `dir`; `http` is
/// the body of its `http` block after the temp paths. `-e` sends the log of its start-up there too
/// (before the config is read, nginx would open Debian's compiled-in log path). As root, the
/// worker switches to nginx's default user (`nobody`), which is the point of the Unix socket test.
fn nginx(dir: &TempDir, http: impl Fn(u16) -> String) -> Proxy {
    Proxy::start(dir, "nginx", 1, |ports| {
        let d = dir.0.display();
        let config = format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes 1;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             access_log {d}/nginx-access.log;\n\
             client_body_temp_path {d}/client_body;\n\
             proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             {}\n\
             }}\n",
            http(ports[0])
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(program("nginx"));
        command.arg("-p").arg(&dir.0).arg("-c").arg(&path).arg("-e").arg(dir.join("nginx-error.log"));
        command
    })
}

/// HAProxy in the foreground (`-db`), its config the given sections after common defaults, which
/// get the frontends' ports in order. It needs no pid file: it stays our child, stopped by pid.
fn haproxy(dir: &TempDir, frontends: usize, sections: impl Fn(&[u16]) -> String) -> Proxy {
    Proxy::start(dir, "haproxy", frontends, |ports| {
        let config = format!(
            "global\n    \
                 nbthread 1\n\
             defaults\n    \
                 timeout connect 5s\n    \
                 timeout client 10s\n    \
                 timeout server 10s\n\
             {}",
            sections(ports)
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(program("haproxy"));
        command.arg("-db").arg("-f").arg(&path);
        command
    })
}

// ---------------------------------------------------------------------------------------------
// The client and what sgi saw.
// ---------------------------------------------------------------------------------------------

/// A connection to `to` from `source` (port chosen by the kernel), and that port.
fn connect_from(source: Ipv4Addr, to: SocketAddr) -> (Http<TcpStream>, u16) {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap_or_else(|e| panic!("bind {source}:0: {e}"));
    socket.connect_timeout(&to.into(), Duration::from_secs(2)).unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    let port = stream.local_addr().unwrap().port();
    (Http::new(stream), port)
}

/// Sends `GET path` with `headers` (keep-alive) and reads the response.
fn request(http: &mut Http<TcpStream>, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: proxied.test\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    http.send(head.as_bytes()).unwrap_or_else(|e| panic!("send {path}: {e}"));
    http.read_response().unwrap_or_else(|e| panic!("response to {path}: {e}"))
}

/// The environ `dump` answered `GET path` with, as strings.
fn dump(http: &mut Http<TcpStream>, path: &str, headers: &[(&str, &str)]) -> HashMap<String, String> {
    let response = request(http, path, headers);
    let body = String::from_utf8_lossy(&response.body);
    assert_eq!(response.head.status, 200, "{path}: {body}");
    let value: serde_json::Value =
        serde_json::from_slice(&response.body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
    let environ = value["environ"].as_object().unwrap_or_else(|| panic!("{path}: no environ: {body}"));
    environ.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()
}

/// A variable of the environ, `""` when absent (sgi leaves `REMOTE_ADDR` empty on a Unix socket).
fn var<'a>(environ: &'a HashMap<String, String>, name: &str) -> &'a str {
    environ.get(name).map_or("", String::as_str)
}

/// One access log line in [`ACCESS_FORMAT`].
#[derive(Debug)]
struct Logged {
    host: String,
    request: String,
    status: String,
    forwarded_for: String,
}

/// The access log's lines once there are at least `count` (a line is written when the response's
/// last byte is out, which can be a moment after the client has it).
fn access_log(path: &Path, count: usize) -> Vec<Logged> {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(5), || read().lines().count() >= count),
        "fewer than {count} lines in the access log:\n{}",
        read()
    );
    read()
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split('"').collect();
            assert_eq!(parts.len(), 5, "not in the test's format: {line:?}");
            Logged {
                host: parts[0].trim().to_string(),
                request: parts[1].to_string(),
                status: parts[2].trim().to_string(),
                forwarded_for: parts[3].to_string(),
            }
        })
        .collect()
}

/// The line logged for `GET path`.
fn logged<'a>(lines: &'a [Logged], path: &str) -> &'a Logged {
    let request = format!("GET {path} HTTP/1.1");
    let mut found = lines.iter().filter(|l| l.request == request);
    let line = found.next().unwrap_or_else(|| panic!("no access log line for {request}: {lines:#?}"));
    assert!(found.next().is_none(), "{request} logged twice: {lines:#?}");
    line
}

/// The TCP connections from `source` to `server` the kernel knows of, in any state but LISTEN:
/// their source ports, and how many are established. Read from `/proc/net/tcp`, whose addresses
/// are the raw `be32` printed as a native integer.
fn connections(source: Ipv4Addr, server: SocketAddr) -> (BTreeSet<u16>, usize) {
    let parse = |field: &str| -> (Ipv4Addr, u16) {
        let (ip, port) = field.split_once(':').unwrap();
        let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).unwrap().to_ne_bytes());
        (ip, u16::from_str_radix(port, 16).unwrap())
    };
    let SocketAddr::V4(v4) = server else { panic!("{server} is not IPv4") };
    // Thousands of TIME_WAIT lines of other tests can be there: parse only the server's.
    let server_hex = format!("{:08X}:{:04X}", u32::from_ne_bytes(v4.ip().octets()), v4.port());
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let (mut ports, mut established) = (BTreeSet::new(), 0);
    for line in table.lines().skip(1).filter(|line| line.contains(&server_hex)) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state) = (parse(fields[1]), parse(fields[2]), fields[3]);
        // Either side's socket: a closed connection lingers in TIME_WAIT on the side that closed
        // it first only. Established ones are counted once, on sgi's side.
        if SocketAddr::from(local) == server && remote.0 == source && state != "0A" {
            ports.insert(remote.1);
            established += usize::from(state == "01");
        } else if local.0 == source && SocketAddr::from(remote) == server {
            ports.insert(local.1);
        }
    }
    (ports, established)
}

/// The upstream connections a proxy opened to sgi from `source`, sampled after each response:
/// the connection that carried it is open then (a proxy that does not keep it closes it after,
/// and it may vanish at once: HAProxy resets them rather than leave a TIME_WAIT). Connections
/// there before the first request (TIME_WAIT from an earlier server on the same port) are left
/// out.
struct Upstreams {
    source: Ipv4Addr,
    server: SocketAddr,
    stale: BTreeSet<u16>,
    seen: BTreeSet<u16>,
}

impl Upstreams {
    fn new(source: Ipv4Addr, server: SocketAddr) -> Upstreams {
        Upstreams { source, server, stale: connections(source, server).0, seen: BTreeSet::new() }
    }

    /// Takes a sample; how many of the connections are established now.
    fn sample(&mut self) -> usize {
        let (ports, established) = connections(self.source, self.server);
        self.seen.extend(ports.difference(&self.stale));
        established
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

/// nginx in front over TCP, with upstream keep-alive, as the README's setup; `X-Forwarded-Proto:
/// https` set by nginx stands for TLS terminated there. sgi trusts nginx's address (127.0.0.2)
/// only: the client's spoofed `X-Forwarded-For` is ignored (the rightmost untrusted address is
/// the client's, which nginx appended), the scheme is nginx's; straight to sgi, neither header of
/// the same client is believed. The upstream connections are fewer than the requests (counted in
/// `/proc/net/tcp`: without `keepalive` there would be one per request, each left in TIME_WAIT),
/// and the access log names the client, not nginx.
#[test]
fn nginx_over_tcp_with_upstream_keepalive() {
    let dir = TempDir::new("nginx-tcp");
    let log = dir.join("sgi-access.log");
    let log_arg = log.to_str().unwrap();
    let server = ServerProcess::start(
        "dump",
        &["--forwarded-allow-ips", "127.0.0.2", "--access-logfile", log_arg, "--access-logformat", ACCESS_FORMAT],
    );
    let upstream = server.addr();
    let nginx = nginx(&dir, |port| {
        format!(
            "upstream sgi {{ server {upstream}; keepalive 4; }}\n\
             server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{\n\
             proxy_pass http://sgi;\n\
             proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             proxy_set_header X-Forwarded-Proto https;\n\
             proxy_bind {PROXY_SOURCE};\n\
             }}\n\
             }}"
        )
    });
    let spoof = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "http")];
    let (mut sent, mut upstreams) = (0, Upstreams::new(PROXY_SOURCE, upstream));
    // Four client connections, two requests on each; every other request spoofs.
    for c in 0..4 {
        let (mut http, _) = connect_from(CLIENT, nginx.addr(0));
        for r in 0..2 {
            let (path, spoofed) = (format!("/nginx/{c}/{r}"), (c + r) % 2 == 1);
            let environ = dump(&mut http, &path, if spoofed { &spoof } else { &[] });
            let why = format!("{path}: {environ:?}\n{}", nginx.logs());
            let sent_for = if spoofed { "6.6.6.6, 127.0.0.3" } else { "127.0.0.3" };
            assert_eq!(var(&environ, "HTTP_X_FORWARDED_FOR"), sent_for, "what nginx sent; {why}");
            assert_eq!(var(&environ, "REMOTE_ADDR"), "127.0.0.3", "{why}");
            assert_eq!(var(&environ, "REMOTE_PORT"), "0", "X-Forwarded-For has no port; {why}");
            assert_eq!(var(&environ, "wsgi.url_scheme"), "https", "{why}");
            assert_eq!(var(&environ, "SERVER_PORT"), upstream.port().to_string(), "{why}");
            upstreams.sample();
            sent += 1;
        }
    }

    // Straight to sgi, from the client's address and from 127.0.0.1 (trusted by default, not by
    // this server's list): both spoofs ignored.
    let direct = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https")];
    for (source, path) in [(CLIENT, "/direct/3"), (Ipv4Addr::LOCALHOST, "/direct/1")] {
        let (mut http, port) = connect_from(source, upstream);
        let environ = dump(&mut http, path, &direct);
        assert_eq!(var(&environ, "REMOTE_ADDR"), source.to_string(), "{path}: {environ:?}");
        assert_eq!(var(&environ, "REMOTE_PORT"), port.to_string(), "{path}: {environ:?}");
        assert_eq!(var(&environ, "wsgi.url_scheme"), "http", "{path}: {environ:?}");
    }

    let established = upstreams.sample();
    let used = &upstreams.seen;
    assert!(
        !used.is_empty() && used.len() <= 2,
        "{sent} sequential requests through nginx used upstream connections from ports {used:?}"
    );
    assert!(established >= 1, "nginx keeps an idle upstream connection open");

    let lines = access_log(&log, sent + 2);
    assert_eq!(lines.len(), sent + 2, "{lines:#?}");
    for c in 0..4 {
        for r in 0..2 {
            let line = logged(&lines, &format!("/nginx/{c}/{r}"));
            let sent_for = if (c + r) % 2 == 1 { "6.6.6.6, 127.0.0.3" } else { "127.0.0.3" };
            assert_eq!((line.host.as_str(), line.status.as_str()), ("127.0.0.3", "200"), "{line:?}");
            assert_eq!(line.forwarded_for, sent_for, "{line:?}");
        }
    }
    assert_eq!(logged(&lines, "/direct/3").host, "127.0.0.3");
    assert_eq!(logged(&lines, "/direct/1").host, "127.0.0.1");
    drop(nginx);
    drop(server);
}

/// nginx in front over a Unix socket: Unix peers are trusted by default, so the client's address
/// comes from the `X-Forwarded-For` nginx sends (straight over the socket, without it, the
/// address is empty). The socket must be connectable by nginx's worker, which runs as `nobody`
/// when the test runs as root: sgi creates it under `--umask 000` (mode 0777: connecting needs
/// write permission on the socket) in a directory of mode 0755 that only its owner can change;
/// a socket made under the usual umask 022 would refuse the worker (502 from nginx).
#[test]
fn nginx_over_a_unix_socket() {
    let dir = TempDir::new("nginx-unix");
    if is_root() {
        dir.assert_reachable_by_others();
    }
    let socket = dir.join("sgi.sock");
    let log = dir.join("sgi-access.log");
    let log_arg = log.to_str().unwrap();
    let server = ServerProcess::start_unix(
        "dump",
        &socket,
        &["--runner", "event", "--umask", "000", "--access-logfile", log_arg, "--access-logformat", ACCESS_FORMAT],
    );
    let nginx = nginx(&dir, |port| {
        format!(
            "server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{\n\
             proxy_pass http://unix:{}:;\n\
             proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             proxy_set_header X-Forwarded-Proto $scheme;\n\
             }}\n\
             }}",
            socket.display()
        )
    });
    if is_root() {
        // The master listens before it forks its worker, which then switches user: wait for it.
        let uid = |pid: u32| -> Option<String> {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1).map(str::to_string)
        };
        let mut workers = Vec::new();
        let switched = wait_until(PROXY_BOUND, || {
            workers = nginx.children().into_iter().map(|pid| (pid, uid(pid))).collect();
            workers.len() == 1 && workers[0].1.as_ref().is_some_and(|uid| uid != "0")
        });
        assert!(switched, "one nginx worker, not running as root: (pid, uid) {workers:?}\n{}", nginx.logs());
    }
    let spoof = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https")];
    for (i, headers) in [&[][..], &spoof[..], &[][..]].into_iter().enumerate() {
        let (mut http, _) = connect_from(CLIENT, nginx.addr(0));
        let path = format!("/unix/{i}");
        let environ = dump(&mut http, &path, headers);
        let why = format!("{path}: {environ:?}\n{}", nginx.logs());
        assert_eq!(var(&environ, "REMOTE_ADDR"), "127.0.0.3", "{why}");
        assert_eq!(var(&environ, "REMOTE_PORT"), "0", "{why}");
        // nginx replaced the client's X-Forwarded-Proto with its own scheme.
        assert_eq!(var(&environ, "HTTP_X_FORWARDED_PROTO"), "http", "{why}");
        assert_eq!(var(&environ, "wsgi.url_scheme"), "http", "{why}");
        assert_eq!(var(&environ, "SERVER_NAME"), socket.to_str().unwrap(), "{why}");
    }
    // Straight over the socket, no forwarding header: no address at all.
    let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut http = Http::new(stream);
    http.send(b"GET /unix/direct HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let response = http.read_response().unwrap();
    let value: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(value["environ"]["REMOTE_ADDR"], "", "{value}");

    let lines = access_log(&log, 4);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(logged(&lines, "/unix/0").host, "127.0.0.3");
    assert_eq!(logged(&lines, "/unix/1").host, "127.0.0.3");
    assert_eq!(logged(&lines, "/unix/1").forwarded_for, "6.6.6.6, 127.0.0.3");
    assert_eq!(logged(&lines, "/unix/direct").host, "-");
    drop(nginx);
    drop(server);
}

/// HAProxy sending the PROXY protocol, from 127.0.0.2, the one peer sgi (`--proxy-protocol`,
/// prefork) allows it from: v2 in `mode tcp` and in `mode http`, v1 in `mode tcp`, two requests
/// on each client connection. The addresses of the client's connection to HAProxy become
/// `REMOTE_ADDR`/`REMOTE_PORT`/`SERVER_NAME`/`SERVER_PORT`, for the second request too.
/// Straight to sgi: no PROXY header from an allowed peer is a 400, and so is a well-formed one
/// from a peer not allowed (127.0.0.1 is allowed by default, not by this list). HAProxy's health
/// checks, whose PROXY header names no client, are answered and logged with HAProxy's address.
#[test]
fn haproxy_sends_the_proxy_protocol() {
    let dir = TempDir::new("haproxy-pp");
    let log = dir.join("sgi-access.log");
    let log_arg = log.to_str().unwrap();
    let server = ServerProcess::start(
        "dump",
        &[
            "--runner",
            "prefork",
            "--workers",
            "2",
            "--proxy-protocol",
            "--proxy-allow-from",
            "127.0.0.2",
            "--access-logfile",
            log_arg,
            "--access-logformat",
            ACCESS_FORMAT,
        ],
    );
    let upstream = server.addr();
    // The v2 header in `mode http` carries TLVs (a CRC32c, a unique id), which sgi skips.
    let cases =
        [("tcp", "send-proxy-v2"), ("http", "send-proxy-v2 proxy-v2-options crc32c,unique-id"), ("tcp", "send-proxy")];
    let haproxy = haproxy(&dir, cases.len(), |ports| {
        let mut config = String::new();
        for (i, (mode, send)) in cases.iter().enumerate() {
            let unique_id =
                if *mode == "http" { "    unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt\n" } else { "" };
            // Health checks send a PROXY header too, for no client: v2's LOCAL command (sgi keeps
            // the connection's addresses), v1 the check connection's own addresses.
            config.push_str(&format!(
                "frontend fe{i}\n    mode {mode}\n    bind 127.0.0.1:{}\n{unique_id}    default_backend be{i}\n\
                 backend be{i}\n    mode {mode}\n    source {PROXY_SOURCE}\n    option httpchk GET /check/{i}\n    \
                 server sgi {upstream} {send} check inter 100ms\n",
                ports[i]
            ));
        }
        config
    });
    for (i, (mode, send)) in cases.iter().enumerate() {
        let (mut http, port) = connect_from(CLIENT, haproxy.addr(i));
        for r in 0..2 {
            let path = format!("/haproxy/{i}/{r}");
            let environ = dump(&mut http, &path, &[]);
            let why = format!("mode {mode}, {send}, {path}: {environ:?}\n{}", haproxy.logs());
            assert_eq!(var(&environ, "REMOTE_ADDR"), "127.0.0.3", "{why}");
            assert_eq!(var(&environ, "REMOTE_PORT"), port.to_string(), "{why}");
            assert_eq!(var(&environ, "SERVER_NAME"), "127.0.0.1", "{why}");
            assert_eq!(var(&environ, "SERVER_PORT"), haproxy.ports[i].to_string(), "{why}");
            assert_eq!(var(&environ, "wsgi.url_scheme"), "http", "{why}");
        }
    }

    let refused = |source: Ipv4Addr, bytes: &[u8]| {
        let (mut http, _) = connect_from(source, upstream);
        http.send(bytes).unwrap();
        let response = http.read_response().unwrap_or_else(|e| panic!("from {source}: {e}"));
        assert_eq!(response.head.status, 400, "from {source}: {}", String::from_utf8_lossy(&response.body));
    };
    refused(PROXY_SOURCE, b"GET /no-header HTTP/1.1\r\nHost: x\r\n\r\n");
    refused(
        Ipv4Addr::LOCALHOST,
        b"PROXY TCP4 6.6.6.6 127.0.0.1 6666 80\r\nGET /not-allowed HTTP/1.1\r\nHost: x\r\n\r\n",
    );

    let lines = access_log(&log, 2 * cases.len());
    for i in 0..cases.len() {
        for r in 0..2 {
            assert_eq!(logged(&lines, &format!("/haproxy/{i}/{r}")).host, "127.0.0.3", "{lines:#?}");
        }
    }
    for (i, (mode, send)) in cases.iter().enumerate() {
        let check = format!("GET /check/{i} HTTP/1.0");
        let checked = wait_until(Duration::from_secs(5), || {
            let lines = access_log(&log, 0);
            let checks: Vec<&Logged> = lines.iter().filter(|l| l.request == check).collect();
            assert!(
                checks.iter().all(|l| l.host == "127.0.0.2" && l.status == "200"),
                "mode {mode}, {send}: {checks:#?}"
            );
            !checks.is_empty()
        });
        assert!(checked, "mode {mode}, {send}: no health check answered\n{}", haproxy.logs());
    }
    drop(haproxy);
    drop(server);
}

/// HAProxy in `mode http` with `option forwardfor` (which adds an `X-Forwarded-For` field of its
/// own after a client's), its `X-Forwarded-Proto: https` standing for TLS terminated there, and
/// `http-reuse always`: sgi, trusting 127.0.0.2 alone, takes the client's address and HAProxy's
/// scheme whatever the client spoofed, and the requests of four client connections share fewer
/// upstream connections.
#[test]
fn haproxy_forwardfor_over_reused_connections() {
    let dir = TempDir::new("haproxy-xff");
    let server = ServerProcess::start("dump", &["--runner", "threads", "--forwarded-allow-ips", "127.0.0.2"]);
    let upstream = server.addr();
    let haproxy = haproxy(&dir, 1, |ports| {
        format!(
            "frontend fe\n    mode http\n    bind 127.0.0.1:{}\n    option forwardfor\n    \
                 http-request set-header X-Forwarded-Proto https\n    default_backend be\n\
             backend be\n    mode http\n    http-reuse always\n    source {PROXY_SOURCE}\n    server sgi {upstream}\n",
            ports[0]
        )
    });
    let spoof = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "http")];
    let (mut sent, mut upstreams) = (0, Upstreams::new(PROXY_SOURCE, upstream));
    for c in 0..4 {
        let (mut http, _) = connect_from(CLIENT, haproxy.addr(0));
        for r in 0..2 {
            let (path, spoofed) = (format!("/reuse/{c}/{r}"), (c + r) % 2 == 1);
            let environ = dump(&mut http, &path, if spoofed { &spoof } else { &[] });
            let why = format!("{path}: {environ:?}\n{}", haproxy.logs());
            let sent_for = if spoofed { "6.6.6.6,127.0.0.3" } else { "127.0.0.3" };
            assert_eq!(var(&environ, "HTTP_X_FORWARDED_FOR").replace(' ', ""), sent_for, "{why}");
            assert_eq!(var(&environ, "REMOTE_ADDR"), "127.0.0.3", "{why}");
            assert_eq!(var(&environ, "HTTP_X_FORWARDED_PROTO"), "https", "{why}");
            assert_eq!(var(&environ, "wsgi.url_scheme"), "https", "{why}");
            upstreams.sample();
            sent += 1;
        }
    }
    let established = upstreams.sample();
    let used = &upstreams.seen;
    assert!(
        !used.is_empty() && used.len() <= 2,
        "{sent} sequential requests through HAProxy used upstream connections from ports {used:?}"
    );
    assert!(established >= 1, "HAProxy keeps an idle upstream connection open");
    drop(haproxy);
    drop(server);
}
