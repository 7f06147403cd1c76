//! `kind = "gemini"`: what `[providers.NAME]` reads for Google's image models, on the Gemini
//! API (an API key) or on Vertex AI (a project, a location and a bearer token).

use std::{path::PathBuf, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{Endpoint, GeminiProvider, GeminiSettings, DEFAULT_BASE_URL, DEFAULT_MODEL};
use crate::{
    build::{BuildContext, CommonConfig, HttpConfig, SettingError},
    http::{
        config::{check_base_url, client, parse_base_url, retry_policy},
        TokenSource, Tokens,
    },
    ImageProvider,
};

/// The standard variables Google's SDKs read for a Gemini API key, and the key each sets.
///
/// Both set `api_key`; the later layer wins, so when both are set `GOOGLE_API_KEY` is used,
/// as the Google Gen AI SDK does ("Both GOOGLE_API_KEY and GEMINI_API_KEY are set. Using
/// GOOGLE_API_KEY").
pub const STANDARD_ENV: &[(&str, &str)] =
    &[("GEMINI_API_KEY", "api_key"), ("GOOGLE_API_KEY", "api_key")];

/// How long a fetched access token is used before it is fetched again, by default: Google's
/// tokens live an hour, and 45 minutes leaves room for the calls in flight.
pub const DEFAULT_TOKEN_REFRESH_S: u64 = 2_700;

/// `vertex = { project = "...", location = "..." }`: call Vertex AI instead of the Gemini API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VertexConfig {
    /// The Google Cloud project id.
    pub project: String,
    /// The region (`us-central1`, `europe-west4`, ...) or `global`.
    pub location: String,
}

/// The settings only a Gemini provider reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The API origin; unset: `https://generativelanguage.googleapis.com`, or on Vertex AI
    /// `https://{location}-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com`
    /// for `global`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Vertex AI's project and location; unset: the Gemini API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vertex: Option<VertexConfig>,
    /// A file holding an access token (re-read when due), sent as `Authorization: Bearer`
    /// instead of an API key; relative paths are from the working directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A command printing an access token, such as `["gcloud", "auth", "print-access-token"]`
    /// (run without a shell), sent as `Authorization: Bearer` instead of an API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_command: Option<Vec<String>>,
    /// Seconds a token is used before it is fetched again (it is also fetched again after a 401).
    pub token_refresh_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_url: None,
            vertex: None,
            token_file: None,
            token_command: None,
            token_refresh_s: DEFAULT_TOKEN_REFRESH_S,
        }
    }
}

