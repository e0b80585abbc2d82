//! A test client: calls a [`Handler`] in memory, through the server's own connection code.
//!
//! [`TestClient`] serializes a [`TestRequest`] to bytes and serves them on an in-memory
//! connection exactly as the blocking runners ([`Serial`](crate::runner::Serial),
//! [`Threaded`](crate::runner::Threaded), [`Forking`](crate::runner::Forking)) serve a socket:
//! the same HTTP parser and environ, the same response validation and framing, the same `500`
//! for a handler that fails or panics. The connection reads the request, then the end of the
//! client's stream; what the server wrote comes back parsed as a [`TestResponse`]. No socket, no
//! thread, no port: a test calls the handler on its own thread and can run in parallel with
//! every other.
//!
//! ```
//! use sgi::testing::{TestClient, TestRequest};
//!
//! let app = sgi::handler_fn(|env, start_response| {
//!     let body = format!("{} {}", env.method(), env.get("PATH_INFO").unwrap_or("?"));
//!     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
//! });
//! let client = TestClient::new(app);
//!
//! let response = client.get("/hello%20world");
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.header("content-type"), Some("text/plain"));
//! assert_eq!(response.text(), "GET /hello world");
//!
//! let response = client.request(TestRequest::post("/form").form([("name", "Ada Lovelace")]));
//! assert_eq!(response.text(), "POST /form");
//! ```
//!
//! # What the handler sees
//! What a server bound to `localhost:80` would give it: `SERVER_NAME` `localhost` and
//! `SERVER_PORT` `80` (see [`TestClient::local`]), `REMOTE_ADDR` `127.0.0.1` and `REMOTE_PORT`
//! `50000` (see [`TestRequest::peer`]), the [`Config`] given to [`TestClient::with_config`], and
//! [`RunnerFlags::default`] (what [`runner::Serial`](crate::runner::Serial) sets): one request at a
//! time on the calling thread. Log lines (rejected requests, handler errors and panics, what the
//! handler writes to `wsgi.errors`) go to [`Config::error_log`], standard error by default.
//!
//! # What the response holds
//! Exactly what the server sent: its `Date` and `Server` headers, the framing it chose
//! (`Content-Length`, or `Transfer-Encoding: chunked` for a streamed body, which the client
//! de-chunks) and `Connection: close` when it decided to close. [`TestResponse::raw`] has every
//! byte, interim `100 Continue` responses included.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::config::Config;
use crate::conn::{serve_connection, ServeContext};
use crate::environ::RunnerFlags;
use crate::handler::Handler;
use crate::net::{Interest, Local, Transport};
use crate::shutdown::ShutdownHandle;
use crate::sys::unix::Waited;

/// The peer every request comes from unless [`TestRequest::peer`] says otherwise.
const DEFAULT_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50000);

/// Calls a handler in memory, through the code a server runs for each connection (see the
/// [module documentation](self)).
///
/// Each request is served on a connection of its own, which ends after it: nothing is carried
/// from one request to the next but the handler's own state. A panicking handler gets a `500`
/// like on a server, and the client goes on serving. Cloning is cheap (the handler is shared), and
/// the client is `Send + Sync`.
///
/// ```
/// use sgi::testing::TestClient;
///
/// let client = TestClient::new(sgi::handler_fn(|_env, start_response| {
///     Ok(start_response.start("404 Not Found", [("Content-Type", "text/plain")])?.body("no such page\n"))
/// }));
/// let response = client.get("/missing");
/// assert_eq!((response.status(), response.reason()), (404, "Not Found"));
/// assert_eq!(response.header("Content-Length"), Some("13"));
/// assert_eq!(response.header("Server"), Some("sgi"));
/// assert!(response.header("Date").is_some());
/// ```
#[derive(Clone)]
pub struct TestClient {
    ctx: Arc<ServeContext>,
    local: Local,
}

impl fmt::Debug for TestClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestClient")
            .field("config", &self.ctx.config)
            .field("server_name", &self.local.name)
            .field("server_port", &self.local.port)
            .finish_non_exhaustive()
    }
}

