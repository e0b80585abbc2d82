//! Shared helpers of the integration tests: an in-process server on an ephemeral port, raw-byte
//! clients, and a small strict HTTP/1.1 response parser.
//!
//! Every client read is bounded by [`READ_TIMEOUT`]: a server that fails to answer or to close
//! fails the test instead of hanging it.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sgi::runner::{Runner, Serial};
use sgi::{Config, Handler, Server, ShutdownHandle};

/// Longest wait for any byte (or the end of the stream) from the server.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for `serve` to return after a shutdown was requested.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A server on `127.0.0.1:0`, serving in its own thread; shut down and joined on drop. While it
/// lives, no other `TestServer` of the same test binary runs: the tests depend on timing.
pub struct TestServer {
    _alone: MutexGuard<'static, ()>,
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    thread: Option<JoinHandle<sgi::Result<()>>>,
}

impl TestServer {
    /// Serves `handler` with `config` on the serial runner.
    pub fn spawn(config: Config, handler: impl Handler) -> TestServer {
        TestServer::spawn_with(Serial, config, handler)
    }

    /// Serves `handler` with `config` on `runner`.
    pub fn spawn_with(runner: impl Runner, config: Config, handler: impl Handler) -> TestServer {
        static LOCK: Mutex<()> = Mutex::new(());
        // A test that failed while holding it poisons it; the next test goes on all the same.
        let alone = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let server = Server::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").config(config).runner(runner);
        let addr = server.local_addr().expect("local_addr");
        let shutdown = server.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name(format!("sgi-test-server-{}", addr.port()))
            .spawn(move || server.serve(handler))
            .expect("spawn the server thread");
        TestServer { _alone: alone, addr, shutdown, thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Requests the shutdown and waits (at most [`STOP_TIMEOUT`]) for `serve` to return; returns
    /// what it returned and how long that took.
    pub fn stop(mut self) -> (sgi::Result<()>, Duration) {
        let t0 = Instant::now();
        self.shutdown.shutdown();
        let thread = self.thread.take().expect("server thread");
        let result = join_within(thread, STOP_TIMEOUT).expect("serve did not return after shutdown");
        (result.expect("server thread panicked"), t0.elapsed())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.shutdown();
        if let Some(thread) = self.thread.take() {
            // A server stuck on a connection is leaked rather than hanging the test process.
            let result = join_within(thread, STOP_TIMEOUT);
            if !std::thread::panicking() {
                let result = result.expect("serve did not return after shutdown");
                result.expect("server thread panicked").expect("serve returned an error");
            }
        }
    }
}

fn join_within<T>(thread: JoinHandle<T>, limit: Duration) -> Option<std::thread::Result<T>> {
    let deadline = Instant::now() + limit;
    while !thread.is_finished() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Some(thread.join())
}

/// A quiet error log, for tests that provoke errors by the thousand.
pub fn quiet(config: Config) -> Config {
    config.error_log(|_| {})
}

/// Connects with `TCP_NODELAY` and a read timeout of [`READ_TIMEOUT`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream.set_read_timeout(Some(READ_TIMEOUT)).expect("read timeout");
    stream.set_write_timeout(Some(READ_TIMEOUT)).expect("write timeout");
    stream
}

/// One-shot exchange: connects, writes `bytes`, half-closes, and returns everything the server
/// sends until it closes.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    try_exchange(addr, bytes, None, true).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`raw`], without the half-close: the server must close on its own (after refusing the
/// request, or after a response that closes the connection).
pub fn raw_unclosed(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    try_exchange(addr, bytes, None, false).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`raw`], but `bytes[..at]` and `bytes[at..]` go in two writes about a millisecond apart,
/// so that the server sees them in two reads.
pub fn raw_split(addr: SocketAddr, bytes: &[u8], at: usize) -> Vec<u8> {
    try_exchange(addr, bytes, Some(at), true).unwrap_or_else(|e| panic!("{e}"))
}

/// The exchange behind [`raw`], [`raw_unclosed`] and [`raw_split`], with an error instead of a
/// panic when the server neither closes nor sends for [`READ_TIMEOUT`].
pub fn try_exchange(addr: SocketAddr, bytes: &[u8], split: Option<usize>, half_close: bool) -> Result<Vec<u8>, String> {
    let mut stream = connect(addr);
    let (first, second) = bytes.split_at(split.unwrap_or(bytes.len()));
    // The server may refuse and close before it has read everything: a failed write is not the
    // test's business, what the server answered is.
    if stream.write_all(first).and_then(|()| stream.flush()).is_ok() && !second.is_empty() {
        std::thread::sleep(Duration::from_millis(1));
        let _ = stream.write_all(second);
    }
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    try_read_to_eof(&mut stream)
}

/// Reads until the server closes. Panics if it does not within [`READ_TIMEOUT`] of the last
/// byte. A reset counts as the end (what came before it is returned).
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    try_read_to_eof(stream).unwrap_or_else(|e| panic!("{e}"))
}