/// Whether `text` is a plain project or location name: nothing that could change the path.
fn plain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl Config {
    /// Every key of these settings.
    pub const KEYS: &'static [&'static str] = &[
        "base_url",
        "vertex",
        "token_file",
        "token_command",
        "token_refresh_s",
    ];

    /// Every field set, for checking [`Config::KEYS`].
    #[cfg(test)]
    pub(crate) fn full() -> Self {
        Self {
            base_url: Some(DEFAULT_BASE_URL.into()),
            vertex: Some(VertexConfig {
                project: "p".into(),
                location: "global".into(),
            }),
            token_file: Some("t".into()),
            token_command: Some(vec!["gcloud".into()]),
            token_refresh_s: 60,
        }
    }

    /// Where the token comes from, if one is configured.
    pub fn token_source(&self) -> Option<TokenSource> {
        match (&self.token_file, &self.token_command) {
            (Some(file), _) => Some(TokenSource::File(file.clone())),
            (None, Some(argv)) => Some(TokenSource::Command(argv.clone())),
            (None, None) => None,
        }
    }

    /// Whether the provider authenticates with a bearer token rather than an API key.
    pub fn uses_token(&self) -> bool {
        self.token_file.is_some() || self.token_command.is_some()
    }

    /// Checks the settings without quoting the base URL (it may carry credentials).
    pub(crate) fn check(&self) -> Result<(), SettingError> {
        if let Some(base) = &self.base_url {
            check_base_url(base)?;
        }
        if let Some(v) = &self.vertex {
            if !plain(&v.project) || !plain(&v.location) {
                return Err(SettingError::new(
                    "vertex",
                    "project and location must be non-empty names of letters, digits, `-`, `_`, `.` or `:`",
                ));
            }
        }
        if self.token_file.is_some() && self.token_command.is_some() {
            return Err(SettingError::new(
                "token_command",
                "give token_file or token_command, not both",
            ));
        }
        if self
            .token_command
            .as_ref()
            .is_some_and(|argv| argv.first().is_none_or(|p| p.trim().is_empty()))
        {
            return Err(SettingError::new(
                "token_command",
                "must name the program first, such as [\"gcloud\", \"auth\", \"print-access-token\"]",
            ));
        }
        if !(1..=86_400).contains(&self.token_refresh_s) {
            return Err(SettingError::new(
                "token_refresh_s",
                "must be between 1 and 86400",
            ));
        }
        Ok(())
    }

    /// Where calls go, as configured.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let parse = parse_base_url;
        Ok(match &self.vertex {
            None => Endpoint::GeminiApi {
                base_url: parse(self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL))?,
            },
            Some(v) => {
                let base = match &self.base_url {
                    Some(base) => base.clone(),
                    None if v.location == "global" => "https://aiplatform.googleapis.com".into(),
                    None => format!("https://{}-aiplatform.googleapis.com", v.location),
                };
                Endpoint::Vertex {
                    base_url: parse(&base)?,
                    project: v.project.clone(),
                    location: v.location.clone(),
                }
            }
        })
    }

    /// The provider these settings and `common` describe.
    pub(crate) fn build(
        &self,
        common: &CommonConfig,
        http: &HttpConfig,
        context: BuildContext<'_>,
    ) -> Result<Arc<dyn ImageProvider>, String> {
        let mut s = GeminiSettings::new(self.endpoint()?, context.keys);
        s.tokens = self.token_source().map(|source| {
            Arc::new(Tokens::new(
                source,
                Duration::from_secs(self.token_refresh_s),
            ))
        });
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
        Ok(Arc::new(GeminiProvider::new(s, client)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vertex_endpoints_follow_the_location_and_settings_are_checked_by_key() {
        let mut c = Config {
            vertex: Some(VertexConfig {
                project: "my-proj".into(),
                location: "us-central1".into(),
            }),
            ..Config::default()
        };
        assert_eq!(c.check(), Ok(()));
        match c.endpoint().unwrap() {
            Endpoint::Vertex { base_url, .. } => {
                assert_eq!(
                    base_url.as_str(),
                    "https://us-central1-aiplatform.googleapis.com/"
                )
            }
            other => panic!("{other:?}"),
        }
        c.vertex.as_mut().unwrap().location = "global".into();
        match c.endpoint().unwrap() {
            Endpoint::Vertex { base_url, .. } => {
                assert_eq!(base_url.as_str(), "https://aiplatform.googleapis.com/")
            }
            other => panic!("{other:?}"),
        }
        c.vertex.as_mut().unwrap().location = "us/../x".into();
        assert_eq!(c.check().unwrap_err().key, "vertex");
        let both = Config {
            token_file: Some("t".into()),
            token_command: Some(vec!["gcloud".into()]),
            ..Config::default()
        };
        assert_eq!(both.check().unwrap_err().key, "token_command");
        let empty = Config {
            token_command: Some(vec![]),
            ..Config::default()
        };
        assert_eq!(empty.check().unwrap_err().key, "token_command");
        let zero = Config {
            token_refresh_s: 0,
            ..Config::default()
        };
        assert_eq!(zero.check().unwrap_err().key, "token_refresh_s");
    }

    #[test]
    fn a_vertex_table_reads_and_builds_a_provider_that_names_no_token() {
        use crate::build::{KindConfig, ProviderConfig};
        let config: ProviderConfig = serde_json::from_value(serde_json::json!({
            "kind": "gemini",
            "vertex": {"project": "my-proj", "location": "europe-west4"},
            "token_command": ["gcloud", "auth", "print-access-token"],
            "token_refresh_s": 600,
        }))
        .unwrap();
        let KindConfig::Gemini(gemini) = &config.kind else {
            panic!("{:?}", config.kind);
        };
        assert!(gemini.uses_token());
        assert_eq!(config.check(), Ok(()));
        assert_eq!(config.kind.missing_key_hint(&config.common), None);
        let clients = crate::http::ClientCache::default();
        let provider = config
            .build(BuildContext {
                keys: Arc::new(crate::keys::KeyPool::empty()),
                catalog: Arc::new(config.kind.catalog()),
                clients: &clients,
            })
            .unwrap();
        assert_eq!(provider.kind(), "gemini");
        assert_eq!(provider.default_model(), DEFAULT_MODEL);
        assert!(provider.capabilities("gemini-3-pro-image").known);
        let shown = format!("{provider:?}");
        assert!(
            shown.contains("gcloud") && shown.contains("vertex: true"),
            "{shown}"
        );
        // A plain table is the Gemini API, whose missing key is named.
        let plain: ProviderConfig =
            serde_json::from_value(serde_json::json!({"kind": "gemini"})).unwrap();
        assert!(plain
            .kind
            .missing_key_hint(&plain.common)
            .unwrap()
            .contains("GEMINI_API_KEY"));
    }
}
