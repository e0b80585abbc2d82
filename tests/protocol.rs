//! HTTP/1.1 connection semantics over real TCP, raw bytes in and out: pipelining, keep-alive,
//! response framing, error handling, draining, `100-continue`, timeouts, identity headers, the
//! mount point and shutdown.

mod support;

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sgi::debug::EnvironDump;
use sgi::{handler_fn, Body, BoxError, Config, Environ, Handler};
use support::{
    parse_responses, parse_responses_to, quiet, raw, raw_unclosed, show, split_head, Client, Framing, Resp, TestServer,
};

const H: &str = "Host: test\r\n";

/// Answers `"METHOD PATH body=BODY"` (the request body read in full), with a Content-Length.
fn echo() -> impl Handler {
    handler_fn(|env, start_response| {
        let mut body = Vec::new();
        env.input().read_to_end(&mut body)?;
        let text = format!("{} {} body={}", env.method(), show(env.path_info()), show(&body));
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(text))
    })
}

/// Answers `"METHOD PATH"` without reading the request body.
fn no_read() -> impl Handler {
    handler_fn(|env, start_response| {
        let text = format!("{} {}", env.method(), show(env.path_info()));
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(text))
    })
}

fn serve(handler: impl Handler) -> TestServer {
    TestServer::spawn(quiet(Config::default()), handler)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\n{H}\r\n")
}

fn bodies(responses: &[Resp]) -> Vec<&str> {
    responses.iter().map(Resp::body_str).collect()
}

fn statuses(responses: &[Resp]) -> Vec<u16> {
    responses.iter().map(|r| r.status).collect()
}

/// Whether a response head (as [`split_head`] gives it) has exactly this line.
fn has_line(head: &str, line: &str) -> bool {
    head.split("\r\n").any(|l| l == line)
}

fn dump_environ(resp: &Resp) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_slice(&resp.body).expect("JSON dump");
    v["environ"].as_object().expect("environ").clone()
}

// ---------------------------------------------------------------------------------------------
// Pipelining and keep-alive
// ---------------------------------------------------------------------------------------------

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = serve(echo());
    let request = format!(
        "{}POST /two HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n3;x=y\r\n!!!\r\n0\r\nT: 1\r\n\r\n\
         GET /three HTTP/1.1\r\n{H}Connection: close\r\n\r\n",
        get("/one")
    );
    // One write; the last request closes, so the server must close on its own.
    let responses = parse_responses(&raw_unclosed(server.addr(), request.as_bytes()));
    assert_eq!(bodies(&responses), ["GET /one body=", "POST /two body=body!!!", "GET /three body="]);
    assert_eq!(statuses(&responses), [200, 200, 200]);
    assert!(!responses[0].closes() && !responses[1].closes());
    assert_eq!(responses[2].header("connection"), Some("close"));
}

#[test]
fn http11_keeps_the_connection_alive_by_default() {
    let server = serve(echo());
    let mut client = Client::connect(server.addr());
    for path in ["/a", "/b", "/c"] {
        let resp = client.send(get(path).as_bytes()).read_response();
        assert_eq!(resp.body_str(), format!("GET {path} body="));
        assert!(!resp.has_header("connection"), "{:?}", resp.headers);
    }
    assert!(!client.poll_for(Duration::from_millis(100)), "the server closed a keep-alive connection");
}

#[test]
fn connection_close_is_honoured() {
    let server = serve(echo());
    let mut client = Client::connect(server.addr());
    // A request pipelined behind the closing one is not answered.
    let request = format!("GET /bye HTTP/1.1\r\n{H}Connection: keep-alive, Close\r\n\r\n{}", get("/after"));
    let resp = client.send(request.as_bytes()).read_response();
    assert_eq!(resp.body_str(), "GET /bye body=");
    assert_eq!(resp.header("connection"), Some("close"));
    // Closed by the server, without the client half-closing.
    client.expect_eof();
}

#[test]
fn http10_closes_by_default() {
    let server = serve(echo());
    let mut client = Client::connect(server.addr());
    let resp = client.send(b"GET /old HTTP/1.0\r\n\r\n").read_response();
    assert_eq!(resp.body_str(), "GET /old body=");
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(resp.header("content-length"), Some("14"));
    client.expect_eof();
}

