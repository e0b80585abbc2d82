//! The connection state machine in memory: a fake clock, a scripted client, and the real
//! handler interface. No socket, no thread, no sleep.

use std::io::{IoSlice, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::body::Body;
use crate::environ::{BodySource, Environ, Input, RunnerFlags};
use crate::handler::{handler_fn, BoxError, Handler, Response, StartResponse};

/// A client on the other end of an in-memory connection, and the clock.
struct Wire {
    /// What the client sends, in order; each piece arrives in one read at the earliest.
    pieces: Vec<Vec<u8>>,
    next: usize,
    /// Most bytes one read returns.
    read_max: usize,
    /// The client closes its sending side after its last piece.
    half_close: bool,
    /// Most bytes one write takes.
    write_max: usize,
    written: Vec<u8>,
    writes: usize,
    now: Instant,
    /// The client stops reading: writes take nothing.
    reader_stalled: bool,
    /// The client stops reading after this many writes.
    stall_after_writes: Option<usize>,
    shut_down: bool,
    /// [`pump`] returns as soon as the session waits idle for its next request.
    stop_when_idle: bool,
    /// [`pump`] hands a body in one piece over whole ([`Session::respond_whole`]), as the
    /// connection pump does, instead of pulling it.
    whole_bodies: bool,
    /// [`pump`] sends bodies of known length as files go out, outside the output
    /// ([`Session::begin_direct`]).
    direct_bodies: bool,
}

impl Wire {
    fn new(pieces: Vec<Vec<u8>>) -> Wire {
        Wire {
            pieces,
            next: 0,
            read_max: usize::MAX,
            half_close: true,
            write_max: usize::MAX,
            written: Vec::new(),
            writes: 0,
            now: Instant::now(),
            reader_stalled: false,
            stall_after_writes: None,
            shut_down: false,
            stop_when_idle: false,
            whole_bodies: false,
            direct_bodies: false,
        }
    }

    /// One read: what is there, else end of stream, else the clock runs to `deadline`.
    /// Returns false when nothing can ever happen again (no input and no deadline).
    fn read(&mut self, session: &mut Session, deadline: Option<Instant>) -> bool {
        if self.next < self.pieces.len() {
            let piece = &mut self.pieces[self.next];
            let buf = session.read_buf();
            let n = piece.len().min(buf.len()).min(self.read_max);
            buf[..n].copy_from_slice(&piece[..n]);
            piece.drain(..n);
            if piece.is_empty() {
                self.next += 1;
            }
            session.received(n, self.now);
            return true;
        }
        if self.half_close {
            self.half_close = false;
            session.received_eof();
            return true;
        }
        match deadline {
            Some(d) => {
                self.now = self.now.max(d);
                true
            }
            None => false,
        }
    }

    fn write(&mut self, session: &mut Session, deadline: Option<Instant>) -> bool {
        if self.stall_after_writes.is_some_and(|n| self.writes >= n) {
            self.reader_stalled = true;
        }
        if self.reader_stalled {
            return match deadline {
                Some(d) => {
                    self.now = self.now.max(d);
                    true
                }
                None => false,
            };
        }
        let mut slices = [IoSlice::new(&[]); 16];
        let count = session.output(&mut slices);
        let mut n = 0;
        for s in &slices[..count] {
            let take = s.len().min(self.write_max - n);
            self.written.extend_from_slice(&s[..take]);
            n += take;
            if n == self.write_max {
                break;
            }
        }
        self.writes += 1;
        session.wrote(n, self.now);
        true
    }
}

/// Test configuration: defaults, with the log collected instead of printed.
fn config(log: &Arc<Mutex<Vec<String>>>) -> Config {
    let log = Arc::clone(log);
    Config::default().error_log(move |m: &str| log.lock().unwrap().push(m.to_owned()))
}

fn session(config: Config, buffered_body: u64, now: Instant) -> Session {
    let info = ConnInfo::new("127.0.0.1".into(), "8000".into(), "127.0.0.1:50000".parse().ok());
    Session::new(Arc::new(config), info, buffered_body, now)
}

struct MemoryInput<'a> {
    session: &'a mut Session,
    wire: &'a mut Wire,
}

impl BodySource for MemoryInput<'_> {
    fn read_body(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.session.read_body(buf, self.wire.now) {
                BodyRead::Data(n) => return Ok(n),
                BodyRead::End => return Ok(0),
                BodyRead::Failed(e) => return Err(e.into()),
                BodyRead::Flush(deadline) => {
                    self.wire.write(self.session, deadline);
                }
                BodyRead::Read(deadline) => {
                    if !self.wire.read(self.session, deadline) {
                        return Err(std::io::ErrorKind::WouldBlock.into());
                    }
                }
            }
        }
    }
}

/// What a run of the machine did.
#[derive(Debug, Default)]
struct Run {
    shut_down: bool,
    /// The machine was left waiting with nothing that could wake it.
    stuck: bool,
}

