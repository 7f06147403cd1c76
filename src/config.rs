//! Layered configuration: built-in defaults < `OPENAI_*` variables < TOML file <
//! `IMAGEGEN_*` variables < command-line flags.
//!
//! [`LoadedConfig::load`] builds, checks and resolves it (paths made absolute, API keys read,
//! the default provider chosen, the model catalog extended); [`LoadedConfig::show`] prints
//! it with the source of every value.

mod error;
pub(crate) mod files;
mod load;
mod show;

use std::{collections::BTreeMap, path::PathBuf};

use imagegen_providers::{ErrorKind, ImageOptions, ModelOverride};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use imagegen_providers::secret::fingerprint;
pub use load::{Input, LoadedConfig, ResolvedKey};

/// `url` with any `user:password@` replaced by `***@`, for every place a URL is shown: a
/// gateway's credentials in `base_url` are as secret as an API key.
pub fn redacted_url(url: &str) -> String {
    // By hand rather than through `url::Url`, so that an unparsable URL is redacted too.
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Command-line flags that override every other layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CliOverrides {
    /// `--config PATH`: the config file, which must exist.
    pub config: Option<PathBuf>,
    /// `--provider NAME`: sets `default_provider`.
    pub provider: Option<String>,
    /// `--out DIR`: sets `output.dir` (absolute; a relative one is taken from the current directory).
    pub output_dir: Option<PathBuf>,
}

/// The whole configuration, as extracted from every layer.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The provider used when a call names none (a name under `providers`); always set after loading.
    pub default_provider: Option<String>,
    /// Where images go and how they are returned.
    pub output: OutputConfig,
    /// Generation parameters applied when a call leaves them unset.
    pub defaults: Defaults,
    /// Configured providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Model catalog additions and overrides.
    pub models: BTreeMap<String, ModelOverride>,
    /// The server's log filter (`info`, `debug`, `imagegen_mcp=debug,warn`, ...); `RUST_LOG`
    /// wins when set. Default: `info` for `serve`, `warn` for the other commands.
    pub log_level: Option<String>,
    /// How the running server notices configuration changes.
    pub reload: ReloadConfig,
    /// Bounds on upstream calls in flight.
    pub limits: LimitsConfig,
    /// Where input images for edits may come from.
    pub input: InputConfig,
    /// `generate_images` settings.
    pub batch: BatchConfig,
    /// What happens to calls for models their vendor shut down, and the upstream model check.
    pub catalog: CatalogConfig,
}

/// `[catalog]`: model lifecycles at call time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// A call for a shut-down model: `replace` sends it to the model's replacement and says so;
    /// `refuse` fails it as `invalid_request`, naming the replacement, before anything is sent.
    pub on_shutdown: OnShutdown,
    /// Ask each provider that can list its models which image models it serves, at start-up
    /// and daily (`serve` only, when a key is configured), and merge announced shutdown dates.
    pub check_upstream: bool,
    /// Hours between upstream checks.
    pub check_interval_h: u64,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            on_shutdown: OnShutdown::Replace,
            check_upstream: true,
            check_interval_h: 24,
        }
    }
}

/// `[catalog] on_shutdown`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnShutdown {
    /// Serve the call with the replacement model, and say so in the result.
    #[default]
    Replace,
    /// Refuse the call, naming the replacement.
    Refuse,
}

/// `[input]`: where `edit_image` may read images from, and how large they may be.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    /// Directories besides the output directory that input paths may point into; relative to
    /// the config file, absolute after loading.
    pub allowed_dirs: Vec<PathBuf>,
    /// The largest input image, MB; inline base64 is capped lower, by the stdio line limit
    /// ([`crate::transport::MAX_LINE_BYTES`]), so large inputs go by path or URI.
    pub max_image_mb: u64,
    /// The largest mask, MB.
    pub max_mask_mb: u64,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            allowed_dirs: Vec::new(),
            max_image_mb: 50,
            max_mask_mb: 4,
        }
    }
}

/// `[batch]`: `generate_images`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// The most items one `generate_images` call may ask for.
    pub max_items: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_items: 16 }
    }
}

/// `[limits]`: how many upstream calls may run at once, across all providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Upstream calls in flight at once, all providers together; more callers wait their turn.
    pub max_in_flight: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_in_flight: 64 }
    }
}

