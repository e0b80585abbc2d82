//! Thin, safe wrappers over the few Unix calls the crate needs, each `unsafe` block justified.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

#[macro_use]
mod macros {
    /// Runs a libc call that returns -1 and sets `errno` on failure, as an `io::Result`.
    macro_rules! syscall {
        ($call:expr) => {{
            let result = $call;
            if result == -1 {
                Err(::std::io::Error::last_os_error())
            } else {
                Ok(result)
            }
        }};
    }
}

/// A pipe whose ends are close-on-exec and non-blocking: `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    syscall!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends up to `count` bytes of `file` from byte `offset` to the socket `socket` with
/// `sendfile(2)`: the kernel copies from the page cache, the bytes never pass through user
/// space. Returns how many were sent (0 when the file ends before `offset`); `WouldBlock` when a
/// non-blocking socket is full, `Unsupported` when the file cannot be sent this way (a file
/// system without the support, a pipe). Retries on `EINTR`.
pub(crate) fn sendfile(socket: RawFd, file: &std::fs::File, offset: u64, count: usize) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // Linux sends at most 0x7ffff000 bytes per call.
    let count = count.min(0x7fff_f000);
    loop {
        // SAFETY: both descriptors are open for the call (the socket is owned by the caller's
        // stream, the file borrowed); `off` is a live local the kernel reads and advances.
        match syscall!(unsafe { libc::sendfile(socket, file.as_raw_fd(), &mut off, count) }) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)) => {
                return Err(io::Error::new(io::ErrorKind::Unsupported, e));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes one byte to a non-blocking pipe; a full pipe already wakes its reader, so `EAGAIN` is
/// fine. Async-signal-safe: it is a single `write(2)`.
pub(crate) fn write_byte(fd: &impl AsRawFd) {
    let byte = 1u8;
    loop {
        // SAFETY: writes one byte from a live stack variable to an open descriptor.
        let n = unsafe { libc::write(fd.as_raw_fd(), (&byte as *const u8).cast(), 1) };
        if n == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return;
    }
}

/// Waits until one of `fds` is readable (or hung up), or `timeout` passes. Returns the index of
/// the first ready descriptor, `None` on timeout. Retries on `EINTR` with the time that is left.
pub(crate) fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Option<usize>> {
    let mut pollfds = [libc::pollfd { fd: -1, events: 0, revents: 0 }; 64];
    assert!(fds.len() <= pollfds.len(), "wait_readable takes at most 64 descriptors");
    for (p, &fd) in pollfds.iter_mut().zip(fds) {
        *p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = poll_millis(deadline);
        // SAFETY: `pollfds[..fds.len()]` is a valid, initialised array of pollfd structs.
        match syscall!(unsafe { libc::poll(pollfds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) }) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(pollfds[..fds.len()].iter().position(|p| p.revents != 0)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

pub(crate) mod activation;
pub(crate) mod daemon;
pub(crate) mod process;
pub(crate) mod signal;

/// What [`wait_io`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The descriptor is ready (or failed or hung up: the next call on it says which).
    Ready,
    /// The deadline passed.
    TimedOut,
    /// The wake-up descriptor became readable.
    Woken,
}

/// Waits until `fd` is ready for `events` (`POLLIN`, `POLLOUT`), `wake` becomes readable, or
/// `deadline` passes. Retries on `EINTR`.
pub(crate) fn wait_io(
    fd: RawFd,
    events: libc::c_short,
    wake: Option<RawFd>,
    deadline: Option<Instant>,
) -> io::Result<Waited> {
    let mut pollfds =
        [libc::pollfd { fd, events, revents: 0 }, libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 }];
    let count = if let Some(w) = wake {
        pollfds[1].fd = w;
        2
    } else {
        1
    };
    loop {
        let ms = poll_millis(deadline);
        // SAFETY: `pollfds[..count]` is a valid, initialised array of pollfd structs.
        match syscall!(unsafe { libc::poll(pollfds.as_mut_ptr(), count as libc::nfds_t, ms) }) {
            Ok(0) => return Ok(Waited::TimedOut),
            Ok(_) if pollfds[0].revents != 0 => return Ok(Waited::Ready),
            Ok(_) => return Ok(Waited::Woken),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Milliseconds until `deadline` for `poll(2)`, rounded up so a wait never ends early and spins;
/// -1 (forever) without one.
fn poll_millis(deadline: Option<Instant>) -> libc::c_int {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            left.as_millis().min(i32::MAX as u128 - 1) as i32 + i32::from(left.subsec_nanos() % 1_000_000 != 0)
        }
    }
}

/// A non-blocking pipe that wakes a poller: `notify` from any thread (or a signal handler),
/// `drain` in the poller before looking at why it woke.
#[derive(Debug)]
pub(crate) struct WakePipe {
    read: std::fs::File,
    write: OwnedFd,
}

impl WakePipe {
    pub(crate) fn new() -> io::Result<WakePipe> {
        let (read, write) = pipe()?;
        Ok(WakePipe { read: read.into(), write })
    }

    pub(crate) fn notify(&self) {
        write_byte(&self.write);
    }

    pub(crate) fn drain(&self) {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.read).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    pub(crate) fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub(crate) fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }
}

/// Closes a descriptor in a forked child that will `_exit` before its owner could run `Drop`.
pub(crate) fn close_in_child(fd: RawFd) {
    // SAFETY: only called in a child that never returns to the code owning `fd`: the owner's
    // destructor never runs, so the descriptor is closed exactly once.
    unsafe { libc::close(fd) };
}

/// Whether this process has a controlling terminal (`/dev/tty` opens only then).
pub(crate) fn has_controlling_terminal() -> bool {
    std::fs::OpenOptions::new().read(true).open("/dev/tty").is_ok()
}

/// This process's descriptor limit (`RLIMIT_NOFILE`): `(soft, hard)`, `u64::MAX` for unlimited.
pub(crate) fn fd_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable `rlimit` for the duration of the call.
    syscall!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    // `rlim_t` is `u64` on 64-bit Linux only.
    #[allow(clippy::unnecessary_cast)]
    Ok((limit.rlim_cur as u64, limit.rlim_max as u64))
}

/// Sets the soft descriptor limit to the hard one; returns the new soft limit.
pub(crate) fn raise_fd_limit() -> io::Result<u64> {
    let (soft, hard) = fd_limit()?;
    if soft < hard {
        let limit = libc::rlimit { rlim_cur: hard as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: `limit` is a valid `rlimit` for the duration of the call; raising the soft
        // limit up to the hard one needs no privilege.
        syscall!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })?;
    }
    Ok(hard.max(soft))
}
