//! Inherited listening sockets (systemd socket activation, `fd://N`) and `sd_notify`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::net::TcpListener;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};

use socket2::{Domain, SockRef, Type};

use crate::net::Listener;

/// An inherited listening socket and its systemd name (its `LISTEN_FDNAMES` entry), if any.
#[derive(Debug)]
pub(crate) struct Inherited {
    pub(crate) listener: Listener,
    pub(crate) name: Option<String>,
}

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`): after stdin, stdout and stderr.
const LISTEN_FDS_START: RawFd = 3;

/// More inherited sockets than this is a broken environment, not a configuration.
const MAX_LISTEN_FDS: usize = 1024;

/// The variables of the socket-passing protocol: systemd's three, and `LISTEN_FDS_FIRST_FD`,
/// which `systemfd` sets because the sockets it opens need not start at descriptor 3.
const LISTEN_VARS: [&str; 4] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_FDS_FIRST_FD"];

/// Takes over descriptor `fd` as a listener: a listening stream socket, TCP (IPv4 or IPv6) or
/// Unix. An inherited Unix socket's file is never removed: whoever created the socket owns it.
/// Sets `FD_CLOEXEC`, so that programs this process runs later do not inherit it.
///
/// The descriptor must be one nothing else in this process owns: one handed over by the process
/// that started us (systemd, `fd://N`), or a test's own duplicate.
///
/// # Errors
///
/// The descriptor is taken over only on success. On error it is left open and as it was, since
/// a descriptor that is not what we were told may belong to someone else. The error names the
/// descriptor: `InvalidInput` when it is open but not a listening stream socket of a supported
/// family, the OS error's kind when it is not open at all (`EBADF`).
pub(crate) fn listener_from_fd(fd: RawFd) -> io::Result<Listener> {
    let os_error = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("descriptor {fd} {what}: {e}"));
    // SAFETY: all-zero bytes are a valid `stat` (plain integers), which fstat overwrites.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a valid, writable `stat` for the duration of the call; a descriptor that
    // is not open only makes fstat fail with EBADF.
    syscall!(unsafe { libc::fstat(fd, &mut stat) }).map_err(|e| match e.raw_os_error() {
        Some(libc::EBADF) => os_error("is not open", e),
        _ => os_error("cannot be examined (fstat)", e),
    })?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(invalid(fd, "is not a socket"));
    }

    // SAFETY: fstat just saw `fd` open (so it is not -1), and nothing closes it while we look:
    // the caller hands it over, so no other owner exists.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let socket = SockRef::from(&borrowed);
    if socket.r#type().map_err(|e| os_error("has no readable socket type (SO_TYPE)", e))? != Type::STREAM {
        return Err(invalid(fd, "is not a stream socket"));
    }
    if !socket.is_listener().map_err(|e| os_error("cannot say whether it listens (SO_ACCEPTCONN)", e))? {
        return Err(invalid(fd, "is not a listening socket"));
    }
    let domain = socket.domain().map_err(|e| os_error("has no readable address family (SO_DOMAIN)", e))?;
    let is_tcp = match domain {
        Domain::IPV4 | Domain::IPV6 => true,
        Domain::UNIX => false,
        other => {
            let family = libc::c_int::from(other);
            return Err(invalid(fd, &format!("has address family {family}, not IPv4, IPv6 or Unix")));
        }
    };
    socket.set_cloexec(true).map_err(|e| os_error("cannot be made close-on-exec", e))?;

    // SAFETY: `fd` is an open socket that nothing else in this process owns (the caller's
    // promise), so this is now its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(if is_tcp { Listener::Tcp(TcpListener::from(owned)) } else { Listener::Unix(UnixListener::from(owned), None) })
}

fn invalid(fd: RawFd, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {fd} {what}"))
}

