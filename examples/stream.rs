//! cargo run --release --example stream [-- --bind ADDR --runner NAME --workers N ...: --help lists every option]
//!
//! An iterator body produced over time: ten lines, one every 100 ms, each sent as it is made
//! (`curl -N http://127.0.0.1:8000/` shows them arrive).

mod common;

use std::time::Duration;

fn main() -> std::process::ExitCode {
    let app = sgi::handler_fn(|_env, start_response| {
        let lines = (1..=10).map(|i| {
            std::thread::sleep(Duration::from_millis(100));
            format!("tick {i}\n")
        });
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(sgi::Body::from_chunks(lines)))
    });
    common::serve(app)
}