#[test]
fn http10_keeps_alive_when_asked() {
    let server = serve(echo());
    let mut client = Client::connect(server.addr());
    for path in ["/a", "/b"] {
        let resp =
            client.send(format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes()).read_response();
        assert_eq!(resp.body_str(), format!("GET {path} body="));
        assert_eq!(resp.header("connection"), Some("keep-alive"));
        assert_eq!(resp.framing, Framing::Length);
    }
    let resp = client.send(b"GET /c HTTP/1.0\r\n\r\n").read_response();
    assert_eq!(resp.header("connection"), Some("close"));
    client.expect_eof();
}

#[test]
fn max_requests_per_connection_closes_after_the_last() {
    let server = TestServer::spawn(quiet(Config::default().max_requests_per_connection(2)), echo());
    let request = [get("/1"), get("/2"), get("/3")].concat();
    let responses = parse_responses(&raw_unclosed(server.addr(), request.as_bytes()));
    assert_eq!(bodies(&responses), ["GET /1 body=", "GET /2 body="]);
    assert!(!responses[0].closes());
    assert!(responses[1].closes());
}

#[test]
fn nothing_behind_an_invalid_request_is_answered() {
    let server = serve(echo());
    let cases: [(&str, u16); 5] = [
        (&format!("GET /bad HTTP/1.1\r\n{H}Content-Length: +3\r\n\r\nabc"), 400),
        // CL.TE: a front end using Content-Length would forward `GET /admin` as part of the body.
        (&format!("POST /bad HTTP/1.1\r\n{H}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        (&format!("POST /bad HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\nzz\r\n"), 400),
        (&format!("GET /bad HTTP/1.1\r\n{H}X: a\nContent-Length: 0\r\n\r\n"), 400),
        (&format!("GET /bad HTTP/2.0\r\n{H}\r\n"), 505),
    ];
    for (bad, status) in cases {
        // First on its connection, then behind a valid request.
        let bytes = raw_unclosed(server.addr(), [bad.to_owned(), get("/admin")].concat().as_bytes());
        let responses = parse_responses(&bytes);
        assert_eq!(statuses(&responses), [status], "{bad:?}: {}", show(&bytes));
        assert!(responses[0].closes());

        let request = [get("/first"), bad.to_owned(), get("/admin"), get("/last")].concat();
        let bytes = raw_unclosed(server.addr(), request.as_bytes());
        let responses = parse_responses(&bytes);
        assert_eq!(statuses(&responses), [200, status], "{bad:?}: {}", show(&bytes));
        assert_eq!(responses[0].body_str(), "GET /first body=");
        assert!(responses[1].closes());
    }
}

#[test]
fn a_refused_upload_still_gets_its_response() {
    // RFC 9112 §9.6: the server reads on for a while after refusing, so that the client, still
    // busy sending, reads the 413 instead of a connection reset.
    let server = TestServer::spawn(quiet(Config::default().max_body(Some(1000))), echo());
    let body = vec![b'u'; 200_000];
    let request =
        [format!("POST /up HTTP/1.1\r\n{H}Content-Length: {}\r\n\r\n", body.len()).as_bytes(), &body].concat();
    let responses = parse_responses(&raw(server.addr(), &request));
    assert_eq!(statuses(&responses), [413]);
}

#[test]
fn clients_that_vanish_do_not_hold_the_server() {
    let big = bytes::Bytes::from(vec![b'z'; 1 << 20]);
    let server = serve(handler_fn(move |env, start_response| {
        let body: Body = match env.path_info() {
            b"/big" => Body::from_chunks(std::iter::repeat(big.clone()).take(64)),
            _ => "ok".into(),
        };
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    }));
    let t0 = Instant::now();
    for i in 0..10 {
        drop(support::connect(server.addr()));
        let mut half = support::connect(server.addr());
        half.write_all(&get("/").as_bytes()[..7 + i]).unwrap();
        drop(half);
        // Gone in the middle of a 64 MiB response.
        let mut reader = Client::connect(server.addr());
        reader.send(get("/big").as_bytes());
        reader.read_exact_bytes(1000);
        drop(reader);
    }
    assert_eq!(bodies(&parse_responses(&raw(server.addr(), get("/").as_bytes()))), ["ok"]);
    assert!(t0.elapsed() < Duration::from_secs(5), "vanishing clients took {:?}", t0.elapsed());
}

#[test]
fn a_client_that_stops_reading_is_dropped_at_the_write_timeout() {
    let big = bytes::Bytes::from(vec![b'z'; 1 << 20]);
    let config = Config::default().write_timeout(Some(Duration::from_millis(300)));
    let server = TestServer::spawn(
        quiet(config),
        handler_fn(move |env, start_response| {
            let body: Body = match env.path_info() {
                b"/big" => Body::from_chunks(std::iter::repeat(big.clone()).take(256)),
                _ => "ok".into(),
            };
            Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
        }),
    );
    let mut stalled = Client::connect(server.addr());
    stalled.send(get("/big").as_bytes());
    // Never read: the serial runner is stuck writing to it until the write timeout fires.
    let t0 = Instant::now();
    let bytes = raw(server.addr(), get("/").as_bytes());
    assert_eq!(bodies(&parse_responses(&bytes)), ["ok"]);
    assert_between(t0.elapsed(), 200, 5000, "the next client's response");
    drop(stalled);
}

// ---------------------------------------------------------------------------------------------
// Response framing
// ---------------------------------------------------------------------------------------------

#[test]
fn head_gets_the_get_headers_and_no_body() {
    let server = serve(handler_fn(|env, start_response| {
        let body: Body =
            if env.path_info() == b"/stream" { Body::from_chunks(["a", "b"]) } else { "hello world".into() };
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    }));
    let request = format!("HEAD /x HTTP/1.1\r\n{H}\r\n{}HEAD /stream HTTP/1.1\r\n{H}\r\n{}", get("/x"), get("/y"));
    let bytes = raw(server.addr(), request.as_bytes());
    let responses = parse_responses_to(&bytes, &[true, false, true, false]);
    assert_eq!(statuses(&responses), [200, 200, 200, 200], "{}", show(&bytes));
    assert_eq!(responses[0].header("content-length"), Some("11"));
    assert!(responses[0].body.is_empty());
    assert_eq!(responses[1].body_str(), "hello world");
    // Length unknown: no Content-Length, and no chunked framing without a body either.
    assert!(!responses[2].has_header("content-length") && !responses[2].has_header("transfer-encoding"));
    assert_eq!(responses[3].body_str(), "hello world");
}

#[test]
fn no_body_for_204_and_304() {
    let server = serve(handler_fn(|env, start_response| {
        let response = match env.path_info() {
            b"/204" => start_response.start("204 No Content", [("X-A", "1")])?.body("must not be sent"),
            b"/304" => start_response.start("304 Not Modified", [("ETag", "\"v1\"")])?.body("must not be sent"),
            _ => start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("after"),
        };
        Ok(response)
    }));
    let request = [get("/204"), get("/304"), get("/after")].concat();
    let bytes = raw(server.addr(), request.as_bytes());
    assert!(support::find(&bytes, b"must not be sent").is_none(), "{}", show(&bytes));
    let responses = parse_responses(&bytes);
    assert_eq!(statuses(&responses), [204, 304, 200]);
    assert!(!responses[0].has_header("content-length") && !responses[0].has_header("transfer-encoding"));
    assert_eq!(responses[0].header("x-a"), Some("1"));
    assert!(!responses[1].has_header("transfer-encoding"));
    assert_eq!(responses[1].header("etag"), Some("\"v1\""));
    assert_eq!(responses[2].body_str(), "after");
}

#[test]
fn a_body_known_in_full_gets_a_content_length() {
    let server = serve(handler_fn(|env, start_response| {
        let body: Body = match env.path_info() {
            b"/reader" => Body::from_reader(io::Cursor::new(b"12345".to_vec()), Some(5)),
            b"/empty" => Body::empty(),
            _ => "hello world".into(),
        };
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    }));
    let bytes = raw(server.addr(), [get("/bytes"), get("/reader"), get("/empty")].concat().as_bytes());
    let responses = parse_responses(&bytes);
    let lengths: Vec<_> = responses.iter().map(|r| r.header("content-length")).collect();
    assert_eq!(lengths, [Some("11"), Some("5"), Some("0")]);
    assert_eq!(bodies(&responses), ["hello world", "12345", ""]);
    assert!(responses.iter().all(|r| !r.has_header("transfer-encoding")));
}

fn streaming() -> impl Handler {
    handler_fn(|_env, start_response| {
        let body = Body::from_chunks(vec!["abc", "", "defg"]);
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    })
}

#[test]
fn an_iterator_body_is_chunked_on_http11() {
    let server = serve(streaming());
    let bytes = raw_unclosed(server.addr(), format!("GET / HTTP/1.1\r\n{H}Connection: close\r\n\r\n").as_bytes());
    let (head, body) = split_head(&bytes);
    assert!(has_line(&head, "Transfer-Encoding: chunked"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("content-length"), "{head}");
    // The empty chunk is skipped: it would end the body.
    assert_eq!(show(body), show(b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"));
}

#[test]
fn an_iterator_body_is_close_delimited_on_http10() {
    let server = serve(streaming());
    // Even when the client asks for keep-alive: there is no other way to delimit the body.
    let bytes = raw_unclosed(server.addr(), b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let (head, body) = split_head(&bytes);
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("transfer-encoding") && !lower.contains("content-length"), "{head}");
    assert!(has_line(&head, "Connection: close"), "{head}");
    assert_eq!(body, b"abcdefg");
}

#[test]
fn app_content_length_not_met_closes_the_connection() {
    let server = serve(handler_fn(|_env, start_response| {
        let body = Body::from_chunks(vec!["abc"]);
        Ok(start_response.start("200 OK", [("Content-Length", "10")])?.body(body))
    }));
    // Two pipelined requests, no half-close: the server must close after the short body, and
    // never answer the second request on a connection whose framing it broke.
    let bytes = raw_unclosed(server.addr(), [get("/1"), get("/2")].concat().as_bytes());
    let (head, body) = split_head(&bytes);
    assert!(has_line(&head, "Content-Length: 10"), "{head}");
    assert_eq!(show(body), "abc");
}

#[test]
fn app_content_length_shorter_than_the_body_cuts_it() {
    let server = serve(handler_fn(|_env, start_response| {
        Ok(start_response.start("200 OK", [("Content-Length", "3")])?.body(Body::from_chunks(vec!["ab", "cdef"])))
    }));
    let bytes = raw(server.addr(), [get("/1"), get("/2")].concat().as_bytes());
    let responses = parse_responses(&bytes);
    assert_eq!(bodies(&responses), ["abc", "abc"], "{}", show(&bytes));
    assert!(!responses[0].closes());
}

#[test]
fn headers_are_sent_lazily_so_an_early_body_failure_is_a_500() {
    let server = serve(handler_fn(|env, start_response| {
        let started = start_response.start("200 OK", [("X-Started", "yes")])?;
        let body = match env.path_info() {
            b"/fail-first" => Body::from_fallible_chunks(vec![Err::<&str, BoxError>("boom".into())]),
            b"/fail-after-empty" => Body::from_fallible_chunks(vec![Ok(""), Err::<&str, BoxError>("boom".into())]),
            _ => Body::from_chunks((0..2).map(|i| -> &'static str {
                if i == 1 {
                    panic!("body iterator panicked");
                }
                ""
            })),
        };
        Ok(started.body(body))
    }));
    for path in ["/fail-first", "/fail-after-empty", "/panic-after-empty"] {
        let bytes = raw_unclosed(server.addr(), [get(path), get("/never")].concat().as_bytes());
        let responses = parse_responses(&bytes);
        assert_eq!(statuses(&responses), [500], "{path}: {}", show(&bytes));
        assert!(!responses[0].has_header("x-started"), "{path}: the failed response's headers leaked");
        assert!(responses[0].closes());
    }
}

#[test]
fn a_body_failure_after_the_first_chunk_closes_the_connection() {
    let server = serve(handler_fn(|_env, start_response| {
        let body = Body::from_fallible_chunks(vec![Ok("abc"), Err::<&str, BoxError>("boom".into())]);
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    }));
    let bytes = raw_unclosed(server.addr(), [get("/1"), get("/2")].concat().as_bytes());
    let (head, body) = split_head(&bytes);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && has_line(&head, "Transfer-Encoding: chunked"), "{head}");
    // No last chunk: the client can tell the body is incomplete.
    assert_eq!(show(body), show(b"3\r\nabc\r\n"));
}

#[test]
fn a_panicking_handler_gets_a_500_and_the_server_goes_on() {
    let server = serve(handler_fn(|env, start_response| {
        if env.path_info() == b"/panic" {
            panic!("handler panicked on purpose");
        }
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("ok"))
    }));
    let responses = parse_responses(&raw_unclosed(server.addr(), [get("/panic"), get("/never")].concat().as_bytes()));
    assert_eq!(statuses(&responses), [500]);
    assert_eq!(responses[0].body_str(), "internal server error\n");
    assert!(responses[0].closes());
    let responses = parse_responses(&raw(server.addr(), get("/fine").as_bytes()));
    assert_eq!(bodies(&responses), ["ok"]);
}

#[test]
fn a_handler_error_gets_a_500() {
    let server = serve(handler_fn(|env, start_response| {
        if env.path_info() == b"/err" {
            return Err("the application failed".into());
        }
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("ok"))
    }));
    let responses = parse_responses(&raw_unclosed(server.addr(), [get("/err"), get("/never")].concat().as_bytes()));
    assert_eq!(statuses(&responses), [500]);
    assert!(responses[0].closes());
    assert!(!responses[0].body_str().contains("the application failed"), "error details leaked to the client");
    assert_eq!(bodies(&parse_responses(&raw(server.addr(), get("/ok").as_bytes()))), ["ok"]);
}

/// What `start` or `add_header` said, as `Debug`, or `"ok"`.
fn outcome<T>(result: Result<T, sgi::Error>) -> String {
    result.map_or_else(|e| format!("{e:?}"), |_| "ok".to_owned())
}

#[test]
fn response_splitting_is_refused_to_the_handler() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let server = serve(handler_fn(move |env, start_response| {
        if env.path_info() == b"/start" {
            // A refused `start` gives the StartResponse back: the handler answers otherwise.
            return match start_response.start("200 OK", [("X", "a\r\nb")]) {
                Ok(started) => Ok(started.body("ok")),
                Err(refused) => {
                    log.lock().unwrap().push(format!("{:?}", refused.error()));
                    let start_response = refused.into_start_response();
                    Ok(start_response.start("502 Bad Gateway", [("Content-Type", "text/plain")])?.body("refused\n"))
                }
            };
        }
        if env.path_info() == b"/start-question-mark" {
            // `?` turns the refusal into the handler's error: a 500.
            return Ok(start_response.start("200 OK", [("X", "a\r\nb")])?.body("ok"));
        }
        let mut response = start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("");
        let report = [
            outcome(response.add_header("X", "a\r\nb")),
            outcome(response.add_header("X", "a\nSet-Cookie: s=1")),
            outcome(response.add_header("X", "a\0b")),
            outcome(response.add_header("X: y", "v")),
            outcome(response.add_header("X\r\nY", "v")),
            outcome(response.add_header("X-Fine", "v")),
        ]
        .join(" ");
        *response.body_mut() = report.into();
        Ok(response)
    }));
    let responses = parse_responses(&raw(server.addr(), get("/add").as_bytes()));
    assert_eq!(
        responses[0].body_str(),
        "InvalidHeaderValue InvalidHeaderValue InvalidHeaderValue InvalidHeaderName InvalidHeaderName ok"
    );
    assert_eq!(responses[0].headers_named("x"), Vec::<&str>::new());
    assert!(!responses[0].has_header("set-cookie") && !responses[0].has_header("y"));
    assert_eq!(responses[0].header("x-fine"), Some("v"));

    let bytes = raw(server.addr(), get("/start").as_bytes());
    let responses = parse_responses(&bytes);
    assert_eq!(statuses(&responses), [502]);
    assert_eq!(responses[0].body_str(), "refused\n");
    assert!(support::find(&bytes, b"\r\nb").is_none(), "{}", show(&bytes));
    assert_eq!(*seen.lock().unwrap(), ["InvalidHeaderValue"]);

    let bytes = raw(server.addr(), get("/start-question-mark").as_bytes());
    assert_eq!(statuses(&parse_responses(&bytes)), [500]);
    assert!(support::find(&bytes, b"\r\nb").is_none(), "{}", show(&bytes));
}

