//! The client's address and scheme as trusted proxies report them in `Forwarded` (RFC 7239) and
//! `X-Forwarded-*`: sans I/O, linear in the header lengths, and without allocating.
//!
//! # Trust
//! The headers are read only when the direct peer passes `trusted` (`None` stands for a Unix
//! socket peer); from any other peer, [`resolve`] says nothing and nothing is refused. Either way
//! the header variables stay in the environ: this module decides, it does not rewrite.
//!
//! A proxy that neither sets nor removes a header hands the client's own copy along, so the
//! integrator must pass only the headers its proxies really set. Passing `Forwarded` behind a
//! proxy that only appends `X-Forwarded-For` (nginx's usual configuration) lets any client choose
//! its address, because `Forwarded` takes precedence.
//!
//! # The client's address
//! A list is walked from the right, nearest proxy first: each element is what one proxy saw as
//! its own peer, and the rightmost was written by our trusted peer. An element naming a trusted
//! address was written for us by another of our proxies, so the walk goes on to its left; the
//! first element naming an untrusted address is the client. When every element is trusted, the
//! leftmost is the client. The walk stops with no client (the environ keeps the peer) at an
//! element that is `unknown`, obfuscated, not an address, or has no `for`, because nothing left
//! of it was vouched for; and after [`MAX_HOPS`] trusted elements, so that a long header costs
//! at most that many calls of `trusted`. Empty list elements are no elements (RFC 9110 §5.6.1).
//!
//! `Forwarded` answers when it is well formed and its nearest element has a `for`; otherwise
//! `X-Forwarded-For` does. A malformed `Forwarded` is ignored entirely, its `proto` included, as
//! if it had not been sent: it is most likely a client's, spliced with a proxy's element. (So
//! behind proxies that set only `Forwarded`, do not pass `X-Forwarded-For` either: a client could
//! break `Forwarded` on purpose to be judged by an `X-Forwarded-For` of its own.)
//!
//! `Forwarded` follows RFC 7239 §4: comma-separated elements of `;`-separated `name=value` pairs,
//! names case-insensitive, values tokens or quoted-strings with `\` escapes. `for`, `by`, `proto`
//! or `host` twice in one element makes the header malformed: two readers could each believe a
//! different one. Leniencies, each unambiguous: whitespace around `;`, and `:`, `[`, `]` in an
//! unquoted value (`for=[2001:db8::1]:80`, the mistake a hand-written proxy rule makes).
//!
//! A node (RFC 7239 §6, and each `X-Forwarded-For` element, unquoted: that header has no
//! standard, and its ports are accepted in the same forms) is `192.0.2.43`, `[2001:db8::17]`,
//! either with `:port`, an unbracketed IPv6 address (never split: `2001:db8::1:80` is an address,
//! not a port), `unknown` or `_obfuscated`. An obfuscated port (`192.0.2.43:_p`) leaves the
//! address known and the port not. Zone ids (`fe80::1%eth0`) are not addresses. Addresses are
//! handed to `trusted` as written: an IPv4-mapped IPv6 address is the predicate's to recognise,
//! as it already must be for a peer on a dual-stack socket.
//!
//! # The scheme
//! The nearest proxy says which scheme the client used, in any of: `Forwarded`'s `proto` (of the
//! rightmost element only), `X-Forwarded-Proto` (`https` or `http`), `X-Forwarded-Protocol`
//! (`ssl` or `https`, or `http`) and `X-Forwarded-Ssl` (`on` or `off`), the last three being
//! gunicorn's default `secure_scheme_headers`. Of a list, only the rightmost element counts: the
//! ones before were written further out. Values are case-insensitive; any other value says
//! nothing. When two of them disagree the request is refused ([`ContradictoryScheme`]), as
//! gunicorn refuses it: one of them came from the client, and there is no telling which.
//!
//! # Not handled
//! `X-Forwarded-Host`, `X-Forwarded-Port`, `Forwarded`'s `host` and `Front-End-Https`: gunicorn
//! does not read them by default, and rewriting the host is a separate decision (host-header
//! attacks, cache poisoning) better left to a middleware that knows the deployment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::http::parse::is_tchar;

/// How many trusted hops the walk goes through before it gives up on finding the client.
pub(crate) const MAX_HOPS: usize = 64;

/// The proxy headers of one request, each field's values joined with `,` (absent: `None`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProxyHeaders<'a> {
    pub(crate) forwarded: Option<&'a [u8]>,
    pub(crate) x_forwarded_for: Option<&'a [u8]>,
    pub(crate) x_forwarded_proto: Option<&'a [u8]>,
    pub(crate) x_forwarded_protocol: Option<&'a [u8]>,
    pub(crate) x_forwarded_ssl: Option<&'a [u8]>,
}