/// `[reload]`: live configuration reload of `imagegen-mcp serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// Re-check the files this often, seconds, for filesystems that drop change events; 0: never.
    pub poll_s: u64,
    /// Wait this long after a change event before reading, milliseconds, so a burst of events
    /// gives one reload and a file being written is read once complete.
    pub debounce_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            poll_s: 30,
            debounce_ms: 300,
        }
    }
}

/// How results are handed to the MCP client.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// A small inline preview plus a link to the full image (fits every client's limits).
    #[default]
    Preview,
    /// Only a link and structured data: no inline image at all.
    Link,
    /// The original inline when it fits the budget, else a preview and a note why.
    Full,
}

/// `[output]`: storage and delivery of images.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Where images are saved; `None` means the platform data directory.
    /// A relative path in a file is relative to that file; after loading, always `Some(absolute)`.
    pub dir: Option<PathBuf>,
    /// The default delivery mode.
    pub delivery: Delivery,
    /// The most base64 bytes of inline images in one tool result.
    pub preview_budget_bytes: usize,
    /// The largest stored file `resources/read` returns, MB; a larger one is refused with a
    /// clear error (it would not fit any client's message limit as base64).
    pub max_read_mb: u64,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: None,
            delivery: Delivery::Preview,
            preview_budget_bytes: 80_000,
            max_read_mb: 64,
        }
    }
}

/// Default image options (`[defaults]`, `[providers.NAME.defaults]`): each applies when a
/// call leaves it unset and the chosen model takes it, and is otherwise not sent. Unknown keys
/// are refused by hand at load (the options are flattened into tool parameters, where serde
/// cannot refuse them).
pub type Defaults = ImageOptions;

/// One `[providers.NAME]` table; `kind` picks the implementation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// A handful exist, built once per reload: boxing would only add noise to every match.
#[allow(clippy::large_enum_variant)]
pub enum ProviderConfig {
    /// OpenAI or an OpenAI-compatible server.
    Openai(OpenAiConfig),
    /// The offline mock.
    Mock(MockConfig),
}

impl ProviderConfig {
    /// The `kind` string of this provider.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Openai(_) => "openai",
            Self::Mock(_) => "mock",
        }
    }

    /// Whether the provider is switched on.
    pub fn enabled(&self) -> bool {
        match self {
            Self::Openai(c) => c.enabled,
            Self::Mock(c) => c.enabled,
        }
    }

    /// The model used when a call names none.
    pub fn model(&self) -> &str {
        match self {
            Self::Openai(c) => &c.model,
            Self::Mock(c) => &c.model,
        }
    }

    /// Aliases set for this provider (`[providers.NAME.aliases]`), which win over built-in ones.
    pub fn aliases(&self) -> &BTreeMap<String, String> {
        match self {
            Self::Openai(c) => &c.aliases,
            Self::Mock(c) => &c.aliases,
        }
    }

    /// The text model that writes SVG results when a call names none (`svg.model`).
    pub fn svg_model(&self) -> Option<&str> {
        match self {
            Self::Openai(c) => c.svg_model.as_deref(),
            Self::Mock(c) => c.svg_model.as_deref(),
        }
    }

    /// Per-provider defaults, which win over `[defaults]`.
    pub fn defaults(&self) -> &Defaults {
        match self {
            Self::Openai(c) => &c.defaults,
            Self::Mock(c) => &c.defaults,
        }
    }

    /// This provider's own bound on calls in flight, if any.
    pub fn max_in_flight(&self) -> Option<usize> {
        match self {
            Self::Openai(c) => c.max_in_flight,
            Self::Mock(c) => c.max_in_flight,
        }
    }
}

