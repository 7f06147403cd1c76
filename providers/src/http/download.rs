//! Result-URL downloads that cannot be turned against this server, and `data:` URLs.
//!
//! URLs are fetched only from the base URL's origin (scheme, host and port) or the configured
//! `download_hosts`, redirects included, so a response cannot make this server fetch arbitrary
//! addresses or other ports of its host; every body is read under a size cap.
//!
//! On top of the host list, no download reaches an internal address (loopback, link-local,
//! private, CGNAT, unspecified, in any IPv6 spelling: [`super::address`]) but the base URL's
//! own (a local server serving its own results): host names are checked after
//! resolving and before connecting by the client's resolver, IP literals before sending and on
//! every redirect. The download client uses no proxy, so the address checked is the one
//! connected to. A refusal is a `bad_response` error: the upstream's answer pointed somewhere
//! it must not.

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;

use crate::ProviderError;

use super::{
    address::{AddressGuard, AddressRefused, GuardedResolver},
    body::{bad, decode_base64, read_capped, too_large, ReadError},
    error::{find_source, redacted, transport_error},
};

/// The most redirects a result-URL download follows.
pub const MAX_REDIRECTS: usize = 5;

/// Where result URLs may be downloaded from: the base URL's origin and `download_hosts`.
///
/// Ports count: a result URL (or a redirect) naming another port of the base URL's host would
/// otherwise make this server a port scanner of that host.
#[derive(Debug)]
pub struct AllowedHosts {
    /// The base URL's scheme, host and port (its scheme's default when it names none).
    base: Option<(String, String, u16)>,
    /// `download_hosts` entries: `host:port`, or a bare host meaning ports 80 and 443; a
    /// host `*.example.com` means any subdomain of `example.com` (not the name itself).
    extra: Vec<(String, Option<u16>)>,
}

impl AllowedHosts {
    /// The origin of `base_url`, and each `download_hosts` entry (`host:port`, or a bare host
    /// meaning its default ports 80 and 443 only; `*.example.com` for any subdomain).
    pub fn new(base_url: &url::Url, download_hosts: &[String]) -> Self {
        let url = base_url;
        let base = match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => {
                Some((url.scheme().to_string(), normalize_host(host), port))
            }
            _ => None,
        };
        let extra = download_hosts
            .iter()
            .map(|entry| split_host_port(entry))
            .filter(|(host, _)| !host.is_empty())
            .collect();
        Self { base, extra }
    }

    /// Whether `url` may be fetched.
    pub fn allows(&self, url: &url::Url) -> bool {
        let (Some(host), Some(port)) = (
            url.host_str().map(normalize_host),
            url.port_or_known_default(),
        ) else {
            return false;
        };
        let base = self
            .base
            .as_ref()
            .is_some_and(|(s, h, p)| s == url.scheme() && *h == host && *p == port);
        base || self.extra.iter().any(|(h, p)| {
            let host_matches = match h.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => *h == host,
            };
            host_matches
                && match p {
                    Some(p) => *p == port,
                    None => matches!(port, 80 | 443),
                }
        })
    }
}

/// A `download_hosts` entry as host and port: `host`, `host:port`, `[v6]`, `[v6]:port` or a
/// bare IPv6 address (which has no port).
fn split_host_port(entry: &str) -> (String, Option<u16>) {
    let entry = entry.trim();
    let (host, port) = match entry
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
    {
        Some((host, rest)) => (host, rest.strip_prefix(':')),
        None => match entry.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            _ => (entry, None),
        },
    };
    match port.map(str::parse::<u16>) {
        None => (normalize_host(host), None),
        Some(Ok(port)) => (normalize_host(host), Some(port)),
        // An entry that does not parse allows nothing rather than every port.
        Some(Err(_)) => (String::new(), None),
    }
}

/// Lowercases a host and drops IPv6 brackets, so `[::1]` and `::1` compare equal.
fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// A URL's host and port for messages, e.g. host `files.example.com` port 8443.
fn describe_origin(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("host `{host}` port {port}"),
        None => format!("host `{host}`"),
    }
}

