//! Allocation counts on the request path, with a counting global allocator.
//!
//! Counting is per thread, so tests running in parallel do not see each other's allocations:
//! a thread counts its own allocations while its `COUNTING` flag is on, and a server's serving
//! thread adds every allocation it makes to that server's counter (`SERVER_COUNTER`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use sgi::private::HeadParser;
use sgi::{handler_fn, Handler, ShutdownHandle};

struct Counting;

thread_local! {
    // `const` thread-locals without destructors: safe to touch from inside the allocator.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static LOCAL: Cell<u64> = const { Cell::new(0) };
    /// Set on a server's serving thread: where its allocations are counted.
    static SERVER_COUNTER: Cell<Option<&'static AtomicU64>> = const { Cell::new(None) };
}

fn count() {
    // `try_with`: a thread being torn down may still allocate after its thread-locals are gone.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            LOCAL.with(|n| n.set(n.get() + 1));
        }
    });
    let _ = SERVER_COUNTER.try_with(|counter| {
        if let Some(counter) = counter.get() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// `const` thread-locals and an atomic, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`; `ptr` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result and the number of allocations (reallocations included) it
/// made on this thread.
fn allocations_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    LOCAL.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let result = f();
    COUNTING.with(|on| on.set(false));
    (result, LOCAL.with(Cell::get))
}

/// What Firefox sends for a page navigation (the parse benchmark's head).
const BROWSER: &[u8] = include_bytes!("fixtures/requests/browser-head.http");

const SHORT: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn counter_sees_allocations() {
    let (v, n) = allocations_of(|| vec![1u8; 100]);
    assert_eq!(v.len(), 100);
    assert_eq!(n, 1);
    let ((), n) = allocations_of(|| {});
    assert_eq!(n, 0);
}

#[test]
fn head_parsing_allocates_only_when_cold() {
    let mut parser = HeadParser::new();
    let (first, cold) = allocations_of(|| parser.parse(BROWSER));
    let (len, vars) = first.expect("a valid head");
    assert_eq!(len, BROWSER.len());
    println!("browser head: cold parse {cold} allocations ({vars} variables)");
    // The environ's three arrays (entries, byte arena, field fingerprints), sized up front from
    // the head.
    assert!(cold <= 4, "a cold parse allocated {cold} times");

    let (_, warm) = allocations_of(|| {
        for _ in 0..1000 {
            parser.parse(BROWSER).expect("valid");
        }
    });
    println!("browser head: {warm} allocations in 1000 warm parses");
    assert_eq!(warm, 0, "warm parses allocated");
    assert_eq!(parser.get("HTTP_SEC_FETCH_USER"), Some(&b"?1"[..]));

    // Smaller heads in between do not shrink anything.
    let (_, mixed) = allocations_of(|| {
        for _ in 0..100 {
            parser.parse(SHORT).expect("valid");
            parser.parse(BROWSER).expect("valid");
        }
    });
    assert_eq!(mixed, 0, "alternating heads allocated");
}

#[test]
fn short_head_parsing_allocates_only_when_cold() {
    let mut parser = HeadParser::new();
    let (_, cold) = allocations_of(|| parser.parse(SHORT).expect("valid"));
    println!("short head: cold parse {cold} allocations");
    assert!(cold <= 4, "a cold parse allocated {cold} times");
    let (_, warm) = allocations_of(|| {
        for _ in 0..1000 {
            parser.parse(SHORT).expect("valid");
        }
    });
    assert_eq!(warm, 0, "warm parses allocated");
}

/// A server on an ephemeral port whose serving thread counts its allocations into `allocations`.
struct TestServer {
    addr: SocketAddr,
    allocations: &'static AtomicU64,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<sgi::Result<()>>>,
}

impl TestServer {
    fn start(handler: impl Handler) -> TestServer {
        // The serial runner serves each connection on the thread that calls `serve`.
        let server = sgi::Server::bind("127.0.0.1:0").expect("bind").runner(sgi::runner::Serial);
        let addr = server.local_addr().expect("local_addr");
        let stop = server.shutdown_handle();
        // One small counter per server, leaked: the allocator needs a `'static` to point at.
        let allocations: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let thread = Some(std::thread::spawn(move || {
            SERVER_COUNTER.with(|counter| counter.set(Some(allocations)));
            server.serve(handler)
        }));
        TestServer { addr, allocations, stop, thread }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !std::thread::panicking() {
                result.expect("server thread panicked").expect("server returned an error");
            }
        }
    }
}

