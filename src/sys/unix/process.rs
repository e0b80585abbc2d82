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

/// Milliseconds on `CLOCK_MONOTONIC`: the same clock in every process of the machine, so a
/// master can compare the times its workers publish with its own.
pub(crate) fn monotonic_ms() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for clock_gettime to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

/// A few words of memory shared between the process that made them and the children it forks
/// afterwards (an anonymous `MAP_SHARED` mapping): how a prefork worker publishes its liveness
/// to its master.
pub(crate) struct SharedWords {
    words: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
}

// SAFETY: the mapping is only ever accessed through atomics.
unsafe impl Send for SharedWords {}
// SAFETY: as above.
unsafe impl Sync for SharedWords {}

/// Words in a [`SharedWords`].
pub(crate) const SHARED_WORDS: usize = 3;

impl SharedWords {
    pub(crate) fn new() -> io::Result<SharedWords> {
        let len = SHARED_WORDS * std::mem::size_of::<u64>();
        // SAFETY: an anonymous shared mapping with no address hint has no preconditions; the
        // result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let words = std::ptr::NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedWords { words })
    }

    /// Word `i` (below [`SHARED_WORDS`]).
    pub(crate) fn word(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(i < SHARED_WORDS);
        // SAFETY: the mapping holds SHARED_WORDS zero-initialised, page-aligned u64s, valid for
        // as long as `self`; AtomicU64 has the layout of u64.
        unsafe { &*self.words.as_ptr().add(i) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no reference outlives `self`.
        unsafe { libc::munmap(self.words.as_ptr().cast(), SHARED_WORDS * std::mem::size_of::<u64>()) };
    }
}

/// Starts `program` (`argv[0]` included in `argv`) as a child with the environment `env` plus
/// systemd's socket-passing variables: `listeners` on descriptors 3, 4, ... (not close-on-exec
/// there), `LISTEN_FDS`, and `LISTEN_PID` set to the child's own pid between the fork and the
/// `execve`, as the protocol asks. With `die_with_parent`, the child gets `SIGTERM` when this
/// process dies (`PR_SET_PDEATHSIG`, which survives the exec). It exits with 127 if the exec
/// fails. The
/// caller must be single-threaded ([`thread_count`]); between fork and exec the child only makes
/// async-signal-safe calls, on memory prepared before the fork.
pub(crate) fn spawn_with_listeners(
    program: &std::ffi::CStr,
    argv: &[std::ffi::CString],
    env: &[std::ffi::CString],
    listeners: &[std::os::fd::RawFd],
    die_with_parent: bool,
) -> io::Result<libc::pid_t> {
    use std::ffi::CString;
    let count = listeners.len() as libc::c_int;
    let listen_fds = CString::new(format!("LISTEN_FDS={count}")).map_err(io::Error::other)?;
    // The pid's digits are written into this buffer in the child, in place of the zeros.
    let mut listen_pid = *b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0\0";
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(listen_fds.as_ptr());
    let pid_slot = envp.len();
    envp.push(std::ptr::null());
    envp.push(std::ptr::null());
    let argvp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    if listeners.len() > 64 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "more than 64 listeners to pass"));
    }
    let parent = pid();
    // The supervisor's handlers write to its pipe: not from the child, before it execs.
    match fork(super::signal::reset_in_child)? {
        Forked::Parent { child } => Ok(child),
        Forked::Child => {
            // SAFETY: only async-signal-safe calls (prctl, getppid, fcntl, dup2, getpid,
            // sigemptyset, pthread_sigmask, execve, _exit), on memory allocated before the fork
            // that no other thread can touch (there is none); every pointer handed to execve is
            // to a NUL-terminated string in a NULL-terminated array that lives until the call.
            unsafe {
                if die_with_parent {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                    if libc::getppid() != parent {
                        libc::_exit(0);
                    }
                }
                // Out of the way of 3..3+count first, so that moving one never overwrites another.
                let mut moved = [0 as libc::c_int; 64];
                for (slot, &fd) in moved.iter_mut().zip(listeners) {
                    *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3 + count);
                }
                for (i, &fd) in moved.iter().take(listeners.len()).enumerate() {
                    // dup2's copy is not close-on-exec: it is the one the program inherits.
                    if fd < 0 || libc::dup2(fd, 3 + i as libc::c_int) < 0 {
                        libc::_exit(127);
                    }
                }
                let digits_at = b"LISTEN_PID=".len();
                let mut n = libc::getpid() as u32;
                let mut digits = [0u8; 10];
                let mut len = 0;
                loop {
                    digits[len] = b'0' + (n % 10) as u8;
                    len += 1;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                for i in 0..len {
                    listen_pid[digits_at + i] = digits[len - 1 - i];
                }
                let mut envp = envp;
                envp[pid_slot] = listen_pid.as_ptr().cast();
                // The parent blocked every signal around the fork; the program starts unblocked.
                let mut none: libc::sigset_t = empty_sigset();
                libc::sigemptyset(&mut none);
                libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                libc::execve(program.as_ptr(), argvp.as_ptr(), envp.as_ptr());
                libc::_exit(127)
            }
        }
    }
}
