//! `[cluster]`: the Redis server that replicas share state through: budget spend and
//! reservations (see [`crate::budget`]), key cooldowns and disables ([`keys`]), and per-caller
//! `requests_per_minute` ([`rate`]).
//!
//! One multiplexed connection per process, made on first use and remade after a failure, and
//! a timeout on every command: a Redis that is down or unreachable costs a call at most
//! [`COMMAND_TIMEOUT`], never a hang. What the connection last did is kept for the status
//! (`connected`, or `down` since when and why), so an operator sees a replica running on its
//! own. The URL may carry a password: it is shown redacted everywhere.

pub mod keys;
pub mod rate;

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

pub use keys::share_keys;

use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, FromRedisValue, Script};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::redacted_url;

/// The longest one Redis command (a script run) may take, connecting included.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// `[cluster]`: state shared by every replica through one Redis.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[:password@]host:port[/db]`; unset: every replica keeps its own state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// What every key this server writes starts with, so several deployments can share one
    /// Redis.
    pub key_prefix: String,
    /// With Redis unreachable, paid calls go ahead on this replica's own budget counts (and
    /// say so) instead of being refused.
    pub fail_open: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "imagegen".into(),
            fail_open: false,
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &self.redis_url.as_deref().map(redacted_url))
            .field("key_prefix", &self.key_prefix)
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

impl ClusterConfig {
    /// Why `redis_url` cannot be used, for the configuration check; `None` when it can (or is unset).
    pub fn url_problem(&self) -> Option<String> {
        let url = self.redis_url.as_deref()?;
        if url.starts_with("rediss://") {
            return Some(
                "rediss:// (TLS) is not supported by this build; use redis:// over a trusted \
                 network or a TLS tunnel"
                    .into(),
            );
        }
        match redis::Client::open(url) {
            Ok(_) => None,
            // The parser's message may quote the URL, password included: say what is wanted.
            Err(_) => Some("is not a Redis URL: use redis://[:password@]host:port[/db]".into()),
        }
    }
}

/// The cluster's state, as `imagegen://status` and `list_providers` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterStatus {
    /// The Redis URL, password redacted.
    pub redis_url: String,
    /// `connected`, `down` (the last command failed) or `not_connected` (no command yet).
    pub state: String,
    /// Since when Redis has been unreachable (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_since: Option<String>,
    /// The last failure, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What budgets do while Redis is down: `closed` (paid calls are refused) or `open`
    /// (calls go ahead on this replica's own counts).
    pub fail_mode: String,
    /// Key cooldowns and disables: `shared` (written to and followed from Redis) or `local`
    /// (Redis unreachable: this replica's own until it is back); absent before any key pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_state: Option<String>,
    /// Per-caller `requests_per_minute`: `shared` (counted in Redis for every replica) or
    /// `local` (Redis unreachable: each replica counts its own). `max_in_flight` is always
    /// counted per replica.
    #[serde(default)]
    pub caller_limits: String,
}

/// Why a command did not run: Redis unreachable, too slow, or refusing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDown {
    /// Since when commands have been failing (RFC 3339, UTC).
    pub since: String,
    /// What went wrong, for people (never the URL's password).
    pub reason: String,
}

/// What the connection last did.
#[derive(Debug, Default)]
struct Health {
    connected_once: bool,
    down_since: Option<String>,
    last_error: Option<String>,
}