/// `kind = "openai"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Set to false to keep the table but not load the provider.
    pub enabled: bool,
    /// The API key; after loading, the first resolved key whatever its source (see
    /// [`LoadedConfig::api_keys`] for all of them).
    #[serde(skip_serializing)]
    pub api_key: Option<SecretString>,
    /// A file holding the API key (Docker and Kubernetes secrets); relative to the config file,
    /// absolute after loading.
    pub api_key_file: Option<PathBuf>,
    /// More API keys for the same pool.
    #[serde(skip_serializing)]
    pub api_keys: Vec<SecretString>,
    /// More files holding one API key each; relative to the config file, absolute after loading.
    pub api_key_files: Vec<PathBuf>,
    /// Seconds after which a disabled key (rejected, out of quota) is tried again.
    pub key_recheck_s: u64,
    /// Requests each key may send per minute; calls beyond it wait for a key (none: no limit).
    pub requests_per_minute: Option<u32>,
    /// API base URL.
    pub base_url: String,
    /// `OpenAI-Organization`.
    pub organization: Option<String>,
    /// `OpenAI-Project`.
    pub project: Option<String>,
    /// Default model (a model name or an alias).
    pub model: String,
    /// Models to list (default: the current OpenAI image models).
    pub models: Option<Vec<String>>,
    /// Model aliases (`fast = "gpt-image-2.6-flare"`), on top of the built-in `fast` and `best`.
    pub aliases: BTreeMap<String, String>,
    /// The text model that writes SVG results (`svg.model`) when a call names none.
    pub svg_model: Option<String>,
    /// Whether the catalog's shutdown dates hold for this server, so a shut-down model is
    /// replaced or refused before anything is sent. Default: only for api.openai.com; set it
    /// for a gateway that passes calls to OpenAI unchanged (or `false` to always ask).
    pub catalog_dates_apply: Option<bool>,
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
    /// This provider's calls in flight at once (none: only `[limits] max_in_flight` applies).
    pub max_in_flight: Option<usize>,
    /// Extra origins result URLs may be downloaded from, besides the base URL's own: `host:port`, or a bare `host` for ports 80 and 443 only.
    pub download_hosts: Vec<String>,
    /// Cap on a response body or downloaded image, MiB.
    pub max_response_mb: usize,
    /// Per-provider generation defaults.
    pub defaults: Defaults,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            api_key: None,
            api_key_file: None,
            api_keys: Vec::new(),
            api_key_files: Vec::new(),
            key_recheck_s: 600,
            requests_per_minute: None,
            base_url: imagegen_providers::openai::DEFAULT_BASE_URL.into(),
            organization: None,
            project: None,
            model: imagegen_providers::openai::DEFAULT_MODEL.into(),
            models: None,
            aliases: BTreeMap::new(),
            svg_model: None,
            catalog_dates_apply: None,
            timeout_s: 180,
            connect_timeout_s: 10,
            max_retries: 2,
            retry_base_ms: 500,
            retry_max_ms: 8_000,
            retry_after_cap_s: 120,
            retry_on_timeout: false,
            deadline_s: 300,
            max_in_flight: None,
            download_hosts: Vec::new(),
            max_response_mb: 64,
            defaults: Defaults::default(),
        }
    }
}

/// `kind = "mock"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockConfig {
    /// Set to false to keep the table but not load the provider.
    pub enabled: bool,
    /// Default model (a model name or an alias).
    pub model: String,
    /// Model aliases, on top of the built-in `fast` and `best`.
    pub aliases: BTreeMap<String, String>,
    /// The "text model" named as `svg.model` when a call names none; the mock writes SVGs
    /// itself, so any name works.
    pub svg_model: Option<String>,
    /// Delay before each answer, milliseconds.
    pub latency_ms: u64,
    /// Fraction of calls (0.0..=1.0) that fail.
    pub fail_rate: f64,
    /// The error kind injected failures have.
    pub fail_with: ErrorKind,
    /// How the first calls end, in order (`["rate_limited", "ok"]`): an error kind fails the
    /// call, `ok` lets it succeed; later calls follow `fail_rate`.
    pub fail_sequence: Vec<String>,
    /// This provider's calls in flight at once (none: only `[limits] max_in_flight` applies).
    pub max_in_flight: Option<usize>,
    /// Per-provider generation defaults.
    pub defaults: Defaults,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: imagegen_providers::mock::MOCK_MODEL.into(),
            aliases: BTreeMap::new(),
            svg_model: Some("mock-svg-writer".into()),
            latency_ms: 0,
            fail_rate: 0.0,
            fail_with: ErrorKind::UpstreamUnavailable,
            fail_sequence: Vec::new(),
            max_in_flight: None,
            defaults: Defaults::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_and_keep_the_rest() {
        for (url, shown) in [
            (
                "http://user:SENTINEL@host:8080/v1?a=b@c",
                "http://***@host:8080/v1?a=b@c",
            ),
            ("https://SENTINEL@host/v1", "https://***@host/v1"),
            ("https://api.openai.com/v1", "https://api.openai.com/v1"),
            ("user:SENTINEL@host/v1", "***@host/v1"),
            ("http://host/v1/@x", "http://host/v1/@x"),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
    }
}
