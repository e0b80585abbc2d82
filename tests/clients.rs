//! Real clients against the in-process server: `curl` and Python's `http.client` and
//! `urllib.request`. Both programs are required (CI installs them): a missing one fails the test
//! with a message saying so, it does not skip it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use sgi::debug::EnvironDump;
use sgi::{handler_fn, Body, Handler, ShutdownHandle};

/// A server on an ephemeral port, serving in its own thread until dropped.
struct TestServer {
    addr: SocketAddr,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<sgi::Result<()>>>,
}

impl TestServer {
    fn start(handler: impl Handler) -> TestServer {
        let server = sgi::Server::bind("127.0.0.1:0").expect("bind");
        let addr = server.local_addr().expect("local_addr");
        let stop = server.shutdown_handle();
        let thread = Some(std::thread::spawn(move || server.serve(handler)));
        TestServer { addr, stop, thread }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            if !std::thread::panicking() {
                result.expect("server thread panicked").expect("server returned an error");
            }
        }
    }
}

/// Streams the request body back, chunked (the response has no `Content-Length`), with the
/// request's `Content-Type` and the length it read in `X-Body-Length`.
fn echo() -> impl Handler {
    handler_fn(|env, start_response| {
        let mut body = Vec::new();
        env.input().read_to_end(&mut body)?;
        let content_type = env.content_type().unwrap_or("application/octet-stream").to_owned();
        let len = body.len().to_string();
        let chunks: Vec<Vec<u8>> = body.chunks(1000).map(<[u8]>::to_vec).collect();
        Ok(start_response
            .start("200 OK", [("Content-Type", content_type), ("X-Body-Length", len)])?
            .body(Body::from_chunks(chunks)))
    })
}

/// Runs a required external program; panics with a clear message when it is not installed.
fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!(
            "`{program}` is required by tests/clients.rs and could not be run ({e}); install it \
             (CI installs curl and python3)"
        )
    });
    assert!(
        output.status.success(),
        "{program} {args:?} failed with {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn curl(args: &[&str]) -> Output {
    let mut all = vec!["--silent", "--show-error", "--max-time", "30"];
    all.extend_from_slice(args);
    run("curl", &all)
}

fn python(script: &str, args: &[&str]) -> Output {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    run("python3", &all)
}

