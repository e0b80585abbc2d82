//! A bridge to the [`http`] crate's types (cargo feature `http`), for code written against
//! `http::Request` and `http::Response`:
//!
//! - [`Environ::request_parts`]: the request as [`http::request::Parts`] (method, URI, version,
//!   headers); [`Environ::http_request`] adds [`Environ::input`] as the body.
//! - [`StartResponse::send_http`]: answers with an [`http::Response`] whose body is anything
//!   that converts into a [`Body`].
//!
//! Add `http = "1"` to your own dependencies to name its types.
//!
//! ```
//! use std::io::Read;
//!
//! let app = sgi::handler_fn(|env, start_response| {
//!     let mut request = env.http_request()?;
//!     let mut body = String::new();
//!     request.body_mut().read_to_string(&mut body)?;
//!     let response = http::Response::builder()
//!         .status(http::StatusCode::OK)
//!         .header(http::header::CONTENT_TYPE, "text/plain")
//!         .body(format!("{} {} sent {} bytes\n", request.method(), request.uri(), body.len()))?;
//!     Ok(start_response.send_http(response)?)
//! });
//! # let _ = app;
//! ```
//!
//! There is no adapter turning a `Fn(http::Request<_>) -> http::Response<_>` into a
//! [`Handler`](crate::Handler): the request's body borrows the environ, and the three lines
//! above say everything such an adapter would, error handling included.

use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri, Version};

use crate::body::Body;
use crate::environ::{Environ, Input};
use crate::handler::{Response, StartError, StartResponse};
use crate::http::encode::is_hop_by_hop;
use crate::util::{self, encode_into, PATH_SAFE, QUERY_SAFE};

