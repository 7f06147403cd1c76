//! Which network addresses a result download may reach: never this machine, its link-local
//! neighbours (cloud metadata services), private networks or carrier-grade NAT, in any of
//! their spellings (IPv4-mapped and -compatible IPv6, NAT64), so a hostile answer cannot make
//! the server fetch internal URLs.
//!
//! The check runs on the addresses a host name resolves to (by [`GuardedResolver`], on the
//! download client, before any connection) and on IP-literal URLs (before sending and on each
//! redirect, since no resolving happens for them).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What kind of internal address an address is, for messages; `None` for a public one.
pub fn internal_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

/// Whether downloads must not reach `ip` (unless the provider's base URL is internal itself).
pub fn is_internal(ip: IpAddr) -> bool {
    internal_class(ip).is_some()
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_unspecified() || a == 0 => "an unspecified address",
        _ if ip.is_link_local() => "a link-local address",
        _ if ip.is_private() => "a private address",
        (100, 64..=127) => "a carrier-grade NAT address",
        _ if ip.is_broadcast() || ip.is_multicast() || a >= 240 => {
            "a broadcast or reserved address"
        }
        _ => return None,
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    // Another spelling of an IPv4 address is judged as that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        return v4_class(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    Some(match segments[0] {
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_unspecified() => "an unspecified address",
        // Deprecated IPv4-compatible form `::a.b.c.d`.
        _ if segments[..6] == [0; 6] => {
            let [.., hi, lo] = segments;
            return v4_class(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
        }
        s if s & 0xffc0 == 0xfe80 => "a link-local address",
        // Site-local (deprecated) behaves as private.
        s if s & 0xffc0 == 0xfec0 => "a private address",
        s if s & 0xfe00 == 0xfc00 => "a private address",
        s if s & 0xff00 == 0xff00 => "a multicast address",
        _ => return None,
    })
}

/// Whether `host` (a URL's host as written) is this machine or an internal network: an
/// internal IP literal, `localhost` or a `*.localhost` name.
pub fn host_is_internal(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Ipv4(ip) => is_internal(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => is_internal(IpAddr::V6(*ip)),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

/// Why a download was refused before connecting: the host's address is internal.
#[derive(Debug)]
pub struct AddressRefused(pub(crate) String);

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddressRefused {}

/// The sentence after "refusing to download from X": why, and what would allow it.
pub(crate) fn refusal(shown: &str, class: &str) -> AddressRefused {
    AddressRefused(format!(
        "`{shown}` is {class}; result URLs may only reach public addresses (internal ones \
         only when the provider's base URL is itself internal, a local server's own results)"
    ))
}

/// The refusal of an IP-literal URL, if its address is internal.
pub(crate) fn check_literal(url: &url::Url) -> Result<(), AddressRefused> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    match internal_class(ip) {
        Some(class) => Err(refusal(&ip.to_string(), class)),
        None => Ok(()),
    }
}

/// The download client's resolver: resolves as the system does, then drops every internal
/// address, so a public-looking name (or a rebinding one) cannot lead to an internal address.
/// The base URL's own host name is trusted with whatever it resolves to (the operator chose it).
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    trusted: Option<String>,
}

impl GuardedResolver {
    /// A resolver trusting `trusted` (the base URL's host name, if it is a name).
    pub fn new(trusted: Option<&str>) -> Self {
        Self {
            trusted: trusted.map(|h| h.trim_end_matches('.').to_ascii_lowercase()),
        }
    }

    /// `addrs` resolved for `host`, internal ones dropped; an error when none is left.
    pub fn keep_public(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, AddressRefused> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.trusted.as_deref() == Some(host.as_str()) {
            return Ok(addrs);
        }
        let first_internal = addrs.iter().find_map(|a| internal_class(a.ip()));
        let public: Vec<SocketAddr> = addrs.into_iter().filter(|a| !is_internal(a.ip())).collect();
        match (public.is_empty(), first_internal) {
            (false, _) => Ok(public),
            (true, Some(class)) => Err(refusal(&host, &format!("a name for {class}"))),
            (true, None) => Err(AddressRefused(format!("`{host}` has no address"))),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = guard.keep_public(&host, addrs)?;
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn internal(s: &str) -> bool {
        is_internal(s.parse().unwrap())
    }

    #[test]
    fn internal_ranges_in_every_spelling_are_refused_and_public_ones_pass() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(internal(ip), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "172.15.255.255",
            "100.63.255.255",
            "100.128.0.1",
            "169.255.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!internal(ip), "{ip}");
        }
    }

    #[test]
    fn internal_hosts_are_literals_and_localhost_names() {
        let host = |u: &str| {
            let url: url::Url = u.parse().unwrap();
            host_is_internal(&url.host().unwrap())
        };
        assert!(host("http://127.0.0.1:8080/v1"));
        assert!(host("http://[::1]:8080/"));
        assert!(host("http://localhost:7860/"));
        assert!(host("http://gpu.localhost/"));
        assert!(!host("https://api.bfl.ai/v1"));
        assert!(!host("http://8.8.8.8/"));
    }

    #[test]
    fn the_resolver_drops_internal_addresses_and_fails_when_none_is_left() {
        let guard = GuardedResolver::new(Some("api.example.com"));
        let a = |s: &str| SocketAddr::new(s.parse().unwrap(), 0);
        let kept = guard
            .keep_public("cdn.example.net", vec![a("10.0.0.1"), a("8.8.8.8")])
            .unwrap();
        assert_eq!(kept, [a("8.8.8.8")]);
        let err = guard
            .keep_public("rebind.example.net", vec![a("169.254.169.254"), a("::1")])
            .unwrap_err();
        assert!(err.0.contains("link-local"), "{err}");
        // The base URL's own host name may resolve anywhere.
        let kept = guard
            .keep_public("API.example.com.", vec![a("10.0.0.1")])
            .unwrap();
        assert_eq!(kept, [a("10.0.0.1")]);
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_by_the_resolver() {
        // `localhost` resolves from the hosts file: no traffic leaves the machine.
        let guard = GuardedResolver::new(None);
        let err = match guard.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost was resolved"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