impl TestClient {
    /// A client for `handler`, with the default [`Config`].
    ///
    /// # Panics
    /// If the first client of the process cannot make the two-descriptor pipe that every client
    /// shares for the server's shutdown signal (the process is out of descriptors).
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::debug::EnvironDump);
    /// assert_eq!(client.get("/").status(), 200);
    /// ```
    pub fn new(handler: impl Handler) -> TestClient {
        TestClient::with_config(handler, Config::default())
    }

    /// A client for `handler`, served with `config`: its limits, timeouts, `Server` header,
    /// `SCRIPT_NAME`, URL scheme and error log apply as on a server.
    ///
    /// # Panics
    /// As [`TestClient::new`].
    ///
    /// ```
    /// use sgi::testing::{TestClient, TestRequest};
    ///
    /// let config = sgi::Config::default().max_body(Some(4)).error_log(|_| {});
    /// let client = TestClient::with_config(sgi::debug::EnvironDump, config);
    /// let response = client.request(TestRequest::post("/").body("too long"));
    /// assert_eq!(response.status(), 413);
    /// ```
    pub fn with_config(handler: impl Handler, config: Config) -> TestClient {
        // Nothing triggers it: one for the whole process, so a client costs no descriptor.
        static SHUTDOWN: OnceLock<ShutdownHandle> = OnceLock::new();
        let shutdown = SHUTDOWN
            .get_or_init(|| ShutdownHandle::new().expect("sgi::testing: cannot create the shutdown pipe"))
            .clone();
        let ctx = ServeContext {
            config: Arc::new(config),
            handler: Box::new(handler),
            flags: RunnerFlags::default(),
            shutdown,
        };
        TestClient {
            ctx: Arc::new(ctx),
            local: Local { name: "localhost".into(), port: "80".into(), proxy_protocol: false },
        }
    }

    /// Sets what requests see of the listening socket: `SERVER_NAME` and `SERVER_PORT`
    /// (`localhost` and `80` by default). It does not change the `Host` header
    /// [`TestRequest`] adds.
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::handler_fn(|env, start_response| {
    ///     let body = format!("{}:{}", env.get("SERVER_NAME").unwrap_or(""), env.get("SERVER_PORT").unwrap_or(""));
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    /// }))
    /// .local("10.0.0.1", 8080);
    /// assert_eq!(client.get("/").text(), "10.0.0.1:8080");
    /// ```
    pub fn local(mut self, name: &str, port: u16) -> TestClient {
        self.local = Local { name: name.into(), port: port.to_string().into(), proxy_protocol: false };
        self
    }

    /// Sends `GET target` and returns the response: short for
    /// `client.request(TestRequest::get(target))`.
    ///
    /// # Panics
    /// As [`TestClient::request`].
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::handler_fn(|env, start_response| {
    ///     let query = String::from_utf8_lossy(env.query_string()).into_owned();
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(query))
    /// }));
    /// assert_eq!(client.get("/search?q=rust&page=2").text(), "q=rust&page=2");
    /// ```
    pub fn get(&self, target: &str) -> TestResponse {
        self.request(TestRequest::get(target))
    }

    /// Sends `request` on a new connection, followed by the end of the client's stream, and
    /// returns the server's first final (non-`1xx`) response. A request the server refuses gets
    /// the server's answer (`400`, `413`, `431`, ...) without the handler being called.
    ///
    /// # Panics
    /// If the server sent no response at all. It answers every whole request head, and a
    /// serialized `TestRequest` always ends its head, so this takes a method or target that
    /// smuggles line breaks; [`TestClient::send_raw`] returns whatever was sent instead.
    ///
    /// ```
    /// use sgi::testing::{TestClient, TestRequest};
    ///
    /// let client = TestClient::new(sgi::handler_fn(|env, start_response| {
    ///     let agent = String::from_utf8_lossy(env.header("User-Agent").unwrap_or(b"?")).into_owned();
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(agent))
    /// }));
    /// let response = client.request(TestRequest::get("/").header("User-Agent", "test/1.0"));
    /// assert_eq!(response.text(), "test/1.0");
    ///
    /// // Bytes that cannot be a header are sent as given: the server refuses them.
    /// let refused = client.request(TestRequest::get("/").header("Bad Name", "x"));
    /// assert_eq!(refused.status(), 400);
    /// ```
    pub fn request(&self, request: TestRequest) -> TestResponse {
        let raw = self.exchange(&request.to_bytes(), Some(request.peer));
        // Methods are case-sensitive: only `HEAD` is answered without a body.
        let is_head = request.method == "HEAD";
        match TestResponse::parse(raw, is_head) {
            Ok(response) => response,
            Err(raw) => panic!(
                "sgi::testing: the server sent no response to {} {} (it wrote {:?})",
                request.method,
                request.target,
                String::from_utf8_lossy(&raw)
            ),
        }
    }

    /// Sends `bytes` exactly as given on a new connection from `127.0.0.1:50000`, followed by the
    /// end of the client's stream, and returns every byte the server wrote until it closed: for
    /// what [`TestRequest`] cannot express, such as a request without `Host`, pipelined requests
    /// or a head that never ends.
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::debug::EnvironDump);
    /// let raw = client.send_raw(b"GET / HTTP/1.1\r\n\r\n");
    /// assert!(raw.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    /// // A head that never ends gets no answer: the client is gone.
    /// assert!(client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n").is_empty());
    /// ```
    pub fn send_raw(&self, bytes: &[u8]) -> Vec<u8> {
        self.exchange(bytes, Some(DEFAULT_PEER))
    }

    /// Serves one in-memory connection that sends `input` and returns what the server wrote.
    fn exchange(&self, input: &[u8], peer: Option<SocketAddr>) -> Vec<u8> {
        let mut output = Vec::new();
        serve_connection(Memory { input, output: &mut output }, peer, &self.local, &self.ctx);
        output
    }
}

