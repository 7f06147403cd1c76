//! The one place a provider is built from its configuration, and the one place that names
//! every provider kind.
//!
//! `[providers.NAME]` is a [`ProviderConfig`]: a [`CommonConfig`] every provider reads (keys,
//! defaults, limits, the HTTP settings of remote providers) beside the kind's own settings,
//! [`KindConfig`]. Adding a provider means one module, one variant of [`KindConfig`] (and an
//! arm in each `match` below), and its catalog entries; the server's configuration and engine
//! never change.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use secrecy::SecretString;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    azure_openai, bfl, fal, gemini, http::ClientCache, keys::KeyPool, mock, openai,
    openai_compatible, replicate, stability, Catalog, ImageOptions, ImageProvider, ModelOverride,
};

/// `[providers.NAME]`: the settings every provider has, and those of its kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderConfig {
    /// What every provider reads.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// What every remote provider reads.
    #[serde(flatten)]
    pub http: HttpConfig,
    /// What this kind alone reads, with `kind` itself.
    #[serde(flatten)]
    pub kind: KindConfig,
}

/// The settings of each provider kind, chosen by `kind`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// A handful exist, built once per reload: boxing would only add noise to every match.
#[allow(clippy::large_enum_variant)]
pub enum KindConfig {
    /// OpenAI or an OpenAI-compatible server.
    Openai(openai::Config),
    /// The offline mock.
    Mock(mock::Config),
    /// Azure OpenAI: a resource's image deployments.
    AzureOpenai(azure_openai::Config),
    /// A server speaking OpenAI's image routes (LiteLLM, LocalAI, OpenRouter, vLLM).
    OpenaiCompatible(openai_compatible::Config),
    /// Google's image models on the Gemini API or Vertex AI.
    Gemini(gemini::Config),
    /// Stability AI's Stable Image API.
    Stability(stability::Config),
    /// Black Forest Labs' FLUX API.
    Bfl(bfl::Config),
    /// Replicate's predictions.
    Replicate(replicate::Config),
    /// fal.ai's queue.
    Fal(fal::Config),
}

/// Reads a configuration table as a given type, for [`KindConfig::read`]: the server's loader
/// reads each part separately, so every error keeps the key it is about.
pub trait TableReader {
    /// What a failed read returns.
    type Error;
    /// The table as `T`; keys `T` does not know are ignored (they are checked apart).
    fn read<T: DeserializeOwned>(&self) -> Result<T, Self::Error>;
}

/// A setting that is out of range or malformed: the key (under the provider's table) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The key at fault, such as `timeout_s`.
    pub key: &'static str,
    /// What is wrong, for people (never quoting a value that may hold a secret).
    pub message: String,
}

impl SettingError {
    pub(crate) fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

/// What a kind needs to know to be built: the pool of its keys (resolved by the server from
/// every key setting), the catalog, and the shared HTTP clients.
#[derive(Debug)]
pub struct BuildContext<'a> {
    /// The configured keys, with their state kept across reloads.
    pub keys: Arc<KeyPool>,
    /// The model catalog the provider checks and describes models with.
    pub catalog: Arc<Catalog>,
    /// One HTTP client per connect timeout, shared by every provider.
    pub clients: &'a ClientCache,
}

impl KindConfig {
    /// Every kind, as written in `kind = "..."`; the first whose standard key variable is set
    /// becomes the default provider, so OpenAI's comes first.
    pub const KINDS: [&'static str; 9] = [
        "openai",
        "mock",
        "azure_openai",
        "openai_compatible",
        "gemini",
        "stability",
        "bfl",
        "replicate",
        "fal",
    ];

    /// The offline stand-in's kind, configured by default as the provider of the same name so
    /// that a fresh install makes images with no key.
    pub const STAND_IN: &'static str = "mock";

    /// Reads the settings of `kind` from `table`; `None` for a kind that does not exist.
    pub fn read<R: TableReader>(kind: &str, table: &R) -> Option<Result<Self, R::Error>> {
        Some(match kind {
            "openai" => table.read().map(Self::Openai),
            "mock" => table.read().map(Self::Mock),
            "azure_openai" => table.read().map(Self::AzureOpenai),
            "openai_compatible" => table.read().map(Self::OpenaiCompatible),
            "gemini" => table.read().map(Self::Gemini),
            "stability" => table.read().map(Self::Stability),
            "bfl" => table.read().map(Self::Bfl),
            "replicate" => table.read().map(Self::Replicate),
            "fal" => table.read().map(Self::Fal),
            _ => return None,
        })
    }