/// A file in a temporary directory with `contents`, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> TempFile {
        let dir = std::env::temp_dir().join(format!("sgi-clients-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join(name);
        std::fs::File::create(&path).and_then(|mut f| f.write_all(contents)).expect("write temp file");
        TempFile(path)
    }

    /// The `@path` argument curl's `--data-binary` takes.
    fn at(&self) -> String {
        format!("@{}", self.0.display())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        // Fails while other tests' files are still there; the last one out removes it.
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Every byte value, then a pattern: `len` bytes that survive no accidental text conversion.
fn binary_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| if i < 256 { i as u8 } else { (i * 31 % 251) as u8 }).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One `EnvironDump` response body.
fn dump(json: &[u8]) -> Value {
    serde_json::from_slice(json)
        .unwrap_or_else(|e| panic!("not an EnvironDump response ({e}): {}", String::from_utf8_lossy(json)))
}

/// Several `EnvironDump` bodies written one after the other (curl with two URLs).
fn dumps(json: &[u8]) -> Vec<Value> {
    serde_json::Deserializer::from_slice(json)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not EnvironDump responses ({e}): {}", String::from_utf8_lossy(json)))
}

fn var<'v>(dump: &'v Value, key: &str) -> Option<&'v str> {
    dump["environ"].get(key).map(|v| v.as_str().expect("environ values are strings"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn curl_get() {
    let server = TestServer::start(EnvironDump);
    let out = curl(&["-H", "X-Custom: one", "-H", "X-Custom: two", &server.url("/caf%C3%A9/x?a=1&b=%20")]);
    let d = dump(&out.stdout);
    assert_eq!(var(&d, "REQUEST_METHOD"), Some("GET"));
    // Percent-decoded bytes, shown one character per byte (latin-1, as WSGI does).
    assert_eq!(var(&d, "PATH_INFO"), Some("/caf\u{c3}\u{a9}/x"));
    assert_eq!(var(&d, "QUERY_STRING"), Some("a=1&b=%20"));
    assert_eq!(var(&d, "RAW_URI"), Some("/caf%C3%A9/x?a=1&b=%20"));
    assert_eq!(var(&d, "SERVER_PROTOCOL"), Some("HTTP/1.1"));
    assert_eq!(var(&d, "SERVER_NAME"), Some("127.0.0.1"));
    assert_eq!(var(&d, "SERVER_PORT"), Some(server.addr.port().to_string().as_str()));
    assert_eq!(var(&d, "REMOTE_ADDR"), Some("127.0.0.1"));
    assert_eq!(var(&d, "HTTP_HOST"), Some(server.addr.to_string().as_str()));
    assert_eq!(var(&d, "HTTP_X_CUSTOM"), Some("one,two"));
    assert!(var(&d, "HTTP_USER_AGENT").is_some_and(|ua| ua.starts_with("curl/")));
    assert_eq!(var(&d, "CONTENT_LENGTH"), None);
    assert_eq!(d["body_hex"], "");
}

#[test]
fn curl_http10() {
    let server = TestServer::start(EnvironDump);
    let out = curl(&["--http1.0", "--include", &server.url("/ten")]);
    let text = String::from_utf8(out.stdout).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    // A 1.0 client that did not ask for keep-alive gets a closed connection.
    assert!(head.to_ascii_lowercase().contains("\r\nconnection: close"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "{head}");
    let d = dump(body.as_bytes());
    assert_eq!(var(&d, "SERVER_PROTOCOL"), Some("HTTP/1.0"));
    assert_eq!(var(&d, "PATH_INFO"), Some("/ten"));
}

#[test]
fn curl_http10_echo_is_close_delimited() {
    // HTTP/1.0 cannot take a chunked response: the echo's streamed body ends with the connection.
    let server = TestServer::start(echo());
    let payload = binary_payload(5000);
    let file = TempFile::new("http10-echo.bin", &payload);
    let out = curl(&["--http1.0", "--data-binary", &file.at(), "--dump-header", "-", &server.url("/")]);
    let split = out.stdout.windows(4).position(|w| w == b"\r\n\r\n").expect("end of head") + 4;
    let head = String::from_utf8_lossy(&out.stdout[..split]).to_ascii_lowercase();
    assert!(head.contains("connection: close"), "{head}");
    assert!(!head.contains("content-length") && !head.contains("transfer-encoding"), "{head}");
    assert_eq!(&out.stdout[split..], &payload[..]);
}

#[test]
fn curl_data_binary_echo() {
    let server = TestServer::start(echo());
    let payload = binary_payload(70_000);
    let file = TempFile::new("echo.bin", &payload);
    let out = curl(&[
        "--data-binary",
        &file.at(),
        "-H",
        "Content-Type: application/x-test",
        "--dump-header",
        "/dev/stderr",
        &server.url("/echo"),
    ]);
    assert_eq!(out.stdout.len(), payload.len());
    assert!(out.stdout == payload, "echoed body differs");
    let head = stderr(&out).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: application/x-test"), "{head}");
    assert!(head.contains("x-body-length: 70000"), "{head}");
}

#[test]
fn curl_data_binary_dump() {
    let server = TestServer::start(EnvironDump);
    let payload = binary_payload(3000);
    let file = TempFile::new("dump.bin", &payload);
    let out = curl(&["--data-binary", &file.at(), &server.url("/upload")]);
    let d = dump(&out.stdout);
    assert_eq!(var(&d, "REQUEST_METHOD"), Some("POST"));
    assert_eq!(var(&d, "CONTENT_LENGTH"), Some("3000"));
    assert_eq!(var(&d, "CONTENT_TYPE"), Some("application/x-www-form-urlencoded"));
    assert_eq!(d["body_hex"], hex(&payload));
}

#[test]
fn curl_expect_100_continue_is_answered_at_once() {
    let server = TestServer::start(EnvironDump);
    let payload = binary_payload(4096);
    let file = TempFile::new("expect.bin", &payload);
    let started = Instant::now();
    // Were the 100 never sent, curl would wait the full 10 s before uploading anyway.
    let out = curl(&[
        "--verbose",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "10",
        "--data-binary",
        &file.at(),
        &server.url("/expect"),
    ]);
    let elapsed = started.elapsed();
    let log = stderr(&out);
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}: the 100 Continue came late or never\n{log}");
    assert!(log.contains("> Expect: 100-continue"), "{log}");
    assert!(log.contains("< HTTP/1.1 100 Continue"), "{log}");
    let d = dump(&out.stdout);
    assert_eq!(var(&d, "HTTP_EXPECT"), Some("100-continue"));
    assert_eq!(d["body_hex"], hex(&payload));
}

#[test]
fn curl_chunked_upload() {
    let server = TestServer::start(EnvironDump);
    let payload = binary_payload(50_000);
    let file = TempFile::new("chunked.bin", &payload);
    let out =
        curl(&["--verbose", "-H", "Transfer-Encoding: chunked", "--data-binary", &file.at(), &server.url("/chunked")]);
    assert!(stderr(&out).contains("> Transfer-Encoding: chunked"), "{}", stderr(&out));
    let d = dump(&out.stdout);
    assert_eq!(var(&d, "HTTP_TRANSFER_ENCODING"), Some("chunked"));
    assert_eq!(var(&d, "CONTENT_LENGTH"), None);
    assert_eq!(d["body_hex"], hex(&payload));
}

#[test]
fn curl_chunked_upload_echo() {
    let server = TestServer::start(echo());
    let payload = binary_payload(200_000);
    let file = TempFile::new("chunked-echo.bin", &payload);
    let out = curl(&["-H", "Transfer-Encoding: chunked", "--data-binary", &file.at(), &server.url("/")]);
    assert!(out.stdout == payload, "echoed body differs ({} bytes back)", out.stdout.len());
}

#[test]
fn curl_head() {
    let server = TestServer::start(EnvironDump);
    let get = curl(&["--include", &server.url("/same")]);
    let out = curl(&["--head", &server.url("/same")]);
    let head = String::from_utf8(out.stdout).expect("utf-8 head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "a HEAD response has no body: {head:?}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/json"), "{head}");
    assert!(!lower.contains("transfer-encoding"), "{head}");
    // The length a GET would have had (the dump of a HEAD differs from a GET's by one letter per
    // "HEAD"/"GET" and by the client port's digits, so compare with a range).
    let length: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("HEAD response with Content-Length")
        .trim()
        .parse()
        .expect("decimal Content-Length");
    let get_text = String::from_utf8(get.stdout).expect("utf-8 response");
    let get_body = get_text.split_once("\r\n\r\n").expect("head and body").1;
    assert!(length.abs_diff(get_body.len()) <= 8, "HEAD says {length}, GET sent {}", get_body.len());
}

#[test]
fn curl_head_then_get_on_one_connection() {
    // A HEAD response that carried a body would corrupt the next response on the connection.
    let server = TestServer::start(EnvironDump);
    let out = curl(&["--verbose", "--head", &server.url("/one"), "--next", "--verbose", &server.url("/two")]);
    let log = stderr(&out);
    assert!(log.contains("Re-using existing connection"), "{log}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("HEAD response then GET body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(var(&dump(body.as_bytes()), "PATH_INFO"), Some("/two"));
}

#[test]
fn curl_keep_alive_reuses_the_connection() {
    let server = TestServer::start(EnvironDump);
    let out = curl(&["--verbose", &server.url("/first"), &server.url("/second?x")]);
    let log = stderr(&out);
    assert!(log.contains("Re-using existing connection"), "{log}");
    assert!(log.contains("left intact"), "{log}");
    assert_eq!(log.matches("Connected to").count(), 1, "{log}");
    let ds = dumps(&out.stdout);
    assert_eq!(ds.len(), 2);
    assert_eq!(var(&ds[0], "PATH_INFO"), Some("/first"));
    assert_eq!(var(&ds[1], "PATH_INFO"), Some("/second"));
    assert_eq!(var(&ds[1], "QUERY_STRING"), Some("x"));
    // Same client port: the same TCP connection.
    assert_eq!(var(&ds[0], "REMOTE_PORT"), var(&ds[1], "REMOTE_PORT"));
}

#[test]
fn curl_keep_alive_after_uploads() {
    // Bodies framed both ways, then a GET, all on one connection.
    let server = TestServer::start(echo());
    let file = TempFile::new("keepalive.bin", &binary_payload(2000));
    let out = curl(&[
        "--verbose",
        "--data-binary",
        &file.at(),
        &server.url("/1"),
        "--next",
        "--verbose",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &file.at(),
        &server.url("/2"),
        "--next",
        "--verbose",
        &server.url("/3"),
    ]);
    let log = stderr(&out);
    assert_eq!(log.matches("Re-using existing connection").count(), 2, "{log}");
    let payload = binary_payload(2000);
    assert!(out.stdout == [payload.as_slice(), &payload].concat(), "echoed bodies differ");
}

const HTTP_CLIENT_SCRIPT: &str = r#"
import http.client, json, sys

conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=20)
results = []

def exchange(method, url, **kwargs):
    conn.request(method, url, **kwargs)
    resp = conn.getresponse()
    body = resp.read()
    results.append({
        "status": resp.status,
        "version": resp.version,
        "headers": {k.lower(): v for k, v in resp.getheaders()},
        "dump": json.loads(body),
        "will_close": resp.will_close,
    })

exchange("GET", "/get?q=1", headers={"X-Test": "a"})
sock = conn.sock
exchange("POST", "/post", body=b"hello\x00\xffworld", headers={"Content-Type": "application/octet-stream"})
assert conn.sock is sock, "the connection was not reused"
exchange("POST", "/chunked", body=iter([b"first,", b"", b"second,", b"x" * 5000]),
         headers={"Content-Type": "text/plain"}, encode_chunked=True)
assert conn.sock is sock, "the connection was not reused"
for i in range(5):
    exchange("GET", "/again/%d" % i)
    assert conn.sock is sock, "the connection was not reused"
conn.close()
print(json.dumps(results))
"#;

#[test]
fn python_http_client_keep_alive() {
    let server = TestServer::start(EnvironDump);
    let out = python(HTTP_CLIENT_SCRIPT, &[&server.addr.port().to_string()]);
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    assert_eq!(results.len(), 8);
    for r in &results {
        assert_eq!(r["status"], 200);
        assert_eq!(r["version"], 11);
        assert_eq!(r["will_close"], false);
        assert_eq!(r["headers"]["content-type"], "application/json");
    }
    let get = &results[0]["dump"];
    assert_eq!(var(get, "PATH_INFO"), Some("/get"));
    assert_eq!(var(get, "QUERY_STRING"), Some("q=1"));
    assert_eq!(var(get, "HTTP_X_TEST"), Some("a"));
    assert_eq!(var(get, "HTTP_ACCEPT_ENCODING"), Some("identity"));

    let post = &results[1]["dump"];
    assert_eq!(var(post, "REQUEST_METHOD"), Some("POST"));
    assert_eq!(var(post, "CONTENT_LENGTH"), Some("12"));
    assert_eq!(var(post, "CONTENT_TYPE"), Some("application/octet-stream"));
    assert_eq!(post["body_hex"], hex(b"hello\x00\xffworld"));

    let chunked = &results[2]["dump"];
    assert_eq!(var(chunked, "HTTP_TRANSFER_ENCODING"), Some("chunked"));
    assert_eq!(var(chunked, "CONTENT_LENGTH"), None);
    let expected = [b"first,second,".as_slice(), &[b'x'; 5000]].concat();
    assert_eq!(chunked["body_hex"], hex(&expected));

    for (i, r) in results[3..].iter().enumerate() {
        assert_eq!(var(&r["dump"], "PATH_INFO"), Some(format!("/again/{i}").as_str()));
    }
    let port = var(get, "REMOTE_PORT");
    assert!(results.iter().all(|r| var(&r["dump"], "REMOTE_PORT") == port), "one connection for all");
}

const URLLIB_SCRIPT: &str = r#"
import json, sys, urllib.request, urllib.error

base = sys.argv[1]
results = []
with urllib.request.urlopen(base + "/plain?x=%41", timeout=20) as resp:
    results.append({"status": resp.status, "dump": json.loads(resp.read())})
req = urllib.request.Request(base + "/form", data=b"a=1&b=2", method="POST")
with urllib.request.urlopen(req, timeout=20) as resp:
    results.append({"status": resp.status, "dump": json.loads(resp.read())})
req = urllib.request.Request(base + "/put", data=bytes(range(256)) * 10, method="PUT",
                             headers={"Content-Type": "application/x-bin"})
with urllib.request.urlopen(req, timeout=20) as resp:
    results.append({"status": resp.status, "dump": json.loads(resp.read())})
print(json.dumps(results))
"#;

#[test]
fn python_urllib() {
    let server = TestServer::start(EnvironDump);
    let out = python(URLLIB_SCRIPT, &[&server.url("")]);
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from the script");
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r["status"] == 200));

    let get = &results[0]["dump"];
    assert_eq!(var(get, "REQUEST_METHOD"), Some("GET"));
    assert_eq!(var(get, "QUERY_STRING"), Some("x=%41"));
    assert_eq!(var(get, "HTTP_CONNECTION"), Some("close"));
    assert!(var(get, "HTTP_USER_AGENT").is_some_and(|ua| ua.starts_with("Python-urllib/")));

    let form = &results[1]["dump"];
    assert_eq!(var(form, "REQUEST_METHOD"), Some("POST"));
    assert_eq!(var(form, "CONTENT_TYPE"), Some("application/x-www-form-urlencoded"));
    assert_eq!(var(form, "CONTENT_LENGTH"), Some("7"));
    assert_eq!(form["body_hex"], hex(b"a=1&b=2"));

    let put = &results[2]["dump"];
    assert_eq!(var(put, "REQUEST_METHOD"), Some("PUT"));
    assert_eq!(var(put, "CONTENT_LENGTH"), Some("2560"));
    let expected: Vec<u8> = (0..10).flat_map(|_| 0..=255u8).collect();
    assert_eq!(put["body_hex"], hex(&expected));
}

const URLLIB_ECHO_SCRIPT: &str = r#"
import sys, urllib.request
data = bytes((i * 7) % 256 for i in range(100000))
req = urllib.request.Request(sys.argv[1], data=data, headers={"Content-Type": "application/x-echo"})
with urllib.request.urlopen(req, timeout=20) as resp:
    assert resp.headers["Transfer-Encoding"] == "chunked", resp.headers
    assert resp.headers["Content-Type"] == "application/x-echo", resp.headers
    body = resp.read()
assert body == data, (len(body), len(data))
print("ok", len(body))
"#;

#[test]
fn python_urllib_echo_chunked_response() {
    let server = TestServer::start(echo());
    let out = python(URLLIB_ECHO_SCRIPT, &[&server.url("/echo")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 100000");
}
