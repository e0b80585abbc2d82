//! What Python's `wsgiref.util` and `urllib.parse` give a WSGI application: URLs rebuilt from the
//! environ, path traversal, percent-encoding, and bounded `application/x-www-form-urlencoded`
//! parsing for query strings and form bodies.
//!
//! - [`application_uri`], [`request_uri`]: the application's base URL and the request's full URL.
//! - [`shift_path_info`]: moves one path segment from `PATH_INFO` to `SCRIPT_NAME`, for
//!   dispatching to sub-applications.
//! - [`quote`], [`unquote`], [`unquote_plus`], [`urlencode`]: percent-encoding.
//! - [`Form`]: the fields of a query string ([`Form::from_query`]) or of a form body
//!   ([`Form::read_body`]), within [`FormLimits`]; a [`FormError`] says which status to answer.
//!
//! ```
//! use sgi::util::{self, Form, FormLimits};
//!
//! let app = sgi::handler_fn(|env, start_response| {
//!     match util::shift_path_info(env).as_deref() {
//!         Some(b"search") => {
//!             let form = match Form::from_query(env, FormLimits::default()) {
//!                 Ok(form) => form,
//!                 Err(e) => {
//!                     let status = e.status().to_string();
//!                     return Ok(start_response.start(&status, [("Content-Type", "text/plain")])?.body(e.to_string()));
//!                 }
//!             };
//!             let q = form.get("q").unwrap_or("").to_owned();
//!             Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(q))
//!         }
//!         _ => Ok(start_response.start("404 Not Found", [("Content-Type", "text/plain")])?.body("not found\n")),
//!     }
//! });
//! # let _ = app;
//! ```

use std::borrow::Cow;
use std::io::{self, Read};

use crate::environ::Environ;
use crate::error::ParseError;
use crate::http::parse::hex_value;

/// A set of bytes left as they are by percent-encoding.
pub(crate) type ByteSet = [bool; 256];