    /// The built-in catalog as this kind sees it: the shared entries with the kind's own over them.
    pub fn catalog(&self) -> Catalog {
        match self {
            Self::Openai(_) => Catalog::builtin(),
            Self::Mock(_) => Catalog::for_kind(mock::catalog_entries()),
            Self::AzureOpenai(a) => a.catalog(),
            Self::OpenaiCompatible(_) => Catalog::for_kind(openai_compatible::catalog_entries()),
            Self::Gemini(_) => Catalog::for_kind(gemini::catalog_entries()),
            Self::Stability(_) => Catalog::for_kind(stability::catalog_entries()),
            Self::Bfl(_) => Catalog::for_kind(bfl::catalog_entries()),
            Self::Replicate(_) => Catalog::for_kind(replicate::catalog_entries()),
            Self::Fal(_) => Catalog::for_kind(fal::catalog_entries()),
        }
    }

    /// The `kind` string.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Openai(_) => "openai",
            Self::Mock(_) => "mock",
            Self::AzureOpenai(_) => "azure_openai",
            Self::OpenaiCompatible(_) => "openai_compatible",
            Self::Gemini(_) => "gemini",
            Self::Stability(_) => "stability",
            Self::Bfl(_) => "bfl",
            Self::Replicate(_) => "replicate",
            Self::Fal(_) => "fal",
        }
    }

    /// The keys this kind reads besides the common ones.
    pub fn keys(&self) -> &'static [&'static str] {
        match self {
            Self::Openai(_) => openai::Config::KEYS,
            Self::Mock(_) => mock::Config::KEYS,
            Self::AzureOpenai(_) => azure_openai::Config::KEYS,
            Self::OpenaiCompatible(_) => openai_compatible::Config::KEYS,
            Self::Gemini(_) => gemini::Config::KEYS,
            Self::Stability(_) => stability::Config::KEYS,
            Self::Bfl(_) => bfl::Config::KEYS,
            Self::Replicate(_) => replicate::Config::KEYS,
            Self::Fal(_) => fal::Config::KEYS,
        }
    }

    /// The standard environment variables of `kind` (as its own SDKs read them) and the key
    /// each sets in `[providers.KIND]`, lowest in precedence after the built-in defaults.
    pub fn standard_env(kind: &str) -> &'static [(&'static str, &'static str)] {
        match kind {
            "openai" => openai::STANDARD_ENV,
            "azure_openai" => azure_openai::STANDARD_ENV,
            "gemini" => gemini::STANDARD_ENV,
            "stability" => stability::STANDARD_ENV,
            "bfl" => bfl::STANDARD_ENV,
            "replicate" => replicate::STANDARD_ENV,
            "fal" => fal::STANDARD_ENV,
            _ => &[],
        }
    }

    /// Whether this kind calls a remote API (and so reads the HTTP settings and API keys).
    pub fn is_remote(&self) -> bool {
        !matches!(self, Self::Mock(_))
    }

    /// Whether this kind makes images with nobody's account, offline: the stand-in chosen when
    /// nothing else is configured.
    pub fn is_stand_in(&self) -> bool {
        matches!(self, Self::Mock(_))
    }

    /// The model used when neither the call nor `model` names one.
    pub fn default_model(&self) -> &'static str {
        match self {
            Self::Openai(_) => openai::DEFAULT_MODEL,
            Self::Mock(_) => mock::MOCK_MODEL,
            Self::AzureOpenai(_) => azure_openai::DEFAULT_MODEL,
            Self::OpenaiCompatible(_) => openai_compatible::DEFAULT_MODEL,
            Self::Gemini(_) => gemini::DEFAULT_MODEL,
            Self::Stability(_) => stability::DEFAULT_MODEL,
            Self::Bfl(_) => bfl::DEFAULT_MODEL,
            Self::Replicate(_) => replicate::DEFAULT_MODEL,
            Self::Fal(_) => fal::DEFAULT_MODEL,
        }
    }

    /// The text model that writes SVGs when neither the call nor `svg_model` names one.
    pub fn default_svg_model(&self) -> Option<&'static str> {
        match self {
            Self::Mock(_) => Some(mock::SVG_WRITER),
            _ => None,
        }
    }

    /// Where people put this provider's key when it has none but needs one: `None` when it
    /// needs none (the mock, or a compatible server that may take no key).
    pub fn missing_key_hint(&self, common: &CommonConfig) -> Option<String> {
        match self {
            Self::Openai(o) if o.base_url() == openai::DEFAULT_BASE_URL && common.has_no_key() => {
                Some("set OPENAI_API_KEY, or api_key or api_key_file".into())
            }
            Self::AzureOpenai(a) if !a.has_token_source() && common.has_no_key() => Some(
                "set AZURE_OPENAI_API_KEY, or api_key or api_key_file, or token_command or \
                 token_file for Entra ID"
                    .into(),
            ),
            Self::Gemini(g) if !g.uses_token() && common.has_no_key() => Some(
                "set GEMINI_API_KEY (or GOOGLE_API_KEY), or api_key or api_key_file; on Vertex AI \
                 set token_command (such as [\"gcloud\", \"auth\", \"print-access-token\"]) or token_file"
                    .into(),
            ),
            Self::Stability(_) if common.has_no_key() => {
                Some("set STABILITY_API_KEY, or api_key or api_key_file".into())
            }
            Self::Bfl(_) if common.has_no_key() => {
                Some("set BFL_API_KEY, or api_key or api_key_file".into())
            }
            Self::Replicate(_) if common.has_no_key() => {
                Some("set REPLICATE_API_TOKEN, or api_key or api_key_file".into())
            }
            Self::Fal(_) if common.has_no_key() => {
                Some("set FAL_KEY, or api_key or api_key_file".into())
            }
            _ => None,
        }
    }

    /// Checks the kind's own settings.
    pub fn check(&self) -> Result<(), SettingError> {
        match self {
            Self::Openai(o) => o.check(),
            Self::Mock(m) => m.check(),
            Self::AzureOpenai(a) => a.check(),
            Self::OpenaiCompatible(c) => c.check(),
            Self::Gemini(g) => g.check(),
            Self::Stability(s) => s.check(),
            Self::Bfl(b) => b.check(),
            Self::Replicate(r) => r.check(),
            Self::Fal(f) => f.check(),
        }
    }
}

