//! Running detached: the double fork of a daemon, and a pidfile held with a lock.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::process::{self, Forked};

/// Why [`Pidfile::lock`] failed.
///
/// `Display` describes only this level; an I/O cause is the
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PidfileError {
    /// Another process holds the lock on the pidfile; `pid` is what the file says, if readable
    /// (the holder may not have written it yet).
    #[error("another instance is running with pidfile {}{}", path.display(), pid_note(*pid))]
    Running { path: PathBuf, pid: Option<u32> },
    /// The pidfile could not be opened, locked or checked.
    #[error("cannot use pidfile {}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn pid_note(pid: Option<u32>) -> String {
    pid.map_or_else(String::new, |pid| format!(" (pid {pid})"))
}

/// A pidfile this process holds an exclusive `flock(2)` on, for as long as the value lives.
///
/// The lock, not the pid written in the file, says whether an instance is running: a file left
/// by a crashed run is simply taken over, and no `kill(pid, 0)` guess is fooled by a zombie or a
/// reused pid. The lock belongs to the open file description, so it is inherited across `fork`:
/// a process about to daemonize can lock the pidfile first (reporting "already running" on the
/// terminal) and the daemon keeps the lock; it only ends when every descriptor of it is closed.
#[derive(Debug)]
pub(crate) struct Pidfile {
    path: PathBuf,
    file: File,
}

impl Pidfile {
    /// Opens (creating it, mode 0o644) and locks the pidfile at `path`.
    ///
    /// # Errors
    ///
    /// [`PidfileError::Running`] if another open of the file holds the lock (another process,
    /// or another `Pidfile` of this one), [`PidfileError::Io`] for anything else.
    pub(crate) fn lock(path: &Path) -> Result<Pidfile, PidfileError> {
        let io_error = |source| PidfileError::Io { path: path.to_path_buf(), source };
        loop {
            // Not truncated on open: a running holder's pid must stay readable for the error.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
                .map_err(io_error)?;
            match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(PidfileError::Running { path: path.to_path_buf(), pid: read_pid(&file) });
                }
                Err(e) => return Err(io_error(e)),
            }
            // The previous holder removes the file before its lock goes: if we opened it just
            // before the removal, we now lock an unlinked inode that a third instance could
            // recreate and lock too. Only a lock on what the path names counts.
            match same_file(&file, path) {
                Ok(true) => return Ok(Pidfile { path: path.to_path_buf(), file }),
                Ok(false) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// Replaces the file's content with `"{pid}\n"` and syncs it to disk.
    ///
    /// # Errors
    ///
    /// Any error of `ftruncate`, `pwrite` or `fsync`.
    pub(crate) fn write_pid(&self, pid: u32) -> io::Result<()> {
        // In place, not a temporary file renamed over the path: the lock lives on this inode, so
        // a rename would leave it on an unlinked file and let a second instance lock the new one.
        // One write of a few bytes at offset 0: a reader sees an empty file or the whole pid.
        self.file.set_len(0)?;
        self.file.write_all_at(format!("{pid}\n").as_bytes(), 0)?;
        self.file.sync_all()
    }

    /// Moves the pidfile to `to`, keeping the inode and so the lock, and removes it from there
    /// when dropped (an old master's `PIDFILE.oldbin` during a binary upgrade).
    ///
    /// # Errors
    ///
    /// Any error of `rename(2)`; the pidfile then stays where it was.
    pub(crate) fn rename(&mut self, to: &Path) -> io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.path = to.to_path_buf();
        Ok(())
    }

