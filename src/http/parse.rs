//! The one request-head parser: finds the end of the head incrementally, parses it with
//! `httparse`, applies RFC 9112's framing rules and our limits, and writes the CGI variables.

use std::mem::MaybeUninit;

use crate::config::{Config, MAX_HEADERS_CEILING};
use crate::environ::{Slot, Vars};
use crate::error::ParseError;
use crate::http::encode::extend_decimal;
use crate::http::forwarded;

/// How the request body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all.
    Empty,
    /// `Content-Length: n` with n > 0.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The protocol facts of a parsed head the connection driver needs; the rest went into the environ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestHead {
    /// Bytes of the head, final CRLF included: the body starts here.
    pub len: usize,
    pub is_head: bool,
    pub http10: bool,
    pub framing: Framing,
    /// What the client asked for; the driver may still decide to close.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

/// Per-connection facts that go into every environ on it, formatted once per connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnInfo {
    pub server_name: Box<str>,
    pub server_port: Box<str>,
    pub remote_addr: Box<str>,
    pub remote_port: Box<str>,
    /// The peer's address, `None` for a Unix socket peer: whom a proxy header must come from.
    pub peer: Option<std::net::IpAddr>,
    /// Whether the peer is a proxy whose `X-Forwarded-*` headers are believed
    /// ([`Config::forwarded_allow_ips`]).
    pub trusted_proxy: bool,
    /// Whether the connection begins with a PROXY protocol header, not yet read.
    pub expect_proxy_header: bool,
}

impl ConnInfo {
    /// The facts of a connection from `peer` (`None`: a Unix socket) to `server_name:server_port`.
    pub(crate) fn new(server_name: Box<str>, server_port: Box<str>, peer: Option<std::net::SocketAddr>) -> ConnInfo {
        ConnInfo {
            server_name,
            server_port,
            remote_addr: peer.map_or_else(Default::default, |p| p.ip().to_string().into()),
            remote_port: peer.map_or_else(Default::default, |p| p.port().to_string().into()),
            peer: peer.map(|p| p.ip()),
            trusted_proxy: false,
            expect_proxy_header: false,
        }
    }
}

/// Incremental search for the end of a request head.
///
/// Each call looks only at bytes not seen before, so a head trickling in one byte at a time costs
/// linear time in total (httparse's `# Warning` about quadratic re-parsing). Rejects a bare LF as
/// a line ending on the spot (waitress CVE-2019-16785), and enforces the request-line and head
/// size limits before the head is complete, so a client can never make us buffer more than them.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HeadScanner {
    scanned: usize,
    request_line_len: Option<usize>,
}

impl HeadScanner {
    /// Whether nothing of the current head has been scanned yet.
    pub(crate) fn is_fresh(&self) -> bool {
        self.scanned == 0
    }

    /// Returns `Ok(Some(len))` when `buf[..len]` is a whole head, `Ok(None)` when more bytes are needed.
    pub(crate) fn scan(&mut self, buf: &[u8], config: &Config) -> Result<Option<usize>, ParseError> {
        let mut pos = self.scanned;
        while let Some(i) = find_lf(&buf[pos..]).map(|i| i + pos) {
            if i == 0 || buf[i - 1] != b'\r' {
                return Err(ParseError::BareLineEnding);
            }
            if self.request_line_len.is_none() {
                let len = i - 1;
                if len > config.max_request_line {
                    return Err(ParseError::UriTooLong);
                }
                self.request_line_len = Some(len);
            }
            if i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n" {
                let len = i + 1;
                if len > config.max_head {
                    return Err(ParseError::HeadTooLarge);
                }
                *self = HeadScanner::default();
                return Ok(Some(len));
            }
            pos = i + 1;
        }
        self.scanned = buf.len();
        if self.request_line_len.is_none() && buf.len() > config.max_request_line + 1 {
            return Err(ParseError::UriTooLong);
        }
        if buf.len() > config.max_head {
            return Err(ParseError::HeadTooLarge);
        }
        Ok(None)
    }
}