/// The HTTP settings every remote provider reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Per-attempt timeout, seconds.
    pub timeout_s: u64,
    /// Connect timeout, seconds.
    pub connect_timeout_s: u64,
    /// Retries of a retryable failure (moving to another key of the pool is not a retry).
    pub max_retries: u32,
    /// The first wait between retries when the server gives no hint, milliseconds; doubles
    /// each retry, with jitter.
    pub retry_base_ms: u64,
    /// The longest wait between retries when the server gives no hint, milliseconds.
    pub retry_max_ms: u64,
    /// The longest `retry-after` honoured, seconds; a longer one fails the call at once,
    /// saying when to try again.
    pub retry_after_cap_s: u64,
    /// Retry a request that timed out after it was sent. Off by default: the upstream may
    /// finish (and bill) the generation it was working on, so a retry can pay twice.
    pub retry_on_timeout: bool,
    /// The longest one call may take, every attempt and wait included, seconds.
    pub deadline_s: u64,
    /// Extra origins result URLs may be downloaded from, besides the base URL's own (and the
    /// vendor's delivery hosts): `host:port`, or a bare `host` for ports 80 and 443 only;
    /// `*.example.com` for its subdomains.
    pub download_hosts: Vec<String>,
    /// Cap on a response body or downloaded image, MiB.
    pub max_response_mb: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            timeout_s: 180,
            connect_timeout_s: 10,
            max_retries: 2,
            retry_base_ms: 500,
            retry_max_ms: 8_000,
            retry_after_cap_s: 120,
            retry_on_timeout: false,
            deadline_s: 300,
            download_hosts: Vec::new(),
            max_response_mb: 64,
        }
    }
}

impl HttpConfig {
    /// Every key of the HTTP settings.
    pub const KEYS: &'static [&'static str] = &[
        "timeout_s",
        "connect_timeout_s",
        "max_retries",
        "retry_base_ms",
        "retry_max_ms",
        "retry_after_cap_s",
        "retry_on_timeout",
        "deadline_s",
        "download_hosts",
        "max_response_mb",
    ];

    /// Checks every duration and size against what a real deployment could want: far beyond
    /// it overflows the clock or the allocator, and 0 makes every call wait forever or fail.
    pub fn check(&self) -> Result<(), SettingError> {
        const DAY_S: u64 = 86_400;
        const MS_CAP: u64 = 3_600_000;
        for (key, value, range) in [
            ("timeout_s", self.timeout_s, 1..=DAY_S),
            ("deadline_s", self.deadline_s, 1..=DAY_S),
            ("connect_timeout_s", self.connect_timeout_s, 1..=600),
            ("retry_base_ms", self.retry_base_ms, 0..=MS_CAP),
            ("retry_max_ms", self.retry_max_ms, 0..=MS_CAP),
            ("retry_after_cap_s", self.retry_after_cap_s, 0..=DAY_S),
            (
                "max_response_mb",
                u64::try_from(self.max_response_mb).unwrap_or(u64::MAX),
                1..=4096,
            ),
        ] {
            if !range.contains(&value) {
                return Err(SettingError::new(
                    key,
                    format!("must be between {} and {}", range.start(), range.end()),
                ));
            }
        }
        Ok(())
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }
}

