//! Which peers are trusted: the IP allow-lists behind gunicorn's `forwarded_allow_ips` (whose
//! `X-Forwarded-*` headers we believe) and `proxy_allow_ips` (who may send a PROXY protocol header).
//!
//! The syntax is gunicorn's, comma-separated, plus the word `unix` for peers on a Unix socket, which
//! have no IP address to list. Like gunicorn (`ipaddress.ip_network` in strict mode), a network with
//! host bits set (`192.168.1.1/24`) is refused rather than masked: it is nearly always a typo for the
//! address alone or for the network, and guessing which could trust far more peers than meant.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A set of trusted peers: networks, and whether peers on a Unix socket are in; or everyone.
///
/// Used for [`Config::forwarded_allow_ips`](crate::Config::forwarded_allow_ips) (whose
/// `X-Forwarded-*` headers are believed) and
/// [`Config::proxy_allow_ips`](crate::Config::proxy_allow_ips) (who may send a PROXY protocol
/// header). IPv4 peers reported as IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) match the
/// IPv4 entries.
///
/// ```
/// let proxies: sgi::AllowList = "10.0.0.0/8, fd00::/8, unix".parse()?;
/// assert!(proxies.contains(Some("10.1.2.3".parse().unwrap())));
/// assert!(proxies.contains(Some("::ffff:10.1.2.3".parse().unwrap())));
/// assert!(proxies.contains(None)); // a peer on a Unix socket
/// assert!(!proxies.contains(Some("192.0.2.1".parse().unwrap())));
/// assert_eq!(proxies.to_string(), "10.0.0.0/8,fd00::/8,unix");
/// assert!("10.0.0.1/8".parse::<sgi::AllowList>().is_err()); // host bits set: a typo
/// # Ok::<(), sgi::AllowListError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowList {
    everyone: bool,
    unix: bool,
    nets: Vec<Net>,
}

/// One network, IPv4 ones as their IPv4-mapped IPv6 image (`a.b.c.d/p` is `::ffff:a.b.c.d/96+p`):
/// a dual-stack socket reports an IPv4 peer as `::ffff:a.b.c.d`, and it must match the same entries
/// as when it arrives on an IPv4 socket. As a consequence `::/0` takes in every IPv4 peer too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Net {
    /// Host bits are always zero.
    bits: u128,
    /// 0..=128.
    prefix: u8,
}

const MAPPED: u128 = 0xffff << 32;

impl AllowList {
    /// No peer at all.
    pub fn nobody() -> AllowList {
        AllowList { everyone: false, unix: false, nets: Vec::new() }
    }

    /// Every peer, Unix-socket ones included (`*`).
    pub fn everyone() -> AllowList {
        AllowList { everyone: true, unix: true, nets: Vec::new() }
    }

    /// `127.0.0.1,::1,unix`: gunicorn's default for `forwarded_allow_ips`, which has always trusted
    /// the headers of a peer on a Unix socket (only a local proxy can be there).
    pub fn loopback_and_unix() -> AllowList {
        let nets = [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]
            .map(|ip| Net { bits: to_bits(ip), prefix: 128 })
            .to_vec();
        AllowList { everyone: false, unix: true, nets }
    }

    /// Parses a comma-separated list of `*`, `unix`, addresses (`127.0.0.1`, `::1`, `[::1]`) and
    /// networks (`10.0.0.0/8`, `fd00::/8`). Empty items are skipped, so `""` is nobody and a
    /// trailing comma is harmless. `*` anywhere makes the list everyone, Unix peers included.
    ///
    /// # Errors
    ///
    /// The first bad item, quoted, and why: `"10.0.0.0/33": prefix longer than 32`.
    pub fn parse(spec: &str) -> Result<AllowList, AllowListError> {
        let mut list = AllowList::nobody();
        for item in spec.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            if item == "*" {
                list.everyone = true;
            } else if item.eq_ignore_ascii_case("unix") {
                list.unix = true;
            } else {
                list.nets.push(Net::parse(item).map_err(|why| AllowListError(format!("{item:?}: {why}")))?);
            }
        }
        // One form for everyone, so that equal sets compare equal and display as `*`.
        Ok(if list.everyone { AllowList::everyone() } else { list })
    }

    /// Whether a peer is in; `None` is a peer on a Unix socket.
    pub fn contains(&self, ip: Option<IpAddr>) -> bool {
        match ip {
            _ if self.everyone => true,
            None => self.unix,
            Some(ip) => {
                let bits = to_bits(ip);
                self.nets.iter().any(|net| net.contains(bits))
            }
        }
    }
}

/// A list [`AllowList::parse`] refused: the bad item, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AllowListError(String);

impl std::str::FromStr for AllowList {
    type Err = AllowListError;

    fn from_str(spec: &str) -> Result<AllowList, AllowListError> {
        AllowList::parse(spec)
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.everyone {
            return f.write_str("*");
        }
        let mut separator = "";
        for net in &self.nets {
            write!(f, "{separator}{net}")?;
            separator = ",";
        }
        if self.unix {
            write!(f, "{separator}unix")?;
        }
        Ok(())
    }
}