#[test]
fn hop_by_hop_headers_from_the_application_are_refused() {
    let server = serve(handler_fn(|_env, start_response| {
        let mut response = start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("");
        let names = ["Connection", "keep-alive", "Transfer-Encoding", "TE", "Trailer", "Upgrade", "Proxy-Connection"];
        let report: Vec<String> = names.iter().map(|n| outcome(response.add_header(n, "x"))).collect();
        *response.body_mut() = report.join(" ").into();
        Ok(response)
    }));
    let responses = parse_responses(&raw(server.addr(), get("/").as_bytes()));
    assert_eq!(responses[0].body_str(), ["HopByHopHeader"; 7].join(" "));
    for name in ["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"] {
        assert!(!responses[0].has_header(name), "{name} sent: {:?}", responses[0].headers);
    }
}

#[test]
fn restart_replaces_status_and_headers_before_anything_was_sent() {
    let server = serve(handler_fn(|_env, start_response| {
        let started = start_response.start("200 OK", [("X-First", "1")])?;
        let started = started.restart("503 Service Unavailable", [("Retry-After", "1")])?;
        Ok(started.body("later"))
    }));
    let responses = parse_responses(&raw(server.addr(), get("/").as_bytes()));
    assert_eq!(statuses(&responses), [503]);
    assert_eq!(responses[0].reason, "Service Unavailable");
    assert!(!responses[0].has_header("x-first"));
    assert_eq!(responses[0].header("retry-after"), Some("1"));
}

