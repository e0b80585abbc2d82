//! Property tests of the sans-I/O core: chunked encode → decode round trips under arbitrary
//! splits (and `Content-Length` bodies), never consuming the pipelined bytes behind a body; head
//! parsing that does not depend on how the head arrives; `Content-Length` values.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

use crate::config::Config;
use crate::environ::Vars;
use crate::error::ParseError;
use crate::http::decode::Decoder;
use crate::http::encode::{chunk_prefix, CHUNK_SUFFIX, LAST_CHUNK};
use crate::http::parse::{parse_head, ConnInfo, Framing, HeadScanner, RequestHead};
use crate::private::HeadParser;

// ---------------------------------------------------------------------------------------------
// Chunked bodies
// ---------------------------------------------------------------------------------------------

/// Limits generous enough for everything the strategies below generate.
const MAX_EXT: usize = 4096;
const MAX_TRAILER: usize = 8192;

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}"
}

/// `BWS`: optional spaces and tabs.
fn bws() -> impl Strategy<Value = String> {
    "[ \t]{0,2}"
}

/// A `chunk-ext-val`: a token or a quoted-string (with quoted-pairs and obs-text).
fn ext_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        token().prop_map(String::into_bytes),
        vec(
            prop_oneof![
                4 => select((0x20u8..=0x7e).filter(|&b| b != b'"' && b != b'\\').chain([b'\t']).collect::<Vec<_>>())
                    .prop_map(|b| vec![b]),
                1 => (0x80u8..=0xff).prop_map(|b| vec![b]),
                1 => (0x21u8..=0x7e).prop_map(|b| vec![b'\\', b]),
            ],
            0..8
        )
        .prop_map(|parts| [&b"\""[..], &parts.concat(), b"\""].concat()),
    ]
}

/// Zero or more `BWS ";" BWS name [BWS "=" BWS value]`.
fn extensions() -> impl Strategy<Value = Vec<u8>> {
    vec((bws(), bws(), token(), proptest::option::of((bws(), bws(), ext_value()))), 0..3).prop_map(|exts| {
        let mut out = Vec::new();
        for (before, after, name, value) in exts {
            out.extend_from_slice(before.as_bytes());
            out.push(b';');
            out.extend_from_slice(after.as_bytes());
            out.extend_from_slice(name.as_bytes());
            if let Some((b1, b2, v)) = value {
                out.extend_from_slice(b1.as_bytes());
                out.push(b'=');
                out.extend_from_slice(b2.as_bytes());
                out.extend_from_slice(&v);
            }
        }
        out
    })
}

/// A trailer field line without its CRLF: `name ":" OWS value OWS`.
fn trailer_field() -> impl Strategy<Value = Vec<u8>> {
    (token(), bws(), vec(prop_oneof![(0x21u8..=0x7e), (0x80u8..=0xff), Just(b' '), Just(b'\t')], 0..30), bws())
        .prop_map(|(name, ows, value, ows2)| [name.as_bytes(), b":", ows.as_bytes(), &value, ows2.as_bytes()].concat())
}

/// One chunk as the encoder frames it, with its extensions and, optionally, leading zeros and
/// uppercase digits in its size.
#[derive(Debug, Clone)]
struct Chunk {
    data: Vec<u8>,
    ext: Vec<u8>,
    zeros: usize,
    upper: bool,
}

fn chunk() -> impl Strategy<Value = Chunk> {
    let data = prop_oneof![
        8 => vec(any::<u8>(), 1..64),
        2 => vec(any::<u8>(), 64..2000),
        // Bodies that are mostly framing-like bytes.
        1 => vec(select(b"\r\n0;=\" \t".to_vec()), 1..16),
    ];
    (data, prop_oneof![2 => Just(Vec::new()), 1 => extensions()], 0..3usize, any::<bool>())
        .prop_map(|(data, ext, zeros, upper)| Chunk { data, ext, zeros, upper })
}

