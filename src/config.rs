//! Limits, timeouts and identity of the server: plain data, shared by every runner.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::access_log::AccessLog;
use crate::allow::AllowList;
use crate::logging::{Level, LeveledLog, Sink, Target};

/// Default for [`Config::max_request_line`]: 8 KiB, like nginx and Apache (`LimitRequestLine 8190`).
pub const DEFAULT_MAX_REQUEST_LINE: usize = 8 * 1024;
/// Default for [`Config::max_headers`]: 100 fields, like gunicorn, Apache and hyper.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Hard ceiling for [`Config::max_headers`]: the parser keeps its field table on the stack.
pub const MAX_HEADERS_CEILING: usize = 512;
/// Default for [`Config::max_header_field`]: 8 KiB per field, like gunicorn and nginx.
pub const DEFAULT_MAX_HEADER_FIELD: usize = 8 * 1024;
/// Default for [`Config::max_head`]: 64 KiB for the request line and all fields together.
pub const DEFAULT_MAX_HEAD: usize = 64 * 1024;
/// Default for [`Config::max_body`]: 10 MiB.
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
/// Default for [`Config::max_chunk_extension`]: 1 KiB of extensions per chunk-size line.
pub const DEFAULT_MAX_CHUNK_EXTENSION: usize = 1024;
/// Default for [`Config::max_trailer`]: 16 KiB, like hyper.
pub const DEFAULT_MAX_TRAILER: usize = 16 * 1024;
/// Default for [`Config::drain_limit`]: 64 KiB of unread request body are read and discarded
/// to keep a connection alive; beyond that it is closed instead.
pub const DEFAULT_DRAIN_LIMIT: u64 = 64 * 1024;
/// Default for [`Config::header_timeout`]: 20 s for a whole request head once its first byte came.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Default for [`Config::keepalive_timeout`]: 5 s idle between requests.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`Config::body_timeout`]: 30 s without progress while reading a body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Config::min_body_rate`]: 500 bytes a second, Apache `mod_reqtimeout`'s `MinRate`.
pub const DEFAULT_MIN_BODY_RATE: u64 = 500;
/// Default for [`Config::buffered_body`]: 64 KiB.
pub const DEFAULT_BUFFERED_BODY: u64 = 64 * 1024;
/// Default for [`Config::write_timeout`]: 30 s without progress while writing a response.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Config::graceful_timeout`]: 30 s, like gunicorn's `graceful_timeout`.
pub const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Config::max_requests_per_connection`]: 1000, like nginx's `keepalive_requests`.
pub const DEFAULT_MAX_REQUESTS_PER_CONNECTION: usize = 1000;

/// Where the server's error log goes: one call per message, without a trailing newline.
pub type ErrorLog = Arc<dyn Fn(&str) + Send + Sync>;

/// Limits, timeouts and identity of a server.
///
/// Every setter documents its default; the defaults are safe for a server exposed to the internet
/// behind nothing. Timeouts of `None` mean "wait forever" and are not recommended.
///
/// ```
/// use std::time::Duration;
/// let config = sgi::Config::new()
///     .max_body(Some(1 << 20))
///     .keepalive_timeout(Some(Duration::from_secs(75)))
///     .server_header(Some("my-app"));
/// assert_eq!(config.get_max_body(), Some(1 << 20));
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) max_request_line: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_header_field: usize,
    pub(crate) max_head: usize,
    pub(crate) max_body: Option<u64>,
    pub(crate) max_chunk_extension: usize,
    pub(crate) max_trailer: usize,
    pub(crate) drain_limit: u64,
    pub(crate) header_timeout: Option<Duration>,
    pub(crate) keepalive_timeout: Option<Duration>,
    pub(crate) body_timeout: Option<Duration>,
    pub(crate) min_body_rate: Option<u64>,
    pub(crate) buffered_body: u64,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) max_requests_per_connection: usize,
    pub(crate) graceful_timeout: Duration,
    pub(crate) server_header: Option<Box<str>>,
    pub(crate) script_name: Box<str>,
    pub(crate) url_scheme: Box<str>,
    pub(crate) keep_underscore_headers: bool,
    pub(crate) forwarded_allow_ips: AllowList,
    pub(crate) trust_forwarded_header: bool,
    pub(crate) proxy_allow_ips: AllowList,
    pub(crate) error_log: Sink,
    pub(crate) access_log: Option<Arc<AccessLog>>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_request_line: DEFAULT_MAX_REQUEST_LINE,
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_field: DEFAULT_MAX_HEADER_FIELD,
            max_head: DEFAULT_MAX_HEAD,
            max_body: Some(DEFAULT_MAX_BODY),
            max_chunk_extension: DEFAULT_MAX_CHUNK_EXTENSION,
            max_trailer: DEFAULT_MAX_TRAILER,
            drain_limit: DEFAULT_DRAIN_LIMIT,
            header_timeout: Some(DEFAULT_HEADER_TIMEOUT),
            keepalive_timeout: Some(DEFAULT_KEEPALIVE_TIMEOUT),
            body_timeout: Some(DEFAULT_BODY_TIMEOUT),
            min_body_rate: Some(DEFAULT_MIN_BODY_RATE),
            buffered_body: DEFAULT_BUFFERED_BODY,
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            max_requests_per_connection: DEFAULT_MAX_REQUESTS_PER_CONNECTION,
            graceful_timeout: DEFAULT_GRACEFUL_TIMEOUT,
            server_header: Some("sgi".into()),
            script_name: "".into(),
            url_scheme: "http".into(),
            keep_underscore_headers: false,
            forwarded_allow_ips: AllowList::loopback_and_unix(),
            trust_forwarded_header: false,
            proxy_allow_ips: AllowList::loopback_and_unix(),
            error_log: Sink::Default,
            access_log: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("max_request_line", &self.max_request_line)
            .field("max_headers", &self.max_headers)
            .field("max_header_field", &self.max_header_field)
            .field("max_head", &self.max_head)
            .field("max_body", &self.max_body)
            .field("max_chunk_extension", &self.max_chunk_extension)
            .field("max_trailer", &self.max_trailer)
            .field("drain_limit", &self.drain_limit)
            .field("header_timeout", &self.header_timeout)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("min_body_rate", &self.min_body_rate)
            .field("buffered_body", &self.buffered_body)
            .field("write_timeout", &self.write_timeout)
            .field("max_requests_per_connection", &self.max_requests_per_connection)
            .field("graceful_timeout", &self.graceful_timeout)
            .field("server_header", &self.server_header)
            .field("script_name", &self.script_name)
            .field("url_scheme", &self.url_scheme)
            .field("keep_underscore_headers", &self.keep_underscore_headers)
            .field("forwarded_allow_ips", &self.forwarded_allow_ips.to_string())
            .field("trust_forwarded_header", &self.trust_forwarded_header)
            .field("proxy_allow_ips", &self.proxy_allow_ips.to_string())
            .field("access_log", &self.access_log)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The default configuration (see each setter for its default).
    pub fn new() -> Config {
        Config::default()
    }

    /// Longest accepted request line in bytes, CRLF excluded; longer gets `414`.
    /// Default: [`DEFAULT_MAX_REQUEST_LINE`] (8 KiB).
    pub fn max_request_line(mut self, bytes: usize) -> Config {
        self.max_request_line = bytes;
        self
    }

    /// Most header fields in one request; more gets `431`. Default: [`DEFAULT_MAX_HEADERS`]
    /// (100). Values above [`MAX_HEADERS_CEILING`] are lowered to it.
    pub fn max_headers(mut self, count: usize) -> Config {
        self.max_headers = count.min(MAX_HEADERS_CEILING);
        self
    }

    /// Largest single header field (`name: value`) in bytes; larger gets `431`.
    /// Default: [`DEFAULT_MAX_HEADER_FIELD`] (8 KiB).
    pub fn max_header_field(mut self, bytes: usize) -> Config {
        self.max_header_field = bytes;
        self
    }

    /// Largest request head (request line and every field) in bytes; larger gets `431`.
    /// Default: [`DEFAULT_MAX_HEAD`] (64 KiB).
    pub fn max_head(mut self, bytes: usize) -> Config {
        self.max_head = bytes;
        self
    }

    /// Largest request body in bytes, or `None` for no limit. A larger `Content-Length` gets `413`
    /// before the handler runs; a chunked body that grows past it fails the handler's read and gets
    /// `413`. Default: [`DEFAULT_MAX_BODY`] (10 MiB).
    pub fn max_body(mut self, bytes: Option<u64>) -> Config {
        self.max_body = bytes;
        self
    }

    /// Longest chunk extension on one chunk-size line; longer gets `400`. Bounds the work a client
    /// can cause with tiny chunks. Default: [`DEFAULT_MAX_CHUNK_EXTENSION`] (1 KiB).
    pub fn max_chunk_extension(mut self, bytes: usize) -> Config {
        self.max_chunk_extension = bytes;
        self
    }

    /// Largest chunked trailer section in bytes; larger gets `400`. Trailer fields are read and
    /// discarded. Default: [`DEFAULT_MAX_TRAILER`] (16 KiB).
    pub fn max_trailer(mut self, bytes: usize) -> Config {
        self.max_trailer = bytes;
        self
    }

    /// How much unread request body the server reads and discards after the handler returns, to
    /// keep the connection alive; a longer remainder closes the connection instead.
    /// Default: [`DEFAULT_DRAIN_LIMIT`] (64 KiB).
    pub fn drain_limit(mut self, bytes: u64) -> Config {
        self.drain_limit = bytes;
        self
    }

    /// Deadline for a whole request head, counted from its first byte; on expiry the client gets
    /// `408` and the connection closes (the slowloris defence).
    /// Default: [`DEFAULT_HEADER_TIMEOUT`] (20 s).
    pub fn header_timeout(mut self, timeout: Option<Duration>) -> Config {
        self.header_timeout = timeout;
        self
    }

    /// How long a connection may sit idle waiting for its next request before it is closed.
    /// Set it above the idle timeout of a load balancer in front. Also bounds the wait for the
    /// first byte on a new connection. Default: [`DEFAULT_KEEPALIVE_TIMEOUT`] (5 s).
    pub fn keepalive_timeout(mut self, timeout: Option<Duration>) -> Config {
        self.keepalive_timeout = timeout;
        self
    }

    /// Longest wait for progress while reading a request body; on expiry the handler's read fails
    /// (the client gets `408`) and the connection closes. With [`Config::min_body_rate`] it is
    /// also the most time a body can have in hand. Default: [`DEFAULT_BODY_TIMEOUT`] (30 s).
    pub fn body_timeout(mut self, timeout: Option<Duration>) -> Config {
        self.body_timeout = timeout;
        self
    }

    /// The slowest a request body may arrive, in bytes a second, or `None` for no minimum (only
    /// the stall timeout). Each byte received buys `1 / rate` seconds, on top of what is left,
    /// but never more than [`Config::body_timeout`] ahead: a client that sends a burst and then
    /// trickles gets `408` once its credit runs out, so a worker waiting on a body is never held
    /// much longer than the body deserves. Default: [`DEFAULT_MIN_BODY_RATE`] (500 B/s).
    pub fn min_body_rate(mut self, bytes_per_second: Option<u64>) -> Config {
        self.min_body_rate = bytes_per_second.filter(|&r| r > 0);
        self
    }

    /// Request bodies up to this many bytes (with `Content-Length`, and no `Expect:
    /// 100-continue`) are read whole before the handler is called, by runners that share
    /// threads between connections (the pool): a slow upload of a small body then never holds a
    /// worker. Default: [`DEFAULT_BUFFERED_BODY`] (64 KiB).
    pub fn buffered_body(mut self, bytes: u64) -> Config {
        self.buffered_body = bytes;
        self
    }

    /// Longest wait for progress while writing a response; on expiry the connection is dropped.
    /// Default: [`DEFAULT_WRITE_TIMEOUT`] (30 s).
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Config {
        self.write_timeout = timeout;
        self
    }

    /// Requests served on one connection before it is closed (the last response carries
    /// `Connection: close`). Default: [`DEFAULT_MAX_REQUESTS_PER_CONNECTION`] (1000).
    pub fn max_requests_per_connection(mut self, count: usize) -> Config {
        self.max_requests_per_connection = count.max(1);
        self
    }

    /// How long a shutdown waits for requests in progress before it gives up on them (threads
    /// are abandoned, fork children killed). Default: [`DEFAULT_GRACEFUL_TIMEOUT`] (30 s).
    pub fn graceful_timeout(mut self, timeout: Duration) -> Config {
        self.graceful_timeout = timeout;
        self
    }

    /// Value of the `Server` response header, or `None` to send none (an application's own
    /// `Server` header always wins). Default: `Some("sgi")`.
    pub fn server_header(mut self, value: Option<&str>) -> Config {
        self.server_header = value.map(Into::into);
        self
    }

    /// The mount point of the application: requests under it get `SCRIPT_NAME` set to it and
    /// `PATH_INFO` to the rest; requests outside it get `404`. Default: empty (mounted at `/`).
    pub fn script_name(mut self, prefix: &str) -> Config {
        self.script_name = prefix.trim_end_matches('/').into();
        self
    }

    /// `wsgi.url_scheme` of every request, for a server behind a TLS-terminating proxy.
    /// Default: `"http"`.
    pub fn url_scheme(mut self, scheme: &str) -> Config {
        self.url_scheme = scheme.into();
        self
    }

    /// Keep request header fields whose name contains `_` (as `HTTP_*` variables). By default they
    /// are dropped, because `X_Forwarded_For` would otherwise land in the same variable as
    /// `X-Forwarded-For` and could spoof it. Default: `false`.
    pub fn keep_underscore_headers(mut self, keep: bool) -> Config {
        self.keep_underscore_headers = keep;
        self
    }

    /// The proxies whose word on the client is believed (gunicorn's `forwarded_allow_ips`):
    /// from a peer in `list`, `X-Forwarded-For` sets `REMOTE_ADDR` (the rightmost address not
    /// itself in `list`; `REMOTE_PORT` is then the port given with it, or 0) and
    /// `X-Forwarded-Proto` (or `X-Forwarded-Protocol: ssl`, `X-Forwarded-Ssl: on`) sets
    /// `wsgi.url_scheme`; scheme headers that contradict each other are refused with 400. The
    /// fields stay in the environ, and any other peer's are left as they came. Default:
    /// `127.0.0.1`, `::1` and peers on a Unix socket, as gunicorn; [`AllowList::nobody`]
    /// believes no one.
    ///
    /// ```
    /// let config = sgi::Config::new().forwarded_allow_ips("10.0.0.0/8,unix".parse()?);
    /// # let _ = config;
    /// # Ok::<(), sgi::AllowListError>(())
    /// ```
    pub fn forwarded_allow_ips(mut self, list: AllowList) -> Config {
        self.forwarded_allow_ips = list;
        self
    }

    /// Whether a trusted proxy's RFC 7239 `Forwarded` header is believed too (before
    /// `X-Forwarded-*`, when well formed). Default: `false`, because a proxy that sets
    /// `X-Forwarded-For` passes a client's own `Forwarded` along unless told to drop it (nginx
    /// does): turn it on behind a proxy that sets or strips `Forwarded`.
    pub fn trust_forwarded_header(mut self, trust: bool) -> Config {
        self.trust_forwarded_header = trust;
        self
    }

    /// The peers allowed to send a PROXY protocol header, on listeners that expect one
    /// ([`Server::proxy_protocol`](crate::Server::proxy_protocol)); a connection from anyone
    /// else is refused with 400 (gunicorn's `proxy_allow_ips`). Default: `127.0.0.1`, `::1`
    /// and peers on a Unix socket.
    pub fn proxy_allow_ips(mut self, list: AllowList) -> Config {
        self.proxy_allow_ips = list;
        self
    }

    /// Where the error log goes: handler errors and panics, protocol errors, and writes to
    /// `wsgi.errors`; every message about a connection names its peer.
    ///
    /// Default: the [`log`](https://docs.rs/log) facade when a logger is installed (cargo
    /// feature `log`, on by default), at its level (error, warning or info) with the target
    /// `sgi::conn` for a connection's messages and `sgi::server` for the server's; with no
    /// logger, standard error, each line prefixed with `[sgi] `. A sink given here gets every
    /// message, whatever its level.
    pub fn error_log(mut self, log: impl Fn(&str) + Send + Sync + 'static) -> Config {
        self.error_log = Sink::Plain(Arc::new(log));
        self
    }

    /// Sends the error log to `log` with each message's level (the options layer's file).
    pub(crate) fn leveled_error_log(mut self, log: LeveledLog) -> Config {
        self.error_log = Sink::Leveled(log);
        self
    }

    /// Writes one line per finished response to `log` (see [`AccessLog`]). Default: none.
    ///
    /// ```
    /// let config = sgi::Config::new().access_log(Some(sgi::AccessLog::to_stderr()));
    /// # let _ = config;
    /// ```
    pub fn access_log(mut self, log: Option<AccessLog>) -> Config {
        self.access_log = log.map(Arc::new);
        self
    }

    /// The configured body limit (see [`Config::max_body`]).
    pub fn get_max_body(&self) -> Option<u64> {
        self.max_body
    }

    /// Logs a message about the server as a whole.
    pub(crate) fn log(&self, level: Level, msg: &str) {
        self.error_log.emit(level, Target::Server, msg)
    }

    /// Logs a message about one connection (it names the peer).
    pub(crate) fn log_conn(&self, level: Level, msg: &str) {
        self.error_log.emit(level, Target::Conn, msg)
    }
}
