//! [`StaticFiles`]: a handler that serves the files of a directory.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::body::Body;
use crate::environ::Environ;
use crate::handler::{BoxError, Handler, Response, StartResponse};
use crate::http::date;

/// A handler that serves the files under a directory, for `GET` and `HEAD`, with the validators
/// and ranges browsers and caches use; every request it has no file for goes to a fallback
/// handler.
///
/// ```no_run
/// use sgi::{handler_fn, Server, StaticFiles};
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let app = handler_fn(|_env, start_response| {
///         Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("the application\n"))
///     });
///     // `/static/app.css` is `assets/app.css`; everything else is the application's.
///     let handler = StaticFiles::new("assets")?.prefix("/static").fallback(app);
///     Server::bind("127.0.0.1:8000")?.serve(handler)?;
///     Ok(())
/// }
/// ```
///
/// # Which requests it answers
/// A request is the handler's when `PATH_INFO` is under the [prefix](StaticFiles::prefix) and
/// names a regular file under the root (or a directory with an
/// [index file](StaticFiles::index_file)). Every other request, whatever its method, goes to the
/// [fallback](StaticFiles::fallback) untouched (a plain `404` by default): so a `StaticFiles`
/// mounted at `/` in front of an application serves the files and leaves the rest, `POST`s
/// included, to the application. For its own files it answers `GET` and `HEAD`, and `405` with
/// `Allow: GET, HEAD` to any other method.
///
/// # Which paths name a file
/// The path below the prefix is taken from `PATH_INFO`, which the server has percent-decoded
/// once. It is looked up only when it is in canonical form, never normalized; anything else is
/// not a file of this handler's (so goes to the fallback):
/// - a `.` or `..` segment, or an empty one (`//`), encoded or not;
/// - a segment holding a backslash, NUL or another control character, or starting like a drive
///   (`C:`);
/// - an encoded `/`, `\` or NUL in the request target (`RAW_URI`: `%2F`, `%5C`, `%00`, any case),
///   which decoding would otherwise turn into a separator;
/// - a hidden segment (a file or directory whose name starts with `.`, such as `.git` or
///   `.env`), unless [`StaticFiles::serve_hidden`] allows them;
/// - a path that resolves, through symbolic links, outside the root, unless
///   [`StaticFiles::follow_symlinks_out_of_root`] allows it;
/// - anything but a regular file or a directory (a FIFO, a socket, a device), and a file asked
///   for with a trailing slash.
///
/// A directory is served through its index file (`index.html` by default): `/docs/` serves
/// `docs/index.html`, and `/docs` is redirected there with `301 Moved Permanently` (a relative
/// `Location: docs/`, which holds however the application is mounted, with the query kept). A
/// directory without its index file is not one of the handler's (no listings).
///
/// A file that cannot be read for want of permission is `403 Forbidden`; one that vanished is not
/// the handler's; any other I/O error is returned (a `500`).
///
/// # Responses
/// - `Content-Type` by extension (case-insensitive): a table of the common web types, text types
///   with `; charset=utf-8`, overridden or extended with [`StaticFiles::content_type`];
///   `application/octet-stream` otherwise.
/// - `ETag`, strong, from the modification time (to the nanosecond) and the size:
///   `"<mtime ns, hex>-<size, hex>"`, the same for the same file on every replica. `Last-Modified`
///   from the modification time (no later than now). `Cache-Control: max-age=N` when
///   [`StaticFiles::max_age`] is set. `Accept-Ranges: bytes`.
/// - Preconditions in RFC 9110 §13.2.2's order: `If-Match` (strong comparison) and
///   `If-Unmodified-Since` give `412 Precondition Failed`; `If-None-Match` (`*` or a list, weak
///   comparison) and `If-Modified-Since` (only without `If-None-Match`, to the second; a date that
///   does not parse is ignored) give `304 Not Modified`, with the validators and `Cache-Control`
///   and no body.
/// - `Range` on `GET` (RFC 9110 defines ranges for `GET` alone: a `HEAD` gets the `200` head): a
///   single range (`bytes=a-b`, `bytes=a-`, `bytes=-n`) gives `206 Partial Content` with
///   `Content-Range: bytes a-b/len`; one that starts past the end gives `416 Range Not
///   Satisfiable` with `Content-Range: bytes */len`. Several ranges are answered with the whole
///   file (`200`, which RFC 9110 allows), as are a malformed `Range` and a unit other than
///   `bytes`. `If-Range` (an entity-tag compared strongly, or a date equal to a `Last-Modified`
///   at least a second old) keeps the range only while it holds.
/// - `HEAD` gets the `GET` head, `Content-Length` included, and no body.
pub struct StaticFiles {
    root: PathBuf,
    /// `/static`, without a trailing slash; empty for none.
    prefix: String,
    fallback: Box<dyn Handler>,
    follow_symlinks_out_of_root: bool,
    serve_hidden: bool,
    index_file: Option<String>,
    max_age: Option<Duration>,
    /// Lowercase extension, without its dot, to `Content-Type`.
    content_types: HashMap<String, String>,
}

impl fmt::Debug for StaticFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticFiles")
            .field("root", &self.root)
            .field("prefix", &self.prefix)
            .field("follow_symlinks_out_of_root", &self.follow_symlinks_out_of_root)
            .field("serve_hidden", &self.serve_hidden)
            .field("index_file", &self.index_file)
            .field("max_age", &self.max_age)
            .field("content_types", &self.content_types)
            .finish_non_exhaustive()
    }
}

/// The default fallback: `404 Not Found`.
struct NotFound;

impl Handler for NotFound {
    fn call(&self, _: &mut Environ<'_>, start_response: StartResponse<'_>) -> Result<Response, BoxError> {
        plain(start_response, "404 Not Found", Vec::new(), "not found\n")
    }
}

impl StaticFiles {
    /// Serves the files under `root`, mounted at `/`, with a `404` for everything else; the
    /// builder methods change that.
    ///
    /// The root is resolved once, here (symbolic links included): moving it later does not move
    /// what is served, and the files are looked up under the directory it was.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let files = sgi::StaticFiles::new(std::env::temp_dir())?;
    /// assert!(files.root().is_absolute());
    /// assert!(sgi::StaticFiles::new("/no/such/directory").is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The error of resolving `root` (it does not exist, or cannot be searched), or
    /// [`io::ErrorKind::InvalidInput`] when it is not a directory.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<StaticFiles> {
        let root = root.into();
        let canonical = root
            .canonicalize()
            .map_err(|e| io::Error::new(e.kind(), format!("static files root {}: {e}", root.display())))?;
        if !canonical.is_dir() {
            let message = format!("static files root {} is not a directory", root.display());
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        Ok(StaticFiles {
            root: canonical,
            prefix: String::new(),
            fallback: Box::new(NotFound),
            follow_symlinks_out_of_root: false,
            serve_hidden: false,
            index_file: Some("index.html".to_owned()),
            max_age: None,
            content_types: HashMap::new(),
        })
    }

