//! Processes: fork, reaping, signalling, `_exit`, and the single-thread check fork needs.

use std::io;

/// Which side of a fork we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forked {
    Parent { child: libc::pid_t },
    Child,
}

/// Forks the process, with every signal blocked across the call so that no handler runs in the
/// child before it has reset them (gunicorn #1910); `in_child` runs in the child while signals are
/// still blocked. The caller must be single-threaded ([`thread_count`]).
pub(crate) fn fork(in_child: impl FnOnce()) -> io::Result<Forked> {
    let mut all: libc::sigset_t = empty_sigset();
    let mut old: libc::sigset_t = empty_sigset();
    // SAFETY: `all` is a valid sigset_t for sigfillset to initialise.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: both sets are valid; blocking signals in the calling thread has no other effect.
    syscall!(unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) })?;
    // SAFETY: the process is single-threaded (the runners check it before forking), so the child
    // starts with a consistent heap and no lock held by a thread that does not exist there.
    let pid = unsafe { libc::fork() };
    let result = match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            in_child();
            Ok(Forked::Child)
        }
        child => Ok(Forked::Parent { child }),
    };
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    result
}

fn empty_sigset() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set it is given.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        set.assume_init()
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exit {
    pub pid: libc::pid_t,
    pub status: libc::c_int,
}

impl Exit {
    /// The exit code, or `128 + signal` for a child killed by a signal (as shells report it).
    pub(crate) fn code(self) -> i32 {
        if libc::WIFEXITED(self.status) {
            libc::WEXITSTATUS(self.status)
        } else if libc::WIFSIGNALED(self.status) {
            128 + libc::WTERMSIG(self.status)
        } else {
            -1
        }
    }
}

/// Reaps every child that has exited, without waiting (`waitpid(-1, WNOHANG)` until none is left).
pub(crate) fn reap(mut on_exit: impl FnMut(Exit)) {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid int for waitpid to write.
        match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
            0 => return,
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            -1 => return, // ECHILD: no children left
            pid => on_exit(Exit { pid, status }),
        }
    }
}

/// Sends `signal` to process `pid`; a process that is already gone is not an error.
pub(crate) fn kill(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; pid is one of our children.
    unsafe { libc::kill(pid, signal) };
}

/// Ends the process at once, without running destructors or `atexit` handlers: what a forked
/// child must do, so it never flushes or frees state it shares with the parent.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Number of threads in this process, from `/proc/self/status` (Linux), or from `/proc/self/task`.
pub(crate) fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .map_or_else(|| Ok(std::fs::read_dir("/proc/self/task")?.count()), Ok)
}

/// Waits (blocking) for one of `children` to exit and removes it from the set.
pub(crate) fn wait_for(children: &mut std::collections::HashSet<libc::pid_t>) {
    let mut status = 0;
    // SAFETY: `status` is a valid int for waitpid to write.
    match unsafe { libc::waitpid(-1, &mut status, 0) } {
        -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
        -1 => children.clear(), // ECHILD: none left
        pid => {
            children.remove(&pid);
        }
    }
}

/// In a forked worker: be sent SIGTERM when the process that forked it dies, and exit at once
/// if it died already (before the request could take effect). Linux's `PR_SET_PDEATHSIG`.
pub(crate) fn die_with_parent(parent: libc::pid_t) {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        exit_now(0);
    }
}

/// This process's id.
pub(crate) fn pid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}