/// The shared Redis of a deployment; one per process, kept across reloads while its URL and
/// prefix stay.
pub struct Cluster {
    url: String,
    prefix: String,
    client: redis::Client,
    /// Made on first use; dropped after a failure so the next command starts afresh.
    manager: tokio::sync::Mutex<Option<ConnectionManager>>,
    health: Mutex<Health>,
    /// This process among the replicas (its own published changes are ignored).
    origin: String,
    /// The key state shared through this cluster, made when the first pool is attached.
    key_sync: OnceLock<Arc<keys::KeySync>>,
    /// Stops this cluster's background tasks when it is dropped (replaced by a reload).
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("redis_url", &redacted_url(&self.url))
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The cluster `config` names, or `None` without a `redis_url`; no connection is made yet.
    pub fn open(config: &ClusterConfig) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(url) = config.redis_url.as_deref() else {
            return Ok(None);
        };
        if let Some(problem) = config.url_problem() {
            anyhow::bail!("cluster.redis_url {problem}");
        }
        let client = redis::Client::open(url)
            .map_err(|_| anyhow::anyhow!("cluster.redis_url is not a Redis URL"))?;
        Ok(Some(Arc::new(Self {
            url: url.to_string(),
            prefix: config.key_prefix.clone(),
            client,
            manager: tokio::sync::Mutex::default(),
            health: Mutex::default(),
            origin: uuid::Uuid::new_v4().simple().to_string(),
            key_sync: OnceLock::new(),
            stop: tokio_util::sync::CancellationToken::new(),
        })))
    }

    /// `previous` when it talks to the same Redis under the same prefix (so its connection and
    /// state carry over a reload), else a new one for `config`.
    pub fn keep_or_open(
        previous: Option<&Arc<Self>>,
        config: &ClusterConfig,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        match (previous, config.redis_url.as_deref()) {
            (Some(old), Some(url)) if old.url == url && old.prefix == config.key_prefix => {
                Ok(Some(old.clone()))
            }
            _ => Self::open(config),
        }
    }

    /// A key under this deployment's prefix. The prefix is a hash tag (`{imagegen}:...`), so
    /// every key of a script lies in one slot of a Redis Cluster too.
    pub fn key(&self, rest: &str) -> String {
        format!("{{{}}}:{rest}", self.prefix)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state for status views, with the fail mode budgets are configured with.
    pub fn status(&self, fail_open: bool) -> ClusterStatus {
        let health = self.health();
        let state = match (&health.down_since, health.connected_once) {
            (Some(_), _) => "down",
            (None, true) => "connected",
            (None, false) => "not_connected",
        };
        let shared = |yes: bool| if yes { "shared" } else { "local" }.to_string();
        let down = health.down_since.is_some();
        ClusterStatus {
            key_state: self
                .key_sync
                .get()
                .map(|sync| shared(sync.following() && !down)),
            caller_limits: shared(!down),
            redis_url: redacted_url(&self.url),
            state: state.into(),
            down_since: health.down_since.clone(),
            last_error: health.last_error.clone(),
            fail_mode: if fail_open { "open" } else { "closed" }.into(),
        }
    }

    /// Since when Redis has been failing, if it is now.
    pub fn down_since(&self) -> Option<String> {
        self.health().down_since.clone()
    }

    /// Runs `script` with `keys` and `args`, within [`COMMAND_TIMEOUT`] for the whole of it.
    pub async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, ClusterDown> {
        let outcome = tokio::time::timeout(COMMAND_TIMEOUT, async {
            let mut connection = self.connection().await?;
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            for arg in args {
                invocation.arg(arg);
            }
            invocation.invoke_async::<T>(&mut connection).await
        })
        .await;
        let error = match outcome {
            Ok(Ok(value)) => {
                let mut health = self.health();
                if health.down_since.take().is_some() {
                    tracing::info!(redis = %redacted_url(&self.url), "the cluster's Redis is reachable again");
                }
                health.connected_once = true;
                health.last_error = None;
                return Ok(value);
            }
            Ok(Err(e)) => redis_error(&e),
            Err(_) => format!("no answer within {} ms", COMMAND_TIMEOUT.as_millis()),
        };
        // Start afresh next time: a connection that failed or hung may never come back.
        if let Ok(mut manager) = self.manager.try_lock() {
            *manager = None;
        }
        let mut health = self.health();
        let since = health
            .down_since
            .get_or_insert_with(crate::clock::now_rfc3339)
            .clone();
        if health.last_error.as_deref() != Some(error.as_str()) {
            tracing::warn!(redis = %redacted_url(&self.url), error = %error, since = %since, "the cluster's Redis is unreachable");
        }
        health.last_error = Some(error.clone());
        Err(ClusterDown {
            since,
            reason: error,
        })
    }

    /// The shared connection, made now when there is none.
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let mut manager = self.manager.lock().await;
        if let Some(manager) = manager.as_ref() {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            // The caller's timeout bounds the wait; reconnecting is the next command's job.
            .set_number_of_retries(1);
        let made = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *manager = Some(made.clone());
        Ok(made)
    }
}

/// A Redis error for people: its kind and text, which never carry the URL.
fn redis_error(e: &redis::RedisError) -> String {
    let text = e.to_string();
    // A connection error may name the address; a password never appears in redis-rs errors,
    // but scrub anything that looks like a URL's credentials all the same.
    if text.contains('@') {
        return redacted_url(&text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_redacted_in_debug_and_status_and_tls_is_refused_with_a_reason() {
        let config = ClusterConfig {
            redis_url: Some("redis://:hunter2-SENTINEL@127.0.0.1:1/0".into()),
            ..ClusterConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"), "{config:?}");
        let cluster = Cluster::open(&config).unwrap().unwrap();
        assert!(!format!("{cluster:?}").contains("hunter2"));
        let status = cluster.status(false);
        assert_eq!(status.redis_url, "redis://***@127.0.0.1:1/0");
        assert_eq!(
            (status.state.as_str(), status.fail_mode.as_str()),
            ("not_connected", "closed")
        );
        let tls = ClusterConfig {
            redis_url: Some("rediss://:pw@host:6380".into()),
            ..ClusterConfig::default()
        };
        assert!(tls.url_problem().unwrap().contains("TLS"));
        let bad = ClusterConfig {
            redis_url: Some("http://:pw@host".into()),
            ..ClusterConfig::default()
        };
        let problem = bad.url_problem().unwrap();
        assert!(!problem.contains("pw"), "{problem}");
        assert_eq!(cluster.key("b:global"), "{imagegen}:b:global");
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_within_the_timeout_and_says_since_when() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let config = ClusterConfig {
            redis_url: Some("redis://127.0.0.1:1".into()),
            ..ClusterConfig::default()
        };
        let cluster = Cluster::open(&config).unwrap().unwrap();
        let started = std::time::Instant::now();
        let script = Script::new("return 1");
        let down = cluster.run::<i64>(&script, &[], &[]).await.unwrap_err();
        assert!(
            started.elapsed() < COMMAND_TIMEOUT * 3,
            "{:?}",
            started.elapsed()
        );
        assert!(!down.reason.is_empty());
        let status = cluster.status(true);
        assert_eq!(status.state, "down");
        assert_eq!(status.down_since.as_deref(), Some(down.since.as_str()));
        assert_eq!(status.fail_mode, "open");
        // The first failure's time stays while it lasts.
        let again = cluster.run::<i64>(&script, &[], &[]).await.unwrap_err();
        assert_eq!(again.since, down.since);
    }
}