/// Pumps `session` against `wire` with `handler` until it closes.
fn pump(session: &mut Session, wire: &mut Wire, handler: &dyn Handler) -> Run {
    let mut run = Run::default();
    let mut body: Option<Body> = None;
    let mut direct = Vec::new();
    for _ in 0..1_000_000 {
        let now = wire.now;
        match session.poll(now) {
            Next::Close => {
                run.shut_down = wire.shut_down;
                return run;
            }
            Next::Request(req) => {
                let mut storage = session.take_response_head();
                let vars = session.take_vars();
                let config = Arc::clone(&session.config);
                let mut source = MemoryInput { session, wire };
                let has_body = req.framing != Framing::Empty;
                let input = Input::new(if has_body { Some(&mut source as &mut dyn BodySource) } else { None });
                let mut env = Environ::new(vars, input, &config, RunnerFlags::default());
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handler.call(&mut env, StartResponse::new(&mut storage))
                }));
                let vars = env.into_vars();
                session.put_vars(vars);
                let now = wire.now;
                match result {
                    Ok(Ok(Response { head, body: b })) => match b.into_bytes() {
                        Ok(bytes) if wire.whole_bodies => session.respond_whole(head, bytes, now),
                        Ok(bytes) => {
                            let b = Body::from(bytes);
                            if session.respond(head, b.len(), now) {
                                body = Some(b);
                            }
                        }
                        Err(b) => {
                            if session.respond(head, b.len(), now) {
                                body = Some(b);
                            }
                        }
                    },
                    Ok(Err(e)) => session.handler_failed(&format!("handler error: {e}"), now),
                    Err(_) => session.handler_failed("handler panicked", now),
                }
            }
            Next::Body if wire.direct_bodies && session.can_send_directly() => {
                // As a file would go out with sendfile: the body's bytes, not through the output.
                let b = body.as_mut().expect("a body while the session wants one");
                while let Ok(Some(chunk)) = b.next_chunk() {
                    direct.extend_from_slice(&chunk);
                }
                session.begin_direct(now);
            }
            Next::SendFile(deadline) => {
                if wire.stall_after_writes.is_some_and(|n| wire.writes >= n) {
                    wire.reader_stalled = true;
                }
                if wire.reader_stalled {
                    let Some(d) = deadline else {
                        run.stuck = true;
                        return run;
                    };
                    wire.now = wire.now.max(d);
                    continue;
                }
                let n = direct.len().min(wire.write_max);
                wire.written.extend(direct.drain(..n));
                wire.writes += 1;
                session.sent_directly(n, now);
                if !session.wants_body() {
                    body = None;
                }
            }
            Next::Body => {
                let b = body.as_mut().expect("a body while the session wants one");
                match b.next_chunk() {
                    Ok(Some(chunk)) => {
                        session.body_chunk(chunk, now);
                        if b.is_done() {
                            session.body_end(now);
                        }
                    }
                    Ok(None) => session.body_end(now),
                    Err(e) => session.body_failed(&format!("{e}"), now),
                }
                if !session.wants_body() {
                    body = None;
                }
            }
            Next::Write(deadline) => {
                if !wire.write(session, deadline) {
                    run.stuck = true;
                    return run;
                }
            }
            Next::Read { deadline, idle } => {
                if idle && wire.stop_when_idle && !wire.written.is_empty() {
                    return run;
                }
                if !wire.read(session, deadline) {
                    run.stuck = true;
                    return run;
                }
            }
            Next::ShutdownWrite => {
                wire.shut_down = true;
                session.shut_down(now);
            }
        }
    }
    panic!("the session never closed");
}

/// A response as the client parses it.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Parsed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Parses every response in `bytes`; `head_requests[i]` says whether the i-th final response
/// answers a HEAD request. Panics on a framing error: that is what the tests look for.
fn parse_responses(mut bytes: &[u8], head_requests: &[bool]) -> Vec<Parsed> {
    let mut out = Vec::new();
    let mut finals = 0;
    while !bytes.is_empty() {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head") + 4;
        let head = std::str::from_utf8(&bytes[..end]).expect("ASCII head");
        bytes = &bytes[end..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next().unwrap()[9..12].parse().expect("status code");
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").expect("name: value");
                (n.to_owned(), v.to_owned())
            })
            .collect();
        let mut parsed = Parsed { status, headers, body: Vec::new() };
        if status < 200 {
            out.push(parsed);
            continue;
        }
        let is_head = head_requests.get(finals).copied().unwrap_or(false);
        finals += 1;
        if !is_head && status != 204 && status != 304 {
            if let Some(len) = parsed.header("content-length") {
                let len: usize = len.parse().expect("numeric Content-Length");
                parsed.body = bytes[..len].to_vec();
                bytes = &bytes[len..];
            } else if parsed.header("transfer-encoding") == Some("chunked") {
                loop {
                    let line_end = bytes.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
                    let size = usize::from_str_radix(std::str::from_utf8(&bytes[..line_end]).unwrap(), 16).unwrap();
                    bytes = &bytes[line_end + 2..];
                    if size == 0 {
                        assert_eq!(&bytes[..2], b"\r\n", "empty trailer");
                        bytes = &bytes[2..];
                        break;
                    }
                    parsed.body.extend_from_slice(&bytes[..size]);
                    assert_eq!(&bytes[size..size + 2], b"\r\n", "chunk data ends in CRLF");
                    bytes = &bytes[size + 2..];
                }
            } else {
                parsed.body = bytes.to_vec();
                bytes = &[];
            }
        }
        out.push(parsed);
    }
    out
}

fn echo() -> impl Handler {
    handler_fn(|env, start_response| {
        let mut body = Vec::new();
        env.input().read_to_end(&mut body)?;
        Ok(start_response.start("200 OK", [("Content-Type", "application/octet-stream")])?.body(body))
    })
}

fn hello() -> impl Handler {
    handler_fn(|_env, start_response| Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("hi")))
}

/// Runs `request` whole and in the given pieces, returning what was written.
fn exchange(config: Config, pieces: Vec<Vec<u8>>, handler: &dyn Handler) -> (Wire, Run) {
    let mut wire = Wire::new(pieces);
    let mut s = session(config, 0, wire.now);
    let run = pump(&mut s, &mut wire, handler);
    (wire, run)
}

fn without_date(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    text.split("\r\n").filter(|l| !l.starts_with("Date: ")).collect::<Vec<_>>().join("\r\n").into_bytes()
}

fn fixtures(kind: &str) -> Vec<(String, Vec<u8>, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/requests").join(kind);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fixture directory") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("http") {
            continue;
        }
        let sibling = if kind == "valid" { path.with_extension("json") } else { path.with_extension("status") };
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        out.push((name, std::fs::read(&path).unwrap(), std::fs::read_to_string(sibling).unwrap()));
    }
    out.sort();
    assert!(out.len() > 20, "fixtures in {}", dir.display());
    out
}

/// Cuts to try for a request: every byte for small ones, about 200 spread over larger ones.
fn cuts(len: usize) -> Vec<usize> {
    let step = (len / 200).max(1);
    (1..len).step_by(step).collect()
}

