//! `kind = "openai"`: what `[providers.NAME]` reads for OpenAI or a compatible server.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{OpenAiProvider, OpenAiSettings, DEFAULT_BASE_URL, DEFAULT_MODEL};
use crate::{
    build::{BuildContext, CommonConfig, HttpConfig, SettingError},
    ImageProvider,
};

/// The standard `OPENAI_*` variables, as OpenAI's SDKs read them, and the key each sets.
pub const STANDARD_ENV: &[(&str, &str)] = &[
    ("OPENAI_API_KEY", "api_key"),
    ("OPENAI_BASE_URL", "base_url"),
    ("OPENAI_ORG_ID", "organization"),
    ("OPENAI_PROJECT_ID", "project"),
];

/// The settings only an OpenAI provider reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// API base URL.
    pub base_url: String,
    /// `OpenAI-Organization`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// `OpenAI-Project`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Whether the catalog's shutdown dates hold for this server, so a shut-down model is
    /// replaced or refused before anything is sent. Default: only for api.openai.com; set it
    /// for a gateway that passes calls to OpenAI unchanged (or `false` to always ask).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog_dates_apply: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.into(),
            organization: None,
            project: None,
            catalog_dates_apply: None,
        }
    }
}

impl Config {
    /// Every key of these settings.
    pub const KEYS: &'static [&'static str] =
        &["base_url", "organization", "project", "catalog_dates_apply"];

    /// The base URL as configured.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Every field set, for checking [`Config::KEYS`].
    #[cfg(test)]
    pub(crate) fn full() -> Self {
        Self {
            organization: Some("o".into()),
            project: Some("p".into()),
            catalog_dates_apply: Some(true),
            ..Self::default()
        }
    }

    /// Checks the base URL without quoting it: it may carry credentials (https://user:pass@host).
    pub(crate) fn check(&self) -> Result<(), SettingError> {
        let invalid = |message: String| Err(SettingError::new("base_url", message));
        match url::Url::parse(&self.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
            Ok(_) => invalid("must be an http:// or https:// URL".into()),
            Err(e) => invalid(format!("is not a valid URL ({e})")),
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
        let mut s = settings(base_url, common, http, context.keys, context.catalog);
        s.organization = self.organization.clone();
        s.project = self.project.clone();
        s.catalog_dates_apply = self.catalog_dates_apply;
        let client = context
            .clients
            .client(http.connect_timeout_s)
            .map_err(|e| format!("the HTTP client cannot be built: {e}"))?;
        Ok(Arc::new(OpenAiProvider::new(s, client)))
    }
}

/// The settings every OpenAI-shaped kind reads alike: keys, default model, offered models,
/// the HTTP settings and the catalog.
pub(crate) fn settings(
    base_url: url::Url,
    common: &CommonConfig,
    http: &HttpConfig,
    keys: Arc<crate::keys::KeyPool>,
    catalog: Arc<crate::Catalog>,
) -> OpenAiSettings {
    let mut s = OpenAiSettings::new(base_url, None);
    s.keys = keys;
    s.model = common.model.clone().unwrap_or_else(|| DEFAULT_MODEL.into());
    if let Some(models) = &common.offered_models {
        s.models = models.clone();
    }
    s.timeout = http.timeout();
    s.max_retries = http.max_retries;
    s.retry_base = Duration::from_millis(http.retry_base_ms);
    s.retry_max = Duration::from_millis(http.retry_max_ms);
    s.retry_after_cap = Duration::from_secs(http.retry_after_cap_s);
    s.retry_on_timeout = http.retry_on_timeout;
    s.deadline = Duration::from_secs(http.deadline_s);
    s.download_hosts = http.download_hosts.clone();
    s.max_response_bytes = http.max_response_mb.saturating_mul(1024 * 1024);
    s.catalog = catalog;
    s
}