/// Why [`Environ::request_parts`] could not express the request with the `http` crate's types.
///
/// Every request the server parses converts, but for a URI of 64 KiB or more, which `http::Uri`
/// refuses (possible only with a [`Config::max_request_line`](crate::Config::max_request_line)
/// raised that far); the other variants come from variables a middleware set wrongly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// `REQUEST_METHOD` is missing or not a token.
    #[error("REQUEST_METHOD is not an HTTP method")]
    Method(#[source] http::method::InvalidMethod),
    /// The URI (see [`Environ::request_parts`]) is not one `http::Uri` accepts.
    #[error("the request URI is not valid for http::Uri")]
    Uri(#[source] http::uri::InvalidUri),
    /// `SERVER_PROTOCOL` is not `HTTP/0.9`, `HTTP/1.0`, `HTTP/1.1`, `HTTP/2` or `HTTP/3`.
    #[error("SERVER_PROTOCOL is not a known HTTP version")]
    Version,
    /// A header variable's name or value is not a valid field name or value.
    #[error("environ variable {name} is not a valid header field")]
    Header {
        /// The variable, e.g. `HTTP_X_FOO`.
        name: String,
        /// What the `http` crate said.
        #[source]
        source: http::Error,
    },
}

impl<'c> Environ<'c> {
    /// The request as [`http::request::Parts`] (cargo feature `http`):
    ///
    /// - **method**: `REQUEST_METHOD`.
    /// - **URI**: the target as the client sent it (`RAW_URI`: a path and a query, or an
    ///   absolute URI when the client sent one; a fragment is dropped), so the client's own
    ///   percent-encoding is kept. If a middleware changed `SCRIPT_NAME`, `PATH_INFO` or
    ///   `QUERY_STRING` so that `RAW_URI` no longer says the same, or `http::Uri` refuses it, the
    ///   URI is rebuilt from them instead: `SCRIPT_NAME` + `PATH_INFO` percent-encoded (RFC
    ///   3986's path characters left as they are) and `?QUERY_STRING`. Either way the path is
    ///   the whole path, mount point included: `http::Uri` has no `SCRIPT_NAME`. As with other
    ///   servers, an origin-form URI has no scheme or authority; the `host` header has them.
    /// - **version**: `SERVER_PROTOCOL` (HTTP/1.1 when it is missing).
    /// - **headers**: one field per `HTTP_*` variable, named back in lower case with `_` turned
    ///   into `-` (`HTTP_X_REQUEST_ID` is `x-request-id`), and `CONTENT_TYPE` and
    ///   `CONTENT_LENGTH` as `content-type` and `content-length`. The environ's naming is lossy:
    ///   a field sent as `X_Foo` (kept only with
    ///   [`Config::keep_underscore_headers`](crate::Config::keep_underscore_headers)) comes back
    ///   as `x-foo`, and repeated fields come back as one value joined with `,`.
    ///
    /// The extensions are empty.
    ///
    /// ```
    /// let app = sgi::handler_fn(|env, start_response| {
    ///     let parts = env.request_parts()?;
    ///     let agent = parts.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("?");
    ///     let body = format!("{} {} {:?} from {agent}\n", parts.method, parts.uri.path(), parts.version);
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    /// });
    /// # let _ = app;
    /// ```
    ///
    /// # Errors
    /// A [`BridgeError`] for a variable the `http` crate's types cannot hold; see there.
    pub fn request_parts(&self) -> Result<http::request::Parts, BridgeError> {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method =
            Method::from_bytes(self.get_bytes("REQUEST_METHOD").unwrap_or(b"")).map_err(BridgeError::Method)?;
        parts.uri = self.http_uri()?;
        parts.version = match self.get_bytes("SERVER_PROTOCOL").unwrap_or(b"HTTP/1.1") {
            b"HTTP/1.1" => Version::HTTP_11,
            b"HTTP/1.0" => Version::HTTP_10,
            b"HTTP/0.9" => Version::HTTP_09,
            b"HTTP/2" | b"HTTP/2.0" => Version::HTTP_2,
            b"HTTP/3" | b"HTTP/3.0" => Version::HTTP_3,
            _ => return Err(BridgeError::Version),
        };
        for (key, value) in self.iter() {
            let name = match key {
                "CONTENT_TYPE" => HeaderName::from_static("content-type"),
                "CONTENT_LENGTH" => HeaderName::from_static("content-length"),
                // A server never sets these (CGI names those fields without `HTTP_`); two
                // `content-type` fields would be worse than none.
                "HTTP_CONTENT_TYPE" | "HTTP_CONTENT_LENGTH" => continue,
                _ => match key.strip_prefix("HTTP_") {
                    Some(cgi_name) => {
                        let name = cgi_name.to_ascii_lowercase().replace('_', "-");
                        HeaderName::from_bytes(name.as_bytes())
                            .map_err(|e| BridgeError::Header { name: key.to_owned(), source: e.into() })?
                    }
                    None => continue,
                },
            };
            let value = HeaderValue::from_bytes(value)
                .map_err(|e| BridgeError::Header { name: key.to_owned(), source: e.into() })?;
            parts.headers.append(name, value);
        }
        Ok(parts)
    }

    /// The request as an [`http::Request`] whose body is [`Environ::input`] (cargo feature
    /// `http`): [`Environ::request_parts`] and the body together, for code that takes an
    /// `http::Request<impl Read>`. It borrows the environ until it is dropped.
    ///
    /// ```
    /// use std::io::Read;
    ///
    /// fn word_count(mut request: http::Request<impl Read>) -> std::io::Result<usize> {
    ///     let mut text = String::new();
    ///     request.body_mut().read_to_string(&mut text)?;
    ///     Ok(text.split_whitespace().count())
    /// }
    ///
    /// let app = sgi::handler_fn(|env, start_response| {
    ///     let words = word_count(env.http_request()?)?;
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(format!("{words}\n")))
    /// });
    /// # let _ = app;
    /// ```
    ///
    /// # Errors
    /// As [`Environ::request_parts`].
    pub fn http_request(&mut self) -> Result<http::Request<&mut Input<'c>>, BridgeError> {
        let parts = self.request_parts()?;
        Ok(http::Request::from_parts(parts, self.input()))
    }

    /// `RAW_URI` when it still names `SCRIPT_NAME` + `PATH_INFO` and `QUERY_STRING`, else a URI
    /// rebuilt from them.
    fn http_uri(&self) -> Result<Uri, BridgeError> {
        let mut path = self.get_bytes("SCRIPT_NAME").unwrap_or(b"").to_vec();
        path.extend_from_slice(self.path_info());
        let query = self.query_string();
        let raw = self.get_bytes("RAW_URI").and_then(|raw| Uri::try_from(raw).ok());
        if let Some(uri) = raw {
            if *util::unquote(uri.path()) == *path && uri.query().unwrap_or("").as_bytes() == query {
                return Ok(uri);
            }
        }
        let mut rebuilt = String::with_capacity(path.len() + query.len() + 2);
        if !path.starts_with(b"/") && path != b"*" {
            rebuilt.push('/');
        }
        encode_into(&mut rebuilt, &path, &PATH_SAFE, false);
        if !query.is_empty() {
            rebuilt.push('?');
            encode_into(&mut rebuilt, query, &QUERY_SAFE, false);
        }
        Uri::try_from(rebuilt).map_err(BridgeError::Uri)
    }
}

