//! The environ: PEP 3333's CGI-style variables of one request, its body ([`Input`]), its error
//! stream and a place for extensions.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use crate::config::Config;
use crate::logging::Level;

/// Where a key or value lives: a `'static` string, or a range of the environ's byte arena.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    Static(&'static [u8]),
    Arena { start: usize, end: usize },
}

/// The variables of one request: every key and value is a slice of one arena, so building an
/// environ costs three allocations at most (entries, arena, fingerprints), and none once a
/// connection's buffers are warm.
#[derive(Default)]
pub(crate) struct Vars {
    arena: Vec<u8>,
    entries: Vec<(Slot, Slot)>,
    /// Entries from this index on are header fields ...
    fields_from: usize,
    /// ... with these key fingerprints, in the same order, for joining repeated fields.
    fingerprints: Vec<u64>,
    /// A one-word set of the fingerprints, so that a new field usually skips the search.
    fingerprint_bits: u64,
    /// The entries every request of a connection starts with, kept from one request to the next
    /// (see [`Vars::reuse_template`]).
    template: Template,
    /// Template entries this request gave another value ([`Vars::override_value`]), with
    /// their template values, put back for the next request.
    overridden: Vec<(usize, Slot)>,
}

/// What a template is for: the addresses of the configuration and connection facts its values
/// come from (see `parse::write_environ`); `(0, 0)` for none.
pub(crate) type Owner = (usize, usize);

/// The first `entries` entries, and the first `arena` bytes of the arena, which hold the values
/// that are the same for every request on a connection; made for `owner`.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
struct Template {
    owner: Owner,
    entries: usize,
    arena: usize,
}