    /// The directory served, as resolved by [`StaticFiles::new`].
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let files = sgi::StaticFiles::new(".")?;
    /// assert_eq!(files.root(), std::env::current_dir()?.canonicalize()?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Mounts the files under a URL prefix of `PATH_INFO` (default: none, the whole path):
    /// with `"/static"`, `/static/app.css` is the file `app.css`, and requests outside
    /// `/static/` go to the fallback. A leading `/` is added and a trailing one dropped;
    /// `""` and `"/"` are no prefix. The prefix matches whole segments: `/staticky` is outside
    /// `/static`. `/static` itself is the root directory, redirected to `/static/`.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let files = sgi::StaticFiles::new(std::env::temp_dir())?.prefix("/static/");
    /// # let _ = files;
    /// # Ok(())
    /// # }
    /// ```
    pub fn prefix(mut self, prefix: &str) -> StaticFiles {
        let trimmed = prefix.trim_end_matches('/');
        self.prefix = match trimmed {
            "" => String::new(),
            p if p.starts_with('/') => p.to_owned(),
            p => format!("/{p}"),
        };
        self
    }

    /// The handler for every request that does not name one of the files (default: a plain
    /// `404 Not Found`). It gets the environ untouched.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let app = sgi::handler_fn(|_env, start_response| Ok(start_response.start("200 OK", [("X-App", "1")])?.body("")));
    /// let files = sgi::StaticFiles::new(std::env::temp_dir())?.fallback(app);
    /// # let _ = files;
    /// # Ok(())
    /// # }
    /// ```
    pub fn fallback(mut self, handler: impl Handler) -> StaticFiles {
        self.fallback = Box::new(handler);
        self
    }

    /// Whether a symbolic link under the root may lead outside it (default: `false`: what a link
    /// resolves to must be under the root, checked on each request). `..` segments are refused
    /// either way.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// // `assets/vendor` may be a link to a directory elsewhere.
    /// let files = sgi::StaticFiles::new(std::env::temp_dir())?.follow_symlinks_out_of_root(true);
    /// # let _ = files;
    /// # Ok(())
    /// # }
    /// ```
    pub fn follow_symlinks_out_of_root(mut self, follow: bool) -> StaticFiles {
        self.follow_symlinks_out_of_root = follow;
        self
    }

    /// Whether files and directories whose name starts with `.` are served (default: `false`:
    /// `/.git/config` or `/.env` go to the fallback like a missing file, so a deployed checkout
    /// does not leak its history or secrets). `.well-known` is such a directory: allow hidden
    /// files to serve it from here.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let files = sgi::StaticFiles::new(std::env::temp_dir())?.serve_hidden(true);
    /// # let _ = files;
    /// # Ok(())
    /// # }
    /// ```
    pub fn serve_hidden(mut self, serve: bool) -> StaticFiles {
        self.serve_hidden = serve;
        self
    }

    /// The file that serves a directory (default: `Some("index.html")`); `None` for none, which
    /// leaves directories to the fallback.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let files = sgi::StaticFiles::new(std::env::temp_dir())?.index_file(Some("index.htm"));
    /// let no_index = sgi::StaticFiles::new(std::env::temp_dir())?.index_file(None);
    /// # let _ = (files, no_index);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    /// When the name is empty, `.` or `..`, or holds a `/` or NUL: a file name, not a path.
    pub fn index_file(mut self, name: Option<&str>) -> StaticFiles {
        if let Some(name) = name {
            assert!(
                !matches!(name, "" | "." | "..") && !name.contains(['/', '\0']),
                "StaticFiles::index_file: {name:?} is not a file name"
            );
        }
        self.index_file = name.map(str::to_owned);
        self
    }

    /// `Cache-Control: max-age=<seconds>` on the files served (`200`, `206` and `304`); default:
    /// none, which leaves caches to their heuristics.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// use std::time::Duration;
    /// let files = sgi::StaticFiles::new(std::env::temp_dir())?.max_age(Some(Duration::from_secs(3600)));
    /// # let _ = files;
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_age(mut self, max_age: Option<Duration>) -> StaticFiles {
        self.max_age = max_age;
        self
    }

    /// Sets the `Content-Type` of the files with extension `extension` (with or without its
    /// dot, any case), over the built-in table.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let files = sgi::StaticFiles::new(std::env::temp_dir())?
    ///     .content_type("glb", "model/gltf-binary")
    ///     .content_type(".JSON", "application/json; charset=utf-8");
    /// # let _ = files;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Panics
    /// When `mime` is empty or holds a control character (it could not be sent as a header).
    pub fn content_type(mut self, extension: &str, mime: &str) -> StaticFiles {
        assert!(
            !mime.is_empty() && !mime.chars().any(char::is_control),
            "StaticFiles::content_type: {mime:?} is not a header value"
        );
        let extension = extension.strip_prefix('.').unwrap_or(extension).to_ascii_lowercase();
        self.content_types.insert(extension, mime.to_owned());
        self
    }

    /// What the request names.
    fn resolve(&self, env: &Environ<'_>) -> Found {
        let Some(rest) = below_prefix(env.path_info(), self.prefix.as_bytes()) else { return Found::NotHere };
        if env.get_bytes("RAW_URI").is_some_and(has_encoded_separator) {
            return Found::NotHere;
        }
        let Some((segments, trailing_slash)) = split_path(rest) else { return Found::NotHere };
        if !segments.iter().all(|s| self.segment_allowed(s)) {
            return Found::NotHere;
        }
        let mut path = self.root.clone();
        path.extend(segments.iter().map(|s| OsStr::from_bytes(s)));
        let (file, meta) = match self.open(&path) {
            Ok(opened) => opened,
            Err(miss) => return miss.into(),
        };
        if meta.is_file() {
            return match (trailing_slash, segments.last()) {
                (false, Some(name)) => Found::File { file, meta, name: name.to_vec() },
                _ => Found::NotHere,
            };
        }
        if !meta.is_dir() {
            return Found::NotHere;
        }
        drop(file);
        let Some(index) = &self.index_file else { return Found::NotHere };
        path.push(index);
        let (file, meta) = match self.open(&path) {
            Ok(opened) => opened,
            Err(miss) => return miss.into(),
        };
        if !meta.is_file() {
            return Found::NotHere;
        }
        if !trailing_slash {
            if let Some(location) = add_slash(env) {
                return Found::AddSlash(location);
            }
        }
        Found::File { file, meta, name: index.as_bytes().to_vec() }
    }