#[test]
fn every_valid_fixture_whole_and_split_at_every_byte() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler = echo();
    for (name, request, expected) in fixtures("valid") {
        let expected: serde_json::Value = serde_json::from_str(&expected).unwrap();
        let body = expected["body_hex"].as_str().unwrap();
        let interim = expected.get("interim").and_then(|v| v.as_array()).map_or(0, Vec::len);
        let (whole, run) = exchange(config(&log), vec![request.clone()], &handler);
        assert!(!run.stuck, "{name}: stuck");
        let responses = parse_responses(&whole.written, &[]);
        assert_eq!(responses.len(), interim + 1, "{name}: {responses:?}");
        let last = responses.last().unwrap();
        assert_eq!(last.status, 200, "{name}: {}", String::from_utf8_lossy(&last.body));
        let hex: String = last.body.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, body, "{name}");
        for at in cuts(request.len()) {
            let (split, run) = exchange(config(&log), vec![request[..at].to_vec(), request[at..].to_vec()], &handler);
            assert!(!run.stuck, "{name} cut at {at}: stuck");
            assert_eq!(without_date(&split.written), without_date(&whole.written), "{name} cut at {at}");
        }
    }
}

#[test]
fn every_invalid_fixture_whole_and_split_gets_its_status_and_a_close() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler = echo();
    for (name, request, status) in fixtures("invalid") {
        let status: u16 = status.trim().parse().unwrap();
        let mut splits = vec![None];
        splits.extend(cuts(request.len()).into_iter().map(Some));
        for cut in splits {
            let pieces = match cut {
                None => vec![request.clone()],
                Some(at) => vec![request[..at].to_vec(), request[at..].to_vec()],
            };
            let (wire, run) = exchange(config(&log), pieces, &handler);
            assert!(!run.stuck, "{name} {cut:?}: stuck");
            let responses = parse_responses(&wire.written, &[]);
            assert_eq!(responses.len(), 1, "{name} {cut:?}: {responses:?}");
            assert_eq!(
                responses[0].status,
                status,
                "{name} {cut:?}: {:?}",
                String::from_utf8_lossy(&responses[0].body)
            );
            assert_eq!(responses[0].header("connection"), Some("close"), "{name} {cut:?}");
        }
    }
    let log = log.lock().unwrap();
    assert!(log.iter().any(|l| l.starts_with("127.0.0.1:50000: rejected request: 400 ")), "{log:?}");
}

#[test]
fn partial_writes_of_every_size_give_the_same_bytes() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler = handler_fn(|_env, start_response| {
        let chunks = ["a".repeat(10), "b".repeat(20_000), "c".repeat(3)];
        Ok(start_response.start("200 OK", [("X-A", "b")])?.body(Body::from_chunks(chunks)))
    });
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let (whole, _) = exchange(config(&log), vec![request.clone()], &handler);
    let responses = parse_responses(&whole.written, &[]);
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[1].body.len(), 20_013);
    for write_max in [1, 2, 3, 7, 100, 4096, 16_385, 20_000] {
        let mut wire = Wire::new(vec![request.clone()]);
        wire.write_max = write_max;
        let mut s = session(config(&log), 0, wire.now);
        pump(&mut s, &mut wire, &handler);
        assert_eq!(without_date(&wire.written), without_date(&whole.written), "writes of at most {write_max}");
    }
}

#[test]
fn pipelined_responses_are_gathered_into_one_write() {
    let (log, lines) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(16);
    let (wire, _) = exchange(with_access_log(config(&log), &lines, "%(s)s %(B)s"), vec![request], &hello());
    let responses = parse_responses(&wire.written, &[]);
    assert_eq!(responses.len(), 16);
    assert!(responses.iter().all(|r| r.status == 200 && r.body == b"hi"));
    assert_eq!(wire.writes, 1, "16 buffered requests, one write");
    assert_eq!(*lines.lock().unwrap(), ["200 2"; 16]);
}

#[test]
fn a_stream_writes_each_chunk_before_pulling_the_next() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler = handler_fn(|_env, start_response| {
        Ok(start_response.start("200 OK", [("X-A", "b")])?.body(Body::from_chunks(["one", "two", "three"])))
    });
    let (wire, _) = exchange(config(&log), vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()], &handler);
    assert_eq!(parse_responses(&wire.written, &[])[0].body, b"onetwothree");
    assert_eq!(wire.writes, 4, "head with the first chunk, then one write per chunk, the last with the end");
}

#[test]
fn head_and_304_keep_the_declared_length_and_send_no_body() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler = handler_fn(|env, start_response| {
        let status = if env.path_info() == b"/304" { "304 Not Modified" } else { "200 OK" };
        Ok(start_response.start(status, [("Content-Length", "5")])?.body(""))
    });
    let request = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let (wire, _) = exchange(config(&log), vec![request], &handler);
    let responses = parse_responses(&wire.written, &[true, true]);
    assert_eq!(responses.len(), 2, "{:?}", String::from_utf8_lossy(&wire.written));
    assert_eq!(responses[0].header("content-length"), Some("5"));
    assert_eq!(responses[1].status, 304);
    assert!(responses.iter().all(|r| r.body.is_empty()));
}

#[test]
fn a_content_length_that_contradicts_the_body_is_a_500_before_anything_is_sent() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler = handler_fn(|_env, start_response| {
        Ok(start_response.start("200 OK", [("Content-Length", "10")])?.body("short"))
    });
    let (wire, _) = exchange(config(&log), vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()], &handler);
    let responses = parse_responses(&wire.written, &[]);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].status, 500);
    assert!(log.lock().unwrap().iter().any(|l| l.contains("Content-Length 10 but a body of 5 bytes")));
}

#[test]
fn an_error_answer_to_head_has_no_body() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let request = b"HEAD / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec();
    let (wire, _) = exchange(config(&log), vec![request], &hello());
    let text = String::from_utf8_lossy(&wire.written);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after the head: {text:?}");
}

#[test]
fn header_timeout_answers_408_without_lingering() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut wire = Wire::new(vec![b"GET / HTTP/1.1\r\nHo".to_vec()]);
    wire.half_close = false;
    let t0 = wire.now;
    let mut s = session(config(&log).header_timeout(Some(Duration::from_secs(3))), 0, t0);
    let run = pump(&mut s, &mut wire, &hello());
    let responses = parse_responses(&wire.written, &[]);
    assert_eq!(responses[0].status, 408);
    assert_eq!(wire.now - t0, Duration::from_secs(3));
    assert!(!run.shut_down, "a client that timed out is not lingered on");
}

