//! The PROXY protocol header (HAProxy's, v1 text or v2 binary) that a load balancer sends ahead of
//! the bytes it relays, to say whom the connection is really from: parsed from the bytes received
//! so far, sans I/O. Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//!
//! Every answer is final: once `parse` has returned a header or an error for some bytes, it returns
//! the same for any bytes that begin with them. So the caller may parse after every read, and a
//! client that is not speaking the protocol (plain HTTP to a proxy-protocol listener) is refused
//! from its first bytes rather than after a timeout.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::str;

/// The longest v1 line, CRLF included (the spec's bound: an `UNKNOWN` line at its longest).
const V1_MAX_LEN: usize = 107;

const V1_PREFIX: &[u8] = b"PROXY ";

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Signature, version and command, family and transport, length.
const V2_FIXED_LEN: usize = 16;

/// The longest v2 header we accept. The spec allows 16 + 65535 bytes, nearly all TLVs, and we use
/// none of them: the bound only keeps a header from growing the connection's buffer. What HAProxy
/// sends at most (a Unix address block of 216 bytes, then ALPN, authority, SSL details, unique id,
/// CRC and netns TLVs) and the cloud load balancers' TLVs (AWS, Azure, GCP ids) fit well within it.
pub(crate) const MAX_V2_LEN: usize = V2_FIXED_LEN + 1024;

/// The most bytes `parse` will ever want before answering: a caller's buffer of this size suffices.
pub(crate) const MAX_HEADER_LEN: usize = if V1_MAX_LEN > MAX_V2_LEN { V1_MAX_LEN } else { MAX_V2_LEN };

/// What a PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyHeader {
    /// v2 `LOCAL`: the proxy's own connection (a health check): use the real endpoints.
    Local,
    /// v1 `UNKNOWN`, or a v2 `PROXY` for something other than TCP over IPv4 or IPv6 (unspecified,
    /// UDP, Unix socket): the spec has the receiver accept it and use the real endpoints.
    Unknown,
    /// A relayed TCP connection: `source` is the client, `destination` the address it connected to.
    Proxied { source: SocketAddr, destination: SocketAddr },
}

/// Why bytes are not a PROXY header we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyError {
    NotProxy,
    V1TooLong,
    V1LineEnding,
    V1Protocol,
    V1Malformed,
    V1Address,
    V1Port,
    V2Version,
    V2Command,
    V2Family,
    V2TooLong,
    V2AddressTooShort,
}

impl ProxyError {
    pub(crate) fn description(&self) -> &'static str {
        match self {
            ProxyError::NotProxy => "not a PROXY protocol header",
            ProxyError::V1TooLong => "PROXY v1 line too long",
            ProxyError::V1LineEnding => "PROXY v1 line not ended by CRLF",
            ProxyError::V1Protocol => "unknown PROXY v1 protocol",
            ProxyError::V1Malformed => "malformed PROXY v1 line",
            ProxyError::V1Address => "bad PROXY v1 address",
            ProxyError::V1Port => "bad PROXY v1 port",
            ProxyError::V2Version => "unsupported PROXY v2 version",
            ProxyError::V2Command => "unknown PROXY v2 command",
            ProxyError::V2Family => "unknown PROXY v2 address family or transport",
            ProxyError::V2TooLong => "PROXY v2 header too long",
            ProxyError::V2AddressTooShort => "PROXY v2 address block too short",
        }
    }
}

/// Parses the PROXY header at the start of `buf`, the bytes of a connection received so far.
///
/// `Ok(None)`: not complete yet, read more (at most [`MAX_HEADER_LEN`] bytes in all). `Ok(Some((header,
/// consumed)))`: the header is `buf[..consumed]`, and what follows is the stream it precedes.
///
/// # Errors
///
/// As soon as the bytes cannot begin a header we accept; the connection should then be closed.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if begins_as(buf, V2_SIGNATURE) {
        parse_v2(buf)
    } else if begins_as(buf, V1_PREFIX) {
        parse_v1(buf)
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// Whether `buf` is, or may still turn out to be, something that starts with `prefix`.
fn begins_as(buf: &[u8], prefix: &[u8]) -> bool {
    let common = buf.len().min(prefix.len());
    buf[..common] == prefix[..common]
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let rest = buf.get(V1_PREFIX.len()..).unwrap_or_default();
    if ![&b"TCP4 "[..], b"TCP6 ", b"UNKNOWN"].iter().any(|protocol| begins_as(rest, protocol)) {
        return Err(ProxyError::V1Protocol);
    }
    // The line ends at its first CR, which must be followed by LF: a LF alone could let a CR-LF
    // and a LF-only reader disagree on where the header ends.
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN { Err(ProxyError::V1TooLong) } else { Ok(None) };
    };
    if window[end] == b'\n' {
        return Err(ProxyError::V1LineEnding);
    }
    if end + 2 > V1_MAX_LEN {
        return Err(ProxyError::V1TooLong);
    }
    match buf.get(end + 1) {
        None => Ok(None),
        Some(b'\n') => {
            let line = buf.get(V1_PREFIX.len()..end).ok_or(ProxyError::V1Malformed)?;
            Ok(Some((parse_v1_line(line)?, end + 2)))
        }
        Some(_) => Err(ProxyError::V1LineEnding),
    }
}