    /// Whether one segment of a request path may name a file.
    fn segment_allowed(&self, segment: &[u8]) -> bool {
        let drive = segment.len() >= 2 && segment[0].is_ascii_alphabetic() && segment[1] == b':';
        !segment.is_empty()
            && segment != b"."
            && segment != b".."
            && !drive
            && (self.serve_hidden || segment[0] != b'.')
            && !segment.iter().any(|&b| b == b'\\' || b.is_ascii_control())
    }

    /// Opens `path` (under the root, unless links out are allowed) for reading, and reads its
    /// metadata; what to answer instead when that fails.
    fn open(&self, path: &Path) -> Result<(File, Metadata), Miss> {
        let target = if self.follow_symlinks_out_of_root {
            path.to_path_buf()
        } else {
            match path.canonicalize() {
                Ok(resolved) if resolved.starts_with(&self.root) => resolved,
                Ok(_) => return Err(Miss::NotHere),
                Err(e) => return Err(refused(e, path)),
            }
        };
        // Non-blocking, so that a FIFO put there does not hang the open; reading a regular file
        // ignores the flag.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&target)
            .map_err(|e| refused(e, path))?;
        let meta = file.metadata().map_err(|e| refused(e, path))?;
        Ok((file, meta))
    }

    /// The `Content-Type` of a file named `name`.
    fn content_type_of(&self, name: &[u8]) -> &str {
        // As `Path::extension`: a name's leading dot does not start an extension.
        let extension = match name.iter().rposition(|&b| b == b'.') {
            Some(dot) if dot > 0 => &name[dot + 1..],
            _ => return DEFAULT_TYPE,
        };
        let Ok(extension) = std::str::from_utf8(extension) else { return DEFAULT_TYPE };
        let extension = extension.to_ascii_lowercase();
        match self.content_types.get(&extension) {
            Some(mime) => mime,
            None => builtin_type(&extension).unwrap_or(DEFAULT_TYPE),
        }
    }

    /// Answers a `GET` or `HEAD` for a file.
    fn serve(
        &self,
        env: &Environ<'_>,
        start_response: StartResponse<'_>,
        file: File,
        meta: &Metadata,
        name: &[u8],
    ) -> Result<Response, BoxError> {
        let len = meta.len();
        let validators = Validators::of(meta, SystemTime::now());
        let mut headers: Vec<(&str, String)> = Vec::with_capacity(7);
        headers.push(("ETag", validators.etag.clone()));
        if let Some(secs) = validators.last_modified {
            headers.push(("Last-Modified", date::http_date(secs)));
        }
        if let Some(max_age) = self.max_age {
            headers.push(("Cache-Control", format!("max-age={}", max_age.as_secs())));
        }

        // RFC 9110 §13.2.2, steps 1 to 4.
        let failed = match env.header("If-Match") {
            Some(value) => !etag_matches(value, &validators.etag, Comparison::Strong),
            None => env
                .header("If-Unmodified-Since")
                .and_then(date::parse_http_date)
                .zip(validators.last_modified)
                .is_some_and(|(since, modified)| modified as i64 > since),
        };
        if failed {
            return plain(start_response, "412 Precondition Failed", Vec::new(), "precondition failed\n");
        }
        let not_modified = match env.header("If-None-Match") {
            Some(value) => etag_matches(value, &validators.etag, Comparison::Weak),
            None => env
                .header("If-Modified-Since")
                .and_then(date::parse_http_date)
                .zip(validators.last_modified)
                .is_some_and(|(since, modified)| modified as i64 <= since),
        };
        if not_modified {
            return Ok(start_response.start("304 Not Modified", headers)?.body(Body::empty()));
        }

        headers.push(("Content-Type", self.content_type_of(name).to_owned()));
        headers.push(("Accept-Ranges", "bytes".to_owned()));
        // Step 5: a range, for GET alone, while If-Range holds.
        let range = match env.header("Range") {
            Some(range) if env.method() == "GET" && if_range_holds(env.header("If-Range"), &validators) => {
                parse_range(range, len)
            }
            _ => RangeRequest::Ignored,
        };
        match range {
            RangeRequest::Ignored => Ok(start_response.start("200 OK", headers)?.body(Body::from_file(file)?)),
            RangeRequest::Bytes { first, last } => {
                headers.push(("Content-Range", format!("bytes {first}-{last}/{len}")));
                let body = Body::from_file_range(file, first, last - first + 1)?;
                Ok(start_response.start("206 Partial Content", headers)?.body(body))
            }
            RangeRequest::Unsatisfiable => {
                let headers = vec![("Content-Range", format!("bytes */{len}"))];
                plain(start_response, "416 Range Not Satisfiable", headers, "range not satisfiable\n")
            }
        }
    }
}

impl Handler for StaticFiles {
    fn call(&self, environ: &mut Environ<'_>, start_response: StartResponse<'_>) -> Result<Response, BoxError> {
        let found = match self.resolve(environ) {
            Found::NotHere => return self.fallback.call(environ, start_response),
            Found::Failed(e) => return Err(e.into()),
            found => found,
        };
        if !matches!(environ.method(), "GET" | "HEAD") {
            let allow = vec![("Allow", "GET, HEAD".to_owned())];
            return plain(start_response, "405 Method Not Allowed", allow, "method not allowed\n");
        }
        match found {
            Found::File { file, meta, name } => self.serve(environ, start_response, file, &meta, &name),
            Found::AddSlash(location) => {
                Ok(start_response.start("301 Moved Permanently", [("Location", location)])?.body(Body::empty()))
            }
            Found::Forbidden => plain(start_response, "403 Forbidden", Vec::new(), "forbidden\n"),
            Found::NotHere | Found::Failed(_) => unreachable!("answered above"),
        }
    }
}

/// What a request names.
enum Found {
    /// Nothing this handler serves: the fallback's.
    NotHere,
    /// A file (or a directory's index) that may not be read.
    Forbidden,
    /// A directory asked for without its trailing slash: the `Location` that adds it.
    AddSlash(String),
    /// A regular file, open; `name` gives its type.
    File { file: File, meta: Metadata, name: Vec<u8> },
    /// An I/O error other than a missing file or a refusal.
    Failed(io::Error),
}

