//! The request fixtures of `tests/fixtures/requests/` (written by its `generate.py`), sent to a
//! server running [`EnvironDump`] over real TCP: each one whole, then split in two writes at
//! every byte position (at a sample of positions for the few fixtures of several KiB), and each
//! time the same outcome is required.
//!
//! - `valid/NNN-name.http`: exactly the expected interim responses, then one `200` whose JSON
//!   environ contains `NNN-name.json`'s `environ` entries, none of its `absent` keys, and whose
//!   `body_hex` is the one expected.
//! - `invalid/NNN-name.http`: exactly one response, with `NNN-name.status`'s code and
//!   `Connection: close`, then the end of the stream: nothing behind the bad request is answered.
//!   Sent whole, the client does not half-close (the server must close on its own), except for
//!   the `-then-close` fixtures, whose point is a client that stops mid-request.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sgi::debug::EnvironDump;
use sgi::Config;
use support::{quiet, show, try_exchange, try_parse_responses_to, TestServer};

/// Fixtures up to this size are split at every byte position.
const SPLIT_EVERY_BYTE_UP_TO: usize = 2048;
/// Larger ones are split at the first and last this many positions ...
const SPLIT_EDGE: usize = 64;
/// ... and at about this many positions spread evenly in between.
const SPLIT_SPREAD: usize = 128;
/// Failures shown in full before the rest are only counted.
const SHOW_FAILURES: usize = 25;

fn fixture_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/requests").join(kind)
}

/// `(stem, request bytes, companion file text)` for every `.http` of `kind`, in name order.
fn load(kind: &str, companion: &str) -> Vec<(String, Vec<u8>, String)> {
    let dir = fixture_dir(kind);
    let mut stems: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "http"))
        .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
        .collect();
    stems.sort();
    // Every companion has its request and the other way round: a misnamed file is an error,
    // never a silently skipped case.
    for entry in fs::read_dir(&dir).expect("read dir") {
        let path = entry.expect("directory entry").path();
        let stem = path.file_stem().expect("stem").to_string_lossy().into_owned();
        let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
        assert!(ext == "http" || ext == companion, "unexpected file {}", path.display());
        assert!(stems.contains(&stem), "{} has no .http", path.display());
    }
    stems
        .into_iter()
        .map(|stem| {
            let request = fs::read(dir.join(format!("{stem}.http"))).expect("read .http");
            let expected = fs::read_to_string(dir.join(format!("{stem}.{companion}")))
                .unwrap_or_else(|e| panic!("{kind}/{stem}.{companion}: {e}"));
            (stem, request, expected)
        })
        .collect()
}

/// Where to split a request of `len` bytes: every position, or a sample for large requests.
fn split_points(len: usize) -> Vec<usize> {
    if len <= SPLIT_EVERY_BYTE_UP_TO {
        return (1..len).collect();
    }
    let mut points = BTreeSet::new();
    points.extend(1..=SPLIT_EDGE);
    points.extend(len - SPLIT_EDGE..len);
    let step = len / SPLIT_SPREAD;
    points.extend((1..SPLIT_SPREAD).map(|i| i * step));
    points.into_iter().filter(|&p| p > 0 && p < len).collect()
}

/// Collects failures so that one run reports every broken fixture.
#[derive(Default)]
struct Failures {
    list: Vec<String>,
    count: usize,
}

impl Failures {
    fn record(&mut self, stem: &str, how: &str, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => true,
            Err(e) => {
                self.count += 1;
                if self.list.len() < SHOW_FAILURES {
                    self.list.push(format!("{stem} ({how}): {e}"));
                }
                false
            }
        }
    }

    fn assert_none(self, kind: &str, checked: usize) {
        assert!(
            self.count == 0,
            "{} of {checked} {kind} exchanges failed; the first ones:\n{}",
            self.count,
            self.list.join("\n")
        );
    }
}

fn server() -> TestServer {
    TestServer::spawn(quiet(Config::default()), EnvironDump)
}

// ---------------------------------------------------------------------------------------------
// valid/
// ---------------------------------------------------------------------------------------------

struct Expected {
    environ: Vec<(String, String)>,
    absent: Vec<String>,
    body_hex: String,
    interim: Vec<u16>,
}

fn parse_expected(stem: &str, text: &str) -> Expected {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("valid/{stem}.json: {e}"));
    let environ = v["environ"]
        .as_object()
        .unwrap_or_else(|| panic!("valid/{stem}.json: no environ object"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string value").to_owned()))
        .collect();
    let strings = |key: &str| -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .map_or_else(Vec::new, |a| a.iter().map(|s| s.as_str().expect("string").to_owned()).collect())
    };
    let interim = v.get("interim").and_then(Value::as_array).map_or_else(Vec::new, |a| {
        a.iter().map(|n| u16::try_from(n.as_u64().expect("status")).expect("status")).collect()
    });
    Expected {
        environ,
        absent: strings("absent"),
        body_hex: v["body_hex"].as_str().unwrap_or_else(|| panic!("valid/{stem}.json: no body_hex")).to_owned(),
        interim,
    }
}

