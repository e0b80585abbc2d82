//! The server builder: addresses it binds, names it resolves, and how it reports what it cannot do.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

fn hello() -> impl sgi::Handler {
    sgi::handler_fn(|env, start_response| {
        let body = format!("{} {}", env.get("SERVER_NAME").unwrap_or("?"), env.get("REMOTE_ADDR").unwrap_or("?"));
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    })
}

fn get(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

#[test]
fn serves_ipv6_loopback() {
    let server = match sgi::Server::bind((Ipv6Addr::LOCALHOST, 0)) {
        Ok(server) => server,
        // A machine without IPv6 cannot run this test; say so rather than pass quietly.
        Err(e) => panic!("cannot bind [::1]:0 ({e:?}); this test needs IPv6 on loopback"),
    };
    let addr = server.local_addr().expect("address");
    assert!(addr.is_ipv6());
    let stop = server.shutdown_handle();
    let serving = std::thread::spawn(move || server.handle_signals(false).serve(hello()));
    let response = get(addr);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\n::1 ::1"), "{response}");
    stop.shutdown();
    serving.join().expect("server thread").expect("serve");
}

#[test]
fn listen_takes_host_port_and_unix_paths() {
    let tcp = sgi::Server::listen("127.0.0.1:0").expect("tcp");
    assert_eq!(tcp.local_addr().expect("address").ip().to_string(), "127.0.0.1");
    let path = std::env::temp_dir().join(format!("sgi-server-test-{}.sock", std::process::id()));
    let unix = sgi::Server::listen(&format!("unix:{}", path.display())).expect("unix");
    assert!(path.exists());
    assert!(unix.local_addr().is_err(), "a unix socket has no IP address");
    drop(unix);
    assert!(!path.exists(), "the socket file goes with the server");
}

#[test]
fn binding_a_taken_port_says_which_address_and_why() {
    let first = sgi::Server::bind("127.0.0.1:0").expect("first");
    let addr = first.local_addr().expect("address");
    let err = sgi::Server::bind(addr).expect_err("address in use");
    assert_eq!(err.to_string(), format!("cannot bind {addr}"));
    let source = std::error::Error::source(&err).expect("the io error is the source");
    let io = source.downcast_ref::<std::io::Error>().expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
    match err {
        sgi::Error::Bind(b) => assert_eq!(b.addr(), addr.to_string()),
        other => panic!("expected Bind, got {other:?}"),
    }
    let missing = sgi::Server::bind_unix("/nonexistent-dir/sgi.sock").expect_err("no such directory");
    assert_eq!(missing.to_string(), "cannot bind unix:/nonexistent-dir/sgi.sock");
}

#[test]
fn unknown_runner_names_say_which_exist() {
    let err = sgi::runner::by_name("gevent", 4).err().expect("unknown runner");
    let message = err.to_string();
    assert!(matches!(err, sgi::Error::UnknownRunner(_)));
    for name in sgi::runner::NAMES {
        assert!(message.contains(name), "{message}");
        assert_eq!(sgi::runner::by_name(name, 4).expect("known").name(), *name);
    }
}

/// Sends one request on `stream` and reads its whole (Content-Length framed) response.
fn exchange(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if response.len() >= end + 4 + len {
                return Ok(text.into_owned());
            }
        }
    }
}

#[test]
fn pool_stops_accepting_at_its_connection_cap_and_resumes_when_one_closes() {
    let server = sgi::Server::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("address");
    let stop = server.shutdown_handle();
    let runner = sgi::runner::ThreadPool::new(2).max_connections(2);
    let serving = std::thread::spawn(move || server.handle_signals(false).runner(runner).serve(hello()));

    let mut first = TcpStream::connect(addr).expect("first");
    let mut second = TcpStream::connect(addr).expect("second");
    for stream in [&mut first, &mut second] {
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        assert!(exchange(stream).expect("served").starts_with("HTTP/1.1 200 OK"));
    }
    // Both slots are taken by idle keep-alive connections: the third waits in the backlog.
    let mut third = TcpStream::connect(addr).expect("third connects (backlog)");
    third.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let early = exchange(&mut third);
    assert!(early.is_err(), "answered beyond the cap: {early:?}");

    drop(first);
    third.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut rest = [0u8; 1024];
    let mut response = Vec::new();
    while !String::from_utf8_lossy(&response).contains("\r\n\r\n127.0.0.1 127.0.0.1") {
        let n = third.read(&mut rest).expect("answered once a slot freed");
        assert!(n > 0, "closed instead of answered");
        response.extend_from_slice(&rest[..n]);
    }
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200 OK"));
    assert!(exchange(&mut second).expect("still served").starts_with("HTTP/1.1 200 OK"));
    stop.shutdown();
    serving.join().expect("server thread").expect("serve");
}

