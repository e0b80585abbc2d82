//! cargo run --release --example stream [-- --bind ADDR --runner NAME --workers N ...: --help lists every option]
//!
//! An iterator body produced over time: ten lines, one every 100 ms, each sent as it is made
//! (`curl -N http://127.0.0.1:8000/` shows them arrive).

mod common;

use std::time::Duration;

fn main() -> std::process::ExitCode {
    common::serve(ticks(Duration::from_millis(100)))
}

/// Ten lines `tick N`, one every `interval`.
fn ticks(interval: Duration) -> impl sgi::Handler {
    sgi::handler_fn(move |_env, start_response| {
        let lines = (1..=10).map(move |i| {
            std::thread::sleep(interval);
            format!("tick {i}\n")
        });
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(sgi::Body::from_chunks(lines)))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sgi::testing::TestClient;

    #[test]
    fn sends_ten_ticks_one_chunk_each() {
        let response = TestClient::new(super::ticks(Duration::ZERO)).get("/");
        assert_eq!(response.status(), 200);
        assert_eq!(response.header("Transfer-Encoding"), Some("chunked"));
        let expected: String = (1..=10).map(|i| format!("tick {i}\n")).collect();
        assert_eq!(response.text(), expected);
        assert!(response.raw().windows(12).any(|w| w == b"\r\n7\r\ntick 1\n"), "one chunk per line");
        assert!(response.is_complete());
    }
}