fn check_valid(response: &[u8], expected: &Expected) -> Result<(), String> {
    let responses = try_parse_responses_to(response, &[])?;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    let mut want = expected.interim.clone();
    want.push(200);
    if statuses != want {
        let last = responses.last().map(|r| show(&r.body)).unwrap_or_default();
        return Err(format!("statuses {statuses:?}, expected {want:?} (last body: {last})"));
    }
    let resp = responses.last().expect("one response");
    if resp.header("content-type") != Some("application/json") {
        return Err(format!("Content-Type {:?}", resp.header("content-type")));
    }
    let dump: Value = serde_json::from_slice(&resp.body).map_err(|e| format!("body is not JSON ({e})"))?;
    let environ = dump["environ"].as_object().ok_or("no environ in the dump")?;
    for (key, want) in &expected.environ {
        match environ.get(key).and_then(Value::as_str) {
            Some(got) if got == want => {}
            got => return Err(format!("{key} = {got:?}, expected {want:?}")),
        }
    }
    for key in &expected.absent {
        if let Some(got) = environ.get(key) {
            return Err(format!("{key} = {got}, expected it absent"));
        }
    }
    let body_hex = dump["body_hex"].as_str().ok_or("no body_hex in the dump")?;
    if body_hex != expected.body_hex {
        return Err(format!("body_hex {body_hex:?}, expected {:?}", expected.body_hex));
    }
    Ok(())
}

#[test]
fn valid_requests_whole_and_split_at_every_byte() {
    let fixtures = load("valid", "json");
    assert!(fixtures.len() >= 15, "only {} valid fixtures found", fixtures.len());
    let server = server();
    let addr: SocketAddr = server.addr();
    let mut failures = Failures::default();
    let mut checked = 0;
    for (stem, request, text) in &fixtures {
        let expected = parse_expected(stem, text);
        checked += 1;
        let whole = try_exchange(addr, request, None, true).and_then(|r| check_valid(&r, &expected));
        if !failures.record(stem, "whole", whole) {
            continue; // one report per fixture is enough
        }
        for at in split_points(request.len()) {
            checked += 1;
            let split = try_exchange(addr, request, Some(at), true).and_then(|r| check_valid(&r, &expected));
            if !failures.record(stem, &format!("split at {at}"), split) {
                break;
            }
        }
    }
    failures.assert_none("valid", checked);
}

// ---------------------------------------------------------------------------------------------
// invalid/
// ---------------------------------------------------------------------------------------------

fn check_invalid(response: &[u8], status: u16) -> Result<(), String> {
    let responses = try_parse_responses_to(response, &[])?;
    let [resp] = responses.as_slice() else {
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        return Err(format!("expected exactly one response ({status}), got {statuses:?}"));
    };
    if resp.status != status {
        return Err(format!("status {} ({:?}), expected {status}", resp.status, show(&resp.body)));
    }
    if !resp.closes() {
        return Err("no Connection: close on an error response".into());
    }
    Ok(())
}

#[test]
fn invalid_requests_whole_and_split_at_every_byte() {
    let fixtures = load("invalid", "status");
    assert!(fixtures.len() >= 35, "only {} invalid fixtures found", fixtures.len());
    let server = server();
    let addr = server.addr();
    let mut failures = Failures::default();
    let mut checked = 0;
    for (stem, request, text) in &fixtures {
        let status: u16 = text.trim().parse().unwrap_or_else(|e| panic!("invalid/{stem}.status: {e}"));
        checked += 1;
        let half_close = stem.ends_with("-then-close");
        let whole = try_exchange(addr, request, None, half_close).and_then(|r| check_invalid(&r, status));
        if !failures.record(stem, "whole", whole) {
            continue;
        }
        for at in split_points(request.len()) {
            checked += 1;
            let split = try_exchange(addr, request, Some(at), true).and_then(|r| check_invalid(&r, status));
            if !failures.record(stem, &format!("split at {at}"), split) {
                break;
            }
        }
    }
    failures.assert_none("invalid", checked);
}

#[test]
fn split_points_cover_small_requests_fully_and_large_ones_at_the_edges() {
    assert_eq!(split_points(4), vec![1, 2, 3]);
    let large = split_points(70_000);
    assert!(large.contains(&1) && large.contains(&64) && large.contains(&69_999) && large.contains(&69_936));
    assert!(large.len() > SPLIT_SPREAD && large.len() < 2 * SPLIT_EDGE + SPLIT_SPREAD + 1);
    assert!(large.iter().all(|&p| p > 0 && p < 70_000));
}
