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

use imagegen_providers::{ImageOptions, ModelOverride};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use crate::presets::PresetConfig;
pub use crate::routing::RouteConfig;
pub use error::ConfigError;
/// One `[providers.NAME]` table: the common settings and those of its `kind`.
pub use imagegen_providers::build::ProviderConfig;
pub use imagegen_providers::secret::fingerprint;
pub use load::{Input, LoadedConfig, ResolvedKey, ResolvedToken};

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
    /// How log lines are written to stderr: `text` (the default) or `json` (one object per
    /// line, for log collectors); `--log-format` and `IMAGEGEN_LOG_FORMAT` win. Read at
    /// start-up only: a change needs a restart.
    pub log_format: Option<LogFormat>,
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
    /// Named lists of providers tried in order (`provider = "NAME"` in calls and config).
    pub routes: BTreeMap<String, RouteConfig>,
    /// `[presets.NAME]`: prompt templates with options, chosen per call with `preset`.
    pub presets: BTreeMap<String, PresetConfig>,
    /// `serve --http`: the listener, authentication and shutdown.
    pub server: ServerConfig,
    /// `[storage]`: where images are stored (an object store, else `output.dir`), who sees
    /// them, and the history index.
    pub storage: StorageConfig,
    /// `[cache]`: identical requests served from the store instead of the provider.
    pub cache: CacheConfig,
    /// `[moderation_check]`: prompts checked by a moderation endpoint before any paid call.
    pub moderation_check: ModerationCheckConfig,
    /// `[budget]`: spending limits per UTC day and month, in all, per provider and per caller.
    pub budget: crate::budget::BudgetConfig,
    /// `[cluster]`: the Redis the replicas share budgets through.
    pub cluster: crate::cluster::ClusterConfig,
    /// `[tasks]`: long calls answered with MCP tasks, for clients that declare them.
    pub tasks: crate::tasks::TasksConfig,
}

/// `[moderation_check]`: before a generation, an edit or a batch item is routed (and before
/// the cache is asked), its prompt, and an edit's input images, go to a provider's moderation
/// endpoint; a flagged prompt is refused as `content_policy` and nothing is generated. The
/// tools' `moderation` parameter is a different thing: OpenAI's own strictness setting.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModerationCheckConfig {
    /// Check every call; off by default.
    pub enabled: bool,
    /// The configured provider whose moderation endpoint (key, base URL) is used; default:
    /// the default provider when it has one, else the first configured provider that does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The moderation model.
    pub model: String,
    /// What a call does when the check itself fails (network, 5xx, a rejected key, an
    /// unreadable answer): `refuse` fails it, `allow` generates anyway and says so.
    pub on_error: OnModerationError,
    /// Send an edit's input images along with its prompt.
    pub images: bool,
}

impl Default for ModerationCheckConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            provider: None,
            model: imagegen_providers::DEFAULT_MODERATION_MODEL.into(),
            on_error: OnModerationError::Refuse,
            images: true,
        }
    }
}

/// `[moderation_check] on_error`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnModerationError {
    /// Fail the call, saying the check failed and why: nothing unchecked is generated.
    #[default]
    Refuse,
    /// Generate without the check, with a note in the result saying it failed.
    Allow,
}

/// `[cache]`: an identical request (same provider kind, model, parameters as sent, prompt
/// and input images) returns the image already stored for it, without calling the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Calls use the cache unless they say `cache: false`; off, only calls that say
    /// `cache: true` do.
    pub enabled: bool,
    /// How long a stored answer serves identical requests, seconds.
    pub ttl_s: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl_s: 7 * 24 * 3600,
        }
    }
}

/// `[storage]`: the image store.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// An object store (`s3://bucket/prefix`, `memory://`); unset: the local `output.dir`.
    pub url: Option<String>,
    /// Settings for the object store's builder (`endpoint`, `region`, `allow_http`, ...);
    /// credentials come from the environment (`AWS_ACCESS_KEY_ID`, ...) as object_store reads them.
    #[serde(skip_serializing)]
    pub options: BTreeMap<String, String>,
    /// Over HTTP, every caller sees every image (resources, `find_images`, delete); otherwise
    /// each sees only their own. Over stdio there is one user and everything is theirs.
    pub shared: bool,
    /// This replica's history index file (SQLite; rebuilt from the store whenever lost).
    /// Default: `imagegen-mcp/index/<hash of the store's location>.sqlite3` under the
    /// platform data directory. Relative to the config file; absolute after loading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_path: Option<PathBuf>,
    /// Retention: the server's own images older than this many days are deleted; unset:
    /// kept whatever their age.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u64>,
    /// Retention: the oldest of the server's own images are deleted until the rest (with
    /// their sidecars) take at most this many megabytes (10^6 bytes); unset: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_total_mb: Option<u64>,
    /// How often a running server applies retention, in minutes (and once at start-up);
    /// unset: 60.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_interval_min: Option<u64>,
    /// This replica's usage ledger (daily JSON Lines files). Default: `output.dir/usage` for
    /// the local store; with an object store, `imagegen-mcp/usage/<hash of the store's
    /// location>` under the platform data directory (uploaded to `PREFIX/usage/`). Relative
    /// to the config file; absolute after loading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_dir: Option<PathBuf>,
}

/// How log lines are written (`log_format`, `--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (caller, request id) of each event.
    Json,
}