    /// Where the pidfile is now.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pidfile {
    /// Removes the file, unless the path now names another one (a new master may have created
    /// its own there after a rename or a removal). The lock goes after the removal, when `file`
    /// closes, so that no other instance can lock the file we are removing.
    fn drop(&mut self) {
        if let Ok(true) = same_file(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `flock(2)`, retried on `EINTR`.
fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock only takes a descriptor, open for as long as `file` is borrowed.
        match syscall!(unsafe { libc::flock(file.as_raw_fd(), operation) }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether `path` names the inode `file` is open on.
fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    let ours = file.metadata()?;
    let theirs = std::fs::metadata(path)?;
    Ok((ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()))
}

/// The pid in a pidfile, if it holds one.
fn read_pid(file: &File) -> Option<u32> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok().filter(|&pid| pid > 0)
}

/// The daemon's end of the pipe to the process that started it, which waits on the terminal until
/// the daemon says it is [`ready`](Detached::ready) or [`failed`](Detached::fail).
///
/// Dropped without either, it closes the pipe and the starting process reports that the daemon
/// exited before it was ready. Processes the daemon forks inherit the pipe, so call one of the two
/// before forking workers: a message is read until every write end is closed.
#[derive(Debug)]
pub(crate) struct Detached {
    ready: Option<File>,
}

impl Detached {
    /// Tells the starting process that the daemon is serving, so it exits with 0. Does nothing
    /// after the first call, or after [`fail`](Detached::fail).
    pub(crate) fn ready(&mut self) {
        self.send(b"R");
    }

    /// Tells the starting process that the daemon could not start: it prints `error: {message}`
    /// and exits with 1. Does nothing after the first call, or after [`ready`](Detached::ready).
    pub(crate) fn fail(&mut self, message: &str) {
        let mut report = Vec::with_capacity(1 + message.len());
        report.push(b'E');
        report.extend_from_slice(message.as_bytes());
        self.send(&report);
    }

    fn send(&mut self, report: &[u8]) {
        if let Some(mut pipe) = self.ready.take() {
            // The starting process may be gone (killed on its terminal): nobody is left to tell.
            let _ = pipe.write_all(report);
        }
    }
}

/// Detaches the process from its terminal with the classic double fork, and returns in the daemon.
///
/// The process that called it waits, on its terminal, for the daemon's verdict and exits with it:
/// 0 after [`Detached::ready`], 1 with the message of [`Detached::fail`] or when the daemon exits
/// before either; it never returns. Between the two, a child starts a new session (`setsid`) and
/// forks the daemon, then exits: the daemon is not a session leader, so it can never acquire a
/// controlling terminal. The daemon still has the caller's working directory, umask and stdio:
/// see [`redirect_stdio`] and [`set_umask`].
///
/// The caller must be single-threaded (it checks, with
/// [`thread_count`](super::process::thread_count)): only the forking thread survives a fork.
///
/// # Errors
///
/// In the calling process, if the pipe or the first fork cannot be made; nothing was detached.
pub(crate) fn daemonize() -> io::Result<Detached> {
    let (read, write) = super::pipe()?;
    // The starting process sleeps in read(2) until the daemon speaks, and a long failure message
    // must not meet a full pipe with EAGAIN.
    set_blocking(read.as_raw_fd())?;
    set_blocking(write.as_raw_fd())?;
    let mut report = File::from(write);
    match process::fork(|| {})? {
        Forked::Parent { child } => {
            drop(report);
            wait_for_verdict(child, File::from(read))
        }
        Forked::Child => {
            drop(read);
            // SAFETY: setsid has no memory-safety preconditions.
            if let Err(e) = syscall!(unsafe { libc::setsid() }) {
                abandon(&mut report, &format!("cannot start a new session: {e}"));
            }
            match process::fork(|| {}) {
                Ok(Forked::Parent { .. }) => process::exit_now(0),
                Ok(Forked::Child) => Ok(Detached { ready: Some(report) }),
                Err(e) => abandon(&mut report, &format!("cannot fork the daemon: {e}")),
            }
        }
    }
}

/// In the intermediate child: reports why no daemon was started, and exits.
fn abandon(report: &mut File, message: &str) -> ! {
    let _ = report.write_all(format!("E{message}").as_bytes());
    process::exit_now(1)
}

/// In the starting process: reaps the intermediate child, then waits for the daemon's first byte
/// and exits with what it says.
fn wait_for_verdict(intermediate: libc::pid_t, mut report: File) -> ! {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid int for waitpid to write.
        match syscall!(unsafe { libc::waitpid(intermediate, &mut status, 0) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ECHILD if SIGCHLD is ignored and the child was reaped for us: nothing to collect.
            _ => break,
        }
    }
    let mut first = [0u8; 1];
    let verdict = loop {
        match report.read(&mut first) {
            Ok(0) => break Err("the daemon exited before it was ready".to_owned()),
            Ok(_) if first[0] == b'R' => break Ok(()),
            Ok(_) if first[0] == b'E' => {
                let mut message = Vec::new();
                let _ = report.read_to_end(&mut message);
                break Err(String::from_utf8_lossy(&message).into_owned());
            }
            Ok(_) => break Err("the daemon sent a malformed start report".to_owned()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(format!("cannot read the daemon's start report: {e}")),
        }
    };
    // `_exit`, not `exit`: the daemon now owns the program's state, and `atexit` handlers or
    // destructors (a pidfile, a temporary file) must run there only, not here as well.
    match verdict {
        Ok(()) => {
            let _ = io::stdout().flush();
            process::exit_now(0)
        }
        Err(message) => {
            let _ = io::stdout().flush();
            let _ = writeln!(io::stderr(), "error: {message}");
            process::exit_now(1)
        }
    }
}

/// Clears `O_NONBLOCK` on `fd`.
fn set_blocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL only reads the flags of a descriptor the caller keeps open.
    let flags = syscall!(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: F_SETFL only changes the status flags of that descriptor.
    syscall!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

/// Points stdin at `/dev/null`, and stdout and stderr at the given files (opened for appending,
/// created with mode 0o644 if missing) or at `/dev/null`.
///
/// A daemon must not keep its starting terminal's descriptors: a write to a closed terminal fails
/// or raises `SIGHUP`/`SIGTTOU`, and the terminal stays held open.
///
/// # Errors
///
/// If a file cannot be opened (the message names it) or `dup2` fails. The given files are opened
/// before any descriptor is replaced, so a bad path leaves stdout and stderr as they were.
pub(crate) fn redirect_stdio(stdout: Option<&Path>, stderr: Option<&Path>) -> io::Result<()> {
    // With 0, 1 or 2 closed, a file opened below would take that number and the dup2 onto it
    // would close the file again: fill the gaps first, so every file opened below is above 2.
    loop {
        let filler = OpenOptions::new().read(true).write(true).open("/dev/null")?;
        if filler.as_raw_fd() > libc::STDERR_FILENO {
            break;
        }
        // Stays open as the standard descriptor it filled, until dup2 replaces it.
        let _ = filler.into_raw_fd();
    }
    let stdout = open_output(stdout)?;
    let stderr = open_output(stderr)?;
    let stdin = File::open("/dev/null")?;
    dup2(&stdin, libc::STDIN_FILENO)?;
    dup2(&stdout, libc::STDOUT_FILENO)?;
    dup2(&stderr, libc::STDERR_FILENO)
}

fn open_output(path: Option<&Path>) -> io::Result<File> {
    match path {
        Some(path) => OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))),
        None => OpenOptions::new().write(true).open("/dev/null"),
    }
}

/// `dup2(2)`, retried on `EINTR`; the copy is not close-on-exec, as standard descriptors must be.
fn dup2(file: &File, target: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: `file` is open; `target` is a standard descriptor, which dup2 replaces
        // atomically, and which no Rust value owns.
        match syscall!(unsafe { libc::dup2(file.as_raw_fd(), target) }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Sets the process's file mode creation mask and returns the previous one.
pub(crate) fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail and has no memory effects.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    // `mode_t` is `u32` on Linux, not on every Unix.
    #[allow(clippy::unnecessary_cast)]
    let old = old as u32;
    old
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A path in the temporary directory, unique to this process and test, removed at the end.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new(what: &str) -> TempPath {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            TempPath(std::env::temp_dir().join(format!("sgi-{what}-{}-{n}", std::process::id())))
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn content(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn lock_and_write_pid() {
        let path = TempPath::new("pidfile");
        let pidfile = Pidfile::lock(&path.0).unwrap();
        pidfile.write_pid(4242).unwrap();
        assert_eq!(content(&path.0), "4242\n");
        assert_eq!(pidfile.path(), path.0);
    }

    #[test]
    fn second_lock_reports_the_running_pid_until_the_first_is_dropped() {
        let path = TempPath::new("pidfile");
        let first = Pidfile::lock(&path.0).unwrap();
        first.write_pid(4242).unwrap();
        let e = Pidfile::lock(&path.0).unwrap_err();
        assert!(matches!(&e, PidfileError::Running { path: p, pid: Some(4242) } if *p == path.0), "{e:?}");
        assert_eq!(e.to_string(), format!("another instance is running with pidfile {} (pid 4242)", path.0.display()));
        drop(first);
        let second = Pidfile::lock(&path.0).unwrap();
        second.write_pid(7).unwrap();
        assert_eq!(content(&path.0), "7\n");
    }

    #[test]
    fn running_without_a_written_pid() {
        let path = TempPath::new("pidfile");
        let _first = Pidfile::lock(&path.0).unwrap();
        match Pidfile::lock(&path.0) {
            Err(e @ PidfileError::Running { pid: None, .. }) => {
                assert_eq!(e.to_string(), format!("another instance is running with pidfile {}", path.0.display()))
            }
            other => panic!("expected Running without a pid, got {other:?}"),
        }
    }

    #[test]
    fn stale_content_without_a_lock_is_taken_over() {
        let path = TempPath::new("pidfile");
        std::fs::write(&path.0, "999999\n").unwrap();
        let pidfile = Pidfile::lock(&path.0).unwrap();
        pidfile.write_pid(12).unwrap();
        assert_eq!(content(&path.0), "12\n");

        let garbage = TempPath::new("pidfile");
        std::fs::write(&garbage.0, "not a pid\0\u{1}").unwrap();
        let _pidfile = Pidfile::lock(&garbage.0).unwrap();
    }

    #[test]
    fn rename_keeps_the_lock_and_the_content() {
        let old = TempPath::new("pidfile");
        let new = TempPath::new("pidfile-oldbin");
        let mut pidfile = Pidfile::lock(&old.0).unwrap();
        pidfile.write_pid(31).unwrap();
        pidfile.rename(&new.0).unwrap();
        assert!(!old.0.exists());
        assert_eq!(pidfile.path(), new.0);
        assert_eq!(content(&new.0), "31\n");
        assert!(matches!(Pidfile::lock(&new.0), Err(PidfileError::Running { pid: Some(31), .. })));
        // The old path is free for the next instance.
        let _next = Pidfile::lock(&old.0).unwrap();
        drop(pidfile);
        assert!(!new.0.exists());
        assert!(old.0.exists());
    }

    #[test]
    fn drop_removes_the_file() {
        let path = TempPath::new("pidfile");
        let pidfile = Pidfile::lock(&path.0).unwrap();
        pidfile.write_pid(1).unwrap();
        drop(pidfile);
        assert!(!path.0.exists());
    }

    #[test]
    fn drop_leaves_a_file_that_replaced_ours() {
        let path = TempPath::new("pidfile");
        let pidfile = Pidfile::lock(&path.0).unwrap();
        pidfile.write_pid(1).unwrap();
        std::fs::remove_file(&path.0).unwrap();
        std::fs::write(&path.0, "2\n").unwrap();
        drop(pidfile);
        assert_eq!(content(&path.0), "2\n");
    }

    #[test]
    fn missing_directory_is_an_io_error_naming_the_path() {
        let dir = TempPath::new("missing-dir");
        let path = dir.0.join("sgi.pid");
        match Pidfile::lock(&path) {
            Err(e @ PidfileError::Io { .. }) => {
                assert_eq!(e.to_string(), format!("cannot use pidfile {}", path.display()));
                let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>());
                assert_eq!(source.map(io::Error::kind), Some(io::ErrorKind::NotFound));
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }
}
