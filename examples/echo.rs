//! cargo run --release --example echo [-- --bind ADDR --runner NAME --workers N ...: --help lists every option]
//!
//! Streams the request body back, chunked, as it is read: try
//! `curl -T- http://127.0.0.1:8000/ < some-file`.

mod common;

use std::io::Read;

fn main() -> std::process::ExitCode {
    common::serve(app())
}

/// The request body back, in chunks of 16 KiB, with the request's `Content-Type`.
fn app() -> impl sgi::Handler {
    sgi::handler_fn(|env, start_response| {
        // The body must be read before the handler returns (the connection is the handler's only
        // while it runs), so read it whole, then stream it back in pieces.
        let mut body = Vec::new();
        env.input().read_to_end(&mut body)?;
        let content_type = env.content_type().unwrap_or("application/octet-stream").to_owned();
        let chunks: Vec<Vec<u8>> = body.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
        Ok(start_response.start("200 OK", [("Content-Type", content_type)])?.body(sgi::Body::from_chunks(chunks)))
    })
}

#[cfg(test)]
mod tests {
    use sgi::testing::{TestClient, TestRequest};

    #[test]
    fn sends_the_body_back_chunked() {
        let client = TestClient::new(super::app());
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
        let response = client.request(TestRequest::post("/").header("Content-Type", "image/png").body(body.clone()));
        assert_eq!(response.status(), 200);
        assert_eq!(response.header("Content-Type"), Some("image/png"));
        assert_eq!(response.header("Transfer-Encoding"), Some("chunked"));
        assert!(response.raw().windows(8).any(|w| w == b"\r\n4000\r\n"), "16 KiB chunks");
        assert_eq!(response.body(), body);
    }

    #[test]
    fn reads_a_chunked_upload_and_defaults_the_content_type() {
        let client = TestClient::new(super::app());
        let response = client.request(TestRequest::new("PUT", "/").body("uploaded").chunked());
        assert_eq!(response.header("Content-Type"), Some("application/octet-stream"));
        assert_eq!(response.text(), "uploaded");
        assert!(client.get("/").body().is_empty());
    }
}
