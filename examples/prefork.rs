//! cargo run --release --example prefork [-- --workers 4 --threads 4 --bind ADDR]
//!
//! A master and worker processes (the prefork runner by default), each worker with state of
//! its own, built after the fork by the handler factory: its pid, when it booted, and how many
//! requests it answered. Send the master `HUP` and the answers come from new workers.
//! - `/`: `worker PID, up Ns, request N`;
//! - `/slow?ms=N`: the same after N ms;
//! - `/crash`: the worker aborts (the master replaces it);
//! - `/grow?mb=N`: the worker keeps N MiB more for good (a leak, for `--max-rss-mb`).
//!
//! `PREFORK_FAIL_IF_EXISTS=PATH`: the factory fails while PATH exists, as a worker that cannot
//! reach its database would (a reload then keeps the old workers).
//!
//! `PREFORK_HOOK_LOG=PATH`: each worker appends `fork PID` to PATH when it starts and `exit PID`
//! when it leaves (the worker hooks).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One worker's state.
struct Worker {
    pid: u32,
    booted: Instant,
    requests: AtomicU64,
    leaked: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl sgi::Handler for Worker {
    fn call(
        &self,
        env: &mut sgi::Environ<'_>,
        start_response: sgi::StartResponse<'_>,
    ) -> Result<sgi::Response, sgi::BoxError> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        match env.path_info() {
            b"/crash" => std::process::abort(),
            b"/grow" => {
                let mb: usize = std::str::from_utf8(env.query_string())
                    .ok()
                    .and_then(|q| q.strip_prefix("mb="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                // Written, so that the pages are resident.
                self.leaked.lock().unwrap_or_else(|e| e.into_inner()).push(vec![1u8; mb << 20]);
            }
            b"/slow" => {
                let ms = std::str::from_utf8(env.query_string())
                    .ok()
                    .and_then(|q| q.strip_prefix("ms="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1000);
                std::thread::sleep(Duration::from_millis(ms));
            }
            _ => {}
        }
        let body = format!("worker {}, up {}s, request {n}\n", self.pid, self.booted.elapsed().as_secs());
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    }
}

fn main() -> std::process::ExitCode {
    let fail_if = std::env::var_os("PREFORK_FAIL_IF_EXISTS");
    let hook_log = std::env::var_os("PREFORK_HOOK_LOG");
    // This example exists to show the prefork runner: it is the default here (`--runner`
    // still chooses another).
    let options = common::options().default_args(["--runner", "prefork"]).server(move |server| {
        let Some(path) = hook_log else { return server };
        let log = move |event: &str| {
            use std::io::Write;
            let line = format!("{event} {}\n", std::process::id());
            let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
            // One write per line with O_APPEND: workers never interleave within a line.
            if let Err(e) = file.and_then(|mut f| f.write_all(line.as_bytes())) {
                eprintln!("cannot write the hook log: {e}");
            }
        };
        let log = std::sync::Arc::new(log);
        let at_exit = std::sync::Arc::clone(&log);
        server.on_worker_fork(move || log("fork")).on_worker_exit(move || at_exit("exit"))
    });
    // Under the prefork runner each worker calls this after the fork.
    options.serve_factory(move || {
        if let Some(path) = &fail_if {
            if std::path::Path::new(path).exists() {
                return Err(format!("{} exists: refusing to boot", path.to_string_lossy()).into());
            }
        }
        Ok(Worker {
            pid: std::process::id(),
            booted: Instant::now(),
            requests: AtomicU64::new(0),
            leaked: std::sync::Mutex::new(Vec::new()),
        })
    })
}
