//! Error types: [`ParseError`] for what a client sent wrong, [`Error`] for everything a caller sees.

use std::io;

/// The runner names, kept here so that the error type depends on nothing above it;
/// [`crate::runner::NAMES`] re-exports it.
pub(crate) const RUNNER_NAMES: &[&str] = &["serial", "threads", "pool", "fork", "event", "prefork"];

/// Why a request could not be accepted: a `Copy` value with one status mapping ([`ParseError::status`]).
///
/// The connection driver is the only code that turns one of these into bytes on the wire: it answers
/// with [`ParseError::status`] and closes the connection, because after a framing error nothing that
/// follows on the connection can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseError {
    /// The request line or a header line is malformed (httparse rejected it).
    Malformed,
    /// A line ended in a bare LF or a bare CR instead of CRLF.
    BareLineEnding,
    /// A header field name is not a token, or has whitespace before the colon.
    HeaderName,
    /// A header field value contains a control character, or a line was folded (obs-fold).
    HeaderValue,
    /// The request target is neither origin-form, absolute-form nor `*` for `OPTIONS`.
    Target,
    /// The request line is longer than [`Config::max_request_line`](crate::Config::max_request_line).
    UriTooLong,
    /// More header fields than [`Config::max_headers`](crate::Config::max_headers).
    TooManyHeaders,
    /// One header field is larger than [`Config::max_header_field`](crate::Config::max_header_field).
    HeaderFieldTooLarge,
    /// The whole head is larger than [`Config::max_head`](crate::Config::max_head).
    HeadTooLarge,
    /// `Content-Length` is not 1*DIGIT, overflows, or is repeated.
    ContentLength,
    /// `Transfer-Encoding` is malformed, repeats `chunked`, or does not end in `chunked`.
    TransferEncoding,
    /// Both `Content-Length` and `Transfer-Encoding` were sent.
    ContentLengthWithTransferEncoding,
    /// `Transfer-Encoding` was sent on an HTTP/1.0 request.
    TransferEncodingOnHttp10,
    /// A transfer coding other than `chunked` was named.
    UnsupportedTransferCoding,
    /// `Host` is missing on HTTP/1.1, or repeated.
    Host,
    /// `Content-Type` is repeated.
    DuplicateContentType,
    /// An `Expect` value other than `100-continue`.
    Expectation,
    /// The method is `CONNECT`, which an origin server does not tunnel.
    MethodNotImplemented,
    /// The HTTP version is well formed but not 1.0 or 1.1.
    Version,
    /// A chunk-size line is malformed or overflows.
    ChunkSize,
    /// A chunk extension is malformed or longer than the limit.
    ChunkExtension,
    /// A chunk's data is not followed by CRLF, or the trailer section is malformed.
    ChunkFraming,
    /// The trailer section is larger than [`Config::max_trailer`](crate::Config::max_trailer).
    TrailerTooLarge,
    /// The body is larger than [`Config::max_body`](crate::Config::max_body).
    BodyTooLarge,
    /// The client closed the connection in the middle of a body.
    IncompleteBody,
    /// The head (or body) did not arrive within its timeout.
    Timeout,
    /// The path falls outside the configured `SCRIPT_NAME` mount point.
    OutsideMount,
    /// A trusted proxy's scheme headers contradict each other (`X-Forwarded-Proto: https` with
    /// `X-Forwarded-Ssl: off`, for example): gunicorn's `InvalidSchemeHeaders`.
    ContradictorySchemeHeaders,
    /// A listener that expects the PROXY protocol got no valid header, or one from a peer not
    /// allowed to send it.
    ProxyProtocol,
}

impl ParseError {
    /// The HTTP status code this error is answered with.
    ///
    /// ```
    /// assert_eq!(sgi::ParseError::UriTooLong.status(), 414);
    /// assert_eq!(sgi::ParseError::ContentLengthWithTransferEncoding.status(), 400);
    /// ```
    pub fn status(self) -> u16 {
        use ParseError::*;
        match self {
            UriTooLong => 414,
            TooManyHeaders | HeaderFieldTooLarge | HeadTooLarge => 431,
            BodyTooLarge => 413,
            UnsupportedTransferCoding | MethodNotImplemented => 501,
            Version => 505,
            Timeout => 408,
            Expectation => 417,
            OutsideMount => 404,
            ContradictorySchemeHeaders | ProxyProtocol => 400,
            Malformed
            | BareLineEnding
            | HeaderName
            | HeaderValue
            | Target
            | ContentLength
            | TransferEncoding
            | ContentLengthWithTransferEncoding
            | TransferEncodingOnHttp10
            | Host
            | DuplicateContentType
            | ChunkSize
            | ChunkExtension
            | ChunkFraming
            | TrailerTooLarge
            | IncompleteBody => 400,
        }
    }