impl Vars {
    /// Empties the variables, template included.
    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.entries.clear();
        self.fingerprints.clear();
        self.fingerprint_bits = 0;
        self.fields_from = 0;
        self.template = Template::default();
        self.overridden.clear();
    }

    /// Starts the variables of a request on a connection: if the template marked by
    /// [`Vars::keep_template`] for `owner` (not `(0, 0)`) is there and intact, empties everything after
    /// it and returns `true`; otherwise empties everything ([`Vars::clear`]) and returns `false`.
    /// The per-request values of the template's entries are for the caller to set again.
    #[inline]
    pub(crate) fn reuse_template(&mut self, owner: Owner) -> bool {
        let t = self.template;
        if t.owner != owner || owner == (0, 0) || self.entries.len() < t.entries || self.arena.len() < t.arena {
            self.clear();
            return false;
        }
        self.arena.truncate(t.arena);
        self.entries.truncate(t.entries);
        for (index, value) in self.overridden.drain(..) {
            self.entries[index].1 = value;
        }
        self.fingerprints.clear();
        self.fingerprint_bits = 0;
        self.fields_from = t.entries;
        true
    }

    /// Marks the entries and arena bytes there now as the template for `owner`: kept by
    /// [`Vars::reuse_template`] as long as nothing changes them. Arena bytes are never written
    /// twice, so only changes to the entries ([`Vars::insert`], [`Vars::remove`]) can.
    #[inline]
    pub(crate) fn keep_template(&mut self, owner: Owner) {
        self.template = Template { owner, entries: self.entries.len(), arena: self.arena.len() };
    }

    /// An entry of the template is about to change: the template is no longer one.
    #[inline]
    fn touch(&mut self, index: usize) {
        if index < self.template.entries {
            self.template = Template::default();
        }
    }

    /// Gives entry `index` the value `write` appends, for this request alone: a template entry
    /// (a trusted proxy's word on the client's address) gets its template value back at the
    /// next [`Vars::reuse_template`], so the template stays one.
    pub(crate) fn override_with(&mut self, index: usize, write: impl FnOnce(&mut Vec<u8>)) {
        if index < self.template.entries && !self.overridden.iter().any(|&(i, _)| i == index) {
            self.overridden.push((index, self.entries[index].1));
        }
        let value = self.key_with(write);
        self.entries[index].1 = value;
    }

    /// Sets the value of entry `index`.
    #[inline]
    pub(crate) fn set_value(&mut self, index: usize, value: Slot) {
        self.entries[index].1 = value;
    }

    /// Copies `bytes` into the arena and returns where they are.
    #[inline]
    pub(crate) fn copy_in(&mut self, bytes: &[u8]) -> Slot {
        self.key_with(|out| out.extend_from_slice(bytes))
    }

    /// Marks where header fields start: [`Vars::push_or_join`] looks for repeats from here on.
    #[inline]
    pub(crate) fn begin_fields(&mut self) {
        self.fields_from = self.entries.len();
        self.fingerprints.clear();
        self.fingerprint_bits = 0;
    }

    /// Takes back a key just written with [`Vars::key_with`].
    #[inline]
    pub(crate) fn unwrite_key(&mut self, key: Slot) {
        if let Slot::Arena { start, end } = key {
            if end == self.arena.len() {
                self.arena.truncate(start);
            }
        }
    }

    pub(crate) fn reserve(&mut self, entries: usize, bytes: usize) {
        self.entries.reserve(entries);
        self.fingerprints.reserve(entries);
        self.arena.reserve(bytes);
    }

    #[inline]
    fn bytes(&self, slot: Slot) -> &[u8] {
        match slot {
            Slot::Static(s) => s,
            Slot::Arena { start, end } => &self.arena[start..end],
        }
    }

    #[inline]
    pub(crate) fn push_static(&mut self, key: &'static [u8], value: &'static [u8]) -> usize {
        self.entries.push((Slot::Static(key), Slot::Static(value)));
        self.entries.len() - 1
    }

    #[inline]
    pub(crate) fn push_copy(&mut self, key: Slot, value: &[u8]) -> usize {
        self.push_with(key, |out| out.extend_from_slice(value))
    }

    /// Pushes an entry whose value `write` appends to the arena.
    #[inline]
    pub(crate) fn push_with(&mut self, key: Slot, write: impl FnOnce(&mut Vec<u8>)) -> usize {
        let start = self.arena.len();
        write(&mut self.arena);
        self.entries.push((key, Slot::Arena { start, end: self.arena.len() }));
        self.entries.len() - 1
    }

    /// Writes a key into the arena with `write` and returns where it is.
    #[inline]
    pub(crate) fn key_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Slot {
        let start = self.arena.len();
        write(&mut self.arena);
        Slot::Arena { start, end: self.arena.len() }
    }

    /// Pushes a header field's `key` (the last thing written to the arena, or static) with
    /// `value`; if a field with that key is there already, appends `,` and `value` to it
    /// instead (how repeated fields are joined). Equal keys have equal `fingerprint`s.
    #[inline]
    pub(crate) fn push_or_join(&mut self, key: Slot, fingerprint: u64, value: &[u8]) {
        let key_bytes = self.bytes(key);
        let from = self.fields_from;
        let bit = 1u64 << (fingerprint % 64);
        let repeat = if self.fingerprint_bits & bit == 0 {
            None
        } else {
            self.fingerprints
                .iter()
                .enumerate()
                .filter(|&(_, &f)| f == fingerprint)
                .map(|(j, _)| from + j)
                .find(|&i| self.bytes(self.entries[i].0) == key_bytes)
        };
        let Some(i) = repeat else {
            self.fingerprint_bits |= bit;
            self.fingerprints.push(fingerprint);
            self.push_copy(key, value);
            return;
        };
        self.unwrite_key(key);
        let start = self.arena.len();
        match self.entries[i].1 {
            Slot::Static(s) => self.arena.extend_from_slice(s),
            Slot::Arena { start, end } => self.arena.extend_from_within(start..end),
        }
        self.arena.push(b',');
        self.arena.extend_from_slice(value);
        self.entries[i].1 = Slot::Arena { start, end: self.arena.len() };
    }

    #[inline]
    pub(crate) fn value_of(&self, index: usize) -> &[u8] {
        self.bytes(self.entries[index].1)
    }

    pub(crate) fn trim_value_front(&mut self, index: usize, n: usize) {
        if let Slot::Arena { start, end } = &mut self.entries[index].1 {
            *start = (*start + n).min(*end);
        }
    }

    fn position(&self, key: &[u8]) -> Option<usize> {
        self.entries.iter().position(|&(k, _)| self.bytes(k) == key)
    }

    /// [`Vars::get`] of each of `keys` in one pass, into `found` (as long as `keys`). With
    /// `not_template`, none of `keys` is a variable of the template, whose entries are skipped.
    pub(crate) fn get_many<'v, K: AsRef<[u8]>>(
        &'v self,
        keys: &[K],
        not_template: bool,
        found: &mut [Option<&'v [u8]>],
    ) {
        // While the template is intact, its entries are the first ones, and only its variables.
        let skip = if not_template { self.template.entries.min(self.entries.len()) } else { 0 };
        for &(k, v) in &self.entries[skip..] {
            let k = self.bytes(k);
            for (key, slot) in keys.iter().zip(found.iter_mut()) {
                let key = key.as_ref();
                if slot.is_none() && key.len() == k.len() && key == k {
                    *slot = Some(self.bytes(v));
                }
            }
        }
    }

    /// [`Vars::get`], looking first at entry `index`, where the server puts `key` (a variable
    /// of the template): one comparison instead of a search, unless a middleware moved it.
    #[inline]
    pub(crate) fn get_hinted(&self, index: usize, key: &[u8]) -> Option<&[u8]> {
        match self.entries.get(index) {
            Some(&(k, v)) if self.bytes(k) == key => Some(self.bytes(v)),
            _ => self.get(key),
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.position(key).map(|i| self.value_of(i))
    }

    pub(crate) fn insert(&mut self, key: &[u8], value: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(value);
        let value = Slot::Arena { start, end: self.arena.len() };
        match self.position(key) {
            Some(i) => {
                self.touch(i);
                self.entries[i].1 = value;
            }
            None => {
                let key = self.key_with(|out| out.extend_from_slice(key));
                self.entries.push((key, value));
            }
        }
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        match self.position(key) {
            Some(i) => {
                self.touch(i);
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.entries.iter().map(|&(k, v)| (self.bytes(k), self.bytes(v)))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The wsgi.multithread / multiprocess / run_once flags, set truthfully by each runner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerFlags {
    /// Another thread of the same process may call the handler at the same time.
    pub multithread: bool,
    /// Another process may call the handler at the same time.
    pub multiprocess: bool,
    /// The handler is called once in the life of this process.
    pub run_once: bool,
}

/// The CGI-style environment of one request (PEP 3333's `environ`), passed `&mut` to the handler.
///
/// # Variables
/// Every variable a WSGI server sets: `REQUEST_METHOD`, `SCRIPT_NAME`, `PATH_INFO`
/// (percent-decoded), `QUERY_STRING` (raw), `RAW_URI` (the target as sent), `CONTENT_TYPE` and
/// `CONTENT_LENGTH` (only when sent), `SERVER_NAME`, `SERVER_PORT` (of the listening socket),
/// `SERVER_PROTOCOL`, `REMOTE_ADDR`, `REMOTE_PORT`, `wsgi.url_scheme`, and one `HTTP_<NAME>` per
/// request header field (uppercased, `-` turned into `_`, repeated fields joined with `,`; a field
/// whose name contains `_` is dropped unless [`Config::keep_underscore_headers`] is set).
///
/// Values are byte strings, as PEP 3333's latin-1 strings are: a percent-decoded path or an
/// obs-text header value need not be UTF-8. [`Environ::get_bytes`] returns them exactly;
/// [`Environ::get`] gives a `&str` view and returns `None` for a value that is not UTF-8.
///
/// The `wsgi.*` values that are not strings are typed: [`Environ::input`] (`wsgi.input`),
/// [`Environ::errors`] (`wsgi.errors`), [`Environ::flags`] (`wsgi.multithread`,
/// `wsgi.multiprocess`, `wsgi.run_once`). [`Environ::extensions_mut`] holds typed values that
/// middleware attaches for the handlers it wraps.
///
/// ```
/// use sgi::handler_fn;
/// let app = handler_fn(|env, start_response| {
///     let greeting = format!("{} {}", env.method(), env.get("PATH_INFO").unwrap_or("?"));
///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(greeting))
/// });
/// # let _ = app;
/// ```
pub struct Environ<'c> {
    vars: Vars,
    input: Input<'c>,
    config: &'c Config,
    flags: RunnerFlags,
    extensions: Extensions,
}

impl fmt::Debug for Environ<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in self.vars.iter() {
            map.entry(&String::from_utf8_lossy(k), &String::from_utf8_lossy(v));
        }
        map.finish()
    }
}

impl<'c> Environ<'c> {
    pub(crate) fn new(vars: Vars, input: Input<'c>, config: &'c Config, flags: RunnerFlags) -> Environ<'c> {
        Environ { vars, input, config, flags, extensions: Extensions::default() }
    }

    /// Gives the variable storage back to the connection for the next request.
    pub(crate) fn into_vars(self) -> Vars {
        self.vars
    }

    /// The value of a variable as `&str`; `None` if it is absent or not valid UTF-8
    /// (use [`Environ::get_bytes`] for those).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_bytes(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value of a variable, exactly as the server or a middleware set it.
    pub fn get_bytes(&self, key: &str) -> Option<&[u8]> {
        self.vars.get(key.as_bytes())
    }

    /// Sets a variable, replacing any previous value (how middleware rewrites `SCRIPT_NAME`,
    /// `PATH_INFO` or `wsgi.url_scheme`).
    pub fn insert(&mut self, key: &str, value: impl AsRef<[u8]>) {
        self.vars.insert(key.as_bytes(), value.as_ref());
    }

    /// Removes a variable; returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        self.vars.remove(key.as_bytes())
    }

    /// Every variable, in the order the server set them (then insertion order).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        // Keys are ASCII when the server sets them and `&str` when a caller does.
        self.vars.iter().map(|(k, v)| (std::str::from_utf8(k).unwrap_or(""), v))
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are no variables (never true for an environ the server built).
    pub fn is_empty(&self) -> bool {
        self.vars.len() == 0
    }

    /// `REQUEST_METHOD`, e.g. `"GET"`.
    pub fn method(&self) -> &str {
        self.get("REQUEST_METHOD").unwrap_or("")
    }

    /// `PATH_INFO`: the percent-decoded path below `SCRIPT_NAME`, as bytes.
    pub fn path_info(&self) -> &[u8] {
        self.get_bytes("PATH_INFO").unwrap_or(b"")
    }

    /// `QUERY_STRING`: the raw query, without the `?`.
    pub fn query_string(&self) -> &[u8] {
        self.get_bytes("QUERY_STRING").unwrap_or(b"")
    }

    /// `CONTENT_TYPE`, when the request has one.
    pub fn content_type(&self) -> Option<&str> {
        self.get("CONTENT_TYPE")
    }

    /// `CONTENT_LENGTH` as a number, when the request has one.
    pub fn content_length(&self) -> Option<u64> {
        self.get("CONTENT_LENGTH").and_then(|v| v.parse().ok())
    }

    /// The value of request header field `name` (any case, `-` or `_`), i.e. its `HTTP_*`
    /// variable; `Content-Type` and `Content-Length` are found too.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        let matches = |key: &[u8]| {
            key.len() == name.len()
                && key.iter().zip(name).all(|(&k, &n)| k == if n == b'-' { b'_' } else { n.to_ascii_uppercase() })
        };
        self.vars.iter().find_map(|(k, v)| {
            let hit = match k.strip_prefix(b"HTTP_") {
                Some(rest) => matches(rest),
                None => (k == b"CONTENT_TYPE" || k == b"CONTENT_LENGTH") && matches(k),
            };
            hit.then_some(v)
        })
    }

    /// The client's address, `REMOTE_ADDR` and `REMOTE_PORT` as a value: the TCP peer, or the
    /// client a trusted proxy named (its port 0 when the proxy gave none); `None` for a Unix
    /// socket peer.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        let ip = self.get("REMOTE_ADDR")?.parse().ok()?;
        let port = self.get("REMOTE_PORT").and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(SocketAddr::new(ip, port))
    }

    /// `wsgi.url_scheme`: `"http"` unless configured or rewritten by a middleware.
    pub fn url_scheme(&self) -> &str {
        self.get("wsgi.url_scheme").unwrap_or("http")
    }

    /// `wsgi.multithread`, `wsgi.multiprocess` and `wsgi.run_once`, as the runner set them.
    pub fn flags(&self) -> RunnerFlags {
        self.flags
    }

    /// `wsgi.input`: the request body, de-framed. See [`Input`].
    pub fn input(&mut self) -> &mut Input<'c> {
        &mut self.input
    }

    /// `wsgi.errors`: a writer whose lines go to the server's error log
    /// ([`Config::error_log`]).
    pub fn errors(&self) -> ErrorStream<'c> {
        ErrorStream { config: self.config, line: Vec::new() }
    }

    /// Typed values attached to this request.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Typed values attached to this request, for a middleware to add to.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }
}