#[test]
fn an_idle_connection_closes_at_the_keepalive_timeout_without_a_word() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut wire = Wire::new(vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]);
    wire.half_close = false;
    let t0 = wire.now;
    let mut s = session(config(&log).keepalive_timeout(Some(Duration::from_secs(7))), 0, t0);
    pump(&mut s, &mut wire, &hello());
    assert_eq!(parse_responses(&wire.written, &[]).len(), 1);
    assert_eq!(wire.now - t0, Duration::from_secs(7));
}

#[test]
fn a_stalled_body_gets_408() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut wire = Wire::new(vec![b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc".to_vec()]);
    wire.half_close = false;
    let t0 = wire.now;
    let config = config(&log).body_timeout(Some(Duration::from_secs(4)));
    let mut s = session(config, 0, t0);
    pump(&mut s, &mut wire, &echo());
    let responses = parse_responses(&wire.written, &[]);
    assert_eq!(responses[0].status, 408, "{responses:?}");
    assert_eq!(wire.now - t0, Duration::from_secs(4));
}

#[test]
fn a_body_slower_than_the_minimum_rate_gets_408_however_big_its_first_burst() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut pieces =
        vec![[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".as_slice(), &[b'x'; 100_000]].concat()];
    pieces.extend((0..100).map(|_| b"y".to_vec()));
    let mut wire = Wire::new(pieces);
    wire.half_close = false;
    let t0 = wire.now;
    let config = config(&log).body_timeout(Some(Duration::from_secs(5))).min_body_rate(Some(500));
    let mut s = session(config, 0, t0);
    // A byte a second after the burst: the clock moves one second before every read.
    let run = loop {
        match s.poll(wire.now) {
            Next::SendFile(_) => unreachable!("nothing is sent from a file here"),
            Next::Request(req) => {
                assert_eq!(req.framing, Framing::Length(1_000_000));
                let mut buf = vec![0; 200_000];
                let failed = loop {
                    match s.read_body(&mut buf, wire.now) {
                        BodyRead::Data(_) => {}
                        BodyRead::Read(deadline) => {
                            if wire.next >= 1 {
                                wire.now += Duration::from_secs(1);
                            }
                            if deadline.is_some_and(|d| d <= wire.now) {
                                continue;
                            }
                            wire.read(&mut s, deadline);
                        }
                        BodyRead::Failed(e) => break e,
                        other => panic!("unexpected {other:?}"),
                    }
                };
                assert_eq!(failed, ParseError::Timeout);
                s.handler_failed("body timed out", wire.now);
            }
            Next::Write(d) => {
                wire.write(&mut s, d);
            }
            Next::Close => break wire.now - t0,
            Next::ShutdownWrite => s.shut_down(wire.now),
            Next::Read { deadline, .. } => {
                if !wire.read(&mut s, deadline) {
                    break wire.now - t0;
                }
            }
            Next::Body => panic!("no body expected"),
        }
    };
    assert_eq!(parse_responses(&wire.written, &[])[0].status, 408);
    // 100 kB buys at most the 5 s cap; a byte a second earns 2 ms each: about 5 s, not 200 s.
    assert!(run < Duration::from_secs(12), "the slow body was held for {run:?}");
}

#[test]
fn a_reader_that_stops_reading_is_dropped_at_the_write_timeout() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut wire = Wire::new(vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]);
    wire.reader_stalled = true;
    let t0 = wire.now;
    let mut s = session(config(&log).write_timeout(Some(Duration::from_secs(9))), 0, t0);
    let run = pump(&mut s, &mut wire, &hello());
    assert!(!run.stuck);
    assert_eq!(wire.now - t0, Duration::from_secs(9));
    assert!(log.lock().unwrap().iter().any(|l| l.contains("write stalled")));
}

#[test]
fn an_unread_body_too_long_to_drain_closes_after_a_linger() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let request = [b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".as_slice(), &[b'x'; 1000]].concat();
    let mut wire = Wire::new(vec![request]);
    wire.half_close = false;
    let t0 = wire.now;
    let mut s = session(config(&log), 0, t0);
    let run = pump(&mut s, &mut wire, &hello());
    let responses = parse_responses(&wire.written, &[]);
    assert_eq!(responses[0].header("connection"), Some("close"));
    assert!(run.shut_down, "the sending side is shut down, then input is read for a while");
    assert_eq!(wire.now - t0, LINGER_TIME);
}

#[test]
fn a_small_unread_body_is_drained_and_the_connection_kept() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let request = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".as_slice(),
        &[b'x'; 1000],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    .concat();
    let (wire, _) = exchange(config(&log), vec![request], &hello());
    let responses = parse_responses(&wire.written, &[]);
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[0].header("connection"), None);
}

#[test]
fn a_small_body_is_buffered_before_the_request_is_handed_out() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut wire = Wire::new(vec![
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nab".to_vec(),
        b"cd".to_vec(),
        b"ef".to_vec(),
    ]);
    let mut s = session(config(&log), 64 * 1024, wire.now);
    let mut reads = 0;
    loop {
        match s.poll(wire.now) {
            Next::Read { deadline, .. } => {
                reads += 1;
                wire.read(&mut s, deadline);
            }
            Next::Request(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(reads, 3, "the request is handed out only once its body is all there");
    let mut buf = [0; 16];
    assert_eq!(s.read_body(&mut buf, wire.now), BodyRead::Data(6));
}

#[test]
fn a_graceful_stop_answers_a_request_on_its_way_with_close_then_closes_idle_ones() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut s = session(config(&log), 0, Instant::now());
    let mut wire = Wire::new(vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]);
    wire.half_close = false;
    s.begin_stop(wire.now);
    let t0 = wire.now;
    let run = pump(&mut s, &mut wire, &hello());
    let responses = parse_responses(&wire.written, &[]);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].status, 200);
    assert_eq!(responses[0].header("connection"), Some("close"));
    assert!(wire.now - t0 <= STOP_GRACE);
    assert!(!run.stuck);

    // Idle in keep-alive when the stop begins: the grace, then a quiet close.
    let mut s = session(config(&log), 0, Instant::now());
    let mut wire = Wire::new(vec![]);
    wire.half_close = false;
    let t0 = wire.now;
    assert!(matches!(s.poll(t0), Next::Read { idle: true, .. }));
    s.begin_stop(t0);
    pump(&mut s, &mut wire, &hello());
    assert!(wire.written.is_empty());
    assert_eq!(wire.now - t0, STOP_GRACE);
}

