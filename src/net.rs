//! Listeners and streams: TCP (IPv4, IPv6) or Unix domain sockets, behind one type each so that
//! runners and the connection driver never care which.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::sys::unix::{self, Waited};

/// A bound, listening socket.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    /// With the path of the socket file when this process created it: the file is removed when
    /// the listener is dropped. An inherited socket's file is never removed.
    Unix(UnixListener, Option<PathBuf>),
}

/// What requests on one listener see of it: `SERVER_NAME` and `SERVER_PORT`; and whether its
/// connections begin with a PROXY protocol header.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    pub(crate) name: Box<str>,
    pub(crate) port: Box<str>,
    pub(crate) proxy_protocol: bool,
}

/// The listening sockets of one server, served together, each with what its requests see of it.
#[derive(Debug)]
pub(crate) struct Listeners {
    listeners: Vec<(Listener, Local)>,
}

impl Listeners {
    /// Sets every listener non-blocking and works out its `SERVER_NAME` and `SERVER_PORT`.
    /// The same sockets, owning no socket file: what a forked worker serves on, so that a
    /// worker that stops never removes the file its master still serves.
    pub(crate) fn without_files(mut self) -> Listeners {
        for (listener, _) in &mut self.listeners {
            if let Listener::Unix(_, path) = listener {
                *path = None;
            }
        }
        self
    }

    /// Each listener with whether it expects a PROXY protocol header.
    pub(crate) fn new(listeners: Vec<(Listener, bool)>) -> io::Result<Listeners> {
        let listeners = listeners
            .into_iter()
            .map(|(l, proxy_protocol)| {
                l.set_nonblocking(true)?;
                let (name, port) = l.server_name_and_port()?;
                Ok((l, Local { name: name.into(), port: port.into(), proxy_protocol }))
            })
            .collect::<io::Result<_>>()?;
        Ok(Listeners { listeners })
    }

    pub(crate) fn len(&self) -> usize {
        self.listeners.len()
    }

    pub(crate) fn fd(&self, index: usize) -> RawFd {
        self.listeners[index].0.as_raw_fd()
    }

    pub(crate) fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.listeners.iter().map(|(l, _)| l.as_raw_fd())
    }

    /// Accepts one connection from listener `index` (see [`Listener::accept`]).
    pub(crate) fn accept(&self, index: usize) -> io::Result<(Stream, Option<SocketAddr>, &Local)> {
        let (listener, local) = &self.listeners[index];
        let (stream, peer) = listener.accept()?;
        Ok((stream, peer, local))
    }
}

/// What the connection pump reads from and writes to: a non-blocking socket (or, in tests, a
/// stand-in), with waiting made explicit so that deadlines are the pump's, not socket options.
pub(crate) trait Transport {
    /// Reads what is there; `WouldBlock` when nothing is.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes what fits; `WouldBlock` when nothing does.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    fn shutdown_write(&self);
    /// Waits until the transport is ready for `interest`, `wake` becomes readable, or `deadline`
    /// passes.
    fn wait(&self, interest: Interest, wake: Option<RawFd>, deadline: Option<Instant>) -> io::Result<Waited>;
    /// Sends up to `count` bytes of `file` from `offset` without reading them into memory
    /// (`sendfile(2)`); `Unsupported` where the transport (or the file) cannot, and the body is
    /// read and written instead.
    fn send_file(&mut self, file: &std::fs::File, offset: u64, count: usize) -> io::Result<usize> {
        let _ = (file, offset, count);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// What a connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    Readable,
    Writable,
}

/// An accepted connection: a non-blocking socket for its whole life, so that the pool's poller
/// and its workers, and the blocking runners, all use it the same way (a blocking runner waits
/// with `poll(2)` until its deadline, which costs no `setsockopt` per request).
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    /// Binds a Unix domain socket at `path`, replacing a stale socket file left by a previous run
    /// (never any other kind of file).
    pub(crate) fn bind_unix(path: &Path) -> io::Result<Listener> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                std::fs::remove_file(path)?;
            }
        }
        Ok(Listener::Unix(UnixListener::bind(path)?, Some(path.to_owned())))
    }

    /// Accepts one connection, as a non-blocking, close-on-exec stream with `TCP_NODELAY` set.
    pub(crate) fn accept(&self) -> io::Result<(Stream, Option<SocketAddr>)> {
        // Non-blocking and close-on-exec from `accept4` itself: one system call less per
        // connection than setting them afterwards.
        const FLAGS: libc::c_int = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let (stream, peer) = match self {
            Listener::Tcp(l) => {
                let (s, peer) = socket2::SockRef::from(l).accept4(FLAGS)?;
                let s = TcpStream::from(s);
                // Responses are written whole; Nagle would only delay the last segment.
                let _ = s.set_nodelay(true);
                (Stream::Tcp(s), peer.as_socket())
            }
            Listener::Unix(l, _) => {
                let (s, _) = socket2::SockRef::from(l).accept4(FLAGS)?;
                (Stream::Unix(UnixStream::from(s)), None)
            }
        };
        Ok((stream, peer))
    }

    pub(crate) fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(nonblocking),
            Listener::Unix(l, _) => l.set_nonblocking(nonblocking),
        }
    }

    /// `SERVER_NAME` and `SERVER_PORT` for requests on this listener.
    pub(crate) fn server_name_and_port(&self) -> io::Result<(String, String)> {
        Ok(match self {
            Listener::Tcp(l) => {
                let a = l.local_addr()?;
                (a.ip().to_string(), a.port().to_string())
            }
            // PEP 3333 wants both non-empty; a Unix socket has a path and no port.
            Listener::Unix(l, _) => {
                let addr = l.local_addr()?;
                let path = addr.as_pathname().map_or_else(|| "unix".to_string(), |p| p.display().to_string());
                (path, "0".to_string())
            }
        })
    }

    /// The TCP address, for a TCP listener.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Unix(..) => Err(io::Error::new(io::ErrorKind::Unsupported, "a unix socket has no IP address")),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, Some(path)) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Transport for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }

    fn wait(&self, interest: Interest, wake: Option<RawFd>, deadline: Option<Instant>) -> io::Result<Waited> {
        let events = match interest {
            Interest::Readable => libc::POLLIN,
            Interest::Writable => libc::POLLOUT,
        };
        unix::wait_io(self.as_raw_fd(), events, wake, deadline)
    }

    fn send_file(&mut self, file: &std::fs::File, offset: u64, count: usize) -> io::Result<usize> {
        unix::sendfile(self.as_raw_fd(), file, offset, count)
    }
}
