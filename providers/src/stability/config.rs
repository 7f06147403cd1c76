//! `kind = "stability"`: what `[providers.NAME]` reads for Stability AI's Stable Image API.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{StabilityProvider, StabilitySettings, DEFAULT_BASE_URL, DEFAULT_MODEL};
use crate::{
    build::{BuildContext, CommonConfig, HttpConfig, SettingError},
    http::config::{check_base_url, client, parse_base_url, retry_policy},
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
        check_base_url(&self.base_url)
    }

    /// The provider these settings and `common` describe.
    pub(crate) fn build(
        &self,
        common: &CommonConfig,
        http: &HttpConfig,
        context: BuildContext<'_>,
    ) -> Result<Arc<dyn ImageProvider>, String> {
        let base_url = parse_base_url(&self.base_url)?;
        let mut s = StabilitySettings::new(base_url, context.keys);
        s.model = common.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into());
        if let Some(models) = &common.offered_models {
            s.models = models.clone();
        }
        s.timeout = http.timeout();
        s.retry = retry_policy(http);
        s.deadline = Duration::from_secs(http.deadline_s);
        s.max_response_bytes = http.max_response_mb.saturating_mul(1024 * 1024);
        s.catalog = context.catalog;
        let client = client(context.clients, http)?;
        Ok(Arc::new(StabilityProvider::new(s, client)))
    }
}