/// Why a file could not be opened.
enum Miss {
    NotHere,
    Forbidden,
    Failed(io::Error),
}

impl From<Miss> for Found {
    fn from(miss: Miss) -> Found {
        match miss {
            Miss::NotHere => Found::NotHere,
            Miss::Forbidden => Found::Forbidden,
            Miss::Failed(e) => Found::Failed(e),
        }
    }
}

/// What an error looking up `path` means for the request.
fn refused(error: io::Error, path: &Path) -> Miss {
    match error.kind() {
        io::ErrorKind::NotFound => Miss::NotHere,
        io::ErrorKind::PermissionDenied => Miss::Forbidden,
        // A file where a directory was expected, a link loop, a name too long: no such file.
        _ if matches!(error.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG)) => Miss::NotHere,
        kind => Miss::Failed(io::Error::new(kind, format!("{}: {error}", path.display()))),
    }
}

/// A plain-text answer of the handler's own.
fn plain(
    start_response: StartResponse<'_>,
    status: &str,
    mut headers: Vec<(&str, String)>,
    text: &'static str,
) -> Result<Response, BoxError> {
    headers.push(("Content-Type", "text/plain; charset=utf-8".to_owned()));
    Ok(start_response.start(status, headers)?.body(text))
}

/// The part of `path` below `prefix` (`""`, or starting with `/`), if `path` is under it.
fn below_prefix<'p>(path: &'p [u8], prefix: &[u8]) -> Option<&'p [u8]> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with(b"/")).then_some(rest)
}

/// Whether the path of a request target holds an encoded `/`, `\` or NUL, which decoding turned
/// into bytes that cannot be told from the real ones.
fn has_encoded_separator(raw_uri: &[u8]) -> bool {
    let path = raw_uri.split(|&b| b == b'?' || b == b'#').next().unwrap_or(raw_uri);
    path.windows(3).any(|w| {
        w[0] == b'%' && matches!([w[1], w[2].to_ascii_lowercase()], [b'2', b'f'] | [b'5', b'c'] | [b'0', b'0'])
    })
}

/// The segments of a path below the prefix (`""`, or starting with `/`), and whether it ends
/// with a slash; `None` when it does not start with one. `""` is the root without its slash,
/// `/` the root with it.
fn split_path(rest: &[u8]) -> Option<(Vec<&[u8]>, bool)> {
    if rest.is_empty() {
        return Some((Vec::new(), false));
    }
    let inner = rest.strip_prefix(b"/")?;
    if inner.is_empty() {
        return Some((Vec::new(), true));
    }
    let (inner, trailing_slash) = match inner.strip_suffix(b"/") {
        Some(inner) => (inner, true),
        None => (inner, false),
    };
    // An empty segment (`//`) stays, for `segment_allowed` to refuse.
    Some((inner.split(|&b| b == b'/').collect(), trailing_slash))
}

/// The `Location` that adds a slash to the request's path: its last segment, encoded, with `/`
/// and the query; relative, so that it holds under any mount. `None` when the path has no last
/// segment to name.
fn add_slash(env: &Environ<'_>) -> Option<String> {
    let path = match env.path_info() {
        b"" => env.get_bytes("SCRIPT_NAME").unwrap_or(b""),
        path => path,
    };
    let last = path.rsplit(|&b| b == b'/').next().filter(|s| !s.is_empty())?;
    let mut location = String::with_capacity(last.len() + 2);
    for &b in last {
        // pchar but `:`, which would make the reference's first segment a scheme.
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=@".contains(&b) {
            location.push(char::from(b));
        } else {
            location.push_str(&format!("%{b:02X}"));
        }
    }
    location.push('/');
    let query = env.query_string();
    if !query.is_empty() {
        location.push('?');
        location.push_str(&String::from_utf8_lossy(query));
    }
    Some(location)
}

/// A file's validators.
struct Validators {
    /// Strong: `"<mtime ns>-<size>"` in hex.
    etag: String,
    /// The modification time in seconds since the epoch, no later than now; `None` before 1970.
    last_modified: Option<u64>,
    /// Whether `last_modified` is a strong validator: at least a second before now (RFC 9110
    /// §8.8.2.2), so that a change within its second cannot go unseen.
    strong_date: bool,
}

impl Validators {
    fn of(meta: &Metadata, now: SystemTime) -> Validators {
        let modified = meta.modified().ok().and_then(|m| m.duration_since(UNIX_EPOCH).ok());
        let nanos = modified.map_or(0, |m| m.as_nanos());
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let last_modified = modified.map(|m| m.as_secs().min(now));
        Validators {
            etag: format!("\"{nanos:x}-{:x}\"", meta.len()),
            last_modified,
            strong_date: last_modified.is_some_and(|m| m < now),
        }
    }
}

/// How two entity-tags are compared (RFC 9110 §8.8.3.2).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Comparison {
    /// Both strong and equal (`If-Match`, `If-Range`).
    Strong,
    /// Equal once `W/` is set aside (`If-None-Match`).
    Weak,
}

/// Whether an `If-Match` or `If-None-Match` value (`*` or a list of entity-tags) matches `etag`,
/// a strong entity-tag. A malformed list matches nothing from where it goes wrong.
fn etag_matches(value: &[u8], etag: &str, comparison: Comparison) -> bool {
    let ours = &etag.as_bytes()[1..etag.len() - 1];
    let value = trim_ows(value);
    if value == b"*" {
        return true;
    }
    let mut rest = value;
    loop {
        rest = &rest[rest.iter().position(|&b| !matches!(b, b' ' | b'\t' | b',')).unwrap_or(rest.len())..];
        if rest.is_empty() {
            return false;
        }
        let (weak, tag) = match rest.strip_prefix(b"W/") {
            Some(tag) => (true, tag),
            None => (false, rest),
        };
        let Some(tag) = tag.strip_prefix(b"\"") else { return false };
        let Some(end) = tag.iter().position(|&b| b == b'"') else { return false };
        if &tag[..end] == ours && (comparison == Comparison::Weak || !weak) {
            return true;
        }
        rest = trim_ows(&tag[end + 1..]);
        if !(rest.is_empty() || rest.starts_with(b",")) {
            return false;
        }
    }
}

/// Whether a `Range` may be honoured under `If-Range` (RFC 9110 §13.1.5): always without one;
/// with one, while its entity-tag is the file's (strongly) or its date is the file's strong
/// `Last-Modified`.
fn if_range_holds(if_range: Option<&[u8]>, validators: &Validators) -> bool {
    let Some(value) = if_range.map(trim_ows) else { return true };
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        return value == validators.etag.as_bytes();
    }
    match (date::parse_http_date(value), validators.last_modified) {
        (Some(date), Some(modified)) => validators.strong_date && date == modified as i64,
        _ => false,
    }
}