// ---------------------------------------------------------------------------------------------
// Request bodies: draining, 100-continue, limits
// ---------------------------------------------------------------------------------------------

/// A request body that is itself a request: it must be drained, never parsed.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n";

#[test]
fn an_unread_small_body_is_drained_and_never_parsed() {
    let server = serve(no_read());
    let chunked = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let request = [
        format!("POST /length HTTP/1.1\r\n{H}Content-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
        format!("POST /chunked HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n{chunked}"),
        get("/next"),
    ]
    .concat();
    let responses = parse_responses(&raw(server.addr(), request.as_bytes()));
    assert_eq!(bodies(&responses), ["POST /length", "POST /chunked", "GET /next"]);
    assert!(responses.iter().all(|r| !r.closes()));
}

#[test]
fn an_unread_body_beyond_the_drain_limit_closes_the_connection() {
    let server = TestServer::spawn(quiet(Config::default().drain_limit(1024)), no_read());
    let big = "x".repeat(100_000);
    let request = format!("POST /big HTTP/1.1\r\n{H}Content-Length: {}\r\n\r\n{big}{}", big.len(), get("/next"));
    let bytes = raw(server.addr(), request.as_bytes());
    let responses = parse_responses(&bytes);
    assert_eq!(bodies(&responses), ["POST /big"], "{}", show(&bytes[..bytes.len().min(500)]));
    // The server knows the remainder is too long before it answers, so it says it will close.
    assert!(responses[0].closes(), "{:?}", responses[0].headers);

    let chunks = format!("3e8\r\n{}\r\n", "y".repeat(1000)).repeat(10);
    let request =
        format!("POST /big HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n{}", get("/next"));
    let responses = parse_responses(&raw(server.addr(), request.as_bytes()));
    assert_eq!(bodies(&responses), ["POST /big"]);
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[test]
fn expect_100_continue_is_answered_when_the_handler_reads() {
    let server = serve(echo());
    let mut client = Client::connect(server.addr());
    client.send(format!("POST /up HTTP/1.1\r\n{H}Expect: 100-continue\r\nContent-Length: 5\r\n\r\n").as_bytes());
    assert_eq!(show(&client.read_exact_bytes(CONTINUE.len())), show(CONTINUE));
    let resp = client.send(b"hello").read_response();
    assert_eq!(resp.body_str(), "POST /up body=hello");
    assert!(!resp.closes());
    // The connection goes on.
    assert_eq!(client.send(get("/next").as_bytes()).read_response().body_str(), "GET /next body=");
}

#[test]
fn expect_100_continue_is_not_sent_when_the_handler_answers_without_reading() {
    let server = serve(handler_fn(|_env, start_response| {
        Ok(start_response.start("401 Unauthorized", [("WWW-Authenticate", "Basic")])?.body("who are you?"))
    }));
    let mut client = Client::connect(server.addr());
    client.send(format!("POST /up HTTP/1.1\r\n{H}Expect: 100-continue\r\nContent-Length: 5\r\n\r\n").as_bytes());
    let resp = client.read_response();
    assert_eq!(resp.status, 401, "expected the final response first, no 100 Continue");
    assert_eq!(resp.body_str(), "who are you?");
    // The body may never come: the connection cannot be reused.
    assert!(resp.closes());
    client.expect_eof();
}

#[test]
fn body_limits_give_413() {
    let server = TestServer::spawn(quiet(Config::default().max_body(Some(16))), echo());
    let at_limit = "0123456789abcdef";
    let ok = format!("POST / HTTP/1.1\r\n{H}Content-Length: 16\r\n\r\n{at_limit}");
    assert_eq!(bodies(&parse_responses(&raw(server.addr(), ok.as_bytes()))), [format!("POST / body={at_limit}")]);
    let ok = format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n10\r\n{at_limit}\r\n0\r\n\r\n");
    assert_eq!(bodies(&parse_responses(&raw(server.addr(), ok.as_bytes()))), [format!("POST / body={at_limit}")]);

    let over = format!("POST / HTTP/1.1\r\n{H}Content-Length: 17\r\n\r\n{at_limit}!");
    assert_eq!(statuses(&parse_responses(&raw_unclosed(server.addr(), over.as_bytes()))), [413]);
    let over =
        format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n10\r\n{at_limit}\r\n1\r\n!\r\n0\r\n\r\n");
    let responses = parse_responses(&raw_unclosed(server.addr(), [over, get("/never")].concat().as_bytes()));
    assert_eq!(statuses(&responses), [413]);
    assert!(responses[0].closes());
}

// ---------------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------------

fn assert_between(elapsed: Duration, low_ms: u64, high_ms: u64, what: &str) {
    assert!(
        elapsed >= Duration::from_millis(low_ms) && elapsed <= Duration::from_millis(high_ms),
        "{what} after {elapsed:?}, expected {low_ms}..{high_ms} ms"
    );
}

#[test]
fn an_incomplete_head_gets_408_at_the_header_timeout() {
    let config = Config::default().header_timeout(Some(Duration::from_millis(200)));
    let server = TestServer::spawn(quiet(config), echo());
    let mut client = Client::connect(server.addr());
    let t0 = Instant::now();
    client.send(format!("GET / HTTP/1.1\r\n{H}").as_bytes());
    let resp = client.read_response();
    assert_between(t0.elapsed(), 150, 2000, "408");
    assert_eq!(resp.status, 408);
    assert!(resp.closes());
    client.expect_eof();
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let config = Config::default().keepalive_timeout(Some(Duration::from_millis(300)));
    let server = TestServer::spawn(quiet(config), echo());
    let mut client = Client::connect(server.addr());
    let resp = client.send(get("/").as_bytes()).read_response();
    assert!(!resp.closes());
    let t0 = Instant::now();
    // Closed quietly: an idle connection gets no 408.
    client.expect_eof();
    assert_between(t0.elapsed(), 200, 3000, "close");
}

#[test]
fn a_connection_that_never_sends_is_closed_quietly() {
    let config = Config::default().keepalive_timeout(Some(Duration::from_millis(300)));
    let server = TestServer::spawn(quiet(config), echo());
    let mut client = Client::connect(server.addr());
    let t0 = Instant::now();
    client.expect_eof();
    assert_between(t0.elapsed(), 200, 3000, "close");
    // And the serial runner serves the next client.
    assert_eq!(bodies(&parse_responses(&raw(server.addr(), get("/").as_bytes()))), ["GET / body="]);
}

#[test]
fn a_slowloris_client_gets_408_at_the_deadline() {
    let config = Config::default().header_timeout(Some(Duration::from_millis(500)));
    let server = TestServer::spawn(quiet(config), echo());
    let mut client = Client::connect(server.addr());
    let mut writer = client.stream.try_clone().expect("clone");
    let done = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&done);
    let t0 = Instant::now();
    let trickle = std::thread::spawn(move || {
        let _ = writer.write_all(format!("GET / HTTP/1.1\r\n{H}").as_bytes());
        // A byte every 20 ms: progress all the time, never a complete head.
        for i in 0..150 {
            if stop.load(Ordering::SeqCst) || writer.write_all(&[b'a' + (i % 26) as u8]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let resp = client.read_response();
    let elapsed = t0.elapsed();
    done.store(true, Ordering::SeqCst);
    trickle.join().expect("trickle thread");
    assert_eq!(resp.status, 408);
    assert_between(elapsed, 450, 1500, "408");
    assert!(resp.closes());
}

#[test]
fn a_stalled_body_gets_408_at_the_body_timeout() {
    let config = Config::default().body_timeout(Some(Duration::from_millis(200)));
    let server = TestServer::spawn(quiet(config), echo());
    let mut client = Client::connect(server.addr());
    let t0 = Instant::now();
    client.send(format!("POST / HTTP/1.1\r\n{H}Content-Length: 10\r\n\r\nabc").as_bytes());
    let resp = client.read_response();
    assert_between(t0.elapsed(), 150, 2000, "408");
    assert_eq!(resp.status, 408);
    assert!(resp.closes());
}

// ---------------------------------------------------------------------------------------------
// Identity headers, mount point, shutdown
// ---------------------------------------------------------------------------------------------

fn assert_imf_fixdate(date: &str) {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let b = date.as_bytes();
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let ok = b.len() == 29
        && days.contains(&&date[..3])
        && &date[3..5] == ", "
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b' '
        && months.contains(&&date[8..11])
        && b[11] == b' '
        && b[12..16].iter().all(u8::is_ascii_digit)
        && b[16] == b' '
        && b[17..25].iter().enumerate().all(|(i, c)| if i % 3 == 2 { *c == b':' } else { c.is_ascii_digit() })
        && &date[25..] == " GMT";
    assert!(ok, "Date {date:?} is not an IMF-fixdate");
}

#[test]
fn date_and_server_headers_are_sent() {
    let server = serve(echo());
    let bytes =
        raw(server.addr(), [get("/"), format!("GET / HTTP/1.1\r\n{H}Content-Length: x\r\n\r\n")].concat().as_bytes());
    let responses = parse_responses(&bytes);
    assert_eq!(statuses(&responses), [200, 400]);
    for resp in &responses {
        assert_imf_fixdate(resp.header("date").expect("Date"));
        assert_eq!(resp.header("server"), Some("sgi"));
    }
}

#[test]
fn server_header_none_removes_it() {
    let server = TestServer::spawn(quiet(Config::default().server_header(None)), echo());
    let bytes =
        raw(server.addr(), [get("/"), format!("GET / HTTP/1.1\r\n{H}Content-Length: x\r\n\r\n")].concat().as_bytes());
    let responses = parse_responses(&bytes);
    assert_eq!(statuses(&responses), [200, 400]);
    for resp in &responses {
        assert!(!resp.has_header("server"), "{:?}", resp.headers);
        assert!(resp.has_header("date"));
    }
}

#[test]
fn the_application_date_and_server_headers_win() {
    let server = serve(handler_fn(|_env, start_response| {
        let headers = [("Server", "mine/1.0"), ("Date", "Sun, 06 Nov 1994 08:49:37 GMT")];
        Ok(start_response.start("200 OK", headers)?.body("x"))
    }));
    let responses = parse_responses(&raw(server.addr(), get("/").as_bytes()));
    assert_eq!(responses[0].headers_named("server"), ["mine/1.0"]);
    assert_eq!(responses[0].headers_named("date"), ["Sun, 06 Nov 1994 08:49:37 GMT"]);
}

#[test]
fn script_name_mounts_the_application() {
    let server = TestServer::spawn(quiet(Config::default().script_name("/app/")), EnvironDump);
    let cases =
        [("/app/x/y?q=1", "/app", "/x/y"), ("/app", "/app", ""), ("/app/", "/app", "/"), ("/app%2Fx", "/app", "/x")];
    for (target, script_name, path_info) in cases {
        let responses = parse_responses(&raw(server.addr(), get(target).as_bytes()));
        assert_eq!(statuses(&responses), [200], "{target}");
        let environ = dump_environ(&responses[0]);
        assert_eq!(environ["SCRIPT_NAME"], script_name, "{target}");
        assert_eq!(environ["PATH_INFO"], path_info, "{target}");
    }
    for target in ["/other", "/", "/application", "/ap"] {
        let responses = parse_responses(&raw_unclosed(server.addr(), get(target).as_bytes()));
        assert_eq!(statuses(&responses), [404], "{target}");
    }
}

#[test]
fn shutdown_makes_serve_return_and_closes_idle_connections() {
    let server = serve(echo());
    let mut client = Client::connect(server.addr());
    assert_eq!(client.send(get("/").as_bytes()).read_response().body_str(), "GET / body=");
    // The connection is idle in keep-alive (5 s by default) when the shutdown comes.
    let (result, took) = server.stop();
    result.expect("serve returned an error");
    assert!(took < Duration::from_secs(2), "serve took {took:?} to return");
    client.expect_eof();
}

#[test]
fn shutdown_lets_the_request_in_progress_finish() {
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (started_tx, go_rx) = (Mutex::new(started_tx), Mutex::new(go_rx));
    let server = serve(handler_fn(move |_env: &mut Environ<'_>, start_response| {
        started_tx.lock().unwrap().send(()).unwrap();
        go_rx.lock().unwrap().recv_timeout(Duration::from_secs(5)).unwrap();
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("finished"))
    }));
    let handle = server.shutdown_handle();
    let mut client = Client::connect(server.addr());
    client.send(get("/slow").as_bytes());
    started_rx.recv_timeout(Duration::from_secs(5)).expect("handler started");
    handle.shutdown();
    go_tx.send(()).unwrap();
    let resp = client.read_response();
    assert_eq!(resp.body_str(), "finished");
    assert!(resp.closes(), "the last response before shutdown must say it closes");
    client.expect_eof();
    let (result, _) = server.stop();
    result.expect("serve returned an error");
}