    /// A short lowercase description, used in logs and in the error response body.
    pub fn description(self) -> &'static str {
        use ParseError::*;
        match self {
            Malformed => "malformed request",
            BareLineEnding => "line not terminated by CRLF",
            HeaderName => "invalid header field name",
            HeaderValue => "invalid header field value",
            Target => "invalid request target",
            UriTooLong => "request line too long",
            TooManyHeaders => "too many header fields",
            HeaderFieldTooLarge => "header field too large",
            HeadTooLarge => "request head too large",
            ContentLength => "invalid content-length",
            TransferEncoding => "invalid transfer-encoding",
            ContentLengthWithTransferEncoding => "both content-length and transfer-encoding",
            TransferEncodingOnHttp10 => "transfer-encoding on http/1.0",
            UnsupportedTransferCoding => "unsupported transfer coding",
            Host => "missing or repeated host",
            DuplicateContentType => "repeated content-type",
            Expectation => "unsupported expectation",
            MethodNotImplemented => "method not implemented",
            Version => "http version not supported",
            ChunkSize => "invalid chunk size",
            ChunkExtension => "invalid chunk extension",
            ChunkFraming => "invalid chunked framing",
            TrailerTooLarge => "trailer section too large",
            BodyTooLarge => "request body too large",
            IncompleteBody => "incomplete request body",
            Timeout => "request timed out",
            OutsideMount => "path outside the application mount point",
            ContradictorySchemeHeaders => "contradictory scheme headers",
            ProxyProtocol => "invalid PROXY protocol header",
        }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for ParseError {}

impl From<ParseError> for io::Error {
    /// Lets a body-framing error travel through [`std::io::Read`] to the handler and back.
    fn from(e: ParseError) -> io::Error {
        let kind = match e {
            ParseError::Timeout => io::ErrorKind::TimedOut,
            ParseError::IncompleteBody => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// Everything that can go wrong in `sgi`, as seen by a caller.
///
/// Matchable, and `#[non_exhaustive]` so that variants can be added without a breaking release.
/// `Display` describes only this level; the cause is available through
/// [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error from a socket, the listener or the operating system.
    #[error("i/o error")]
    Io(#[from] io::Error),
    /// A request could not be parsed.
    #[error("bad request")]
    Parse(#[from] ParseError),
    /// The status given to `start_response` is not `NNN Reason` with a code in 200..=999.
    #[error("invalid response status")]
    InvalidStatus,
    /// A response header name is not an RFC 9110 token.
    #[error("invalid response header name")]
    InvalidHeaderName,
    /// A response header value contains CR, LF, NUL or another control character.
    #[error("invalid response header value")]
    InvalidHeaderValue,
    /// The application tried to set a hop-by-hop header (`Connection`, `Transfer-Encoding`, ...),
    /// which only the server may set.
    #[error("hop-by-hop response header set by the application")]
    HopByHopHeader,
    /// The response headers were already sent, so they can no longer be replaced.
    #[error("response headers already sent")]
    HeadersSent,
    /// A listening socket could not be created or bound: `cannot bind ADDR`, with the
    /// operating system's error as the [`source`](std::error::Error::source).
    #[error(transparent)]
    Bind(Box<BindError>),
    /// No runner has the given name.
    #[error("unknown runner {0:?} (expected one of: {known})", known = RUNNER_NAMES.join(", "))]
    UnknownRunner(Box<str>),
    /// A fork-based runner was started in a process that already runs more than one thread.
    #[error("fork-based runner needs a single-threaded process, this one has {0} threads")]
    NotSingleThreaded(usize),
    /// The handler factory given to [`Server::serve_factory`](crate::Server::serve_factory)
    /// failed (for the prefork runner: in every worker, so that none could boot).
    #[error("the handler factory failed")]
    Factory(#[source] crate::handler::BoxError),
    /// The prefork master stopped because its workers could not serve: the message says why.
    #[error("prefork: {0}")]
    Workers(Box<str>),
}

impl Error {
    /// Converts this error into an [`io::Error`], keeping it as the source, so that it can travel
    /// through [`std::io::Read`] or [`std::io::Write`] implementations.
    pub fn into_io(self) -> io::Error {
        match self {
            Error::Io(e) => e,
            other => io::Error::other(other),
        }
    }
}

/// Which address could not be bound, and why: the payload of [`Error::Bind`].
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {addr}")]
pub struct BindError {
    addr: Box<str>,
    source: io::Error,
}

impl BindError {
    pub(crate) fn error(addr: impl Into<Box<str>>, source: io::Error) -> Error {
        Error::Bind(Box::new(BindError { addr: addr.into(), source }))
    }

    /// The address as given: `host:port`, or `unix:PATH`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// What the operating system said.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }
}

/// `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stays_small() {
        // A large error makes every `Result` in the crate large; box big payloads instead.
        assert!(std::mem::size_of::<Error>() <= 24, "{}", std::mem::size_of::<Error>());
        assert_eq!(std::mem::size_of::<ParseError>(), 1);
    }

    #[test]
    fn every_parse_error_maps_to_a_client_error_or_501_505() {
        for e in [ParseError::Malformed, ParseError::Timeout, ParseError::Version] {
            assert!((400..=505).contains(&e.status()));
        }
    }
}