/// RFC 3986's unreserved characters, which `urllib.parse.quote` never encodes, plus `extra`.
const fn unreserved_and(extra: &[u8]) -> ByteSet {
    let mut set = [false; 256];
    let mut b = 0;
    while b < 256 {
        set[b] = matches!(b as u8, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        set[extra[i] as usize] = true;
        i += 1;
    }
    set
}

/// What `wsgiref.util.request_uri` leaves of `PATH_INFO`.
const PATH_INFO_SAFE: ByteSet = unreserved_and(b"/;=,");
/// What `wsgiref.util.application_uri` leaves of `SCRIPT_NAME`.
const SCRIPT_NAME_SAFE: ByteSet = unreserved_and(b"/");
/// What may stand in a URI's query as it is (RFC 3986 §3.4), `%` included: `QUERY_STRING` is
/// still percent-encoded, so only bytes no URI may hold need escaping.
pub(crate) const QUERY_SAFE: ByteSet = unreserved_and(b"!$&'()*+,;=:@/?%");
/// What may stand in a URI's path as it is (RFC 3986 §3.3: `pchar` and `/`), for a path rebuilt
/// from its decoded form.
#[cfg(feature = "http")]
pub(crate) const PATH_SAFE: ByteSet = unreserved_and(b"!$&'()*+,;=:@/");
/// `urlencode` escapes everything but the unreserved characters, as `quote_plus(safe='')`.
const FORM_SAFE: ByteSet = unreserved_and(b"");

/// `HTTP_HOST` goes into a URL as it is, but for bytes that cannot be in one at all.
const HOST_SAFE: ByteSet = {
    let mut set = [false; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        set[b] = true;
        b += 1;
    }
    set
};

/// Appends `input` to `out`, percent-encoding (`%XX`, upper case) every byte not in `safe`; with
/// `space_as_plus`, a space becomes `+` instead of `%20`.
pub(crate) fn encode_into(out: &mut String, input: &[u8], safe: &ByteSet, space_as_plus: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(input.len());
    for &b in input {
        if safe[usize::from(b)] {
            out.push(char::from(b));
        } else if b == b' ' && space_as_plus {
            out.push('+');
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

/// Percent-encodes `input` as `urllib.parse.quote(input, safe)` does: ASCII letters, digits,
/// `-`, `.`, `_`, `~` and the ASCII bytes of `safe` stay as they are; every other byte becomes
/// `%XX` (upper-case hex). Non-ASCII bytes in `safe` are ignored, as in Python, so the result is
/// always ASCII.
///
/// Python's default `safe` is `b"/"`, which keeps a path's slashes; pass `b""` to encode a single
/// path segment or a query value.
///
/// ```
/// use sgi::util::quote;
/// assert_eq!(quote("/a b/ü", b"/"), "/a%20b/%C3%BC");
/// assert_eq!(quote("a/b?c=d", b""), "a%2Fb%3Fc%3Dd");
/// assert_eq!(quote(b"\xff", b""), "%FF");
/// ```
pub fn quote(input: impl AsRef<[u8]>, safe: &[u8]) -> String {
    let mut set = unreserved_and(b"");
    for &b in safe.iter().filter(|b| b.is_ascii()) {
        set[usize::from(b)] = true;
    }
    let mut out = String::new();
    encode_into(&mut out, input.as_ref(), &set, false);
    out
}

/// Decodes `%XX` sequences (either case), as `urllib.parse.unquote_to_bytes` does: a `%` not
/// followed by two hex digits (`%`, `%2`, `%zz`) is kept literally. Bytes come back, since a
/// decoded value need not be UTF-8: use [`String::from_utf8_lossy`] for Python's
/// `unquote(errors='replace')`. Borrows `input` when it holds no `%`.
///
/// `+` is left alone; [`unquote_plus`] is for query strings and form bodies.
///
/// ```
/// use sgi::util::unquote;
/// assert_eq!(unquote("a%20b%2Fc"), &b"a b/c"[..]);
/// assert_eq!(unquote("100%"), &b"100%"[..]);
/// assert_eq!(unquote("%zz%2"), &b"%zz%2"[..]);
/// assert_eq!(unquote("%C3%BC%FF"), &b"\xc3\xbc\xff"[..]);
/// ```
pub fn unquote<T: AsRef<[u8]> + ?Sized>(input: &T) -> Cow<'_, [u8]> {
    decode(input.as_ref(), false)
}

/// [`unquote`], with `+` decoded as a space first, as `urllib.parse.unquote_plus` does: the
/// encoding of query strings and `application/x-www-form-urlencoded` bodies (`%2B` is a `+`).
///
/// ```
/// use sgi::util::unquote_plus;
/// assert_eq!(unquote_plus("a+b%2Bc"), &b"a b+c"[..]);
/// ```
pub fn unquote_plus<T: AsRef<[u8]> + ?Sized>(input: &T) -> Cow<'_, [u8]> {
    decode(input.as_ref(), true)
}

fn decode(input: &[u8], plus_as_space: bool) -> Cow<'_, [u8]> {
    if !input.iter().any(|&b| b == b'%' || plus_as_space && b == b'+') {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        let hex = |at: usize| input.get(at).copied().and_then(hex_value);
        match b {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_as_space => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Builds a query string (or a form body) from pairs, as `urllib.parse.urlencode` does: each
/// name and value percent-encoded with nothing but letters, digits and `-._~` left as they are,
/// spaces as `+`, pairs joined with `&`. The inverse of [`Form::parse`].
///
/// ```
/// use sgi::util::urlencode;
/// assert_eq!(urlencode([("q", "rust & wsgi"), ("page", "2")]), "q=rust+%26+wsgi&page=2");
/// let next = format!("/login?{}", urlencode([("next", "/a/b?c=1")]));
/// assert_eq!(next, "/login?next=%2Fa%2Fb%3Fc%3D1");
/// ```
pub fn urlencode<I, K, V>(pairs: I) -> String
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        encode_into(&mut out, name.as_ref(), &FORM_SAFE, true);
        out.push('=');
        encode_into(&mut out, value.as_ref(), &FORM_SAFE, true);
    }
    out
}

/// The application's base URL, as `wsgiref.util.application_uri`: `wsgi.url_scheme`, `://`,
/// `HTTP_HOST` (or, without one, `SERVER_NAME` and `:SERVER_PORT` unless it is the scheme's
/// default, 443 for `https` and 80 otherwise), then `SCRIPT_NAME` percent-encoded (`/` left as
/// is), or `/` when it is empty. No `PATH_INFO`, no query.
///
/// Beyond wsgiref: an IPv6 `SERVER_NAME` is put in brackets, and bytes that cannot stand in a
/// URL (controls, spaces, non-ASCII) in `HTTP_HOST` are percent-encoded, so that the result is
/// always a `String`. `HTTP_HOST` is what the client sent: check it before sending anyone to a
/// URL built from it, or rewrite it in a middleware from what a trusted proxy says.
///
/// ```
/// let app = sgi::handler_fn(|env, start_response| {
///     // e.g. "http://example.com/app" for an application mounted at /app.
///     let base = sgi::util::application_uri(env);
///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(base))
/// });
/// # let _ = app;
/// ```
pub fn application_uri(env: &Environ<'_>) -> String {
    let mut url = String::with_capacity(64);
    let scheme = env.url_scheme();
    url.push_str(scheme);
    url.push_str("://");
    match env.get_bytes("HTTP_HOST").filter(|h| !h.is_empty()) {
        Some(host) => encode_into(&mut url, host, &HOST_SAFE, false),
        None => {
            let name = String::from_utf8_lossy(env.get_bytes("SERVER_NAME").unwrap_or(b""));
            if name.contains(':') && !name.starts_with('[') {
                url.push('[');
                url.push_str(&name);
                url.push(']');
            } else {
                url.push_str(&name);
            }
            let port = String::from_utf8_lossy(env.get_bytes("SERVER_PORT").unwrap_or(b""));
            let default = if scheme == "https" { "443" } else { "80" };
            if !port.is_empty() && port != default {
                url.push(':');
                url.push_str(&port);
            }
        }
    }
    match env.get_bytes("SCRIPT_NAME").filter(|s| !s.is_empty()) {
        Some(script_name) => encode_into(&mut url, script_name, &SCRIPT_NAME_SAFE, false),
        None => url.push('/'),
    }
    url
}

/// The request's full URL, as `wsgiref.util.request_uri`: [`application_uri`], then `PATH_INFO`
/// percent-encoded, then, when `include_query` is set and `QUERY_STRING` is not empty, `?` and
/// the query.
///
/// `PATH_INFO` is encoded as wsgiref does (`quote(path_info, safe='/;=,')`): letters, digits,
/// `-._~` and `/;=,` stay as they are, every other byte becomes `%XX`, `:@!$&'()*+` included.
/// Since `PATH_INFO` is decoded, the path comes back equivalent to what the client sent, not
/// byte for byte (`%2F` comes back as `/`; [`Environ::get`]`("RAW_URI")` has the target as
/// sent). `QUERY_STRING` is appended as it is, still percent-encoded, except for bytes no URL
/// may hold (controls, space, non-ASCII, `"`, `#`, `<`, `>`, `[`, `\`, `]`, `^`, `{`, `|`, `}`
/// and the backtick), which are percent-encoded.
///
/// ```
/// let app = sgi::handler_fn(|env, start_response| {
///     // e.g. "http://example.com/app/users/7?tab=posts"
///     let url = sgi::util::request_uri(env, true);
///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(url))
/// });
/// # let _ = app;
/// ```
pub fn request_uri(env: &Environ<'_>, include_query: bool) -> String {
    let mut url = application_uri(env);
    let mut path_info = env.path_info();
    if env.get_bytes("SCRIPT_NAME").map_or(true, <[u8]>::is_empty) {
        // `application_uri` ended with the `/` that PATH_INFO starts with.
        path_info = path_info.strip_prefix(b"/").unwrap_or(path_info);
    }
    encode_into(&mut url, path_info, &PATH_INFO_SAFE, false);
    let query = env.query_string();
    if include_query && !query.is_empty() {
        url.push('?');
        encode_into(&mut url, query, &QUERY_SAFE, false);
    }
    url
}

/// Moves the next segment of `PATH_INFO` to the end of `SCRIPT_NAME` and returns it, as
/// `wsgiref.util.shift_path_info`: how an application hands the rest of the path to a
/// sub-application mounted below it. `None` when `PATH_INFO` is empty, and then nothing changes.
///
/// The rules are wsgiref's:
/// - Empty and `.` segments are dropped from `PATH_INFO` (`//a` and `/./a` shift `a`;
///   `/a//b` leaves `/b`), except the last one: `PATH_INFO = "/"` returns `Some("")` and leaves
///   `SCRIPT_NAME` ending in `/`, so an application can tell `/x` from `/x/`; `"/."` returns
///   `None` and empties `PATH_INFO`.
/// - `..` is returned like any name, and `SCRIPT_NAME` is normalised as `posixpath.normpath`
///   does, so `..` removes its last segment: `SCRIPT_NAME="/a"` and `PATH_INFO="/../b"` give
///   `Some("..")`, `SCRIPT_NAME=""` and `PATH_INFO="/b"`. (Unlike `normpath`, a leading `//` is
///   one slash, as in a URL.)
///
/// `PATH_INFO` is bytes (it is percent-decoded and need not be UTF-8), so the segment is too:
/// match it against byte strings (`Some(b"users")`) or convert it with [`String::from_utf8`].
/// A `PATH_INFO` without any `/`, which a server never sets, is left alone (`None`).
///
/// ```
/// use sgi::util::shift_path_info;
///
/// let app = sgi::handler_fn(|env, start_response| {
///     // For GET /users/7: "users" then "7"; SCRIPT_NAME ends as "/users/7", PATH_INFO as "".
///     let body = match (shift_path_info(env).as_deref(), shift_path_info(env)) {
///         (Some(b"users"), Some(id)) => format!("user {}\n", String::from_utf8_lossy(&id)),
///         _ => "not found\n".to_string(),
///     };
///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
/// });
/// # let _ = app;
/// ```
pub fn shift_path_info(env: &mut Environ<'_>) -> Option<Vec<u8>> {
    let path_info = env.path_info();
    if path_info.is_empty() {
        return None;
    }
    let parts: Vec<&[u8]> = path_info.split(|&b| b == b'/').collect();
    let [first, middle @ .., last] = parts.as_slice() else { return None };
    let mut kept = middle.iter().copied().filter(|p| !p.is_empty() && *p != b".");
    // The segment shifted is the first kept middle one, or the last one when none is left.
    let (name, rest): (&[u8], Vec<&[u8]>) = match kept.next() {
        Some(name) => (name, std::iter::once(*first).chain(kept).chain(std::iter::once(*last)).collect()),
        None => (last, vec![*first]),
    };

    let mut joined = env.get_bytes("SCRIPT_NAME").unwrap_or(b"").to_vec();
    joined.push(b'/');
    joined.extend_from_slice(name);
    let mut script_name = normpath(&joined);
    if script_name.ends_with(b"/") {
        script_name.pop();
    }
    if name.is_empty() && !script_name.ends_with(b"/") {
        script_name.push(b'/');
    }
    let path_info = rest.join(&b'/');
    let name = (name != b".").then(|| name.to_vec());
    env.insert("SCRIPT_NAME", script_name);
    env.insert("PATH_INFO", path_info);
    name
}

/// `posixpath.normpath` on bytes, except that a leading `//` is one slash: empty and `.`
/// segments dropped, `..` removing the segment before it (or dropped at the root), `.` for an
/// empty relative result.
fn normpath(path: &[u8]) -> Vec<u8> {
    let absolute = path.starts_with(b"/");
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in path.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." if absolute || segments.last().is_some_and(|&s| s != b"..") => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    if absolute {
        out.push(b'/');
    }
    out.extend_from_slice(&segments.join(&b'/'));
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

/// The bounds [`Form`] parsing holds to, against a request that would make a handler allocate
/// without end.
///
/// ```
/// use sgi::util::{Form, FormError, FormLimits};
/// let limits = FormLimits::default().max_fields(2);
/// assert!(matches!(Form::parse(b"a=1&b=2&c=3", limits), Err(FormError::TooManyFields { max: 2 })));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormLimits {
    max_fields: usize,
    max_bytes: u64,
}

impl Default for FormLimits {
    fn default() -> FormLimits {
        FormLimits { max_fields: 1000, max_bytes: 1 << 20 }
    }
}

impl FormLimits {
    /// At most this many fields (`name=value` pairs); one more is [`FormError::TooManyFields`].
    /// Default: 1,000, as Django's `DATA_UPLOAD_MAX_NUMBER_FIELDS` (Python's `max_num_fields`
    /// has no default).
    pub fn max_fields(mut self, count: usize) -> FormLimits {
        self.max_fields = count;
        self
    }

    /// At most this many bytes of encoded input; more is [`FormError::TooLarge`].
    /// Default: 1 MiB.
    pub fn max_bytes(mut self, bytes: u64) -> FormLimits {
        self.max_bytes = bytes;
        self
    }
}

/// Why a form could not be had. [`FormError::status`] is the status to answer with.
///
/// `Display` describes only this level; a read error's cause is its
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormError {
    /// The input has more fields than [`FormLimits::max_fields`].
    #[error("more than {max} form fields")]
    TooManyFields {
        /// The limit.
        max: usize,
    },
    /// The input is longer than [`FormLimits::max_bytes`].
    #[error("form data larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// [`Form::read_body`] was given a request whose `CONTENT_TYPE` is missing or is not
    /// `application/x-www-form-urlencoded`.
    #[error("request content is not application/x-www-form-urlencoded")]
    UnsupportedMediaType,
    /// Reading the body failed: it broke its framing, stalled, or the client left.
    #[error("cannot read the form body")]
    Read(#[source] io::Error),
}

impl FormError {
    /// The status to answer with: 400 for [`FormError::TooManyFields`], 413 for
    /// [`FormError::TooLarge`], 415 for [`FormError::UnsupportedMediaType`], and for
    /// [`FormError::Read`] the status of the body's [`ParseError`] (400, 408 for a stall, 413
    /// over [`Config::max_body`](crate::Config::max_body)), 400 for any other cause.
    ///
    /// ```
    /// use sgi::util::FormError;
    /// assert_eq!(FormError::TooLarge { max: 1024 }.status(), 413);
    /// ```
    pub fn status(&self) -> u16 {
        match self {
            FormError::TooManyFields { .. } => 400,
            FormError::TooLarge { .. } => 413,
            FormError::UnsupportedMediaType => 415,
            FormError::Read(e) => e.get_ref().and_then(|e| e.downcast_ref::<ParseError>()).map_or(400, |e| e.status()),
        }
    }
}

/// The fields of a query string or of an `application/x-www-form-urlencoded` body, in order,
/// repeated names kept: what `urllib.parse.parse_qsl(qs, keep_blank_values=True)` returns, within
/// [`FormLimits`].
///
/// Parsing follows Python 3.10 and later (and the WHATWG URL standard): fields are separated by
/// `&` only (not `;`); empty fields (`a=1&&b=2`) are skipped; a field is split at its first `=`,
/// and one without `=` is a name with an empty value (`?debug` gives `("debug", "")`); names
/// and values are decoded with [`unquote_plus`] (`+` is a space, malformed `%` sequences are
/// kept literally), then as UTF-8 with invalid sequences replaced by U+FFFD, like Python's
/// `errors='replace'`.
///
/// ```
/// use sgi::util::{Form, FormLimits};
/// let form = Form::parse(b"tag=a&tag=b+c&q=%C3%BC&debug", FormLimits::default()).unwrap();
/// assert_eq!(form.get("tag"), Some("a"));
/// assert_eq!(form.get_all("tag").collect::<Vec<_>>(), ["a", "b c"]);
/// assert_eq!(form.get("q"), Some("ü"));
/// assert_eq!(form.get("debug"), Some(""));
/// assert_eq!(form.get("missing"), None);
/// assert_eq!(form.len(), 4);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    /// Parses urlencoded `input` (a query string without its `?`, or a form body).
    ///
    /// ```
    /// use sgi::util::{Form, FormLimits};
    /// let form = Form::parse(b"a=1&b=%zz&=x", FormLimits::default()).unwrap();
    /// assert_eq!(form.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "%zz"), ("", "x")]);
    /// ```
    ///
    /// # Errors
    /// [`FormError::TooLarge`] when `input` is longer than [`FormLimits::max_bytes`],
    /// [`FormError::TooManyFields`] when it has more than [`FormLimits::max_fields`] fields
    /// (empty ones are not counted); nothing is decoded then.
    pub fn parse(input: &[u8], limits: FormLimits) -> Result<Form, FormError> {
        if u64::try_from(input.len()).map_or(true, |n| n > limits.max_bytes) {
            return Err(FormError::TooLarge { max: limits.max_bytes });
        }
        let fields = || input.split(|&b| b == b'&').filter(|f| !f.is_empty());
        // Counted before anything is decoded, so that a refused input costs one scan.
        if fields().nth(limits.max_fields).is_some() {
            return Err(FormError::TooManyFields { max: limits.max_fields });
        }
        let text = |bytes: &[u8]| match unquote_plus(bytes) {
            Cow::Borrowed(b) => String::from_utf8_lossy(b).into_owned(),
            Cow::Owned(v) => {
                String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            }
        };
        let pairs = fields()
            .map(|field| match field.iter().position(|&b| b == b'=') {
                Some(i) => (text(&field[..i]), text(&field[i + 1..])),
                None => (text(field), String::new()),
            })
            .collect();
        Ok(Form { pairs })
    }

    /// Parses the request's `QUERY_STRING`.
    ///
    /// ```
    /// use sgi::util::{Form, FormLimits};
    /// let app = sgi::handler_fn(|env, start_response| {
    ///     let form = Form::from_query(env, FormLimits::default())?;
    ///     let page: u32 = form.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(format!("page {page}\n")))
    /// });
    /// # let _ = app;
    /// ```
    ///
    /// # Errors
    /// As [`Form::parse`].
    pub fn from_query(env: &Environ<'_>, limits: FormLimits) -> Result<Form, FormError> {
        Form::parse(env.query_string(), limits)
    }

    /// Reads and parses the request body, which must be `application/x-www-form-urlencoded`
    /// (parameters such as `; charset=utf-8` are allowed and ignored: the format is always
    /// UTF-8), as an HTML form posts it.
    ///
    /// A body announced (`CONTENT_LENGTH`) larger than [`FormLimits::max_bytes`] is refused
    /// before anything is read, so a client waiting on `100 Continue` never uploads it; a body
    /// without a length (chunked) is read up to the limit. A body that is not a form is not read.
    ///
    /// ```
    /// use sgi::util::{Form, FormLimits};
    /// let app = sgi::handler_fn(|env, start_response| {
    ///     let form = match Form::read_body(env, FormLimits::default().max_bytes(64 * 1024)) {
    ///         Ok(form) => form,
    ///         Err(e) => {
    ///             let status = e.status().to_string();
    ///             return Ok(start_response.start(&status, [("Content-Type", "text/plain")])?.body(e.to_string()));
    ///         }
    ///     };
    ///     let name = form.get("name").unwrap_or("stranger").to_owned();
    ///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(format!("hello, {name}\n")))
    /// });
    /// # let _ = app;
    /// ```
    ///
    /// # Errors
    /// [`FormError::UnsupportedMediaType`] for another or no `CONTENT_TYPE`;
    /// [`FormError::TooLarge`] for a body longer than [`FormLimits::max_bytes`];
    /// [`FormError::Read`] when reading [`Environ::input`] fails; then as [`Form::parse`].
    pub fn read_body(env: &mut Environ<'_>, limits: FormLimits) -> Result<Form, FormError> {
        if !env.content_type().is_some_and(is_form_urlencoded) {
            return Err(FormError::UnsupportedMediaType);
        }
        let too_large = FormError::TooLarge { max: limits.max_bytes };
        let announced = env.content_length();
        if announced.is_some_and(|n| n > limits.max_bytes) {
            return Err(too_large);
        }
        let capacity = usize::try_from(announced.unwrap_or(0).min(64 * 1024)).unwrap_or(0);
        let mut body = Vec::with_capacity(capacity);
        env.input().take(limits.max_bytes.saturating_add(1)).read_to_end(&mut body).map_err(FormError::Read)?;
        if u64::try_from(body.len()).map_or(true, |n| n > limits.max_bytes) {
            return Err(too_large);
        }
        Form::parse(&body, limits)
    }

    /// The first value of field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of field `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every field, in order.
    ///
    /// ```
    /// use sgi::util::{urlencode, Form, FormLimits};
    /// let form = Form::parse(b"b=2&a=1", FormLimits::default()).unwrap();
    /// let mut fields: Vec<_> = form.iter().collect();
    /// fields.sort();
    /// assert_eq!(urlencode(fields), "a=1&b=2");
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The number of fields, repeated names counted each time.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The fields as owned `(name, value)` pairs, in order.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.pairs
    }
}