/// What every provider reads: whether it is on, its models and defaults, its limits and keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CommonConfig {
    /// Set to false to keep the table but not load the provider.
    pub enabled: bool,
    /// The default model (a model name or an alias); unset: the kind's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Models to list (default: the kind's current models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_models: Option<Vec<String>>,
    /// Catalog entries for this provider alone (`[providers.NAME.models."x"]`), over the
    /// built-in ones and `[models]`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelOverride>,
    /// Model aliases (`fast = "gpt-image-2.6-flare"`), on top of the built-in `fast` and `best`.
    pub aliases: BTreeMap<String, String>,
    /// The text model that writes SVG results (`svg.model`) when a call names none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svg_model: Option<String>,
    /// Per-provider image defaults, over `[defaults]`.
    pub defaults: ImageOptions,
    /// This provider's calls in flight at once (none: only `[limits] max_in_flight` applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// The API key; after loading, the first resolved key whatever its source.
    #[serde(skip_serializing)]
    pub api_key: Option<SecretString>,
    /// A file holding the API key (Docker and Kubernetes secrets); relative to the config file,
    /// absolute after loading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// More API keys for the same pool.
    #[serde(skip_serializing)]
    pub api_keys: Vec<SecretString>,
    /// More files holding one API key each; relative to the config file, absolute after loading.
    pub api_key_files: Vec<PathBuf>,
    /// Seconds after which a disabled key (rejected, out of quota) is tried again.
    pub key_recheck_s: u64,
    /// Requests each key may send per minute; calls beyond it wait for a key (none: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Providers a call moves to, in order, when this one is down, rate limited, out of quota
    /// or refuses its key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
    /// Whether a content-policy refusal here moves the call to the fallback providers too.
    pub fallback_on_policy: bool,
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: None,
            offered_models: None,
            models: BTreeMap::new(),
            aliases: BTreeMap::new(),
            svg_model: None,
            defaults: ImageOptions::default(),
            max_in_flight: None,
            api_key: None,
            api_key_file: None,
            api_keys: Vec::new(),
            api_key_files: Vec::new(),
            key_recheck_s: 600,
            requests_per_minute: None,
            fallback: Vec::new(),
            fallback_on_policy: false,
        }
    }
}

impl CommonConfig {
    /// The keys every provider reads (the HTTP settings only on remote ones).
    pub const KEYS: &'static [&'static str] = &[
        "kind",
        "enabled",
        "model",
        "offered_models",
        "models",
        "aliases",
        "svg_model",
        "defaults",
        "max_in_flight",
        "api_key",
        "api_key_file",
        "api_keys",
        "api_key_files",
        "key_recheck_s",
        "requests_per_minute",
        "fallback",
        "fallback_on_policy",
    ];

    /// The settings that hold API keys, in the order their keys join the pool.
    pub const KEY_FIELDS: [&'static str; 4] =
        ["api_key", "api_keys", "api_key_file", "api_key_files"];

    /// Whether no key setting is set.
    pub fn has_no_key(&self) -> bool {
        self.api_key.is_none()
            && self.api_keys.is_empty()
            && self.api_key_file.is_none()
            && self.api_key_files.is_empty()
    }
}

/// The offline stand-in with every default: real images with no key, for tests and tools.
pub fn stand_in() -> Arc<dyn ImageProvider> {
    mock::provider(mock::MockSettings::default())
}

impl ProviderConfig {
    /// The settings of a provider of `kind` with every default.
    pub fn of(kind: KindConfig) -> Self {
        Self {
            common: CommonConfig::default(),
            http: HttpConfig::default(),
            kind,
        }
    }