/// `SERVER_NAME:SERVER_PORT` as the handler saw it, through a Unix socket.
fn get_unix(path: &std::path::Path) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(path).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

fn where_served() -> impl sgi::Handler {
    sgi::handler_fn(|env, start_response| {
        let body = format!("{}:{}", env.get("SERVER_NAME").unwrap_or("?"), env.get("SERVER_PORT").unwrap_or("?"));
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    })
}

/// One server, three listeners (IPv4, IPv6, a Unix socket), on each runner that can run in the
/// test process: each request answered, with the `SERVER_NAME` and `SERVER_PORT` of the
/// listener it came through.
#[test]
fn serves_several_listeners_together_each_with_its_own_name_and_port() {
    for runner in ["serial", "threads", "pool"] {
        let dir = std::env::temp_dir().join(format!("sgi-listeners-{}-{runner}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let server = sgi::Server::listen("127.0.0.1:0")
            .and_then(|s| s.also_listen("[::1]:0"))
            .and_then(|s| s.also_listen(&format!("unix:{}", path.display())))
            .expect("three listeners");
        let addrs = server.local_addrs();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
        let stop = server.shutdown_handle();
        let runner = sgi::runner::by_name(runner, 4).unwrap();
        let serving = std::thread::spawn(move || server.handle_signals(false).runner(runner).serve(where_served()));
        for addr in &addrs {
            let response = get(*addr);
            assert!(response.ends_with(&format!("{}:{}", addr.ip(), addr.port())), "{response}");
        }
        let response = get_unix(&path);
        assert!(response.ends_with(&format!("{}:0", path.display())), "{response}");
        stop.shutdown();
        serving.join().unwrap().expect("serve");
        assert!(!path.exists(), "the socket file this server created goes with it");
        let _ = std::fs::remove_dir(&dir);
    }
}

/// A Unix socket the server did not create (inherited) is served, and its file left alone.
#[test]
fn an_inherited_unix_socket_file_is_never_removed() {
    let path = std::env::temp_dir().join(format!("sgi-inherited-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let server = sgi::Server::from_unix_listener(listener).expect("server");
    let stop = server.shutdown_handle();
    let serving =
        std::thread::spawn(move || server.handle_signals(false).runner(sgi::runner::Serial).serve(where_served()));
    assert!(get_unix(&path).ends_with(&format!("{}:0", path.display())));
    stop.shutdown();
    serving.join().unwrap().expect("serve");
    assert!(path.exists(), "whoever created the socket file owns it");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_server_takes_at_most_max_listeners() {
    let mut server = sgi::Server::listen("127.0.0.1:0").unwrap();
    for _ in 1..sgi::MAX_LISTENERS {
        server = server.also_listen("127.0.0.1:0").unwrap();
    }
    let err = server.also_listen("127.0.0.1:0").expect_err("one too many");
    assert_eq!(err.to_string(), "cannot bind 127.0.0.1:0");
}

/// Outside prefork the factory is called once, before serving; a factory that fails is
/// `Error::Factory`, with the factory's error as its source.
#[test]
fn serve_factory_makes_the_handler_once_and_reports_a_failing_factory() {
    let server = sgi::Server::bind("127.0.0.1:0").expect("bind").runner(sgi::runner::Serial);
    let err = server.handle_signals(false).serve_factory(|| Err::<sgi::debug::EnvironDump, _>("no database".into()));
    match err {
        Err(sgi::Error::Factory(source)) => assert_eq!(source.to_string(), "no database"),
        other => panic!("expected Error::Factory, got {other:?}"),
    }

    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = sgi::Server::bind("127.0.0.1:0").expect("bind").runner(sgi::runner::ThreadPool::new(2));
    let addr = server.local_addr().expect("address");
    let stop = server.shutdown_handle();
    let counted = std::sync::Arc::clone(&calls);
    let serving = std::thread::spawn(move || {
        server.handle_signals(false).serve_factory(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(hello())
        })
    });
    for _ in 0..3 {
        assert!(get(addr).starts_with("HTTP/1.1 200 OK\r\n"));
    }
    stop.shutdown();
    serving.join().expect("server thread").expect("serve");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
