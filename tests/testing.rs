//! `sgi::testing` from the outside: what a handler gets and what a test sees of its answer, through
//! the public API only.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sgi::testing::{TestClient, TestRequest};
use sgi::{handler_fn, Body, Config};

/// Logs into a vector instead of standard error.
fn captured_log() -> (Config, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let config = Config::default().error_log(move |line| sink.lock().unwrap().push(line.to_owned()));
    (config, lines)
}

/// Answers with the body it read, and how much that was.
fn echo() -> impl sgi::Handler {
    handler_fn(|env, start_response| {
        let mut body = Vec::new();
        env.input().read_to_end(&mut body)?;
        let length = body.len().to_string();
        Ok(start_response
            .start("200 OK", [("Content-Type", "application/octet-stream"), ("X-Read", &length)])?
            .body(body))
    })
}

/// Answers with the environ variables named in the query, one `NAME=value` line each.
fn vars() -> impl sgi::Handler {
    handler_fn(|env, start_response| {
        let query = String::from_utf8_lossy(env.query_string()).into_owned();
        let mut out = String::new();
        for name in query.split('&').filter(|n| !n.is_empty()) {
            let value = env.get_bytes(name).map(|v| String::from_utf8_lossy(v).into_owned());
            out.push_str(&format!("{name}={}\n", value.as_deref().unwrap_or("<none>")));
        }
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(out))
    })
}

#[test]
fn a_post_body_reaches_the_handler() {
    let client = TestClient::new(echo());
    let response = client.request(TestRequest::post("/upload").body("name=value"));
    assert_eq!(response.status(), 200);
    assert_eq!(response.header("X-Read"), Some("10"));
    assert_eq!(response.header("Content-Length"), Some("10"));
    assert_eq!(response.body(), b"name=value");
    assert!(response.is_complete());
}

#[test]
fn a_body_larger_than_a_read_and_a_chunked_body_arrive_whole() {
    let client = TestClient::new(echo());
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let response = client.request(TestRequest::post("/").body(big.clone()));
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), big);

    let response = client.request(TestRequest::post("/").body("chunked input").chunked());
    assert_eq!(response.header("X-Read"), Some("13"));
    assert_eq!(response.text(), "chunked input");
}

#[test]
fn expect_continue_gets_an_interim_response_before_the_answer() {
    let client = TestClient::new(echo());
    let response = client.request(TestRequest::post("/").header("Expect", "100-continue").body("abc"));
    assert!(response.raw().starts_with(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), "{response:?}");
    assert_eq!((response.status(), response.text()), (200, "abc".into()));
}

#[test]
fn a_streamed_body_is_sent_chunked_and_comes_back_de_chunked() {
    let client = TestClient::new(handler_fn(|_env, start_response| {
        let chunks = (0..100).map(|i| format!("line {i}\n"));
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(Body::from_chunks(chunks)))
    }));
    let response = client.get("/");
    assert_eq!(response.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(response.header("Content-Length"), None);
    let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
    assert_eq!(response.text(), expected);
    assert!(response.is_complete());
    assert!(response.raw().ends_with(b"\r\n0\r\n\r\n"));
}

#[test]
fn a_panic_is_a_500_and_the_client_goes_on() {
    let (config, log) = captured_log();
    let client = TestClient::with_config(
        handler_fn(|env, start_response| {
            if env.path_info() == b"/panic" {
                panic!("on purpose");
            }
            Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("fine"))
        }),
        config,
    );
    let response = client.get("/panic");
    assert_eq!(response.status(), 500);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(log.lock().unwrap().iter().any(|l| l.contains("GET /panic: handler panicked: on purpose")), "{log:?}");
    let response = client.get("/ok");
    assert_eq!((response.status(), response.text()), (200, "fine".into()));
}

#[test]
fn a_body_that_fails_midway_cuts_the_response() {
    let (config, log) = captured_log();
    let client = TestClient::with_config(
        handler_fn(|_env, start_response| {
            let mut n = 0;
            let chunks = std::iter::from_fn(move || {
                n += 1;
                assert!(n < 3, "body panics on purpose");
                Some(format!("chunk {n}\n"))
            });
            Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(Body::from_chunks(chunks)))
        }),
        config,
    );
    let response = client.get("/");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "chunk 1\nchunk 2\n");
    assert!(!response.is_complete());
    assert!(log.lock().unwrap().iter().any(|l| l.contains("response body panicked")), "{log:?}");
}

