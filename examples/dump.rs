//! cargo run --release --example dump [-- --bind ADDR --runner NAME --workers N ...: --help lists every option]
//!
//! Answers every request with `{"environ": {...}, "body_hex": "..."}`: see `sgi::debug::EnvironDump`
//! for the contract.

mod common;

fn main() -> std::process::ExitCode {
    common::serve(sgi::debug::EnvironDump)
}

#[cfg(test)]
mod tests {
    use sgi::testing::{TestClient, TestRequest};

    #[test]
    fn dumps_the_environ_and_the_body() {
        let client = TestClient::new(sgi::debug::EnvironDump);
        let peer = "198.51.100.9:1234".parse().unwrap();
        let request =
            TestRequest::post("/a%2Fb/c%C3%A9?x=1%202").header("X-Custom", b"caf\xe9").body("hi\n").peer(peer);
        let response = client.request(request);
        assert_eq!(response.status(), 200);
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        let json: serde_json::Value = serde_json::from_slice(response.body()).expect("JSON");
        let environ = &json["environ"];
        assert_eq!(environ["REQUEST_METHOD"], "POST");
        // PATH_INFO is percent-decoded bytes, each shown as one character U+0000..U+00FF.
        assert_eq!(environ["PATH_INFO"], "/a/b/c\u{c3}\u{a9}");
        assert_eq!(environ["QUERY_STRING"], "x=1%202");
        assert_eq!(environ["RAW_URI"], "/a%2Fb/c%C3%A9?x=1%202");
        assert_eq!(environ["CONTENT_LENGTH"], "3");
        assert_eq!(environ["HTTP_X_CUSTOM"], "caf\u{e9}");
        assert_eq!(environ["HTTP_HOST"], "localhost");
        assert_eq!(environ["REMOTE_ADDR"], "198.51.100.9");
        assert_eq!(environ["REMOTE_PORT"], "1234");
        assert_eq!(environ["wsgi.url_scheme"], "http");
        assert_eq!(json["body_hex"], "68690a");
    }
}