pub fn try_read_to_eof(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                return Err(format!(
                    "server neither closed nor sent within {READ_TIMEOUT:?}; got so far: {:?}",
                    show(&out)
                ))
            }
            Err(_) => return Ok(out),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Bytes for an assertion message: UTF-8 where possible, escapes elsewhere.
pub fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// A persistent client connection that reads responses one at a time.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client { stream: connect(addr), buf: Vec::new(), eof: false }
    }

    pub fn send(&mut self, bytes: &[u8]) -> &mut Client {
        self.stream.write_all(bytes).expect("write request");
        self
    }

    /// Half-closes: the server sees the end of the request stream.
    pub fn finish(&mut self) -> &mut Client {
        self.stream.shutdown(Shutdown::Write).expect("shutdown(Write)");
        self
    }

    /// Reads one more chunk of bytes into the buffer; false at the end of the stream.
    fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return false;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    panic!("no response within {READ_TIMEOUT:?}; buffered so far: {:?}", show(&self.buf))
                }
                Err(_) => {
                    self.eof = true;
                    return false;
                }
            }
        }
    }

    /// Reads the next response (a 1xx interim response counts as one); `head_request` says the
    /// request was HEAD, whose response has no body. Panics on a malformed or truncated one.
    pub fn read_response_to(&mut self, head_request: bool) -> Resp {
        loop {
            match parse_response(&self.buf, head_request, self.eof) {
                Ok(Some((resp, used))) => {
                    self.buf.drain(..used);
                    return resp;
                }
                Ok(None) => {
                    if !self.fill() && parse_response(&self.buf, head_request, true).ok().flatten().is_none() {
                        panic!("connection closed in the middle of a response: {:?}", show(&self.buf));
                    }
                }
                Err(e) => panic!("malformed response ({e}): {:?}", show(&self.buf)),
            }
        }
    }

    pub fn read_response(&mut self) -> Resp {
        self.read_response_to(false)
    }

    /// Exactly `n` bytes, whatever they are.
    pub fn read_exact_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            if !self.fill() {
                panic!("connection closed after {:?}, wanted {n} bytes", show(&self.buf));
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Asserts the server closes the connection without sending anything more.
    pub fn expect_eof(&mut self) {
        while self.fill() {}
        assert!(self.buf.is_empty(), "expected the connection to close, got more bytes: {:?}", show(&self.buf));
    }

    /// Everything until the server closes.
    pub fn read_to_eof(&mut self) -> Vec<u8> {
        while self.fill() {}
        std::mem::take(&mut self.buf)
    }

    /// Whether anything arrives (or the stream ends) within `wait`; consumes nothing.
    pub fn poll_for(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() || self.eof {
            return true;
        }
        self.stream.set_read_timeout(Some(wait)).expect("read timeout");
        let mut chunk = [0u8; 4096];
        let got = match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                true
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if is_timeout(&e) => false,
            Err(_) => {
                self.eof = true;
                true
            }
        };
        self.stream.set_read_timeout(Some(READ_TIMEOUT)).expect("read timeout");
        got
    }
}

/// One parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resp {
    pub status: u16,
    pub reason: String,
    /// Fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The de-framed body.
    pub body: Vec<u8>,
    /// How the body was delimited.
    pub framing: Framing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// 1xx, 204, 304 or a response to HEAD.
    NoBody,
    Length,
    Chunked,
    /// Delimited by the server closing the connection.
    Close,
}