/// What the environ should say instead of what the connection says; `None` keeps the latter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// For `REMOTE_ADDR` (and `REMOTE_PORT`, which is unknown when `port` is `None`).
    pub(crate) client: Option<ClientAddr>,
    /// For `wsgi.url_scheme`: `https` when `true`, `http` when `false`.
    pub(crate) https: Option<bool>,
}

/// The client's address as a proxy reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientAddr {
    pub(crate) ip: IpAddr,
    pub(crate) port: Option<u16>,
}

/// A trusted peer sent scheme headers that disagree: to be answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ContradictoryScheme;

/// The client and scheme for a request from `peer`, per the module documentation.
///
/// # Errors
/// [`ContradictoryScheme`] when a trusted peer's scheme headers disagree.
pub(crate) fn resolve(
    peer: Option<IpAddr>,
    headers: &ProxyHeaders<'_>,
    trusted: impl Fn(Option<IpAddr>) -> bool,
) -> Result<Resolved, ContradictoryScheme> {
    if !trusted(peer) {
        return Ok(Resolved::default());
    }
    let forwarded = headers.forwarded.and_then(Forwarded::parse);
    let client = match forwarded.as_ref().filter(|f| f.nearest_has_for()) {
        Some(f) => walk(f.hops().map(|node| node.and_then(|v| v.unescaped(parse_node))), &trusted),
        None => headers.x_forwarded_for.and_then(|v| walk(list_from_right(v).map(parse_node), &trusted)),
    };
    let https = agree([
        forwarded.and_then(|f| f.nearest_proto).and_then(|v| v.unescaped(|p| says_https(p, &[b"https"], b"http"))),
        rightmost(headers.x_forwarded_proto).and_then(|v| says_https(v, &[b"https"], b"http")),
        rightmost(headers.x_forwarded_protocol).and_then(|v| says_https(v, &[b"ssl", b"https"], b"http")),
        rightmost(headers.x_forwarded_ssl).and_then(|v| says_https(v, &[b"on"], b"off")),
    ])?;
    Ok(Resolved { client, https })
}

/// The client among `hops`, nearest first; a `None` hop is one that names no address.
fn walk(
    hops: impl Iterator<Item = Option<ClientAddr>>,
    trusted: &impl Fn(Option<IpAddr>) -> bool,
) -> Option<ClientAddr> {
    let mut outermost = None;
    for (n, hop) in hops.enumerate() {
        if n == MAX_HOPS {
            return None;
        }
        let addr = hop?;
        if !trusted(Some(addr.ip)) {
            return Some(addr);
        }
        outermost = Some(addr);
    }
    outermost
}

/// The one scheme the sources name, if any.
fn agree(sources: [Option<bool>; 4]) -> Result<Option<bool>, ContradictoryScheme> {
    let mut said = None;
    for https in sources.into_iter().flatten() {
        if *said.get_or_insert(https) != https {
            return Err(ContradictoryScheme);
        }
    }
    Ok(said)
}

fn says_https(value: &[u8], https: &[&[u8]], http: &[u8]) -> Option<bool> {
    if https.iter().any(|h| value.eq_ignore_ascii_case(h)) {
        Some(true)
    } else {
        value.eq_ignore_ascii_case(http).then_some(false)
    }
}

/// The non-empty elements of a comma-separated list, trimmed, from the right; lazily, so that
/// the walk never looks at more of a long header than it needs.
fn list_from_right(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.rsplit(|&b| b == b',').map(trim_ows).filter(|e| !e.is_empty())
}

fn rightmost(value: Option<&[u8]>) -> Option<&[u8]> {
    list_from_right(value?).next()
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_ows(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

/// The address a node names; `None` for `unknown`, an obfuscated name, and anything invalid,
/// which the walk treats alike.
fn parse_node(node: &[u8]) -> Option<ClientAddr> {
    if let Some(rest) = node.strip_prefix(b"[") {
        let close = rest.iter().position(|&b| b == b']')?;
        let ip = std::str::from_utf8(&rest[..close]).ok()?.parse::<Ipv6Addr>().ok()?;
        let port = match &rest[close + 1..] {
            [] => None,
            [b':', port @ ..] => parse_port(port)?,
            _ => return None,
        };
        return Some(ClientAddr { ip: IpAddr::V6(ip), port });
    }
    let text = std::str::from_utf8(node).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ClientAddr { ip, port: None });
    }
    let (host, port) = text.rsplit_once(':')?;
    let ip = host.parse::<Ipv4Addr>().ok()?;
    Some(ClientAddr { ip: IpAddr::V4(ip), port: parse_port(port.as_bytes())? })
}