/// What a `Range` header asks of a file.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// Send the whole file: no single byte range was asked for.
    Ignored,
    /// Bytes `first..=last`, within the file.
    Bytes { first: u64, last: u64 },
    /// A range starting past the end.
    Unsatisfiable,
}

/// Reads a `Range` value for a file of `len` bytes: a single `bytes` range, or
/// [`RangeRequest::Ignored`] for several, for another unit and for anything malformed.
fn parse_range(value: &[u8], len: u64) -> RangeRequest {
    let value = trim_ows(value);
    let Some(eq) = value.iter().position(|&b| b == b'=') else { return RangeRequest::Ignored };
    if !value[..eq].eq_ignore_ascii_case(b"bytes") {
        return RangeRequest::Ignored;
    }
    let mut specs = value[eq + 1..].split(|&b| b == b',').map(trim_ows).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else { return RangeRequest::Ignored };
    let Some(dash) = spec.iter().position(|&b| b == b'-') else { return RangeRequest::Ignored };
    let (first, last) = (&spec[..dash], &spec[dash + 1..]);
    if first.is_empty() {
        // The last `n` bytes.
        let Some(n) = position(last) else { return RangeRequest::Ignored };
        if n == 0 || len == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Bytes { first: len - n.min(len), last: len - 1 };
    }
    let Some(first) = position(first) else { return RangeRequest::Ignored };
    let last = if last.is_empty() {
        u64::MAX
    } else {
        match position(last) {
            Some(last) if last >= first => last,
            _ => return RangeRequest::Ignored,
        }
    };
    if first >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Bytes { first, last: last.min(len - 1) }
}

/// `1*DIGIT` as a byte position; one too large for a `u64` is past any file's end.
fn position(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |i| i + 1);
    &v[start..end]
}

const DEFAULT_TYPE: &str = "application/octet-stream";

