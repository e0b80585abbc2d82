//! Request-head parsing: `sgi`'s whole path from bytes to environ (head scan, `httparse`, framing
//! rules, CGI variables) next to a bare `httparse::Request::parse` of the same bytes, its floor.
//!
//! `cargo bench --bench parse -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sgi::private::HeadParser;

/// What Firefox sends for a page navigation: 14 fields, 635 bytes.
const BROWSER: &[u8] = b"GET /articles/2024/http-parsing?page=2&sort=recent HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Connection: keep-alive\r\n\
Referer: https://www.example.com/articles/2024/\r\n\
Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; _ga=GA1.2.1234567890.1700000000\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-User: ?1\r\n\
Priority: u=0, i\r\n\
\r\n";

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
