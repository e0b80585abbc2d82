//! The application interface: [`Handler`], [`StartResponse`], [`Started`] and [`Response`].

use std::sync::Arc;

use crate::body::Body;
use crate::environ::Environ;
use crate::error::Error;
use crate::http::encode::ResponseHead;

/// The error type handlers return: anything that is an error. It becomes a `500` and is logged.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An application: what PEP 3333 calls the application callable.
///
/// It gets the request's [`Environ`] and a [`StartResponse`], and returns a [`Response`], which only
/// [`StartResponse::start`] can make: a handler that never starts a response does not compile.
/// The server then pulls the body and sends it; headers go out with the first non-empty chunk.
///
/// Plain functions and closures implement it (through [`handler_fn`] for closures, which gives
/// them their parameter types); so does `Arc<H>`, which makes `Arc<dyn Handler>` a handler. A handler that wraps another is how
/// middleware is written.
///
/// `Send + Sync` because a concurrent runner calls one handler from many threads at once. Keep
/// shared state in `Mutex`es or atomics:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use sgi::{BoxError, Environ, Handler, Response, StartResponse};
///
/// struct Counter(AtomicU64);
///
/// impl Handler for Counter {
///     fn call(&self, _env: &mut Environ<'_>, start_response: StartResponse<'_>) -> Result<Response, BoxError> {
///         let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
///         Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(format!("visit {n}\n")))
///     }
/// }
/// # let _ = Counter(AtomicU64::new(0));
/// ```
///
/// A `RefCell` (not `Sync`) does not compile:
///
/// ```compile_fail
/// use std::cell::RefCell;
/// let hits = RefCell::new(0);
/// sgi::Server::bind("127.0.0.1:0").unwrap().serve(sgi::handler_fn(move |_env, sr| {
///     *hits.borrow_mut() += 1;
///     Ok(sr.start("200 OK", [("X", "y")])?.body(""))
/// }));
/// ```
///
/// # Errors
/// An `Err` becomes a `500 Internal Server Error` (or, when the request body broke its framing,
/// that error's status), logged with the request line.
///
/// # Panics
/// A panic in `call`, or in the body while the server pulls it, is caught at the connection
/// boundary: the client gets a `500` if nothing was sent yet, otherwise the connection is closed;
/// the panic is logged and the server goes on serving. Catching is sound here because the
/// environ and the response of the panicking request are discarded, never observed again.
/// Under `panic = "abort"` nothing can be caught and the process ends.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    ///
    /// # Errors
    /// Any error the application returns; see the trait documentation.
    fn call(&self, environ: &mut Environ<'_>, start_response: StartResponse<'_>) -> Result<Response, BoxError>;
}

impl<F> Handler for F
where
    F: Fn(&mut Environ<'_>, StartResponse<'_>) -> Result<Response, BoxError> + Send + Sync + 'static,
{
    fn call(&self, environ: &mut Environ<'_>, start_response: StartResponse<'_>) -> Result<Response, BoxError> {
        self(environ, start_response)
    }
}

impl<H: Handler + ?Sized> Handler for Arc<H> {
    fn call(&self, environ: &mut Environ<'_>, start_response: StartResponse<'_>) -> Result<Response, BoxError> {
        (**self).call(environ, start_response)
    }
}

/// Turns a closure into a [`Handler`], giving its parameters their types (a bare closure passed
/// where `impl Handler` is expected cannot infer them).
///
/// ```
/// let app = sgi::handler_fn(|_env, start_response| {
///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("Hello, World!"))
/// });
/// # let _ = app;
/// ```
pub fn handler_fn<F>(f: F) -> F
where
    F: Fn(&mut Environ<'_>, StartResponse<'_>) -> Result<Response, BoxError> + Send + Sync + 'static,
{
    f
}

/// PEP 3333's `start_response`: consumed by [`StartResponse::start`], so it is called exactly once.
pub struct StartResponse<'r> {
    head: &'r mut ResponseHead,
}

impl std::fmt::Debug for StartResponse<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartResponse").finish_non_exhaustive()
    }
}

