//! `--reload`: a supervisor for development that holds the listening sockets, runs the server
//! as a child that inherits them (systemd's protocol), and restarts it when its executable or
//! another watched file changes. Clients wait in the backlog during a restart: the sockets stay
//! open in the supervisor, so none is refused.

use std::ffi::{CString, OsString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::net::Listener;
use crate::sys::unix::{self, process, signal, WakePipe};

/// Set in the child's environment to the supervisor's pid: the child serves instead of
/// supervising again (its command line still says `--reload`).
pub(crate) const SUPERVISOR_VAR: &str = "SGI_RELOADER_PID";

/// A child that exits with this status asks to be restarted at once (an app that noticed its
/// own configuration change, say); any other exit the supervisor did not ask for waits for the
/// next change of a watched file.
pub const RELOAD_STATUS: i32 = 3;

/// How often the watched files are looked at.
const POLL: Duration = Duration::from_millis(250);

/// What a file looked like: a rebuilt executable gets a new inode, a new size or a new mtime.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Runs the supervisor until `TERM` or `INT`: starts the child on `listeners`, restarts it when
/// one of `watched` (with the executable first) changes. `grace` is how long a child asked to
/// stop may take before it is killed.
///
/// # Errors
/// A process with more than one thread (the supervisor forks), or one that cannot fork or wait.
pub(crate) fn supervise(listeners: Vec<Listener>, extra: Vec<PathBuf>, grace: Duration) -> Result<()> {
    let threads = process::thread_count()?;
    if threads > 1 {
        return Err(Error::NotSingleThreaded(threads));
    }
    // Resolved now: a rebuilt executable replaces the file at this path, and that is the new
    // code the next child runs.
    let exe = std::env::current_exe()?;
    let program = cstring(exe.as_os_str().to_owned())?;
    let argv = std::env::args_os().map(cstring).collect::<std::io::Result<Vec<_>>>()?;
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("LISTEN_") || k == SUPERVISOR_VAR) {
            continue;
        }
        let mut pair = key;
        pair.push("=");
        pair.push(value);
        env.push(cstring(pair)?);
    }
    env.push(cstring(format!("{SUPERVISOR_VAR}={}", std::process::id()).into())?);
    let fds: Vec<_> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
    let mut watched: Vec<PathBuf> = vec![exe];
    watched.extend(extra);
    let mut stamps: Vec<Stamp> = watched.iter().map(stamp).collect();

    let wake = WakePipe::new()?;
    signal::handle_stop_signals(wake.write_fd())?;
    signal::handle_child_signal(wake.write_fd())?;
    let log = |message: &str| eprintln!("[sgi reload] {message}");
    let mut child: Option<libc::pid_t> = None;
    let mut want_child = true;
    // Asked to stop for a restart, and since when (to kill it past the grace period).
    let mut stopping: Option<Instant> = None;
    // A change seen, waiting for the files to be still for one poll (a build still writing).
    let mut changed_at: Option<Vec<Stamp>> = None;
    let result = loop {
        if child.is_none() && want_child {
            match process::spawn_with_listeners(&program, &argv, &env, &fds, true) {
                Ok(pid) => child = Some(pid),
                Err(e) => break Err(e.into()),
            }
        }
        unix::wait_readable(&[wake.read_fd()], Some(POLL))?;
        wake.drain();
        process::reap(|exit| {
            if Some(exit.pid) != child {
                return;
            }
            child = None;
            let code = exit.code();
            if stopping.take().is_some() {
                want_child = true;
            } else if code == RELOAD_STATUS {
                log("the server asked to be restarted");
                want_child = true;
            } else {
                log(&format!("the server exited with status {code}; it restarts on the next change"));
                want_child = false;
            }
        });
        if signal::stop_requested() {
            break Ok(());
        }
        if let (Some(pid), Some(since)) = (child, stopping) {
            if since.elapsed() > grace {
                process::kill(pid, libc::SIGKILL);
            }
        }
        let now: Vec<Stamp> = watched.iter().map(stamp).collect();
        if now != stamps {
            if changed_at.as_ref() == Some(&now) {
                // Still for one poll: restart.
                let which: Vec<String> = watched
                    .iter()
                    .zip(stamps.iter().zip(&now))
                    .filter(|(_, (was, is))| was != is)
                    .map(|(p, _)| p.display().to_string())
                    .collect();
                log(&format!("{} changed: restarting the server", which.join(", ")));
                stamps = now;
                changed_at = None;
                want_child = true;
                if let Some(pid) = child.filter(|_| stopping.is_none()) {
                    stopping = Some(Instant::now());
                    process::kill(pid, libc::SIGTERM);
                }
            } else {
                changed_at = Some(now);
            }
        }
    };
    // Stopping: the child finishes its requests, within the grace period.
    if let Some(pid) = child {
        process::kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        let mut gone = false;
        while !gone {
            if Instant::now() > deadline {
                process::kill(pid, libc::SIGKILL);
            }
            let _ = unix::wait_readable(&[wake.read_fd()], Some(Duration::from_millis(50)));
            wake.drain();
            process::reap(|exit| gone |= exit.pid == pid);
        }
    }
    signal::restore_stop_signals();
    signal::restore_child_signal();
    drop(listeners);
    result
}

fn cstring(s: OsString) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| std::io::Error::other("an argument or variable holds a NUL byte"))
}
