//! `sgi` does for Rust what WSGI and its servers do for Python: an application implements one
//! [`Handler`] trait (a CGI-style [`Environ`] and a [`StartResponse`] in, a streamed [`Body`] out),
//! and the library owns everything between it and the socket: one strict HTTP/1.1 parser, one
//! response writer, and interchangeable [runners](runner) that schedule connections.
//!
//! # Quick start
//!
//! ```no_run
//! use sgi::{handler_fn, Server};
//!
//! fn main() -> Result<(), sgi::Error> {
//!     let app = handler_fn(|env, start_response| {
//!         let body = format!("Hello from {}\n", env.get("PATH_INFO").unwrap_or("?"));
//!         Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
//!     });
//!     Server::bind("127.0.0.1:8000")?.serve(app)
//! }
//! ```
//!
//! # The application interface
//!
//! PEP 3333's semantics with Rust's types:
//! - [`Handler::call`] gets `&mut Environ` and a [`StartResponse`]; [`StartResponse::start`]
//!   consumes it and returns the [`Started`] token, the only way to build a [`Response`]. A
//!   handler that forgets to start a response does not compile.
//! - Status and headers are validated when set (no CR, LF or NUL: no response splitting; no
//!   hop-by-hop headers) and sent with the first non-empty body chunk, so they can be replaced
//!   until the handler returns ([`Started::restart`], PEP 3333's `exc_info`).
//! - The body is pulled by the server ([`Body`]): bytes, an iterator of chunks, a reader or a
//!   file. Dropping it is WSGI's `close()`.
//! - `wsgi.input` is [`Input`]: a [`std::io::Read`] over the de-framed body that returns EOF at
//!   its end and sends `100 Continue` lazily on the first read.
//! - Errors returned by a handler become `500`; panics are caught at the connection boundary and
//!   also become `500` (or a closed connection when the response had begun).
//!
//! # Testing a handler
//!
//! [`testing::TestClient`] calls a handler in memory through the code a server runs for each
//! connection (parser, environ, response checks and framing, `500` on a panic), with no socket:
//!
//! ```
//! let client = sgi::testing::TestClient::new(sgi::handler_fn(|_env, start_response| {
//!     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("Hello, World!"))
//! }));
//! assert_eq!(client.get("/").text(), "Hello, World!");
//! ```
//!
//! # Helpers for applications
//!
//! [`util`] has what Python's `wsgiref.util` and `urllib.parse` give a WSGI application (URLs
//! rebuilt from the environ, `shift_path_info`, percent-encoding, bounded form parsing);
//! [`StaticFiles`] serves a directory (conditional and range requests, no path traversal). The
//! `http` cargo feature adds the `http_bridge` module: the request as the `http` crate's types,
//! and answers given as an `http::Response`.
//!
//! # Logging and proxies
//!
//! [`Config::access_log`] writes an [`AccessLog`] line per response once its last byte is out
//! (gunicorn's format codes), refused requests included; the server's own messages go to the
//! `log` facade (feature `log`, on by default) or standard error ([`Config::error_log`]).
//! Behind a proxy, [`Config::forwarded_allow_ips`] says whose `X-Forwarded-For` and
//! `X-Forwarded-Proto` set `REMOTE_ADDR` and `wsgi.url_scheme`, and
//! [`Server::proxy_protocol`] reads the PROXY protocol (v1, v2) HAProxy and load balancers send.
//!
//! # Choosing a runner
//!
//! | runner | model | concurrency | an idle keep-alive client costs | `Sync` buys |
//! |---|---|---|---|---|
//! | [`runner::Serial`] | one connection at a time | 1 | the whole server, up to the keep-alive timeout | nothing: one request at a time |
//! | [`runner::Threaded`] | a thread per connection | live connections, bounded | a thread | sharing state across threads |
//! | [`runner::ThreadPool`] (default) | N workers taking turns at watching connections; heads (and small bodies) buffered before a worker is committed, slow readers parked | N requests | under 2 KiB | sharing state across threads |
//! | [`runner::Forking`] | a child process per connection | live children, bounded | a process | nothing: each child has its own copy |
//! | [`runner::EventLoop`] | N readiness loops, handlers run on them (a blocking handler stalls its loop) | N requests | under 2 KiB | sharing state across loops |
//!
//! Pick by name with [`runner::by_name`] (`serial`, `threads`, `pool`, `fork`, `event`). The README has
//! measured figures for each on the same handlers.
//!
//! # Limits and defaults
//!
//! Every limit and timeout is on [`Config`], each setter documenting its default. Bad input gets
//! a clear status and a closed connection: 400 (malformed, smuggling attempts), 408 (head not
//! received in time), 413 (body over the limit), 414 (request line too long), 431 (too many or
//! too large header fields), 501 (unsupported transfer coding), 505 (HTTP version).
//!
//! # Shutting down
//!
//! [`Server::shutdown_handle`] gives a [`ShutdownHandle`]; triggering it stops accepting, lets the
//! requests in progress finish (their responses say `Connection: close`) and makes
//! [`Server::serve`] return. A connection idle in keep-alive when the stop begins is not cut
//! under a request that may already be on its way: it waits half a second more, answers a
//! request that comes in that time (with `Connection: close`), then closes; a head still
//! arriving gets the same grace, then `408`. A closed-loop client
//! therefore never loses a request to a stop; a client idle longer sees a clean close between
//! requests, which HTTP clients retry.
//!
//! # Platform notes
//!
//! Linux only: the runners wait on `poll(2)` and epoll (through `mio`) and a self-pipe, and use
//! Linux calls (`pipe2`, `/proc/self/status`); the crate is built and tested on Linux alone.
//! [`runner::Forking`] forks, which is only sound in a single-threaded process: it checks the
//! thread count and refuses with [`Error::NotSingleThreaded`] otherwise, so start it from `main`
//! before anything spawns a thread. Under `panic = "abort"` a panicking handler ends its process:
//! a fork child dies with its one connection, the thread runners take the whole server down.
//! [`Server::serve`] routes SIGTERM and SIGINT to a graceful stop unless
//! [`Server::handle_signals`] turns that off.
//!
//! # Versioning and MSRV
//!
//! Semantic versioning; the minimum supported Rust version is in `Cargo.toml` (`rust-version`)
//! and is raised only in minor releases, never together with other changes.