impl<'r> StartResponse<'r> {
    pub(crate) fn new(head: &'r mut ResponseHead) -> StartResponse<'r> {
        StartResponse { head }
    }

    /// Sets the status (`"NNN Reason"`, or `"NNN"` for the standard reason) and the headers.
    ///
    /// Nothing is sent yet: headers go out with the first non-empty body chunk, so until the
    /// handler returns they can still be replaced with [`Started::restart`] (PEP 3333's
    /// `exc_info` rule). The server adds `Date`, `Server` (unless the application set them) and
    /// the framing headers (`Content-Length` or `Transfer-Encoding`, and `Connection`).
    ///
    /// # Errors
    /// A [`StartError`] holding [`Error::InvalidStatus`] for a malformed status or a code outside
    /// 200..=999; [`Error::InvalidHeaderName`] for a name that is not a token;
    /// [`Error::InvalidHeaderValue`] for a value with CR, LF, NUL or another control character
    /// (no response splitting), or a malformed `Content-Length`; [`Error::HopByHopHeader`] for
    /// `Connection`, `Keep-Alive`, `Transfer-Encoding`, `TE`, `Trailer`, `Upgrade` and
    /// `Proxy-*`, which only the server sets. The `StartResponse` comes back inside it, so the
    /// handler can still answer otherwise; `?` turns it into the handler's error (a `500`).
    ///
    /// ```
    /// fn app(_: &mut sgi::Environ<'_>, start_response: sgi::StartResponse<'_>) -> Result<sgi::Response, sgi::BoxError> {
    ///     let started = start_response.start("404 Not Found", [("Content-Type", "text/plain")])?;
    ///     Ok(started.body("no such page\n"))
    /// }
    /// # fn takes(_: impl sgi::Handler) {}
    /// takes(app);
    /// ```
    ///
    /// Values of different types in one response ([`Headers`](crate::Headers); an array's
    /// values are all of one type):
    ///
    /// ```
    /// fn app(_: &mut sgi::Environ<'_>, start_response: sgi::StartResponse<'_>) -> Result<sgi::Response, sgi::BoxError> {
    ///     let location = format!("/items/{}", 7);
    ///     let headers = sgi::Headers::new().add("Location", location).add("Content-Type", "text/plain");
    ///     Ok(start_response.start("303 See Other", headers)?.body("see other\n"))
    /// }
    /// # fn takes(_: impl sgi::Handler) {}
    /// # takes(app);
    /// ```
    ///
    /// Recovering from a header the application got wrong:
    ///
    /// ```
    /// fn app(_: &mut sgi::Environ<'_>, start_response: sgi::StartResponse<'_>) -> Result<sgi::Response, sgi::BoxError> {
    ///     let echoed = "evil\r\nSet-Cookie: session=stolen";
    ///     match start_response.start("200 OK", [("X-Echo", echoed)]) {
    ///         Ok(started) => Ok(started.body("")),
    ///         Err(refused) => {
    ///             assert!(matches!(refused.error(), sgi::Error::InvalidHeaderValue));
    ///             let start_response = refused.into_start_response();
    ///             Ok(start_response.start("400 Bad Request", [("Content-Type", "text/plain")])?.body("bad input\n"))
    ///         }
    ///     }
    /// }
    /// # fn takes(_: impl sgi::Handler) {}
    /// takes(app);
    /// ```
    pub fn start<I, K, V>(self, status: &str, headers: I) -> Result<Started, StartError<'r>>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let mut head = std::mem::take(self.head);
        match fill(&mut head, status, headers) {
            Ok(()) => Ok(Started { head }),
            Err(error) => {
                // The buffer goes back with the StartResponse; the next `start` clears it.
                *self.head = head;
                Err(StartError { error, start_response: self })
            }
        }
    }
}

/// [`StartResponse::start`] refused a status or a header: the reason, and the `StartResponse`
/// back, to answer otherwise. `?` in a handler turns it into the handler's error.
pub struct StartError<'r> {
    error: Error,
    start_response: StartResponse<'r>,
}

impl<'r> StartError<'r> {
    /// Why the status or a header was refused.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The `StartResponse`, to start a different response.
    pub fn into_start_response(self) -> StartResponse<'r> {
        self.start_response
    }

    /// The reason alone.
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl std::fmt::Debug for StartError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartError").field("error", &self.error).finish_non_exhaustive()
    }
}

impl std::fmt::Display for StartError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.error, f)
    }
}

impl From<StartError<'_>> for Error {
    fn from(e: StartError<'_>) -> Error {
        e.error
    }
}

impl From<StartError<'_>> for BoxError {
    fn from(e: StartError<'_>) -> BoxError {
        Box::new(e.error)
    }
}

fn fill<I, K, V>(head: &mut ResponseHead, status: &str, headers: I) -> Result<(), Error>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    head.set_status(status)?;
    for (name, value) in headers {
        head.push_header(name.as_ref(), value.as_ref())?;
    }
    Ok(())
}

/// Proof that a response was started: the only way to make a [`Response`].
#[derive(Debug)]
pub struct Started {
    head: ResponseHead,
}

impl Started {
    /// Attaches the body and finishes the response.
    pub fn body(self, body: impl Into<Body>) -> Response {
        Response { head: self.head, body: body.into() }
    }

    /// Replaces status and headers, as PEP 3333 allows with `exc_info` while nothing was sent:
    /// a handler that fails after starting a response can still answer with an error page.
    ///
    /// # Errors
    /// As [`StartResponse::start`]; on error the previous status and headers are gone.
    pub fn restart<I, K, V>(mut self, status: &str, headers: I) -> Result<Started, Error>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        fill(&mut self.head, status, headers)?;
        Ok(self)
    }
}

/// A started response and its body, returned by a [`Handler`].
///
/// Only [`Started::body`] makes one, so a handler cannot answer without starting a response:
///
/// ```compile_fail
/// fn app(_: &mut sgi::Environ<'_>, _: sgi::StartResponse<'_>) -> Result<sgi::Response, sgi::BoxError> {
///     Ok(sgi::Response { head: Default::default(), body: "no start_response".into() })
/// }
/// ```
#[derive(Debug)]
pub struct Response {
    pub(crate) head: ResponseHead,
    pub(crate) body: Body,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// Adds a header, for middleware that decorates the responses of the handler it wraps.
    ///
    /// # Errors
    /// As [`StartResponse::start`].
    pub fn add_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        self.head.push_header(name, value.as_ref())
    }

    /// The body, for middleware that wraps or replaces it.
    pub fn body_mut(&mut self) -> &mut Body {
        &mut self.body
    }
}