impl Resp {
    /// The value of the one field named `name` (any case); panics if it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.headers_named(name);
        assert!(all.len() <= 1, "{name} sent {} times: {:?}", all.len(), self.headers);
        all.first().copied()
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        !self.headers_named(name).is_empty()
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    /// Whether the response says the connection closes after it.
    pub fn closes(&self) -> bool {
        self.headers_named("connection").iter().any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// Parses every response in `bytes`, which hold all a server sent until it closed; none of the
/// requests was HEAD. Panics on a malformed or truncated response.
pub fn parse_responses(bytes: &[u8]) -> Vec<Resp> {
    parse_responses_to(bytes, &[])
}

/// As [`parse_responses`]; `head_requests[i]` says whether the i-th final response answers a
/// HEAD request (missing entries mean no).
pub fn parse_responses_to(bytes: &[u8], head_requests: &[bool]) -> Vec<Resp> {
    try_parse_responses_to(bytes, head_requests).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`parse_responses_to`], with an error message instead of a panic.
pub fn try_parse_responses_to(bytes: &[u8], head_requests: &[bool]) -> Result<Vec<Resp>, String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut finals = 0;
    while !rest.is_empty() {
        let head = head_requests.get(finals).copied().unwrap_or(false);
        match parse_response(rest, head, true) {
            Ok(Some((resp, used))) => {
                if resp.status >= 200 {
                    finals += 1;
                }
                out.push(resp);
                rest = &rest[used..];
            }
            Ok(None) => return Err(format!("truncated response after {} complete ones: {:?}", out.len(), show(rest))),
            Err(e) => {
                return Err(format!("malformed response after {} complete ones ({e}): {:?}", out.len(), show(rest)))
            }
        }
    }
    Ok(out)
}

/// Splits a response at the end of its head: `(head without the blank line, the rest)`.
pub fn split_head(bytes: &[u8]) -> (String, &[u8]) {
    let end = find(bytes, b"\r\n\r\n").unwrap_or_else(|| panic!("no complete head in {:?}", show(bytes)));
    (String::from_utf8(bytes[..end].to_vec()).expect("ASCII head"), &bytes[end + 4..])
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses one response at the start of `buf`. `Ok(None)`: incomplete (when `eof`, only a
/// truncated head or a truncated length- or chunk-delimited body is).
pub fn parse_response(buf: &[u8], head_request: bool, eof: bool) -> Result<Option<(Resp, usize)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() >= 5 && !buf.starts_with(b"HTTP/") {
            return Err("does not start with HTTP/".into());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    if status_line.contains('\n') {
        return Err("bare LF in the status line".into());
    }
    let rest = status_line.strip_prefix("HTTP/1.1 ").ok_or_else(|| format!("status line {status_line:?}"))?;
    let (code, reason) = rest.split_at(rest.len().min(3));
    let status: u16 = code.parse().map_err(|_| format!("status code in {status_line:?}"))?;
    let reason = reason.strip_prefix(' ').ok_or_else(|| format!("no SP after the code in {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("header line {line:?}"))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(format!("header name {name:?}"));
        }
        if value.bytes().any(|b| b != b'\t' && b.is_ascii_control()) {
            return Err(format!("control character in {line:?}"));
        }
        headers.push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
    }
    let mut resp = Resp { status, reason: reason.to_owned(), headers, body: Vec::new(), framing: Framing::NoBody };
    let body_start = head_end + 4;
    let body = &buf[body_start..];
    if head_request || status < 200 || status == 204 || status == 304 {
        return Ok(Some((resp, body_start)));
    }
    let te = resp.headers_named("transfer-encoding");
    let cl = resp.headers_named("content-length");
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err("both Transfer-Encoding and Content-Length".into());
        }
        if te != ["chunked"] {
            return Err(format!("Transfer-Encoding {te:?}"));
        }
        resp.framing = Framing::Chunked;
        return Ok(decode_chunked(body)?.map(|(data, used)| {
            resp.body = data;
            (resp, body_start + used)
        }));
    }
    if !cl.is_empty() {
        if cl.len() > 1 {
            return Err("Content-Length repeated".into());
        }
        if cl[0].is_empty() || !cl[0].bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("Content-Length {:?}", cl[0]));
        }
        let n: usize = cl[0].parse().map_err(|_| "Content-Length overflow".to_string())?;
        if body.len() < n {
            return Ok(None);
        }
        resp.framing = Framing::Length;
        resp.body = body[..n].to_vec();
        return Ok(Some((resp, body_start + n)));
    }
    if !eof {
        return Ok(None);
    }
    resp.framing = Framing::Close;
    resp.body = body.to_vec();
    Ok(Some((resp, buf.len())))
}

/// Strictly decodes a chunked body; returns the data and the bytes used (trailers included).
fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut data = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = find(&buf[pos..], b"\r\n").map(|i| pos + i) else { return Ok(None) };
        let line = &buf[pos..line_end];
        let size_part = line.split(|&b| b == b';').next().unwrap_or(b"");
        let size_str = std::str::from_utf8(size_part).map_err(|_| "chunk size".to_string())?;
        if size_str.is_empty() || !size_str.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("chunk size line {:?}", show(line)));
        }
        let size = usize::from_str_radix(size_str, 16).map_err(|_| "chunk size overflow".to_string())?;
        pos = line_end + 2;
        if size == 0 {
            // Trailer section: lines until an empty one.
            loop {
                let Some(end) = find(&buf[pos..], b"\r\n").map(|i| pos + i) else { return Ok(None) };
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Ok(Some((data, pos)));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        data.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos += 2;
    }
}