    /// The `kind` string.
    pub fn kind(&self) -> &'static str {
        self.kind.kind()
    }

    /// Whether the provider is switched on.
    pub fn enabled(&self) -> bool {
        self.common.enabled
    }

    /// The model used when a call names none.
    pub fn model(&self) -> &str {
        self.common
            .model
            .as_deref()
            .unwrap_or_else(|| self.kind.default_model())
    }

    /// The text model that writes SVGs when a call names none.
    pub fn svg_model(&self) -> Option<&str> {
        self.common
            .svg_model
            .as_deref()
            .or_else(|| self.kind.default_svg_model())
    }

    /// Every key `[providers.NAME]` may hold for this kind, for refusing unknown ones by name.
    pub fn known_keys(&self) -> Vec<&'static str> {
        let mut keys = CommonConfig::KEYS.to_vec();
        if self.kind.is_remote() {
            keys.extend_from_slice(HttpConfig::KEYS);
        }
        keys.extend_from_slice(self.kind.keys());
        keys
    }

    /// Checks every setting that can be checked without the network.
    pub fn check(&self) -> Result<(), SettingError> {
        if !(0..=30 * 86_400).contains(&self.common.key_recheck_s) {
            return Err(SettingError::new(
                "key_recheck_s",
                "must be between 0 and 2592000",
            ));
        }
        if self.kind.is_remote() {
            self.http.check()?;
        }
        self.kind.check()
    }

    /// Builds the provider these settings describe.
    pub fn build(&self, context: BuildContext<'_>) -> Result<Arc<dyn ImageProvider>, String> {
        match &self.kind {
            KindConfig::Openai(o) => o.build(&self.common, &self.http, context),
            KindConfig::Mock(m) => Ok(m.build(&self.common, context)),
            KindConfig::AzureOpenai(a) => a.build(&self.common, &self.http, context),
            KindConfig::OpenaiCompatible(c) => c.build(&self.common, &self.http, context),
            KindConfig::Gemini(g) => g.build(&self.common, &self.http, context),
            KindConfig::Stability(s) => s.build(&self.common, &self.http, context),
            KindConfig::Bfl(b) => b.build(&self.common, &self.http, context),
            KindConfig::Replicate(r) => r.build(&self.common, &self.http, context),
            KindConfig::Fal(f) => f.build(&self.common, &self.http, context),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each part's key list is what it reads: serialized with every field set, the keys match.
    #[test]
    fn every_key_list_matches_its_struct() {
        fn keys_of(value: impl Serialize) -> Vec<String> {
            let mut keys: Vec<String> = serde_json::to_value(value)
                .unwrap()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        }
        let sorted = |keys: &[&str]| {
            let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            keys.sort();
            keys
        };
        let common = CommonConfig {
            model: Some("m".into()),
            offered_models: Some(vec![]),
            models: BTreeMap::from([("x".to_string(), ModelOverride::default())]),
            svg_model: Some("s".into()),
            max_in_flight: Some(1),
            api_key_file: Some("f".into()),
            requests_per_minute: Some(1),
            fallback: vec!["other".into()],
            ..CommonConfig::default()
        };
        // Keys are never serialized; `kind` comes from the enum.
        let mut expected = sorted(CommonConfig::KEYS);
        expected.retain(|k| k != "kind" && k != "api_key" && k != "api_keys");
        assert_eq!(keys_of(&common), expected);
        assert_eq!(keys_of(HttpConfig::default()), sorted(HttpConfig::KEYS));
        for kind in [
            KindConfig::Openai(openai::Config::full()),
            KindConfig::Mock(mock::Config::default()),
            KindConfig::AzureOpenai(azure_openai::Config::full()),
            KindConfig::OpenaiCompatible(openai_compatible::Config::full()),
            KindConfig::Gemini(gemini::Config::full()),
            KindConfig::Stability(stability::Config::full()),
            KindConfig::Bfl(bfl::Config::default()),
            KindConfig::Replicate(replicate::Config::default()),
            KindConfig::Fal(fal::Config::default()),
        ] {
            let mut keys = keys_of(&kind);
            keys.retain(|k| k != "kind");
            assert_eq!(keys, sorted(kind.keys()), "{}", kind.kind());
        }
    }

    #[test]
    fn settings_are_checked_by_key() {
        let mut config = ProviderConfig::of(KindConfig::Openai(openai::Config::default()));
        assert_eq!(config.check(), Ok(()));
        config.http.deadline_s = 0;
        assert_eq!(config.check().unwrap_err().key, "deadline_s");
        let mut mock = ProviderConfig::of(KindConfig::Mock(mock::Config::default()));
        // The mock reads no HTTP settings, so they are neither checked nor known.
        mock.http.deadline_s = 0;
        assert_eq!(mock.check(), Ok(()));
        assert!(!mock.known_keys().contains(&"deadline_s"));
        assert!(config.known_keys().contains(&"deadline_s"));
        assert_eq!(config.model(), openai::DEFAULT_MODEL);
        assert_eq!(mock.svg_model(), Some(mock::SVG_WRITER));
    }
}