#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms, unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_errors_doc)]
#![cfg_attr(test, deny(warnings))]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod access_log;
mod allow;
mod body;
mod config;
mod conn;
pub mod debug;
mod environ;
mod error;
mod handler;
mod headers;
mod http;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http_bridge;
mod limits;
mod logging;
mod net;
mod options;
#[doc(hidden)]
pub mod private;
mod reload;
pub mod runner;
mod server;
mod shutdown;
mod static_files;
pub mod testing;
pub mod util;
// The one place with `unsafe`: system calls, each block justified.
#[allow(unsafe_code)]
mod sys;

pub use access_log::{AccessLog, AccessLogFormatError, DEFAULT_ACCESS_LOG_FORMAT};
pub use allow::{AllowList, AllowListError};
pub use body::Body;
pub use config::{
    Config, ErrorLog, DEFAULT_BODY_TIMEOUT, DEFAULT_BUFFERED_BODY, DEFAULT_DRAIN_LIMIT, DEFAULT_GRACEFUL_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_MAX_CHUNK_EXTENSION, DEFAULT_MAX_HEAD,
    DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_FIELD, DEFAULT_MAX_REQUESTS_PER_CONNECTION, DEFAULT_MAX_REQUEST_LINE,
    DEFAULT_MAX_TRAILER, DEFAULT_MIN_BODY_RATE, DEFAULT_WRITE_TIMEOUT, MAX_HEADERS_CEILING,
};
pub use environ::{Environ, ErrorStream, Extensions, Input, RunnerFlags};
pub use error::{BindError, Error, ParseError, Result};
pub use handler::{handler_fn, BoxError, Handler, Response, StartError, StartResponse, Started};
pub use headers::{HeaderValue, Headers};
pub use limits::raise_fd_limit;
pub use options::{Options, OptionsError, CMD_ARGS_VAR, USAGE_ERROR};
pub use server::{Server, DEFAULT_BACKLOG, MAX_LISTENERS};
pub use shutdown::ShutdownHandle;
pub use static_files::StaticFiles;