/// What an [`Input`] reads from: the connection driver's body decoder.
pub(crate) trait BodySource {
    fn read_body(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

/// `wsgi.input`: the request body as a [`std::io::Read`].
///
/// It decodes `Content-Length` and `chunked` framing, never reads past the body, and returns
/// `Ok(0)` at its end, even for a chunked body (`wsgi.input_terminated`). When the client sent
/// `Expect: 100-continue`, the `100 Continue` interim response goes out on the first read, so a
/// handler that answers without reading (401, 413, ...) never makes the client upload.
///
/// A body that breaks its framing, grows past [`Config::max_body`], stalls past
/// [`Config::body_timeout`] or ends early fails the read with an [`io::Error`] whose source is a
/// [`ParseError`](crate::ParseError); the connection is closed after the response.
///
/// Reads are unbuffered passes over the connection's buffer; wrap it in a
/// [`std::io::BufReader`] to read lines.
pub struct Input<'c> {
    source: Option<&'c mut dyn BodySource>,
}

impl fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input").field("has_body", &self.source.is_some()).finish()
    }
}

impl<'c> Input<'c> {
    pub(crate) fn new(source: Option<&'c mut dyn BodySource>) -> Input<'c> {
        Input { source }
    }

    /// An empty body.
    pub fn empty() -> Input<'static> {
        Input { source: None }
    }
}

