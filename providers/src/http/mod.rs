//! What every remote provider needs from HTTP, whoever its vendor is.
//!
//! - [`ClientCache`]: the transport, one `reqwest::Client` per connect-timeout setting, so key
//!   rotations and reloads reuse open connections.
//! - [`address`]: which addresses downloads may reach (no internal ones), and the resolver
//!   that enforces it.
//! - [`body`]: body reads under a size cap, and the base64 every image API sends.
//! - [`cancel`]: cancelling an upstream job a call abandons, best effort.
//! - [`config`]: the shared HTTP settings as the core's types, and shared setting checks.
//! - [`download`]: result-URL downloads kept to allowed hosts (redirects included), under a
//!   size cap, and `data:` URLs.
//! - [`error`]: transport failures classified once, and the texts messages are made of.
//! - [`retry`]: when to retry and how long to wait.
//! - [`executor`]: the attempt loop (keys, retries, deadline, cancellation, progress events);
//!   a provider hands it one attempt and writes no loop of its own.
//! - [`job`]: what every submit-then-poll provider shares: settings, sends, result images.
//! - [`json`]: one JSON request of a submit-then-poll API, and the texts of its error bodies.
//! - [`poll`]: waiting on submit-then-poll APIs.
//! - [`sse`]: server-sent events.
//! - [`token`]: short-lived bearer tokens from a file or a command, refreshed before they expire.
//! - [`transient`]: status checks that fail transiently are checked again.

pub mod address;
pub mod body;
pub mod cancel;
pub mod config;
pub mod download;
pub mod error;
pub mod executor;
pub mod job;
pub mod json;
pub mod poll;
pub mod retry;
pub mod sse;
pub mod token;
pub mod transient;

use std::{collections::HashMap, sync::Mutex, time::Duration};

pub use body::{read_capped, read_truncated, ReadError};

/// The cores this process may use (2 when unknown): every bound on CPU-heavy work (image
/// decodes, previews, allocator arenas) reads this one figure.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
pub use download::{AllowedHosts, Downloader};
pub use error::{describe_bytes, describe_wait, redacted, transport_error};
pub use executor::{Attempt, Executor, Sent};
pub use poll::{PollStatus, Poller};
pub use retry::{GiveUp, RetryPolicy};
pub use token::{TokenSource, Tokens};

/// The `User-Agent` every request of this crate sends.
pub const USER_AGENT: &str = concat!("imagegen-mcp/", env!("CARGO_PKG_VERSION"));

/// One `reqwest::Client` per distinct client-level settings, kept across reloads.
///
/// Timeouts on connect (and proxies, later) live on the client, not on each request, and a
/// client owns its connection pool: reusing it means a key rotation costs no new TLS handshakes.
#[derive(Debug, Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<u64, reqwest::Client>>,
}

impl ClientCache {
    /// The client for these settings, built on first use.
    pub fn client(&self, connect_timeout_s: u64) -> reqwest::Result<reqwest::Client> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&connect_timeout_s) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(connect_timeout_s))
            .user_agent(USER_AGENT)
            .build()?;
        clients.insert(connect_timeout_s, client.clone());
        Ok(client)
    }

    /// How many distinct clients exist.
    pub fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no client was built yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `base` with `path` appended to its path, keeping any query (Azure-style `api-version`).
pub fn endpoint(base: &url::Url, path: &str) -> url::Url {
    let mut url = base.clone();
    let joined = format!("{}/{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_joins_with_or_without_a_trailing_slash_and_keeps_the_query() {
        for base in ["https://api.openai.com/v1", "https://api.openai.com/v1/"] {
            let url = endpoint(&base.parse().unwrap(), "images/generations");
            assert_eq!(url.as_str(), "https://api.openai.com/v1/images/generations");
        }
        let azure =
            "https://x.openai.azure.com/openai/deployments/d?api-version=2025-04-01-preview";
        let url = endpoint(&azure.parse().unwrap(), "images/generations");
        assert_eq!(
            url.as_str(),
            "https://x.openai.azure.com/openai/deployments/d/images/generations?api-version=2025-04-01-preview"
        );
        let root = endpoint(
            &"http://localhost:8080".parse().unwrap(),
            "images/generations",
        );
        assert_eq!(root.as_str(), "http://localhost:8080/images/generations");
    }

    #[test]
    fn clients_are_shared_per_connect_timeout() {
        let cache = ClientCache::default();
        cache.client(10).unwrap();
        cache.client(10).unwrap();
        assert_eq!(cache.len(), 1);
        cache.client(3).unwrap();
        assert_eq!(cache.len(), 2);
    }
}
