//! cargo run --release --example app [-- --bind ADDR --runner NAME ...: --help lists every option]
//!
//! A small site on the crate's helpers: a form that sets a cookie and redirects (303), a JSON
//! echo, a streamed body and static files (`examples/assets`, under `/static/`).

mod common;

use std::time::Duration;

use sgi::util::{quote, unquote, Form, FormLimits};
use sgi::{BoxError, Environ, Headers, Response, StartResponse, StaticFiles};

fn main() -> std::process::ExitCode {
    match site(Duration::from_millis(200)) {
        Ok(site) => common::serve(site),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The static files under `/static/`, everything else to [`app`]; a stream's lines `tick` apart.
fn site(tick: Duration) -> std::io::Result<StaticFiles> {
    let assets = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/assets");
    let app = move |env: &mut Environ<'_>, start_response: StartResponse<'_>| app(env, start_response, tick);
    Ok(StaticFiles::new(assets)?.prefix("/static").max_age(Some(Duration::from_secs(3600))).fallback(app))
}

fn app(env: &mut Environ<'_>, start_response: StartResponse<'_>, tick: Duration) -> Result<Response, BoxError> {
    match (env.method(), env.path_info()) {
        ("GET", b"/") => {
            let name = cookie(env, "name").unwrap_or_else(|| "stranger".into());
            let page = format!(
                "<!doctype html><link rel=stylesheet href=/static/style.css><p>Hello, {}!</p>\
                 <form method=post action=/name><input name=name><button>Save</button></form>",
                escape_html(&name)
            );
            Ok(start_response.start("200 OK", [("Content-Type", "text/html; charset=utf-8")])?.body(page))
        }
        ("POST", b"/name") => match Form::read_body(env, FormLimits::default()) {
            Ok(form) => {
                let name = form.get("name").unwrap_or("").trim();
                let cookie = format!("name={}; Path=/; HttpOnly; SameSite=Lax", quote(name, b""));
                let headers = Headers::new().add("Location", "/").add("Set-Cookie", cookie);
                Ok(start_response.start("303 See Other", headers)?.body(""))
            }
            Err(e) => Ok(start_response
                .start(&e.status().to_string(), [("Content-Type", "text/plain")])?
                .body(format!("{e}\n"))),
        },
        ("POST", b"/echo") => {
            let mut body = Vec::new();
            std::io::Read::read_to_end(env.input(), &mut body)?;
            let (status, json) = match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(value) => ("200 OK", serde_json::json!({ "echo": value })),
                Err(e) => ("400 Bad Request", serde_json::json!({ "error": e.to_string() })),
            };
            Ok(start_response.start(status, [("Content-Type", "application/json")])?.body(json.to_string()))
        }
        ("GET", b"/stream") => {
            let lines = (1..=5).map(move |i| {
                std::thread::sleep(tick);
                format!("line {i}\n")
            });
            Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(sgi::Body::from_chunks(lines)))
        }
        _ => Ok(start_response.start("404 Not Found", [("Content-Type", "text/plain")])?.body("not found\n")),
    }
}

/// The value of cookie `name` in the request, percent-decoded.
fn cookie(env: &Environ<'_>, name: &str) -> Option<String> {
    let header = std::str::from_utf8(env.header("Cookie")?).ok()?;
    let value = header.split(';').find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))?;
    Some(String::from_utf8_lossy(&unquote(value)).into_owned())
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use sgi::testing::{TestClient, TestRequest};

    fn client() -> TestClient {
        TestClient::new(super::site(std::time::Duration::ZERO).unwrap())
    }

    #[test]
    fn the_form_sets_a_cookie_and_redirects_and_the_page_greets_by_it() {
        let client = client();
        let saved = client.request(TestRequest::post("/name").form([("name", "Ada <L>")]));
        assert_eq!(saved.status(), 303);
        assert_eq!(saved.header("Location"), Some("/"));
        let cookie = saved.header("Set-Cookie").unwrap();
        assert_eq!(cookie, "name=Ada%20%3CL%3E; Path=/; HttpOnly; SameSite=Lax");
        let page = client.request(TestRequest::get("/").header("Cookie", cookie.split(';').next().unwrap()));
        assert!(page.text().contains("Hello, Ada &lt;L&gt;!"), "{}", page.text());
        assert!(client.get("/").text().contains("Hello, stranger!"));
        let wrong = client.request(TestRequest::post("/name").header("Content-Type", "text/plain").body("name=x"));
        assert_eq!(wrong.status(), 415);
    }

    #[test]
    fn json_is_echoed_and_bad_json_is_a_400() {
        let client = client();
        let echoed = client.request(TestRequest::post("/echo").body(r#"{"a":[1,2]}"#));
        assert_eq!((echoed.status(), echoed.text()), (200, r#"{"echo":{"a":[1,2]}}"#.into()));
        assert_eq!(client.request(TestRequest::post("/echo").body("{")).status(), 400);
    }

    #[test]
    fn the_stream_is_chunked_and_static_files_are_served_with_validators() {
        let client = client();
        let stream = client.get("/stream");
        assert_eq!(stream.header("Transfer-Encoding"), Some("chunked"));
        assert_eq!(stream.text().lines().count(), 5);
        let css = client.get("/static/style.css");
        assert_eq!(css.status(), 200);
        assert_eq!(css.header("Content-Type"), Some("text/css; charset=utf-8"));
        assert_eq!(css.header("Cache-Control"), Some("max-age=3600"));
        let etag = css.header("ETag").unwrap().to_owned();
        let again = client.request(TestRequest::get("/static/style.css").header("If-None-Match", etag));
        assert_eq!(again.status(), 304);
        assert_eq!(client.get("/static/../app.rs").status(), 404);
        assert_eq!(client.get("/nothing").status(), 404);
    }
}