#[test]
fn an_invalid_response_from_the_handler_is_a_500() {
    let (config, _log) = captured_log();
    let client = TestClient::with_config(
        handler_fn(|env, start_response| {
            let started = match env.path_info() {
                b"/splitting" => start_response.start("200 OK", [("X-Echo", "a\r\nSet-Cookie: evil=1")])?,
                b"/hop-by-hop" => start_response.start("200 OK", [("Connection", "keep-alive")])?,
                b"/status" => start_response.start("20 OK", [("Content-Type", "text/plain")])?,
                _ => start_response.start("200 OK", [("Content-Length", "10")])?,
            };
            Ok(started.body("short"))
        }),
        config,
    );
    for path in ["/splitting", "/hop-by-hop", "/status", "/wrong-length"] {
        let response = client.get(path);
        assert_eq!(response.status(), 500, "{path}: {response:?}");
        assert_eq!(response.header("Set-Cookie"), None);
    }
}

#[test]
fn head_gets_the_headers_without_the_body() {
    let client = TestClient::new(handler_fn(|env, start_response| {
        let body = if env.path_info() == b"/stream" { Body::from_chunks(["a", "b"]) } else { "12345".into() };
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    }));
    let response = client.request(TestRequest::new("HEAD", "/fixed"));
    assert_eq!(response.header("Content-Length"), Some("5"));
    assert!(response.body().is_empty());
    assert!(response.raw().ends_with(b"\r\n\r\n"));
    let response = client.request(TestRequest::new("HEAD", "/stream"));
    assert_eq!(response.status(), 200);
    assert!(response.raw().ends_with(b"\r\n\r\n"), "{response:?}");
    assert!(response.body().is_empty());
}

#[test]
fn the_environ_is_what_a_server_would_build() {
    let client = TestClient::with_config(vars(), Config::default().script_name("/app"));
    let peer: SocketAddr = "192.0.2.7:61000".parse().unwrap();
    let request = TestRequest::get(
        "/app/caf%C3%A9/x?REMOTE_ADDR&REMOTE_PORT&PATH_INFO&SCRIPT_NAME&QUERY_STRING&RAW_URI&HTTP_X_TOKEN&HTTP_ACCEPT\
         &HTTP_HOST&SERVER_NAME&SERVER_PORT&SERVER_PROTOCOL&REQUEST_METHOD&CONTENT_LENGTH&wsgi.url_scheme",
    )
    .header("X-Token", "t0k3n")
    .header("Accept", "text/html")
    .header("Accept", "text/plain")
    .peer(peer);
    let text = client.request(request).text().into_owned();
    let line = |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).unwrap_or("<missing>");
    assert_eq!(line("REMOTE_ADDR"), "192.0.2.7");
    assert_eq!(line("REMOTE_PORT"), "61000");
    assert_eq!(line("SCRIPT_NAME"), "/app");
    assert_eq!(line("PATH_INFO"), "/café/x");
    assert!(line("QUERY_STRING").starts_with("REMOTE_ADDR&REMOTE_PORT&"), "{text}");
    assert!(line("RAW_URI").starts_with("/app/caf%C3%A9/x?REMOTE_ADDR"), "{text}");
    assert_eq!(line("HTTP_X_TOKEN"), "t0k3n");
    assert_eq!(line("HTTP_ACCEPT"), "text/html,text/plain");
    assert_eq!(line("HTTP_HOST"), "localhost");
    assert_eq!(line("SERVER_NAME"), "localhost");
    assert_eq!(line("SERVER_PORT"), "80");
    assert_eq!(line("SERVER_PROTOCOL"), "HTTP/1.1");
    assert_eq!(line("REQUEST_METHOD"), "GET");
    assert_eq!(line("CONTENT_LENGTH"), "<none>");
    assert_eq!(line("wsgi.url_scheme"), "http");

    let client = TestClient::new(vars()).local("203.0.113.5", 8443);
    let text = client.get("/?SERVER_NAME&SERVER_PORT&REMOTE_ADDR").text().into_owned();
    assert_eq!(text, "SERVER_NAME=203.0.113.5\nSERVER_PORT=8443\nREMOTE_ADDR=127.0.0.1\n");
}

#[test]
fn a_form_is_urlencoded_with_its_content_type() {
    let client = TestClient::new(handler_fn(|env, start_response| {
        let mut body = String::new();
        env.input().read_to_string(&mut body)?;
        let answer = format!("{} {}", env.content_type().unwrap_or("?"), body);
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(answer))
    }));
    let response = client.request(TestRequest::post("/").form([("q", "a b"), ("r", "1&2=3")]));
    assert_eq!(response.text(), "application/x-www-form-urlencoded q=a+b&r=1%262%3D3");
}

