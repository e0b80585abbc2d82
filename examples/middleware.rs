//! cargo run --release --example middleware [-- --bind ADDR --runner NAME --workers N ...: --help lists every option]
//!
//! Middleware is a handler that wraps a handler: this one times each request, adds an
//! `X-Response-Time` header and logs one line to `wsgi.errors`. (For an access log, use the
//! server's, `--access-logfile`: it also sees requests refused before any handler, the status
//! actually sent and the time to the last byte, which middleware cannot.)

mod common;

use std::io::Write;
use std::time::Instant;

use sgi::{BoxError, Environ, Handler, Response, StartResponse};

struct Timed<H>(H);

impl<H: Handler> Handler for Timed<H> {
    fn call(&self, env: &mut Environ<'_>, start_response: StartResponse<'_>) -> Result<Response, BoxError> {
        let started = Instant::now();
        let mut response = self.0.call(env, start_response)?;
        let micros = started.elapsed().as_micros();
        response.add_header("X-Response-Time", format!("{micros}us"))?;
        let line =
            format!("{} {} -> {} in {micros}us", env.method(), env.get("RAW_URI").unwrap_or("?"), response.status());
        writeln!(env.errors(), "{line}")?;
        Ok(response)
    }
}

fn main() -> std::process::ExitCode {
    common::serve(Timed(hello()))
}

/// `hello NAME` for `/?NAME`.
fn hello() -> impl Handler {
    sgi::handler_fn(|env, start_response| {
        let name = String::from_utf8_lossy(env.query_string()).into_owned();
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(format!("hello {name}\n")))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use sgi::testing::TestClient;

    #[test]
    fn times_the_response_and_logs_an_access_line() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let config = sgi::Config::default().error_log(move |line| sink.lock().unwrap().push(line.to_owned()));
        let client = TestClient::with_config(super::Timed(super::hello()), config);
        let response = client.get("/greet?ada");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text(), "hello ada\n");
        let took = response.header("X-Response-Time").expect("the header the middleware adds");
        let micros = took.strip_suffix("us").expect("in microseconds");
        assert!(micros.parse::<u64>().is_ok(), "{took}");
        let lines = lines.lock().unwrap();
        assert_eq!(*lines, [format!("GET /greet?ada -> 200 in {took}")]);
    }
}
