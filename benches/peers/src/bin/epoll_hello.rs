//! Peer server for benches/wrk.sh, the fastest possible baseline: a minimal hand-written epoll
//! responder on raw libc, with a precomputed response and no HTTP parsing. For every `\r\n\r\n` in
//! the bytes it reads it owes one copy of `RESPONSE`; everything owed after one read goes out in
//! one `write` (a pipelined batch of 16 requests gets its 16 responses in one write). A read with
//! `connection: close` anywhere in its bytes (ASCII case-insensitive) gets its responses, the last
//! one with `Connection: close`, and then the connection is closed.
//!
//! `--workers N` (default 1) threads, each with its own epoll instance and its own non-blocking
//! SO_REUSEPORT listener on the same address (the kernel spreads connections over them); with 1
//! it is single-threaded. Epoll is level-triggered throughout: one `read` per readiness event
//! (whatever is left is reported again by the next `epoll_wait`), and no read until EAGAIN.
//!
//! cargo run --release --bin epoll_hello -- [--bind HOST:PORT] [--workers N]

use std::io;
use std::net::{SocketAddrV4, ToSocketAddrs};

/// Same status, body and header names as hyper_hello's, without its `date` header.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";
/// The last response to a request with `Connection: close` says so, as HTTP/1.1 wants (a client
/// that is not told would send its next request on the connection and find it closed).
const RESPONSE_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: close\r\n\r\nHello, World!";
/// Bytes per `read`. It bounds the responses owed after one read ((READ_SIZE + TAIL) / 4), so the
/// bytes a connection can have waiting for EPOLLOUT (about 320 KiB at worst; nothing is read from
/// it meanwhile).
const READ_SIZE: usize = 16 * 1024;
/// Bytes kept from the end of a read, so a `\r\n\r\n` split across two reads is still found.
const TAIL: usize = 3;
/// epoll token of the listener; a connection's token is `generation << 32 | fd`.
const LISTENER: u64 = u64::MAX;
const CLOSE: &[u8] = b"connection: close";

struct Conn {
    /// Told apart from an earlier connection on the same (closed and reused) fd, whose events may
    /// still be in the batch `epoll_wait` returned.
    generation: u32,
    tail: [u8; TAIL],
    tail_len: usize,
    /// A request asked for `Connection: close`: close once the responses owed are written.
    close: bool,
    /// The unwritten rest of a partial write (then the interest is EPOLLOUT, not EPOLLIN).
    out: Vec<u8>,
    out_pos: usize,
}

struct Worker {
    epoll: i32,
    listener: i32,
    /// Indexed by fd.
    conns: Vec<Option<Conn>>,
    generation: u32,
    /// TAIL bytes for the previous read's tail, then READ_SIZE for the read.
    buf: Vec<u8>,
    /// RESPONSE repeated: the first n * RESPONSE.len() bytes are n responses, written as they are.
    batch: Vec<u8>,
    /// n - 1 responses and RESPONSE_CLOSE, for a batch of n > 1 that ends the connection.
    scratch: Vec<u8>,
}

fn main() {
    let (bind, workers) = options();
    let addr = resolve(&bind);
    // All listeners are bound before any thread starts, so a bind error ends the process at once.
    let listeners: Vec<i32> = (0..workers)
        .map(|_| {
            listen(addr).unwrap_or_else(|e| {
                eprintln!("error: cannot listen on {bind}: {e}");
                std::process::exit(1)
            })
        })
        .collect();
    println!("epoll_hello: serving on http://{addr}/ with {workers} worker thread(s), level-triggered epoll");
    let (first, rest) = listeners.split_first().expect("workers >= 1");
    for &listener in rest {
        std::thread::spawn(move || Worker::new(listener).run());
    }
    // The first worker runs on the main thread: with --workers 1 the process is single-threaded.
    Worker::new(*first).run()
}

fn resolve(bind: &str) -> SocketAddrV4 {
    let addrs = bind.to_socket_addrs().unwrap_or_else(|e| usage(&format!("--bind {bind:?}: {e}")));
    addrs
        .filter_map(|a| match a {
            std::net::SocketAddr::V4(v4) => Some(v4),
            std::net::SocketAddr::V6(_) => None,
        })
        .next()
        .unwrap_or_else(|| usage(&format!("--bind {bind:?}: no IPv4 address")))
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_int_option(fd: i32, level: i32, name: i32, value: i32) -> Result<(), String> {
    // SAFETY: `value` is a live c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_error("setsockopt"))
    }
}

