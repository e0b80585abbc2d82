//! cargo run --example testbed -- [--bind ADDR] [--runner NAME] [--workers N]
//!
//! The application the conformance suite (`tests/conformance.rs`) serves under every runner: one
//! process per test, started with `--runner R --workers W`, so that the fork runner (which refuses
//! a multi-threaded process such as the test harness) is tested exactly like the others.
//!
//! Routes, by `PATH_INFO`:
//! - `/dump`: `sgi::debug::EnvironDump` (`{"environ": {...}, "body_hex": "..."}`);
//! - `/hello`: `Hello, World!`;
//! - `/echo`: the request body, read whole, sent back chunked (`Body::from_chunks`);
//! - `/panic`: the handler panics (the client gets a `500`);
//! - `/error`: the handler returns an error (a `500`);
//! - `/stream?n=N&ms=M`: N lines `line i\n` (i = 1..=N), one every M ms (defaults: 10 and 100);
//! - `/slow?ms=M`: sleeps M ms (default 1000), then `done`;
//! - `/big?mb=N`: N MiB of `x` (default 30), with a `Content-Length`;
//! - `/flags`: `multithread=X multiprocess=Y run_once=Z`, the runner's `wsgi.*` flags;
//! - anything else: `404`.
//!
//! Configuration from the environment, every variable optional (the library's defaults
//! otherwise): `SGI_HEADER_TIMEOUT_MS`, `SGI_KEEPALIVE_TIMEOUT_MS`, `SGI_BODY_TIMEOUT_MS`,
//! `SGI_WRITE_TIMEOUT_MS`, `SGI_MAX_BODY` (bytes), `SGI_MIN_BODY_RATE` (bytes a second) and
//! `SGI_GRACEFUL_TIMEOUT_MS`.

mod common;

use std::io::Read;
use std::process::exit;
use std::time::Duration;

use sgi::{Body, BoxError, Config, Environ, Handler, Response, StartResponse};

/// Largest piece of the echoed body per chunk.
const ECHO_CHUNK: usize = 16 * 1024;

/// A number from the environment variable `name`, if set; exits on a value that is not one.
fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("error: {name}={value:?} is not a number");
            exit(2)
        }
    }
}

fn env_millis(name: &str) -> Option<Duration> {
    env_number(name).map(Duration::from_millis)
}

/// The library's defaults, overridden by whichever `SGI_*` variables are set.
fn config_from_env() -> Config {
    let mut config = Config::new();
    if let Some(t) = env_millis("SGI_HEADER_TIMEOUT_MS") {
        config = config.header_timeout(Some(t));
    }
    if let Some(t) = env_millis("SGI_KEEPALIVE_TIMEOUT_MS") {
        config = config.keepalive_timeout(Some(t));
    }
    if let Some(t) = env_millis("SGI_BODY_TIMEOUT_MS") {
        config = config.body_timeout(Some(t));
    }
    if let Some(t) = env_millis("SGI_WRITE_TIMEOUT_MS") {
        config = config.write_timeout(Some(t));
    }
    if let Some(rate) = env_number("SGI_MIN_BODY_RATE") {
        config = config.min_body_rate(Some(rate));
    }
    if let Some(bytes) = env_number("SGI_MAX_BODY") {
        config = config.max_body(Some(bytes));
    }
    if let Some(t) = env_millis("SGI_GRACEFUL_TIMEOUT_MS") {
        config = config.graceful_timeout(t);
    }
    config
}

/// The value of `key` in a raw query string (`a=1&b=2`), parsed as a number; `default` when it
/// is absent or not a number.
fn query_number(query: &[u8], key: &str, default: u64) -> u64 {
    query
        .split(|&b| b == b'&')
        .filter_map(|pair| {
            let mut parts = pair.splitn(2, |&b| b == b'=');
            (parts.next()? == key.as_bytes()).then(|| parts.next().unwrap_or(b""))
        })
        .find_map(|value| std::str::from_utf8(value).ok()?.parse().ok())
        .unwrap_or(default)
}

struct Testbed;

impl Handler for Testbed {
    fn call(&self, env: &mut Environ<'_>, start_response: StartResponse<'_>) -> Result<Response, BoxError> {
        let text = [("Content-Type", "text/plain")];
        match env.path_info() {
            b"/dump" => sgi::debug::EnvironDump.call(env, start_response),
            b"/hello" => Ok(start_response.start("200 OK", text)?.body("Hello, World!")),
            b"/echo" => {
                let mut body = Vec::new();
                env.input().read_to_end(&mut body)?;
                let chunks: Vec<Vec<u8>> = body.chunks(ECHO_CHUNK).map(<[u8]>::to_vec).collect();
                Ok(start_response
                    .start("200 OK", [("Content-Type", "application/octet-stream")])?
                    .body(Body::from_chunks(chunks)))
            }
            b"/panic" => panic!("testbed: /panic panics on purpose"),
            b"/error" => Err("testbed: /error fails on purpose".into()),
            b"/stream" => {
                let n = query_number(env.query_string(), "n", 10);
                let pause = Duration::from_millis(query_number(env.query_string(), "ms", 100));
                let lines = (1..=n).map(move |i| {
                    std::thread::sleep(pause);
                    format!("line {i}\n")
                });
                Ok(start_response.start("200 OK", text)?.body(Body::from_chunks(lines)))
            }
            b"/slow" => {
                std::thread::sleep(Duration::from_millis(query_number(env.query_string(), "ms", 1000)));
                Ok(start_response.start("200 OK", text)?.body("done"))
            }
            b"/big" => {
                let len = query_number(env.query_string(), "mb", 30) << 20;
                let body = Body::from_reader(std::io::repeat(b'x').take(len), Some(len));
                Ok(start_response.start("200 OK", [("Content-Type", "application/octet-stream")])?.body(body))
            }
            b"/flags" => {
                let flags = env.flags();
                let body = format!(
                    "multithread={} multiprocess={} run_once={}",
                    flags.multithread, flags.multiprocess, flags.run_once
                );
                Ok(start_response.start("200 OK", text)?.body(body))
            }
            _ => Ok(start_response.start("404 Not Found", text)?.body("not found\n")),
        }
    }
}

fn main() -> std::process::ExitCode {
    // Everything before `serve` stays on this one thread: the fork runner requires it.
    common::options().config(config_from_env()).serve(Testbed)
}
