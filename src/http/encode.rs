//! The one response writer, sans I/O: validates what the application sets, chooses the framing,
//! and encodes the head, chunk framing and error responses into byte buffers.

use std::time::Instant;

use crate::config::Config;
use crate::error::Error;
use crate::http::date::{self, DateCache};
use crate::http::parse::TCHAR;

/// Status and headers as the application set them, validated and already in wire form.
///
/// The buffer is lent by the connection and handed back after each response, so steady-state
/// responses allocate nothing.
#[derive(Debug, Default)]
pub(crate) struct ResponseHead {
    /// `"NNN Reason"` followed by the application's header lines, each `Name: value\r\n`.
    buf: Vec<u8>,
    status_end: usize,
    pub(crate) status: u16,
    pub(crate) content_length: Option<u64>,
    has_date: bool,
    has_server: bool,
}

/// Request facts the writer needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestInfo {
    pub is_head: bool,
    pub http10: bool,
}

/// How a response goes out, as decided when the handler answered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Framed {
    pub info: RequestInfo,
    pub framing: BodyFraming,
    /// The body's length, when known before sending.
    pub body_len: Option<u64>,
    pub keep_alive: bool,
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body may follow (HEAD, 1xx, 204, 304).
    NoBody,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding (HTTP/1.1 only).
    Chunked,
    /// Body ends when the connection closes (HTTP/1.0 with an unknown length).
    Close,
}

/// What the writer makes of a response header's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldName {
    Plain,
    /// `Connection`, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`:
    /// the server's business only.
    HopByHop,
    ContentLength,
    Date,
    Server,
}

/// Sorts a header name (any case): one match on its length, then at most two comparisons.
#[inline]
fn field_name(name: &[u8]) -> FieldName {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is(b"te") => FieldName::HopByHop,
        4 if is(b"date") => FieldName::Date,
        6 if is(b"server") => FieldName::Server,
        7 if is(b"trailer") || is(b"upgrade") => FieldName::HopByHop,
        10 if is(b"connection") || is(b"keep-alive") => FieldName::HopByHop,
        14 if is(b"content-length") => FieldName::ContentLength,
        16 if is(b"proxy-connection") => FieldName::HopByHop,
        17 if is(b"transfer-encoding") => FieldName::HopByHop,
        18 if is(b"proxy-authenticate") => FieldName::HopByHop,
        19 if is(b"proxy-authorization") => FieldName::HopByHop,
        _ => FieldName::Plain,
    }
}

/// Whether a response header is one only the server sets (`push_header` refuses it).
#[cfg(feature = "http")]
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    field_name(name) == FieldName::HopByHop
}

/// The bytes a response field value or reason phrase may hold: HTAB, SP, VCHAR and obs-text,
/// no other control character (no CR, LF or NUL: no response splitting, CVE-2018-1000164).
const FIELD_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = i == 0x09 || i >= 0x20 && i != 0x7f;
        i += 1;
    }
    table
};

/// Whether every byte of `s` is in `table`; a load and an `and` a byte, no branch.
#[inline]
fn all_in(s: &[u8], table: &[bool; 256]) -> bool {
    s.iter().fold(true, |ok, &b| ok & table[usize::from(b)])
}

