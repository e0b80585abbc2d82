//! The access log: one line per finished response, written by the server when the last byte of
//! the response went out, so it holds what the client actually got (the status sent, the body
//! bytes sent, the time to the last byte), for every request: those refused before the handler
//! (400, 408, 413, 431, ...) and those whose handler failed or panicked included.

use std::cell::RefCell;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::environ::Vars;
use crate::http::encode::{extend_decimal, ResponseHead};
use crate::http::parse;
use crate::sys::unix::signal;

/// gunicorn's default format: the Common Log Format with the referer and the user agent.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s""#;

/// Where finished responses are logged, and in what format.
///
/// The format takes gunicorn's `--access-logformat` codes, each written `%(code)s`, and `%%` for
/// a `%`:
///
/// | code | what |
/// |---|---|
/// | `h` | the client's address (`REMOTE_ADDR`: the peer, or what a trusted proxy said) |
/// | `l` | `-` |
/// | `u` | the user: `REMOTE_USER` if the application set it, else the user of a `Basic` `Authorization`, else `-` |
/// | `t` | the time the line is written, `[01/Dec/2026:14:00:00 +0000]` |
/// | `r` | the request line, `GET /path?q=1 HTTP/1.1` (for a request refused before it could be parsed: its first line as received, or `-`) |
/// | `m` | the method |
/// | `U` | the path (`PATH_INFO`) |
/// | `q` | the query string |
/// | `H` | the protocol, `HTTP/1.1` |
/// | `s` | the status sent |
/// | `B` | the body bytes sent |
/// | `b` | the body bytes sent, `-` for none |
/// | `f` | the `Referer` |
/// | `a` | the `User-Agent` |
/// | `T` | the time from the complete request head to the last byte sent, in whole seconds |
/// | `M` | the same in milliseconds |
/// | `D` | the same in microseconds |
/// | `L` | the same in seconds, with six decimals |
/// | `p` | the process id, `<1234>` |
/// | `{name}i` | request header `name` |
/// | `{name}o` | response header `name`, as the application set it |
/// | `{NAME}e` | environ variable `NAME` (gunicorn reads the process environment here; the request's environ is what tells something about a request) |
///
/// A missing value is `-`. Bytes from the request that are not printable ASCII, and `"` and
/// `\`, are written as `\xHH`, so a client cannot forge lines or break the quoting.
///
/// Lines go to a file (appended with one write each, so processes sharing it never interleave
/// within a line; reopened at its path after `SIGUSR1` when the server runs through
/// [`Options`](crate::Options)), to standard output or error, to the `log` facade (target
/// `sgi::access`, level info), or to a callback.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// let lines = Arc::new(Mutex::new(Vec::new()));
/// let sink = Arc::clone(&lines);
/// let log = sgi::AccessLog::to_fn(move |line| sink.lock().unwrap().push(line.to_owned()))
///     .format(r#"%(h)s "%(r)s" %(s)s %(B)s %(D)sus"#)?;
/// let config = sgi::Config::new().access_log(Some(log));
/// # let _ = config;
/// # Ok::<(), sgi::AccessLogFormatError>(())
/// ```
pub struct AccessLog {
    format: Format,
    sink: Sink,
}

/// A parsed format: its atoms, and the variables they look up that have no fixed place in the
/// environ (request headers, `REMOTE_USER`), found in one pass over it per line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Format {
    atoms: Vec<Atom>,
    searched: Vec<Box<[u8]>>,
    /// Whether every searched variable is a request header or `REMOTE_USER`, none of which is
    /// among the variables the server sets first.
    searched_after_template: bool,
}

/// Most searched variables found in the one pass; a format naming more finds the others one
/// search each.
const MAX_SEARCHED: usize = 16;

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sink = match &self.sink {
            Sink::File(file) => format!("file {}", file.path.display()),
            Sink::Stdout => "stdout".into(),
            Sink::Stderr => "stderr".into(),
            Sink::Log => "log".into(),
            Sink::Fn(_) => "callback".into(),
        };
        f.debug_struct("AccessLog").field("sink", &sink).finish_non_exhaustive()
    }
}

/// A format [`AccessLog::format`] refused: what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access log format: {message} at byte {at}")]
pub struct AccessLogFormatError {
    message: String,
    at: usize,
}

enum Sink {
    File(LogFile),
    Stdout,
    Stderr,
    Log,
    Fn(Arc<dyn Fn(&str) + Send + Sync>),
}

