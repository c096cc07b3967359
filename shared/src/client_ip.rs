//! The client's address for per-address limits. Behind a reverse proxy every client shares the
//! proxy's address, so `TRUSTED_PROXIES` names the proxies (CIDRs) whose `X-Forwarded-For` is
//! believed: only when the TCP peer is one of them is the client the right-most forwarded
//! address that is not itself a trusted proxy. Anyone else's header is ignored, so a client
//! cannot pick its own address.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Forwarded entries looked at, right to left; a longer chain stops at the last one examined.
const FORWARDED_ENTRIES_MAX: usize = 32;

/// The reverse proxies whose `X-Forwarded-For` is believed (empty: none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of CIDRs (`10.0.0.0/8,fd00::/8`) or single addresses; an
    /// empty list trusts no proxy.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        format!("{s:?} is not a CIDR (such as 10.0.0.0/8) or an IP address")
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` (IPv4-mapped IPv6 addresses as IPv4) is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request that arrived from `peer` with these `X-Forwarded-For`
    /// header values (in order): `peer` itself unless it is trusted; else the right-most
    /// forwarded address that is not trusted (or, if every hop is trusted, the left-most one).
    /// An entry that is not an address ends the walk at the hop that forwarded it.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a [u8]>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let values: Vec<&'a [u8]> = forwarded_for.into_iter().collect();
        let entries = values
            .iter()
            .rev()
            .flat_map(|v| v.rsplit(|b| *b == b','))
            .take(FORWARDED_ENTRIES_MAX);
        let mut client = peer;
        for entry in entries {
            match parse_entry(entry) {
                Some(ip) if self.contains(ip) => client = ip,
                Some(ip) => return ip,
                None => return client,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?.trim();
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip()))
        .or_else(|_| {
            s.strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or(s)
                .parse::<IpAddr>()
        })
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client(proxies: &str, peer: &str, xff: &[&str]) -> IpAddr {
        TrustedProxies::parse(proxies)
            .unwrap()
            .client_ip(ip(peer), xff.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn parses_cidrs_and_addresses_and_names_bad_entries() {
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        let t = TrustedProxies::parse(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8").unwrap();
        assert!(t.contains(ip("10.2.3.4")));
        assert!(t.contains(ip("::ffff:10.2.3.4")));
        assert!(t.contains(ip("192.168.1.7")));
        assert!(!t.contains(ip("192.168.1.8")));
        assert!(t.contains(ip("fd12::1")));
        let e = TrustedProxies::parse("10.0.0.0/8,nonsense").unwrap_err();
        assert!(e.contains("nonsense"), "{e}");
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn the_header_is_believed_only_from_trusted_peers() {
        // No proxies configured, or an untrusted peer: the header is ignored.
        assert_eq!(client("", "203.0.113.9", &["1.1.1.1"]), ip("203.0.113.9"));
        assert_eq!(
            client("10.0.0.0/8", "203.0.113.9", &["1.1.1.1"]),
            ip("203.0.113.9")
        );
        // A trusted peer: the right-most untrusted entry, whatever the client put to its left.
        assert_eq!(
            client("10.0.0.0/8", "10.0.0.5", &["6.6.6.6, 198.51.100.7"]),
            ip("198.51.100.7")
        );
        // Trusted hops are skipped, across header lines too.
        assert_eq!(
            client(
                "10.0.0.0/8",
                "10.0.0.5",
                &["6.6.6.6, 198.51.100.7", "10.1.1.1"]
            ),
            ip("198.51.100.7")
        );
        // Ports and brackets.
        assert_eq!(
            client("10.0.0.0/8", "10.0.0.5", &["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            client("10.0.0.0/8", "10.0.0.5", &["198.51.100.7:5678"]),
            ip("198.51.100.7")
        );
        // No header, garbage, or only trusted hops: the nearest believable address.
        assert_eq!(client("10.0.0.0/8", "10.0.0.5", &[]), ip("10.0.0.5"));
        assert_eq!(
            client("10.0.0.0/8", "10.0.0.5", &["6.6.6.6, garbage"]),
            ip("10.0.0.5")
        );
        assert_eq!(
            client("10.0.0.0/8", "10.0.0.5", &["10.9.9.9, 10.1.1.1"]),
            ip("10.9.9.9")
        );
    }
}