#[test]
fn requests_the_server_refuses_never_reach_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let (config, log) = captured_log();
    let client = TestClient::with_config(
        handler_fn(move |_env, start_response| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("called"))
        }),
        config.max_body(Some(100)),
    );
    let refused = [
        (TestRequest::get("/").header("Bad Header", "x"), 400),
        (TestRequest::get("/").header("X-Split", "a\nb: c"), 400),
        (TestRequest::get("/a b"), 400),
        (TestRequest::post("/").header("Content-Length", "3").body("abc").chunked(), 400),
        (TestRequest::post("/").body(vec![b'x'; 101]), 413),
        (TestRequest::get("/").header("X-Long", vec![b'a'; 64 * 1024]), 431),
        (TestRequest::get("/").version("HTTP/3.0"), 505),
    ];
    for (request, status) in refused {
        let response = client.request(request.clone());
        assert_eq!(response.status(), status, "{request:?}: {response:?}");
        assert_eq!(response.header("Connection"), Some("close"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(log.lock().unwrap().iter().all(|l| l.starts_with("127.0.0.1:50000: rejected request: ")), "{log:?}");

    // HTTP/1.1 requires Host; only raw bytes can leave it out.
    let raw = client.send_raw(b"GET / HTTP/1.1\r\n\r\n");
    assert!(raw.starts_with(b"HTTP/1.1 400 Bad Request\r\n"), "{}", String::from_utf8_lossy(&raw));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(client.get("/").text(), "called");
}

#[test]
fn send_raw_serves_pipelined_requests_on_one_connection() {
    let client = TestClient::new(vars());
    let mut bytes = TestRequest::get("/?PATH_INFO").to_bytes();
    bytes.extend(TestRequest::post("/?REQUEST_METHOD").body("x").to_bytes());
    let raw = String::from_utf8(client.send_raw(&bytes)).unwrap();
    assert_eq!(raw.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{raw}");
    assert!(raw.contains("\r\n\r\nPATH_INFO=/\nHTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\nREQUEST_METHOD=POST\n"), "{raw}");
}

#[test]
fn http10_gets_a_close_delimited_stream() {
    let client = TestClient::new(handler_fn(|_env, start_response| {
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(Body::from_chunks(["a", "b", "c"])))
    }));
    let response = client.request(TestRequest::get("/").version("HTTP/1.0"));
    assert!(response.raw().starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(response.header("Transfer-Encoding"), None);
    assert_eq!(response.header("Connection"), Some("close"));
    assert_eq!(response.text(), "abc");
}

#[test]
fn wsgi_errors_go_to_the_configured_log() {
    let (config, log) = captured_log();
    let client = TestClient::with_config(
        handler_fn(|env, start_response| {
            use std::io::Write;
            writeln!(env.errors(), "looked at {}", env.get("PATH_INFO").unwrap_or("?"))?;
            Ok(start_response.start("204 No Content", [("X-A", "1")])?.body(""))
        }),
        config,
    );
    let response = client.get("/here");
    assert_eq!(response.status(), 204);
    assert_eq!(*log.lock().unwrap(), ["looked at /here"]);
}

#[test]
fn one_client_serves_many_threads_and_opens_no_descriptor_per_request() {
    let client = TestClient::new(echo());
    let fds = || std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let before = fds();
    std::thread::scope(|s| {
        for t in 0..4 {
            let client = client.clone();
            s.spawn(move || {
                for i in 0..50 {
                    let body = format!("thread {t} request {i}");
                    assert_eq!(client.request(TestRequest::post("/").body(body.clone())).text(), body);
                }
            });
        }
    });
    assert_eq!(fds(), before);
}

#[test]
fn remote_addr_is_the_client_a_trusted_proxy_names() {
    let client = TestClient::new(sgi::handler_fn(|env, start_response| {
        let addr = env.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(addr))
    }));
    // The test client's peer, 127.0.0.1, is a trusted proxy by default.
    assert_eq!(client.get("/").text(), "127.0.0.1:50000");
    let proxied = client.request(TestRequest::get("/").header("X-Forwarded-For", "203.0.113.9:77"));
    assert_eq!(proxied.text(), "203.0.113.9:77");
    let untrusted =
        TestRequest::get("/").header("X-Forwarded-For", "203.0.113.9").peer("192.0.2.5:4000".parse().unwrap());
    assert_eq!(client.request(untrusted).text(), "192.0.2.5:4000");
}