/// The in-memory connection: reads give the request, then the end of the stream; writes are
/// kept; the connection is always ready, so it never waits (deadlines still apply to the
/// handler's own time, as on a server).
struct Memory<'a> {
    input: &'a [u8],
    output: &'a mut Vec<u8>,
}

impl Transport for Memory<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.input.len());
        let (now, rest) = self.input.split_at(n);
        buf[..n].copy_from_slice(now);
        self.input = rest;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let before = self.output.len();
        for buf in bufs {
            self.output.extend_from_slice(buf);
        }
        Ok(self.output.len() - before)
    }

    fn shutdown_write(&self) {}

    fn wait(&self, _: Interest, _: Option<RawFd>, _: Option<Instant>) -> io::Result<Waited> {
        Ok(Waited::Ready)
    }
}

/// A request to send with [`TestClient::request`]: method, target, headers and body, and the
/// peer it comes from.
///
/// Serialized as a client would send it: `METHOD TARGET HTTP/1.1`, then `Host: localhost` unless
/// a `Host` header was given, the headers in order, `Content-Length` when the body is not empty
/// and neither `Content-Length` nor `Transfer-Encoding` was given (or, with
/// [`TestRequest::chunked`], `Transfer-Encoding: chunked` unless given), and the body.
///
/// Nothing is checked or escaped: a target with a space, a header name that is not a token or a
/// value with CR or LF goes out as given, so that a test can check how the server refuses it too.
///
/// ```
/// use sgi::testing::TestRequest;
///
/// let request = TestRequest::post("/upload").header("Content-Type", "text/plain").body("hello");
/// assert_eq!(
///     request.to_bytes(),
///     b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
/// );
/// ```
#[derive(Debug, Clone)]
pub struct TestRequest {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    chunked: bool,
    peer: SocketAddr,
}