/// Position of the first `\n`, eight bytes at a time: the head scan is on every request's path.
fn find_lf(haystack: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = LO * b'\n' as u64;
    let mut chunks = haystack.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunk of eight"));
        let x = word ^ LF;
        if (x.wrapping_sub(LO) & !x & HI) != 0 {
            break;
        }
        offset += 8;
    }
    haystack[offset..].iter().position(|&b| b == b'\n').map(|i| i + offset)
}

/// Number of leading empty lines (CRLF pairs) before a request line, which RFC 9112 §2.2 says a
/// server should ignore.
pub(crate) fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut n = 0;
    while buf[n..].starts_with(b"\r\n") {
        n += 2;
    }
    n
}

/// Parses a complete head at the start of `buf` (as found by [`HeadScanner`]) into `vars` and
/// returns the framing facts. `vars` is cleared first; its capacity is reused.
pub(crate) fn parse_head(
    buf: &[u8],
    config: &Config,
    conn: &ConnInfo,
    vars: &mut Vars,
) -> Result<RequestHead, ParseError> {
    try_parse_head(buf, config, conn, vars)?.ok_or(ParseError::Malformed)
}

/// Parses the head at the start of `buf` if it is all there (`Ok(None)` if not): the fast path
/// for the common case of a head that arrived in one read, which needs no separate scan for its
/// end. Heads that arrive in pieces go through [`HeadScanner`] first, so that a trickling client
/// never makes us parse the same bytes again and again.
/// One match arm per header field of interest reads like RFC 9112, hence the allow.
#[allow(clippy::collapsible_match)]
pub(crate) fn try_parse_head(
    buf: &[u8],
    config: &Config,
    conn: &ConnInfo,
    vars: &mut Vars,
) -> Result<Option<RequestHead>, ParseError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CEILING];
    let mut req = httparse::Request::new(&mut []);
    let max_headers = config.max_headers.min(MAX_HEADERS_CEILING);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut slots[..max_headers],
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        // `HTTP/2` may yet become `HTTP/2.0` (505) or `HTTP/2x` (400): wait for the whole line.
        Err(httparse::Error::Version) if !buf.contains(&b'\n') => return Ok(None),
        Err(e) => return Err(map_httparse_error(e, buf)),
    };
    if len > config.max_head {
        return Err(ParseError::HeadTooLarge);
    }
    let method = req.method.ok_or(ParseError::Malformed)?;
    if request_line_len(buf, len, method, req.headers)? > config.max_request_line {
        return Err(ParseError::UriTooLong);
    }
    let target = req.path.ok_or(ParseError::Malformed)?;
    let http10 = req.version == Some(0);
    if method == "CONNECT" {
        return Err(ParseError::MethodNotImplemented);
    }

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut host = false;
    let mut content_type = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut proxy_fields = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.len() + h.value.len() + 2 > config.max_header_field {
            return Err(ParseError::HeaderFieldTooLarge);
        }
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                if std::mem::replace(&mut host, true) {
                    return Err(ParseError::Host);
                }
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                if !http10 {
                    if h.value.eq_ignore_ascii_case(b"100-continue") {
                        expect_continue = true;
                    } else {
                        return Err(ParseError::Expectation);
                    }
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in list_elements(h.value) {
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            12 if name.eq_ignore_ascii_case(b"content-type") => {
                if std::mem::replace(&mut content_type, true) {
                    return Err(ParseError::DuplicateContentType);
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if content_length.is_some() {
                    return Err(ParseError::ContentLength);
                }
                content_length = Some(parse_content_length(h.value)?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if http10 {
                    return Err(ParseError::TransferEncodingOnHttp10);
                }
                transfer_encoding = true;
                for coding in list_elements(h.value) {
                    if coding.is_empty() || !coding.iter().all(|&b| is_tchar(b)) {
                        return Err(ParseError::TransferEncoding);
                    }
                    if !coding.eq_ignore_ascii_case(b"chunked") {
                        return Err(ParseError::UnsupportedTransferCoding);
                    }
                    if std::mem::replace(&mut chunked, true) {
                        return Err(ParseError::TransferEncoding);
                    }
                }
            }
            9 | 15 | 17 | 20 if conn.trusted_proxy && is_proxy_field(name) => proxy_fields = true,
            _ => {}
        }
    }
    if transfer_encoding && !chunked {
        return Err(ParseError::TransferEncoding);
    }
    if transfer_encoding && content_length.is_some() {
        return Err(ParseError::ContentLengthWithTransferEncoding);
    }
    if !http10 && !host {
        return Err(ParseError::Host);
    }
    let framing = match content_length {
        _ if chunked => Framing::Chunked,
        Some(0) | None => Framing::Empty,
        Some(n) => {
            if config.max_body.is_some_and(|max| n > max) {
                return Err(ParseError::BodyTooLarge);
            }
            Framing::Length(n)
        }
    };

    write_environ(vars, config, conn, method, target, http10, req.headers)?;
    if proxy_fields {
        believe_proxy(vars, config, conn)?;
    }

    Ok(Some(RequestHead {
        len,
        is_head: method == "HEAD",
        http10,
        framing,
        keep_alive: if http10 { keep_alive_token && !close } else { !close },
        expect_continue,
    }))
}

/// Whether `name` is one of the fields a trusted proxy tells the client's address or scheme with.
#[inline]
fn is_proxy_field(name: &[u8]) -> bool {
    [&b"x-forwarded-for"[..], b"x-forwarded-proto", b"x-forwarded-ssl", b"x-forwarded-protocol", b"forwarded"]
        .iter()
        .any(|field| name.eq_ignore_ascii_case(field))
}

/// A trusted proxy's word on the client: `REMOTE_ADDR`, `REMOTE_PORT` (0 when it gave none) and
/// `wsgi.url_scheme` for this request, from its `X-Forwarded-For`, `X-Forwarded-Proto` (and
/// `-Protocol`, `-Ssl`) and, when configured, `Forwarded`. The fields themselves stay in the
/// environ.
fn believe_proxy(vars: &mut Vars, config: &Config, conn: &ConnInfo) -> Result<(), ParseError> {
    const FIELDS: [&[u8]; 5] = [
        b"HTTP_FORWARDED",
        b"HTTP_X_FORWARDED_FOR",
        b"HTTP_X_FORWARDED_PROTO",
        b"HTTP_X_FORWARDED_PROTOCOL",
        b"HTTP_X_FORWARDED_SSL",
    ];
    let mut found = [None; FIELDS.len()];
    vars.get_many(&FIELDS, true, &mut found);
    let [forwarded, x_forwarded_for, x_forwarded_proto, x_forwarded_protocol, x_forwarded_ssl] = found;
    let headers = forwarded::ProxyHeaders {
        forwarded: forwarded.filter(|_| config.trust_forwarded_header),
        x_forwarded_for,
        x_forwarded_proto,
        x_forwarded_protocol,
        x_forwarded_ssl,
    };
    let resolved = forwarded::resolve(conn.peer, &headers, |ip| config.forwarded_allow_ips.contains(ip))
        .map_err(|_| ParseError::ContradictorySchemeHeaders)?;
    if let Some(client) = resolved.client {
        use std::io::Write as _;
        vars.override_with(REMOTE_ADDR, |out| {
            let _ = write!(out, "{}", client.ip.to_canonical());
        });
        vars.override_with(REMOTE_PORT, |out| extend_decimal(out, u64::from(client.port.unwrap_or(0))));
    }
    if let Some(https) = resolved.https {
        vars.override_with(URL_SCHEME, |out| out.extend_from_slice(if https { b"https" } else { b"http" }));
    }
    Ok(())
}

/// Checks that every line of the head `buf[..len]` ends in CRLF, which httparse does not (it
/// takes a bare LF as a line end: waitress CVE-2019-16785), and returns the request line's
/// length. Every line but the last ends right before a header name, so the header names'
/// positions are all it takes.
fn request_line_len(
    buf: &[u8],
    len: usize,
    method: &str,
    headers: &[httparse::Header<'_>],
) -> Result<usize, ParseError> {
    let offset = |s: &str| s.as_ptr() as usize - buf.as_ptr() as usize;
    let start = offset(method);
    // httparse skips empty lines before the request line; only CRLF ones are acceptable.
    if !buf[..start].chunks(2).all(|pair| pair == b"\r\n") {
        return Err(ParseError::BareLineEnding);
    }
    let crlf_before = |i: usize| i >= 2 && &buf[i - 2..i] == b"\r\n";
    let every_line_crlf = headers.iter().all(|h| crlf_before(offset(h.name))) && len >= 4 && crlf_before(len);
    if !(every_line_crlf && crlf_before(len - 2)) {
        return Err(ParseError::BareLineEnding);
    }
    let request_line_end = headers.first().map_or(len - 2, |h| offset(h.name)) - 2;
    Ok(request_line_end - start)
}

/// Entries of the environ's template (see [`Vars::reuse_template`]) whose values change from
/// request to request; the others' values are the same on a whole connection.
pub(crate) const REQUEST_METHOD: usize = 0;
pub(crate) const PATH_INFO: usize = 2;
pub(crate) const QUERY_STRING: usize = 3;
pub(crate) const RAW_URI: usize = 4;
pub(crate) const SERVER_PROTOCOL: usize = 5;
pub(crate) const REMOTE_ADDR: usize = 8;
const REMOTE_PORT: usize = 9;
const URL_SCHEME: usize = 10;

fn write_environ(
    vars: &mut Vars,
    config: &Config,
    conn: &ConnInfo,
    method: &str,
    target: &str,
    http10: bool,
    headers: &[httparse::Header<'_>],
) -> Result<(), ParseError> {
    // The first variables, in their order; those that are the same for the whole connection are
    // written once, and kept with their places for the next request on it.
    let owner = (config as *const Config as usize, conn as *const ConnInfo as usize);
    if !vars.reuse_template(owner) {
        // Sized from the head once, so that a cold parse allocates each array once.
        vars.reserve(headers.len() + 16, 256 + 2 * target.len() + 48 * headers.len());
        vars.push_static(b"REQUEST_METHOD", b"");
        vars.push_copy(Slot::Static(b"SCRIPT_NAME"), config.script_name.as_bytes());
        vars.push_static(b"PATH_INFO", b"");
        vars.push_static(b"QUERY_STRING", b"");
        vars.push_static(b"RAW_URI", b"");
        vars.push_static(b"SERVER_PROTOCOL", b"");
        vars.push_copy(Slot::Static(b"SERVER_NAME"), conn.server_name.as_bytes());
        vars.push_copy(Slot::Static(b"SERVER_PORT"), conn.server_port.as_bytes());
        vars.push_copy(Slot::Static(b"REMOTE_ADDR"), conn.remote_addr.as_bytes());
        vars.push_copy(Slot::Static(b"REMOTE_PORT"), conn.remote_port.as_bytes());
        vars.push_copy(Slot::Static(b"wsgi.url_scheme"), config.url_scheme.as_bytes());
        vars.keep_template(owner);
    }
    vars.reserve(headers.len(), 2 * target.len() + 48 * headers.len());
    let (path, query) = split_target(method, target)?;

    let method_value = match method.as_bytes() {
        b"GET" => Slot::Static(b"GET"),
        b"POST" => Slot::Static(b"POST"),
        b"HEAD" => Slot::Static(b"HEAD"),
        b"PUT" => Slot::Static(b"PUT"),
        b"DELETE" => Slot::Static(b"DELETE"),
        b"OPTIONS" => Slot::Static(b"OPTIONS"),
        b"PATCH" => Slot::Static(b"PATCH"),
        other => vars.copy_in(other),
    };
    vars.set_value(REQUEST_METHOD, method_value);
    // The raw target is copied once: the path and the query are usually parts of it.
    let raw = vars.copy_in(target.as_bytes());
    vars.set_value(RAW_URI, raw);
    let part = |vars: &mut Vars, bytes: &[u8]| match (raw, range_within(target.as_bytes(), bytes)) {
        (Slot::Arena { start, .. }, Some((from, to))) => Slot::Arena { start: start + from, end: start + to },
        _ => vars.copy_in(bytes),
    };
    let path_info =
        if path.contains(&b'%') { vars.key_with(|out| percent_decode(path, out)) } else { part(vars, path) };
    vars.set_value(PATH_INFO, path_info);
    if !config.script_name.is_empty() {
        let decoded = vars.value_of(PATH_INFO);
        let prefix = config.script_name.as_bytes();
        let rest = decoded.strip_prefix(prefix).ok_or(ParseError::OutsideMount)?;
        if !(rest.is_empty() || rest.starts_with(b"/")) {
            return Err(ParseError::OutsideMount);
        }
        vars.trim_value_front(PATH_INFO, prefix.len());
    }
    let query_string = if query.is_empty() { Slot::Static(b"") } else { part(vars, query) };
    vars.set_value(QUERY_STRING, query_string);
    vars.set_value(SERVER_PROTOCOL, Slot::Static(if http10 { b"HTTP/1.0" } else { b"HTTP/1.1" }));

    vars.begin_fields();
    for h in headers {
        let name = h.name.as_bytes();
        let (key, fingerprint) = match name.len() {
            // Both are refused when repeated, so they need no fingerprint.
            12 if name.eq_ignore_ascii_case(b"content-type") => (Slot::Static(b"CONTENT_TYPE"), 0),
            14 if name.eq_ignore_ascii_case(b"content-length") => (Slot::Static(b"CONTENT_LENGTH"), 0),
            _ => {
                // `X_A` and `X-A` share a key only when underscores are kept; then every field
                // gets the same fingerprint and the keys themselves are compared.
                let print = if config.keep_underscore_headers { 0 } else { fingerprint(name) };
                if let Some(key) = common_key(name) {
                    (Slot::Static(key), print)
                } else {
                    // One pass over the name makes the key and notes an underscore.
                    let mut underscore = false;
                    let key = vars.key_with(|out| {
                        out.extend_from_slice(b"HTTP_");
                        out.extend(name.iter().map(|&b| {
                            underscore |= b == b'_';
                            CGI_NAME[usize::from(b)]
                        }));
                    });
                    if underscore && !config.keep_underscore_headers {
                        vars.unwrite_key(key);
                        continue;
                    }
                    (key, print)
                }
            }
        };
        // Repeated fields share a key (case-folded): equal fingerprints, then equal keys, find them.
        vars.push_or_join(key, fingerprint, h.value);
    }
    Ok(())
}

/// The key of a field most requests carry, written once here rather than into every environ.
#[inline]
fn common_key(name: &[u8]) -> Option<&'static [u8]> {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    let key: &'static [u8] = match name.len() {
        4 if is(b"host") => b"HTTP_HOST",
        6 if is(b"accept") => b"HTTP_ACCEPT",
        6 if is(b"cookie") => b"HTTP_COOKIE",
        7 if is(b"referer") => b"HTTP_REFERER",
        10 if is(b"user-agent") => b"HTTP_USER_AGENT",
        10 if is(b"connection") => b"HTTP_CONNECTION",
        15 if is(b"accept-encoding") => b"HTTP_ACCEPT_ENCODING",
        15 if is(b"accept-language") => b"HTTP_ACCEPT_LANGUAGE",
        _ => return None,
    };
    Some(key)
}

/// A cheap summary of a header name: names equal but for ASCII case have equal fingerprints, and
/// real header names almost never share one (it mixes the length with the first and last eight
/// bytes, case-folded). Read from the request, not from the key just written byte by byte, which
/// the processor cannot forward to a wide load.
fn fingerprint(name: &[u8]) -> u64 {
    let (first, last) = match (name.first_chunk::<8>(), name.last_chunk::<8>()) {
        (Some(first), Some(last)) => (u64::from_le_bytes(*first), u64::from_le_bytes(*last)),
        // Shorter than eight bytes: the first eight and the last eight are the whole name.
        _ => {
            let word = name.iter().fold(0u64, |w, &c| w << 8 | u64::from(c));
            (word, word)
        }
    };
    const FOLD: u64 = 0x2020_2020_2020_2020;
    name.len() as u64 ^ (first | FOLD).rotate_left(7) ^ (last | FOLD)
}

/// Header name byte to CGI variable byte: uppercase, `-` to `_`.
const CGI_NAME: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = if b == b'-' { b'_' } else { b.to_ascii_uppercase() };
        i += 1;
    }
    table
};