/// A keep-alive client that reads each response into a fixed buffer.
struct Client {
    stream: TcpStream,
    buf: Box<[u8; 16 * 1024]>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
        Client { stream, buf: Box::new([0; 16 * 1024]) }
    }

    /// Sends `request` and reads one keep-alive response with a `Content-Length` and status
    /// line `status`; returns its body.
    fn exchange(&mut self, request: &[u8], status: &str) -> &[u8] {
        self.stream.write_all(request).expect("send");
        let mut filled = 0;
        let (head_end, length) = loop {
            let n = self.stream.read(&mut self.buf[filled..]).expect("read");
            assert!(n > 0, "server closed the connection");
            filled += n;
            let data = &self.buf[..filled];
            let Some(head_end) = data.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
                continue;
            };
            let head = std::str::from_utf8(&data[..head_end]).expect("ASCII head");
            assert!(head.starts_with(status), "{head}");
            assert!(!head.contains("Connection: close"), "{head}");
            let length: usize = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("Content-Length")
                .parse()
                .expect("decimal");
            if filled >= head_end + length {
                assert_eq!(filled, head_end + length, "nothing beyond the response");
                break (head_end, length);
            }
        };
        &self.buf[head_end..head_end + length]
    }
}

/// Requests measured once the connection is warm.
const REQUESTS: u64 = 200;

/// Allocations a request may cost once its connection is warm, on average. The design target is
/// zero: every buffer (read buffer, environ arena and entries, response head, output) belongs to
/// the connection and is reused, the `Date` is cached per thread, and a `&'static str` body is
/// not copied. The slack (10 in 200 requests) only absorbs a one-off growth of a buffer; one
/// allocation per request would already fail.
const MAX_PER_REQUEST: f64 = 0.05;

/// Allocations on the server thread for the first request of a new keep-alive connection (its
/// buffers), and per request in the steady state (after 50 warm-up requests, over [`REQUESTS`]
/// more).
fn server_allocations(handler: impl Handler, request: &[u8], status: &str, body: &[u8]) -> (u64, f64) {
    let server = TestServer::start(handler);
    // A first connection warms what the server sets up once (its context, the thread's cached
    // `Date`); what follows is one connection's cost.
    assert_eq!(Client::connect(server.addr).exchange(request, status), body);
    let before = server.allocations.load(Ordering::Relaxed);
    let mut client = Client::connect(server.addr);
    assert_eq!(client.exchange(request, status), body);
    let first = server.allocations.load(Ordering::Relaxed) - before;
    // Guard against counting the wrong thread: the first request sets up the connection's
    // buffers on the thread that serves it.
    assert!(first > 0, "no allocation seen on the server thread: is the connection served elsewhere?");
    for _ in 0..50 {
        assert_eq!(client.exchange(request, status), body);
    }
    let start = server.allocations.load(Ordering::Relaxed);
    for _ in 0..REQUESTS {
        assert_eq!(client.exchange(request, status), body);
    }
    let steady = server.allocations.load(Ordering::Relaxed) - start;
    (first, steady as f64 / REQUESTS as f64)
}

fn hello() -> impl Handler {
    handler_fn(|_env, start_response| {
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("Hello, World!\n"))
    })
}

#[test]
fn keep_alive_get_allocates_nothing_per_request() {
    for (name, head) in [("short head", SHORT), ("browser head", BROWSER)] {
        let (first, per_request) = server_allocations(hello(), head, "HTTP/1.1 200 OK\r\n", b"Hello, World!\n");
        println!("GET, {name}: first request {first} allocations, then {per_request:.3} per request");
        assert!(per_request <= MAX_PER_REQUEST, "GET, {name}: {per_request} allocations per request");
    }
}

#[test]
fn keep_alive_post_allocates_nothing_per_request() {
    // The handler reads the body into a stack buffer: what is counted is the server's own.
    let sink = handler_fn(|env, start_response| {
        let mut buf = [0u8; 512];
        let mut total = 0;
        loop {
            let n = env.input().read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, 300);
        Ok(start_response.start("201 Created", [("Content-Type", "text/plain")])?.body("stored\n"))
    });
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 300\r\n\r\n"
            .to_vec();
    request.extend_from_slice(&[b'z'; 300]);
    let (first, per_request) = server_allocations(sink, &request, "HTTP/1.1 201 Created\r\n", b"stored\n");
    println!("POST, 300-byte body: first request {first} allocations, then {per_request:.3} per request");
    assert!(per_request <= MAX_PER_REQUEST, "POST: {per_request} allocations per request");
}
