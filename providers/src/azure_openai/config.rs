//! `kind = "azure_openai"`: what `[providers.NAME]` reads for an Azure OpenAI resource.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{catalog_entries, DEFAULT_API_VERSION, DEFAULT_EDIT_API_VERSION, DEFAULT_MODEL};
use crate::{
    build::{BuildContext, CommonConfig, HttpConfig, SettingError},
    http::{
        config::{check_url, client},
        endpoint,
        token::{TokenSource, Tokens},
    },
    keys::KeyPool,
    openai::{
        flavour::{EditRoute, Flavour, KeyHeader, Routes},
        shared_settings, OpenAiProvider,
    },
    Catalog, ImageProvider, ModelOverride,
};

/// The standard variables Azure's SDKs read, and the key each sets.
pub const STANDARD_ENV: &[(&str, &str)] = &[
    ("AZURE_OPENAI_API_KEY", "api_key"),
    ("AZURE_OPENAI_ENDPOINT", "endpoint"),
];

/// Entra ID tokens live an hour: fetched again after 45 minutes, leaving room for calls in flight.
const DEFAULT_TOKEN_REFRESH_S: u64 = 45 * 60;

/// The settings only an Azure OpenAI provider reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The resource URL, `https://NAME.openai.azure.com` (a trailing `/openai/v1` is ignored).
    pub endpoint: String,
    /// The deployment used when a call names none (sent as `model`): the name given to the
    /// deployment in Azure, not necessarily the model's. `model` overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// The model `deployment` serves (`gpt-image-2`), whose catalog rules apply to it;
    /// unset: the deployment is taken to be named after its model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_model: Option<String>,
    /// Further deployments of the resource and the model each serves: `{ "my-dep" = "gpt-image-2" }`.
    pub deployments: BTreeMap<String, String>,
    /// The `api-version` of the v1 routes (default `preview`; empty sends none).
    pub api_version: String,
    /// The `api-version` of the deployment-scoped edits path (default `2025-04-01-preview`).
    pub edit_api_version: String,
    /// Send edits to the v1 path (`/openai/v1/images/edits`, with `model`) instead of the
    /// deployment-scoped one.
    pub edits_on_v1: bool,
    /// A file holding an Entra ID token, re-read when due (instead of an `api-key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A command printing an Entra ID token, run without a shell when one is due:
    /// `["az", "account", "get-access-token", "--query", "accessToken", "-o", "tsv"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_command: Option<Vec<String>>,
    /// Seconds a token is used before it is fetched again.
    pub token_refresh_s: u64,
    /// Whether Azure's retirement dates in the catalog are acted on before sending (default true).
    pub catalog_dates_apply: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            deployment: None,
            deployment_model: None,
            deployments: BTreeMap::new(),
            api_version: DEFAULT_API_VERSION.into(),
            edit_api_version: DEFAULT_EDIT_API_VERSION.into(),
            edits_on_v1: false,
            token_file: None,
            token_command: None,
            token_refresh_s: DEFAULT_TOKEN_REFRESH_S,
            catalog_dates_apply: true,
        }
    }
}

