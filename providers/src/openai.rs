//! OpenAI Images API provider (`kind = "openai"`), also used for OpenAI-compatible servers.

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use secrecy::SecretString;

use crate::{Catalog, GenerateRequest, GenerateResult, ImageProvider, ModelCapabilities, ProviderError};

/// The default API base.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// The current OpenAI image models advertised when the configuration lists none.
pub const DEFAULT_MODELS: &[&str] = &["gpt-image-1.5", "gpt-image-1-mini", "gpt-image-2"];

/// How to reach one OpenAI (or compatible) account.
#[derive(Clone)]
#[non_exhaustive]
pub struct OpenAiSettings {
    /// API base, e.g. `https://api.openai.com/v1` (no trailing slash needed).
    pub base_url: url::Url,
    /// The API key; `None` sends no `Authorization` header (some compatible servers need none).
    pub api_key: Option<SecretString>,
    /// `OpenAI-Organization` header.
    pub organization: Option<String>,
    /// `OpenAI-Project` header.
    pub project: Option<String>,
    /// The model used when a request names none.
    pub model: String,
    /// The models to advertise in listings.
    pub models: Vec<String>,
    /// Per-attempt timeout for the whole request, response body included.
    pub timeout: Duration,
    /// How many times a retryable failure is retried.
    pub max_retries: u32,
    /// Hosts besides the base URL's own from which result URLs may be downloaded.
    pub download_hosts: Vec<String>,
    /// The largest response body or downloaded image accepted, in bytes.
    pub max_response_bytes: usize,
    /// Timeout for downloading one result URL.
    pub download_timeout: Duration,
    /// The model catalog to check requests against.
    pub catalog: Arc<Catalog>,
}

impl fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("organization", &self.organization)
            .field("project", &self.project)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl OpenAiSettings {
    /// Settings for `base_url` with every other value at its default.
    pub fn new(base_url: url::Url, api_key: Option<SecretString>) -> Self {
        Self {
            base_url,
            api_key,
            organization: None,
            project: None,
            model: "gpt-image-1.5".into(),
            models: DEFAULT_MODELS.iter().map(|m| m.to_string()).collect(),
            timeout: Duration::from_secs(180),
            max_retries: 2,
            download_hosts: Vec::new(),
            max_response_bytes: 64 * 1024 * 1024,
            download_timeout: Duration::from_secs(60),
            catalog: Arc::new(Catalog::builtin()),
        }
    }
}

/// The OpenAI provider.
#[derive(Debug)]
pub struct OpenAiProvider {
    settings: OpenAiSettings,
    client: reqwest::Client,
}

impl OpenAiProvider {
    /// A provider using `client` (whose connection pool may be shared) with `settings`.
    pub fn new(settings: OpenAiSettings, client: reqwest::Client) -> Self {
        Self { settings, client }
    }
}

#[async_trait]
impl ImageProvider for OpenAiProvider {
    fn kind(&self) -> &'static str {
        "openai"
    }

    fn default_model(&self) -> &str {
        &self.settings.model
    }

    fn models(&self) -> Vec<String> {
        self.settings.models.clone()
    }

    fn capabilities(&self, model: &str) -> ModelCapabilities {
        self.settings.catalog.get(model)
    }

    async fn generate(&self, _request: &GenerateRequest) -> Result<GenerateResult, ProviderError> {
        let _ = &self.client;
        Err(ProviderError::new(crate::ErrorKind::Unsupported, "openai provider not built yet"))
    }
}
