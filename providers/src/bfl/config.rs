//! `kind = "bfl"`: what `[providers.NAME]` reads for Black Forest Labs' FLUX API.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{BflProvider, BflSettings, DEFAULT_BASE_URL};
use crate::{
    build::{BuildContext, CommonConfig, HttpConfig, SettingError},
    http::config::{check_base_url, check_poll, client, parse_base_url},
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
        let mut s = BflSettings::new(parse_base_url(&self.base_url)?, context.keys);
        let poll = (self.poll_interval_ms, self.poll_max_interval_ms);
        s.configure(common, http, context.catalog, poll);
        let client = client(context.clients, http)?;
        Ok(Arc::new(BflProvider::new(s, client)))
    }
}