#[test]
fn a_panicking_handler_gets_500_and_the_log_names_the_request() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler = handler_fn(|_env, _sr| -> Result<Response, BoxError> { panic!("boom") });
    let (wire, _) = exchange(config(&log), vec![b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()], &handler);
    assert_eq!(parse_responses(&wire.written, &[])[0].status, 500);
    assert!(log.lock().unwrap().iter().any(|l| l == "127.0.0.1:50000: GET /p: handler panicked"), "{:?}", log);
}

#[test]
fn max_requests_per_connection_closes_after_the_last() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3);
    let (wire, _) = exchange(config(&log).max_requests_per_connection(2), vec![request], &hello());
    let responses = parse_responses(&wire.written, &[]);
    assert_eq!(responses.len(), 2, "the third pipelined request is never answered");
    assert_eq!(responses[1].header("connection"), Some("close"));
}

#[test]
fn the_fuzz_driver_accepts_every_fixture_with_every_handler_behaviour() {
    // What `fuzz/` runs, on known inputs: no panic, bounded buffers, well-framed output.
    let mut all: Vec<Vec<u8>> = fixtures("valid").into_iter().chain(fixtures("invalid")).map(|(_, r, _)| r).collect();
    all.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20));
    all.push(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    for request in &all {
        for behaviour in 0..6u8 {
            for (read, write) in [(0u8, 0u8), (255, 255), (6, 1)] {
                for buffered in 0..2u8 {
                    let data = [&[read, write, behaviour, buffered][..], request].concat();
                    if std::panic::catch_unwind(|| crate::private::fuzz_connection(&data)).is_err() {
                        panic!("fuzz_connection failed on {:?}", String::from_utf8_lossy(&data));
                    }
                }
            }
        }
    }
}

#[test]
fn a_head_still_trickling_at_a_stop_gets_408_after_the_grace() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut wire = Wire::new(vec![b"GET / HTTP/1.1\r\nHo".to_vec()]);
    wire.half_close = false;
    let t0 = wire.now;
    let mut s = session(config(&log), 0, t0);
    assert!(matches!(s.poll(t0), Next::Read { idle: true, .. }));
    wire.read(&mut s, None);
    assert!(matches!(s.poll(t0), Next::Read { idle: false, .. }));
    s.begin_stop(t0);
    pump(&mut s, &mut wire, &hello());
    assert_eq!(parse_responses(&wire.written, &[])[0].status, 408);
    assert_eq!(wire.now - t0, STOP_GRACE, "not the 20 s header timeout");
}

#[test]
fn an_idle_session_lends_its_buffers_and_takes_them_back() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let pool = BufferPool::new(4);
    let mut wire = Wire::new(vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]);
    wire.half_close = false;
    wire.stop_when_idle = true;
    let t0 = wire.now;
    let mut s = session(config(&log), 0, t0);
    pump(&mut s, &mut wire, &hello());
    assert!(s.rbuf.data.capacity() > 0);
    s.release_buffers(&pool, t0, Duration::from_secs(1));
    assert!(s.rbuf.data.capacity() > 0, "not idle long enough: kept");
    s.release_buffers(&pool, t0 + Duration::from_secs(1), Duration::from_secs(1));
    assert_eq!(s.rbuf.data.capacity(), 0, "idle a second: lent");
    assert_eq!(pool.spare.lock().unwrap().len(), 1);
    s.reclaim_buffers(&pool);
    assert!(s.rbuf.data.capacity() > 0 && pool.spare.lock().unwrap().is_empty(), "taken back");
    // And it still serves.
    wire.pieces.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    wire.written.clear();
    pump(&mut s, &mut wire, &hello());
    assert_eq!(parse_responses(&wire.written, &[])[0].body, b"hi");
}

#[test]
fn a_closed_session_hands_its_buffers_to_the_next_connection_which_sees_nothing_of_the_last() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let pool = BufferPool::new(4);
    let t0 = Instant::now();
    let mut first = session(config(&log), 0, t0);
    let mut wire =
        Wire::new(vec![b"GET /first?secret=1 HTTP/1.1\r\nHost: a\r\nX-Token: t\r\nConnection: close\r\n\r\n".to_vec()]);
    pump(&mut first, &mut wire, &hello());
    assert!(!first.is_open());
    first.recycle_buffers(&pool);
    assert_eq!(pool.spare.lock().unwrap().len(), 1, "given to the pool");
    let mut second = session(config(&log), 0, t0);
    second.reclaim_buffers(&pool);
    assert!(second.rbuf.data.capacity() > 0 && pool.spare.lock().unwrap().is_empty(), "taken, not allocated");
    let mut wire = Wire::new(vec![b"GET /second HTTP/1.1\r\nHost: b\r\n\r\n".to_vec()]);
    pump(&mut second, &mut wire, &sgi_dump());
    let responses = parse_responses(&wire.written, &[]);
    let body = String::from_utf8(responses[0].body.clone()).unwrap();
    assert!(body.contains("/second") && !body.contains("secret") && !body.contains("X_TOKEN"), "{body}");
    assert_eq!(responses.len(), 1);
}

/// Answers the request's environ, one `KEY=value` line each.
fn sgi_dump() -> impl Handler {
    crate::handler::handler_fn(|env, sr| {
        let lines: String = env.iter().map(|(k, v)| format!("{k}={}\n", String::from_utf8_lossy(v))).collect();
        Ok(sr.start("200 OK", [("Content-Type", "text/plain")])?.body(lines))
    })
}

#[test]
fn a_body_is_in_hand_once_all_of_it_is_buffered_and_never_while_a_continue_is_owed() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let now = Instant::now();
    let cases: [(&[u8], u64, bool); 5] = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, true),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 0, true),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", 0, false),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", 0, false),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 0, false),
    ];
    for (bytes, buffered, in_hand) in cases {
        let mut s = session(config(&log), buffered, now);
        let buf = s.read_buf();
        buf[..bytes.len()].copy_from_slice(bytes);
        s.received(bytes.len(), now);
        assert!(matches!(s.poll(now), Next::Request(_)), "{}", String::from_utf8_lossy(bytes));
        assert_eq!(s.body_in_hand(), in_hand, "{}", String::from_utf8_lossy(bytes));
    }
}

