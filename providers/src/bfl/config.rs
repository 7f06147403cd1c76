//! `kind = "bfl"`: what `[providers.NAME]` reads for Black Forest Labs' FLUX API.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{BflProvider, BflSettings, DEFAULT_BASE_URL, DEFAULT_MODEL};
use crate::{
    build::{BuildContext, CommonConfig, HttpConfig, SettingError},
    http::{Poller, RetryPolicy},
    ImageProvider,
};

/// The variable BFL's own tools read for the key, and the key it sets.
pub const STANDARD_ENV: &[(&str, &str)] = &[("BFL_API_KEY", "api_key")];

/// The settings only a BFL provider reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// API base URL: `https://api.bfl.ai/v1` (global), or a regional one (`api.eu.bfl.ai`,
    /// `api.us.bfl.ai`); results are always polled at the `polling_url` BFL returns.
    pub base_url: String,
    /// The first wait between status checks, milliseconds.
    pub poll_interval_ms: u64,
    /// The longest wait between status checks, milliseconds.
    pub poll_max_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.into(),
            poll_interval_ms: 500,
            poll_max_interval_ms: 4_000,
        }
    }
}

impl Config {
    /// Every key of these settings.
    pub const KEYS: &'static [&'static str] =
        &["base_url", "poll_interval_ms", "poll_max_interval_ms"];

    /// Checks the base URL (without quoting it: it may carry credentials) and the intervals.
    pub(crate) fn check(&self) -> Result<(), SettingError> {
        check_base_url(&self.base_url)?;
        check_poll(self.poll_interval_ms, self.poll_max_interval_ms)
    }

    /// The provider these settings and `common` describe.
    pub(crate) fn build(
        &self,
        common: &CommonConfig,
        http: &HttpConfig,
        context: BuildContext<'_>,
    ) -> Result<Arc<dyn ImageProvider>, String> {
        let base_url = url::Url::parse(&self.base_url)
            .map_err(|e| format!("base_url is not a valid URL ({e})"))?;
        let mut s = BflSettings::new(base_url, context.keys);
        s.model = common.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into());
        if let Some(models) = &common.offered_models {
            s.models = models.clone();
        }
        s.timeout = http.timeout();
        s.retry = retry_policy(http);
        s.deadline = Duration::from_secs(http.deadline_s);
        s.poll = poller(self.poll_interval_ms, self.poll_max_interval_ms);
        s.download_hosts.extend(http.download_hosts.iter().cloned());
        s.max_response_bytes = http.max_response_mb.saturating_mul(1024 * 1024);
        s.catalog = context.catalog;
        let client = context
            .clients
            .client(http.connect_timeout_s)
            .map_err(|e| format!("the HTTP client cannot be built: {e}"))?;
        Ok(Arc::new(BflProvider::new(s, client)))
    }
}

/// Checks a base URL without quoting it.
pub(crate) fn check_base_url(base_url: &str) -> Result<(), SettingError> {
    let invalid = |message: String| Err(SettingError::new("base_url", message));
    match url::Url::parse(base_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        Ok(_) => invalid("must be an http:// or https:// URL".into()),
        Err(e) => invalid(format!("is not a valid URL ({e})")),
    }
}

/// Checks the poll intervals: from 1 ms to a minute, the first no longer than the longest.
pub(crate) fn check_poll(interval_ms: u64, max_ms: u64) -> Result<(), SettingError> {
    if !(1..=60_000).contains(&interval_ms) {
        return Err(SettingError::new(
            "poll_interval_ms",
            "must be between 1 and 60000",
        ));
    }
    if !(interval_ms..=60_000).contains(&max_ms) {
        return Err(SettingError::new(
            "poll_max_interval_ms",
            "must be between poll_interval_ms and 60000",
        ));
    }
    Ok(())
}

/// The retry settings of `http` as one policy.
pub(crate) fn retry_policy(http: &HttpConfig) -> RetryPolicy {
    RetryPolicy {
        max_retries: http.max_retries,
        base: Duration::from_millis(http.retry_base_ms),
        max: Duration::from_millis(http.retry_max_ms),
        retry_after_cap: Duration::from_secs(http.retry_after_cap_s),
        retry_on_timeout: http.retry_on_timeout,
    }
}

/// Status checks from `interval_ms`, growing by half each time up to `max_ms`.
pub(crate) fn poller(interval_ms: u64, max_ms: u64) -> Poller {
    Poller::new(
        Duration::from_millis(interval_ms),
        Duration::from_millis(max_ms),
        1.5,
    )
}
