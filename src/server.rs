//! [`Server`]: binds a listener, takes a configuration, a runner and a handler, and serves.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::error::{BindError, Error, Result};
use crate::handler::{BoxError, Handler};
use crate::net::{Listener, Listeners};
use crate::runner::private::{App, ReadyHook, Serving, Upgrader, WorkerHooks};
use crate::runner::{Runner, ThreadPool};
use crate::shutdown::ShutdownHandle;

/// Default listen backlog: connections the kernel queues while every runner slot is busy.
pub const DEFAULT_BACKLOG: i32 = 1024;
/// Most listeners one server serves ([`Server::also_listen`]).
pub const MAX_LISTENERS: usize = 32;

/// A server: a bound listener, a [`Config`], a [`Runner`] and, given to [`Server::serve`], a
/// [`Handler`].
///
/// ```no_run
/// use sgi::{handler_fn, Server};
/// # fn main() -> Result<(), sgi::Error> {
/// let app = handler_fn(|_env, start_response| {
///     Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("Hello, World!\n"))
/// });
/// Server::bind("127.0.0.1:8000")?.serve(app)
/// # }
/// ```
pub struct Server {
    /// Served together; never empty.
    listeners: Vec<Listener>,
    /// Which of `listeners` expect a PROXY protocol header (missing entries: not).
    proxied: Vec<bool>,
    config: Config,
    runner: Box<dyn Runner>,
    shutdown: ShutdownHandle,
    handle_signals: bool,
    hooks: WorkerHooks,
    ready: Option<ReadyHook>,
    upgrade: Option<Box<dyn Upgrader>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners)
            .field("runner", &self.runner.name())
            .field("config", &self.config)
            .finish()
    }
}

impl Server {
    /// Binds a TCP listener (IPv4 or IPv6) with `SO_REUSEADDR` and a backlog of
    /// [`DEFAULT_BACKLOG`]. Each address `addr` resolves to is tried in turn. Port 0 picks a free
    /// port ([`Server::local_addr`] tells which).
    ///
    /// # Errors
    /// The error of the last address tried (address in use, permission denied, ...), or of
    /// resolving `addr`.
    pub fn bind(addr: impl ToSocketAddrs) -> Result<Server> {
        Server::bind_with_backlog(addr, DEFAULT_BACKLOG)
    }

    /// [`Server::bind`] with a listen backlog of your choice.
    ///
    /// # Errors
    /// As [`Server::bind`].
    pub fn bind_with_backlog(addr: impl ToSocketAddrs, backlog: i32) -> Result<Server> {
        let mut last = None;
        for addr in addr.to_socket_addrs()? {
            match listen(addr, backlog) {
                Ok(listener) => return Server::from_listener(listener),
                Err(e) => last = Some((addr, e)),
            }
        }
        Err(match last {
            Some((addr, source)) => BindError::error(addr.to_string(), source),
            None => Error::Io(std::io::Error::other("address resolved to nothing")),
        })
    }

    /// Binds a Unix domain socket at `path` (for running behind nginx and the like). A stale
    /// socket file at `path` is replaced; the file is removed when the server ends.
    ///
    /// # Errors
    /// The operating system's: the directory does not exist, permission denied, or a file that
    /// is not a socket is in the way.
    pub fn bind_unix(path: impl AsRef<Path>) -> Result<Server> {
        let path = path.as_ref();
        let listener =
            Listener::bind_unix(path).map_err(|source| BindError::error(format!("unix:{}", path.display()), source))?;
        Server::with_listener(listener)
    }

    /// Binds what a command line gives: `unix:/path/to/socket`, or `host:port` for TCP
    /// (`127.0.0.1:8000`, `[::1]:8000`, `localhost:8000`).
    ///
    /// # Errors
    /// As [`Server::bind`] and [`Server::bind_unix`].
    ///
    /// ```
    /// # fn main() -> Result<(), sgi::Error> {
    /// let tcp = sgi::Server::listen("127.0.0.1:0")?;
    /// assert!(tcp.local_addr()?.port() > 0);
    /// let path = std::env::temp_dir().join(format!("sgi-doc-{}.sock", std::process::id()));
    /// let unix = sgi::Server::listen(&format!("unix:{}", path.display()))?;
    /// assert!(path.exists());
    /// drop(unix); // the socket file goes with the server
    /// assert!(!path.exists());
    /// # Ok(()) }
    /// ```
    pub fn listen(spec: &str) -> Result<Server> {
        match spec.strip_prefix("unix:") {
            Some(path) => Server::bind_unix(path),
            None => Server::bind(spec),
        }
    }

    /// Serves on a listener bound elsewhere (systemd socket activation, tests, `SO_REUSEPORT`
    /// setups).
    ///
    /// # Errors
    /// Creating the shutdown pipe can fail when the process is out of file descriptors.
    pub fn from_listener(listener: TcpListener) -> Result<Server> {
        Server::with_listener(Listener::Tcp(listener))
    }