/// `Some(None)` for an obfuscated port, `None` for an invalid one.
fn parse_port(port: &[u8]) -> Option<Option<u16>> {
    if is_obfuscated(port) {
        return Some(None);
    }
    // `u16::from_str` would take a sign; RFC 7239's `port` is 1*5DIGIT.
    if port.is_empty() || port.len() > 5 {
        return None;
    }
    let n = port.iter().try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))?;
    u16::try_from(n).ok().map(Some)
}

/// RFC 7239's `obfnode` and `obfport`.
fn is_obfuscated(s: &[u8]) -> bool {
    match s {
        [b'_', rest @ ..] => {
            !rest.is_empty() && rest.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        _ => false,
    }
}

/// A `Forwarded` parameter value: a token, or the inside of a quoted-string, escapes and all.
#[derive(Debug, Clone, Copy)]
struct Value<'a> {
    text: &'a [u8],
    escaped: bool,
}

impl Value<'_> {
    /// Longer than any node or scheme we act on: a longer escaped value is one we ignore anyway.
    const MAX_UNESCAPED: usize = 64;

    /// `f` of the value with its escapes undone; `None` when that is too long to matter.
    fn unescaped<R>(self, f: impl FnOnce(&[u8]) -> Option<R>) -> Option<R> {
        if !self.escaped {
            return f(self.text);
        }
        let mut buf = [0; Self::MAX_UNESCAPED];
        let mut len = 0;
        let mut bytes = self.text.iter();
        while let Some(&b) = bytes.next() {
            // The parser let no `\` end a quoted-string.
            let b = if b == b'\\' { *bytes.next()? } else { b };
            *buf.get_mut(len)? = b;
            len += 1;
        }
        f(&buf[..len])
    }
}

/// What the walk and the scheme need of a well-formed `Forwarded` header.
#[derive(Debug)]
struct Forwarded<'a> {
    /// The `for` of the last [`MAX_HOPS`] elements, element `n` at `n % MAX_HOPS`: the walk never
    /// goes further, and the header may have any number of elements.
    hops: [Option<Value<'a>>; MAX_HOPS],
    elements: usize,
    nearest_proto: Option<Value<'a>>,
}

#[derive(Default)]
struct Element<'a> {
    for_: Option<Value<'a>>,
    proto: Option<Value<'a>>,
    /// `by` and `host` are of no use to us, but may not be repeated either.
    has_by: bool,
    has_host: bool,
}

impl<'a> Forwarded<'a> {
    /// `None` when the header is malformed, or has no element.
    fn parse(header: &'a [u8]) -> Option<Forwarded<'a>> {
        let mut f = Forwarded { hops: [None; MAX_HOPS], elements: 0, nearest_proto: None };
        let mut cursor = Cursor { s: header, i: 0 };
        loop {
            cursor.skip_ows();
            match cursor.peek() {
                None => break,
                Some(b',') => {
                    cursor.i += 1;
                    continue;
                }
                Some(_) => {}
            }
            let element = cursor.element()?;
            f.hops[f.elements % MAX_HOPS] = element.for_;
            f.nearest_proto = element.proto;
            f.elements += 1;
            if !cursor.eat(b',') {
                break;
            }
        }
        (f.elements > 0).then_some(f)
    }

    fn nearest_has_for(&self) -> bool {
        self.hops().next().is_some_and(|node| node.is_some())
    }

    /// The `for` of each element, nearest first, then one `None` if there were more elements
    /// than kept, so that the walk stops there.
    fn hops(&self) -> impl Iterator<Item = Option<Value<'a>>> + '_ {
        let kept = self.elements.min(MAX_HOPS);
        (1..=kept)
            .map(move |k| self.hops[(self.elements - k) % MAX_HOPS])
            .chain((self.elements > MAX_HOPS).then_some(None))
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.i += usize::from(hit);
        hit
    }

    fn skip_ows(&mut self) {
        self.take_while(is_ows);
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        let len = self.s[start..].iter().position(|&b| !f(b)).unwrap_or(self.s.len() - start);
        self.i += len;
        &self.s[start..self.i]
    }

    /// One forwarded-element, up to the `,` after it or the end; `None` if malformed.
    fn element(&mut self) -> Option<Element<'a>> {
        let mut element = Element::default();
        loop {
            self.skip_ows();
            match self.peek() {
                None | Some(b',') => return Some(element),
                Some(b';') => {
                    self.i += 1;
                    continue;
                }
                Some(_) => {}
            }
            let name = self.take_while(is_tchar);
            if name.is_empty() || !self.eat(b'=') {
                return None;
            }
            let value = self.value()?;
            let repeated = if name.eq_ignore_ascii_case(b"for") {
                element.for_.replace(value).is_some()
            } else if name.eq_ignore_ascii_case(b"proto") {
                element.proto.replace(value).is_some()
            } else if name.eq_ignore_ascii_case(b"by") {
                std::mem::replace(&mut element.has_by, true)
            } else if name.eq_ignore_ascii_case(b"host") {
                std::mem::replace(&mut element.has_host, true)
            } else {
                // An extension parameter (RFC 7239 §5.5): well formed, and of no use to us.
                false
            };
            if repeated {
                return None;
            }
            self.skip_ows();
            match self.peek() {
                None | Some(b',') => return Some(element),
                Some(b';') => self.i += 1,
                Some(_) => return None,
            }
        }
    }