/// `[server]`: how `imagegen-mcp serve --http` listens, whom it serves and how it stops.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The listener and the requests it takes.
    pub http: HttpConfig,
    /// Who may call.
    pub auth: AuthConfig,
    /// Bounds on what each caller may run.
    pub limits: ServerLimits,
    /// `GET /metrics`.
    pub metrics: MetricsConfig,
    /// After SIGTERM or SIGINT, how long calls in flight may run before the server exits anyway, seconds.
    pub shutdown_grace_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            limits: ServerLimits::default(),
            metrics: MetricsConfig::default(),
            shutdown_grace_s: 30,
        }
    }
}

/// `[server.limits]`: bounds per caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// The limits every caller gets, unless its `[[server.auth.tokens]]` entry sets its own.
    pub per_caller: CallerLimitConfig,
}

/// `[server.limits.per_caller]`, and the same keys on a `[[server.auth.tokens]]` entry: what
/// one caller may run, checked before any provider is chosen. Unset: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallerLimitConfig {
    /// Image tool calls (generate, edit, variation, batch) one caller may have running at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Image tool calls one caller may start per minute (a token bucket: a full minute's
    /// allowance may come at once, then one every 60/N s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
}

/// `[server.metrics]`: `GET /metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A file holding the bearer token `GET /metrics` requires instead of the `/mcp` tokens
    /// (re-read when it changes; relative to the config file, absolute after loading).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// The address `serve --http` listens on when neither the flag nor `server.http.bind` names one.
pub const DEFAULT_HTTP_BIND: &str = "127.0.0.1:8787";

/// `[server.http]`: the HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `HOST:PORT` to listen on; `serve --http ADDR` wins. Loopback by default.
    pub bind: String,
    /// The largest request body, MiB; a larger request is refused with 413 naming this setting.
    pub max_body_mb: u64,
    /// Browser origins allowed to call (`https://app.example.com`, `http://localhost:*`); a
    /// request with any other `Origin` header gets 403. Requests without one (non-browser
    /// clients) always pass.
    pub allowed_origins: Vec<String>,
    /// `Host` header values accepted besides the loopback names (`localhost`, `127.0.0.1`,
    /// `::1`) and the bound address (DNS-rebinding protection): the names clients use to reach
    /// the server, such as `images.internal` or `images.internal:8787`.
    pub allowed_hosts: Vec<String>,
    /// The URL clients reach this server at (`https://img.example.com`, without `/mcp`),
    /// as a proxy in front of it publishes it: OAuth's resource URL and metadata URL are
    /// built from it, never from a request's `Host`. Default: `http://<bound address>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: DEFAULT_HTTP_BIND.into(),
            max_body_mb: 64,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            public_url: None,
        }
    }
}

/// `[server.auth]`: who may call `serve --http`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Static bearer tokens; with none, only a loopback listener (or `allow_unauthenticated`)
    /// serves anyone who connects.
    pub tokens: Vec<TokenConfig>,
    /// Serve a non-loopback address with no tokens configured: anyone who can reach it may
    /// call (and spend the providers' credit).
    pub allow_unauthenticated: bool,
    /// Accept OAuth 2.1 access tokens (JWTs) from an authorization server, besides or instead
    /// of `tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthConfig>,
}

/// `[server.auth.oauth]`: serve as an OAuth 2.1 resource server (the MCP authorization spec):
/// JWT access tokens signed by `issuer`'s keys, for `audience`, with `required_scopes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    /// The authorization server, exactly as its tokens' `iss` claim names it (an `https` URL;
    /// `http` only on a loopback host, for development).
    pub issuer: String,
    /// The `aud` a token must carry to be accepted here, usually this server's resource URL
    /// (`<server.http.public_url>/mcp`). Required: there is no default.
    pub audience: String,
    /// Where the signing keys are (a JWKS); default: the `jwks_uri` of the issuer's metadata
    /// (RFC 8414 `/.well-known/oauth-authorization-server`, then OpenID Connect discovery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Scopes every token must hold (from its `scope` or `scp` claim); 403 otherwise.
    pub required_scopes: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_s: u64,
    /// The shortest time between two fetches of the keys, seconds: a token naming an unknown
    /// key (`kid`) fetches them again at most this often, so junk tokens cannot flood the
    /// authorization server.
    pub jwks_refresh_min_s: u64,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: None,
            required_scopes: Vec::new(),
            leeway_s: 60,
            jwks_refresh_min_s: 10,
        }
    }
}

/// One `[[server.auth.tokens]]` entry: a caller and its bearer token.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// The caller's identity in logs (never the token).
    pub name: String,
    /// The token itself; prefer `token_file`.
    #[serde(skip_serializing)]
    pub token: Option<SecretString>,
    /// A file holding the token, re-read when it changes (relative to the config file,
    /// absolute after loading).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// This caller's own `max_in_flight`, winning over `[server.limits.per_caller]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// This caller's own `requests_per_minute`, winning over `[server.limits.per_caller]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// The caller sees and may delete every caller's images.
    pub admin: bool,
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
    /// Write the prompt into each stored PNG, JPEG or WebP (iTXt / XMP); never into a file
    /// with a C2PA manifest. Off: the stored bytes are exactly the provider's.
    pub embed_metadata: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: None,
            delivery: Delivery::Preview,
            preview_budget_bytes: 80_000,
            max_read_mb: 64,
            embed_metadata: false,
        }
    }
}

/// Default image options (`[defaults]`, `[providers.NAME.defaults]`): each applies when a
/// call leaves it unset and the chosen model takes it, and is otherwise not sent. Unknown keys
/// are refused by hand at load (the options are flattened into tool parameters, where serde
/// cannot refuse them).
pub type Defaults = ImageOptions;

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