impl TestRequest {
    /// A request with `method` for `target` (what follows the method on the request line: a
    /// path with its query, an absolute URI, or `*`), without headers or body, from
    /// `127.0.0.1:50000`.
    ///
    /// ```
    /// use sgi::testing::{TestClient, TestRequest};
    ///
    /// let client = TestClient::new(sgi::handler_fn(|_env, start_response| {
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("not for HEAD"))
    /// }));
    /// let response = client.request(TestRequest::new("HEAD", "/"));
    /// assert_eq!(response.header("Content-Length"), Some("12"));
    /// assert!(response.body().is_empty());
    /// ```
    pub fn new(method: &str, target: &str) -> TestRequest {
        TestRequest {
            method: method.to_owned(),
            target: target.to_owned(),
            version: "HTTP/1.1".to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
            peer: DEFAULT_PEER,
        }
    }

    /// A `GET` request for `target`.
    ///
    /// ```
    /// let request = sgi::testing::TestRequest::get("/a?b=c");
    /// assert_eq!(request.to_bytes(), b"GET /a?b=c HTTP/1.1\r\nHost: localhost\r\n\r\n");
    /// ```
    pub fn get(target: &str) -> TestRequest {
        TestRequest::new("GET", target)
    }

    /// A `POST` request for `target`; give it a body with [`TestRequest::body`] or
    /// [`TestRequest::form`].
    ///
    /// ```
    /// let request = sgi::testing::TestRequest::post("/").body("x=1");
    /// assert!(request.to_bytes().ends_with(b"\r\nContent-Length: 3\r\n\r\nx=1"));
    /// ```
    pub fn post(target: &str) -> TestRequest {
        TestRequest::new("POST", target)
    }

    /// Adds a header field (repeat the call for a repeated field). A `Host` header replaces the
    /// default `Host: localhost`. A `Content-Length` or `Transfer-Encoding` header replaces the
    /// `Content-Length` the body would get, and a `Transfer-Encoding` header the one
    /// [`TestRequest::chunked`] adds; the body goes out as before (so `Content-Length` with
    /// `chunked()` sends both, which the server refuses as a smuggling attempt).
    ///
    /// ```
    /// use sgi::testing::{TestClient, TestRequest};
    ///
    /// let client = TestClient::new(sgi::handler_fn(|env, start_response| {
    ///     let host = env.get("HTTP_HOST").unwrap_or("").to_owned();
    ///     let accept = env.get("HTTP_ACCEPT").unwrap_or("").to_owned();
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(format!("{host} {accept}")))
    /// }));
    /// let request = TestRequest::get("/").header("Host", "example.com").header("Accept", "a").header("Accept", "b");
    /// assert_eq!(client.request(request).text(), "example.com a,b");
    /// ```
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> TestRequest {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body, replacing any previous one.
    ///
    /// ```
    /// use std::io::Read;
    /// use sgi::testing::{TestClient, TestRequest};
    ///
    /// let client = TestClient::new(sgi::handler_fn(|env, start_response| {
    ///     let mut body = Vec::new();
    ///     env.input().read_to_end(&mut body)?;
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(format!("{} bytes", body.len())))
    /// }));
    /// assert_eq!(client.request(TestRequest::post("/").body(vec![7u8; 1000])).text(), "1000 bytes");
    /// ```
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> TestRequest {
        self.body = body.into();
        self
    }

    /// Sets the body to `pairs`, `application/x-www-form-urlencoded` (`+` for a space, `%XX` for
    /// every byte but ASCII letters, digits and `*-._`), and the `Content-Type` header to
    /// match, replacing any given before.
    ///
    /// ```
    /// let request = sgi::testing::TestRequest::post("/").form([("name", "Ada L."), ("lang", "en&fr")]);
    /// let bytes = request.to_bytes();
    /// assert!(bytes.ends_with(b"\r\n\r\nname=Ada+L.&lang=en%26fr"));
    /// assert!(bytes.windows(47).any(|w| w == b"Content-Type: application/x-www-form-urlencoded"));
    /// ```
    pub fn form<I, K, V>(mut self, pairs: I) -> TestRequest
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut body = Vec::new();
        for (i, (key, value)) in pairs.into_iter().enumerate() {
            if i > 0 {
                body.push(b'&');
            }
            form_encode(&mut body, key.as_ref());
            body.push(b'=');
            form_encode(&mut body, value.as_ref());
        }
        self.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
        self.headers.push(("Content-Type".to_owned(), b"application/x-www-form-urlencoded".to_vec()));
        self.body = body;
        self
    }

    /// Sends the body with `Transfer-Encoding: chunked`, in one chunk (none for an empty body),
    /// instead of with a `Content-Length`.
    ///
    /// ```
    /// let request = sgi::testing::TestRequest::post("/").body("hello").chunked();
    /// assert!(request.to_bytes().ends_with(b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"));
    /// ```
    pub fn chunked(mut self) -> TestRequest {
        self.chunked = true;
        self
    }

    /// Sets the HTTP version on the request line (`HTTP/1.1` by default), as given: `HTTP/1.0`
    /// to test what an HTTP/1.0 client gets, anything else to test the server's refusal.
    ///
    /// ```
    /// use sgi::testing::{TestClient, TestRequest};
    ///
    /// let client = TestClient::new(sgi::handler_fn(|_env, start_response| {
    ///     let chunks = sgi::Body::from_chunks(["a", "b"]);
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(chunks))
    /// }));
    /// // HTTP/1.0 has no chunked coding: the body ends with the connection.
    /// let response = client.request(TestRequest::get("/").version("HTTP/1.0"));
    /// assert_eq!(response.header("Transfer-Encoding"), None);
    /// assert_eq!(response.text(), "ab");
    /// assert_eq!(client.request(TestRequest::get("/").version("HTTP/2.0")).status(), 505);
    /// ```
    pub fn version(mut self, version: &str) -> TestRequest {
        version.clone_into(&mut self.version);
        self
    }

    /// Sets the address the request comes from: `REMOTE_ADDR`, `REMOTE_PORT` and
    /// [`Environ::remote_addr`](crate::Environ::remote_addr) (`127.0.0.1:50000` by default).
    ///
    /// ```
    /// use sgi::testing::{TestClient, TestRequest};
    ///
    /// let client = TestClient::new(sgi::handler_fn(|env, start_response| {
    ///     let peer = format!("{} {}", env.get("REMOTE_ADDR").unwrap_or(""), env.get("REMOTE_PORT").unwrap_or(""));
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(peer))
    /// }));
    /// let from = "[2001:db8::1]:4242".parse().unwrap();
    /// assert_eq!(client.request(TestRequest::get("/").peer(from)).text(), "2001:db8::1 4242");
    /// ```
    pub fn peer(mut self, addr: SocketAddr) -> TestRequest {
        self.peer = addr;
        self
    }

    /// The bytes [`TestClient::request`] sends for this request (see the type's documentation).
    ///
    /// ```
    /// let request = sgi::testing::TestRequest::get("/").header("Host", "example.com");
    /// assert_eq!(request.to_bytes(), b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    /// ```
    pub fn to_bytes(&self) -> Vec<u8> {
        let has = |name: &str| self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(format!("{} {} {}\r\n", self.method, self.target, self.version).as_bytes());
        if !has("host") {
            out.extend_from_slice(b"Host: localhost\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        let (length, coding) = (has("content-length"), has("transfer-encoding"));
        if self.chunked && !coding {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else if !self.chunked && !self.body.is_empty() && !length && !coding {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if self.chunked {
            if !self.body.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", self.body.len()).as_bytes());
                out.extend_from_slice(&self.body);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Appends `bytes` to `out`, `application/x-www-form-urlencoded`.
fn form_encode(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]),
        }
    }
}

/// The server's response to a [`TestRequest`]: status, headers exactly as sent, and the body,
/// de-chunked.
///
/// ```
/// use sgi::testing::TestClient;
///
/// let client = TestClient::new(sgi::handler_fn(|_env, start_response| {
///     let chunks = sgi::Body::from_chunks(["Hello, ", "World!"]);
///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])?
///         .body(chunks))
/// }));
/// let response = client.get("/");
/// assert_eq!(response.header("transfer-encoding"), Some("chunked"));
/// assert_eq!(response.body(), b"Hello, World!");
/// assert!(response.is_complete());
/// let cookies: Vec<&[u8]> =
///     response.headers().filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| v).collect();
/// assert_eq!(cookies, [b"a=1", b"b=2"]);
/// ```
#[derive(Clone)]
pub struct TestResponse {
    status: u16,
    reason: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    complete: bool,
    raw: Vec<u8>,
}

impl fmt::Debug for TestResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<_> = self.headers.iter().map(|(n, v)| (n, String::from_utf8_lossy(v))).collect();
        f.debug_struct("TestResponse")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("headers", &headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("complete", &self.complete)
            .finish_non_exhaustive()
    }
}

impl TestResponse {
    /// The status code.
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::handler_fn(|_env, _start_response| Err("broken".into())));
    /// assert_eq!(client.get("/").status(), 500);
    /// ```
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase of the status line.
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::handler_fn(|_env, start_response| {
    ///     Ok(start_response.start("201", [("Content-Type", "text/plain")])?.body(""))
    /// }));
    /// assert_eq!(client.get("/").reason(), "Created");
    /// ```
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The value of the first header field named `name` (in any case), as `&str`; `None` if
    /// there is none or its value is not UTF-8 (see [`TestResponse::header_bytes`]).
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::handler_fn(|_env, start_response| {
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain"), ("X-Id", "7")])?.body(""))
    /// }));
    /// let response = client.get("/");
    /// assert_eq!(response.header("x-id"), Some("7"));
    /// assert_eq!(response.header("X-Other"), None);
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value of the first header field named `name` (in any case), exactly as sent.
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::handler_fn(|_env, start_response| {
    ///     Ok(start_response.start("200 OK", [("X-Latin-1", b"caf\xe9")])?.body(""))
    /// }));
    /// let response = client.get("/");
    /// assert_eq!(response.header_bytes("X-Latin-1"), Some(&b"caf\xe9"[..]));
    /// assert_eq!(response.header("X-Latin-1"), None);
    /// ```
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// Every header field, in the order sent, repeated fields one by one.
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::handler_fn(|_env, start_response| {
    ///     Ok(start_response.start("204 No Content", [("X-A", "1")])?.body(""))
    /// }));
    /// let response = client.get("/");
    /// let names: Vec<&str> = response.headers().map(|(name, _)| name).collect();
    /// assert_eq!(names, ["Date", "Server", "X-A"]);
    /// ```
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// The body: de-chunked for a chunked response; empty for a response to `HEAD`, a `204` or
    /// a `304`.
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::handler_fn(|_env, start_response| {
    ///     Ok(start_response.start("200 OK", [("Content-Type", "application/octet-stream")])?.body(vec![0u8, 159, 146, 150]))
    /// }));
    /// assert_eq!(client.get("/").body(), [0, 159, 146, 150]);
    /// ```
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as text, invalid UTF-8 replaced with `U+FFFD`.
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::handler_fn(|_env, start_response| {
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("héllo"))
    /// }));
    /// assert_eq!(client.get("/").text(), "héllo");
    /// ```
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body, taken out of the response.
    ///
    /// ```
    /// let body = sgi::testing::TestClient::new(sgi::debug::EnvironDump).get("/").into_body();
    /// assert!(body.starts_with(b"{\"environ\": {"));
    /// ```
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Whether the whole body arrived as its framing announced. `false` when the server closed
    /// the connection in the middle, which it does when the body fails or panics after the
    /// response began (the status and headers were already sent); [`TestResponse::body`] then
    /// holds what arrived.
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::handler_fn(|_env, start_response| {
    ///     let chunks = sgi::Body::from_fallible_chunks([Ok("first "), Err("the database went away")]);
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(chunks))
    /// }));
    /// let response = client.get("/");
    /// assert_eq!((response.status(), response.text()), (200, "first ".into()));
    /// assert!(!response.is_complete());
    /// ```
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Every byte the server wrote on the connection: interim `100 Continue` responses, the
    /// head, the body as framed (chunked or not), and anything after it.
    ///
    /// ```
    /// let client = sgi::testing::TestClient::new(sgi::handler_fn(|_env, start_response| {
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(sgi::Body::from_chunks(["hi"])))
    /// }));
    /// assert!(client.get("/").raw().ends_with(b"\r\n\r\n2\r\nhi\r\n0\r\n\r\n"));
    /// ```
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Parses the first final response in `raw`; `raw` back if there is none.
    fn parse(raw: Vec<u8>, is_head: bool) -> Result<TestResponse, Vec<u8>> {
        let mut at = 0;
        let (status, reason, headers) = loop {
            let Some((len, status, reason, headers)) = parse_head(&raw[at..]) else { return Err(raw) };
            at += len;
            // Interim responses (`100 Continue`) come before the answer.
            if !(100..200).contains(&status) || status == 101 {
                break (status, reason, headers);
            }
        };
        let rest = &raw[at..];
        let field = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice());
        let (body, complete) = if is_head || status == 204 || status == 304 || (100..200).contains(&status) {
            (Vec::new(), true)
        } else if field("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
            dechunk(rest)
        } else if let Some(len) = field("content-length") {
            let len = std::str::from_utf8(len).ok().and_then(|l| l.parse::<usize>().ok()).unwrap_or(0);
            let n = len.min(rest.len());
            (rest[..n].to_vec(), n == len)
        } else {
            // Delimited by the end of the connection.
            (rest.to_vec(), true)
        };
        Ok(TestResponse { status, reason, headers, body, complete, raw })
    }
}

/// A response head at the start of `bytes`: its length, status, reason and fields.
type Head = (usize, u16, String, Vec<(String, Vec<u8>)>);

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let mut room = 64;
    loop {
        let mut fields = vec![httparse::EMPTY_HEADER; room];
        let mut response = httparse::Response::new(&mut fields);
        match response.parse(bytes) {
            Ok(httparse::Status::Complete(len)) => {
                let headers =
                    response.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect::<Vec<_>>();
                return Some((len, response.code?, response.reason.unwrap_or("").to_owned(), headers));
            }
            Err(httparse::Error::TooManyHeaders) => room *= 4,
            Ok(httparse::Status::Partial) | Err(_) => return None,
        }
    }
}

/// The data of a chunked body at the start of `bytes`, and whether it was all there.
fn dechunk(mut bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Ok(httparse::Status::Complete((len, size))) = httparse::parse_chunk_size(bytes) else {
            return (body, false);
        };
        bytes = &bytes[len..];
        if size == 0 {
            // The trailer section: fields, then an empty line.
            let whole = bytes.starts_with(b"\r\n") || bytes.windows(4).any(|w| w == b"\r\n\r\n");
            return (body, whole);
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if bytes.len() < size {
            body.extend_from_slice(bytes);
            return (body, false);
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size..];
        match bytes.strip_prefix(b"\r\n") {
            Some(rest) => bytes = rest,
            None => return (body, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_and_notices_truncation() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), (b"abcde".to_vec(), true));
        assert_eq!(dechunk(b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n"), (b"abc".to_vec(), true));
        assert_eq!(dechunk(b"3\r\nabc\r\n"), (b"abc".to_vec(), false));
        assert_eq!(dechunk(b"5\r\nabc"), (b"abc".to_vec(), false));
        assert_eq!(dechunk(b""), (Vec::new(), false));
    }

    #[test]
    fn skips_interim_responses_and_knows_head_has_no_body() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        let response = TestResponse::parse(raw.clone(), false).expect("a response");
        assert_eq!((response.status(), response.body()), (200, &b"ok"[..]));
        assert_eq!(response.raw(), raw);
        let head = TestResponse::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n".to_vec(), true).unwrap();
        assert!(head.body().is_empty() && head.is_complete());
        let short = TestResponse::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok".to_vec(), false).unwrap();
        assert!(!short.is_complete());
        assert!(TestResponse::parse(b"HTTP/1.1 200 OK\r\n".to_vec(), false).is_err());
    }

    #[test]
    fn parses_many_header_fields() {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..300 {
            raw.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        let response = TestResponse::parse(raw, false).expect("a response");
        assert_eq!(response.headers().count(), 301);
        assert_eq!(response.header("x-299"), Some("299"));
    }

    #[test]
    fn form_encoding() {
        let mut out = Vec::new();
        form_encode(&mut out, "a b&c=d/é~*-._".as_bytes());
        assert_eq!(out, b"a+b%26c%3Dd%2F%C3%A9%7E*-._");
    }

    #[test]
    fn caller_framing_is_not_doubled() {
        let bytes = TestRequest::post("/").header("Content-Length", "1").body("xy").to_bytes();
        assert_eq!(bytes, b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nxy");
        let bytes = TestRequest::post("/").chunked().to_bytes();
        assert_eq!(bytes, b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        let bytes = TestRequest::post("/").header("Transfer-Encoding", "gzip, chunked").body("ab").chunked().to_bytes();
        assert_eq!(
            bytes,
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
        );
        let bytes = TestRequest::post("/").header("Content-Length", "7").body("ab").chunked().to_bytes();
        assert!(bytes.starts_with(
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        let bytes = TestRequest::post("/").header("Transfer-Encoding", "chunked").body("0\r\n\r\n").to_bytes();
        assert!(bytes.ends_with(b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"));
    }
}