impl Net {
    /// An address (a network of one) or a network; the error says why the item is neither.
    fn parse(item: &str) -> Result<Net, String> {
        let (addr, prefix) = match item.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (item, None),
        };
        let ip = match addr.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')) {
            Some(inner) => IpAddr::V6(inner.parse().map_err(|_| "not an IPv6 address between the brackets")?),
            None => addr.parse().map_err(|_| "not an IP address, a network, \"*\" or \"unix\"")?,
        };
        let (max, offset) = if ip.is_ipv4() { (32, 96) } else { (128, 0) };
        let prefix = match prefix {
            None => max,
            // Digits only, as `ipaddress` wants: `u8::from_str` would also take `+8`.
            Some(digits) if (1..=3).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits.parse::<u8>().map_err(|_| format!("prefix longer than {max}"))?
            }
            Some(_) => return Err("bad prefix length".into()),
        };
        if prefix > max {
            return Err(format!("prefix longer than {max}"));
        }
        let net = Net { bits: to_bits(ip), prefix: prefix + offset };
        let masked = Net { bits: net.bits & mask(net.prefix), ..net };
        if masked != net {
            return Err(format!("host bits set (the network is {masked})"));
        }
        Ok(net)
    }

    fn contains(&self, bits: u128) -> bool {
        (bits ^ self.bits) & mask(self.prefix) == 0
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix >= 96 && self.bits & mask(96) == MAPPED {
            // Truncation is the point: the low 32 bits are the IPv4 address.
            write!(f, "{}", Ipv4Addr::from(self.bits as u32))?;
            if self.prefix < 128 {
                write!(f, "/{}", self.prefix - 96)?;
            }
        } else {
            write!(f, "{}", Ipv6Addr::from(self.bits))?;
            if self.prefix < 128 {
                write!(f, "/{}", self.prefix)?;
            }
        }
        Ok(())
    }
}