    /// Serves on a Unix domain socket bound elsewhere (inherited from a parent, a supervisor or
    /// systemd). Its socket file is never removed by this server: whoever created it owns it.
    ///
    /// # Errors
    /// As [`Server::from_listener`].
    pub fn from_unix_listener(listener: std::os::unix::net::UnixListener) -> Result<Server> {
        Server::with_listener(Listener::Unix(listener, None))
    }

    /// Adds a listener, as [`Server::listen`] takes it: the server serves all of its listeners
    /// together, each request's `SERVER_NAME` and `SERVER_PORT` those of the listener it came
    /// through.
    ///
    /// # Errors
    /// As [`Server::listen`]; `InvalidInput` beyond [`MAX_LISTENERS`].
    ///
    /// ```
    /// # fn main() -> Result<(), sgi::Error> {
    /// let server = sgi::Server::listen("127.0.0.1:0")?.also_listen("[::1]:0")?;
    /// # let _ = server;
    /// # Ok(()) }
    /// ```
    pub fn also_listen(mut self, spec: &str) -> Result<Server> {
        if self.listeners.len() >= MAX_LISTENERS {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "too many listeners");
            return Err(BindError::error(spec, e));
        }
        let other = Server::listen(spec)?;
        self.listeners.extend(other.listeners);
        Ok(self)
    }

    /// A server on listeners made elsewhere in the crate (the options layer's binds and
    /// inherited sockets).
    pub(crate) fn from_listeners(listeners: Vec<Listener>) -> Result<Server> {
        let mut listeners = listeners.into_iter();
        let first = listeners.next().ok_or_else(|| std::io::Error::other("no listener"))?;
        let mut server = Server::with_listener(first)?;
        server.listeners.extend(listeners);
        Ok(server)
    }

    /// How the prefork master re-executes the program on `USR2`.
    pub(crate) fn upgrader(mut self, upgrade: Box<dyn Upgrader>) -> Server {
        self.upgrade = Some(upgrade);
        self
    }

    /// Takes the listeners out, leaving none: for the options layer, which binds through
    /// [`Server::bind_with_backlog`] and serves them together with others.
    pub(crate) fn take_listeners(&mut self) -> Vec<Listener> {
        std::mem::take(&mut self.listeners)
    }

    fn with_listener(listener: Listener) -> Result<Server> {
        Ok(Server {
            listeners: vec![listener],
            proxied: Vec::new(),
            config: Config::default(),
            runner: Box::new(ThreadPool::default()),
            shutdown: ShutdownHandle::new()?,
            handle_signals: true,
            hooks: WorkerHooks::default(),
            ready: None,
            upgrade: None,
        })
    }

    /// The TCP address the (first) listener is bound to.
    ///
    /// # Errors
    /// The operating system's, if the socket cannot tell, or `Unsupported` for a Unix socket.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listeners[0].local_addr()?)
    }

    /// The TCP addresses of every TCP listener, in the order they were added.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Whether the listeners this server has so far expect the PROXY protocol (v1 or v2, as
    /// HAProxy, stunnel and cloud network load balancers send it) before the first request of
    /// each connection: the client's and the server's addresses it carries become
    /// `REMOTE_ADDR`, `REMOTE_PORT`, `SERVER_NAME` and `SERVER_PORT` (a `LOCAL` or `UNKNOWN`
    /// header keeps the connection's own). A connection without a valid header, or from a peer
    /// not in [`Config::proxy_allow_ips`], is refused with 400. Listeners added afterwards do not
    /// expect it, so one server can serve a proxy and direct clients:
    ///
    /// ```
    /// # fn main() -> Result<(), sgi::Error> {
    /// let server = sgi::Server::listen("127.0.0.1:0")? // behind HAProxy
    ///     .proxy_protocol(true)
    ///     .also_listen("127.0.0.1:0")?; // health checks, straight
    /// # let _ = server;
    /// # Ok(()) }
    /// ```
    ///
    /// Default: no listener expects it.
    pub fn proxy_protocol(mut self, on: bool) -> Server {
        self.proxied = vec![on; self.listeners.len()];
        self
    }

    /// Sets the limits, timeouts and identity. Default: [`Config::default`].
    pub fn config(mut self, config: Config) -> Server {
        self.config = config;
        self
    }

    /// Sets the runner. Default: [`ThreadPool::default`].
    pub fn runner(mut self, runner: impl Runner) -> Server {
        self.runner = Box::new(runner);
        self
    }

    /// A handle that stops the server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Whether `serve` routes SIGTERM and SIGINT to the shutdown handle while it runs: the first
    /// one starts a graceful shutdown, a second SIGINT ends the process at once. Only one server
    /// per process should handle signals. Default: `true`.
    pub fn handle_signals(mut self, handle: bool) -> Server {
        self.handle_signals = handle;
        self
    }

    /// Runs `hook` in each worker process of the [`Prefork`](crate::runner::Prefork) runner
    /// right after the fork, before the handler factory (gunicorn's `post_fork`): to reseed a
    /// random number generator, reopen what must not be shared with the master, or log the
    /// worker's start. A hook that panics is a worker that cannot boot. Other runners do not
    /// call it: their process is the one that called `serve` (the factory of
    /// [`Server::serve_factory`] is the place for per-process state there).
    pub fn on_worker_fork(mut self, hook: impl Fn() + Send + Sync + 'static) -> Server {
        self.hooks.after_fork = Some(Arc::new(hook));
        self
    }

    /// Runs `hook` in each worker process of the [`Prefork`](crate::runner::Prefork) runner
    /// once it has stopped serving and before it exits (gunicorn's `worker_exit`): after a
    /// graceful stop, a reload, a recycling or a failure of its runner, but not when it is
    /// killed (a timeout, `SIGKILL`, a quick stop) or crashes. A panic in the hook is logged.
    /// Other runners do not call it: `serve` returns to their caller.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), sgi::Error> {
    /// sgi::Server::bind("127.0.0.1:8000")?
    ///     .runner(sgi::runner::Prefork::new(2))
    ///     .on_worker_fork(|| eprintln!("worker {} started", std::process::id()))
    ///     .on_worker_exit(|| eprintln!("worker {} flushing and leaving", std::process::id()))
    ///     .serve(sgi::handler_fn(|_env, sr| Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body("hi"))))
    /// # }
    /// ```
    pub fn on_worker_exit(mut self, hook: impl Fn() + Send + Sync + 'static) -> Server {
        self.hooks.before_exit = Some(Arc::new(hook));
        self
    }

    /// Runs `hook` once the server serves: its listeners are bound (they were from the start)
    /// and its handler is made; for [`Prefork`](crate::runner::Prefork), once every first
    /// worker has booted. The place to tell a supervisor that the service is up (the options
    /// layer sends systemd's `READY=1` from here, and a daemon's parent exits then). Runs on the
    /// thread that called `serve`, before the first request is accepted.
    ///
    /// ```
    /// # fn main() -> Result<(), sgi::Error> {
    /// let server = sgi::Server::bind("127.0.0.1:0")?;
    /// let stop = server.shutdown_handle();
    /// server
    ///     .handle_signals(false)
    ///     .on_ready(move || stop.shutdown()) // up, so stop at once
    ///     .serve(sgi::handler_fn(|_env, sr| Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body("hi"))))
    /// # }
    /// ```
    pub fn on_ready(mut self, hook: impl FnOnce() + Send + 'static) -> Server {
        self.ready = Some(Box::new(hook));
        self
    }

    /// Serves `handler` until the shutdown handle is triggered, then returns.
    ///
    /// # Errors
    /// A fatal error of the listener (not of one connection: those are logged and survived), or
    /// a runner that cannot start.
    pub fn serve(self, handler: impl Handler) -> Result<()> {
        self.serve_app(App::Handler(Box::new(handler)))
    }

    /// Serves handlers made by `factory`: the prefork runner calls it in every worker, after
    /// the fork (so each worker builds its own connection pools, caches and configuration, and
    /// a worker started by a reload builds them afresh); the other runners call it once, before
    /// serving. A factory that fails is a worker that cannot boot.
    ///
    /// # Errors
    /// As [`Server::serve`], and [`Error::Factory`] when the factory fails (for prefork:
    /// [`Error::Workers`] when no worker could boot).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), sgi::Error> {
    /// sgi::Server::bind("127.0.0.1:8000")?
    ///     .runner(sgi::runner::Prefork::new(4))
    ///     .serve_factory(|| {
    ///         let greeting = format!("hello from worker {}", std::process::id());
    ///         Ok(sgi::handler_fn(move |_env, sr| {
    ///             Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body(greeting.clone()))
    ///         }))
    ///     })
    /// # }
    /// ```
    pub fn serve_factory<H, F>(self, factory: F) -> Result<()>
    where
        H: Handler,
        F: Fn() -> std::result::Result<H, BoxError> + Send + Sync + 'static,
    {
        self.serve_app(App::Factory(Box::new(move || factory().map(|h| Box::new(h) as Box<dyn Handler>))))
    }

    pub(crate) fn serve_app(self, app: App) -> Result<()> {
        let mut proxied = self.proxied;
        proxied.resize(self.listeners.len(), false);
        let listeners = Listeners::new(self.listeners.into_iter().zip(proxied).collect())?;
        let _signals = if self.handle_signals { Some(self.shutdown.handle_signals()?) } else { None };
        let serving = Serving {
            listeners,
            config: Arc::new(self.config),
            flags: self.runner.flags(),
            shutdown: self.shutdown,
            app,
            hooks: self.hooks,
            ready: self.ready,
            upgrade: self.upgrade,
        };
        self.runner.run(serving)
    }
}

fn listen(addr: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    // socket2 creates sockets close-on-exec, so children exec'ed by a handler never inherit them.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]` serves IPv6 only, so that `0.0.0.0` on the same port can be bound beside it.
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}
