//! cargo run --release --example hello [-- --bind ADDR --runner NAME --workers N ...: --help lists every option]
//!
//! Serves `Hello, World!` on http://127.0.0.1:8000/ by default.

mod common;

fn main() -> std::process::ExitCode {
    common::serve(app())
}

/// `Hello, World!` for every request.
fn app() -> impl sgi::Handler {
    sgi::handler_fn(|_env, start_response| {
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("Hello, World!"))
    })
}

#[cfg(test)]
mod tests {
    use sgi::testing::{TestClient, TestRequest};

    #[test]
    fn says_hello_to_every_request() {
        let client = TestClient::new(super::app());
        for request in
            [TestRequest::get("/"), TestRequest::get("/any/path?x=1"), TestRequest::post("/").body("ignored")]
        {
            let response = client.request(request);
            assert_eq!(response.status(), 200);
            assert_eq!(response.header("Content-Type"), Some("text/plain"));
            assert_eq!(response.header("Content-Length"), Some("13"));
            assert_eq!(response.text(), "Hello, World!");
        }
    }
}