#[test]
fn a_whole_body_goes_out_as_a_pulled_one_would() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let answer = |status: &'static str, headers: Vec<(&'static str, &'static str)>, body: &'static str| {
        handler_fn(move |_env, start_response| Ok(start_response.start(status, headers.clone())?.body(body)))
    };
    let handlers: Vec<Box<dyn Handler>> = vec![
        Box::new(hello()),
        Box::new(answer("200 OK", vec![], "")),
        Box::new(answer("200 OK", vec![("Content-Length", "2")], "hi")),
        Box::new(answer("200 OK", vec![("Content-Length", "5")], "hi")),
        Box::new(answer("200 OK", vec![("Content-Length", "0")], "")),
        Box::new(answer("204 No Content", vec![], "ignored")),
        Box::new(answer("304 Not Modified", vec![("Content-Length", "7")], "")),
        Box::new(answer("201 Created", vec![("Server", "mine"), ("Date", "then")], "made")),
        Box::new(handler_fn(|_env, start_response| {
            Ok(start_response.start("200 OK", [("X", "y")])?.body(Body::from_chunks(["a", "b"])))
        })),
    ];
    let requests: [&[u8]; 7] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for (h, handler) in handlers.iter().enumerate() {
        for (r, request) in requests.iter().enumerate() {
            for max_requests in [1000, 2] {
                let run = |whole: bool| {
                    let lines = Arc::new(Mutex::new(Vec::new()));
                    let config = config(&log).max_requests_per_connection(max_requests);
                    let config = with_access_log(config, &lines, "%(s)s %(B)s");
                    let mut wire = Wire::new(vec![request.to_vec()]);
                    wire.whole_bodies = whole;
                    let mut s = session(config, 0, wire.now);
                    let run = pump(&mut s, &mut wire, &**handler);
                    let finished = lines.lock().unwrap().clone();
                    (without_date(&wire.written), finished, run.shut_down, run.stuck)
                };
                assert_eq!(run(true), run(false), "handler {h}, request {r}, max {max_requests}");
            }
        }
    }
}

/// A configuration whose access log lines, in `format`, are collected in `lines`.
fn access_logged(lines: &Arc<Mutex<Vec<String>>>, format: &str) -> Config {
    with_access_log(Config::default().error_log(|_| {}), lines, format)
}

/// `config`, its access log lines in `format` collected in `lines`.
fn with_access_log(config: Config, lines: &Arc<Mutex<Vec<String>>>, format: &str) -> Config {
    let sink = Arc::clone(lines);
    let log = crate::AccessLog::to_fn(move |l| sink.lock().unwrap().push(l.to_owned())).format(format).unwrap();
    config.access_log(Some(log))
}

#[test]
fn pipelined_requests_are_each_logged_with_their_own_request_once_written() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut wire = Wire::new(vec![b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b?q HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]);
    // Writes of a few bytes each: the first response is still going out when the second
    // request could be parsed.
    wire.write_max = 7;
    let mut s = session(access_logged(&lines, "%(r)s %(s)s %(B)s %(h)s"), 0, wire.now);
    pump(&mut s, &mut wire, &hello());
    assert_eq!(parse_responses(&wire.written, &[]).len(), 2);
    assert_eq!(*lines.lock().unwrap(), ["GET /a HTTP/1.1 200 2 127.0.0.1", "GET /b?q HTTP/1.1 200 2 127.0.0.1"]);
}

#[test]
fn requests_refused_before_the_handler_are_logged_with_the_status_sent() {
    let cases: [(&[u8], &str); 4] = [
        (b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", "GET / HTTP/1.1 400 -"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "GET / HTTP/2.0 505 -"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", "POST / HTTP/1.1 413 -"),
        (b"GET /\x01 HTTP/1.1\r\n\r\n", r"GET /\x01 HTTP/1.1 400 -"),
    ];
    for (request, expected) in cases {
        let lines = Arc::new(Mutex::new(Vec::new()));
        exchange(access_logged(&lines, "%(r)s %(s)s %(b)s"), vec![request.to_vec()], &hello());
        assert_eq!(*lines.lock().unwrap(), [expected], "{}", String::from_utf8_lossy(request));
    }
}

#[test]
fn a_head_that_times_out_is_logged_as_408() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut wire = Wire::new(vec![b"GET /slow HTTP/1.1\r\nHo".to_vec()]);
    wire.half_close = false;
    let config = access_logged(&lines, "%(s)s %(r)s %(D)s").header_timeout(Some(Duration::from_secs(3)));
    let mut s = session(config, 0, wire.now);
    pump(&mut s, &mut wire, &hello());
    assert_eq!(*lines.lock().unwrap(), ["408 GET /slow HTTP/1.1 3000000"]);
}

#[test]
fn the_log_has_the_status_the_client_got_not_the_handlers() {
    // The handler answers 200 after reading a body that breaks the limit: the client gets 413.
    let lines = Arc::new(Mutex::new(Vec::new()));
    let config = access_logged(&lines, "%(s)s %(B)s").max_body(Some(4));
    let request = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n123456789\r\n0\r\n\r\n";
    let (wire, _) = exchange(config, vec![request.to_vec()], &echo());
    assert_eq!(parse_responses(&wire.written, &[])[0].status, 413);
    assert_eq!(*lines.lock().unwrap(), ["413 0"]);

    let lines = Arc::new(Mutex::new(Vec::new()));
    let handler = handler_fn(|_env, _sr| -> Result<Response, BoxError> { panic!("boom") });
    exchange(access_logged(&lines, "%(s)s %({x-a}o)s"), vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()], &handler);
    assert_eq!(*lines.lock().unwrap(), ["500 -"]);
}