/// A non-blocking IPv4 listener with SO_REUSEADDR and SO_REUSEPORT.
fn listen(addr: SocketAddrV4) -> Result<i32, String> {
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_error("socket"));
    }
    let result = (|| {
        set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        set_int_option(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value, filled in below.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = addr.port().to_be();
        sin.sin_addr = libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() };
        // SAFETY: `sin` is a live sockaddr_in and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last_error("bind"));
        }
        // SAFETY: plain syscall on the socket created above.
        if unsafe { libc::listen(fd, 1024) } != 0 {
            return Err(last_error("listen"));
        }
        Ok(fd)
    })();
    if result.is_err() {
        // SAFETY: fd was returned by socket() above and is not used after this.
        unsafe { libc::close(fd) };
    }
    result
}

/// `write`, retried on EINTR: Ok(bytes written), Ok(0) on EAGAIN, Err on any other error.
/// (Rust's runtime ignores SIGPIPE, so a write to a reset connection is an EPIPE error.)
fn write_fd(fd: i32, bytes: &[u8]) -> Result<usize, ()> {
    loop {
        // SAFETY: `bytes` is a live slice and its length is passed with it.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Ok(0),
            _ => return Err(()),
        }
    }
}

/// Non-overlapping `\r\n\r\n`s in `bytes`, and how many bytes follow the last one's end (all of
/// them if there is none).
fn terminators(bytes: &[u8]) -> (usize, usize) {
    let (mut count, mut end, mut i) = (0, 0, 0);
    while i + 4 <= bytes.len() {
        match bytes[i + 3] {
            b'\n' if &bytes[i..i + 4] == b"\r\n\r\n" => {
                count += 1;
                i += 4;
                end = i;
            }
            b'\r' | b'\n' => i += 1,
            // No match can start at i..=i+3: each would contain byte i+3.
            _ => i += 4,
        }
    }
    (count, bytes.len() - end)
}

fn asks_close(bytes: &[u8]) -> bool {
    bytes.windows(CLOSE.len()).any(|w| w.eq_ignore_ascii_case(CLOSE))
}