impl ResponseHead {
    /// Clears the head and sets its status from `"NNN Reason"` (code 200..=999; an interim 1xx
    /// response is the server's business, not the application's).
    pub(crate) fn set_status(&mut self, status: &str) -> Result<(), Error> {
        let s = status.as_bytes();
        let (code, reason) = match s {
            [a @ b'2'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9', rest @ ..] => {
                (u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'), rest)
            }
            _ => return Err(Error::InvalidStatus),
        };
        let reason = match reason {
            [] => &[][..],
            [b' ', reason @ ..] if all_in(reason, &FIELD_BYTE) => reason,
            _ => return Err(Error::InvalidStatus),
        };
        self.reset();
        self.status = code;
        if reason.is_empty() {
            self.buf.extend_from_slice(&s[..3]);
            self.buf.push(b' ');
            self.buf.extend_from_slice(reason_phrase(code).as_bytes());
        } else {
            // `NNN Reason` is already in wire form.
            self.buf.extend_from_slice(s);
        }
        self.status_end = self.buf.len();
        Ok(())
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.status_end = 0;
        self.status = 0;
        self.content_length = None;
        self.has_date = false;
        self.has_server = false;
    }

    /// Appends one header, refusing what could split the response or break its framing:
    /// a name that is not a token, a value with CR, LF, NUL or another control character
    /// (CVE-2018-1000164), hop-by-hop fields, and a malformed or repeated `Content-Length`.
    pub(crate) fn push_header(&mut self, name: &str, value: &[u8]) -> Result<(), Error> {
        let name = name.as_bytes();
        if name.is_empty() || !all_in(name, &TCHAR) {
            return Err(Error::InvalidHeaderName);
        }
        // What trimming removes (SP, HTAB) is valid: checking the trimmed value is the same.
        let value = trim_ows(value);
        if !all_in(value, &FIELD_BYTE) {
            return Err(Error::InvalidHeaderValue);
        }
        match field_name(name) {
            FieldName::Plain => {}
            FieldName::HopByHop => return Err(Error::HopByHopHeader),
            FieldName::ContentLength => {
                let n = parse_decimal(value).ok_or(Error::InvalidHeaderValue)?;
                if self.content_length.replace(n).is_some_and(|old| old != n) {
                    return Err(Error::InvalidHeaderValue);
                }
                // Written by `encode_head`, which knows when a response must not carry it.
                return Ok(());
            }
            FieldName::Date => self.has_date = true,
            FieldName::Server => self.has_server = true,
        }
        self.buf.reserve(name.len() + value.len() + 4);
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// The value of the application's header `name` (any case; the first if repeated), for the
    /// access log. `Content-Length` is not among them: the server writes it.
    pub(crate) fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.buf.get(self.status_end..)?.split(|&b| b == b'\n').find_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            line[..colon].eq_ignore_ascii_case(name).then(|| line[colon + 1..].trim_ascii())
        })
    }

    /// The header fields the application set, in order, as (name, value); for tests.
    #[cfg(test)]
    pub(crate) fn fields(&self) -> Vec<(String, String)> {
        let text = String::from_utf8_lossy(&self.buf[self.status_end..]);
        text.split_terminator("\r\n")
            .filter_map(|line| line.split_once(": "))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect()
    }

    /// Chooses the framing of the body (RFC 9112 §6.3, PEP 3333's Content-Length rules).
    /// `body_len` is the length of the body when it is known before sending.
    pub(crate) fn framing(&self, req: RequestInfo, body_len: Option<u64>) -> BodyFraming {
        if req.is_head || self.status == 204 || self.status == 304 {
            BodyFraming::NoBody
        } else if let Some(n) = self.content_length.or(body_len) {
            BodyFraming::Length(n)
        } else if req.http10 {
            BodyFraming::Close
        } else {
            BodyFraming::Chunked
        }
    }

    /// Encodes the status line and every header into `out`, at `now` (for the `Date`, from `date`).
    pub(crate) fn encode(
        &self,
        out: &mut Vec<u8>,
        framed: Framed,
        config: &Config,
        date: &mut DateCache,
        now: Instant,
    ) {
        let Framed { info: req, framing, body_len, keep_alive } = framed;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(&self.buf[..self.status_end]);
        out.extend_from_slice(b"\r\n");
        if !self.has_date {
            date.extend_line(out, now);
        }
        if let (false, Some(server)) = (self.has_server, &config.server_header) {
            out.extend_from_slice(b"Server: ");
            out.extend_from_slice(server.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let length_header = match framing {
            BodyFraming::Length(n) => Some(n),
            // A HEAD response says how long the GET body would be, when that is known.
            BodyFraming::NoBody if req.is_head => self.content_length.or(body_len),
            BodyFraming::NoBody if self.status == 304 => self.content_length,
            _ => None,
        };
        if let Some(n) = length_header {
            out.extend_from_slice(b"Content-Length: ");
            extend_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        if framing == BodyFraming::Chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if req.http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(&self.buf[self.status_end..]);
        out.extend_from_slice(b"\r\n");
    }
}

/// `1*DIGIT` as a number; `None` if empty, not all digits, or past `u64`.
fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |i| i + 1);
    &v[start..end]
}