/// A whole chunked body: chunks, the last chunk (with extensions), and trailer fields.
#[derive(Debug, Clone)]
struct Message {
    chunks: Vec<Chunk>,
    last_ext: Vec<u8>,
    trailers: Vec<Vec<u8>>,
}

fn message() -> impl Strategy<Value = Message> {
    (vec(chunk(), 0..8), prop_oneof![3 => Just(Vec::new()), 1 => extensions()], vec(trailer_field(), 0..4))
        .prop_map(|(chunks, last_ext, trailers)| Message { chunks, last_ext, trailers })
}

impl Message {
    fn body(&self) -> Vec<u8> {
        self.chunks.iter().flat_map(|c| c.data.iter().copied()).collect()
    }

    /// The wire form, built from the encoder's own pieces.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for c in &self.chunks {
            let mut line = Vec::new();
            chunk_prefix(&mut line, c.data.len());
            assert!(line.ends_with(b"\r\n"), "chunk_prefix ends with CRLF");
            line.truncate(line.len() - 2);
            if c.upper {
                line.make_ascii_uppercase();
            }
            out.resize(out.len() + c.zeros, b'0');
            out.extend_from_slice(&line);
            out.extend_from_slice(&c.ext);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&c.data);
            out.extend_from_slice(CHUNK_SUFFIX);
        }
        // LAST_CHUNK is `last-chunk` ("0" CRLF) and the CRLF that ends an empty trailer section:
        // extensions go before the first CRLF, trailer fields between the two.
        let (last_chunk, end) = LAST_CHUNK.split_at(LAST_CHUNK.len() - 2);
        assert_eq!(end, b"\r\n");
        out.extend_from_slice(&last_chunk[..last_chunk.len() - 2]);
        out.extend_from_slice(&self.last_ext);
        out.extend_from_slice(&last_chunk[last_chunk.len() - 2..]);
        for t in &self.trailers {
            out.extend_from_slice(t);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(end);
        out
    }
}

/// What may follow a body on a keep-alive connection: the next request, or stray bytes that a
/// sloppy decoder would take for part of the body (an extra CRLF, a last chunk).
fn pipelined() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..48),
        select(vec![
            &b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"\r\n",
            b"\n",
            b"\r\n\r\n",
            b"0\r\n\r\n",
            b"X-Trailer: late\r\n\r\n",
        ])
        .prop_map(<[u8]>::to_vec),
    ]
}

/// Sorted cut positions in `0..=len` from arbitrary indices.
fn cuts(indices: &[Index], len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = indices.iter().map(|i| i.index(len + 1)).collect();
    cuts.push(len);
    cuts.sort_unstable();
    cuts
}

