//! `kind = "stability"`: what `[providers.NAME]` reads for Stability AI's Stable Image API.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{StabilityProvider, StabilitySettings, DEFAULT_BASE_URL, DEFAULT_MODEL};
use crate::{
    build::{BuildContext, CommonConfig, HttpConfig, SettingError},
    http::RetryPolicy,
    ImageProvider,
};

/// The variable Stability's SDKs and examples read for the key, and the key it sets.
pub const STANDARD_ENV: &[(&str, &str)] = &[("STABILITY_API_KEY", "api_key")];

/// The settings only a Stability provider reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The API origin (`https://api.stability.ai`); routes are `v2beta/stable-image/...` under it.
    pub base_url: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.into(),
        }
    }
}

impl Config {
    /// Every key of these settings.
    pub const KEYS: &'static [&'static str] = &["base_url"];

    /// Every field set, for checking [`Config::KEYS`].
    #[cfg(test)]
    pub(crate) fn full() -> Self {
        Self::default()
    }

    /// Checks the base URL without quoting it (it may carry credentials).
    pub(crate) fn check(&self) -> Result<(), SettingError> {
        match url::Url::parse(&self.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
            Ok(_) => Err(SettingError::new(
                "base_url",
                "must be an http:// or https:// URL",
            )),
            Err(e) => Err(SettingError::new(
                "base_url",
                format!("is not a valid URL ({e})"),
            )),
        }
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
        let mut s = StabilitySettings::new(base_url, context.keys);
        s.model = common.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into());
        if let Some(models) = &common.offered_models {
            s.models = models.clone();
        }
        s.timeout = http.timeout();
        s.retry = RetryPolicy {
            max_retries: http.max_retries,
            base: Duration::from_millis(http.retry_base_ms),
            max: Duration::from_millis(http.retry_max_ms),
            retry_after_cap: Duration::from_secs(http.retry_after_cap_s),
            retry_on_timeout: http.retry_on_timeout,
        };
        s.deadline = Duration::from_secs(http.deadline_s);
        s.max_response_bytes = http.max_response_mb.saturating_mul(1024 * 1024);
        s.catalog = context.catalog;
        let client = context
            .clients
            .client(http.connect_timeout_s)
            .map_err(|e| format!("the HTTP client cannot be built: {e}"))?;
        Ok(Arc::new(StabilityProvider::new(s, client)))
    }
}
