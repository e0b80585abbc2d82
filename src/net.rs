//! Listeners and streams: TCP (IPv4, IPv6) or Unix domain sockets, behind one type each so that
//! runners and the connection driver never care which.

use std::cell::Cell;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::conn::Transport;
use crate::sys::unix;

/// A bound, listening socket.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    /// The path is removed when the listener is dropped: we created the socket file.
    Unix(UnixListener, PathBuf),
}

/// An accepted connection.
///
/// Blocking, or non-blocking with blocking emulated: in non-blocking mode `read` and `write`
/// wait with `poll(2)` when the socket is not ready, bounded by the read and write timeouts,
/// while [`Stream::try_read`] returns `WouldBlock` at once. The thread pool keeps its sockets in
/// that mode for their whole life, so handing a connection between its poller and its workers
/// costs no `fcntl`, and timeouts cost no `setsockopt`.
#[derive(Debug)]
pub(crate) struct Stream {
    io: Io,
    nonblocking: bool,
    read_timeout: Cell<Option<Duration>>,
    write_timeout: Cell<Option<Duration>>,
}

#[derive(Debug)]
enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Tcp(s) => s.read(buf),
            Io::Unix(s) => s.read(buf),
        }
    }
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
        Ok(Listener::Unix(UnixListener::bind(path)?, path.to_owned()))
    }

    /// Accepts one connection, as a blocking, close-on-exec stream with `TCP_NODELAY` set.
    pub(crate) fn accept(&self) -> io::Result<(Stream, Option<SocketAddr>)> {
        let (io, peer) = match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept()?;
                // Responses are written whole; Nagle would only delay the last segment.
                let _ = s.set_nodelay(true);
                (Io::Tcp(s), Some(peer))
            }
            Listener::Unix(l, _) => (Io::Unix(l.accept()?.0), None),
        };
        let mut stream =
            Stream { io, nonblocking: true, read_timeout: Cell::new(None), write_timeout: Cell::new(None) };
        // Some systems hand out accepted sockets with the listener's O_NONBLOCK.
        stream.set_nonblocking(false)?;
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
            Listener::Unix(_, path) => (path.display().to_string(), "0".to_string()),
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
        if let Listener::Unix(_, path) = self {
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

impl Stream {
    /// Switches between blocking and non-blocking (emulated blocking) mode.
    pub(crate) fn set_nonblocking(&mut self, nonblocking: bool) -> io::Result<()> {
        match &self.io {
            Io::Tcp(s) => s.set_nonblocking(nonblocking)?,
            Io::Unix(s) => s.set_nonblocking(nonblocking)?,
        }
        self.nonblocking = nonblocking;
        // Timeouts live in the socket in blocking mode, and here in non-blocking mode.
        let (read, write) = (self.read_timeout.get(), self.write_timeout.get());
        self.set_read_timeout(read)?;
        self.set_write_timeout(write)
    }

    /// In non-blocking mode, waits until the socket is ready for `events` or `timeout` passes.
    fn wait(&self, events: libc::c_short, timeout: Option<Duration>) -> io::Result<()> {
        if unix::wait_ready(self.as_raw_fd(), events, timeout)? {
            Ok(())
        } else {
            Err(io::ErrorKind::TimedOut.into())
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match &self.io {
            Io::Tcp(s) => s.as_raw_fd(),
            Io::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.io.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.nonblocking => {
                    self.wait(libc::POLLIN, self.read_timeout.get())?
                }
                other => return other,
            }
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        loop {
            let written = match &mut self.io {
                Io::Tcp(s) => s.write_vectored(bufs),
                Io::Unix(s) => s.write_vectored(bufs),
            };
            match written {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.nonblocking => {
                    self.wait(libc::POLLOUT, self.write_timeout.get())?
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Stream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(timeout);
        match &self.io {
            _ if self.nonblocking => Ok(()),
            Io::Tcp(s) => s.set_read_timeout(timeout),
            Io::Unix(s) => s.set_read_timeout(timeout),
        }
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.write_timeout.set(timeout);
        match &self.io {
            _ if self.nonblocking => Ok(()),
            Io::Tcp(s) => s.set_write_timeout(timeout),
            Io::Unix(s) => s.set_write_timeout(timeout),
        }
    }
    fn shutdown_write(&self) {
        let _ = match &self.io {
            Io::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Io::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        };
    }
    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
    /// In non-blocking mode, `WouldBlock` when nothing is there.
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.read(buf)
    }
}