#[inline(always)]
pub(crate) fn extend_decimal(out: &mut Vec<u8>, n: u64) {
    // The lengths of small bodies without a loop, or a copy of a variable length.
    let d = |n: u64| b'0' + (n % 10) as u8;
    match n {
        0..=9 => out.push(d(n)),
        10..=99 => out.extend_from_slice(&[d(n / 10), d(n)]),
        100..=999 => out.extend_from_slice(&[d(n / 100), d(n / 10), d(n)]),
        1000..=9999 => out.extend_from_slice(&[d(n / 1000), d(n / 100), d(n / 10), d(n)]),
        _ => extend_long_decimal(out, n),
    }
}

#[inline(never)]
fn extend_long_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Writes the `size CRLF` line that opens a chunk of `len > 0` bytes.
pub(crate) fn chunk_prefix(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Closes a chunk's data.
pub(crate) const CHUNK_SUFFIX: &[u8] = b"\r\n";
/// The last chunk and an empty trailer section.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A complete response the server sends on its own (an error status), always closing the
/// connection; without its body when answering a `HEAD` request.
pub(crate) fn error_response(out: &mut Vec<u8>, status: u16, message: &str, is_head: bool, config: &Config) {
    out.extend_from_slice(b"HTTP/1.1 ");
    extend_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    date::extend_with_now(out);
    if let Some(server) = &config.server_header {
        out.extend_from_slice(b"\r\nServer: ");
        out.extend_from_slice(server.as_bytes());
    }
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    extend_decimal(out, message.len() as u64 + 1);
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    if !is_head {
        out.extend_from_slice(message.as_bytes());
        out.push(b'\n');
    }
}

/// The `100 Continue` interim response.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The reason phrase RFC 9110 gives a status code, or `"Unknown"`.
pub(crate) fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET11: RequestInfo = RequestInfo { is_head: false, http10: false };

    fn head(status: &str, headers: &[(&str, &str)]) -> Result<ResponseHead, Error> {
        let mut h = ResponseHead::default();
        h.set_status(status)?;
        for (n, v) in headers {
            h.push_header(n, v.as_bytes())?;
        }
        Ok(h)
    }

    #[test]
    fn refuses_response_splitting_and_hop_by_hop() {
        assert!(matches!(head("200 OK", &[("X", "a\r\nSet-Cookie: x")]), Err(Error::InvalidHeaderValue)));
        assert!(matches!(head("200 OK", &[("X", "a\nb")]), Err(Error::InvalidHeaderValue)));
        assert!(matches!(head("200 OK", &[("X", "a\0b")]), Err(Error::InvalidHeaderValue)));
        assert!(matches!(head("200 OK", &[("X Y", "a")]), Err(Error::InvalidHeaderName)));
        assert!(matches!(head("200 OK", &[("X:", "a")]), Err(Error::InvalidHeaderName)));
        assert!(matches!(head("200 OK", &[("Transfer-Encoding", "chunked")]), Err(Error::HopByHopHeader)));
        assert!(matches!(head("200 OK", &[("connection", "close")]), Err(Error::HopByHopHeader)));
        assert!(matches!(head("200 OK", &[("Content-Length", "+5")]), Err(Error::InvalidHeaderValue)));
        assert!(matches!(head("200 OK\r\nX: y", &[]), Err(Error::InvalidStatus)));
        assert!(matches!(head("100 Continue", &[]), Err(Error::InvalidStatus)));
        assert!(matches!(head("20 OK", &[]), Err(Error::InvalidStatus)));
        assert!(matches!(head("200OK", &[]), Err(Error::InvalidStatus)));
        assert!(head("299", &[("X-Ok", "caf\u{e9}")]).is_ok());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("200 OK", &[]).unwrap();
        assert_eq!(h.framing(GET11, None), BodyFraming::Chunked);
        assert_eq!(h.framing(GET11, Some(3)), BodyFraming::Length(3));
        assert_eq!(h.framing(RequestInfo { is_head: false, http10: true }, None), BodyFraming::Close);
        assert_eq!(h.framing(RequestInfo { is_head: true, http10: false }, None), BodyFraming::NoBody);
        let h = head("204 No Content", &[("Content-Length", "5")]).unwrap();
        assert_eq!(h.framing(GET11, Some(5)), BodyFraming::NoBody);
        let mut out = Vec::new();
        let framed = Framed { info: GET11, framing: BodyFraming::NoBody, body_len: Some(5), keep_alive: true };
        h.encode(&mut out, framed, &Config::default(), &mut DateCache::default(), Instant::now());
        assert!(!String::from_utf8(out).unwrap().contains("Content-Length"));
        let h = head("200 OK", &[("Content-Length", "7")]).unwrap();
        assert_eq!(h.framing(GET11, Some(3)), BodyFraming::Length(7));
    }

    #[test]
    fn field_names_are_sorted_in_any_case() {
        const HOP_BY_HOP: [&str; 9] = [
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ];
        for name in HOP_BY_HOP {
            for n in [name.to_owned(), name.to_ascii_uppercase()] {
                assert_eq!(field_name(n.as_bytes()), FieldName::HopByHop, "{n}");
                assert!(matches!(head("200 OK", &[(&n, "x")]), Err(Error::HopByHopHeader)));
            }
        }
        assert_eq!(field_name(b"Content-LENGTH"), FieldName::ContentLength);
        assert_eq!(field_name(b"DATE"), FieldName::Date);
        assert_eq!(field_name(b"sErVeR"), FieldName::Server);
        for plain in ["t", "tf", "dates", "servers", "trailers", "upgrades", "connectio", "content-type", "x-te"] {
            assert_eq!(field_name(plain.as_bytes()), FieldName::Plain, "{plain}");
        }
        // The value is checked before the name is sorted; a bad name before either.
        assert!(matches!(head("200 OK", &[("Connection", "a\rb")]), Err(Error::InvalidHeaderValue)));
        assert!(matches!(head("200 OK", &[("Conn\u{e9}ction", "a\rb")]), Err(Error::InvalidHeaderName)));
        assert!(matches!(head("200 OK", &[("", "a")]), Err(Error::InvalidHeaderName)));
        let h = head("200 OK", &[("X-A", " \t padded\t "), ("Date", "d"), ("Server", "s")]).unwrap();
        assert_eq!(&h.buf[h.status_end..], b"X-A: padded\r\nDate: d\r\nServer: s\r\n");
        assert!(h.has_date && h.has_server);
        let h = head("200 OK", &[("Content-Length", "18446744073709551615")]).unwrap();
        assert_eq!(h.content_length, Some(u64::MAX));
        assert!(matches!(
            head("200 OK", &[("Content-Length", "18446744073709551616")]),
            Err(Error::InvalidHeaderValue)
        ));
        assert!(matches!(head("200 OK", &[("Content-Length", "")]), Err(Error::InvalidHeaderValue)));
        assert!(matches!(
            head("200 OK", &[("Content-Length", "1"), ("content-length", "2")]),
            Err(Error::InvalidHeaderValue)
        ));
        assert!(head("200 OK", &[("Content-Length", " 1 "), ("content-length", "1")]).is_ok());
    }

    #[test]
    fn status_lines_keep_their_reason_or_get_the_standard_one() {
        for (status, wire, code) in [
            ("200 OK", &b"200 OK"[..], 200),
            ("200", b"200 OK", 200),
            ("404 ", b"404 Not Found", 404),
            ("299 Caf\u{e9}\tx", "299 Caf\u{e9}\tx".as_bytes(), 299),
            ("999", b"999 Unknown", 999),
        ] {
            let h = head(status, &[]).unwrap();
            assert_eq!(&h.buf[..h.status_end], wire, "{status}");
            assert_eq!(h.status, code);
        }
        for bad in ["", "2", "20", "2x0", "199 x", "099", "200x", "200 a\x7f", "200 a\nb", "\u{e9}00"] {
            assert!(matches!(head(bad, &[]), Err(Error::InvalidStatus)), "{bad:?}");
        }
    }

    #[test]
    fn decimals_are_plain() {
        for n in [0, 1, 9, 10, 42, 99, 100, 999, 1000, 9999, 10_000, 123_456, u64::MAX] {
            let mut out = b"x".to_vec();
            extend_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn chunk_prefix_is_lowercase_hex() {
        let mut out = Vec::new();
        chunk_prefix(&mut out, 0x1a2b);
        assert_eq!(out, b"1a2b\r\n");
    }
}
