//! [`Server`]: binds a listener, takes a configuration, a runner and a handler, and serves.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::conn::ServeContext;
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::runner::private::Serving;
use crate::runner::{Runner, Serial};
use crate::shutdown::ShutdownHandle;

/// Default listen backlog: connections the kernel queues while every runner slot is busy.
pub const DEFAULT_BACKLOG: i32 = 1024;

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
    listener: TcpListener,
    config: Config,
    runner: Box<dyn Runner>,
    shutdown: ShutdownHandle,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.listener.local_addr().ok())
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
                Err(e) => last = Some(e),
            }
        }
        Err(Error::Io(last.unwrap_or_else(|| std::io::Error::other("address resolved to nothing"))))
    }

    /// Serves on a listener bound elsewhere (systemd socket activation, tests, `SO_REUSEPORT`
    /// setups).
    ///
    /// # Errors
    /// Creating the shutdown pipe can fail when the process is out of file descriptors.
    pub fn from_listener(listener: TcpListener) -> Result<Server> {
        Ok(Server { listener, config: Config::default(), runner: Box::new(Serial), shutdown: ShutdownHandle::new()? })
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// The operating system's, if the socket cannot tell.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Sets the limits, timeouts and identity. Default: [`Config::default`].
    pub fn config(mut self, config: Config) -> Server {
        self.config = config;
        self
    }

    /// Sets the runner. Default: [`Serial`].
    pub fn runner(mut self, runner: impl Runner) -> Server {
        self.runner = Box::new(runner);
        self
    }

    /// A handle that stops the server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves `handler` until the shutdown handle is triggered, then returns.
    ///
    /// # Errors
    /// A fatal error of the listener (not of one connection: those are logged and survived), or
    /// a runner that cannot start.
    pub fn serve(self, handler: impl Handler) -> Result<()> {
        let local = self.listener.local_addr()?;
        let ctx = ServeContext {
            flags: self.runner.flags(),
            config: self.config,
            handler: Box::new(handler),
            shutdown: self.shutdown,
            server_name: local.ip().to_string().into(),
            server_port: local.port().to_string().into(),
        };
        self.runner.run(Serving { listener: self.listener, ctx: Arc::new(ctx) })
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