/// A URL's `host:port`, as a `download_hosts` entry allowing it is written.
fn host_port(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Why the download client refused to follow a redirect.
#[derive(Debug)]
pub(crate) struct RedirectRefused(String);

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedirectRefused {}

/// Whether a download may follow a redirect to `next` after `previous` hops: within
/// [`MAX_REDIRECTS`], http(s), not to an IP literal `guard` refuses (no resolver sees those),
/// and to an allowed host.
fn redirect_verdict(
    next: &url::Url,
    previous: usize,
    hosts: &AllowedHosts,
    guard: &AddressGuard,
) -> Result<(), RedirectRefused> {
    if previous > MAX_REDIRECTS {
        return Err(RedirectRefused(format!(
            "more than {MAX_REDIRECTS} redirects"
        )));
    }
    if !matches!(next.scheme(), "http" | "https") {
        let msg = format!("a redirect to a `{}:` URL was refused", next.scheme());
        return Err(RedirectRefused(msg));
    }
    if let Err(refused) = guard.check_literal(next) {
        return Err(RedirectRefused(format!(
            "a redirect was refused: {refused}"
        )));
    }
    if !hosts.allows(next) {
        return Err(RedirectRefused(format!(
            "a redirect to {} was refused; add `{}` to download_hosts to allow it",
            describe_origin(next),
            host_port(next)
        )));
    }
    Ok(())
}

/// Fetches result URLs from allowed hosts only, redirects included, within a size cap.
#[derive(Debug)]
pub struct Downloader {
    base_url: url::Url,
    allowed_hosts: Arc<AllowedHosts>,
    /// The internal addresses downloads may still reach: the base URL's own.
    guard: AddressGuard,
    /// Its redirect policy keeps to `allowed_hosts`. `None` when it could not be built, which
    /// only makes URL results fail.
    client: Option<reqwest::Client>,
    timeout: Duration,
    max_bytes: usize,
    /// Said after a failed download's status, e.g. how long the provider keeps its results.
    failure_hint: Option<String>,
}

impl Downloader {
    /// Downloads relative to `base_url` (whose origin is allowed) and from `download_hosts`,
    /// each within `timeout` and `max_bytes`.
    pub fn new(
        base_url: &url::Url,
        download_hosts: &[String],
        timeout: Duration,
        max_bytes: usize,
    ) -> Self {
        let allowed_hosts = Arc::new(AllowedHosts::new(base_url, download_hosts));
        let policy_hosts = Arc::clone(&allowed_hosts);
        let guard = AddressGuard::for_base(base_url);
        let policy_guard = guard.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            match redirect_verdict(
                attempt.url(),
                attempt.previous().len(),
                &policy_hosts,
                &policy_guard,
            ) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        // A separate client because a provider's shared one follows redirects anywhere;
        // referers are off because result URLs often carry signed query strings. No proxy:
        // the resolver must see the address actually connected to.
        let client = reqwest::Client::builder()
            .redirect(policy)
            .referer(false)
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(guard.clone())))
            .build()
            .map_err(|e| tracing::warn!(error = %e, "could not build the download client"))
            .ok();
        Self {
            base_url: base_url.clone(),
            allowed_hosts,
            guard,
            client,
            timeout,
            max_bytes,
            failure_hint: None,
        }
    }

    /// Adds `hint` to the message of a download that failed with an HTTP status.
    pub fn with_failure_hint(mut self, hint: impl Into<String>) -> Self {
        self.failure_hint = Some(hint.into());
        self
    }

    /// The hosts downloads may reach.
    pub fn allowed_hosts(&self) -> &AllowedHosts {
        &self.allowed_hosts
    }

    /// Fetches result image `index` (1-based, for messages) from `raw`, a URL absolute or
    /// relative to the base URL.
    pub async fn fetch(&self, index: usize, raw: &str) -> Result<Bytes, ProviderError> {
        // Joining makes relative URLs from compatible servers work and leaves absolute ones be.
        let url = self
            .base_url
            .join(raw)
            .map_err(|e| bad(format!("image {index}: the result URL is not valid: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "image {index}: refusing to download a `{}:` URL; only http and https are allowed",
                url.scheme()
            )));
        }
        self.guard.check_literal(&url).map_err(|refused| {
            bad(format!(
                "image {index}: refusing to download from {}: {refused}",
                redacted(&url)
            ))
        })?;
        if !self.allowed_hosts.allows(&url) {
            return Err(bad(format!(
                "image {index}: refusing to download from {}: only the base URL's own scheme, \
                 host and port and the hosts in download_hosts are allowed; add `{}` to \
                 download_hosts to allow it",
                describe_origin(&url),
                host_port(&url)
            )));
        }
        let client = self.client.as_ref().ok_or_else(|| {
            bad("result URLs cannot be downloaded: the download client could not be built")
        })?;
        let shown = redacted(&url);
        let what = format!("the download of image {index} from {shown}");
        let resp =
            client
                .get(url)
                .timeout(self.timeout)
                .send()
                .await
                .map_err(|e| match find_source::<AddressRefused>(&e) {
                    // Refused by the resolver: nothing was sent.
                    Some(refused) => bad(format!(
                        "image {index}: refusing to download from {shown}: {refused}"
                    )),
                    None => transport_error(e, &what, self.timeout),
                })?;
        let status = resp.status();
        if !status.is_success() {
            let hint = self
                .failure_hint
                .as_deref()
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            return Err(
                bad(format!("{what} failed with HTTP {}{hint}", status.as_u16()))
                    .with_status(status.as_u16()),
            );
        }
        read_capped(resp, self.max_bytes)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => too_large(&format!("image {index}"), self.max_bytes),
                ReadError::Transport(e) => transport_error(e, &what, self.timeout),
            })
    }
}