    fn value(&mut self) -> Option<Value<'a>> {
        if !self.eat(b'"') {
            let text = self.take_while(|b| is_tchar(b) || matches!(b, b':' | b'[' | b']'));
            return (!text.is_empty()).then_some(Value { text, escaped: false });
        }
        let start = self.i;
        let mut escaped = false;
        loop {
            match self.next_byte()? {
                b'"' => return Some(Value { text: &self.s[start..self.i - 1], escaped }),
                b'\\' => {
                    // quoted-pair: HTAB / SP / VCHAR / obs-text
                    if !matches!(self.next_byte()?, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) {
                        return None;
                    }
                    escaped = true;
                }
                // qdtext: HTAB / SP / VCHAR but `"` and `\` / obs-text
                b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => {}
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    const PROXY_A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const PROXY_B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));

    /// gunicorn's default `forwarded_allow_ips` (and Unix peers), plus two proxies of ours.
    fn ours(ip: Option<IpAddr>) -> bool {
        match ip {
            None => true,
            Some(ip) => {
                [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST), PROXY_A, PROXY_B].contains(&ip)
            }
        }
    }

    fn local() -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    fn at(ip: &str, port: Option<u16>) -> Option<ClientAddr> {
        Some(ClientAddr { ip: ip.parse().unwrap(), port })
    }

    fn xff(value: &str) -> Option<ClientAddr> {
        let headers = ProxyHeaders { x_forwarded_for: Some(value.as_bytes()), ..Default::default() };
        let resolved = resolve(local(), &headers, ours).unwrap();
        assert_eq!(resolved.https, None);
        resolved.client
    }

    fn forwarded(value: &str) -> Resolved {
        let headers = ProxyHeaders { forwarded: Some(value.as_bytes()), ..Default::default() };
        resolve(local(), &headers, ours).unwrap()
    }

    fn proto(
        xfp: Option<&str>,
        protocol: Option<&str>,
        ssl: Option<&str>,
    ) -> Result<Option<bool>, ContradictoryScheme> {
        let headers = ProxyHeaders {
            x_forwarded_proto: xfp.map(str::as_bytes),
            x_forwarded_protocol: protocol.map(str::as_bytes),
            x_forwarded_ssl: ssl.map(str::as_bytes),
            ..Default::default()
        };
        resolve(local(), &headers, ours).map(|r| r.https)
    }

    #[test]
    fn an_untrusted_peer_changes_nothing_and_is_never_refused() {
        let headers = ProxyHeaders {
            forwarded: Some(b"for=192.0.2.1;proto=https"),
            x_forwarded_for: Some(b"192.0.2.2"),
            x_forwarded_proto: Some(b"http"),
            x_forwarded_protocol: Some(b"ssl"),
            x_forwarded_ssl: Some(b"off"),
        };
        assert_eq!(resolve(Some(STRANGER), &headers, ours), Ok(Resolved::default()));
        assert_eq!(resolve(None, &headers, |_| false), Ok(Resolved::default()));
    }

    #[test]
    fn a_unix_peer_is_trusted_when_the_predicate_says_so() {
        let headers = ProxyHeaders { x_forwarded_for: Some(b"192.0.2.1"), ..Default::default() };
        assert_eq!(resolve(None, &headers, ours).unwrap().client, at("192.0.2.1", None));
        assert_eq!(resolve(None, &headers, |ip| ip.is_some()), Ok(Resolved::default()));
    }

    #[test]
    fn no_headers_no_change() {
        assert_eq!(resolve(local(), &ProxyHeaders::default(), ours), Ok(Resolved::default()));
    }

    #[test]
    fn x_forwarded_for_walks_from_the_right_past_our_proxies() {
        assert_eq!(xff("192.0.2.1"), at("192.0.2.1", None));
        assert_eq!(xff("192.0.2.1, 10.0.0.2, 10.0.0.1"), at("192.0.2.1", None));
        // Whatever the client wrote left of what our proxy saw is not believed.
        assert_eq!(xff("6.6.6.6, 192.0.2.1, 10.0.0.1"), at("192.0.2.1", None));
        assert_eq!(xff("192.0.2.1, 10.0.0.1, 198.51.100.7"), at("198.51.100.7", None));
    }

    #[test]
    fn x_forwarded_for_all_trusted_is_its_leftmost() {
        assert_eq!(xff("10.0.0.2, 10.0.0.1"), at("10.0.0.2", None));
        assert_eq!(xff("127.0.0.1"), at("127.0.0.1", None));
    }

    #[test]
    fn x_forwarded_for_stops_at_what_is_not_an_address() {
        for value in [
            "192.0.2.1, garbage, 10.0.0.1",
            "192.0.2.1, unknown",
            "192.0.2.1, _hidden",
            "192.0.2.1 10.0.0.1",
            "192.0.2.1, \"10.0.0.1\"",
            "192.0.2.1, 10.0.0.1:99999",
            "192.0.2.1, 10.0.0.1:+80",
            "192.0.2.1, 10.0.0.1:",
            "192.0.2.1, [10.0.0.1]",
            "192.0.2.1, [2001:db8::1",
            "192.0.2.1, [2001:db8::1]x",
            "192.0.2.1, fe80::1%eth0",
            "192.0.2.1, 010.0.0.1",
            "192.0.2.1, 10.0.0.1\u{e9}",
        ] {
            assert_eq!(xff(value), None, "{value}");
        }
        // A garbage element left of the client is never reached.
        assert_eq!(xff("garbage, 192.0.2.1, 10.0.0.1"), at("192.0.2.1", None));
        assert_eq!(xff(""), None);
        assert_eq!(xff(" , "), None);
    }

    #[test]
    fn x_forwarded_for_whitespace_and_empty_elements() {
        assert_eq!(xff(" \t192.0.2.1 ,\t10.0.0.1 "), at("192.0.2.1", None));
        assert_eq!(xff(",, 192.0.2.1,,10.0.0.1,"), at("192.0.2.1", None));
    }

    #[test]
    fn x_forwarded_for_ipv6_and_ports() {
        assert_eq!(xff("2001:db8::1"), at("2001:db8::1", None));
        assert_eq!(xff("[2001:db8::1]"), at("2001:db8::1", None));
        assert_eq!(xff("[2001:db8::1]:4711"), at("2001:db8::1", Some(4711)));
        assert_eq!(xff("192.0.2.1:8080, [::1]:80"), at("192.0.2.1", Some(8080)));
        assert_eq!(xff("192.0.2.1:0"), at("192.0.2.1", Some(0)));
        assert_eq!(xff("192.0.2.1:65535"), at("192.0.2.1", Some(65535)));
        assert_eq!(xff("192.0.2.1:_p"), at("192.0.2.1", None));
        // Unbracketed, the last group is the address's, never a port.
        assert_eq!(xff("2001:db8::1:80"), at("2001:db8::1:80", None));
        assert_eq!(xff("::ffff:192.0.2.1"), at("::ffff:192.0.2.1", None));
    }

    #[test]
    fn forwarded_rfc_7239_examples() {
        // §4
        assert_eq!(forwarded("for=\"_gazonk\""), Resolved::default());
        assert_eq!(forwarded("For=\"[2001:db8:cafe::17]:4711\"").client, at("2001:db8:cafe::17", Some(4711)));
        assert_eq!(
            forwarded("for=192.0.2.60;proto=http;by=203.0.113.43"),
            Resolved { client: at("192.0.2.60", None), https: Some(false) }
        );
        assert_eq!(forwarded("for=192.0.2.43, for=198.51.100.17").client, at("198.51.100.17", None));
        assert_eq!(forwarded("for=192.0.2.43, for=10.0.0.1").client, at("192.0.2.43", None));
        // §6
        assert_eq!(forwarded("for=\"192.0.2.43:47011\"").client, at("192.0.2.43", Some(47011)));
        assert_eq!(forwarded("for=\"[2001:db8:cafe::17]:47011\"").client, at("2001:db8:cafe::17", Some(47011)));
        assert_eq!(forwarded("for=\"[2001:db8:cafe::17]\"").client, at("2001:db8:cafe::17", None));
        assert_eq!(forwarded("for=\"192.0.2.43:_hidden\"").client, at("192.0.2.43", None));
        // §7.1: an unknown nearest hop hides everything left of it.
        assert_eq!(forwarded("for=192.0.2.43,for=\"[2001:db8:cafe::17]\",for=unknown").client, None);
        assert_eq!(forwarded("for=192.0.2.43,for=\"[2001:db8:cafe::17]\",for=UNKNOWN").client, None);
        assert_eq!(forwarded("for=192.0.2.43, for=_hidden, for=10.0.0.1").client, None);
        // §7.4: the same chain as `X-Forwarded-For: 192.0.2.43, 2001:db8:cafe::17`.
        assert_eq!(forwarded("for=192.0.2.43, for=\"[2001:db8:cafe::17]\"").client, at("2001:db8:cafe::17", None));
        assert_eq!(xff("192.0.2.43, 2001:db8:cafe::17"), at("2001:db8:cafe::17", None));
        // All four parameters.
        assert_eq!(
            forwarded("for=192.0.2.43, for=198.51.100.17;by=203.0.113.60;proto=http;host=example.com"),
            Resolved { client: at("198.51.100.17", None), https: Some(false) }
        );
    }

    #[test]
    fn forwarded_names_are_case_insensitive_and_values_may_be_quoted_or_escaped() {
        assert_eq!(
            forwarded("FOR=192.0.2.1;PROTO=HTTPS"),
            Resolved { client: at("192.0.2.1", None), https: Some(true) }
        );
        assert_eq!(
            forwarded("for=\"192.0.2.1\";proto=\"https\""),
            Resolved { client: at("192.0.2.1", None), https: Some(true) }
        );
        assert_eq!(forwarded(r#"for="\[2001:db8::1\]:8\0"; proto="http\s""#).https, Some(true));
        assert_eq!(forwarded(r#"for="\[2001:db8::1\]:8\0""#).client, at("2001:db8::1", Some(80)));
        // Too long to be a node once unescaped, so not one.
        let long = format!(r#"for="\1{}""#, "1".repeat(100));
        assert_eq!(forwarded(&long).client, None);
        assert_eq!(forwarded("for=\"\"").client, None);
    }

    #[test]
    fn forwarded_leniencies() {
        assert_eq!(forwarded("for=[2001:db8::1]:80").client, at("2001:db8::1", Some(80)));
        assert_eq!(forwarded("for=192.0.2.1:80").client, at("192.0.2.1", Some(80)));
        assert_eq!(forwarded("for=\"2001:db8::1\"").client, at("2001:db8::1", None));
        assert_eq!(
            forwarded(" for=192.0.2.1 ; proto=https ;, ,for=10.0.0.1;;by=_me; ext=\"x\" "),
            Resolved { client: at("192.0.2.1", None), https: None }
        );
    }

    #[test]
    fn forwarded_takes_precedence_when_its_nearest_element_has_a_for() {
        let both = |f: &str| {
            let headers = ProxyHeaders {
                forwarded: Some(f.as_bytes()),
                x_forwarded_for: Some(b"198.51.100.1"),
                ..Default::default()
            };
            resolve(local(), &headers, ours).unwrap().client
        };
        assert_eq!(both("for=192.0.2.1"), at("192.0.2.1", None));
        assert_eq!(both("for=unknown"), None);
        assert_eq!(both("for=192.0.2.1, proto=https"), at("198.51.100.1", None));
        assert_eq!(both("proto=https"), at("198.51.100.1", None));
        assert_eq!(both(" , "), at("198.51.100.1", None));
        // Past the nearest element, a missing `for` stops the walk like `unknown` does.
        assert_eq!(both("for=192.0.2.1, by=10.0.0.1, for=10.0.0.1"), None);
    }

    #[test]
    fn a_malformed_forwarded_is_ignored_entirely() {
        for value in [
            "for=\"192.0.2.1",
            "for=192.0.2.1;for=10.0.0.1",
            "for=192.0.2.1;PROTO=https;proto=http",
            "by=a;By=b",
            "host=a;host=b",
            "for=",
            "for",
            "=192.0.2.1",
            "for 192.0.2.1",
            "for = 192.0.2.1",
            "for=192.0.2.1 garbage",
            "for=192.0.2.1\"",
            "for=\"192.0.2.1\"x",
            "for=\"a\u{1}\"",
            "for=\"a\\\u{1}\"",
            "for=\"a\\\u{7f}\"",
            "for=\"a\\",
            "for=192.0.2.1/24",
            "for=caf\u{e9}",
            "f\u{f6}r=192.0.2.1",
        ] {
            let headers = ProxyHeaders {
                forwarded: Some(value.as_bytes()),
                x_forwarded_for: Some(b"198.51.100.1"),
                x_forwarded_proto: Some(b"http"),
                ..Default::default()
            };
            let resolved = resolve(local(), &headers, ours);
            assert_eq!(resolved, Ok(Resolved { client: at("198.51.100.1", None), https: Some(false) }), "{value:?}");
        }
        let headers = ProxyHeaders { forwarded: Some(b"for=192.0.2.1;;proto=https;proto=https"), ..Default::default() };
        assert_eq!(resolve(local(), &headers, ours), Ok(Resolved::default()));
    }

    #[test]
    fn the_scheme_is_the_nearest_proxys() {
        assert_eq!(proto(Some("https"), None, None), Ok(Some(true)));
        assert_eq!(proto(Some("HTTPS"), None, None), Ok(Some(true)));
        assert_eq!(proto(Some("http"), None, None), Ok(Some(false)));
        assert_eq!(proto(Some(" https "), None, None), Ok(Some(true)));
        assert_eq!(proto(Some("https, http"), None, None), Ok(Some(false)));
        assert_eq!(proto(Some("http,https"), None, None), Ok(Some(true)));
        assert_eq!(proto(Some("https,"), None, None), Ok(Some(true)));
        assert_eq!(proto(Some("ftp"), None, None), Ok(None));
        assert_eq!(proto(Some("https, ftp"), None, None), Ok(None));
        assert_eq!(proto(Some(""), None, None), Ok(None));
        assert_eq!(proto(None, Some("ssl"), None), Ok(Some(true)));
        assert_eq!(proto(None, Some("https"), None), Ok(Some(true)));
        assert_eq!(proto(None, Some("http"), None), Ok(Some(false)));
        assert_eq!(proto(None, Some("tls"), None), Ok(None));
        assert_eq!(proto(None, None, Some("on")), Ok(Some(true)));
        assert_eq!(proto(None, None, Some("Off")), Ok(Some(false)));
        assert_eq!(proto(None, None, Some("yes")), Ok(None));
        assert_eq!(forwarded("for=192.0.2.1;proto=https, for=10.0.0.1").https, None);
        assert_eq!(forwarded("for=192.0.2.1;proto=http, for=10.0.0.1;proto=https").https, Some(true));
        assert_eq!(forwarded("proto=wss").https, None);
    }

    #[test]
    fn contradictory_scheme_headers_are_refused() {
        assert_eq!(proto(Some("https"), None, Some("off")), Err(ContradictoryScheme));
        assert_eq!(proto(Some("http"), Some("ssl"), None), Err(ContradictoryScheme));
        assert_eq!(proto(None, Some("ssl"), Some("off")), Err(ContradictoryScheme));
        assert_eq!(proto(Some("https"), Some("ssl"), Some("on")), Ok(Some(true)));
        assert_eq!(proto(Some("http"), Some("http"), Some("off")), Ok(Some(false)));
        // A value that says nothing disagrees with nothing.
        assert_eq!(proto(Some("ftp"), Some("ssl"), Some("maybe")), Ok(Some(true)));
        let headers =
            ProxyHeaders { forwarded: Some(b"proto=https"), x_forwarded_proto: Some(b"http"), ..Default::default() };
        assert_eq!(resolve(local(), &headers, ours), Err(ContradictoryScheme));
        let headers =
            ProxyHeaders { forwarded: Some(b"proto=https"), x_forwarded_ssl: Some(b"on"), ..Default::default() };
        assert_eq!(resolve(local(), &headers, ours).unwrap().https, Some(true));
    }

    /// `n` elements: `first`, then our proxies.
    fn chain(n: usize, first: &str, element: impl Fn(&str) -> String, sep: &str) -> String {
        let mut elements = vec![element(first)];
        elements.extend((1..n).map(|i| element(if i % 2 == 0 { "10.0.0.1" } else { "10.0.0.2" })));
        elements.join(sep)
    }

    #[test]
    fn the_walk_stops_after_max_hops() {
        let counted = |value: &str, forwarded: bool| {
            let calls = Cell::new(0);
            let headers = if forwarded {
                ProxyHeaders { forwarded: Some(value.as_bytes()), ..Default::default() }
            } else {
                ProxyHeaders { x_forwarded_for: Some(value.as_bytes()), ..Default::default() }
            };
            let client = resolve(local(), &headers, |ip| {
                calls.set(calls.get() + 1);
                ours(ip)
            })
            .unwrap()
            .client;
            // The peer's check, then one a hop.
            assert!(calls.get() <= 1 + MAX_HOPS, "{} calls", calls.get());
            client
        };
        for forwarded in [false, true] {
            let element = |ip: &str| if forwarded { format!("for={ip}") } else { ip.to_owned() };
            assert_eq!(counted(&chain(MAX_HOPS, "10.0.0.2", element, ", "), forwarded), at("10.0.0.2", None));
            assert_eq!(counted(&chain(MAX_HOPS, "192.0.2.1", element, ", "), forwarded), at("192.0.2.1", None));
            assert_eq!(counted(&chain(MAX_HOPS + 1, "10.0.0.2", element, ", "), forwarded), None);
            assert_eq!(counted(&chain(MAX_HOPS + 1, "192.0.2.1", element, ", "), forwarded), None);
            assert_eq!(counted(&chain(10_000, "192.0.2.1", element, ","), forwarded), None);
            let long = format!("{}, 198.51.100.1", chain(10_000, "192.0.2.1", element, ","));
            let long = if forwarded { long.replace(", 198", ", for=198") } else { long };
            assert_eq!(counted(&long, forwarded), at("198.51.100.1", None));
        }
    }

    #[test]
    fn forwarded_keeps_the_nearest_elements_of_a_long_header() {
        // The ring wraps several times; the kept elements must be the last ones, in order.
        let mut elements: Vec<String> = (0..1000).map(|i| format!("for=\"192.0.{}.{}\"", i / 256, i % 256)).collect();
        elements.push("for=10.0.0.1".into());
        elements.push("for=10.0.0.2".into());
        assert_eq!(forwarded(&elements.join(",")).client, at("192.0.3.231", None));
    }

    fn soup() -> impl Strategy<Value = Vec<u8>> {
        let piece = proptest::sample::select(vec![
            &b"for="[..],
            b"proto=",
            b"by=",
            b"\"",
            b"\\",
            b"[",
            b"]",
            b":",
            b",",
            b";",
            b" ",
            b"_",
            b"unknown",
            b"https",
            b"10.0.0.1",
            b"192.0.2.1",
            b"2001:db8::1",
            b"65536",
            b"80",
            b"\xff",
        ]);
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    fn header() -> impl Strategy<Value = Option<Vec<u8>>> {
        proptest::option::of(prop_oneof![proptest::collection::vec(any::<u8>(), 0..200), soup()])
    }

    proptest! {
        #[test]
        fn resolve_never_panics(
            forwarded in header(),
            xff in header(),
            xfp in header(),
            protocol in header(),
            ssl in header(),
            peer in proptest::option::of(any::<[u8; 4]>()),
        ) {
            let headers = ProxyHeaders {
                forwarded: forwarded.as_deref(),
                x_forwarded_for: xff.as_deref(),
                x_forwarded_proto: xfp.as_deref(),
                x_forwarded_protocol: protocol.as_deref(),
                x_forwarded_ssl: ssl.as_deref(),
            };
            let peer = peer.map(|p| IpAddr::V4(p.into()));
            let _ = resolve(peer, &headers, ours);
            let _ = resolve(peer, &headers, |_| true);
            prop_assert_eq!(resolve(peer, &headers, |_| false), Ok(Resolved::default()));
        }

        #[test]
        fn the_client_is_an_untrusted_hop_or_the_leftmost(ips in proptest::collection::vec(any::<[u8; 4]>(), 1..80)) {
            let ips: Vec<IpAddr> = ips.into_iter().map(|p| IpAddr::V4(p.into())).collect();
            let trusted = |ip: Option<IpAddr>| match ip {
                Some(IpAddr::V4(v4)) => v4.octets()[0] < 128,
                _ => true,
            };
            let expected = {
                let nearest: Vec<_> = ips.iter().rev().take(MAX_HOPS + 1).collect();
                match nearest.iter().position(|&&ip| !trusted(Some(ip))) {
                    Some(n) if n < MAX_HOPS => Some(*nearest[n]),
                    Some(_) => None,
                    None if ips.len() <= MAX_HOPS => Some(ips[0]),
                    None => None,
                }
            };
            let list = ips.iter().map(ToString::to_string).collect::<Vec<_>>();
            let xff = list.join(", ");
            let fwd = list.iter().map(|ip| format!("for={ip}")).collect::<Vec<_>>().join(",");
            for headers in [
                ProxyHeaders { x_forwarded_for: Some(xff.as_bytes()), ..Default::default() },
                ProxyHeaders { forwarded: Some(fwd.as_bytes()), ..Default::default() },
            ] {
                let client = resolve(local(), &headers, trusted).unwrap().client;
                prop_assert_eq!(client.map(|c| c.ip), expected);
            }
        }
    }
}
