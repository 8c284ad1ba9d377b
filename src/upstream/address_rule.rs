//! Which addresses an upstream's connections may go to: the rule that holds after DNS
//! resolution (so a rebinding name cannot slip past). A host other than the upstream's own — a
//! redirect target, a token realm — may not lead into loopback, private, link-local, multicast
//! or other non-public addresses, unless the upstream itself lives in such a range or lists the
//! host in `trusted_hosts`. Used by the direct connector and by the proxy tunnel alike.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Upstream, host_key};

/// Which addresses a host may be dialled at.
pub struct AddressRule {
    home_host: String,
    trusted_hosts: Vec<String>,
    /// The upstream is written as a non-public address (a literal, `localhost`): its
    /// redirects may lead into non-public ranges too.
    home_literal_private: bool,
    /// The upstream's own name resolved into a non-public range at its latest resolution:
    /// re-evaluated at every resolution, so one private answer (a rebinding) does not open
    /// the private network to its redirects for good.
    home_resolved_private: AtomicBool,
}

impl AddressRule {
    pub fn new(upstream: &Upstream) -> AddressRule {
        let home_host = host_key(upstream.url.host_str().unwrap_or(""));
        let literal_private = home_host.parse::<IpAddr>().is_ok_and(|ip| !is_public(ip));
        AddressRule {
            home_literal_private: literal_private || home_host == "localhost",
            home_resolved_private: AtomicBool::new(false),
            trusted_hosts: upstream.trusted_hosts.clone(),
            home_host,
        }
    }

    /// The addresses of `host` that may be dialled; an error naming the fix if none may.
    pub fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> io::Result<Vec<SocketAddr>> {
        let host = host_key(host);
        if host == self.home_host {
            let private = addrs.iter().any(|a| !is_public(a.ip()));
            self.home_resolved_private.store(private, Ordering::Relaxed);
            return Ok(addrs);
        }
        if self.trusted_hosts.contains(&host)
            || self.home_literal_private
            || self.home_resolved_private.load(Ordering::Relaxed)
        {
            return Ok(addrs);
        }
        let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| is_public(a.ip())).collect();
        if public.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{host} resolves only to non-public addresses; berth does not follow an upstream there \
                     unless the upstream lists it in trusted_hosts"
                ),
            ));
        }
        Ok(public)
    }
}

/// Globally routable, as far as berth is concerned: not loopback, private, link-local,
/// shared (CGNAT), benchmarking, documentation, reserved, multicast or unspecified; an IPv6
/// address that carries an IPv4 one (mapped, NAT64, 6to4) is judged by that IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 192 && b == 0 && c == 2)
                || (a == 198 && b == 51 && c == 100)
                || (a == 203 && b == 0 && c == 113))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits; the
            // local-use NAT64 prefix (64:ff9b:1::/48) is private by definition.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(embedded(s[6], s[7]));
            }
            if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
                return false;
            }
            // 6to4 (2002::/16) carries its IPv4 address in bits 16..48.
            if s[0] == 0x2002 {
                return is_public(embedded(s[1], s[2]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(url: &str, trusted: &str) -> AddressRule {
        let text = format!("[upstreams.\"r\"]\nurl = {url:?}\n{trusted}\n");
        let config = crate::config::Config::from_toml(&text).unwrap();
        AddressRule::new(&config.upstreams["r"])
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn non_public_ranges() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "198.18.0.1",
            "198.19.255.254",
            "240.0.0.1",
            "255.255.255.254",
            "192.0.2.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:a00:1::1",
            "2002:c0a8:101::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "1.1.1.1",
            "140.82.112.34",
            "2606:4700::1111",
            "64:ff9b::101:101",
            "2002:101:101::1",
            "198.20.0.1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn a_foreign_host_may_not_lead_into_the_private_network() {
        let r = rule(
            "https://registry.example",
            "trusted_hosts = [\"minio.lan\"]",
        );
        let metadata = addrs(&["169.254.169.254:80"]);
        let e = r.filter("cdn.example", metadata.clone()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("trusted_hosts"), "{e}");
        // Rebinding: public and private answers mixed; only the public ones are dialled.
        let mixed = addrs(&["127.0.0.1:443", "1.2.3.4:443"]);
        assert_eq!(
            r.filter("cdn.example", mixed).unwrap(),
            addrs(&["1.2.3.4:443"])
        );
        assert!(r.filter("minio.lan", metadata.clone()).is_ok(), "trusted");
        assert!(
            r.filter("REGISTRY.example", metadata).is_ok(),
            "the upstream itself"
        );
    }

    #[test]
    fn an_upstream_in_a_private_range_may_redirect_within_it() {
        let r = rule("http://127.0.0.1:5000", "");
        assert!(r.filter("127.0.0.1", addrs(&["127.0.0.1:5001"])).is_ok());
        assert!(r.filter("other.lan", addrs(&["10.0.0.5:80"])).is_ok());
        let named = rule("http://registry.lan:5000", "");
        assert!(named.filter("cdn.lan", addrs(&["10.0.0.5:80"])).is_err());
        named
            .filter("registry.lan", addrs(&["10.0.0.4:5000"]))
            .unwrap();
        assert!(
            named.filter("cdn.lan", addrs(&["10.0.0.5:80"])).is_ok(),
            "while the upstream's own name resolves into a private range"
        );
        named
            .filter("registry.lan", addrs(&["1.2.3.4:5000"]))
            .unwrap();
        assert!(
            named.filter("cdn.lan", addrs(&["10.0.0.5:80"])).is_err(),
            "a private answer once does not open the private network for good"
        );
    }
}
