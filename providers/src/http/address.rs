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

/// Which internal addresses one provider's downloads may still reach: those of its own base
/// URL (a local server's own results), and any loopback address when the base URL is on this
/// machine (a local server naming itself `127.0.0.1` or `localhost` either way). Every other
/// internal address is refused.
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    /// The base URL's host when it is an IP literal.
    base_ip: Option<IpAddr>,
    /// The base URL's host when it is a name, lowercased: trusted with whatever it resolves to.
    base_name: Option<String>,
    /// Whether the base URL is on this machine.
    base_is_loopback: bool,
}

impl AddressGuard {
    /// The guard for a provider whose API is at `base_url`.
    pub fn for_base(base_url: &url::Url) -> Self {
        match base_url.host() {
            Some(url::Host::Ipv4(ip)) => Self::for_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Self::for_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                Self {
                    base_is_loopback: name == "localhost" || name.ends_with(".localhost"),
                    base_name: Some(name),
                    base_ip: None,
                }
            }
            None => Self::default(),
        }
    }

    fn for_ip(ip: IpAddr) -> Self {
        Self {
            base_ip: Some(ip),
            base_name: None,
            base_is_loopback: is_loopback(ip),
        }
    }

    /// Why `ip` may not be reached, or `None` when it may.
    pub fn refuses(&self, ip: IpAddr) -> Option<&'static str> {
        let class = internal_class(ip)?;
        let own = self.base_ip == Some(ip) || (self.base_is_loopback && is_loopback(ip));
        (!own).then_some(class)
    }

    /// The refusal of an IP-literal URL, if its address may not be reached.
    pub(crate) fn check_literal(&self, url: &url::Url) -> Result<(), AddressRefused> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        match self.refuses(ip) {
            Some(class) => Err(refusal(&ip.to_string(), class)),
            None => Ok(()),
        }
    }

    /// `addrs` resolved for `host` without those it may not reach; an error when none is left.
    pub fn keep_allowed(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, AddressRefused> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.base_name.as_deref() == Some(host.as_str()) {
            return Ok(addrs);
        }
        let first_refusal = addrs.iter().find_map(|a| self.refuses(a.ip()));
        let kept: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| self.refuses(a.ip()).is_none())
            .collect();
        match (kept.is_empty(), first_refusal) {
            (false, _) => Ok(kept),
            (true, Some(class)) => Err(refusal(&host, &format!("a name for {class}"))),
            (true, None) => Err(AddressRefused(format!("`{host}` has no address"))),
        }
    }
}

/// Loopback in any spelling (`::ffff:127.0.0.1` included).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
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

/// The sentence after "refusing to download from X": why, and what is allowed.
fn refusal(shown: &str, class: &str) -> AddressRefused {
    AddressRefused(format!(
        "`{shown}` is {class}; result URLs may only reach public addresses (or the provider's \
         own base URL host, a local server's own results)"
    ))
}

/// The download client's resolver: resolves as the system does, then drops every address the
/// guard refuses, so a public-looking (or rebinding) name cannot lead to an internal address.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: AddressGuard,
}

impl GuardedResolver {
    /// A resolver enforcing `guard`.
    pub fn new(guard: AddressGuard) -> Self {
        Self { guard }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = guard.keep_allowed(&host, addrs)?;
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
    fn only_the_base_urls_own_internal_address_is_exempt() {
        let guard = |base: &str| AddressGuard::for_base(&base.parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let public = guard("https://api.bfl.ai/v1");
        assert!(public.refuses(ip("127.0.0.1")).is_some());
        assert!(public.refuses(ip("8.8.8.8")).is_none());
        let lan = guard("http://192.168.1.5:7860/");
        assert!(lan.refuses(ip("192.168.1.5")).is_none());
        assert!(lan.refuses(ip("192.168.1.6")).is_some());
        assert!(lan.refuses(ip("127.0.0.1")).is_some());
        for local in [
            "http://127.0.0.1:8080/v1",
            "http://localhost:8080/",
            "http://[::1]:9/",
        ] {
            let g = guard(local);
            assert!(g.refuses(ip("127.0.0.1")).is_none(), "{local}");
            assert!(g.refuses(ip("::1")).is_none(), "{local}");
            assert_eq!(
                g.refuses(ip("10.1.2.3")),
                Some("a private address"),
                "{local}"
            );
            assert!(g.refuses(ip("169.254.169.254")).is_some(), "{local}");
        }
    }

    #[test]
    fn the_resolver_drops_refused_addresses_and_fails_when_none_is_left() {
        let guard = AddressGuard::for_base(&"https://api.example.com/v1".parse().unwrap());
        let a = |s: &str| SocketAddr::new(s.parse().unwrap(), 0);
        let kept = guard
            .keep_allowed("cdn.example.net", vec![a("10.0.0.1"), a("8.8.8.8")])
            .unwrap();
        assert_eq!(kept, [a("8.8.8.8")]);
        let err = guard
            .keep_allowed("rebind.example.net", vec![a("169.254.169.254"), a("::1")])
            .unwrap_err();
        assert!(err.0.contains("link-local"), "{err}");
        // The base URL's own host name may resolve anywhere.
        let kept = guard
            .keep_allowed("API.example.com.", vec![a("10.0.0.1")])
            .unwrap();
        assert_eq!(kept, [a("10.0.0.1")]);
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_by_the_resolver() {
        // `localhost` resolves from the hosts file: no traffic leaves the machine.
        let guard = AddressGuard::for_base(&"https://api.example.com/".parse().unwrap());
        let err = match GuardedResolver::new(guard)
            .resolve("localhost".parse().unwrap())
            .await
        {
            Ok(_) => panic!("localhost was resolved"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