/// Splits a request target into its path and its raw query, per the target's form (RFC 9112 §3.2).
/// A fragment, which a client should never send, is dropped from both.
fn split_target<'t>(method: &str, target: &'t str) -> Result<(&'t [u8], &'t [u8]), ParseError> {
    let t = target.as_bytes();
    let origin = if t.starts_with(b"/") {
        t
    } else if t == b"*" {
        if method != "OPTIONS" {
            return Err(ParseError::Target);
        }
        return Ok((b"*", b""));
    } else {
        // absolute-form: scheme "://" authority [path-abempty] ["?" query]
        let after_scheme = strip_prefix_ignore_case(t, b"http://")
            .or_else(|| strip_prefix_ignore_case(t, b"https://"))
            .ok_or(ParseError::Target)?;
        match after_scheme.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')) {
            Some(i) if after_scheme[i] == b'/' => &after_scheme[i..],
            Some(i) if after_scheme[i] == b'?' => return Ok((b"/", until_fragment(&after_scheme[i + 1..]))),
            _ => return Ok((b"/", b"")),
        }
    };
    // One pass to the end of the path, which a query or a fragment ends.
    Ok(match origin.iter().position(|&b| b == b'?' || b == b'#') {
        Some(i) if origin[i] == b'?' => (&origin[..i], until_fragment(&origin[i + 1..])),
        Some(i) => (&origin[..i], b""),
        None => (origin, b""),
    })
}