impl Worker {
    fn new(listener: i32) -> Worker {
        // SAFETY: plain syscall with a constant flag; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            eprintln!("error: {}", last_error("epoll_create1"));
            std::process::exit(1);
        }
        let mut worker = Worker {
            epoll,
            listener,
            conns: Vec::new(),
            generation: 0,
            buf: vec![0; TAIL + READ_SIZE],
            batch: RESPONSE.repeat(16),
            scratch: Vec::new(),
        };
        if worker.ctl(libc::EPOLL_CTL_ADD, listener, libc::EPOLLIN, LISTENER).is_err() {
            eprintln!("error: {}", last_error("epoll_ctl"));
            std::process::exit(1);
        }
        worker
    }

    fn ctl(&mut self, op: i32, fd: i32, events: i32, token: u64) -> Result<(), ()> {
        let mut event = libc::epoll_event { events: events as u32, u64: token };
        // SAFETY: `event` is a live epoll_event; epoll and fd are descriptors this worker owns.
        let rc = unsafe { libc::epoll_ctl(self.epoll, op, fd, &mut event) };
        if rc == 0 {
            Ok(())
        } else {
            Err(())
        }
    }

    fn run(mut self) -> ! {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            // SAFETY: `events` is a live, writable array of events.len() epoll_events.
            let n = unsafe { libc::epoll_wait(self.epoll, events.as_mut_ptr(), events.len() as i32, -1) };
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                eprintln!("error: {}", last_error("epoll_wait"));
                std::process::exit(1);
            }
            for event in &events[..n as usize] {
                let (flags, token) = (event.events, event.u64);
                if token == LISTENER {
                    self.accept();
                } else {
                    self.ready(token, flags);
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            // SAFETY: listener is this worker's listening socket; null address pointers are allowed.
            let fd = unsafe {
                libc::accept4(
                    self.listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                match errno() {
                    libc::EAGAIN => return,
                    libc::EINTR | libc::ECONNABORTED => continue,
                    _ => {
                        // EMFILE and the like: back off instead of spinning on a ready listener.
                        eprintln!("error: {}", last_error("accept4"));
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        return;
                    }
                }
            }
            let _ = set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
            self.generation = self.generation.wrapping_add(1);
            let token = u64::from(self.generation) << 32 | fd as u64;
            if self.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN, token).is_err() {
                // SAFETY: fd was just returned by accept4 and is not used after this.
                unsafe { libc::close(fd) };
                continue;
            }
            let slot = fd as usize;
            if self.conns.len() <= slot {
                self.conns.resize_with(slot + 1, || None);
            }
            self.conns[slot] = Some(Conn {
                generation: self.generation,
                tail: [0; TAIL],
                tail_len: 0,
                close: false,
                out: Vec::new(),
                out_pos: 0,
            });
        }
    }

    fn close(&mut self, fd: i32) {
        if let Some(slot) = self.conns.get_mut(fd as usize) {
            *slot = None;
        }
        // SAFETY: fd is a connection this worker accepted; its slot is cleared, so it is not used
        // again (closing also removes it from the epoll set).
        unsafe { libc::close(fd) };
    }

    fn ready(&mut self, token: u64, flags: u32) {
        let fd = (token & 0xffff_ffff) as i32;
        let generation = (token >> 32) as u32;
        match self.conns.get(fd as usize) {
            Some(Some(conn)) if conn.generation == generation => {}
            _ => return, // stale: that connection was closed earlier in this batch
        }
        if flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
            self.close(fd);
        } else if flags & libc::EPOLLOUT as u32 != 0 {
            self.flush(fd, token);
        } else if flags & libc::EPOLLIN as u32 != 0 {
            self.read(fd, token);
        }
    }

    fn read(&mut self, fd: i32, token: u64) {
        let Some(Some(conn)) = self.conns.get_mut(fd as usize) else { return };
        let start = TAIL - conn.tail_len;
        self.buf[start..TAIL].copy_from_slice(&conn.tail[..conn.tail_len]);
        let space = &mut self.buf[TAIL..];
        // SAFETY: `space` is a live, writable slice and its length is passed with it.
        let n = unsafe { libc::read(fd, space.as_mut_ptr().cast(), space.len()) };
        if n <= 0 {
            if n < 0 && matches!(errno(), libc::EAGAIN | libc::EINTR) {
                return;
            }
            return self.close(fd); // EOF or error
        }
        let read = &self.buf[TAIL..TAIL + n as usize];
        let window = &self.buf[start..TAIL + n as usize];
        let (count, after) = terminators(window);
        let keep = after.min(TAIL);
        conn.tail[..keep].copy_from_slice(&window[window.len() - keep..]);
        conn.tail_len = keep;
        if asks_close(read) {
            conn.close = true;
        }
        if count == 0 {
            return;
        }
        let len = count * RESPONSE.len();
        while self.batch.len() < len {
            self.batch.extend_from_slice(RESPONSE);
        }
        let bytes = match (conn.close, count) {
            (false, _) => &self.batch[..len],
            (true, 1) => RESPONSE_CLOSE,
            (true, _) => {
                self.scratch.clear();
                self.scratch.extend_from_slice(&self.batch[..len - RESPONSE.len()]);
                self.scratch.extend_from_slice(RESPONSE_CLOSE);
                &self.scratch
            }
        };
        match write_fd(fd, bytes) {
            Err(()) => self.close(fd),
            Ok(written) if written == bytes.len() => {
                if conn.close {
                    self.close(fd);
                }
            }
            Ok(written) => {
                conn.out = bytes[written..].to_vec();
                conn.out_pos = 0;
                if self.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT, token).is_err() {
                    self.close(fd);
                }
            }
        }
    }

    fn flush(&mut self, fd: i32, token: u64) {
        let Some(Some(conn)) = self.conns.get_mut(fd as usize) else { return };
        match write_fd(fd, &conn.out[conn.out_pos..]) {
            Err(()) => self.close(fd),
            Ok(written) => {
                conn.out_pos += written;
                if conn.out_pos < conn.out.len() {
                    return; // still EPOLLOUT
                }
                conn.out = Vec::new();
                conn.out_pos = 0;
                if conn.close || self.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN, token).is_err() {
                    self.close(fd);
                }
            }
        }
    }
}

fn options() -> (String, usize) {
    let mut bind = "127.0.0.1:8003".to_string();
    let mut workers = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--bind", Some(v)) => bind = v,
            ("--workers", Some(v)) => workers = v.parse().unwrap_or_else(|_| usage("--workers takes a number")),
            _ => usage(&format!("unknown or incomplete argument {arg:?}")),
        }
    }
    (bind, workers.max(1))
}

fn usage(problem: &str) -> ! {
    eprintln!("error: {problem}\nusage: epoll_hello [--bind HOST:PORT] [--workers N]");
    std::process::exit(2)
}
