//! `kind = "fal"`: what `[providers.NAME]` reads for fal.ai.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{FalProvider, FalSettings, DEFAULT_BASE_URL};
use crate::{
    build::{BuildContext, CommonConfig, HttpConfig, SettingError},
    http::config::{check_base_url, check_poll, client, parse_base_url},
    ImageProvider,
};

/// The variable fal's clients read for the key, and the key it sets.
pub const STANDARD_ENV: &[(&str, &str)] = &[("FAL_KEY", "api_key")];

/// The settings only a fal provider reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// API base URL: the queue, `https://queue.fal.run` (`https://fal.run` answers at once,
    /// without fal's own retries).
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

    /// Checks the base URL (without quoting it) and the intervals.
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
        let mut s = FalSettings::new(parse_base_url(&self.base_url)?, context.keys);
        let poll = (self.poll_interval_ms, self.poll_max_interval_ms);
        s.configure(common, http, context.catalog, poll);
        let client = client(context.clients, http)?;
        Ok(Arc::new(FalProvider::new(s, client)))
    }
}