impl Config {
    /// Every key of these settings.
    pub const KEYS: &'static [&'static str] = &[
        "endpoint",
        "deployment",
        "deployment_model",
        "deployments",
        "api_version",
        "edit_api_version",
        "edits_on_v1",
        "token_file",
        "token_command",
        "token_refresh_s",
        "catalog_dates_apply",
    ];

    /// Every field set, for checking [`Config::KEYS`].
    #[cfg(test)]
    pub(crate) fn full() -> Self {
        Self {
            endpoint: "https://x.openai.azure.com".into(),
            deployment: Some("d".into()),
            deployment_model: Some("gpt-image-2".into()),
            deployments: BTreeMap::from([("e".to_string(), "gpt-image-1.5".to_string())]),
            token_file: Some("t".into()),
            token_command: Some(vec!["az".into()]),
            ..Self::default()
        }
    }

    /// Whether an Entra ID token source is set (then no key is needed).
    pub fn has_token_source(&self) -> bool {
        self.token_file.is_some() || self.token_command.is_some()
    }

    /// Checks the settings without quoting the endpoint: it may carry credentials.
    pub(crate) fn check(&self) -> Result<(), SettingError> {
        if self.endpoint.trim().is_empty() {
            return Err(SettingError::new(
                "endpoint",
                "must be set to the resource URL, https://NAME.openai.azure.com \
                 (or set AZURE_OPENAI_ENDPOINT)",
            ));
        }
        check_url("endpoint", self.endpoint.trim())?;
        let blank = |s: &str| s.trim().is_empty();
        if self.deployment.as_deref().is_some_and(blank) {
            return Err(SettingError::new("deployment", "must not be empty"));
        }
        if self.deployment_model.as_deref().is_some_and(blank) {
            return Err(SettingError::new("deployment_model", "must not be empty"));
        }
        if self.deployments.iter().any(|(d, m)| blank(d) || blank(m)) {
            return Err(SettingError::new(
                "deployments",
                "each entry must map a deployment name to the model it serves, neither empty",
            ));
        }
        if self.token_file.is_some() && self.token_command.is_some() {
            return Err(SettingError::new(
                "token_command",
                "set either token_file or token_command, not both",
            ));
        }
        if self
            .token_command
            .as_ref()
            .is_some_and(|argv| argv.is_empty())
        {
            return Err(SettingError::new(
                "token_command",
                "must name the program and its arguments",
            ));
        }
        if !(1..=86_400).contains(&self.token_refresh_s) {
            return Err(SettingError::new(
                "token_refresh_s",
                "must be between 1 and 86400",
            ));
        }
        for (key, value) in [
            ("api_version", &self.api_version),
            ("edit_api_version", &self.edit_api_version),
        ] {
            if !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                return Err(SettingError::new(
                    key,
                    "must be a version such as preview or 2025-04-01-preview",
                ));
            }
        }
        Ok(())
    }

    /// Each deployment name and the model whose rules apply to it.
    pub fn deployment_models(&self) -> BTreeMap<String, String> {
        let mut map = self.deployments.clone();
        if let (Some(deployment), Some(model)) = (&self.deployment, &self.deployment_model) {
            map.insert(deployment.clone(), model.clone());
        }
        map.retain(|deployment, model| deployment != model);
        map
    }

    /// Azure's catalog, with an entry for each deployment holding the rules (and retirement
    /// date) of the model it serves, so that checks and lifecycles work by deployment name.
    /// A deployment whose model no built-in entry knows is left out here; the provider looks
    /// its model up at call time, after `[models]` was applied.
    pub fn catalog(&self) -> Catalog {
        let mut catalog = Catalog::for_kind(catalog_entries());
        let overrides: Vec<(String, ModelOverride)> = self
            .deployment_models()
            .into_iter()
            .filter(|(_, model)| catalog.get(model).known)
            .map(|(deployment, model)| {
                (
                    deployment,
                    ModelOverride {
                        like: Some(model),
                        ..ModelOverride::default()
                    },
                )
            })
            .collect();
        // Every `like` names a known entry (filtered above), so this cannot fail.
        let _ = catalog.extend(overrides.iter().map(|(name, o)| (name, o)));
        catalog
    }

    /// The resource URL without a trailing `/`, `/openai/v1` or `/openai`.
    fn resource(&self) -> Result<url::Url, String> {
        let mut url = url::Url::parse(self.endpoint.trim())
            .map_err(|e| format!("endpoint is not a valid URL ({e})"))?;
        let path = url.path().trim_end_matches('/');
        let path = path
            .strip_suffix("/openai/v1")
            .or_else(|| path.strip_suffix("/openai"))
            .unwrap_or(path)
            .to_string();
        url.set_path(&path);
        url.set_query(None);
        Ok(url)
    }

    /// The provider these settings and `common` describe.
    pub(crate) fn build(
        &self,
        common: &CommonConfig,
        http: &HttpConfig,
        context: BuildContext<'_>,
    ) -> Result<Arc<dyn ImageProvider>, String> {
        let resource = self.resource()?;
        let with_version = |mut url: url::Url, version: &str| {
            if !version.is_empty() {
                url.query_pairs_mut().append_pair("api-version", version);
            }
            url
        };
        let v1 = endpoint(&resource, "openai/v1");
        let v1_route = |path: &str| with_version(endpoint(&v1, path), &self.api_version);
        let routes = Routes {
            generations: v1_route("images/generations"),
            edits: match self.edits_on_v1 {
                true => EditRoute::Fixed(v1_route("images/edits")),
                false => EditRoute::PerDeployment {
                    base: endpoint(&resource, "openai/deployments"),
                    api_version: self.edit_api_version.clone(),
                },
            },
            variations: v1_route("images/variations"),
        };
        let tokens = match (&self.token_file, &self.token_command) {
            (Some(path), _) => Some(TokenSource::File(path.clone())),
            (None, Some(argv)) => Some(TokenSource::Command(argv.clone())),
            (None, None) => None,
        }
        .map(|source| {
            Arc::new(Tokens::new(
                source,
                Duration::from_secs(self.token_refresh_s),
            ))
        });
        // With a token source the token is the credential: keys (such as a stray
        // AZURE_OPENAI_API_KEY) are not sent beside it.
        let keys = match tokens {
            Some(_) => Arc::new(KeyPool::empty()),
            None => context.keys,
        };
        let mut s = shared_settings(resource, common, http, keys, context.catalog);
        let deployment = self.deployment.as_deref().unwrap_or(DEFAULT_MODEL);
        s.model = common.model.clone().unwrap_or_else(|| deployment.into());
        s.models = match &common.offered_models {
            Some(models) => models.clone(),
            None => {
                let mut models = vec![s.model.clone()];
                for name in self.deployment.iter().chain(self.deployments.keys()) {
                    if !models.contains(name) {
                        models.push(name.clone());
                    }
                }
                models
            }
        };
        s.catalog_dates_apply = Some(self.catalog_dates_apply);
        let mut rules_of = self.deployment_models();
        // `model = "my-dep"` with `deployment_model` and no `deployment`: the rules still
        // apply to it (its catalog entry, for lifecycles, needs `deployment`).
        if let (None, Some(model), Some(serves)) =
            (&self.deployment, &common.model, &self.deployment_model)
        {
            if model != serves {
                rules_of.insert(model.clone(), serves.clone());
            }
        }
        let flavour = Flavour {
            kind: "azure_openai",
            routes: Some(routes),
            key_header: KeyHeader::ApiKey,
            tokens,
            rules_of,
            refine_error: Some(super::error::refine),
            aliases: false,
            lists_models: false,
            // Azure filters content in the deployment itself and has no moderation route.
            moderates: false,
            streams_zero_partials: false,
            reads_error_in_200: true,
            download_hint: "",
            ..Flavour::openai()
        };
        let client = client(context.clients, http)?;
        Ok(Arc::new(OpenAiProvider::with_flavour(s, client, flavour)))
    }
}