/// A file appended to, reopened at its path when the log generation moves (`SIGUSR1`).
struct LogFile {
    path: PathBuf,
    file: RwLock<File>,
    generation: AtomicU64,
}

impl LogFile {
    fn open(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    fn write(&self, line: &[u8]) {
        let generation = signal::log_generation();
        if self.generation.load(Ordering::Relaxed) != generation {
            let mut file = self.file.write().unwrap_or_else(|e| e.into_inner());
            if self.generation.swap(generation, Ordering::Relaxed) != generation {
                if let Ok(reopened) = LogFile::open(&self.path) {
                    *file = reopened;
                }
            }
        }
        let file = self.file.read().unwrap_or_else(|e| e.into_inner());
        let _ = (&*file).write_all(line);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Atom {
    Literal(Box<[u8]>),
    RemoteAddr,
    Dash,
    /// `REMOTE_USER` and `HTTP_AUTHORIZATION`, as indexes of [`Format::searched`].
    User(usize, usize),
    Time,
    RequestLine,
    Method,
    Path,
    Query,
    Protocol,
    Status,
    Bytes,
    BytesOrDash,
    /// The variable at this index of [`Format::searched`].
    Searched(usize),
    Seconds,
    Millis,
    Micros,
    DecimalSeconds,
    Pid,
    ResponseHeader(Box<[u8]>),
}

/// A finished exchange, as the access log needs it.
pub(crate) struct Record<'a> {
    /// The request's environ; `None` when it was refused before its head could be parsed.
    pub(crate) vars: Option<&'a Vars>,
    /// The first line as received, for a request refused before it was parsed.
    pub(crate) raw_line: &'a [u8],
    /// The client's address when there is no environ.
    pub(crate) remote_addr: &'a str,
    pub(crate) status: u16,
    pub(crate) body_bytes: u64,
    pub(crate) duration: Duration,
    /// The application's response head, when the response is the application's.
    pub(crate) response: Option<&'a ResponseHead>,
}

/// Lines a thread has rendered and not yet written, for one log: written together when the
/// connection that made them waits for its next request (or closes), so that the responses to a
/// batch of pipelined requests cost one write, not one each; and at [`BATCH`] at the latest.
struct Pending {
    log: Option<Arc<AccessLog>>,
    lines: Vec<u8>,
}

/// Most bytes of lines a thread holds before writing them.
const BATCH: usize = 16 * 1024;

thread_local! {
    /// No allocation per line once it has grown.
    static PENDING: RefCell<Pending> = const { RefCell::new(Pending { log: None, lines: Vec::new() }) };
}

impl AccessLog {
    fn with_sink(sink: Sink) -> AccessLog {
        AccessLog { format: parse_format(DEFAULT_ACCESS_LOG_FORMAT).expect("the default format parses"), sink }
    }

    /// Appends lines to the file at `path`, created if need be.
    ///
    /// # Errors
    /// Opening the file failed.
    pub fn to_file(path: impl AsRef<Path>) -> io::Result<AccessLog> {
        let path = path.as_ref();
        let file = LogFile::open(path)?;
        let sink = LogFile {
            path: path.to_owned(),
            file: RwLock::new(file),
            generation: AtomicU64::new(signal::log_generation()),
        };
        Ok(AccessLog::with_sink(Sink::File(sink)))
    }

    /// Writes lines to standard output (gunicorn's `--access-logfile -`).
    pub fn to_stdout() -> AccessLog {
        AccessLog::with_sink(Sink::Stdout)
    }

    /// Writes lines to standard error.
    pub fn to_stderr() -> AccessLog {
        AccessLog::with_sink(Sink::Stderr)
    }

    /// Gives lines to the `log` facade, at level info with the target `sgi::access` (standard
    /// error when no logger is installed).
    #[cfg(feature = "log")]
    pub fn to_log() -> AccessLog {
        AccessLog::with_sink(Sink::Log)
    }

    /// Gives each line, without its newline, to `f`.
    pub fn to_fn(f: impl Fn(&str) + Send + Sync + 'static) -> AccessLog {
        AccessLog::with_sink(Sink::Fn(Arc::new(f)))
    }

    /// Sets the format (see [`AccessLog`]); the default is [`DEFAULT_ACCESS_LOG_FORMAT`].
    ///
    /// # Errors
    /// An unknown code, a `%` that starts no code, or a code not closed by `)s`.
    pub fn format(mut self, format: &str) -> Result<AccessLog, AccessLogFormatError> {
        self.format = parse_format(format)?;
        Ok(self)
    }

    /// Checks a format without making a log.
    ///
    /// # Errors
    /// As [`AccessLog::format`].
    pub fn check_format(format: &str) -> Result<(), AccessLogFormatError> {
        parse_format(format).map(|_| ())
    }

    /// Renders `record`: given to a callback or the `log` facade at once, held with this
    /// thread's other lines for a file or a standard stream until [`flush_thread`] (or
    /// [`BATCH`]).
    pub(crate) fn log(log: &Arc<AccessLog>, record: &Record<'_>) {
        // A thread being torn down has nowhere to keep lines: they go nowhere rather than panic.
        let _ = PENDING.try_with(|pending| {
            let Ok(mut pending) = pending.try_borrow_mut() else { return };
            let Pending { log: owner, lines } = &mut *pending;
            if owner.as_ref().is_some_and(|o| !Arc::ptr_eq(o, log)) {
                // Another server's log, in the same thread: its lines go out first, to it.
                if let Some(o) = owner.take() {
                    o.write(lines);
                }
                lines.clear();
            }
            let start = lines.len();
            log.render(record, lines);
            lines.push(b'\n');
            match &log.sink {
                Sink::Log | Sink::Fn(_) => {
                    log.write(&lines[start..]);
                    lines.truncate(start);
                }
                Sink::File(_) | Sink::Stdout | Sink::Stderr => {
                    if owner.is_none() {
                        *owner = Some(Arc::clone(log));
                    }
                    if lines.len() >= BATCH {
                        log.write(lines);
                        lines.clear();
                    }
                }
            }
        });
    }

    /// Writes `lines` (whole lines, each ending in a newline) to the sink.
    fn write(&self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        match &self.sink {
            Sink::File(file) => file.write(lines),
            Sink::Stdout => {
                let _ = io::stdout().lock().write_all(lines);
            }
            Sink::Stderr => {
                let _ = io::stderr().lock().write_all(lines);
            }
            Sink::Log => crate::logging::access_line(text(&lines[..lines.len() - 1])),
            Sink::Fn(f) => f(text(&lines[..lines.len() - 1])),
        }
    }

    fn render(&self, r: &Record<'_>, out: &mut Vec<u8>) {
        let searched = &self.format.searched;
        let mut found = [None; MAX_SEARCHED];
        if let Some(vars) = r.vars {
            let keys = &searched[..searched.len().min(MAX_SEARCHED)];
            vars.get_many(keys, self.format.searched_after_template, &mut found);
        }
        let var = |slot: usize| match found.get(slot) {
            Some(value) => *value,
            None => r.vars.and_then(|v| v.get(&searched[slot])),
        };
        let var = |slot: usize| var(slot).filter(|v| !v.is_empty());
        // The server's own variables are where it put them: no search.
        let fixed = |index: usize, key: &[u8]| r.vars.and_then(|v| v.get_hinted(index, key)).filter(|v| !v.is_empty());
        for atom in &self.format.atoms {
            match atom {
                Atom::Literal(bytes) => out.extend_from_slice(bytes),
                Atom::RemoteAddr => match r.vars {
                    Some(_) => escaped_or_dash(out, fixed(parse::REMOTE_ADDR, b"REMOTE_ADDR")),
                    None => escaped_or_dash(out, Some(r.remote_addr.as_bytes()).filter(|a| !a.is_empty())),
                },
                Atom::Dash => out.push(b'-'),
                Atom::User(remote_user, authorization) => match var(*remote_user) {
                    Some(user) => escape(out, user),
                    None => escaped_or_dash(out, var(*authorization).and_then(basic_user).as_deref()),
                },
                Atom::Time => crate::http::date::extend_with_clf_now(out),
                Atom::RequestLine => match r.vars {
                    Some(_) => {
                        escape(out, fixed(parse::REQUEST_METHOD, b"REQUEST_METHOD").unwrap_or(b"-"));
                        out.push(b' ');
                        escape(out, fixed(parse::RAW_URI, b"RAW_URI").unwrap_or(b"-"));
                        out.push(b' ');
                        escape(out, fixed(parse::SERVER_PROTOCOL, b"SERVER_PROTOCOL").unwrap_or(b"-"));
                    }
                    None => escaped_or_dash(out, Some(r.raw_line).filter(|l| !l.is_empty())),
                },
                Atom::Method => escaped_or_dash(out, fixed(parse::REQUEST_METHOD, b"REQUEST_METHOD")),
                Atom::Path => escaped_or_dash(out, fixed(parse::PATH_INFO, b"PATH_INFO")),
                Atom::Query => escaped_or_dash(out, fixed(parse::QUERY_STRING, b"QUERY_STRING")),
                Atom::Protocol => escaped_or_dash(out, fixed(parse::SERVER_PROTOCOL, b"SERVER_PROTOCOL")),
                Atom::Status => extend_decimal(out, u64::from(r.status)),
                Atom::Bytes => extend_decimal(out, r.body_bytes),
                Atom::BytesOrDash if r.body_bytes == 0 => out.push(b'-'),
                Atom::BytesOrDash => extend_decimal(out, r.body_bytes),
                Atom::Searched(slot) => escaped_or_dash(out, var(*slot)),
                Atom::Seconds => extend_decimal(out, r.duration.as_secs()),
                Atom::Millis => extend_decimal(out, r.duration.as_millis() as u64),
                Atom::Micros => extend_decimal(out, r.duration.as_micros() as u64),
                Atom::DecimalSeconds => {
                    extend_decimal(out, r.duration.as_secs());
                    let micros = r.duration.subsec_micros();
                    out.push(b'.');
                    let digits = [100_000, 10_000, 1000, 100, 10, 1].map(|d| b'0' + (micros / d % 10) as u8);
                    out.extend_from_slice(&digits);
                }
                Atom::Pid => {
                    out.push(b'<');
                    extend_decimal(out, u64::from(std::process::id()));
                    out.push(b'>');
                }

                Atom::ResponseHeader(name) => {
                    escaped_or_dash(out, r.response.and_then(|h| h.header(name)).filter(|v| !v.is_empty()))
                }
            }
        }
    }
}

/// Writes the lines this thread holds (see [`AccessLog::log`]).
pub(crate) fn flush_thread() {
    let _ = PENDING.try_with(|pending| {
        let Ok(mut pending) = pending.try_borrow_mut() else { return };
        if pending.lines.is_empty() {
            return;
        }
        let Pending { log, lines } = &mut *pending;
        if let Some(log) = log.take() {
            log.write(lines);
        }
        lines.clear();
    });
}

/// The rendered line as text: everything from a request is escaped to ASCII, and the format's
/// own text came in as UTF-8, so this never loses anything.
fn text(line: &[u8]) -> &str {
    std::str::from_utf8(line).unwrap_or("-")
}

fn escaped_or_dash(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => escape(out, v),
        None => out.push(b'-'),
    }
}

/// Appends `bytes`, each byte that is not printable ASCII, and `"` and `\`, as `\xHH` (nginx's
/// escaping): a header cannot end a line or a quoted field early.
fn escape(out: &mut Vec<u8>, mut bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Runs of bytes that stand as they are are copied whole.
    while let Some(i) = bytes.iter().position(|&b| !PLAIN[usize::from(b)]) {
        out.extend_from_slice(&bytes[..i]);
        let b = bytes[i];
        out.extend_from_slice(&[b'\\', b'x', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        bytes = &bytes[i + 1..];
    }
    out.extend_from_slice(bytes);
}

/// The bytes a log line shows as they are: printable ASCII but `"` and `\\`.
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        table[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    table
};

/// The user name of a `Basic` authorization (RFC 7617), as gunicorn logs it; `None` for any
/// other scheme or a malformed value.
fn basic_user(authorization: &[u8]) -> Option<Vec<u8>> {
    let (scheme, credentials) = authorization.split_at(authorization.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64_decode(credentials.trim_ascii())?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[..colon].to_vec()).filter(|user| !user.is_empty())
}

/// Standard base64 with padding, as `Basic` credentials are sent; `None` when malformed.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    if input.len() % 4 != 0 || input.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    for (i, quad) in input.chunks(4).enumerate() {
        let last = i == input.len() / 4 - 1;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

fn parse_format(format: &str) -> Result<Format, AccessLogFormatError> {
    let bytes = format.as_bytes();
    let mut atoms = Vec::new();
    let mut searched = Vec::new();
    let mut literal = Vec::new();
    let mut i = 0;
    let error = |message: &str, at: usize| AccessLogFormatError { message: message.into(), at };
    while i < bytes.len() {
        if bytes[i] != b'%' {
            literal.push(bytes[i]);
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'%') => {
                literal.push(b'%');
                i += 2;
                continue;
            }
            Some(b'(') => {}
            _ => return Err(error("a % starts neither %% nor %(code)s", i)),
        }
        let close = bytes[i + 2..].windows(2).position(|w| w == b")s").ok_or_else(|| error("%( without )s", i))?;
        let code = &format[i + 2..i + 2 + close];
        let atom = parse_code(code, &mut searched).ok_or_else(|| error(&format!("unknown code {code:?}"), i))?;
        if !literal.is_empty() {
            atoms.push(Atom::Literal(std::mem::take(&mut literal).into()));
        }
        atoms.push(atom);
        i += 2 + close + 2;
    }
    if !literal.is_empty() {
        atoms.push(Atom::Literal(literal.into()));
    }
    let searched_after_template = searched.iter().all(|k| k.starts_with(b"HTTP_") || **k == *b"REMOTE_USER");
    Ok(Format { atoms, searched, searched_after_template })
}

/// The atom of `code`; a variable it looks up gets its index in `searched`.
fn parse_code(code: &str, searched: &mut Vec<Box<[u8]>>) -> Option<Atom> {
    let mut slot = |key: Box<[u8]>| match searched.iter().position(|k| *k == key) {
        Some(i) => i,
        None => {
            searched.push(key);
            searched.len() - 1
        }
    };
    if let Some(inner) = code.strip_prefix('{') {
        let (name, kind) = inner.rsplit_once('}')?;
        if name.is_empty() {
            return None;
        }
        return match kind {
            "i" => Some(Atom::Searched(slot(request_header_key(name)))),
            "o" => Some(Atom::ResponseHeader(name.as_bytes().into())),
            "e" => Some(Atom::Searched(slot(name.as_bytes().into()))),
            _ => None,
        };
    }
    Some(match code {
        "h" => Atom::RemoteAddr,
        "l" => Atom::Dash,
        "u" => Atom::User(slot(b"REMOTE_USER"[..].into()), slot(b"HTTP_AUTHORIZATION"[..].into())),
        "t" => Atom::Time,
        "r" => Atom::RequestLine,
        "m" => Atom::Method,
        "U" => Atom::Path,
        "q" => Atom::Query,
        "H" => Atom::Protocol,
        "s" => Atom::Status,
        "B" => Atom::Bytes,
        "b" => Atom::BytesOrDash,
        "f" => Atom::Searched(slot(b"HTTP_REFERER"[..].into())),
        "a" => Atom::Searched(slot(b"HTTP_USER_AGENT"[..].into())),
        "T" => Atom::Seconds,
        "M" => Atom::Millis,
        "D" => Atom::Micros,
        "L" => Atom::DecimalSeconds,
        "p" => Atom::Pid,
        _ => return None,
    })
}

/// The environ key a request header is found under (`X-Request-Id` → `HTTP_X_REQUEST_ID`).
fn request_header_key(name: &str) -> Box<[u8]> {
    let upper: Vec<u8> = name.bytes().map(|b| if b == b'-' { b'_' } else { b.to_ascii_uppercase() }).collect();
    if upper == b"CONTENT_TYPE" || upper == b"CONTENT_LENGTH" {
        return upper.into();
    }
    [&b"HTTP_"[..], &upper].concat().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut vars = Vars::default();
        for (k, v) in pairs {
            vars.insert(k.as_bytes(), v.as_bytes());
        }
        vars
    }

    fn render(format: &str, record: &Record<'_>) -> String {
        let log = AccessLog::to_fn(|_| {}).format(format).unwrap();
        let mut out = Vec::new();
        log.render(record, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn record<'a>(vars: Option<&'a Vars>, response: Option<&'a ResponseHead>) -> Record<'a> {
        Record {
            vars,
            raw_line: b"",
            remote_addr: "10.0.0.9",
            status: 200,
            body_bytes: 1234,
            duration: Duration::from_micros(1_500_250),
            response,
        }
    }

    #[test]
    fn the_default_format_is_gunicorns() {
        let vars = vars(&[
            ("REQUEST_METHOD", "GET"),
            ("RAW_URI", "/a?b=1"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REMOTE_ADDR", "192.0.2.7"),
            ("HTTP_REFERER", "http://example.com/"),
            ("HTTP_USER_AGENT", "curl/8.5.0"),
        ]);
        let line = render(DEFAULT_ACCESS_LOG_FORMAT, &record(Some(&vars), None));
        let (before, after) = line.split_once(" [").unwrap();
        assert_eq!(before, "192.0.2.7 - -");
        let (time, rest) = after.split_once("] ").unwrap();
        assert_eq!(time.len(), 26, "{time}");
        assert_eq!(rest, r#""GET /a?b=1 HTTP/1.1" 200 1234 "http://example.com/" "curl/8.5.0""#);
    }

    #[test]
    fn every_code_renders() {
        let vars = vars(&[
            ("REQUEST_METHOD", "POST"),
            ("PATH_INFO", "/p"),
            ("QUERY_STRING", "x=1"),
            ("SERVER_PROTOCOL", "HTTP/1.0"),
            ("HTTP_X_REQUEST_ID", "abc"),
            ("CONTENT_TYPE", "text/plain"),
            ("HTTP_AUTHORIZATION", "Basic YWRhOnNlY3JldA=="),
        ]);
        let mut head = ResponseHead::default();
        head.set_status("201 Created").unwrap();
        head.push_header("X-Trace", b"t-1").unwrap();
        let r = record(Some(&vars), Some(&head));
        let line = render(
            "%(m)s %(U)s %(q)s %(H)s %(s)s %(B)s %(b)s %(T)s %(M)s %(D)s %(L)s %(u)s %({x-request-id}i)s \
             %({Content-Type}i)s %({x-trace}o)s %({missing}o)s %({PATH_INFO}e)s 100%%",
            &r,
        );
        assert_eq!(line, "POST /p x=1 HTTP/1.0 200 1234 1234 1 1500 1500250 1.500250 ada abc text/plain t-1 - /p 100%");
    }

    #[test]
    fn unknown_codes_and_stray_percents_are_refused() {
        for bad in ["%(zz)s", "%(h)d", "%(h", "50%", "%(h)s %", "%({x}z)s", "%({}i)s"] {
            assert!(AccessLog::check_format(bad).is_err(), "{bad}");
        }
        let e = AccessLog::check_format("ok %(nope)s").unwrap_err();
        assert_eq!(e.to_string(), r#"access log format: unknown code "nope" at byte 3"#);
    }

    #[test]
    fn request_bytes_cannot_forge_lines_or_quotes() {
        let vars = vars(&[("HTTP_USER_AGENT", "a\"b\\c\n200 forged\x7f\u{e9}")]);
        assert_eq!(render("%(a)s", &record(Some(&vars), None)), r"a\x22b\x5Cc\x0A200 forged\x7F\xC3\xA9");
    }

    #[test]
    fn a_refused_request_logs_its_raw_first_line_and_the_peer() {
        let mut r = record(None, None);
        r.raw_line = b"GET /\x01 HTTP/1.1";
        r.status = 400;
        r.body_bytes = 0;
        assert_eq!(render(r#"%(h)s "%(r)s" %(s)s %(b)s %(a)s"#, &r), r#"10.0.0.9 "GET /\x01 HTTP/1.1" 400 - -"#);
        r.raw_line = b"";
        r.remote_addr = "";
        assert_eq!(render(r#"%(h)s "%(r)s""#, &r), r#"- "-""#);
    }

    #[test]
    fn remote_user_wins_over_basic_credentials_and_bad_credentials_are_no_user() {
        let set = vars(&[("REMOTE_USER", "grace"), ("HTTP_AUTHORIZATION", "Basic YWRhOnNlY3JldA==")]);
        assert_eq!(render("%(u)s", &record(Some(&set), None)), "grace");
        for bad in ["Bearer abc", "Basic !!!!", "Basic YWRh", "Basic", "Basic Om5vdXNlcg=="] {
            let v = vars(&[("HTTP_AUTHORIZATION", bad)]);
            assert_eq!(render("%(u)s", &record(Some(&v), None)), "-", "{bad}");
        }
    }

    #[test]
    fn base64_decodes_padding_forms() {
        assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
        assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode(b"YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert!(base64_decode(b"Y===").is_none());
        assert!(base64_decode(b"YQ==YWJj").is_none());
    }

    #[test]
    fn a_file_log_reopens_at_its_path_when_the_generation_moves() {
        let dir = std::env::temp_dir().join(format!("sgi-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = Arc::new(AccessLog::to_file(&path).unwrap().format("%(s)s").unwrap());
        let mut r = record(None, None);
        AccessLog::log(&log, &r);
        flush_thread();
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        signal::reopen_logs();
        r.status = 404;
        AccessLog::log(&log, &r);
        r.status = 410;
        AccessLog::log(&log, &r);
        // Held until the thread flushes (the new file is not even opened yet), then written together.
        assert!(!path.exists());
        flush_thread();
        assert_eq!(std::fs::read_to_string(dir.join("access.log.1")).unwrap(), "200\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "404\n410\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