impl<'r> StartResponse<'r> {
    /// Answers with an [`http::Response`] (cargo feature `http`): its status and headers go to
    /// [`StartResponse::start`], its body becomes the [`Body`] (`String`, `Vec<u8>`, `&'static str`,
    /// `bytes::Bytes`, `()` for none, or a `Body` itself). Its version and extensions are ignored.
    ///
    /// The status is sent with the reason phrase the `http` crate knows for it (or the code alone
    /// for one it does not). Hop-by-hop fields (`connection`, `keep-alive`, `proxy-*`, `te`,
    /// `trailer`, `transfer-encoding`, `upgrade`), which `start` refuses, are dropped instead:
    /// responses built for other servers carry them, and framing and persistence are this
    /// server's to decide. Repeated fields are sent as repeated lines.
    ///
    /// ```
    /// let app = sgi::handler_fn(|_env, start_response| {
    ///     let response = http::Response::builder()
    ///         .status(http::StatusCode::NOT_FOUND)
    ///         .header("content-type", "text/plain")
    ///         .header("connection", "close") // dropped
    ///         .body("no such page\n")?;
    ///     Ok(start_response.send_http(response)?)
    /// });
    /// # let _ = app;
    /// ```
    ///
    /// # Errors
    /// As [`StartResponse::start`], with the `StartResponse` back and the body dropped: a
    /// [`StartError`] for a status below 200 (interim responses are the server's) or a
    /// malformed or conflicting `content-length`. (Names and values the `http` crate accepts
    /// are ones `start` accepts.)
    pub fn send_http<B: Into<Body>>(self, response: http::Response<B>) -> Result<Response, StartError<'r>> {
        let (parts, body) = response.into_parts();
        let code = parts.status.as_str();
        let status = match parts.status.canonical_reason() {
            Some(reason) => format!("{code} {reason}"),
            None => code.to_owned(),
        };
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| !is_hop_by_hop(name.as_str().as_bytes()))
            .map(|(name, value)| (name.as_str(), value.as_bytes()));
        Ok(self.start(&status, headers)?.body(body))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Instant;

    use super::*;
    use crate::config::Config;
    use crate::error::Error;
    use crate::http::date::DateCache;
    use crate::http::encode::{BodyFraming, Framed, RequestInfo, ResponseHead};
    use crate::util::tests::{with_env, with_env_body, SliceBody};

    fn server_vars(target: &[u8], path_info: &[u8], query: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("REQUEST_METHOD", b"POST".to_vec()),
            ("SCRIPT_NAME", b"".to_vec()),
            ("PATH_INFO", path_info.to_vec()),
            ("QUERY_STRING", query.to_vec()),
            ("RAW_URI", target.to_vec()),
            ("SERVER_PROTOCOL", b"HTTP/1.1".to_vec()),
            ("SERVER_NAME", b"127.0.0.1".to_vec()),
            ("SERVER_PORT", b"8000".to_vec()),
            ("wsgi.url_scheme", b"http".to_vec()),
        ]
    }

    fn parts_of(vars: &[(&str, Vec<u8>)]) -> Result<http::request::Parts, BridgeError> {
        let vars: Vec<(&str, &[u8])> = vars.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        with_env(&vars, |env| env.request_parts())
    }

    fn uri_of(vars: &[(&str, Vec<u8>)]) -> String {
        parts_of(vars).unwrap().uri.to_string()
    }

    fn set(vars: &mut Vec<(&'static str, Vec<u8>)>, key: &'static str, value: &[u8]) {
        vars.retain(|(k, _)| *k != key);
        vars.push((key, value.to_vec()));
    }

    #[test]
    fn parts_from_a_server_environ() {
        let mut vars = server_vars(b"/a%2Fb/c?x=1&y=%20", b"/a/b/c", b"x=1&y=%20");
        vars.extend([
            ("HTTP_HOST", b"example.com:8000".to_vec()),
            ("HTTP_X_REQUEST_ID", b"abc".to_vec()),
            ("HTTP_ACCEPT", b"text/html,text/plain".to_vec()),
            ("CONTENT_TYPE", b"application/json".to_vec()),
            ("CONTENT_LENGTH", b"2".to_vec()),
            ("HTTP_X_OBS", b"caf\xe9".to_vec()),
            ("REMOTE_ADDR", b"127.0.0.1".to_vec()),
        ]);
        let parts = parts_of(&vars).unwrap();
        assert_eq!(parts.method, Method::POST);
        // The client's own encoding is kept.
        assert_eq!(parts.uri, "/a%2Fb/c?x=1&y=%20");
        assert_eq!(parts.version, Version::HTTP_11);
        let h = &parts.headers;
        assert_eq!(h.len(), 6);
        assert_eq!(h["host"], "example.com:8000");
        assert_eq!(h["x-request-id"], "abc");
        assert_eq!(h["accept"], "text/html,text/plain");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["content-length"], "2");
        assert_eq!(h["x-obs"].as_bytes(), b"caf\xe9");
        assert!(parts.extensions.is_empty());
    }

    #[test]
    fn uri_forms() {
        assert_eq!(uri_of(&server_vars(b"/", b"/", b"")), "/");
        assert_eq!(uri_of(&server_vars(b"/p?", b"/p", b"")), "/p?");
        assert_eq!(uri_of(&server_vars(b"/p#frag", b"/p", b"")), "/p");
        assert_eq!(uri_of(&server_vars(b"*", b"*", b"")), "*");
        let absolute = parts_of(&server_vars(b"http://example.com/p?q", b"/p", b"q")).unwrap().uri;
        assert_eq!((absolute.host(), absolute.path(), absolute.query()), (Some("example.com"), "/p", Some("q")));
        assert_eq!(uri_of(&server_vars(b"http://example.com?q", b"/", b"q")), "http://example.com/?q");
    }

    #[test]
    fn uri_rebuilt_when_a_middleware_moved_the_path() {
        // Mounted at /app: SCRIPT_NAME + PATH_INFO still is RAW_URI's path.
        let mut vars = server_vars(b"/app/x%20y", b"/x y", b"");
        set(&mut vars, "SCRIPT_NAME", b"/app");
        assert_eq!(uri_of(&vars), "/app/x%20y");
        // A middleware mounted the application at /prefix: the URI follows.
        set(&mut vars, "SCRIPT_NAME", b"/prefix/app");
        assert_eq!(uri_of(&vars), "/prefix/app/x%20y");
        // ... or rewrote the query.
        let mut vars = server_vars(b"/p?a=1", b"/p", b"a=1");
        set(&mut vars, "QUERY_STRING", b"a=2&b=\"c d\"");
        assert_eq!(uri_of(&vars), "/p?a=2&b=%22c%20d%22");
        // No RAW_URI at all.
        let mut vars = server_vars(b"", b"/\xc3\xbc/a?b#c%d:@!$&'()*+,;=", b"");
        vars.retain(|(k, _)| *k != "RAW_URI");
        assert_eq!(uri_of(&vars), "/%C3%BC/a%3Fb%23c%25d:@!$&'()*+,;=");
        set(&mut vars, "PATH_INFO", b"");
        assert_eq!(uri_of(&vars), "/");
        set(&mut vars, "PATH_INFO", b"rel");
        assert_eq!(uri_of(&vars), "/rel");
    }

    #[test]
    fn uri_rebuilt_when_raw_uri_is_not_valid_for_http() {
        // httparse lets raw non-UTF-8 bytes and some characters through; http::Uri does not.
        assert_eq!(uri_of(&server_vars(b"/caf\xe9?a=\xff", b"/caf\xe9", b"a=\xff")), "/caf%E9?a=%FF");
        assert_eq!(uri_of(&server_vars(b"/p?<a>", b"/p", b"<a>")), "/p?%3Ca%3E");
    }

    #[test]
    fn versions() {
        let version = |v: &[u8]| {
            let mut vars = server_vars(b"/", b"/", b"");
            set(&mut vars, "SERVER_PROTOCOL", v);
            parts_of(&vars).map(|p| p.version)
        };
        assert_eq!(version(b"HTTP/1.0").unwrap(), Version::HTTP_10);
        assert_eq!(version(b"HTTP/0.9").unwrap(), Version::HTTP_09);
        assert_eq!(version(b"HTTP/2").unwrap(), Version::HTTP_2);
        assert_eq!(version(b"HTTP/3.0").unwrap(), Version::HTTP_3);
        assert!(matches!(version(b"HTTP/1.2"), Err(BridgeError::Version)));
        let mut vars = server_vars(b"/", b"/", b"");
        vars.retain(|(k, _)| *k != "SERVER_PROTOCOL");
        assert_eq!(parts_of(&vars).unwrap().version, Version::HTTP_11);
    }

    #[test]
    fn errors_from_variables_a_middleware_set() {
        let mut vars = server_vars(b"/", b"/", b"");
        set(&mut vars, "REQUEST_METHOD", b"");
        assert!(matches!(parts_of(&vars), Err(BridgeError::Method(_))));
        set(&mut vars, "REQUEST_METHOD", b"GE T");
        assert!(matches!(parts_of(&vars), Err(BridgeError::Method(_))));
        let mut vars = server_vars(b"/", b"/", b"");
        set(&mut vars, "HTTP_X_BAD", b"a\r\nb");
        let err = parts_of(&vars).unwrap_err();
        assert!(matches!(&err, BridgeError::Header { name, .. } if name == "HTTP_X_BAD"));
        assert_eq!(err.to_string(), "environ variable HTTP_X_BAD is not a valid header field");
        assert!(std::error::Error::source(&err).is_some());
        let mut vars = server_vars(b"/", b"/", b"");
        set(&mut vars, "HTTP_", b"x");
        assert!(matches!(parts_of(&vars), Err(BridgeError::Header { .. })));
        let mut vars = server_vars(b"/", b"/", b"");
        set(&mut vars, "PATH_INFO", &vec![b'a'; 70_000]);
        vars.retain(|(k, _)| *k != "RAW_URI");
        assert!(matches!(parts_of(&vars), Err(BridgeError::Uri(_))));
    }

    #[test]
    fn cgi_names_for_content_fields_win() {
        let mut vars = server_vars(b"/", b"/", b"");
        vars.extend([
            ("HTTP_CONTENT_TYPE", b"text/plain".to_vec()),
            ("HTTP_CONTENT_LENGTH", b"9".to_vec()),
            ("HTTPS", b"on".to_vec()),
        ]);
        assert!(parts_of(&vars).unwrap().headers.is_empty());
    }

    #[test]
    fn http_request_reads_the_body() {
        let vars: Vec<(&str, &[u8])> = vec![("REQUEST_METHOD", b"PUT"), ("PATH_INFO", b"/f"), ("RAW_URI", b"/f")];
        let mut body = SliceBody { data: b"hello body", step: 4, error: None };
        let (method, uri, text) = with_env_body(&vars, Some(&mut body), |env| {
            let mut request = env.http_request().unwrap();
            let mut text = String::new();
            request.body_mut().read_to_string(&mut text).unwrap();
            (request.method().clone(), request.uri().clone(), text)
        });
        assert_eq!((method, uri.path(), text.as_str()), (Method::PUT, "/f", "hello body"));
    }

    /// Sends `response` through `send_http`, and returns the head as it would go on the wire.
    fn wire<B: Into<Body>>(response: http::Response<B>) -> Result<(String, Option<u64>), Error> {
        let mut head = ResponseHead::default();
        let mut response = StartResponse::new(&mut head).send_http(response).map_err(StartError::into_error)?;
        let body_len = response.body_mut().len();
        let framed = Framed {
            info: RequestInfo { is_head: false, http10: false },
            framing: BodyFraming::Length(body_len.unwrap_or(0)),
            body_len,
            keep_alive: true,
        };
        let mut out = Vec::new();
        response.head.encode(&mut out, framed, &Config::default(), &mut DateCache::default(), Instant::now());
        Ok((String::from_utf8_lossy(&out).into_owned(), body_len))
    }

    #[test]
    fn send_http_status_headers_and_body() {
        let response = http::Response::builder()
            .status(201)
            .header("content-type", "text/plain")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .header("x-bytes", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .body("created\n")
            .unwrap();
        let (head, len) = wire(response).unwrap();
        assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-type: text/plain\r\n"), "{head}");
        assert!(head.contains("\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n"), "{head}");
        assert!(head.contains("\r\nx-bytes: caf\u{fffd}\r\n"), "{head}");
        assert_eq!(len, Some(8));
    }

    #[test]
    fn send_http_reason_phrases() {
        let status = |code: u16| {
            let (head, _) = wire(http::Response::builder().status(code).body(()).unwrap()).unwrap();
            head.lines().next().unwrap().to_owned()
        };
        assert_eq!(status(200), "HTTP/1.1 200 OK");
        assert_eq!(status(418), "HTTP/1.1 418 I'm a teapot");
        assert_eq!(status(299), "HTTP/1.1 299 Unknown");
        assert_eq!(status(999), "HTTP/1.1 999 Unknown");
    }

    #[test]
    fn send_http_drops_hop_by_hop_fields() {
        let mut builder = http::Response::builder();
        for name in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"] {
            builder = builder.header(name, "x");
        }
        let (head, _) = wire(builder.header("x-kept", "1").body(Vec::from("body")).unwrap()).unwrap();
        let names: Vec<&str> = head.lines().skip(1).filter_map(|l| l.split_once(':')).map(|(n, _)| n).collect();
        assert_eq!(names, ["Date", "Server", "Content-Length", "x-kept"], "{head}");
    }

    #[test]
    fn send_http_content_length_is_checked_by_start() {
        let response = http::Response::builder().header("content-length", "4").body("four").unwrap();
        let (head, _) = wire(response).unwrap();
        assert_eq!(head.matches("Content-Length: 4\r\n").count(), 1, "{head}");
        let response = http::Response::builder().header("content-length", "x").body("four").unwrap();
        assert!(matches!(wire(response), Err(Error::InvalidHeaderValue)));
    }

    #[test]
    fn send_http_refuses_interim_statuses_and_gives_the_start_response_back() {
        let mut head = ResponseHead::default();
        let response = http::Response::builder().status(103).body(()).unwrap();
        let refused = StartResponse::new(&mut head).send_http(response).unwrap_err();
        assert!(matches!(refused.error(), Error::InvalidStatus));
        let started = refused.into_start_response().start("500 Internal Server Error", [("x", "y")]).unwrap();
        assert_eq!(started.body("").status(), 500);
    }
}