impl Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.source {
            Some(source) if !buf.is_empty() => source.read_body(buf),
            _ => Ok(0),
        }
    }
}

/// `wsgi.errors`: each line written goes to the server's error log. A partial last line is
/// logged on [`Write::flush`] or when the stream is dropped.
pub struct ErrorStream<'c> {
    config: &'c Config,
    line: Vec<u8>,
}

impl fmt::Debug for ErrorStream<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorStream").finish_non_exhaustive()
    }
}

impl Write for ErrorStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.flush()?;
            } else {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.line.is_empty() {
            self.config.log(Level::Error, &String::from_utf8_lossy(&self.line));
            self.line.clear();
        }
        Ok(())
    }
}

impl Drop for ErrorStream<'_> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// A map of typed values, one per type, that middleware attaches to a request.
///
/// ```
/// let mut ext = sgi::Extensions::default();
/// struct User(&'static str);
/// ext.insert(User("ada"));
/// assert_eq!(ext.get::<User>().map(|u| u.0), Some("ada"));
/// ```
#[derive(Default)]
pub struct Extensions {
    // Boxed: most requests carry no extension, and an empty box keeps the environ small.
    #[allow(clippy::box_collection)]
    map: Option<Box<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>,
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions").field("len", &self.map.as_ref().map_or(0, |m| m.len())).finish()
    }
}

impl Extensions {
    /// Stores `value`, returning the previous value of the same type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        self.map
            .get_or_insert_with(Default::default)
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| old.downcast().ok().map(|b| *b))
    }

    /// The value of type `T`, if one was stored.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.map.as_ref()?.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// The value of type `T`, mutably.
    pub fn get_mut<T: Send + Sync + 'static>(&mut self) -> Option<&mut T> {
        self.map.as_mut()?.get_mut(&TypeId::of::<T>())?.downcast_mut()
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Send + Sync + 'static>(&mut self) -> Option<T> {
        self.map.as_mut()?.remove(&TypeId::of::<T>())?.downcast().ok().map(|b| *b)
    }
}