/// Where `part` lies inside `whole`, when it is a slice of it.
fn range_within(whole: &[u8], part: &[u8]) -> Option<(usize, usize)> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    (start <= whole.len() && part.len() <= whole.len() - start).then_some((start, start + part.len()))
}

fn until_fragment(s: &[u8]) -> &[u8] {
    s.split(|&b| b == b'#').next().unwrap_or(s)
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &s[prefix.len()..])
}

/// Decodes `%XX` escapes; an invalid escape is kept as it is (like Python's `unquote`, which
/// wsgiref and gunicorn use). The result need not be UTF-8.
fn percent_decode(path: &[u8], out: &mut Vec<u8>) {
    let mut rest = path;
    while let Some(i) = rest.iter().position(|&b| b == b'%') {
        out.extend_from_slice(&rest[..i]);
        match (rest.get(i + 1).and_then(|&b| hex_value(b)), rest.get(i + 2).and_then(|&b| hex_value(b))) {
            (Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                rest = &rest[i + 3..];
            }
            _ => {
                out.push(b'%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.extend_from_slice(rest);
}

pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `Content-Length = 1*DIGIT`, overflow-checked: no sign, no hex, no list, no whitespace inside
/// (hyper CVE-2021-32715, waitress CVE-2022-24761 and CVE-2019-16792).
fn parse_content_length(value: &[u8]) -> Result<u64, ParseError> {
    if value.is_empty() {
        return Err(ParseError::ContentLength);
    }
    value.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err(ParseError::ContentLength);
        }
        n.checked_mul(10).and_then(|n| n.checked_add(u64::from(b - b'0'))).ok_or(ParseError::ContentLength)
    })
}

/// The elements of a comma-separated field value, with optional whitespace (SP / HTAB only)
/// trimmed around each.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(|e| {
        let start = e.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(e.len());
        let end = e.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |i| i + 1);
        &e[start..end]
    })
}

