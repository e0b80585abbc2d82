//! Request-head parsing: `sgi`'s whole path from bytes to environ (head scan, `httparse`, framing
//! rules, CGI variables) next to a bare `httparse::Request::parse` of the same bytes, its floor.
//!
//! `cargo bench --bench parse -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sgi::private::HeadParser;

/// What Firefox sends for a page navigation: 15 fields, 635 bytes (shared with the allocation test).
const BROWSER: &[u8] = include_bytes!("../tests/fixtures/requests/browser-head.http");

const SHORT: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

fn bench_head(c: &mut Criterion, name: &str, head: &[u8]) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(head.len() as u64));

    // Storage reused from one request to the next, as on a keep-alive connection.
    let mut parser = HeadParser::new();
    let (len, vars) = parser.parse(head).expect("a valid head");
    assert_eq!(len, head.len());
    assert!(vars >= 12);
    group.bench_function("sgi_environ", |b| b.iter(|| parser.parse(black_box(head)).expect("valid")));

    group.bench_function("httparse_bare", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut req = httparse::Request::new(&mut headers);
            let status = req.parse(black_box(head)).expect("valid");
            black_box(req.headers.len());
            status
        })
    });
    group.finish();
}

fn parse(c: &mut Criterion) {
    bench_head(c, "browser_head", BROWSER);
    bench_head(c, "short_head", SHORT);
}

criterion_group!(benches, parse);
criterion_main!(benches);
