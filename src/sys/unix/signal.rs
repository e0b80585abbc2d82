//! Signal handling, done the async-signal-safe way: a handler only sets an atomic and writes one
//! byte to a pipe; all real work happens in the loops that poll that pipe.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// Set by SIGTERM or SIGINT.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);
/// Write end of the pipe SIGTERM / SIGINT wake the server through, or -1.
static STOP_FD: AtomicI32 = AtomicI32::new(-1);
/// Write end of the pipe SIGCHLD wakes the fork runner through, or -1.
static CHILD_FD: AtomicI32 = AtomicI32::new(-1);
/// Write end of the prefork master's signal pipe, or -1: each signal writes its number.
static MASTER_FD: AtomicI32 = AtomicI32::new(-1);

/// Moves on every SIGUSR1: log files are reopened when they see it move.
static LOG_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The signals the prefork master handles.
pub(crate) const MASTER_SIGNALS: [libc::c_int; 10] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCHLD,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

extern "C" fn on_reopen(_: libc::c_int) {
    LOG_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Makes SIGUSR1 ask every log file to reopen (after `logrotate` moved it), instead of ending
/// the process as it does by default.
pub(crate) fn handle_reopen_signal() -> io::Result<()> {
    install(libc::SIGUSR1, on_reopen as *const () as libc::sighandler_t)
}

/// How many times the log files were asked to reopen.
pub(crate) fn log_generation() -> u64 {
    LOG_GENERATION.load(Ordering::SeqCst)
}

/// Asks the log files to reopen, from a loop that saw SIGUSR1 through its pipe.
pub(crate) fn reopen_logs() {
    LOG_GENERATION.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_stop(signal: libc::c_int) {
    if STOP_REQUESTED.swap(true, Ordering::SeqCst) && signal == libc::SIGINT {
        // A second Ctrl-C: the user wants out now.
        super::process::exit_now(130);
    }
    wake(&STOP_FD, 1);
}

extern "C" fn on_child(_: libc::c_int) {
    wake(&CHILD_FD, 1);
}

extern "C" fn on_master(signal: libc::c_int) {
    // Signal numbers fit a byte on Linux (at most 64).
    wake(&MASTER_FD, signal as u8);
}

fn wake(fd: &AtomicI32, byte: u8) {
    let fd = fd.load(Ordering::SeqCst);
    if fd >= 0 {
        let saved = errno();
        // SAFETY: write(2) is async-signal-safe; it writes one byte from a live stack variable.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        set_errno(saved);
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_errno(value: i32) {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = value };
}

fn install(signal: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: the mask is a valid sigset_t inside `action`.
    unsafe { libc::sigfillset(&mut action.sa_mask) };
    // SAFETY: `action` is fully initialised; the handlers above are async-signal-safe.
    syscall!(unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) })?;
    Ok(())
}

/// Makes SIGTERM and SIGINT request a graceful stop by writing to `wake_fd`; a second SIGINT
/// ends the process at once.
pub(crate) fn handle_stop_signals(wake_fd: RawFd) -> io::Result<()> {
    STOP_FD.store(wake_fd, Ordering::SeqCst);
    install(libc::SIGTERM, on_stop as *const () as libc::sighandler_t)?;
    install(libc::SIGINT, on_stop as *const () as libc::sighandler_t)
}

/// Gives SIGTERM and SIGINT their default actions back.
pub(crate) fn restore_stop_signals() {
    let _ = install(libc::SIGTERM, libc::SIG_DFL);
    let _ = install(libc::SIGINT, libc::SIG_DFL);
    STOP_FD.store(-1, Ordering::SeqCst);
}

/// Whether SIGTERM or SIGINT arrived since the handlers were installed.
pub(crate) fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// Makes SIGCHLD write to `wake_fd` (the fork runner's reaping pipe).
pub(crate) fn handle_child_signal(wake_fd: RawFd) -> io::Result<()> {
    CHILD_FD.store(wake_fd, Ordering::SeqCst);
    install(libc::SIGCHLD, on_child as *const () as libc::sighandler_t)
}

/// In a freshly forked child, while signals are still blocked: SIGCHLD back to its default, and
/// stop signals no longer wake the parent's pipe (the child only notes them; the parent tells
/// every child to stop through the shared shutdown pipe).
pub(crate) fn reset_in_child() {
    CHILD_FD.store(-1, Ordering::SeqCst);
    STOP_FD.store(-1, Ordering::SeqCst);
    let _ = install(libc::SIGCHLD, libc::SIG_DFL);
    if MASTER_FD.swap(-1, Ordering::SeqCst) >= 0 {
        // A prefork worker: every master signal back to its default, and no stop seen yet.
        for signal in MASTER_SIGNALS {
            let _ = install(signal, libc::SIG_DFL);
        }
        // The master forwards SIGUSR1 to its workers: a worker reopens its logs, never dies of it.
        let _ = handle_reopen_signal();
        STOP_REQUESTED.store(false, Ordering::SeqCst);
    }
}

/// Makes every signal of [`MASTER_SIGNALS`] write its number to `wake_fd` (the prefork master's
/// signal pipe), replacing the stop handlers.
pub(crate) fn handle_master_signals(wake_fd: RawFd) -> io::Result<()> {
    MASTER_FD.store(wake_fd, Ordering::SeqCst);
    for signal in MASTER_SIGNALS {
        install(signal, on_master as *const () as libc::sighandler_t)?;
    }
    Ok(())
}

/// Gives the master's signals their default actions back.
pub(crate) fn restore_master_signals() {
    for signal in MASTER_SIGNALS {
        let _ = install(signal, libc::SIG_DFL);
    }
    MASTER_FD.store(-1, Ordering::SeqCst);
}

/// Gives SIGCHLD its default action back.
pub(crate) fn restore_child_signal() {
    let _ = install(libc::SIGCHLD, libc::SIG_DFL);
    CHILD_FD.store(-1, Ordering::SeqCst);
}