/// RFC 9110 `tchar`.
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// [`is_tchar`] as a table: one load a byte on the response path, which checks every header name.
pub(crate) const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = matches!(i as u8,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z');
        i += 1;
    }
    table
};

fn map_httparse_error(e: httparse::Error, buf: &[u8]) -> ParseError {
    match e {
        httparse::Error::HeaderName => ParseError::HeaderName,
        httparse::Error::HeaderValue => ParseError::HeaderValue,
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
        httparse::Error::Token => ParseError::Malformed,
        httparse::Error::Version => {
            // A well-formed `HTTP/x.y` other than 1.0 and 1.1 is a version we do not speak (505);
            // anything else in that place is garbage (400). The version is all that follows the
            // second space: `GET /a b HTTP/1.1` has a space in its target, not a bad version.
            let line_end = buf.iter().position(|&b| b == b'\r').unwrap_or(buf.len());
            let line = &buf[..line_end];
            let version = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or(b"");
            let well_formed = version.len() == 8
                && version.starts_with(b"HTTP/")
                && version[5].is_ascii_digit()
                && version[6] == b'.'
                && version[7].is_ascii_digit();
            if well_formed {
                ParseError::Version
            } else {
                ParseError::Malformed
            }
        }
        _ => ParseError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environ::{Environ, Input, RunnerFlags};

    fn environ(head: &[u8], config: &Config) -> Vars {
        let mut vars = Vars::default();
        parse_head(head, config, &ConnInfo::default(), &mut vars).expect("valid head");
        vars
    }

    #[test]
    fn repeated_fields_join_whatever_their_case() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long-Field-Name: a\r\nAccept: b\r\nx-long-field-name: c\r\nX-LONG-FIELD-NAME: d\r\n\r\n";
        let vars = environ(head, &Config::default());
        assert_eq!(vars.get(b"HTTP_X_LONG_FIELD_NAME"), Some(&b"a,c,d"[..]));
        assert_eq!(vars.get(b"HTTP_ACCEPT"), Some(&b"b"[..]));
        assert_eq!(vars.iter().filter(|(k, _)| k.starts_with(b"HTTP_X_LONG")).count(), 1);
    }

    fn entries(vars: &Vars) -> Vec<(Vec<u8>, Vec<u8>)> {
        vars.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn warm_storage_gives_the_environ_fresh_storage_does() {
        let heads: [&[u8]; 8] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /app/a%20b?q=1&r=%41#frag HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PROPFIND http://example.com/app/x?y HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET https://example.com?only=query HTTP/1.0\r\n\r\n",
            b"HEAD /app HTTP/1.1\r\nHost: x\r\nContent-Type: t\r\n\r\n",
            b"GET /app/%zz%4 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"DELETE /app/? HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        for config in [Config::default(), Config::default().script_name("/app")] {
            let conn = ConnInfo::new("s".into(), "1".into(), "192.0.2.1:2".parse().ok());
            let mut warm = Vars::default();
            for (i, head) in heads.iter().cycle().take(3 * heads.len()).enumerate() {
                let mut fresh = Vars::default();
                let expected = parse_head(head, &config, &conn, &mut fresh).map(|_| entries(&fresh));
                let got = parse_head(head, &config, &conn, &mut warm).map(|_| entries(&warm));
                assert_eq!(got, expected, "head {i}");
                // What a handler changes in one request's environ is gone in the next one's.
                let mut env = Environ::new(warm, Input::new(None), &config, RunnerFlags::default());
                match i % 3 {
                    0 => env.insert("X_NEW", "1"),
                    1 => env.insert("SCRIPT_NAME", "/elsewhere"),
                    _ => assert!(env.remove("REMOTE_ADDR")),
                }
                warm = env.into_vars();
            }
        }
    }

    #[test]
    fn the_environ_keeps_its_order() {
        let vars =
            environ(b"GET /a?b HTTP/1.1\r\nHost: x\r\nContent-Type: t\r\nAccept: */*\r\n\r\n", &Config::default());
        let keys: Vec<_> = vars.iter().map(|(k, _)| String::from_utf8(k.to_vec()).unwrap()).collect();
        let expected = [
            "REQUEST_METHOD",
            "SCRIPT_NAME",
            "PATH_INFO",
            "QUERY_STRING",
            "RAW_URI",
            "SERVER_PROTOCOL",
            "SERVER_NAME",
            "SERVER_PORT",
            "REMOTE_ADDR",
            "REMOTE_PORT",
            "wsgi.url_scheme",
            "HTTP_HOST",
            "CONTENT_TYPE",
            "HTTP_ACCEPT",
        ];
        assert_eq!(keys, expected);
    }

    #[test]
    fn kept_underscore_fields_join_their_dash_twins() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: a\r\nX_Forwarded_For: b\r\n\r\n";
        let dropped = environ(head, &Config::default());
        assert_eq!(dropped.get(b"HTTP_X_FORWARDED_FOR"), Some(&b"a"[..]));
        let kept = environ(head, &Config::default().keep_underscore_headers(true));
        assert_eq!(kept.get(b"HTTP_X_FORWARDED_FOR"), Some(&b"a,b"[..]));
    }
}