/// Feeds `input` to `decoder` as it would arrive cut at `cuts` (the bytes up to each cut are
/// available, minus what was consumed), with an output buffer of `out_len` bytes. Returns the
/// decoded body and the number of bytes consumed, checking on the way that the decoder always
/// makes progress and is done exactly when the first `message_len` bytes have arrived.
fn feed(
    decoder: &mut Decoder,
    input: &[u8],
    cuts: &[usize],
    out_len: usize,
    message_len: usize,
) -> Result<(Vec<u8>, usize), TestCaseError> {
    let mut out = vec![0; out_len];
    let mut body = Vec::new();
    let mut pos = 0;
    for &end in cuts {
        while pos < end && !decoder.is_done() {
            let (consumed, produced) = decoder
                .decode(&input[pos..end], &mut out)
                .map_err(|e| TestCaseError::fail(format!("decode error {e:?} at {pos}..{end}")))?;
            prop_assert!(consumed <= end - pos && produced <= out_len);
            prop_assert!(consumed > 0 || produced > 0, "no progress at {}..{} (not done)", pos, end);
            body.extend_from_slice(&out[..produced]);
            pos += consumed;
        }
        prop_assert_eq!(decoder.is_done(), end >= message_len, "done after {} of {} bytes", end, message_len);
    }
    Ok((body, pos))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn chunked_round_trips_under_any_split(
        msg in message(),
        pipelined in pipelined(),
        split_at in vec(any::<Index>(), 0..12),
        out_len in prop_oneof![1..8usize, 8..4096usize],
    ) {
        let encoded = msg.encode();
        let input = [encoded.as_slice(), &pipelined].concat();
        let cuts = cuts(&split_at, input.len());
        let mut decoder = Decoder::chunked(None, MAX_EXT, MAX_TRAILER);
        let (body, consumed) = feed(&mut decoder, &input, &cuts, out_len, encoded.len())?;
        prop_assert!(body == msg.body(), "decoded body differs");
        prop_assert_eq!(consumed, encoded.len(), "exactly the pipelined bytes are left");
        prop_assert_eq!(&input[consumed..], &pipelined[..]);
        // A finished decoder takes nothing more.
        prop_assert_eq!(decoder.decode(&pipelined, &mut [0; 16]).unwrap(), (0, 0));
        prop_assert!(decoder.is_done());
    }

    #[test]
    fn chunked_prefix_is_never_done_nor_an_error(
        msg in message(),
        cut in any::<Index>(),
        split_at in vec(any::<Index>(), 0..6),
        out_len in 1..64usize,
    ) {
        let encoded = msg.encode();
        let prefix = &encoded[..cut.index(encoded.len())];
        let cuts = cuts(&split_at, prefix.len());
        let mut decoder = Decoder::chunked(None, MAX_EXT, MAX_TRAILER);
        let (body, consumed) = feed(&mut decoder, prefix, &cuts, out_len, encoded.len())?;
        prop_assert_eq!(consumed, prefix.len());
        prop_assert!(msg.body().starts_with(&body));
    }

    #[test]
    fn length_body_never_takes_the_next_request(
        body in vec(any::<u8>(), 0..3000),
        pipelined in pipelined(),
        split_at in vec(any::<Index>(), 0..8),
        out_len in prop_oneof![1..8usize, 8..4096usize],
    ) {
        let input = [body.as_slice(), &pipelined].concat();
        let cuts = cuts(&split_at, input.len());
        let mut decoder = Decoder::length(body.len() as u64);
        let (decoded, consumed) = feed(&mut decoder, &input, &cuts, out_len, body.len())?;
        prop_assert!(decoded == body, "decoded body differs");
        prop_assert_eq!(consumed, body.len());
        prop_assert_eq!(decoder.remaining_length(), Some(0));
    }

    #[test]
    fn chunked_body_limit_is_exact(msg in message(), slack in 0..2u64) {
        let len = msg.body().len() as u64;
        let encoded = msg.encode();
        let mut out = vec![0; 4096];
        let mut decode_all = |max: u64| {
            let mut decoder = Decoder::chunked(Some(max), MAX_EXT, MAX_TRAILER);
            let mut pos = 0;
            while !decoder.is_done() {
                let (c, _) = decoder.decode(&encoded[pos..], &mut out)?;
                pos += c;
            }
            Ok::<_, ParseError>(pos)
        };
        prop_assert_eq!(decode_all(len + slack), Ok(encoded.len()));
        if len > 0 {
            prop_assert_eq!(decode_all(len - 1), Err(ParseError::BodyTooLarge));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------------------------

fn conn_info() -> ConnInfo {
    ConnInfo::new("127.0.0.1".into(), "8000".into(), "127.0.0.1:50000".parse().ok())
}

fn collect(vars: &Vars) -> Vec<(Vec<u8>, Vec<u8>)> {
    vars.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

type Parsed = Result<(RequestHead, Vec<(Vec<u8>, Vec<u8>)>), ParseError>;

fn parse_into(head: &[u8], config: &Config, vars: &mut Vars) -> Parsed {
    parse_head(head, config, &conn_info(), vars).map(|req| (req, collect(vars)))
}

/// What scanning `buf` with the bytes arriving cut at `cuts` gives: the first `Some` or error.
fn scan_incrementally(buf: &[u8], cuts: &[usize], config: &Config) -> Result<Option<usize>, ParseError> {
    let mut scanner = HeadScanner::default();
    for &end in cuts {
        if let Some(len) = scanner.scan(&buf[..end], config)? {
            return Ok(Some(len));
        }
    }
    Ok(None)
}

/// A well-formed request head; header names mix common fields, framing fields and random tokens.
fn request_head() -> impl Strategy<Value = Vec<u8>> {
    let method = select(vec!["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"]);
    let target = ("/[A-Za-z0-9._~!$&'()*+,;=:@/%-]{0,30}", proptest::option::of("[A-Za-z0-9=&%+./?_-]{0,20}"))
        .prop_map(|(path, query)| match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        });
    let name = prop_oneof![
        4 => token(),
        1 => select(vec![
            "Content-Type", "content-length", "Cookie", "Accept", "X-Forwarded-For", "Connection",
            "Transfer-Encoding", "Expect", "User_Agent", "HOST",
        ])
        .prop_map(str::to_owned),
    ];
    let value = "[ -~\t]{0,30}";
    (method, target, any::<bool>(), proptest::bool::weighted(0.85), vec((name, value), 0..12)).prop_map(
        |(method, target, http10, host, headers)| {
            let mut head = format!("{method} {target} HTTP/1.{}\r\n", if http10 { 0 } else { 1 });
            if host {
                head.push_str("Host: example.com:8080\r\n");
            }
            for (n, v) in headers {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            head.into_bytes()
        },
    )
}

/// Bytes that look like pieces of heads, bare line endings and NULs included.
fn head_soup() -> impl Strategy<Value = Vec<u8>> {
    let pieces: Vec<&[u8]> = vec![
        b"GET / HTTP/1.1",
        b"POST /x?y HTTP/1.0",
        b"\r\n",
        b"\r\n",
        b"\r\n\r\n",
        b"\n",
        b"\r",
        b"Host: a",
        b"Content-Length: 5",
        b"Transfer-Encoding: chunked",
        b"Expect: 100-continue",
        b" ",
        b"\t",
        b":",
        b"x",
        b"\0",
        b"\xc3\xa9",
        b"HTTP/2.0",
    ];
    vec(select(pieces), 0..24).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn head_parses_the_same_whole_or_in_pieces(
        head in request_head(),
        previous in request_head(),
        pipelined in vec(any::<u8>(), 0..32),
        split_at in vec(any::<Index>(), 0..16),
    ) {
        let config = Config::default();
        let buf = [head.as_slice(), &pipelined].concat();

        let whole = HeadScanner::default().scan(&buf, &config);
        prop_assert_eq!(whole, Ok(Some(head.len())));
        let cuts = cuts(&split_at, buf.len());
        prop_assert_eq!(scan_incrementally(&buf, &cuts, &config), whole);

        // The same environ from fresh storage and from storage a previous request left filled.
        let fresh = parse_into(&head, &config, &mut Vars::default());
        let mut warm = Vars::default();
        let _ = parse_into(&previous, &config, &mut warm);
        prop_assert_eq!(parse_into(&head, &config, &mut warm), fresh.clone());

        // The benchmarks' entry point agrees.
        let mut parser = HeadParser::new();
        let _ = parser.parse(&previous);
        match (&fresh, parser.parse(&buf)) {
            (Ok((req, vars)), Ok((len, count))) => {
                prop_assert_eq!(req.len, len);
                prop_assert_eq!(vars.len(), count);
                for (k, v) in vars {
                    // The first entry with a key is the one `get` finds.
                    let first = &vars.iter().find(|(k2, _)| k2 == k).unwrap().1;
                    if first == v {
                        prop_assert_eq!(parser.get(std::str::from_utf8(k).unwrap()), Some(v.as_slice()));
                    }
                }
            }
            (Err(a), Err(b)) => prop_assert_eq!(*a, b),
            (a, b) => prop_assert!(false, "parse_head gave {:?}, HeadParser {:?}", a, b),
        }
    }

    #[test]
    fn head_scan_outcome_does_not_depend_on_arrival(
        soup in head_soup(),
        split_at in vec(any::<Index>(), 0..16),
    ) {
        let config = Config::default();
        let whole = HeadScanner::default().scan(&soup, &config);
        let cuts = cuts(&split_at, soup.len());
        prop_assert_eq!(scan_incrementally(&soup, &cuts, &config), whole);
        if let Ok(Some(len)) = whole {
            prop_assert!(soup[..len].ends_with(b"\r\n\r\n"));
            // Parsing what was found never panics and is deterministic.
            let first = parse_into(&soup[..len], &config, &mut Vars::default());
            prop_assert_eq!(parse_into(&soup[..len], &config, &mut Vars::default()), first);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Content-Length
// ---------------------------------------------------------------------------------------------

fn head_with_content_length(value: &str) -> Vec<u8> {
    format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n").into_bytes()
}

fn content_length_of(value: &str) -> Result<(Framing, Option<Vec<u8>>), ParseError> {
    let config = Config::default().max_body(None);
    let mut vars = Vars::default();
    let req = parse_head(&head_with_content_length(value), &config, &conn_info(), &mut vars)?;
    Ok((req.framing, vars.get(b"CONTENT_LENGTH").map(<[u8]>::to_vec)))
}

/// Values that are not `1*DIGIT` though they contain one, or overflow a u64.
fn bad_content_length() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| format!("+{n}")),
        any::<u64>().prop_map(|n| format!("-{n}")),
        (10..u64::MAX, any::<Index>(), select(vec![" ", "\t", "  "])).prop_map(|(n, at, space)| {
            let digits = n.to_string();
            let at = 1 + at.index(digits.len() - 1);
            format!("{}{space}{}", &digits[..at], &digits[at..])
        }),
        any::<u64>().prop_map(|n| format!("0x{n:x}")),
        any::<u64>().prop_map(|n| format!("0X{n:X}")),
        // Plain hex digits with at least one letter.
        (0..u64::MAX >> 4, 0xau64..=0xf, any::<bool>()).prop_map(|(n, low, upper)| {
            let v = n << 4 | low;
            if upper {
                format!("{v:X}")
            } else {
                format!("{v:x}")
            }
        }),
        any::<u64>().prop_map(|n| format!("{n},{n}")),
        any::<u64>().prop_map(|n| format!("{n}, {n}")),
        any::<u64>().prop_map(|n| format!("{n}.0")),
        (1..=u64::MAX as u128).prop_map(|k| (u64::MAX as u128 + k).to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn content_length_round_trips(n in any::<u64>(), zeros in 0..4usize, ows in select(vec!["", " ", "\t", "  "])) {
        let digits = format!("{}{n}", "0".repeat(zeros));
        let (framing, var) = content_length_of(&format!("{ows}{digits}{ows}")).unwrap();
        prop_assert_eq!(framing, if n == 0 { Framing::Empty } else { Framing::Length(n) });
        prop_assert_eq!(var, Some(digits.into_bytes()));
    }

    #[test]
    fn content_length_rejects_everything_else(value in bad_content_length()) {
        prop_assert_eq!(content_length_of(&value), Err(ParseError::ContentLength), "accepted {:?}", value);
    }

    #[test]
    fn content_length_over_the_limit_is_413(limit in any::<u64>(), n in any::<u64>()) {
        let config = Config::default().max_body(Some(limit));
        let head = head_with_content_length(&n.to_string());
        let got = parse_head(&head, &config, &conn_info(), &mut Vars::default()).map(|r| r.framing);
        if n > limit {
            prop_assert_eq!(got, Err(ParseError::BodyTooLarge));
        } else {
            prop_assert_eq!(got, Ok(if n == 0 { Framing::Empty } else { Framing::Length(n) }));
        }
    }
}