/// Whether a `Content-Type` value names `application/x-www-form-urlencoded`, whatever its case,
/// parameters and surrounding whitespace.
fn is_form_urlencoded(content_type: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or("");
    media_type.trim_matches([' ', '\t']).eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use crate::environ::{BodySource, Input, RunnerFlags, Vars};

    /// A body read from a slice, in pieces of at most `step` bytes, then `error` if set.
    pub(crate) struct SliceBody<'a> {
        pub(crate) data: &'a [u8],
        pub(crate) step: usize,
        pub(crate) error: Option<ParseError>,
    }

    impl BodySource for SliceBody<'_> {
        fn read_body(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                return self.error.map_or(Ok(0), |e| Err(e.into()));
            }
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Runs `f` on an environ holding `vars` and no body.
    pub(crate) fn with_env<R>(vars: &[(&str, &[u8])], f: impl FnOnce(&mut Environ<'_>) -> R) -> R {
        with_env_body(vars, None, f)
    }

    /// Runs `f` on an environ holding `vars` and `body`.
    pub(crate) fn with_env_body<R>(
        vars: &[(&str, &[u8])],
        body: Option<&mut SliceBody<'_>>,
        f: impl FnOnce(&mut Environ<'_>) -> R,
    ) -> R {
        let config = Config::default();
        let input = Input::new(body.map(|b| b as &mut dyn BodySource));
        let mut env = Environ::new(Vars::default(), input, &config, RunnerFlags::default());
        for (k, v) in vars {
            env.insert(k, v);
        }
        f(&mut env)
    }

    #[test]
    fn quote_keeps_unreserved_and_safe() {
        assert_eq!(quote("AZaz09-._~", b""), "AZaz09-._~");
        assert_eq!(
            quote(" !\"#$%&'()*+,/:;<=>?@[\\]^`{|}", b""),
            "%20%21%22%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3C%3D%3E%3F%40%5B%5C%5D%5E%60%7B%7C%7D"
        );
        assert_eq!(quote("/a b/", b"/"), "/a%20b/");
        assert_eq!(quote("a%b", b"%"), "a%b");
        assert_eq!(quote([0u8, 0x7f, 0x80, 0xff], b""), "%00%7F%80%FF");
        // Non-ASCII bytes in `safe` are ignored: the output stays ASCII.
        assert_eq!(quote("\u{e9}", "\u{e9}".as_bytes()), "%C3%A9");
        assert_eq!(quote("", b"/"), "");
    }

    #[test]
    fn unquote_edge_cases() {
        assert!(matches!(unquote("plain+text"), Cow::Borrowed(b"plain+text")));
        assert_eq!(unquote("%"), &b"%"[..]);
        assert_eq!(unquote("%2"), &b"%2"[..]);
        assert_eq!(unquote("%zz"), &b"%zz"[..]);
        assert_eq!(unquote("%2g%g2"), &b"%2g%g2"[..]);
        assert_eq!(unquote("%2F%2f"), &b"//"[..]);
        assert_eq!(unquote("%%41"), &b"%A"[..]);
        assert_eq!(unquote("a%FFb"), &b"a\xffb"[..]);
        assert_eq!(unquote("%00"), &b"\0"[..]);
        assert_eq!(unquote("a+b"), &b"a+b"[..]);
        assert_eq!(unquote_plus("a+b%2B%20"), &b"a b+ "[..]);
        assert_eq!(unquote_plus("+%"), &b" %"[..]);
        assert!(matches!(unquote_plus("abc"), Cow::Borrowed(b"abc")));
    }

    #[test]
    fn quote_and_unquote_round_trip_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unquote(&quote(&all, b"")), &all[..]);
        assert_eq!(unquote(&quote(&all, b"/;=,")), &all[..]);
        assert_eq!(unquote_plus(&urlencode([(&all, &all)])), [&all[..], b"=", &all[..]].concat());
    }

    #[test]
    fn urlencode_as_python() {
        // urllib.parse.urlencode([("a b", "c&d"), ("e", "f=g/h+i"), ("x", "")])
        assert_eq!(urlencode([("a b", "c&d"), ("e", "f=g/h+i"), ("x", "")]), "a+b=c%26d&e=f%3Dg%2Fh%2Bi&x=");
        assert_eq!(urlencode([("k", "\u{fc}~")]), "k=%C3%BC~");
        assert_eq!(urlencode(Vec::<(&str, &str)>::new()), "");
        let form = Form::parse(b"q=a+b&q=%26", FormLimits::default()).unwrap();
        assert_eq!(urlencode(form.iter()), "q=a+b&q=%26");
    }

    fn uris(vars: &[(&str, &[u8])]) -> (String, String, String) {
        with_env(vars, |env| (application_uri(env), request_uri(env, true), request_uri(env, false)))
    }

    #[test]
    fn request_uri_wsgiref_examples() {
        // The values wsgiref.util gives for the same environs.
        let base: &[(&str, &[u8])] = &[
            ("wsgi.url_scheme", b"http"),
            ("HTTP_HOST", b"127.0.0.1"),
            ("SERVER_NAME", b"127.0.0.1"),
            ("SERVER_PORT", b"80"),
            ("SCRIPT_NAME", b""),
            ("PATH_INFO", b"/spammity/spam"),
            ("QUERY_STRING", b"say=ni"),
        ];
        assert_eq!(
            uris(base),
            (
                "http://127.0.0.1/".into(),
                "http://127.0.0.1/spammity/spam?say=ni".into(),
                "http://127.0.0.1/spammity/spam".into()
            )
        );
        let with = |extra: &[(&str, &[u8])]| uris(&[base, extra].concat());
        assert_eq!(with(&[("SCRIPT_NAME", b"/spammity")]).1, "http://127.0.0.1/spammity/spammity/spam?say=ni");
        assert_eq!(with(&[("PATH_INFO", b"/sp\xe4m")]).2, "http://127.0.0.1/sp%E4m");
        assert_eq!(
            with(&[("PATH_INFO", b"/a b;c=d,e:f@g!h$i&j'k(l)m*n+o?p#q%r")]).2,
            "http://127.0.0.1/a%20b;c=d,e%3Af%40g%21h%24i%26j%27k%28l%29m%2An%2Bo%3Fp%23q%25r"
        );
        assert_eq!(with(&[("SCRIPT_NAME", b"/my app;v=1")]).0, "http://127.0.0.1/my%20app%3Bv%3D1");
        assert_eq!(with(&[("QUERY_STRING", b"")]).1, "http://127.0.0.1/spammity/spam");
        assert_eq!(with(&[("PATH_INFO", b"")]).1, "http://127.0.0.1/?say=ni");
    }

    #[test]
    fn application_uri_without_host() {
        let server = |scheme: &str, name: &str, port: &str| {
            let vars: [(&str, &[u8]); 4] = [
                ("wsgi.url_scheme", scheme.as_bytes()),
                ("SERVER_NAME", name.as_bytes()),
                ("SERVER_PORT", port.as_bytes()),
                ("SCRIPT_NAME", b"/app"),
            ];
            uris(&vars).0
        };
        assert_eq!(server("http", "example.com", "80"), "http://example.com/app");
        assert_eq!(server("http", "example.com", "443"), "http://example.com:443/app");
        assert_eq!(server("https", "example.com", "443"), "https://example.com/app");
        assert_eq!(server("https", "example.com", "80"), "https://example.com:80/app");
        assert_eq!(server("http", "10.0.0.1", "8000"), "http://10.0.0.1:8000/app");
        assert_eq!(server("http", "::1", "8000"), "http://[::1]:8000/app");
        assert_eq!(server("http", "[::1]", "8000"), "http://[::1]:8000/app");
        assert_eq!(server("http", "host", ""), "http://host/app");
        // An empty Host is no Host, as in wsgiref.
        let vars: [(&str, &[u8]); 3] = [("HTTP_HOST", b""), ("SERVER_NAME", b"s"), ("SERVER_PORT", b"81")];
        assert_eq!(uris(&vars).0, "http://s:81/");
    }

    #[test]
    fn host_and_query_bytes_that_cannot_be_in_a_url_are_escaped() {
        let vars: [(&str, &[u8]); 3] = [
            ("HTTP_HOST", b"h\xe9 st:8080"),
            ("PATH_INFO", b"/p"),
            ("QUERY_STRING", b"a=%20b&c=d e\xff#\"<>[]{}|\\^`"),
        ];
        assert_eq!(uris(&vars).1, "http://h%E9%20st:8080/p?a=%20b&c=d%20e%FF%23%22%3C%3E%5B%5D%7B%7D%7C%5C%5E%60");
        let vars: [(&str, &[u8]); 2] = [("HTTP_HOST", b"[::1]:8000"), ("QUERY_STRING", b"x=/?:@!$&'()*+,;=%41")];
        assert_eq!(uris(&vars).1, "http://[::1]:8000/?x=/?:@!$&'()*+,;=%41");
    }

    #[test]
    fn request_uri_path_info_without_leading_slash_keeps_it_whole() {
        let vars: [(&str, &[u8]); 2] = [("HTTP_HOST", b"h"), ("PATH_INFO", b"x")];
        assert_eq!(uris(&vars).1, "http://h/x");
    }

    /// Shifts once from `SCRIPT_NAME` and `PATH_INFO`: (the name, the new SCRIPT_NAME, the new PATH_INFO).
    fn shift(script_name: &str, path_info: &[u8]) -> (Option<Vec<u8>>, Vec<u8>, Vec<u8>) {
        let vars: [(&str, &[u8]); 2] = [("SCRIPT_NAME", script_name.as_bytes()), ("PATH_INFO", path_info)];
        with_env(&vars, |env| {
            let name = shift_path_info(env);
            (name, env.get_bytes("SCRIPT_NAME").unwrap().to_vec(), env.path_info().to_vec())
        })
    }

    #[track_caller]
    fn check_shift(script_name: &str, path_info: &str, name: Option<&str>, new_script: &str, new_path: &str) {
        let (n, s, p) = shift(script_name, path_info.as_bytes());
        assert_eq!(
            (n.as_deref(), s.as_slice(), p.as_slice()),
            (name.map(str::as_bytes), new_script.as_bytes(), new_path.as_bytes()),
            "shift_path_info({script_name:?}, {path_info:?})"
        );
    }

    #[test]
    fn shift_path_info_wsgiref_cases() {
        // Each expectation is what wsgiref.util.shift_path_info (Python 3.11) gives.
        check_shift("", "", None, "", "");
        check_shift("", "/", Some(""), "/", "");
        check_shift("/a", "/x/y", Some("x"), "/a/x", "/y");
        check_shift("/a", "/x/", Some("x"), "/a/x", "/");
        check_shift("/a", "/x", Some("x"), "/a/x", "");
        check_shift("/a", "/.", None, "/a", "");
        check_shift("/a", "/./", Some(""), "/a/", "");
        check_shift("/a", "/./x/", Some("x"), "/a/x", "/");
        check_shift("/a", "/./x/.", Some("x"), "/a/x", "/.");
        check_shift("/a", "/../x/", Some(".."), "", "/x/");
        check_shift("/a", "/x/../y", Some("x"), "/a/x", "/../y");
        check_shift("/a", "//x", Some("x"), "/a/x", "");
        check_shift("/a", "/x//", Some("x"), "/a/x", "/");
        check_shift("/a", "/x/./y/", Some("x"), "/a/x", "/y/");
        check_shift("/a", "///", Some(""), "/a/", "");
        check_shift("/a", "/x//y", Some("x"), "/a/x", "/y");
        check_shift("/a", "/x/.//y", Some("x"), "/a/x", "/y");
    }

    #[test]
    fn shift_path_info_more_cases_checked_against_python() {
        check_shift("", "/users/7", Some("users"), "/users", "/7");
        check_shift("/users", "/7", Some("7"), "/users/7", "");
        check_shift("/users/7", "", None, "/users/7", "");
        check_shift("", "/x/y/", Some("x"), "/x", "/y/");
        check_shift("/a/b", "/../../../c", Some(".."), "/a", "/../../c");
        check_shift("", "/../c", Some(".."), "", "/c");
        check_shift("/a/./b", "/c", Some("c"), "/a/b/c", "");
        check_shift("/a", "/x/.", Some("x"), "/a/x", "/.");
        check_shift("/a", "/x///y//", Some("x"), "/a/x", "/y/");
        check_shift("/a", "/..", Some(".."), "", "");
        check_shift("a", "/..", Some(".."), ".", "");
        check_shift("a", "/b", Some("b"), "a/b", "");
        check_shift("", "x/y", Some("y"), "/y", "x");
        // Where Python diverges: normpath keeps exactly two leading slashes ("//x").
        check_shift("/", "/x", Some("x"), "/x", "");
        check_shift("//s", "/x", Some("x"), "/s/x", "");
    }

    #[test]
    fn shift_path_info_keeps_non_utf8_bytes() {
        let (name, script, path) = shift("/\u{e9}", b"/\xff\xfe/rest");
        assert_eq!(name.as_deref(), Some(&b"\xff\xfe"[..]));
        assert_eq!(script, b"/\xc3\xa9/\xff\xfe");
        assert_eq!(path, b"/rest");
    }

    #[test]
    fn shift_path_info_without_a_slash_changes_nothing() {
        check_shift("/a", "x", None, "/a", "x");
    }

    #[test]
    fn shift_path_info_walks_the_whole_path() {
        let vars: [(&str, &[u8]); 2] = [("SCRIPT_NAME", b""), ("PATH_INFO", b"/a//b/./c/")];
        let names = with_env(&vars, |env| {
            let names: Vec<_> = std::iter::from_fn(|| shift_path_info(env)).collect();
            (names, env.get("SCRIPT_NAME").map(str::to_owned), env.get("PATH_INFO").map(str::to_owned))
        });
        let expected: Vec<Vec<u8>> = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"".to_vec()];
        assert_eq!(names, (expected, Some("/a/b/c/".to_owned()), Some(String::new())));
    }

    #[test]
    fn normpath_as_posixpath() {
        let n = |p: &str| String::from_utf8(normpath(p.as_bytes())).unwrap();
        assert_eq!(n("/a/./b/../c//d/"), "/a/c/d");
        assert_eq!(n("/../.."), "/");
        assert_eq!(n("a/../.."), "..");
        assert_eq!(n("../a/../../b"), "../../b");
        assert_eq!(n("a/.."), ".");
        assert_eq!(n("///a"), "/a");
        assert_eq!(n("//a"), "/a");
    }

    #[test]
    fn form_parsing_rules() {
        let parse = |s: &[u8]| Form::parse(s, FormLimits::default()).unwrap().into_pairs();
        let pairs = |p: &[(&str, &str)]| p.iter().map(|&(n, v)| (n.to_owned(), v.to_owned())).collect::<Vec<_>>();
        assert_eq!(parse(b""), pairs(&[]));
        assert_eq!(parse(b"&&&"), pairs(&[]));
        assert_eq!(parse(b"a=1&&b=2&"), pairs(&[("a", "1"), ("b", "2")]));
        assert_eq!(parse(b"a&b=&=c&=&d==e"), pairs(&[("a", ""), ("b", ""), ("", "c"), ("", ""), ("d", "=e")]));
        assert_eq!(parse(b"a=1;b=2"), pairs(&[("a", "1;b=2")]));
        assert_eq!(parse(b"a+b=c+d&e%2Bf=%2B"), pairs(&[("a b", "c d"), ("e+f", "+")]));
        assert_eq!(parse(b"k=%&k=%2&k=%zz&k=%2f"), pairs(&[("k", "%"), ("k", "%2"), ("k", "%zz"), ("k", "/")]));
        assert_eq!(parse(b"%26=%3D"), pairs(&[("&", "=")]));
        // Invalid UTF-8, decoded or raw, is replaced, as with errors='replace'.
        assert_eq!(parse(b"a=%FF&b=\xff%C3%BC"), pairs(&[("a", "\u{fffd}"), ("b", "\u{fffd}\u{fc}")]));
    }

    #[test]
    fn form_accessors() {
        let form = Form::parse(b"x=1&y=2&x=3", FormLimits::default()).unwrap();
        assert_eq!(form.get("x"), Some("1"));
        assert_eq!(form.get_all("x").collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(form.get_all("z").count(), 0);
        assert_eq!(form.iter().collect::<Vec<_>>(), [("x", "1"), ("y", "2"), ("x", "3")]);
        assert_eq!((form.len(), form.is_empty()), (3, false));
        assert!(Form::default().is_empty());
    }

    #[test]
    fn form_field_limit() {
        let limits = FormLimits::default().max_fields(3);
        assert_eq!(Form::parse(b"a&b&c", limits).unwrap().len(), 3);
        // Empty fields cost nothing and are not counted.
        assert_eq!(Form::parse(b"&a&&b&c&", limits).unwrap().len(), 3);
        let err = Form::parse(b"a&b&c&d", limits).unwrap_err();
        assert!(matches!(err, FormError::TooManyFields { max: 3 }));
        assert_eq!(err.status(), 400);
        assert_eq!(err.to_string(), "more than 3 form fields");
        assert!(Form::parse(b"a", FormLimits::default().max_fields(0)).is_err());
        assert!(Form::parse(b"", FormLimits::default().max_fields(0)).unwrap().is_empty());
        let many = vec![&b"a=1"[..]; 1001].join(&b'&');
        assert!(matches!(Form::parse(&many, FormLimits::default()), Err(FormError::TooManyFields { max: 1000 })));
        assert_eq!(Form::parse(&many[4..], FormLimits::default()).unwrap().len(), 1000);
    }

    #[test]
    fn form_byte_limit() {
        let limits = FormLimits::default().max_bytes(3);
        assert!(Form::parse(b"a=1", limits).is_ok());
        let err = Form::parse(b"a=12", limits).unwrap_err();
        assert!(matches!(err, FormError::TooLarge { max: 3 }));
        assert_eq!(err.status(), 413);
    }

    #[test]
    fn form_from_query() {
        let vars: [(&str, &[u8]); 1] = [("QUERY_STRING", b"q=sgi+rust&page=2")];
        let form = with_env(&vars, |env| Form::from_query(env, FormLimits::default())).unwrap();
        assert_eq!((form.get("q"), form.get("page")), (Some("sgi rust"), Some("2")));
        assert!(with_env(&[], |env| Form::from_query(env, FormLimits::default())).unwrap().is_empty());
    }

    fn read_body(
        content_type: Option<&str>,
        content_length: Option<&str>,
        body: &[u8],
        error: Option<ParseError>,
        limits: FormLimits,
    ) -> (Result<Form, FormError>, usize) {
        let mut vars: Vec<(&str, &[u8])> = Vec::new();
        if let Some(t) = content_type {
            vars.push(("CONTENT_TYPE", t.as_bytes()));
        }
        if let Some(l) = content_length {
            vars.push(("CONTENT_LENGTH", l.as_bytes()));
        }
        let mut source = SliceBody { data: body, step: 3, error };
        let result = with_env_body(&vars, Some(&mut source), |env| Form::read_body(env, limits));
        (result, body.len() - source.data.len())
    }

    #[test]
    fn form_read_body() {
        let form_type = Some("application/x-www-form-urlencoded");
        let (form, read) = read_body(form_type, Some("17"), b"name=Ada+Lovelace", None, FormLimits::default());
        assert_eq!(form.unwrap().get("name"), Some("Ada Lovelace"));
        assert_eq!(read, 17);
        // Chunked: no length.
        let (form, _) = read_body(form_type, None, b"a=1&b=2", None, FormLimits::default());
        assert_eq!(form.unwrap().len(), 2);
        for t in ["Application/X-WWW-Form-URLEncoded; charset=UTF-8", " application/x-www-form-urlencoded ;x=y"] {
            assert!(read_body(Some(t), None, b"a=1", None, FormLimits::default()).0.is_ok(), "{t}");
        }
    }

    #[test]
    fn form_read_body_refuses_other_content_types_unread() {
        for t in [
            None,
            Some("multipart/form-data; boundary=x"),
            Some("text/plain"),
            Some("application/x-www-form-urlencodedx"),
        ] {
            let (result, read) = read_body(t, Some("3"), b"a=1", None, FormLimits::default());
            let err = result.unwrap_err();
            assert!(matches!(err, FormError::UnsupportedMediaType), "{t:?}");
            assert_eq!((err.status(), read), (415, 0));
        }
    }

    #[test]
    fn form_read_body_limit() {
        let form_type = Some("application/x-www-form-urlencoded");
        let limits = FormLimits::default().max_bytes(8);
        assert!(read_body(form_type, Some("8"), b"a=123456", None, limits).0.is_ok());
        // Announced too large: refused unread.
        let (result, read) = read_body(form_type, Some("9"), b"a=1234567", None, limits);
        assert!(matches!(result, Err(FormError::TooLarge { max: 8 })));
        assert_eq!(read, 0);
        // Unannounced: read up to one byte past the limit, no further.
        let (result, read) = read_body(form_type, None, &[b'a'; 100], None, limits);
        assert!(matches!(result, Err(FormError::TooLarge { max: 8 })));
        assert!(read <= 9 + 3, "read {read}");
        // The field limit applies to bodies too.
        let (result, _) = read_body(form_type, None, b"a&b&c", None, FormLimits::default().max_fields(2));
        assert!(matches!(result, Err(FormError::TooManyFields { max: 2 })));
    }

    #[test]
    fn form_read_body_errors_carry_the_body_status() {
        let form_type = Some("application/x-www-form-urlencoded");
        for (error, status) in
            [(ParseError::Timeout, 408), (ParseError::BodyTooLarge, 413), (ParseError::IncompleteBody, 400)]
        {
            let err = read_body(form_type, None, b"a=1", Some(error), FormLimits::default()).0.unwrap_err();
            assert!(matches!(err, FormError::Read(_)));
            assert_eq!(err.status(), status);
            assert_eq!(err.to_string(), "cannot read the form body");
            let source = std::error::Error::source(&err).unwrap();
            assert_eq!(source.to_string(), error.description());
        }
        assert_eq!(FormError::Read(io::Error::other("x")).status(), 400);
    }
}