#[test]
fn a_response_cut_by_a_stalled_reader_logs_the_bytes_that_went_out() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let big = handler_fn(|_env, start_response| {
        Ok(start_response.start("200 OK", [("X-A", "1")])?.body(Body::from_chunks([vec![b'x'; 100_000]])))
    });
    let mut wire = Wire::new(vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]);
    wire.write_max = 60_000;
    let config = access_logged(&lines, "%(s)s %(B)s %({x-a}o)s").write_timeout(Some(Duration::from_secs(2)));
    wire.stall_after_writes = Some(1);
    let mut s = session(config, 0, wire.now);
    let run = pump(&mut s, &mut wire, &big);
    assert!(!run.stuck);
    let written_body = wire.written.len() - (wire.written.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4);
    assert_eq!(*lines.lock().unwrap(), [format!("200 {} 1", written_body - 7)], "chunk framing aside");
}

#[test]
fn without_an_access_log_nothing_waits_for_it() {
    // Pipelined responses still go out in one write.
    let mut wire = Wire::new(vec![b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]);
    wire.half_close = false;
    wire.stop_when_idle = true;
    let mut s = session(Config::default(), 0, wire.now);
    pump(&mut s, &mut wire, &hello());
    assert_eq!(wire.writes, 1);
}

/// The variable `key` of each response of a run of [`sgi_dump`].
fn dumped(wire: &Wire, key: &str) -> Vec<String> {
    parse_responses(&wire.written, &[])
        .iter()
        .map(|r| {
            let text = String::from_utf8_lossy(&r.body).into_owned();
            text.lines().find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned)).unwrap_or_default()
        })
        .collect()
}

#[test]
fn a_trusted_proxy_sets_the_client_and_scheme_for_its_request_alone() {
    let requests = b"GET /1 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.1, 203.0.113.9, 10.0.0.2\r\nX-Forwarded-Proto: https\r\n\r\n\
                     GET /2 HTTP/1.1\r\nHost: x\r\n\r\n\
                     GET /3 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: [2001:db8::7]:4711\r\nX-Forwarded-Ssl: on\r\n\r\n";
    let config = Config::default().forwarded_allow_ips("127.0.0.1,10.0.0.0/8".parse().unwrap());
    let (wire, _) = exchange(config, vec![requests.to_vec()], &sgi_dump());
    // 10.0.0.2 is a proxy of ours; 203.0.113.9 is the first that is not; 198.51.100.1 is its word.
    assert_eq!(dumped(&wire, "REMOTE_ADDR"), ["203.0.113.9", "127.0.0.1", "2001:db8::7"]);
    assert_eq!(dumped(&wire, "REMOTE_PORT"), ["0", "50000", "4711"]);
    assert_eq!(dumped(&wire, "wsgi.url_scheme"), ["https", "http", "https"]);
    assert_eq!(
        dumped(&wire, "HTTP_X_FORWARDED_FOR"),
        ["198.51.100.1, 203.0.113.9, 10.0.0.2", "", "[2001:db8::7]:4711"]
    );
}

#[test]
fn an_untrusted_peers_proxy_headers_change_nothing() {
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nForwarded: for=1.2.3.4\r\n\r\n";
    for config in [
        Config::default().forwarded_allow_ips(crate::AllowList::nobody()),
        Config::default().forwarded_allow_ips("10.0.0.0/8".parse().unwrap()).trust_forwarded_header(true),
    ] {
        let (wire, _) = exchange(config, vec![request.to_vec()], &sgi_dump());
        assert_eq!(dumped(&wire, "REMOTE_ADDR"), ["127.0.0.1"]);
        assert_eq!(dumped(&wire, "wsgi.url_scheme"), ["http"]);
        assert_eq!(dumped(&wire, "HTTP_X_FORWARDED_FOR"), ["203.0.113.9"]);
    }
}

#[test]
fn the_forwarded_header_is_believed_only_when_configured() {
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nForwarded: for=\"[2001:db8::1]:80\";proto=https\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n";
    let (wire, _) = exchange(Config::default(), vec![request.to_vec()], &sgi_dump());
    assert_eq!(dumped(&wire, "REMOTE_ADDR"), ["203.0.113.9"]);
    assert_eq!(dumped(&wire, "wsgi.url_scheme"), ["http"]);
    let (wire, _) = exchange(Config::default().trust_forwarded_header(true), vec![request.to_vec()], &sgi_dump());
    assert_eq!(dumped(&wire, "REMOTE_ADDR"), ["2001:db8::1"]);
    assert_eq!(dumped(&wire, "REMOTE_PORT"), ["80"]);
    assert_eq!(dumped(&wire, "wsgi.url_scheme"), ["https"]);
}

#[test]
fn contradictory_scheme_headers_from_a_trusted_proxy_are_refused() {
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n\r\n";
    let (wire, _) = exchange(Config::default(), vec![request.to_vec()], &sgi_dump());
    assert_eq!(parse_responses(&wire.written, &[])[0].status, 400);
}

fn proxied_session(config: Config, wire: &Wire) -> Session {
    let mut info = ConnInfo::new("127.0.0.1".into(), "8000".into(), "127.0.0.1:50000".parse().ok());
    info.expect_proxy_header = true;
    Session::new(Arc::new(config), info, 0, wire.now)
}

/// A PROXY v2 header for TCP over IPv4 from `203.0.113.7:4242` to `192.0.2.1:443`, with a TLV.
fn proxy_v2() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    let body: &[u8] = &[203, 0, 113, 7, 192, 0, 2, 1, 0x10, 0x92, 0x01, 0xbb, 0x04, 0x00, 0x01, b'x'];
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

#[test]
fn a_proxy_protocol_header_gives_the_clients_and_servers_addresses_split_at_every_byte() {
    let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n".to_vec();
    for header in [v1, proxy_v2()] {
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        for cut in 0..=header.len() + 3 {
            let mut wire = Wire::new(vec![bytes[..cut].to_vec(), bytes[cut..].to_vec()]);
            let mut s = proxied_session(Config::default().error_log(|_| {}), &wire);
            pump(&mut s, &mut wire, &sgi_dump());
            assert_eq!(dumped(&wire, "REMOTE_ADDR"), ["203.0.113.7"; 2], "cut at {cut}");
            assert_eq!(dumped(&wire, "REMOTE_PORT"), ["4242"; 2]);
            assert_eq!(dumped(&wire, "SERVER_NAME"), ["192.0.2.1"; 2]);
            assert_eq!(dumped(&wire, "SERVER_PORT"), ["443"; 2]);
        }
    }
}

