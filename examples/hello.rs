//! cargo run --release --example hello [-- --bind ADDR --runner NAME --workers N ...: --help lists every option]
//!
//! Serves `Hello, World!` on http://127.0.0.1:8000/ by default.

mod common;

fn main() -> std::process::ExitCode {
    let app = sgi::handler_fn(|_env, start_response| {
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("Hello, World!"))
    });
    common::serve(app)
}