/// The line after `PROXY `, without its CRLF.
fn parse_v1_line(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if let Some(ignored) = line.strip_prefix(b"UNKNOWN") {
        // The spec has the receiver ignore whatever follows, but as separate words.
        return match ignored.first() {
            None | Some(b' ') => Ok(ProxyHeader::Unknown),
            Some(_) => Err(ProxyError::V1Protocol),
        };
    }
    let (ipv6, fields) = if let Some(fields) = line.strip_prefix(b"TCP4 ") {
        (false, fields)
    } else if let Some(fields) = line.strip_prefix(b"TCP6 ") {
        (true, fields)
    } else {
        return Err(ProxyError::V1Protocol);
    };
    // Single spaces only: an empty field is a fifth field or a missing one.
    let mut fields = fields.split(|&b| b == b' ');
    let (Some(source), Some(destination), Some(source_port), Some(destination_port), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(ProxyError::V1Malformed);
    };
    let (source_port, destination_port) = (v1_port(source_port)?, v1_port(destination_port)?);
    let address = |field: &[u8], port| -> Result<SocketAddr, ProxyError> {
        let text = str::from_utf8(field).map_err(|_| ProxyError::V1Address)?;
        Ok(if ipv6 {
            SocketAddr::V6(SocketAddrV6::new(text.parse().map_err(|_| ProxyError::V1Address)?, port, 0, 0))
        } else {
            SocketAddr::V4(SocketAddrV4::new(text.parse().map_err(|_| ProxyError::V1Address)?, port))
        })
    };
    Ok(ProxyHeader::Proxied {
        source: address(source, source_port)?,
        destination: address(destination, destination_port)?,
    })
}

/// A port in canonical decimal, as every sender writes it: `u16::from_str` would also take `+80`.
fn v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    let canonical = (1..=5).contains(&field.len())
        && field.iter().all(u8::is_ascii_digit)
        && (field.len() == 1 || field.first() != Some(&b'0'));
    if !canonical {
        return Err(ProxyError::V1Port);
    }
    let value = field.iter().fold(0u32, |value, &digit| value * 10 + u32::from(digit - b'0'));
    u16::try_from(value).map_err(|_| ProxyError::V1Port)
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let Some(&version_command) = buf.get(12) else { return Ok(None) };
    if version_command >> 4 != 2 {
        return Err(ProxyError::V2Version);
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::V2Command),
    };
    let Some(&family_transport) = buf.get(13) else { return Ok(None) };
    let (family, transport) = (family_transport >> 4, family_transport & 0x0f);
    // The spec has the receiver of a LOCAL header ignore the family and the address block.
    let address_len = match family {
        _ if local => 0,
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Err(ProxyError::V2Family),
    };
    if !local && transport > 2 {
        return Err(ProxyError::V2Family);
    }
    let Some(&[high, low]) = buf.get(14..16) else { return Ok(None) };
    let len = usize::from(u16::from_be_bytes([high, low]));
    if V2_FIXED_LEN + len > MAX_V2_LEN {
        return Err(ProxyError::V2TooLong);
    }
    if len < address_len {
        return Err(ProxyError::V2AddressTooShort);
    }
    let Some(block) = buf.get(V2_FIXED_LEN..V2_FIXED_LEN + len) else { return Ok(None) };
    // Only TCP (STREAM) over IPv4 or IPv6 is a client we can name; TLVs after the addresses are skipped.
    let header = match (local, family, transport) {
        (true, _, _) => ProxyHeader::Local,
        (false, 1, 1) => {
            let (source, destination) = (array::<4>(block, 0)?, array::<4>(block, 4)?);
            let ports = array::<4>(block, 8)?;
            ProxyHeader::Proxied {
                source: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(source), port(ports, 0))),
                destination: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(destination), port(ports, 2))),
            }
        }
        (false, 2, 1) => {
            let (source, destination) = (array::<16>(block, 0)?, array::<16>(block, 16)?);
            let ports = array::<4>(block, 32)?;
            ProxyHeader::Proxied {
                source: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(source), port(ports, 0), 0, 0)),
                destination: SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(destination), port(ports, 2), 0, 0)),
            }
        }
        (false, _, _) => ProxyHeader::Unknown,
    };
    Ok(Some((header, V2_FIXED_LEN + len)))
}

