//! `kind = "openai_compatible"`: what `[providers.NAME]` reads for a server speaking OpenAI's
//! image routes.

use std::{collections::BTreeMap, fmt, sync::Arc};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use crate::{
    build::{BuildContext, CommonConfig, HttpConfig, SettingError},
    http::config::{check_base_url, client, parse_base_url},
    openai::{
        flavour::{Flavour, KeyHeader},
        shared_settings, OpenAiProvider,
    },
    ImageProvider,
};

/// Headers the provider sets itself: configuring them would break or forge a request.
const RESERVED: [&str; 6] = [
    "authorization",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

/// The settings only an OpenAI-compatible provider reads.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The server's API base, e.g. `http://localhost:4000/v1` (LiteLLM) or
    /// `http://localhost:8080/v1` (LocalAI).
    pub base_url: String,
    /// Extra headers sent with every request (`{ "X-Title" = "my app" }`); their values are
    /// treated as secrets and shown as `***`.
    #[serde(serialize_with = "hidden_values")]
    pub headers: BTreeMap<String, SecretString>,
    /// Whether the catalog's shutdown dates (OpenAI's) hold for this server, so a shut-down
    /// model is replaced or refused before sending; default false: the server is asked.
    pub catalog_dates_apply: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = url::Url::parse(&self.base_url)
            .map(|u| crate::http::error::redacted(&u))
            .unwrap_or_else(|_| "(invalid)".into());
        f.debug_struct("Config")
            .field("base_url", &base)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("catalog_dates_apply", &self.catalog_dates_apply)
            .finish()
    }
}

/// Header names with their values hidden.
fn hidden_values<S: Serializer>(
    headers: &BTreeMap<String, SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(headers.keys().map(|k| (k, "***")))
}

impl Config {
    /// Every key of these settings.
    pub const KEYS: &'static [&'static str] = &["base_url", "headers", "catalog_dates_apply"];

    /// Every field set, for checking [`Config::KEYS`].
    #[cfg(test)]
    pub(crate) fn full() -> Self {
        Self {
            base_url: "http://localhost:4000/v1".into(),
            headers: BTreeMap::from([("X-Title".to_string(), SecretString::from("t"))]),
            catalog_dates_apply: true,
        }
    }

    /// Checks the base URL and headers without quoting a value (either may hold a secret).
    pub(crate) fn check(&self) -> Result<(), SettingError> {
        let invalid = |message: String| Err(SettingError::new("base_url", message));
        if self.base_url.trim().is_empty() {
            return invalid(
                "must be set to the server's API base, such as http://localhost:4000/v1".into(),
            );
        }
        check_base_url(self.base_url.trim())?;
        self.header_map().map(|_| ())
    }

    /// The extra headers, each value marked sensitive.
    fn header_map(&self) -> Result<HeaderMap, SettingError> {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                SettingError::new(
                    "headers",
                    format!("`{}` is not a header name", name.escape_default()),
                )
            })?;
            if RESERVED.contains(&header.as_str()) {
                return Err(SettingError::new(
                    "headers",
                    format!("`{header}` is set by the provider itself (the key goes in api_key)"),
                ));
            }
            let mut value = HeaderValue::from_str(value.expose_secret().trim()).map_err(|_| {
                SettingError::new(
                    "headers",
                    format!("the value of `{header}` is not a valid header value"),
                )
            })?;
            value.set_sensitive(true);
            map.insert(header, value);
        }
        Ok(map)
    }

    /// The provider these settings and `common` describe.
    pub(crate) fn build(
        &self,
        common: &CommonConfig,
        http: &HttpConfig,
        context: BuildContext<'_>,
    ) -> Result<Arc<dyn ImageProvider>, String> {
        let base_url = parse_base_url(self.base_url.trim())?;
        let headers = self
            .header_map()
            .map_err(|e| format!("{}: {}", e.key, e.message))?;
        let mut s = shared_settings(base_url, common, http, context.keys, context.catalog);
        s.model = common
            .model
            .clone()
            .unwrap_or_else(|| super::DEFAULT_MODEL.into());
        s.models = common
            .offered_models
            .clone()
            .unwrap_or_else(|| vec![s.model.clone()]);
        s.catalog_dates_apply = Some(self.catalog_dates_apply);
        let flavour = Flavour {
            kind: "openai_compatible",
            key_header: KeyHeader::Bearer,
            headers,
            basic_unknown: true,
            refine_error: Some(super::refine),
            aliases: false,
            // Few such servers have OpenAI's classifier behind `/moderations`; a pre-check
            // that cannot run would refuse every call, so none is offered.
            moderates: false,
            reads_error_in_200: true,
            download_hint: "",
            ..Flavour::openai()
        };
        let client = client(context.clients, http)?;
        Ok(Arc::new(OpenAiProvider::with_flavour(s, client, flavour)))
    }
}
