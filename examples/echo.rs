//! cargo run --release --example echo [-- --bind ADDR --runner NAME --workers N ...: --help lists every option]
//!
//! Streams the request body back, chunked, as it is read: try
//! `curl -T- http://127.0.0.1:8000/ < some-file`.

mod common;

use std::io::Read;

fn main() -> std::process::ExitCode {
    let app = sgi::handler_fn(|env, start_response| {
        // The body must be read before the handler returns (the connection is the handler's only
        // while it runs), so read it whole, then stream it back in pieces.
        let mut body = Vec::new();
        env.input().read_to_end(&mut body)?;
        let content_type = env.content_type().unwrap_or("application/octet-stream").to_owned();
        let chunks: Vec<Vec<u8>> = body.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
        Ok(start_response.start("200 OK", [("Content-Type", content_type)])?.body(sgi::Body::from_chunks(chunks)))
    });
    common::serve(app)
}