/// `N` bytes of the address block from `at`; the length check above makes this infallible, and the
/// error keeps it so without an index that could panic.
fn array<const N: usize>(block: &[u8], at: usize) -> Result<[u8; N], ProxyError> {
    block.get(at..at + N).and_then(|bytes| bytes.try_into().ok()).ok_or(ProxyError::V2AddressTooShort)
}

fn port(ports: [u8; 4], at: usize) -> u16 {
    u16::from_be_bytes([ports[at], ports[at + 1]])
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    const HTTP: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

    fn proxied(source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader::Proxied { source: source.parse().unwrap(), destination: destination.parse().unwrap() }
    }

    fn v2(version_command: u8, family_transport: u8, payload: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend([version_command, family_transport]);
        header.extend(u16::try_from(payload.len()).unwrap().to_be_bytes());
        header.extend(payload);
        header
    }

    fn inet4_block() -> Vec<u8> {
        [&[192, 0, 2, 1][..], &[198, 51, 100, 2], &56324u16.to_be_bytes(), &443u16.to_be_bytes()].concat()
    }

    fn inet6_block() -> Vec<u8> {
        let source: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let destination: Ipv6Addr = "::ffff:198.51.100.2".parse().unwrap();
        [&source.octets()[..], &destination.octets(), &56324u16.to_be_bytes(), &443u16.to_be_bytes()].concat()
    }

    /// ALPN `h2`, authority `example.com`, a NOOP with 3 bytes, CRC32C (not checked).
    fn tlvs() -> Vec<u8> {
        [&b"\x01\x00\x02h2"[..], b"\x02\x00\x0bexample.com", b"\x04\x00\x03abc", b"\x03\x00\x04\x12\x34\x56\x78"]
            .concat()
    }

    fn valid() -> Vec<(Vec<u8>, ProxyHeader)> {
        let longest_unknown = [&b"PROXY UNKNOWN "[..], &[b'x'; V1_MAX_LEN - 16], b"\r\n"].concat();
        assert_eq!(longest_unknown.len(), V1_MAX_LEN);
        let longest_tcp6 =
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
            65535 65535\r\n";
        let ffff = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let unix_block = [&[b'/'; 108][..], &[b'/'; 108]].concat();
        // Fills the header to the bound exactly: 12 address bytes, then a TLV of 3 + 1009.
        let big_tlv = [&[0xe0, 0x03, 0xf1][..], &[7; 0x3f1]].concat();
        vec![
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec(),
                proxied("192.0.2.1:56324", "198.51.100.2:443"),
            ),
            (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n".to_vec(), proxied("0.0.0.0:0", "255.255.255.255:65535")),
            (
                b"PROXY TCP6 2001:db8::1 ::ffff:198.51.100.2 56324 443\r\n".to_vec(),
                proxied("[2001:db8::1]:56324", "[::ffff:198.51.100.2]:443"),
            ),
            (longest_tcp6.to_vec(), proxied(ffff, ffff)),
            (b"PROXY UNKNOWN\r\n".to_vec(), ProxyHeader::Unknown),
            (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".to_vec(), ProxyHeader::Unknown),
            (longest_unknown, ProxyHeader::Unknown),
            (v2(0x20, 0x00, b""), ProxyHeader::Local),
            // A LOCAL header's family and addresses are ignored, even when they make no sense.
            (v2(0x20, 0xff, b"abc"), ProxyHeader::Local),
            (v2(0x20, 0x11, &inet4_block()), ProxyHeader::Local),
            (v2(0x21, 0x11, &inet4_block()), proxied("192.0.2.1:56324", "198.51.100.2:443")),
            (v2(0x21, 0x11, &[inet4_block(), tlvs()].concat()), proxied("192.0.2.1:56324", "198.51.100.2:443")),
            (v2(0x21, 0x21, &inet6_block()), proxied("[2001:db8::1]:56324", "[::ffff:198.51.100.2]:443")),
            (
                v2(0x21, 0x21, &[inet6_block(), tlvs()].concat()),
                proxied("[2001:db8::1]:56324", "[::ffff:198.51.100.2]:443"),
            ),
            (v2(0x21, 0x00, b""), ProxyHeader::Unknown),
            (v2(0x21, 0x01, &tlvs()), ProxyHeader::Unknown),
            (v2(0x21, 0x10, &inet4_block()), ProxyHeader::Unknown),
            (v2(0x21, 0x12, &inet4_block()), ProxyHeader::Unknown),
            (v2(0x21, 0x22, &inet6_block()), ProxyHeader::Unknown),
            (v2(0x21, 0x31, &unix_block), ProxyHeader::Unknown),
            (v2(0x21, 0x32, &[unix_block.clone(), tlvs()].concat()), ProxyHeader::Unknown),
            (v2(0x21, 0x11, &[inet4_block(), big_tlv].concat()), proxied("192.0.2.1:56324", "198.51.100.2:443")),
        ]
    }

    #[test]
    fn the_longest_v2_header_accepted_is_the_bound() {
        let (header, _) = valid().pop().unwrap();
        assert_eq!(header.len(), MAX_V2_LEN);
        assert_eq!(MAX_HEADER_LEN, MAX_V2_LEN);
    }

    /// Every prefix of a valid header waits, the whole header is found, and the stream behind it is
    /// left alone, whatever is already buffered behind it.
    #[test]
    fn valid_headers_split_at_every_position() {
        for (header, expected) in valid() {
            let stream = [&header[..], HTTP].concat();
            for cut in 0..header.len() {
                assert_eq!(parse(&stream[..cut]), Ok(None), "{:?} cut at {cut}", header.escape_ascii().to_string());
            }
            for cut in header.len()..=stream.len() {
                assert_eq!(parse(&stream[..cut]), Ok(Some((expected, header.len()))), "{:?}", expected);
            }
        }
    }

    fn invalid() -> Vec<(Vec<u8>, ProxyError)> {
        let v1 = |line: &str| line.as_bytes().to_vec();
        let too_long_unknown = [&b"PROXY UNKNOWN "[..], &[b'x'; V1_MAX_LEN - 15], b"\r\n"].concat();
        let crlf_past_the_limit = [&b"PROXY UNKNOWN "[..], &[b'x'; V1_MAX_LEN - 14], b"\r\n"].concat();
        vec![
            (v1("GET / HTTP/1.1\r\n"), ProxyError::NotProxy),
            (v1("POST / HTTP/1.1\r\n"), ProxyError::NotProxy),
            (v1("PROXY\r\n"), ProxyError::NotProxy),
            (v1("proxy TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"), ProxyError::NotProxy),
            (v1("\r\n\r\nGET / HTTP/1.1\r\n"), ProxyError::NotProxy),
            (v1("PROXY  TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"), ProxyError::V1Protocol),
            (v1("PROXY UDP4 192.0.2.1 198.51.100.2 56324 443\r\n"), ProxyError::V1Protocol),
            (v1("PROXY TCP4\r\n"), ProxyError::V1Protocol),
            (v1("PROXY UNKNOWNS\r\n"), ProxyError::V1Protocol),
            (v1("PROXY tcp4 192.0.2.1 198.51.100.2 56324 443\r\n"), ProxyError::V1Protocol),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n"), ProxyError::V1LineEnding),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\r\n"), ProxyError::V1LineEnding),
            (v1("PROXY UNKNOWN\n\r\n"), ProxyError::V1LineEnding),
            (v1("PROXY UNKNOWN \rx\r\n"), ProxyError::V1LineEnding),
            (too_long_unknown, ProxyError::V1TooLong),
            (crlf_past_the_limit, ProxyError::V1TooLong),
            ([&b"PROXY TCP4 "[..], &[b'1'; 200]].concat(), ProxyError::V1TooLong),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"), ProxyError::V1Malformed),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \r\n"), ProxyError::V1Malformed),
            (v1("PROXY TCP4 192.0.2.1  198.51.100.2 56324 443\r\n"), ProxyError::V1Malformed),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 80\r\n"), ProxyError::V1Malformed),
            (v1("PROXY TCP4 \r\n"), ProxyError::V1Malformed),
            (v1("PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n"), ProxyError::V1Address),
            (v1("PROXY TCP4 192.0.2.1 ::1 56324 443\r\n"), ProxyError::V1Address),
            (v1("PROXY TCP6 192.0.2.1 ::1 56324 443\r\n"), ProxyError::V1Address),
            (v1("PROXY TCP4 192.0.2.01 198.51.100.2 56324 443\r\n"), ProxyError::V1Address),
            (v1("PROXY TCP4 example.com 198.51.100.2 56324 443\r\n"), ProxyError::V1Address),
            (v1("PROXY TCP6 fe80::1%eth0 ::1 56324 443\r\n"), ProxyError::V1Address),
            (b"PROXY TCP4 192.0.2.1\xff 198.51.100.2 56324 443\r\n".to_vec(), ProxyError::V1Address),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n"), ProxyError::V1Port),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 99999 443\r\n"), ProxyError::V1Port),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 +5632 443\r\n"), ProxyError::V1Port),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n"), ProxyError::V1Port),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 0443 443\r\n"), ProxyError::V1Port),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 443 0x50\r\n"), ProxyError::V1Port),
            (v1("PROXY TCP4 192.0.2.1 198.51.100.2 443 100000\r\n"), ProxyError::V1Port),
            (v2(0x11, 0x11, &inet4_block()), ProxyError::V2Version),
            (v2(0x31, 0x11, &inet4_block()), ProxyError::V2Version),
            (v2(0x01, 0x11, &inet4_block()), ProxyError::V2Version),
            (v2(0x22, 0x11, &inet4_block()), ProxyError::V2Command),
            (v2(0x2f, 0x11, &inet4_block()), ProxyError::V2Command),
            (v2(0x21, 0x41, &inet4_block()), ProxyError::V2Family),
            (v2(0x21, 0x13, &inet4_block()), ProxyError::V2Family),
            (v2(0x21, 0x11, &[inet4_block(), vec![0; MAX_V2_LEN - 16 - 11]].concat()), ProxyError::V2TooLong),
            (v2(0x20, 0x00, &vec![0; 65535]), ProxyError::V2TooLong),
            (v2(0x21, 0x11, &inet4_block()[..11]), ProxyError::V2AddressTooShort),
            (v2(0x21, 0x12, b""), ProxyError::V2AddressTooShort),
            (v2(0x21, 0x21, &inet4_block()), ProxyError::V2AddressTooShort),
            (v2(0x21, 0x31, &[0; 215]), ProxyError::V2AddressTooShort),
        ]
    }

    /// Each invalid header is refused whole, and a prefix is either still waiting or already refused
    /// for the same reason.
    #[test]
    fn invalid_headers_split_at_every_position() {
        for (header, expected) in invalid() {
            let stream = [&header[..], HTTP].concat();
            assert_eq!(parse(&stream), Err(expected), "{:?}", stream.escape_ascii().to_string());
            for cut in 0..stream.len() {
                let answer = parse(&stream[..cut]);
                assert!(answer == Ok(None) || answer == Err(expected), "{:?} cut at {cut}: {answer:?}", expected);
            }
        }
    }

    #[test]
    fn errors_come_as_early_as_the_bytes_allow() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"G"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"PO"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"PROXY GET"), Err(ProxyError::V1Protocol));
        assert_eq!(parse(b"\r\n\r\nG"), Err(ProxyError::NotProxy));
        assert_eq!(parse(&[V2_SIGNATURE, &[0x11]].concat()), Err(ProxyError::V2Version));
        assert_eq!(parse(&[V2_SIGNATURE, &[0x21, 0x11, 0xff, 0xff]].concat()), Err(ProxyError::V2TooLong));
        assert_eq!(parse(&[V2_SIGNATURE, &[0x21, 0x21, 0x00, 35]].concat()), Err(ProxyError::V2AddressTooShort));
        // Plain HTTP to a proxy-protocol listener, whatever the method, is refused within 6 bytes.
        for method in
            ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "PRI", "PROPFIND"]
        {
            let request = format!("{method} / HTTP/1.1\r\nHost: x\r\n\r\n");
            let refused = (1..=request.len()).find(|&n| parse(&request.as_bytes()[..n]).is_err());
            assert!(refused.is_some_and(|n| n <= 6), "{method}: refused at {refused:?}");
        }
    }

    #[test]
    fn every_error_has_a_description() {
        for (_, error) in invalid() {
            assert!(!error.description().is_empty());
        }
        assert_eq!(ProxyError::NotProxy.description(), "not a PROXY protocol header");
    }

    /// Bytes that often start like a header, so that the parser gets past its first checks.
    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        let start = prop_oneof![
            Just(Vec::new()),
            Just(b"PROXY ".to_vec()),
            Just(b"PROXY TCP4 ".to_vec()),
            Just(b"PROXY TCP6 ".to_vec()),
            Just(b"PROXY UNKNOWN".to_vec()),
            Just(V2_SIGNATURE.to_vec()),
            (0x20u8..0x22, any::<u8>(), 0u16..80)
                .prop_map(|(vc, ft, len)| { [V2_SIGNATURE, &[vc, ft], &len.to_be_bytes()].concat() }),
        ];
        let tail = vec(prop_oneof![any::<u8>(), proptest::sample::select(b" .:0123456789abcdef\r\n".to_vec())], 0..160);
        (start, tail).prop_map(|(start, tail)| [start, tail].concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Never a panic, never more consumed than given, and every answer final: the bytes that come
        /// later never change an answer already given for a prefix.
        #[test]
        fn answers_are_final(buf in bytes()) {
            let whole = parse(&buf);
            if let Ok(Some((_, consumed))) = whole {
                prop_assert!(consumed <= buf.len() && consumed <= MAX_HEADER_LEN);
            }
            for cut in 0..buf.len() {
                let answer = parse(&buf[..cut]);
                if answer != Ok(None) {
                    prop_assert_eq!(answer, whole, "cut at {}", cut);
                }
            }
            if whole == Ok(None) {
                prop_assert!(buf.len() < MAX_HEADER_LEN);
            }
        }

        /// Any TCP endpoints, in v1 or v2, with any TLV bytes after a v2 address block.
        #[test]
        fn any_endpoints_are_read_back(
            source in any::<SocketAddr>(),
            destination in any::<SocketAddr>(),
            binary: bool,
            tlvs in vec(any::<u8>(), 0..64),
        ) {
            let (source, destination) = match (source, destination) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => (SocketAddr::V4(s), SocketAddr::V4(d)),
                // Flow and scope ids are not carried: the header has no room for them.
                (s, d) => {
                    let v6 = |a: SocketAddr| match a {
                        SocketAddr::V4(a) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
                        SocketAddr::V6(a) => SocketAddrV6::new(*a.ip(), a.port(), 0, 0),
                    };
                    (SocketAddr::V6(v6(s)), SocketAddr::V6(v6(d)))
                }
            };
            let header = match (binary, source, destination) {
                (false, SocketAddr::V4(_), _) => format!("PROXY TCP4 {} {} {} {}\r\n", source.ip(), destination.ip(), source.port(), destination.port()).into_bytes(),
                (false, SocketAddr::V6(_), _) => format!("PROXY TCP6 {} {} {} {}\r\n", source.ip(), destination.ip(), source.port(), destination.port()).into_bytes(),
                (true, SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    let block = [&s.ip().octets()[..], &d.ip().octets(), &s.port().to_be_bytes(), &d.port().to_be_bytes()];
                    v2(0x21, 0x11, &[&block.concat()[..], &tlvs].concat())
                }
                (true, SocketAddr::V6(s), SocketAddr::V6(d)) => {
                    let block = [&s.ip().octets()[..], &d.ip().octets(), &s.port().to_be_bytes(), &d.port().to_be_bytes()];
                    v2(0x21, 0x21, &[&block.concat()[..], &tlvs].concat())
                }
                _ => unreachable!("both endpoints are of one family"),
            };
            let stream = [&header[..], HTTP].concat();
            for cut in 0..header.len() {
                prop_assert_eq!(parse(&stream[..cut]), Ok(None));
            }
            prop_assert_eq!(parse(&stream), Ok(Some((ProxyHeader::Proxied { source, destination }, header.len()))));
        }
    }
}