fn to_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => MAPPED | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The network part of a `prefix`-bit network.
fn mask(prefix: u8) -> u128 {
    // A shift by 128 is out of range: `/0` masks everything out.
    u128::MAX.checked_shl(128u32.saturating_sub(u32::from(prefix))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn list(spec: &str) -> AllowList {
        AllowList::parse(spec).unwrap()
    }

    #[test]
    fn parses_every_form_of_item() {
        assert_eq!(list(""), AllowList::nobody());
        assert_eq!(list(" , ,"), AllowList::nobody());
        assert_eq!(list("*"), AllowList::everyone());
        assert_eq!(list("10.0.0.0/8, *, unix"), AllowList::everyone());
        assert_eq!(list("127.0.0.1,::1,unix"), AllowList::loopback_and_unix());
        assert_eq!(list(" 127.0.0.1 ,\t[::1] , UNIX,"), AllowList::loopback_and_unix());
        assert_eq!(list("::ffff:127.0.0.1,::1,unix"), AllowList::loopback_and_unix());
        assert_eq!(list("10.0.0.0/8"), list("::ffff:10.0.0.0/104"));
        assert_eq!(list("[fd00::]/8"), list("fd00::/8"));
        assert_eq!(list("10.0.0.0/08"), list("10.0.0.0/8"));
        assert_eq!(list("unix"), AllowList { everyone: false, unix: true, nets: Vec::new() });
        assert_eq!(list("0.0.0.0/0").nets, [Net { bits: MAPPED, prefix: 96 }]);
        assert_eq!(list("::/0").nets, [Net { bits: 0, prefix: 0 }]);
    }

    #[test]
    fn bad_items_are_named_with_the_reason() {
        let cases = [
            ("10.0.0.0/33", r#""10.0.0.0/33": prefix longer than 32"#),
            ("fd00::/129", r#""fd00::/129": prefix longer than 128"#),
            ("10.0.0.0/999", r#""10.0.0.0/999": prefix longer than 32"#),
            ("::1, 192.168.1.1/24", r#""192.168.1.1/24": host bits set (the network is 192.168.1.0/24)"#),
            ("fd00::1/8", r#""fd00::1/8": host bits set (the network is fd00::/8)"#),
            ("10.0.0.0/", r#""10.0.0.0/": bad prefix length"#),
            ("10.0.0.0/+8", r#""10.0.0.0/+8": bad prefix length"#),
            ("10.0.0.0/-1", r#""10.0.0.0/-1": bad prefix length"#),
            ("10.0.0.0/0008", r#""10.0.0.0/0008": bad prefix length"#),
            ("10.0.0.0/8/8", r#""10.0.0.0/8/8": bad prefix length"#),
            ("localhost", r#""localhost": not an IP address, a network, "*" or "unix""#),
            ("127.0.0.1:80", r#""127.0.0.1:80": not an IP address, a network, "*" or "unix""#),
            ("010.0.0.1", r#""010.0.0.1": not an IP address, a network, "*" or "unix""#),
            ("fe80::1%eth0", r#""fe80::1%eth0": not an IP address, a network, "*" or "unix""#),
            ("[::1", r#""[::1": not an IP address, a network, "*" or "unix""#),
            ("[127.0.0.1]", r#""[127.0.0.1]": not an IPv6 address between the brackets"#),
            ("*, nope", r#""nope": not an IP address, a network, "*" or "unix""#),
        ];
        for (spec, error) in cases {
            assert_eq!(AllowList::parse(spec), Err(AllowListError(error.to_string())), "{spec}");
        }
    }

    #[test]
    fn the_constructors() {
        for peer in [None, ip("127.0.0.1"), ip("::1"), ip("2001:db8::1")] {
            assert!(!AllowList::nobody().contains(peer));
            assert!(AllowList::everyone().contains(peer));
        }
        let default = AllowList::loopback_and_unix();
        assert!(default.contains(None));
        assert!(default.contains(ip("127.0.0.1")));
        assert!(default.contains(ip("::ffff:127.0.0.1")));
        assert!(default.contains(ip("::1")));
        assert!(!default.contains(ip("127.0.0.2")));
        assert!(!default.contains(ip("::2")));
        // `::127.0.0.1` is IPv4-compatible, not IPv4-mapped: a different address.
        assert!(!default.contains(ip("::127.0.0.1")));
    }

    #[test]
    fn networks_have_exact_boundaries() {
        let net = list("10.0.0.0/8");
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.255.255.255")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("9.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(!net.contains(ip("::a00:0")));
        assert!(!net.contains(None));

        let host = list("192.0.2.7/32");
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.6")));
        assert!(!host.contains(ip("192.0.2.8")));

        let all4 = list("0.0.0.0/0");
        assert!(all4.contains(ip("0.0.0.0")));
        assert!(all4.contains(ip("255.255.255.255")));
        assert!(all4.contains(ip("::ffff:1.2.3.4")));
        assert!(!all4.contains(ip("::1")));
        assert!(!all4.contains(ip("2001:db8::1")));

        let all6 = list("::/0");
        assert!(all6.contains(ip("::")));
        assert!(all6.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(all6.contains(ip("1.2.3.4")));
        assert!(!all6.contains(None));

        let host6 = list("2001:db8::1/128");
        assert!(host6.contains(ip("2001:db8::1")));
        assert!(!host6.contains(ip("2001:db8::")));
        assert!(!host6.contains(ip("2001:db8::2")));

        let ula = list("fd00::/8");
        assert!(ula.contains(ip("fd00::")));
        assert!(ula.contains(ip("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!ula.contains(ip("fc00::1")));
        assert!(!ula.contains(ip("fe00::")));
        assert!(!ula.contains(ip("253.0.0.0")));
    }

    #[test]
    fn displays_a_spec_that_parses_back() {
        assert_eq!(AllowList::nobody().to_string(), "");
        assert_eq!(AllowList::everyone().to_string(), "*");
        assert_eq!(AllowList::loopback_and_unix().to_string(), "127.0.0.1,::1,unix");
        assert_eq!(
            list(" 10.0.0.0/8 , [fd00::]/8,unix, ::ffff:192.0.2.0/120").to_string(),
            "10.0.0.0/8,fd00::/8,192.0.2.0/24,unix"
        );
        assert_eq!(list("::fffe:0:0/95").to_string(), "::fffe:0:0/95");
        assert_eq!(list("::ffff:0:0/96").to_string(), "0.0.0.0/0");
    }

    fn net() -> impl Strategy<Value = Net> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(v4, prefix)| (MAPPED | u128::from(v4), prefix + 96)),
            (any::<u128>(), 0u8..=128),
        ]
        .prop_map(|(bits, prefix)| Net { bits: bits & mask(prefix), prefix })
    }

    proptest! {
        #[test]
        fn display_round_trips(everyone: bool, unix: bool, nets in proptest::collection::vec(net(), 0..5)) {
            let list = if everyone { AllowList::everyone() } else { AllowList { everyone, unix, nets } };
            prop_assert_eq!(AllowList::parse(&list.to_string()), Ok(list));
        }

        #[test]
        fn a_network_holds_what_agrees_on_its_prefix(net in net(), flip in 0u32..128) {
            let list = AllowList { everyone: false, unix: false, nets: vec![net] };
            let peer = net.bits ^ (1u128 << (127 - flip));
            let peer = match peer & mask(96) == MAPPED {
                true => IpAddr::V4(Ipv4Addr::from(peer as u32)),
                false => IpAddr::V6(Ipv6Addr::from(peer)),
            };
            prop_assert!(list.contains(Some(IpAddr::V6(Ipv6Addr::from(net.bits)))));
            prop_assert_eq!(list.contains(Some(peer)), flip >= u32::from(net.prefix));
        }

        #[test]
        fn parse_never_panics(spec in "[0-9a-fA-F:./\\[\\], *unix%+-]{0,40}") {
            if let Ok(list) = AllowList::parse(&spec) {
                prop_assert_eq!(AllowList::parse(&list.to_string()), Ok(list));
            }
        }
    }
}