#[test]
fn a_local_or_unknown_header_keeps_the_connections_addresses() {
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    for header in [b"PROXY UNKNOWN\r\n".to_vec(), local] {
        let mut bytes = header;
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut wire = Wire::new(vec![bytes]);
        let mut s = proxied_session(Config::default(), &wire);
        pump(&mut s, &mut wire, &sgi_dump());
        assert_eq!(dumped(&wire, "REMOTE_ADDR"), ["127.0.0.1"]);
        assert_eq!(dumped(&wire, "SERVER_PORT"), ["8000"]);
    }
}

#[test]
fn a_missing_or_broken_proxy_header_or_a_peer_not_allowed_is_refused_with_400() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let cases: [(Config, &[u8]); 4] = [
        (Config::default(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        (Config::default(), b"PROXY TCP4 203.0.113.7 192.0.2.1 4242\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        (Config::default(), b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            Config::default().proxy_allow_ips("10.0.0.0/8".parse().unwrap()),
            b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ];
    for (config, bytes) in cases {
        let mut wire = Wire::new(vec![bytes.to_vec()]);
        let mut s = proxied_session(with_access_log(config.error_log(|_| {}), &lines, "%(s)s %(h)s"), &wire);
        let run = pump(&mut s, &mut wire, &sgi_dump());
        assert!(!run.stuck);
        let answers = parse_responses(&wire.written, &[]);
        assert_eq!(answers.len(), 1, "{}", String::from_utf8_lossy(bytes));
        assert_eq!(answers[0].status, 400);
    }
    assert_eq!(*lines.lock().unwrap(), ["400 127.0.0.1"; 4]);
}

#[test]
fn behind_a_proxy_protocol_peer_the_forwarded_headers_are_trusted_by_its_clients_address() {
    // HAProxy (127.0.0.1) relays for 10.0.0.5, a proxy of ours that sent X-Forwarded-For.
    let bytes =
        b"PROXY TCP4 10.0.0.5 192.0.2.1 4242 443\r\nGET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.4\r\n\r\n";
    let config = Config::default().forwarded_allow_ips("10.0.0.0/8".parse().unwrap());
    let mut wire = Wire::new(vec![bytes.to_vec()]);
    let mut s = proxied_session(config, &wire);
    pump(&mut s, &mut wire, &sgi_dump());
    assert_eq!(dumped(&wire, "REMOTE_ADDR"), ["198.51.100.4"]);
}

#[test]
fn a_body_sent_straight_from_a_file_is_framed_logged_and_kept_alive_like_a_pulled_one() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let requests =
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
    let big = handler_fn(|_env, start_response| {
        let body = Body::from_reader(std::io::Cursor::new(vec![b'z'; 70_000]), Some(70_000));
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    });
    let mut wire = Wire::new(vec![requests.to_vec()]);
    wire.direct_bodies = true;
    wire.write_max = 9_000;
    let mut s = session(access_logged(&lines, "%(r)s %(s)s %(B)s"), 0, wire.now);
    pump(&mut s, &mut wire, &big);
    let answers = parse_responses(&wire.written, &[false, true, false]);
    assert_eq!(
        answers.iter().map(|a| (a.status, a.body.len())).collect::<Vec<_>>(),
        [(200, 70_000), (200, 0), (200, 70_000)]
    );
    assert!(answers.iter().all(|a| a.header("content-length") == Some("70000")));
    assert_eq!(
        *lines.lock().unwrap(),
        ["GET /a HTTP/1.1 200 70000", "HEAD /b HTTP/1.1 200 0", "GET /c HTTP/1.1 200 70000"]
    );
}

#[test]
fn a_reader_that_stops_reading_a_file_body_is_dropped_at_the_write_timeout() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let big = handler_fn(|_env, start_response| {
        let body = Body::from_reader(std::io::Cursor::new(vec![b'z'; 70_000]), Some(70_000));
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body(body))
    });
    let mut wire = Wire::new(vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()]);
    wire.direct_bodies = true;
    wire.write_max = 9_000;
    wire.stall_after_writes = Some(2);
    let t0 = wire.now;
    let mut s = session(config(&log).write_timeout(Some(Duration::from_secs(9))), 0, t0);
    let run = pump(&mut s, &mut wire, &big);
    assert!(!run.stuck, "a stalled sendfile has a deadline");
    assert_eq!(wire.now - t0, Duration::from_secs(9));
    assert!(log.lock().unwrap().iter().any(|l| l.contains("write stalled")));
}

#[test]
fn the_log_finds_what_middleware_set_or_moved() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let handler = handler_fn(|env, start_response| {
        if env.path_info() == b"/moved" {
            // Removing a variable the server set first moves every later one.
            env.remove("SCRIPT_NAME");
        }
        env.insert("REMOTE_USER", "grace");
        Ok(start_response.start("200 OK", [("Content-Type", "text/plain")])?.body("hi"))
    });
    let requests = b"GET /kept HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\nGET /moved HTTP/1.1\r\nHost: x\r\nX-A: 2\r\n\r\n";
    exchange(access_logged(&lines, "%(r)s %(u)s %({x-a}i)s %(h)s"), vec![requests.to_vec()], &handler);
    assert_eq!(
        *lines.lock().unwrap(),
        ["GET /kept HTTP/1.1 grace 1 127.0.0.1", "GET /moved HTTP/1.1 grace 2 127.0.0.1"]
    );
}

#[test]
fn a_proxy_header_trickled_past_the_head_timeout_gets_408() {
    let mut wire = Wire::new(vec![b"PROXY TCP4 203.0.113.7 19".to_vec()]);
    wire.half_close = false;
    let t0 = wire.now;
    let config = Config::default().error_log(|_| {}).header_timeout(Some(Duration::from_secs(4)));
    let mut s = proxied_session(config, &wire);
    let run = pump(&mut s, &mut wire, &sgi_dump());
    assert!(!run.stuck);
    assert_eq!(wire.now - t0, Duration::from_secs(4));
    assert_eq!(parse_responses(&wire.written, &[])[0].status, 408);
}
