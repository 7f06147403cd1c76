//! `kind = "replicate"`: what `[providers.NAME]` reads for Replicate.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ReplicateProvider, ReplicateSettings, DEFAULT_BASE_URL};
use crate::{
    build::{BuildContext, CommonConfig, HttpConfig, SettingError},
    http::config::{check_base_url, check_poll, client, parse_base_url},
    ImageProvider,
};

/// The variable Replicate's clients read for the token, and the key it sets.
pub const STANDARD_ENV: &[(&str, &str)] = &[("REPLICATE_API_TOKEN", "api_key")];

/// The settings only a Replicate provider reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// API base URL.
    pub base_url: String,
    /// How long the creating request may wait for the prediction (`Prefer: wait`), seconds,
    /// 0 to 60 (Replicate's maximum); 0 polls from the start.
    pub wait_s: u64,
    /// The first wait between status checks, milliseconds.
    pub poll_interval_ms: u64,
    /// The longest wait between status checks, milliseconds.
    pub poll_max_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.into(),
            wait_s: 60,
            poll_interval_ms: 500,
            poll_max_interval_ms: 4_000,
        }
    }
}

impl Config {
    /// Every key of these settings.
    pub const KEYS: &'static [&'static str] = &[
        "base_url",
        "wait_s",
        "poll_interval_ms",
        "poll_max_interval_ms",
    ];

    /// Checks the base URL (without quoting it), the wait and the intervals.
    pub(crate) fn check(&self) -> Result<(), SettingError> {
        check_base_url(&self.base_url)?;
        if self.wait_s > 60 {
            return Err(SettingError::new("wait_s", "must be between 0 and 60"));
        }
        check_poll(self.poll_interval_ms, self.poll_max_interval_ms)
    }

    /// The provider these settings and `common` describe.
    pub(crate) fn build(
        &self,
        common: &CommonConfig,
        http: &HttpConfig,
        context: BuildContext<'_>,
    ) -> Result<Arc<dyn ImageProvider>, String> {
        let mut s = ReplicateSettings::new(parse_base_url(&self.base_url)?, context.keys);
        let poll = (self.poll_interval_ms, self.poll_max_interval_ms);
        s.configure(common, http, context.catalog, poll);
        s.wait = Duration::from_secs(self.wait_s);
        let client = client(context.clients, http)?;
        Ok(Arc::new(ReplicateProvider::new(s, client)))
    }
}