/// The built-in `Content-Type` of a lowercase extension.
fn builtin_type(extension: &str) -> Option<&'static str> {
    Some(match extension {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "md" | "markdown" => "text/markdown; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "xml" => "application/xml",
        "rss" => "application/rss+xml",
        "atom" => "application/atom+xml",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "apng" => "image/apng",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "bmp" => "image/bmp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "ogv" => "video/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::environ::{Input, RunnerFlags, Vars};
    use crate::http::encode::ResponseHead;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A directory of its own under the system's temporary directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("sgi-static-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    type Answer = (u16, Vec<(String, String)>, Vec<u8>);

    /// Calls `files` as the server would for `method path_info` (target `raw_uri`, query after
    /// its `?`): the status, the headers (`Content-Length` last, as the server would send it)
    /// and the body, pulled whole.
    fn call(files: &StaticFiles, method: &str, path_info: &str, raw_uri: &str, headers: &[(&str, &str)]) -> Answer {
        let config = Config::default();
        let mut env = Environ::new(Vars::default(), Input::new(None), &config, RunnerFlags::default());
        env.insert("REQUEST_METHOD", method);
        env.insert("SCRIPT_NAME", "");
        env.insert("PATH_INFO", path_info);
        env.insert("QUERY_STRING", raw_uri.split_once('?').map_or("", |(_, q)| q));
        env.insert("RAW_URI", raw_uri);
        for (name, value) in headers {
            env.insert(&format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_")), value);
        }
        let mut storage = ResponseHead::default();
        let mut response = files.call(&mut env, StartResponse::new(&mut storage)).expect("an answer");
        let mut fields = response.head.fields();
        if let Some(len) = response.head.content_length.or(response.body.len()) {
            if response.status() != 304 {
                fields.push(("Content-Length".to_owned(), len.to_string()));
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.body.next_chunk().unwrap() {
            body.extend_from_slice(&chunk);
        }
        (response.status(), fields, body)
    }

    fn get(files: &StaticFiles, path: &str) -> Answer {
        call(files, "GET", path, path, &[])
    }

    fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
        answer.1.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A fallback that says it was called, and with which path.
    fn app() -> impl Handler {
        crate::handler::handler_fn(|env, start_response| {
            let path = String::from_utf8_lossy(env.path_info()).into_owned();
            Ok(start_response.start("200 OK", [("X-App", path)])?.body("app"))
        })
    }

    fn site() -> (TempDir, StaticFiles) {
        let dir = TempDir::new();
        dir.write("hello.txt", b"Hello, World!");
        dir.write("style.CSS", b"body {}");
        dir.write("docs/index.html", b"<h1>docs</h1>");
        dir.write("index.html", b"<h1>home</h1>");
        let files = StaticFiles::new(&dir.0).unwrap();
        (dir, files)
    }

    #[test]
    fn serves_a_file_with_its_type_length_and_validators() {
        let (_dir, files) = site();
        let answer = get(&files, "/hello.txt");
        assert_eq!(answer.0, 200);
        assert_eq!(answer.2, b"Hello, World!");
        assert_eq!(header(&answer, "Content-Type"), Some("text/plain; charset=utf-8"));
        assert_eq!(header(&answer, "Content-Length"), Some("13"));
        assert_eq!(header(&answer, "Accept-Ranges"), Some("bytes"));
        assert_eq!(header(&answer, "Cache-Control"), None);
        let etag = header(&answer, "ETag").unwrap();
        assert!(etag.starts_with('"') && etag.ends_with("-d\""), "{etag}");
        let last_modified = header(&answer, "Last-Modified").unwrap();
        assert!(date::parse_http_date(last_modified.as_bytes()).is_some(), "{last_modified}");
    }

    #[test]
    fn content_types_come_from_the_extension() {
        let dir = TempDir::new();
        let names = [
            ("a.html", "text/html; charset=utf-8"),
            ("a.JS", "text/javascript; charset=utf-8"),
            ("a.mjs", "text/javascript; charset=utf-8"),
            ("a.json", "application/json"),
            ("a.svg", "image/svg+xml"),
            ("a.woff2", "font/woff2"),
            ("a.wasm", "application/wasm"),
            ("a.tar.gz", "application/gzip"),
            ("a.unknown", DEFAULT_TYPE),
            ("noextension", DEFAULT_TYPE),
            ("a.glb", "model/gltf-binary"),
            ("a.txt", "text/x-custom"),
            ("a.", DEFAULT_TYPE),
        ];
        for (name, _) in names {
            dir.write(name, b"x");
        }
        let files = StaticFiles::new(&dir.0)
            .unwrap()
            .content_type(".GLB", "model/gltf-binary")
            .content_type("txt", "text/x-custom");
        for (name, mime) in names {
            let answer = get(&files, &format!("/{name}"));
            assert_eq!((answer.0, header(&answer, "Content-Type")), (200, Some(mime)), "{name}");
        }
        assert_eq!(files.content_type_of(b".hidden"), DEFAULT_TYPE);
    }

    #[test]
    fn traversal_and_unusual_paths_are_not_served() {
        let outer = TempDir::new();
        outer.write("secret.txt", b"secret");
        let dir = TempDir::new();
        dir.write("public/a.txt", b"a");
        dir.write(".env", b"KEY=1");
        dir.write(".git/config", b"[core]");
        let root = dir.0.join("public");
        let files = StaticFiles::new(&root).unwrap();
        let secret = format!("/../../{}/secret.txt", outer.0.file_name().unwrap().to_str().unwrap());
        assert_eq!(get(&files, "/a.txt").0, 200);
        let attempts: [(&str, &str); 17] = [
            (&secret, &secret),
            ("/../.env", "/../.env"),
            ("/../.env", "/%2e%2e/.env"),
            ("/./a.txt", "/./a.txt"),
            ("/x/../a.txt", "/x/%2E%2E/a.txt"),
            ("/../public/a.txt", "/..%2Fpublic%2fa.txt"),
            ("/a.txt", "/%61%2ftxt"),
            ("//a.txt", "//a.txt"),
            ("/\\a.txt", "/%5Ca.txt"),
            ("/..\\.env", "/..%5c.env"),
            ("/a.txt\0", "/a.txt%00"),
            ("/a.txt\0.png", "/a.txt%00.png"),
            ("/C:/a.txt", "/C:/a.txt"),
            ("/a.txt/", "/a.txt/"),
            ("/missing.txt", "/missing.txt"),
            ("a.txt", "a.txt"),
            ("*", "*"),
        ];
        for (path_info, raw_uri) in attempts {
            let answer = call(&files, "GET", path_info, raw_uri, &[]);
            assert_eq!((answer.0, answer.2.as_slice()), (404, &b"not found\n"[..]), "{path_info:?} {raw_uri:?}");
        }
        // Encoded slashes in the query are the query's business.
        assert_eq!(call(&files, "GET", "/a.txt", "/a.txt?next=%2Fhome", &[]).0, 200);

        // Hidden files only when asked for, and `..` never.
        let files = StaticFiles::new(&dir.0).unwrap();
        assert_eq!(get(&files, "/.env").0, 404);
        assert_eq!(get(&files, "/.git/config").0, 404);
        assert_eq!(get(&files, "/public/.").0, 404);
        let files = files.serve_hidden(true);
        assert_eq!(get(&files, "/.env").2, b"KEY=1");
        assert_eq!(get(&files, "/.git/config").2, b"[core]");
        assert_eq!(get(&files, "/public/../.env").0, 404);
        assert_eq!(get(&files, "/public/./a.txt").0, 404);
        assert_eq!(get(&files, "/.").0, 404);
    }

    #[test]
    fn symlinks_out_of_the_root_are_followed_only_when_allowed() {
        let outer = TempDir::new();
        outer.write("secret.txt", b"secret");
        outer.write("lib/x.js", b"x");
        let dir = TempDir::new();
        dir.write("real.txt", b"real");
        std::os::unix::fs::symlink(outer.0.join("secret.txt"), dir.0.join("out.txt")).unwrap();
        std::os::unix::fs::symlink(outer.0.join("lib"), dir.0.join("vendor")).unwrap();
        std::os::unix::fs::symlink(dir.0.join("real.txt"), dir.0.join("in.txt")).unwrap();
        std::os::unix::fs::symlink("loop", dir.0.join("loop")).unwrap();

        let files = StaticFiles::new(&dir.0).unwrap();
        assert_eq!(get(&files, "/out.txt").0, 404);
        assert_eq!(get(&files, "/vendor/x.js").0, 404);
        assert_eq!(get(&files, "/in.txt").2, b"real");
        assert_eq!(get(&files, "/loop").0, 404);

        let files = files.follow_symlinks_out_of_root(true);
        assert_eq!(get(&files, "/out.txt").2, b"secret");
        assert_eq!(get(&files, "/vendor/x.js").2, b"x");
        assert_eq!(get(&files, "/in.txt").2, b"real");
        assert_eq!(get(&files, "/loop").0, 404);

        // The root itself may be a link: it is resolved once.
        let link = outer.0.join("root-link");
        std::os::unix::fs::symlink(&dir.0, &link).unwrap();
        let files = StaticFiles::new(&link).unwrap();
        assert_eq!(files.root(), dir.0.canonicalize().unwrap());
        assert_eq!(get(&files, "/in.txt").2, b"real");
        assert_eq!(get(&files, "/out.txt").0, 404);
    }

    #[test]
    fn the_root_must_be_a_directory() {
        let dir = TempDir::new();
        let file = dir.write("f", b"");
        assert_eq!(StaticFiles::new(&file).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(StaticFiles::new(dir.0.join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn not_modified_by_entity_tag_or_date() {
        let (_dir, files) = site();
        let files = files.max_age(Some(Duration::from_secs(600)));
        let full = get(&files, "/hello.txt");
        let etag = header(&full, "ETag").unwrap().to_owned();
        let last_modified = header(&full, "Last-Modified").unwrap().to_owned();
        assert_eq!(header(&full, "Cache-Control"), Some("max-age=600"));
        let weak = format!("W/{etag}");
        let listed = format!("\"other\", {etag}");
        let with_comma = format!("\"a,b\",{etag}");
        for value in [etag.as_str(), &weak, &listed, &with_comma, "*", " * "] {
            for method in ["GET", "HEAD"] {
                let answer = call(&files, method, "/hello.txt", "/hello.txt", &[("If-None-Match", value)]);
                assert_eq!(answer.0, 304, "{method} {value}");
                assert!(answer.2.is_empty());
                assert_eq!(header(&answer, "ETag"), Some(etag.as_str()));
                assert_eq!(header(&answer, "Last-Modified"), Some(last_modified.as_str()));
                assert_eq!(header(&answer, "Cache-Control"), Some("max-age=600"));
                assert_eq!(header(&answer, "Content-Type"), None);
            }
        }
        for value in ["\"other\"", "W/\"other\"", "garbage", &etag[1..], "\"other\" junk, *"] {
            let answer = call(&files, "GET", "/hello.txt", "/hello.txt", &[("If-None-Match", value)]);
            assert_eq!(answer.0, 200, "{value}");
        }

        let ims = |date: &str, extra: Option<(&str, &str)>| {
            let mut headers = vec![("If-Modified-Since", date)];
            headers.extend(extra);
            call(&files, "GET", "/hello.txt", "/hello.txt", &headers).0
        };
        assert_eq!(ims(&last_modified, None), 304);
        assert_eq!(ims(&date::http_date(u64::MAX >> 30), None), 304);
        assert_eq!(ims("Thu, 01 Jan 1970 00:00:00 GMT", None), 200);
        assert_eq!(ims("not a date", None), 200);
        assert_eq!(ims(&format!("{last_modified}, {last_modified}"), None), 200);
        // If-None-Match wins over If-Modified-Since, both ways.
        assert_eq!(ims(&last_modified, Some(("If-None-Match", "\"other\""))), 200);
        assert_eq!(ims("Thu, 01 Jan 1970 00:00:00 GMT", Some(("If-None-Match", &etag))), 304);
    }

    #[test]
    fn failed_preconditions_are_412() {
        let (_dir, files) = site();
        let full = get(&files, "/hello.txt");
        let etag = header(&full, "ETag").unwrap().to_owned();
        let last_modified = header(&full, "Last-Modified").unwrap().to_owned();
        let weak = format!("W/{etag}");
        let status = |headers: &[(&str, &str)]| call(&files, "GET", "/hello.txt", "/hello.txt", headers).0;
        assert_eq!(status(&[("If-Match", &etag)]), 200);
        assert_eq!(status(&[("If-Match", "*")]), 200);
        assert_eq!(status(&[("If-Match", &weak)]), 412);
        assert_eq!(status(&[("If-Match", "\"other\"")]), 412);
        assert_eq!(status(&[("If-Unmodified-Since", &last_modified)]), 200);
        assert_eq!(status(&[("If-Unmodified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")]), 412);
        assert_eq!(status(&[("If-Unmodified-Since", "garbage")]), 200);
        // If-Match wins over If-Unmodified-Since.
        assert_eq!(status(&[("If-Match", &etag), ("If-Unmodified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")]), 200);
    }

    #[test]
    fn ranges() {
        let dir = TempDir::new();
        let contents: Vec<u8> = (0..100u8).collect();
        dir.write("data.bin", &contents);
        dir.write("empty.bin", b"");
        let files = StaticFiles::new(&dir.0).unwrap();
        let range = |value: &str| call(&files, "GET", "/data.bin", "/data.bin", &[("Range", value)]);
        for (value, first, last) in [
            ("bytes=10-19", 10, 19),
            ("bytes=90-", 90, 99),
            ("bytes=-5", 95, 99),
            ("bytes=-500", 0, 99),
            ("bytes=0-0", 0, 0),
            ("bytes=95-1000", 95, 99),
            ("BYTES=0-99999999999999999999999", 0, 99),
            (" bytes= 3-4 ,", 3, 4),
        ] {
            let answer = range(value);
            assert_eq!(answer.0, 206, "{value}");
            assert_eq!(answer.2, &contents[first..=last], "{value}");
            assert_eq!(header(&answer, "Content-Range"), Some(format!("bytes {first}-{last}/100").as_str()));
            assert_eq!(header(&answer, "Content-Length"), Some((last - first + 1).to_string().as_str()));
            assert_eq!(header(&answer, "Content-Type"), Some(DEFAULT_TYPE));
            assert!(header(&answer, "ETag").is_some());
        }
        for value in ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=99999999999999999999999-"] {
            let answer = range(value);
            assert_eq!(answer.0, 416, "{value}");
            assert_eq!(header(&answer, "Content-Range"), Some("bytes */100"));
        }
        // Several ranges, malformed ones, other units: the whole file.
        for value in [
            "bytes=0-1,5-6",
            "bytes=0-1, 200-300",
            "bytes=5-1",
            "bytes=x-",
            "bytes=-",
            "bytes=",
            "lines=1-2",
            "bytes 1-2",
            "bytes=1-2-3",
        ] {
            let answer = range(value);
            assert_eq!((answer.0, answer.2.len()), (200, 100), "{value}");
        }
        let answer = call(&files, "GET", "/empty.bin", "/empty.bin", &[("Range", "bytes=0-")]);
        assert_eq!((answer.0, header(&answer, "Content-Range")), (416, Some("bytes */0")));
        // A HEAD gets the GET's head without a range (RFC 9110 defines ranges for GET alone).
        let answer = call(&files, "HEAD", "/data.bin", "/data.bin", &[("Range", "bytes=0-9")]);
        assert_eq!((answer.0, header(&answer, "Content-Length")), (200, Some("100")));
    }

    #[test]
    fn if_range_keeps_the_range_only_while_it_holds() {
        let dir = TempDir::new();
        let path = dir.write("data.bin", &[7; 50]);
        // Old enough for its Last-Modified to be a strong validator.
        let old = SystemTime::now() - Duration::from_secs(60);
        File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
        let files = StaticFiles::new(&dir.0).unwrap();
        let full = get(&files, "/data.bin");
        let etag = header(&full, "ETag").unwrap().to_owned();
        let last_modified = header(&full, "Last-Modified").unwrap().to_owned();
        let weak = format!("W/{etag}");
        let status = |if_range: &str| {
            call(&files, "GET", "/data.bin", "/data.bin", &[("Range", "bytes=0-9"), ("If-Range", if_range)]).0
        };
        assert_eq!(status(&etag), 206);
        assert_eq!(status(&last_modified), 206);
        assert_eq!(status(&weak), 200);
        assert_eq!(status("\"other\""), 200);
        assert_eq!(status("Thu, 01 Jan 1970 00:00:00 GMT"), 200);
        assert_eq!(status("garbage"), 200);

        // A file modified this very second has no strong date.
        let fresh = Validators::of(&std::fs::metadata(&path).unwrap(), old);
        assert!(!fresh.strong_date);
        assert!(!if_range_holds(Some(date::http_date(fresh.last_modified.unwrap()).as_bytes()), &fresh));
        assert!(if_range_holds(Some(fresh.etag.as_bytes()), &fresh));
        assert!(if_range_holds(None, &fresh));
    }

    #[test]
    fn head_has_the_get_head_and_no_body_to_send() {
        let (_dir, files) = site();
        let answer = call(&files, "HEAD", "/hello.txt", "/hello.txt", &[]);
        assert_eq!(answer.0, 200);
        assert_eq!(header(&answer, "Content-Length"), Some("13"));
        let mut get_headers = get(&files, "/hello.txt").1;
        let mut head_headers = answer.1;
        get_headers.sort();
        head_headers.sort();
        assert_eq!(get_headers, head_headers);
        // The body is the file, for its length: the server sends none for a HEAD.
    }

    #[test]
    fn other_methods_are_405_for_files_and_the_fallbacks_elsewhere() {
        let (_dir, files) = site();
        let files = files.fallback(app());
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "get"] {
            for path in ["/hello.txt", "/docs", "/docs/"] {
                let answer = call(&files, method, path, path, &[]);
                assert_eq!(answer.0, 405, "{method} {path}");
                assert_eq!(header(&answer, "Allow"), Some("GET, HEAD"));
            }
            let answer = call(&files, method, "/api/items", "/api/items", &[]);
            assert_eq!((answer.0, header(&answer, "X-App")), (200, Some("/api/items")), "{method}");
        }
    }

    #[test]
    fn a_prefix_mounts_the_files_and_leaves_the_rest_to_the_fallback() {
        let (_dir, files) = site();
        let files = files.prefix("static/").fallback(app());
        assert_eq!(get(&files, "/static/hello.txt").2, b"Hello, World!");
        assert_eq!(get(&files, "/static/docs/").2, b"<h1>docs</h1>");
        assert_eq!(get(&files, "/static/").2, b"<h1>home</h1>");
        let answer = get(&files, "/static");
        assert_eq!((answer.0, header(&answer, "Location")), (301, Some("static/")));
        for path in
            ["/hello.txt", "/staticky/hello.txt", "/", "", "/static/missing.txt", "/static/../x", "/Static/hello.txt"]
        {
            let answer = get(&files, path);
            assert_eq!((answer.0, header(&answer, "X-App")), (200, Some(path)), "{path}");
        }
        // "" and "/" are no prefix.
        let (dir, _) = site();
        for prefix in ["", "/", "//"] {
            let files = StaticFiles::new(&dir.0).unwrap().prefix(prefix);
            assert_eq!(get(&files, "/hello.txt").0, 200, "{prefix:?}");
        }
    }

    #[test]
    fn directories_are_served_by_their_index_and_redirected_to_their_slash() {
        let (dir, files) = site();
        dir.write("bare/a.txt", b"a");
        dir.write("odd dir:x?/index.html", b"odd");
        assert_eq!(get(&files, "/").2, b"<h1>home</h1>");
        let answer = get(&files, "/docs/");
        assert_eq!(answer.2, b"<h1>docs</h1>");
        assert_eq!(header(&answer, "Content-Type"), Some("text/html; charset=utf-8"));
        let answer = call(&files, "GET", "/docs", "/docs?lang=en&x=%2F", &[]);
        assert_eq!(answer.0, 301);
        assert_eq!(header(&answer, "Location"), Some("docs/?lang=en&x=%2F"));
        assert!(answer.2.is_empty());
        assert_eq!(call(&files, "HEAD", "/docs", "/docs", &[]).0, 301);
        let answer = call(&files, "GET", "/odd dir:x?", "/odd%20dir:x%3F", &[]);
        assert_eq!(header(&answer, "Location"), Some("odd%20dir%3Ax%3F/"));
        assert_eq!(call(&files, "GET", "/odd dir:x?/", "/odd%20dir:x%3F/", &[]).2, b"odd");
        // A directory without its index is nobody's here.
        assert_eq!(get(&files, "/bare").0, 404);
        assert_eq!(get(&files, "/bare/").0, 404);
        // The root, mounted below SCRIPT_NAME, with an empty PATH_INFO.
        let answer = get(&files, "");
        assert_eq!(answer.2, b"<h1>home</h1>");

        let files = StaticFiles::new(&dir.0).unwrap().index_file(Some("a.txt"));
        assert_eq!(get(&files, "/bare/").2, b"a");
        assert_eq!(get(&files, "/docs/").0, 404);
        let files = StaticFiles::new(&dir.0).unwrap().index_file(None);
        assert_eq!(get(&files, "/docs/").0, 404);
        assert_eq!(get(&files, "/docs").0, 404);
        assert_eq!(get(&files, "/docs/index.html").0, 200);
    }

    #[test]
    #[should_panic(expected = "not a file name")]
    fn an_index_file_is_a_name() {
        let _ = StaticFiles::new(std::env::temp_dir()).unwrap().index_file(Some("a/b.html"));
    }

    #[test]
    #[should_panic(expected = "not a header value")]
    fn a_content_type_is_a_header_value() {
        let _ = StaticFiles::new(std::env::temp_dir()).unwrap().content_type("x", "text/plain\r\nX-Evil: 1");
    }

    #[test]
    fn unreadable_files_are_403_missing_ones_404_and_other_errors_fail() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, files) = site();
        let path = dir.write("locked.txt", b"locked");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        // Only without the privilege to read it anyway (tests may run as root).
        if File::open(&path).is_err() {
            assert_eq!(get(&files, "/locked.txt").0, 403);
        }
        assert_eq!(get(&files, "/gone.txt").0, 404);
        // A FIFO is not a file to serve, and does not hang the request.
        let fifo = dir.0.join("pipe");
        if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
            assert_eq!(get(&files, "/pipe").0, 404);
        }

        let path = Path::new("/x");
        assert!(matches!(refused(io::ErrorKind::NotFound.into(), path), Miss::NotHere));
        assert!(matches!(refused(io::Error::from_raw_os_error(libc::ENOTDIR), path), Miss::NotHere));
        assert!(matches!(refused(io::ErrorKind::PermissionDenied.into(), path), Miss::Forbidden));
        let Miss::Failed(e) = refused(io::Error::from_raw_os_error(libc::EIO), path) else { panic!("not an error") };
        assert!(e.to_string().starts_with("/x: "), "{e}");
    }

    #[test]
    fn range_values_are_read_as_rfc_9110_says() {
        use RangeRequest::*;
        assert_eq!(parse_range(b"bytes=0-", 10), Bytes { first: 0, last: 9 });
        assert_eq!(parse_range(b"bytes=9-9", 10), Bytes { first: 9, last: 9 });
        assert_eq!(parse_range(b"bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-1", 0), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=+1-2", 10), Ignored);
        assert_eq!(parse_range(b"bytes=1 -2", 10), Ignored);
        assert_eq!(parse_range(b"bytes=,,0-1,,", 10), Bytes { first: 0, last: 1 });
        assert_eq!(parse_range(b"bytes=,,", 10), Ignored);
    }
}