/// Takes the listening sockets passed by systemd socket activation (`sd_listen_fds(3)`) or
/// `systemfd`, in order, with their names, and removes the protocol's variables so that child
/// processes do not take the same descriptors again (`sd_listen_fds(1)` does the same).
///
/// Sockets meant for another process (`LISTEN_PID` is someone else's) give an empty list, and
/// the variables are left alone. A missing `LISTEN_PID` is accepted: `systemfd --no-pid`, the
/// mode for `cargo watch`, omits it because the pid it would name is not ours.
///
/// Call it at start, while the process is single-threaded: removing variables while another
/// thread reads the environment is a data race in the C library.
///
/// # Errors
///
/// `InvalidInput` naming the variable when a variable is malformed (not a number, not UTF-8,
/// `LISTEN_FDS` above 1024); the error of [`listener_from_fd`] when a passed descriptor is not a
/// listening socket, after which the sockets already taken are closed and the rest left open.
pub(crate) fn take_listen_fds() -> io::Result<Vec<Inherited>> {
    let [pid, fds, names, first_fd] = LISTEN_VARS.map(env_var);
    let (pid, fds, names, first_fd) = (pid?, fds?, names?, first_fd?);
    let vars =
        ListenVars { pid: pid.as_deref(), fds: fds.as_deref(), names: names.as_deref(), first_fd: first_fd.as_deref() };
    let Some(passed) = vars.parse(std::process::id())? else {
        return Ok(Vec::new());
    };
    for var in LISTEN_VARS {
        std::env::remove_var(var);
    }
    (passed.first..)
        .zip(passed.names)
        .map(|(fd, name)| Ok(Inherited { listener: listener_from_fd(fd)?, name }))
        .collect()
}

/// A variable of the environment, as UTF-8.
fn env_var(name: &str) -> io::Result<Option<String>> {
    std::env::var_os(name)
        .map(OsString::into_string)
        .transpose()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is not UTF-8")))
}

/// The socket-passing variables as read from the environment, kept apart from it so that the
/// protocol can be tested without changing the process's environment.
#[derive(Debug, Default, Clone, Copy)]
struct ListenVars<'a> {
    pid: Option<&'a str>,
    fds: Option<&'a str>,
    names: Option<&'a str>,
    first_fd: Option<&'a str>,
}

/// The descriptors passed to this process: `first`, `first + 1`, ..., one per name.
#[derive(Debug, PartialEq, Eq)]
struct ListenFds {
    first: RawFd,
    /// As many as there are descriptors; `None` where `LISTEN_FDNAMES` has no (or an empty)
    /// entry.
    names: Vec<Option<String>>,
}

impl ListenVars<'_> {
    /// `None` when no descriptors are addressed to `our_pid`; otherwise the descriptors, maybe
    /// none at all (`LISTEN_FDS=0` or unset).
    fn parse(self, our_pid: u32) -> io::Result<Option<ListenFds>> {
        match self.pid.filter(|pid| !pid.is_empty()) {
            Some(pid) if parse_var::<u32>("LISTEN_PID", pid)? != our_pid => return Ok(None),
            Some(_) => {}
            None if self.fds.is_none() => return Ok(None),
            None => {}
        }
        let count = self.fds.map_or(Ok(0), |fds| parse_var::<usize>("LISTEN_FDS", fds))?;
        if count > MAX_LISTEN_FDS {
            let message = format!("LISTEN_FDS is {count}, more than the {MAX_LISTEN_FDS} sockets accepted");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        let first = self.first_fd.map_or(Ok(LISTEN_FDS_START), |fd| parse_var("LISTEN_FDS_FIRST_FD", fd))?;
        if first < LISTEN_FDS_START {
            let message = format!("LISTEN_FDS_FIRST_FD is {first}: descriptors 0 to 2 are stdin, stdout and stderr");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        if first.checked_add(count as RawFd).is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "LISTEN_FDS_FIRST_FD is too large"));
        }
        let mut given = self.names.map(|names| names.split(':')).into_iter().flatten();
        let names = (0..count).map(|_| given.next().filter(|n| !n.is_empty()).map(str::to_owned)).collect();
        Ok(Some(ListenFds { first, names }))
    }
}