/// Whether `url` is a `data:` URL (any case).
pub fn is_data_url(url: &str) -> bool {
    url.get(..5)
        .is_some_and(|s| s.eq_ignore_ascii_case("data:"))
}

/// Decodes `data:image/png;base64,...`.
pub fn decode_data_url(url: &str) -> Result<Bytes, String> {
    let rest = url
        .get(5..)
        .filter(|_| is_data_url(url))
        .ok_or_else(|| "not a `data:` URL".to_string())?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| "no `,` separates the media type from the data".to_string())?;
    if !meta.to_ascii_lowercase().ends_with(";base64") {
        return Err("only base64 `data:` URLs are supported".into());
    }
    decode_base64(data).map_err(|e| format!("invalid base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_decode_only_as_base64() {
        assert_eq!(
            &decode_data_url("data:image/png;base64,aGVsbG8=").unwrap()[..],
            b"hello"
        );
        assert!(decode_data_url("data:text/plain,hello").is_err());
        assert!(decode_data_url("http://x").is_err());
    }

    #[test]
    fn hosts_compare_case_insensitively_and_exactly_with_their_ports() {
        let base: url::Url = "http://API.example.com/v1".parse().unwrap();
        let download_hosts = vec![
            "Files.Example.NET".into(),
            "[::1]:9000".into(),
            "cdn.example.org:8443".into(),
            "bad.example.org:http".into(),
        ];
        let hosts = AllowedHosts::new(&base, &download_hosts);
        let allows = |u: &str| hosts.allows(&u.parse().unwrap());
        assert!(allows("http://api.example.com/x.png"));
        assert!(allows("http://api.example.com:80/x.png"));
        // The base URL's origin is its scheme, host and port.
        assert!(!allows("https://api.example.com/x.png"));
        assert!(!allows("http://api.example.com:8080/x.png"));
        // A bare download host means its default ports only.
        assert!(allows("https://files.example.net/x.png"));
        assert!(allows("http://files.example.net/x.png"));
        assert!(!allows("https://files.example.net:8443/x.png"));
        assert!(allows("http://[::1]:9000/x.png"));
        assert!(!allows("http://[::1]:9001/x.png"));
        assert!(allows("https://cdn.example.org:8443/x.png"));
        assert!(!allows("https://cdn.example.org/x.png"));
        assert!(!allows("http://bad.example.org/x.png"));
        assert!(!allows("https://evil.files.example.net/x.png"));
        assert!(!allows("https://example.com/x.png"));
        assert_eq!(split_host_port("::1"), ("::1".into(), None));
    }

    #[test]
    fn a_wildcard_host_allows_its_subdomains_only() {
        let base: url::Url = "https://api.bfl.ai/v1".parse().unwrap();
        let hosts = AllowedHosts::new(&base, &["*.bfl.ai".into(), "*.fal.media:8443".into()]);
        let allows = |u: &str| hosts.allows(&u.parse().unwrap());
        assert!(allows("https://delivery-eu1.bfl.ai/r/x.png"));
        assert!(allows("https://a.b.bfl.ai/x.png"));
        assert!(!allows("https://bfl.ai/x.png"));
        assert!(!allows("https://evilbfl.ai/x.png"));
        assert!(!allows("https://delivery.bfl.ai:8443/x.png"));
        assert!(allows("https://v3.fal.media:8443/x.png"));
        assert!(!allows("https://v3.fal.media/x.png"));
    }

    fn public_downloader(download_hosts: &[&str]) -> Downloader {
        let hosts: Vec<String> = download_hosts.iter().map(|h| h.to_string()).collect();
        Downloader::new(
            &"https://api.example.com/v1".parse().unwrap(),
            &hosts,
            Duration::from_secs(30),
            1024,
        )
    }

    #[tokio::test]
    async fn internal_ip_literals_are_refused_at_once_even_when_listed() {
        let listed = ["10.1.2.3", "169.254.169.254", "[::ffff:a00:1]"];
        for downloader in [public_downloader(&[]), public_downloader(&listed)] {
            for (url, class) in [
                ("http://10.1.2.3/x", "private"),
                ("http://169.254.169.254/latest", "link-local"),
                ("http://[::ffff:10.0.0.1]/", "private"),
                ("http://127.0.0.1:9/x?sig=SECRET", "loopback"),
                ("http://100.64.0.7/x", "carrier-grade NAT"),
            ] {
                let started = std::time::Instant::now();
                let err = downloader.fetch(1, url).await.unwrap_err();
                // Refused before any connection: at once, and saying why.
                assert!(started.elapsed() < Duration::from_millis(200), "{url}");
                assert_eq!(err.kind, crate::ErrorKind::BadResponse, "{url}");
                assert!(err.message.contains(class), "{url}: {err}");
                assert!(err.message.contains("public addresses"), "{url}: {err}");
                assert!(!err.message.contains("SECRET"), "{err}");
                assert!(!err.retryable, "{url}");
            }
        }
    }

    #[tokio::test]
    async fn a_listed_host_name_resolving_to_loopback_is_refused_before_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let downloader = public_downloader(&[&format!("localhost:{port}")]);
        let err = downloader
            .fetch(1, &format!("http://localhost:{port}/x.png"))
            .await
            .unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::BadResponse, "{err}");
        assert!(err.message.contains("loopback"), "{err}");
        // Nobody connected to the listener.
        let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(accepted.is_err(), "a connection was made");
    }

    #[tokio::test]
    async fn an_internal_base_url_may_fetch_its_own_results() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let base: url::Url = format!("http://127.0.0.1:{port}/v1").parse().unwrap();
        let downloader = Downloader::new(&base, &[], Duration::from_secs(5), 1024);
        let serve = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await
                .unwrap();
        };
        let (bytes, ()) = tokio::join!(downloader.fetch(1, "/files/x.png"), serve);
        assert_eq!(&bytes.unwrap()[..], b"ok");
    }

    #[tokio::test]
    async fn a_local_base_url_still_refuses_other_internal_addresses_even_when_listed() {
        let base: url::Url = "http://127.0.0.1:9/v1".parse().unwrap();
        let hosts = vec!["10.1.2.3".to_string(), "169.254.169.254".to_string()];
        let downloader = Downloader::new(&base, &hosts, Duration::from_secs(30), 1024);
        for url in ["http://10.1.2.3/x", "http://169.254.169.254/latest"] {
            let started = std::time::Instant::now();
            let err = downloader.fetch(1, url).await.unwrap_err();
            assert!(started.elapsed() < Duration::from_millis(200), "{url}");
            assert!(err.message.contains("public addresses"), "{url}: {err}");
        }
    }

    #[test]
    fn redirects_to_internal_literals_are_refused_but_to_the_base_urls_own() {
        let base: url::Url = "https://api.example.com/v1".parse().unwrap();
        let hosts = AllowedHosts::new(&base, &["169.254.169.254".into(), "10.1.2.3".into()]);
        let public = AddressGuard::for_base(&base);
        let local = AddressGuard::for_base(&"http://10.1.2.3/v1".parse().unwrap());
        let verdict =
            |u: &str, guard: &AddressGuard| redirect_verdict(&u.parse().unwrap(), 1, &hosts, guard);
        let err = verdict("http://169.254.169.254/latest", &public).unwrap_err();
        assert!(err.0.contains("link-local"), "{err}");
        assert!(verdict("http://10.1.2.3/x", &public).is_err());
        assert!(verdict("http://10.1.2.3/x", &local).is_ok());
        assert!(verdict("http://169.254.169.254/latest", &local).is_err());
        assert!(verdict("https://api.example.com/other.png", &public).is_ok());
        assert!(verdict("https://elsewhere.example.com/x", &public).is_err());
        assert!(redirect_verdict(
            &"https://api.example.com/x".parse().unwrap(),
            MAX_REDIRECTS + 1,
            &hosts,
            &public
        )
        .is_err());
    }
}