fn parse_var<T: std::str::FromStr>(name: &str, value: &str) -> io::Result<T> {
    value.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is {value:?}, not a number")))
}

/// Tells the service manager about a change of state (`sd_notify(3)`), e.g. `"READY=1"` or
/// `"STOPPING=1"`, when it asked to be told (`NOTIFY_SOCKET` is set). Returns whether it did.
///
/// # Errors
///
/// Those of [`notify_to`].
pub(crate) fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => notify_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` as one datagram to the notification socket `socket`: an absolute path, or
/// `@name` for Linux's abstract namespace.
///
/// # Errors
///
/// `InvalidInput` for an address of another form; otherwise the OS error of creating the
/// socket or sending (`ENOENT`, `ECONNREFUSED` when nobody listens there).
pub(crate) fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
        Some(b'/') => SocketAddr::from_pathname(socket)?,
        _ => {
            let message = format!("NOTIFY_SOCKET {socket:?} is neither an absolute path nor an @abstract name");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpStream, UdpSocket};
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A path in the temporary directory that no other test, nor another run, uses.
    fn temp_path(what: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("sgi-activation-{}-{what}-{n}", std::process::id()))
    }

    /// A new descriptor for the same open socket or file, without `FD_CLOEXEC` (as inherited
    /// ones are), owned by the caller.
    fn dup(fd: &impl AsRawFd) -> RawFd {
        // SAFETY: dup only reads the open descriptor and returns a new one, which the test owns.
        let new = unsafe { libc::dup(fd.as_raw_fd()) };
        assert!(new >= 0, "dup: {}", io::Error::last_os_error());
        new
    }

    fn fd_flags(fd: RawFd) -> libc::c_int {
        // SAFETY: F_GETFD only reads the descriptor's flags, and fails on a closed descriptor.
        unsafe { libc::fcntl(fd, libc::F_GETFD) }
    }

    /// Closes a descriptor that `listener_from_fd` refused and so left to the test.
    fn close(fd: RawFd) {
        // SAFETY: the test created `fd` and nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }

    fn assert_refused(fd: RawFd, expected: &str) {
        let err = listener_from_fd(fd).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(err.to_string(), format!("descriptor {fd} {expected}"));
        assert_ne!(fd_flags(fd), -1, "a refused descriptor stays open");
        close(fd);
    }

    #[test]
    fn tcp_listener_is_taken_with_close_on_exec() {
        let original = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = dup(&original);
        assert_eq!(fd_flags(fd) & libc::FD_CLOEXEC, 0);
        let listener = listener_from_fd(fd).unwrap();
        assert!(matches!(listener, Listener::Tcp(_)));
        assert_eq!(listener.local_addr().unwrap(), original.local_addr().unwrap());
        assert_ne!(fd_flags(fd) & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn unix_listener_is_taken_without_its_file() {
        let path = temp_path("listener");
        let original = UnixListener::bind(&path).unwrap();
        let listener = listener_from_fd(dup(&original)).unwrap();
        drop(original);
        assert!(matches!(listener, Listener::Unix(_, None)));
        drop(listener);
        assert!(path.exists(), "an inherited socket's file belongs to whoever created it");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn connected_stream_is_refused_and_left_open() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_refused(stream.into_raw_fd(), "is not a listening socket");
    }

    #[test]
    fn udp_socket_is_refused() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_refused(socket.into_raw_fd(), "is not a stream socket");
    }

    #[test]
    fn regular_file_is_refused() {
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        assert_refused(file.into_raw_fd(), "is not a socket");
    }

    #[test]
    fn closed_descriptor_is_an_os_error() {
        // -1 is never open, and unlike any real number no other test can be using it.
        let err = listener_from_fd(-1).unwrap_err();
        assert_eq!(err.kind(), io::Error::from_raw_os_error(libc::EBADF).kind());
        assert!(err.to_string().starts_with("descriptor -1 is not open"), "{err}");
    }

    const OUR_PID: u32 = 4242;

    fn parse(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> io::Result<Option<ListenFds>> {
        ListenVars { pid, fds, names, first_fd: None }.parse(OUR_PID)
    }

    fn passed(first: RawFd, names: &[Option<&str>]) -> Option<ListenFds> {
        Some(ListenFds { first, names: names.iter().map(|n| n.map(str::to_owned)).collect() })
    }

    #[test]
    fn nothing_passed_without_the_variables() {
        assert_eq!(parse(None, None, None).unwrap(), None);
        assert_eq!(parse(None, None, Some("http")).unwrap(), None);
    }

    #[test]
    fn sockets_of_another_process_are_not_ours() {
        assert_eq!(parse(Some("1"), Some("2"), Some("a:b")).unwrap(), None);
    }

    #[test]
    fn our_sockets_come_with_their_names() {
        assert_eq!(
            parse(Some("4242"), Some("2"), Some("http:admin")).unwrap(),
            passed(3, &[Some("http"), Some("admin")])
        );
    }

    #[test]
    fn missing_names_are_none() {
        assert_eq!(parse(Some("4242"), Some("3"), Some("http::")).unwrap(), passed(3, &[Some("http"), None, None]));
        assert_eq!(parse(Some("4242"), Some("2"), Some("http")).unwrap(), passed(3, &[Some("http"), None]));
        assert_eq!(parse(Some("4242"), Some("1"), None).unwrap(), passed(3, &[None]));
        assert_eq!(parse(Some("4242"), Some("1"), Some("a:b:c")).unwrap(), passed(3, &[Some("a")]));
    }

    #[test]
    fn zero_sockets_are_still_addressed_to_us() {
        assert_eq!(parse(Some("4242"), Some("0"), None).unwrap(), passed(3, &[]));
        assert_eq!(parse(Some("4242"), None, None).unwrap(), passed(3, &[]));
    }

    #[test]
    fn systemfd_without_pid_is_accepted() {
        assert_eq!(parse(None, Some("1"), None).unwrap(), passed(3, &[None]));
        assert_eq!(parse(Some(""), Some("1"), None).unwrap(), passed(3, &[None]));
        let vars = ListenVars { fds: Some("2"), first_fd: Some("5"), ..ListenVars::default() };
        assert_eq!(vars.parse(OUR_PID).unwrap(), passed(5, &[None, None]));
    }

    #[test]
    fn malformed_variables_are_named() {
        let cases = [
            (parse(Some("me"), Some("1"), None), "LISTEN_PID"),
            (parse(Some("4242"), Some("one"), None), "LISTEN_FDS"),
            (parse(Some("4242"), Some("-1"), None), "LISTEN_FDS"),
            (parse(Some("4242"), Some("1025"), None), "LISTEN_FDS"),
            (
                ListenVars { fds: Some("1"), first_fd: Some("x"), ..ListenVars::default() }.parse(OUR_PID),
                "LISTEN_FDS_FIRST_FD",
            ),
            (
                ListenVars { fds: Some("1"), first_fd: Some("0"), ..ListenVars::default() }.parse(OUR_PID),
                "LISTEN_FDS_FIRST_FD",
            ),
        ];
        for (result, var) in cases {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().starts_with(var), "{err} should name {var}");
        }
        assert!(parse(Some("4242"), Some("1024"), None).is_ok());
    }

    #[test]
    fn notify_reaches_a_path() {
        let path = temp_path("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nMAINPID=1234").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=1234");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn notify_reaches_an_abstract_name() {
        let name = format!("sgi-activation-{}-notify", std::process::id());
        let receiver = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        notify_to(format!("@{name}").as_ref(), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn notify_refuses_a_relative_address() {
        let err = notify_to("notify.sock".as_ref(), "READY=1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
