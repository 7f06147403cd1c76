//! Building the layers, merging them with figment, and resolving what the engine needs.

use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use figment::{
    value::{Dict, Map, Value},
    Figment, Metadata, Profile, Provider,
};
use imagegen_providers::{
    build::{CommonConfig, KindConfig, TableReader},
    Catalog, ModelOverride,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{de::DeserializeOwned, Deserialize as _};
use sha2::{Digest, Sha256};

use super::{
    error::{describe, dotted, ConfigError},
    files, CliOverrides, Config, Defaults, ProviderConfig,
};

/// The environment variable prefix of configuration keys.
const PREFIX: &str = "IMAGEGEN_";
/// Top-level keys: an `IMAGEGEN_*` variable starting with anything else is not configuration.
pub(super) const TOP_KEYS: [&str; 17] = [
    "default_provider",
    "log_level",
    "log_format",
    "output",
    "defaults",
    "reload",
    "limits",
    "input",
    "batch",
    "providers",
    "models",
    "catalog",
    "routes",
    "presets",
    "server",
    "budget",
    "cluster",
];
/// `IMAGEGEN_*` variables that are not configuration and need no notice (`IMAGEGEN_LOG*` too).
const NON_CONFIG_VARS: [&str; 3] = ["IMAGEGEN_CONFIG", "IMAGEGEN_LOG", "IMAGEGEN_HEARTBEAT_MS"];
/// The variables the official OpenAI SDKs read, and the `[providers.openai]` key each sets.
/// Keys whose environment values stay strings even when they look like numbers or booleans.
const STRING_KEYS: [&str; 10] = [
    "token",
    "bind",
    "organization",
    "project",
    "model",
    "svg_model",
    "default_provider",
    "log_level",
    // A preset's `{prompt}` would otherwise read as an inline table.
    "template",
    "description",
];
/// The settings a provider's keys come from, in the order they join its pool.
const KEY_FIELDS: [&str; 4] = CommonConfig::KEY_FIELDS;

/// The largest key file read: a key is a line; anything bigger is the wrong file.
const KEY_FILE_CAP: u64 = 64 << 10;
/// The largest config file read.
const CONFIG_FILE_CAP: u64 = 4 << 20;

/// Which layer a value came from, lowest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    Default,
    StandardEnv,
    File,
    Env,
    Flag,
}

/// One source of values; its name is what errors and `show` print as the source.
#[derive(Clone)]
struct Layer {
    origin: Origin,
    name: String,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// An API key and where it came from.
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    /// The key (its `Debug` is redacted).
    pub key: SecretString,
    /// Where it came from: `file /etc/imagegen.toml`, `env OPENAI_API_KEY`, `api_key_file /run/secrets/openai`, ...
    pub source: String,
}

/// A bearer token of `[[server.auth.tokens]]`, read and checked, and whose it is.
#[derive(Clone)]
pub struct ResolvedToken {
    /// The caller's identity in logs.
    pub name: String,
    /// The SHA-256 of the token: presented tokens are hashed and compared with this in
    /// constant time, so neither the token's bytes nor its length shape the comparison.
    digest: [u8; 32],
}

impl std::fmt::Debug for ResolvedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ResolvedToken {
    fn new(name: &str, token: &str) -> Self {
        Self {
            name: name.to_string(),
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches_digest(&self, presented: &[u8; 32]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.digest.ct_eq(presented).into()
    }

    /// A key for signing what is handed to this token's holder (the gallery's login cookie),
    /// derived from the token under `purpose`: the same on every replica without more
    /// configuration, and another one once the token is rotated.
    pub fn derived_key(&self, purpose: &str) -> [u8; 32] {
        use sha2::{Digest as _, Sha256};
        let mut hash = Sha256::new();
        hash.update(b"imagegen-mcp derived key\0");
        hash.update(purpose.as_bytes());
        hash.update(b"\0");
        hash.update(self.digest);
        hash.finalize().into()
    }
}

impl ResolvedKey {
    /// A safe hint of the key, such as `sk-…abcd`.
    pub fn fingerprint(&self) -> String {
        super::fingerprint(self.key.expose_secret())
    }
}

/// A file the configuration was read from, and the SHA-256 of what was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The file as configured (absolute; symbolic links not resolved).
    pub path: PathBuf,
    /// The SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

/// The checked configuration with everything resolved, and where each value came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration: `default_provider` and `output.dir` set, paths absolute, keys resolved.
    pub config: Config,
    /// The config file used, if any (absolute).
    pub file: Option<PathBuf>,
    /// The files looked for when none was named, in order.
    pub(super) searched: Vec<PathBuf>,
    /// Leaf key paths mapped to the name of the layer that set them; absent means a default.
    pub(super) sources: BTreeMap<Vec<String>, String>,
    pub(super) keys: BTreeMap<String, Vec<ResolvedKey>>,
    tokens: Vec<ResolvedToken>,
    metrics_token: Option<ResolvedToken>,
    catalog: Catalog,
    catalogs: BTreeMap<String, Arc<Catalog>>,
    notices: Vec<String>,
    shadowed: Vec<String>,
    inputs: Vec<Input>,
    content_hash: [u8; 32],
}

impl LoadedConfig {
    /// Loads the configuration from the process environment, working directory and `cli`.
    pub fn load(cli: &CliOverrides) -> Result<Self, ConfigError> {
        let cwd = std::env::current_dir().map_err(|e| {
            ConfigError::new(format!("cannot determine the current directory: {e}"))
        })?;
        // Non-UTF-8 variables cannot be configuration; std::env::vars would panic on them.
        let mut env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        if !env.contains_key("HOME") {
            if let Some(home) = dirs::home_dir().and_then(|h| h.to_str().map(String::from)) {
                env.insert("HOME".into(), home);
            }
        }
        Self::load_from(cli, env, &cwd)
    }

    /// The log format to start with, read cheaply before logging exists (and so before the
    /// configuration is loaded): `IMAGEGEN_LOG_FORMAT`, else the config file's `log_format`.
    /// Anything unreadable gives `None`; the full load reports it properly.
    pub fn peek_log_format(cli: &CliOverrides) -> Option<super::LogFormat> {
        let parse = |v: &str| {
            super::LogFormat::deserialize(serde::de::value::StrDeserializer::<
                serde::de::value::Error,
            >::new(v.trim()))
            .ok()
        };
        if let Some(value) = std::env::var("IMAGEGEN_LOG_FORMAT")
            .ok()
            .filter(|v| !v.is_empty())
        {
            return parse(&value);
        }
        let cwd = std::env::current_dir().ok()?;
        let env: BTreeMap<String, String> = ["IMAGEGEN_CONFIG", "XDG_CONFIG_HOME", "HOME"]
            .into_iter()
            .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let home = env
            .get("HOME")
            .map(PathBuf::from)
            .or_else(dirs::home_dir)
            .filter(|h| h.is_absolute());
        let (file, _) = find_file(cli, &env, &cwd, home.as_deref()).ok()?;
        let text = files::read_text(&file?, CONFIG_FILE_CAP).ok()?;
        let table: toml::Table = toml::from_str(&text).ok()?;
        parse(table.get("log_format")?.as_str()?)
    }

    /// Loads the configuration with `env` as the whole environment and `cwd` as the working
    /// directory (the process environment is read only for the platform data directory when
    /// `XDG_DATA_HOME` is not in `env`).
    pub fn load_from<I, K, V>(cli: &CliOverrides, env: I, cwd: &Path) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        // An empty variable counts as unset, as in most tools (`FOO= cmd` to clear one).
        let env: BTreeMap<String, String> = env
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let cwd = std::path::absolute(cwd).unwrap_or_else(|_| cwd.to_path_buf());
        let home = env
            .get("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_absolute());
        let mut notices = Vec::new();
        let mut inputs = Vec::new();

        let (file, searched) = find_file(cli, &env, &cwd, home.as_deref())?;
        let mut layers = vec![Layer {
            origin: Origin::Default,
            name: "default".into(),
            dict: nest(
                &["providers", KindConfig::STAND_IN, "kind"],
                KindConfig::STAND_IN.into(),
            ),
        }];
        layers.extend(standard_env_layers(&env));
        let file_dict = match &file {
            Some(path) => {
                let dict = read_toml(path, &mut inputs)?;
                layers.push(Layer {
                    origin: Origin::File,
                    name: format!("file {}", path.display()),
                    dict: dict.clone(),
                });
                dict
            }
            None => Dict::new(),
        };
        layers.extend(env_layers(&env, &mut notices)?);
        layers.extend(cli_layers(cli)?);
        let merged = Merged::new(layers);

        let mut config = merged.extract(&mut notices)?;
        let ctx = Resolve {
            merged: &merged,
            file_dir: file.as_deref().and_then(Path::parent),
            home: home.as_deref(),
            cwd: &cwd,
        };
        config.output.dir = Some(match config.output.dir.take() {
            Some(dir) => ctx.path(&["output", "dir"], &dir)?,
            None => data_dir(&env)
                .ok_or_else(|| {
                    ConfigError::new(
                        "cannot find the platform data directory for images: set output.dir \
                         (or XDG_DATA_HOME)",
                    )
                })?
                .join("imagegen-mcp/images"),
        });
        config.storage.index_path = match config.storage.index_path.take() {
            Some(path) => Some(ctx.path(&["storage", "index_path"], &path)?),
            // Without a data directory the index lives in memory, rebuilt at each start.
            None => data_dir(&env).map(|data| {
                // One index per store: the object store's URL, else the local directory.
                let location = match &config.storage.url {
                    Some(url) => url.clone(),
                    None => config
                        .output
                        .dir
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .display()
                        .to_string(),
                };
                crate::storage::index::default_path(&data, &location)
            }),
        };
        config.storage.ledger_dir = match config.storage.ledger_dir.take() {
            Some(path) => Some(ctx.path(&["storage", "ledger_dir"], &path)?),
            None => {
                let output = config.output.dir.clone().unwrap_or_default();
                Some(match (&config.storage.url, data_dir(&env)) {
                    // A replica's own directory: replicas may share `output.dir`'s volume.
                    (Some(url), Some(data)) => {
                        let key = crate::storage::hex(&Sha256::digest(url.as_bytes()));
                        data.join("imagegen-mcp/usage").join(&key[..16])
                    }
                    _ => output.join("usage"),
                })
            }
        };
        let allowed = std::mem::take(&mut config.input.allowed_dirs);
        config.input.allowed_dirs = allowed
            .iter()
            .map(|dir| ctx.path(&["input", "allowed_dirs"], dir))
            .collect::<Result<_, _>>()?;
        let mut shadowed = Vec::new();
        let keys = ctx.keys(
            &mut config,
            &file_dict,
            &mut shadowed,
            &mut notices,
            &mut inputs,
        )?;
        notices.extend(shadowed.iter().cloned());
        let tokens = ctx.tokens(&mut config, &mut inputs)?;
        let metrics_token = ctx.metrics_token(&mut config, &tokens, &mut inputs)?;
        drop_unusable_env_providers(&mut config, &merged, &mut notices);
        check_routes(&config, &merged, &mut notices)?;
        check_presets(&config, &merged, &mut notices)?;
        let default_source = resolve_default(&mut config, &merged, &env)?;
        validate(&config, &merged)?;
        let (catalog, catalogs) = build_catalogs(&config, &merged)?;
        notices.extend(advice(&config, &keys, &default_source));

        let mut sources = BTreeMap::new();
        merged.leaves(&merged.root, &mut Vec::new(), &mut sources);
        sources.insert(vec!["default_provider".into()], default_source);
        // Everything the result depends on: the environment and flags (fixed for a process,
        // but part of the answer) and the bytes of every file read.
        let mut hash = Sha256::new();
        for (k, v) in &env {
            hash.update(format!("{k}={v}\0"));
        }
        hash.update(format!("{cli:?}\0{}\0", cwd.display()));
        for input in &inputs {
            hash.update(input.path.as_os_str().as_encoded_bytes());
            hash.update(input.sha256);
        }
        Ok(Self {
            config,
            file,
            searched,
            sources,
            keys,
            tokens,
            metrics_token,
            catalog,
            catalogs,
            notices,
            shadowed,
            inputs,
            content_hash: hash.finalize().into(),
        })
    }

    /// The first resolved API key of provider `provider`, if it has one.
    pub fn api_key(&self, provider: &str) -> Option<&ResolvedKey> {
        self.api_keys(provider).first()
    }

    /// Every resolved API key of provider `provider`, de-duplicated, in pool order.
    pub fn api_keys(&self, provider: &str) -> &[ResolvedKey] {
        self.keys.get(provider).map_or(&[], Vec::as_slice)
    }

    /// The bearer tokens of `[[server.auth.tokens]]`, in order.
    pub fn tokens(&self) -> &[ResolvedToken] {
        &self.tokens
    }

    /// Whether `server.metrics.token_file` is set: `GET /metrics` then takes that token only.
    pub fn has_metrics_token(&self) -> bool {
        self.metrics_token.is_some()
    }

    /// Whether the SHA-256 `presented` is the token of `server.metrics.token_file`, compared
    /// in constant time.
    pub fn is_metrics_token(&self, presented: &[u8; 32]) -> bool {
        self.metrics_token
            .as_ref()
            .is_some_and(|t| t.matches_digest(presented))
    }

    /// The name of the token whose SHA-256 is `presented`, if any: every token is compared,
    /// in constant time, so the time taken says nothing about which one matched or how close.
    pub fn caller_of(&self, presented: &[u8; 32]) -> Option<&str> {
        let mut found = None;
        for token in &self.tokens {
            if token.matches_digest(presented) && found.is_none() {
                found = Some(token.name.as_str());
            }
        }
        found
    }

    /// The files read (the config file, then key files), each with the hash of its content.
    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }

    /// A SHA-256 over every input (file contents, environment, flags): equal hashes mean an
    /// equal configuration, so a reload can skip rebuilding.
    pub fn content_hash(&self) -> [u8; 32] {
        self.content_hash
    }

    /// The config files looked for when none was named (empty when one was named).
    pub fn searched(&self) -> &[PathBuf] {
        &self.searched
    }

    /// Warnings that a key set outside the config file hides the file's keys, so a key rotated
    /// in the file is not used; a reload repeats them, since they explain why a rotation did nothing.
    pub fn shadowed_keys(&self) -> &[String] {
        &self.shadowed
    }

    /// The built-in model catalog with the `[models]` entries applied.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The catalog of enabled provider `name`: its kind's entries with `[models]` and its own
    /// `models` entries applied.
    pub fn provider_catalog(&self, name: &str) -> Option<&Arc<Catalog>> {
        self.catalogs.get(name)
    }

    /// The provider used when a call names none (always an enabled provider).
    pub fn default_provider(&self) -> &str {
        self.config
            .default_provider
            .as_deref()
            .expect("set while loading")
    }

    /// Whether the default provider was picked for want of a choice (nobody set
    /// `default_provider`, and no key chose OpenAI), as the offline mock is on a fresh machine.
    pub fn default_provider_is_fallback(&self) -> bool {
        self.sources
            .get(&vec!["default_provider".to_string()])
            .is_some_and(|source| source.starts_with("default"))
    }

    /// The absolute directory images are saved in.
    pub fn output_dir(&self) -> &Path {
        self.config
            .output
            .dir
            .as_deref()
            .expect("set while loading")
    }

    /// The enabled providers, by name.
    pub fn enabled_providers(&self) -> impl Iterator<Item = (&str, &ProviderConfig)> {
        self.config
            .providers
            .iter()
            .filter(|(_, c)| c.enabled())
            .map(|(n, c)| (n.as_str(), c))
    }

    /// Checks that images can be saved, so a call fails before it is generated (and billed)
    /// rather than after: creates `output.dir` if it is missing, then creates and removes a
    /// probe file in it.
    pub fn check_output_dir(&self) -> Result<(), ConfigError> {
        let dir = self.output_dir();
        let fail = |e: std::io::Error| {
            let source = self
                .sources
                .get(&vec!["output".to_string(), "dir".to_string()])
                .map_or("default", String::as_str);
            ConfigError::new(format!(
                "`output.dir` (from {source}): {} cannot be written: {e}",
                dir.display()
            ))
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let probe = dir.join(format!(".imagegen-write-check-{}", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(fail)?;
        std::fs::remove_file(&probe).map_err(fail)
    }

    /// Things worth logging at start-up (nothing secret): the offline fallback, shadowed keys, ...
    pub fn notices(&self) -> Vec<String> {
        self.notices.clone()
    }
}

/// The merged layers, kept to find which layer set a key.
struct Merged {
    figment: Figment,
    layers: Vec<Layer>,
    root: Value,
}

impl Merged {
    fn new(layers: Vec<Layer>) -> Self {
        let figment = layers
            .iter()
            .fold(Figment::new(), |f, layer| f.merge(layer.clone()));
        // Our layers never fail, so the merge cannot either; an empty root is still safe.
        let root = figment
            .find_value("")
            .unwrap_or_else(|_| Value::from(Dict::new()));
        Self {
            figment,
            layers,
            root,
        }
    }

    /// The value at `path`, segment by segment (keys may contain dots).
    fn at<S: AsRef<str>>(&self, path: &[S]) -> Option<&Value> {
        path.iter().try_fold(&self.root, |v, k| match v {
            Value::Dict(_, d) => d.get(k.as_ref()),
            Value::Array(_, a) => a.get(k.as_ref().parse::<usize>().ok()?),
            _ => None,
        })
    }

    fn layer_of(&self, value: &Value) -> Option<&Layer> {
        let name = &self.figment.get_metadata(value.tag())?.name;
        self.layers.iter().find(|l| l.name == *name)
    }

    /// The layer that set the deepest existing value along `path`.
    fn layer_at<S: AsRef<str>>(&self, path: &[S]) -> Option<&Layer> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.at(&path[..n]).and_then(|v| self.layer_of(v)))
    }

    fn source_at<S: AsRef<str>>(&self, path: &[S]) -> String {
        self.layer_at(path)
            .map_or_else(|| "default".into(), |l| l.name.clone())
    }

    /// An error about the value at `path`, naming its source.
    fn err<S: AsRef<str>>(&self, path: &[S], problem: impl std::fmt::Display) -> ConfigError {
        ConfigError::new(format!(
            "`{}` (from {}): {problem}",
            dotted(path),
            self.source_at(path)
        ))
    }

    /// A serde error while reading the table at `prefix`, rebuilt without the value.
    fn de_err(&self, e: figment::Error, prefix: &[&str]) -> ConfigError {
        let mut path: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        path.extend(e.path.iter().cloned());
        let in_provider = path.len() == 3 && path[0] == "providers";
        ConfigError::new(describe(
            &e.kind,
            &dotted(&path),
            &self.source_at(&path),
            in_provider,
        ))
    }

    /// Reads the merged values into a [`Config`].
    ///
    /// Provider tables are read one by one, because serde buffers internally tagged enums
    /// (`kind = ...`) and so loses the key path of any error inside them.
    fn extract(&self, notices: &mut Vec<String>) -> Result<Config, ConfigError> {
        let mut top = self.root.as_dict().cloned().unwrap_or_default();
        let providers = top.remove("providers");
        let mut config: Config = Value::from(top)
            .deserialize()
            .map_err(|e| self.de_err(e, &[]))?;
        if let Some(providers) = providers {
            let Some(providers) = providers.as_dict() else {
                return Err(self.err(
                    &["providers"],
                    "must be a table of providers, such as [providers.openai]",
                ));
            };
            for (name, table) in providers {
                config
                    .providers
                    .insert(name.clone(), self.provider(name, table, notices)?);
            }
        }
        Ok(config)
    }

    fn provider(
        &self,
        name: &str,
        table: &Value,
        notices: &mut Vec<String>,
    ) -> Result<ProviderConfig, ConfigError> {
        let path = ["providers", name];
        let Some(dict) = table.as_dict() else {
            return Err(self.err(&path, "must be a table"));
        };
        // `models` used to be the list of models to offer; it now holds catalog entries, as
        // `[models]` does. A list is still read as the list, with a warning.
        let renamed;
        let (table, dict) = match dict.get("models") {
            Some(list @ Value::Array(..)) => {
                notices.push(format!(
                    "providers.{name}.models = [...] ({}) is the old spelling of `offered_models`; \
                     read as that, but rename it: `models` now holds this provider's catalog \
                     entries, as [providers.{name}.models.\"NAME\"] tables",
                    self.source_at(&["providers", name, "models"])
                ));
                let mut dict = dict.clone();
                dict.remove("models");
                dict.insert("offered_models".into(), list.clone());
                renamed = Value::from(dict);
                (&renamed, renamed.as_dict().expect("built as a table"))
            }
            _ => (table, dict),
        };
        let kinds = KindConfig::KINDS.join(", ");
        let kind = match dict.get("kind") {
            // `[providers.openai]` needs no `kind = "openai"`.
            None if KindConfig::KINDS.contains(&name) => name.to_string(),
            None => {
                return Err(self.err(&path, format!("missing `kind`; set it to one of: {kinds}")))
            }
            Some(Value::String(_, s)) => s.clone(),
            Some(_) => {
                return Err(self.err(
                    &["providers", name, "kind"],
                    format!("expected a string, one of: {kinds}"),
                ))
            }
        };
        // Each part is read from the table on its own, so an error names its key; keys no
        // part knows are refused by hand (serde cannot refuse them across flattened parts).
        let reader = Table(table);
        let kind_config = match KindConfig::read(&kind, &reader) {
            Some(read) => read.map_err(|e| self.de_err(e, &path))?,
            None => {
                return Err(self.err(
                    &["providers", name, "kind"],
                    format!("unknown kind, expected one of: {kinds}"),
                ))
            }
        };
        let config = ProviderConfig {
            common: reader.read().map_err(|e| self.de_err(e, &path))?,
            http: reader.read().map_err(|e| self.de_err(e, &path))?,
            kind: kind_config,
        };
        let known = config.known_keys();
        if let Some(unknown) = dict.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(self.err(
                &["providers", name, unknown],
                format!(
                    "unknown field `{unknown}` for kind `{kind}`, expected one of: {}",
                    known.join(", ")
                ),
            ));
        }
        Ok(config)
    }

    /// Records the source of every leaf under `value` (arrays count as leaves).
    fn leaves(
        &self,
        value: &Value,
        path: &mut Vec<String>,
        out: &mut BTreeMap<Vec<String>, String>,
    ) {
        match value {
            Value::Dict(_, dict) => {
                for (k, v) in dict {
                    path.push(k.clone());
                    self.leaves(v, path, out);
                    path.pop();
                }
            }
            _ => {
                if let Some(layer) = self.layer_of(value) {
                    out.insert(path.clone(), layer.name.clone());
                }
            }
        }
    }
}

/// A provider table, as the providers crate reads its parts.
struct Table<'a>(&'a Value);

impl TableReader for Table<'_> {
    type Error = figment::Error;

    fn read<T: DeserializeOwned>(&self) -> Result<T, figment::Error> {
        self.0.deserialize()
    }
}

/// What relative paths are resolved against.
struct Resolve<'a> {
    merged: &'a Merged,
    file_dir: Option<&'a Path>,
    home: Option<&'a Path>,
    cwd: &'a Path,
}

impl Resolve<'_> {
    /// Makes the path set at `key` absolute: a file's paths are relative to the file, a flag's
    /// to the working directory; environment values must be absolute, because an MCP client
    /// starts the server in a directory nobody chose.
    fn path(&self, key: &[&str], raw: &Path) -> Result<PathBuf, ConfigError> {
        let path = match raw.strip_prefix("~") {
            Ok(rest) => match self.home {
                Some(home) => home.join(rest),
                None => return Err(self.merged.err(key, "starts with ~ but HOME is not set")),
            },
            Err(_) => raw.to_path_buf(),
        };
        if path.is_absolute() {
            return Ok(clean(&path));
        }
        match self.merged.layer_at(key).map(|l| l.origin) {
            Some(Origin::File) => Ok(clean(&self.file_dir.unwrap_or(self.cwd).join(path))),
            Some(Origin::Flag) => Ok(clean(&self.cwd.join(path))),
            _ => Err(self.merged.err(key, "must be an absolute path")),
        }
    }

    /// Resolves every OpenAI provider's keys from `api_key`, `api_keys`, `api_key_file` and
    /// `api_key_files`, stores the first in `api_key`, and returns them with their sources.
    ///
    /// Keys come from the highest layer that sets any of the four, as for any other value:
    /// within that layer all of them join one pool; lower layers' keys are ignored (noticed).
    fn keys(
        &self,
        config: &mut Config,
        file_dict: &Dict,
        shadowed: &mut Vec<String>,
        notices: &mut Vec<String>,
        inputs: &mut Vec<Input>,
    ) -> Result<BTreeMap<String, Vec<ResolvedKey>>, ConfigError> {
        let mut keys = BTreeMap::new();
        for (name, provider) in &mut config.providers {
            let c = &mut provider.common;
            let is_set = |field: &str| match field {
                "api_key" => c.api_key.is_some(),
                "api_keys" => !c.api_keys.is_empty(),
                "api_key_file" => c.api_key_file.is_some(),
                _ => !c.api_key_files.is_empty(),
            };
            let set: Vec<(&str, &Layer)> = KEY_FIELDS
                .into_iter()
                .filter(|f| is_set(f))
                .filter_map(|f| Some((f, self.merged.layer_at(&["providers", name, f])?)))
                .collect();
            let Some(top) = set.iter().map(|(_, l)| l.origin).max() else {
                continue;
            };
            let describe = |fields: &[&(&str, &Layer)]| {
                fields
                    .iter()
                    .map(|(f, l)| format!("{f} from {}", l.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (used, ignored): (Vec<_>, Vec<_>) = set.iter().partition(|(_, l)| l.origin == top);
            if !ignored.is_empty() {
                notices.push(format!(
                    "provider `{name}`: using {}; ignoring {}",
                    describe(&used),
                    describe(&ignored)
                ));
                for (field, _) in &ignored {
                    match *field {
                        "api_key" => c.api_key = None,
                        "api_keys" => c.api_keys.clear(),
                        "api_key_file" => c.api_key_file = None,
                        _ => c.api_key_files.clear(),
                    }
                }
            }
            // A key from the environment hides the file's: rotating it in the file does nothing.
            if top > Origin::File
                && KEY_FIELDS
                    .iter()
                    .any(|k| dict_at(file_dict, &["providers", name, k]).is_some())
            {
                let from: Vec<&str> = used.iter().map(|(_, l)| l.name.as_str()).collect();
                shadowed.push(format!(
                    "provider `{name}`: the key from {} overrides the config file's; \
                     a key rotated in the file is not used while it is set",
                    from.join(" and ")
                ));
            }

            let mut found: Vec<ResolvedKey> = Vec::new();
            let mut add = |key: &str, source: String| {
                if !found.iter().any(|k| k.key.expose_secret() == key) {
                    found.push(ResolvedKey {
                        key: SecretString::from(key),
                        source,
                    });
                }
            };
            let layer_name = |field: &str| {
                self.merged
                    .layer_at(&["providers", name, field])
                    .map_or_else(|| "default".into(), |l| l.name.clone())
            };
            if let Some(key) = &c.api_key {
                let key = key.expose_secret().trim();
                if key.is_empty() {
                    return Err(self.merged.err(
                        &["providers", name, "api_key"],
                        "is empty; remove it or set a key",
                    ));
                }
                add(key, layer_name("api_key"));
            }
            for (i, key) in c.api_keys.iter().enumerate() {
                let key = key.expose_secret().trim();
                if key.is_empty() {
                    return Err(self.merged.err(
                        &["providers", name, "api_keys"],
                        format!("item {} is empty; remove it or set a key", i + 1),
                    ));
                }
                add(key, format!("{}, api_keys[{i}]", layer_name("api_keys")));
            }
            if let Some(raw) = &c.api_key_file {
                let path = self.path(&["providers", name, "api_key_file"], raw)?;
                let key =
                    self.read_key_file(&["providers", name, "api_key_file"], &path, inputs)?;
                add(&key, format!("api_key_file {}", path.display()));
                c.api_key_file = Some(path);
            }
            let field = ["providers", name.as_str(), "api_key_files"];
            for raw in &mut c.api_key_files {
                let path = self.path(&field, raw)?;
                let key = self.read_key_file(&field, &path, inputs)?;
                add(&key, format!("api_key_file {}", path.display()));
                *raw = path;
            }
            c.api_key = found.first().map(|k| k.key.clone());
            keys.insert(name.clone(), found);
        }
        Ok(keys)
    }

    /// Reads every `[[server.auth.tokens]]` entry's token (inline or from its file), checks
    /// that each has a unique name and exactly one source, and makes token files absolute.
    fn tokens(
        &self,
        config: &mut Config,
        inputs: &mut Vec<Input>,
    ) -> Result<Vec<ResolvedToken>, ConfigError> {
        let mut out: Vec<ResolvedToken> = Vec::new();
        for (i, entry) in config.server.auth.tokens.iter_mut().enumerate() {
            let index = i.to_string();
            let key = |field: &'static str| ["server", "auth", "tokens", index.as_str(), field];
            let name = entry.name.trim().to_string();
            if name.is_empty() {
                return Err(self.merged.err(
                    &key("name"),
                    "is missing or empty: every token needs a name, the caller's identity in logs",
                ));
            }
            if out.iter().any(|t| t.name == name) {
                return Err(self.merged.err(
                    &key("name"),
                    format!("`{name}` names two tokens; give each its own name"),
                ));
            }
            let token = match (&entry.token, &entry.token_file) {
                (Some(_), Some(_)) => {
                    return Err(self.merged.err(
                        &key("token"),
                        format!("token `{name}` sets both `token` and `token_file`; keep one"),
                    ))
                }
                (None, None) => {
                    return Err(self.merged.err(
                        &key("name"),
                        format!("token `{name}` needs `token_file` (or `token`)"),
                    ))
                }
                (Some(token), None) => {
                    let token = token.expose_secret().trim();
                    if token.is_empty() {
                        return Err(self.merged.err(&key("token"), "is empty"));
                    }
                    token.to_string()
                }
                (None, Some(raw)) => {
                    let path = self.path(&key("token_file"), raw)?;
                    let token = self.read_key_file(&key("token_file"), &path, inputs)?;
                    entry.token_file = Some(path);
                    token
                }
            };
            let resolved = ResolvedToken::new(&name, &token);
            if let Some(twin) = out.iter().find(|t| t.matches_digest(&resolved.digest)) {
                return Err(self.merged.err(
                    &key("name"),
                    format!(
                        "token `{name}` is the same as token `{}`: one token, one caller",
                        twin.name
                    ),
                ));
            }
            out.push(resolved);
        }
        Ok(out)
    }

    /// Reads `server.metrics.token_file` (made absolute), refusing a token that is also an
    /// `/mcp` caller's: scrapes and calls are told apart by the token alone.
    fn metrics_token(
        &self,
        config: &mut Config,
        tokens: &[ResolvedToken],
        inputs: &mut Vec<Input>,
    ) -> Result<Option<ResolvedToken>, ConfigError> {
        let key = ["server", "metrics", "token_file"];
        let Some(raw) = config.server.metrics.token_file.take() else {
            return Ok(None);
        };
        let path = self.path(&key, &raw)?;
        let token = self.read_key_file(&key, &path, inputs)?;
        config.server.metrics.token_file = Some(path);
        let resolved = ResolvedToken::new("metrics", &token);
        if let Some(twin) = tokens.iter().find(|t| t.matches_digest(&resolved.digest)) {
            return Err(self.merged.err(
                &key,
                format!(
                    "holds the same token as [[server.auth.tokens]] `{}`: the metrics token \
                     must be a token of its own",
                    twin.name
                ),
            ));
        }
        Ok(Some(resolved))
    }

    /// Reads a key file (trimmed); the error says why (missing, permissions, not UTF-8,
    /// empty), never what is inside.
    fn read_key_file(
        &self,
        field: &[&str],
        path: &Path,
        inputs: &mut Vec<Input>,
    ) -> Result<String, ConfigError> {
        let text = files::read_text(path, KEY_FILE_CAP).map_err(|e| {
            self.merged
                .err(field, format!("cannot read {}: {e}", path.display()))
        })?;
        inputs.push(Input {
            path: path.to_path_buf(),
            sha256: Sha256::digest(text.as_bytes()).into(),
        });
        let key = text.trim();
        if key.is_empty() {
            return Err(self
                .merged
                .err(field, format!("{} is empty", path.display())));
        }
        Ok(key.to_string())
    }
}

fn dict_at<'a>(dict: &'a Dict, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let value = dict.get(*first)?;
    if rest.is_empty() {
        return Some(value);
    }
    dict_at(value.as_dict()?, rest)
}

/// `a/./b` → `a/b`; `..` is kept, since a symlink may sit before it.
fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// `{a: {b: {c: value}}}` for the path `a.b.c`.
fn nest(path: &[&str], value: Value) -> Dict {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut dict = Dict::new();
    dict.insert(last.to_string(), value);
    for key in parents.iter().rev() {
        let mut outer = Dict::new();
        outer.insert(key.to_string(), Value::from(dict));
        dict = outer;
    }
    dict
}

/// `$XDG_DATA_HOME`, else the platform's data directory.
fn data_dir(env: &BTreeMap<String, String>) -> Option<PathBuf> {
    env.get("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(dirs::data_dir)
}

/// The config file to read, and the places searched when none was named.
fn find_file(
    cli: &CliOverrides,
    env: &BTreeMap<String, String>,
    cwd: &Path,
    home: Option<&Path>,
) -> Result<(Option<PathBuf>, Vec<PathBuf>), ConfigError> {
    let named = cli
        .config
        .as_ref()
        .map(|p| (p.clone(), "--config"))
        .or_else(|| {
            env.get("IMAGEGEN_CONFIG")
                .map(|p| (PathBuf::from(p), "IMAGEGEN_CONFIG"))
        });
    if let Some((path, how)) = named {
        let path = clean(&cwd.join(path));
        if !path.is_file() {
            return Err(ConfigError::new(format!(
                "config file {} (named by {how}) does not exist or is not a file",
                path.display()
            )));
        }
        return Ok((Some(path), Vec::new()));
    }
    let config_home = env
        .get("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| h.join(".config")));
    let mut searched = vec![cwd.join("imagegen.toml")];
    searched.extend(config_home.map(|d| d.join("imagegen-mcp/config.toml")));
    let found = searched.iter().find(|p| p.is_file()).cloned();
    Ok((found, searched))
}

/// Parses a TOML file; a syntax error gives the line and column but never the line's text.
///
/// An empty file is refused: it is far more often a file caught mid-write (or truncated) than
/// a wish for the defaults, and loading it would silently drop every provider and key.
fn read_toml(path: &Path, inputs: &mut Vec<Input>) -> Result<Dict, ConfigError> {
    let text = files::read_text(path, CONFIG_FILE_CAP).map_err(|e| {
        ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
    })?;
    inputs.push(Input {
        path: path.to_path_buf(),
        sha256: Sha256::digest(text.as_bytes()).into(),
    });
    if text.trim().is_empty() {
        return Err(ConfigError::new(format!(
            "config file {} is empty; to use the defaults, write at least a comment",
            path.display()
        )));
    }
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
                format!(", line {line}, column {column}")
            })
            .unwrap_or_default();
        // `message()` only: the error's Display quotes the offending line, which may hold a key.
        ConfigError::new(format!(
            "config file {}{at}: invalid TOML: {}",
            path.display(),
            e.message().trim().replace('\n', "; ")
        ))
    })?;
    Value::serialize(&table)
        .ok()
        .and_then(|v| v.into_dict())
        .ok_or_else(|| {
            ConfigError::new(format!(
                "config file {}: cannot be read as a table",
                path.display()
            ))
        })
}

/// Each kind's standard variables (`OPENAI_API_KEY`, ...) as `[providers.KIND]`, one layer
/// per variable so each value's source is the variable; built by hand so a key stays a string
/// whatever it looks like.
fn standard_env_layers(env: &BTreeMap<String, String>) -> Vec<Layer> {
    KindConfig::KINDS
        .iter()
        .flat_map(|kind| {
            KindConfig::standard_env(kind)
                .iter()
                .filter_map(move |(var, key)| {
                    let value = env.get(*var)?;
                    let mut table = Dict::new();
                    table.insert("kind".into(), (*kind).into());
                    table.insert(key.to_string(), value.trim().into());
                    Some(Layer {
                        origin: Origin::StandardEnv,
                        name: format!("env {var}"),
                        dict: nest(&["providers", kind], Value::from(table)),
                    })
                })
        })
        .collect()
}

/// `IMAGEGEN_A__B=v` as `a.b = v`, one layer per variable; values are read like TOML
/// (`90`, `true`, `["a", "b"]`) except keys that must stay strings.
fn env_layers(
    env: &BTreeMap<String, String>,
    notices: &mut Vec<String>,
) -> Result<Vec<Layer>, ConfigError> {
    let mut layers = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(PREFIX) else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let path: Vec<&str> = lower.split("__").collect();
        if !TOP_KEYS.contains(&path[0]) {
            if !NON_CONFIG_VARS.contains(&var.as_str()) && !var.starts_with("IMAGEGEN_LOG_") {
                notices.push(format!(
                    "ignoring {var}: not a configuration key (they start with {})",
                    TOP_KEYS
                        .map(|k| format!("{PREFIX}{}", k.to_ascii_uppercase()))
                        .join(", ")
                ));
            }
            continue;
        }
        if path.iter().any(|k| k.is_empty()) {
            return Err(ConfigError::new(format!(
                "{var}: empty key between `__` separators"
            )));
        }
        let last = path[path.len() - 1];
        let value = if last.ends_with("api_key") || STRING_KEYS.contains(&last) {
            Value::from(raw.clone())
        } else {
            raw.parse::<Value>().expect("infallible")
        };
        layers.push(Layer {
            origin: Origin::Env,
            name: format!("env {var}"),
            dict: nest(&path, value),
        });
    }
    Ok(layers)
}

fn cli_layers(cli: &CliOverrides) -> Result<Vec<Layer>, ConfigError> {
    let mut layers = Vec::new();
    if let Some(provider) = &cli.provider {
        layers.push(Layer {
            origin: Origin::Flag,
            name: "flag --provider".into(),
            dict: nest(&["default_provider"], provider.as_str().into()),
        });
    }
    if let Some(dir) = &cli.output_dir {
        let dir = dir
            .to_str()
            .ok_or_else(|| ConfigError::new("--out: the path is not valid UTF-8"))?;
        layers.push(Layer {
            origin: Origin::Flag,
            name: "flag --out".into(),
            dict: nest(&["output", "dir"], dir.into()),
        });
    }
    Ok(layers)
}

/// Picks the default provider; returns where the choice came from.
///
/// Set explicitly, it must name an enabled provider. Otherwise: a provider named after its
/// kind whose standard key variable is set (`openai` with `OPENAI_API_KEY`, as the SDKs do),
/// else the offline stand-in (the mock), else the only enabled provider.
fn resolve_default(
    config: &mut Config,
    merged: &Merged,
    env: &BTreeMap<String, String>,
) -> Result<String, ConfigError> {
    let mut enabled: Vec<&str> = config
        .providers
        .iter()
        .filter(|(_, c)| c.enabled())
        .map(|(n, _)| n.as_str())
        .collect();
    enabled.sort_unstable();
    let list = if enabled.is_empty() {
        "none".to_string()
    } else {
        enabled.join(", ")
    };
    if let Some(name) = &config.default_provider {
        if !enabled.contains(&name.as_str()) && !config.routes.contains_key(name) {
            let what = if config.providers.contains_key(name) {
                "a disabled provider"
            } else {
                "no configured provider"
            };
            return Err(merged.err(
                &["default_provider"],
                format!("names {what}; enabled providers: {list}"),
            ));
        }
        return Ok(merged.source_at(&["default_provider"]));
    }
    // A provider named after its kind whose standard key variable is set, as the SDKs do;
    // when several are, the first kind in `KINDS` order wins (OpenAI's, listed first).
    let from_env = KindConfig::KINDS.iter().find_map(|kind| {
        let c = config
            .providers
            .get(*kind)
            .filter(|c| c.enabled() && c.kind() == *kind)?;
        let (var, _) = KindConfig::standard_env(c.kind())
            .iter()
            .find(|(var, key)| *key == "api_key" && env.contains_key(*var))?;
        Some((kind.to_string(), format!("env {var}")))
    });
    let stand_in = enabled
        .iter()
        .find(|name| config.providers[**name].kind.is_stand_in());
    let (name, source) = if let Some(found) = from_env {
        found
    } else if let Some(name) = stand_in {
        (name.to_string(), "default".to_string())
    } else if enabled.len() == 1 {
        (
            enabled[0].to_string(),
            "default: the only enabled provider".to_string(),
        )
    } else if enabled.is_empty() {
        return Err(ConfigError::new(
            "no provider is enabled: enable one under [providers] (the offline mock is [providers.mock])",
        ));
    } else {
        return Err(ConfigError::new(format!(
            "default_provider is not set; set it to one of: {list}"
        )));
    };
    config.default_provider = Some(name);
    Ok(source)
}

/// Leaves out a provider that only the vendors' standard variables created and that they do not
/// describe fully (`AZURE_OPENAI_API_KEY` without `AZURE_OPENAI_ENDPOINT`): a variable set for
/// another tool must not stop this server from starting. A notice says what is missing.
fn drop_unusable_env_providers(config: &mut Config, merged: &Merged, notices: &mut Vec<String>) {
    let from_env_only = |name: &str| {
        let Some(Value::Dict(_, table)) = merged.at(&["providers", name]) else {
            return false;
        };
        table.keys().all(|key| {
            merged
                .layer_at(&["providers", name, key])
                .is_some_and(|l| l.origin == Origin::StandardEnv)
        })
    };
    let unusable: Vec<(String, String)> = config
        .providers
        .iter()
        .filter_map(|(name, p)| {
            let e = p.check().err()?;
            from_env_only(name).then(|| (name.clone(), format!("{}: {}", e.key, e.message)))
        })
        .collect();
    for (name, why) in unusable {
        config.providers.remove(&name);
        notices.push(format!(
            "the environment sets some of provider `{name}`'s variables but not all it needs \
             ({why}); it is left out"
        ));
    }
}

/// Routes and fallback lists name configured providers, and route names are not provider
/// names (calls and `default_provider` name either, so the two share one namespace). A
/// disabled provider in a list is left out at call time, with a notice here.
fn check_routes(
    config: &Config,
    merged: &Merged,
    notices: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let configured = || {
        config
            .providers
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut check_list = |names: &[String], path: &[&str]| -> Result<(), ConfigError> {
        for name in names {
            match config.providers.get(name) {
                None => {
                    return Err(merged.err(
                        path,
                        format!(
                            "names `{name}`, which is no configured provider; configured: {}",
                            configured()
                        ),
                    ))
                }
                Some(p) if !p.enabled() => notices.push(format!(
                    "{} names the disabled provider `{name}`: calls leave it out",
                    path.join(".")
                )),
                Some(_) => {}
            }
        }
        Ok(())
    };
    for (name, route) in &config.routes {
        if config.providers.contains_key(name) {
            return Err(merged.err(
                &["routes", name],
                format!(
                    "`{name}` is already a provider's name: calls name a provider or a route \
                     alike, so rename one of them"
                ),
            ));
        }
        if route.providers.is_empty() {
            return Err(merged.err(
                &["routes", name, "providers"],
                "is empty: list the providers to try, in order",
            ));
        }
        check_list(&route.providers, &["routes", name, "providers"])?;
    }
    for (name, provider) in &config.providers {
        if provider.common.fallback.contains(name) {
            return Err(merged.err(
                &["providers", name, "fallback"],
                "names the provider itself",
            ));
        }
        check_list(&provider.common.fallback, &["providers", name, "fallback"])?;
    }
    Ok(())
}

/// `[presets.NAME]`: a named template holding `{prompt}`, known keys, options as `[defaults]`
/// takes them, and a provider that is a configured provider or route.
fn check_presets(
    config: &Config,
    merged: &Merged,
    notices: &mut Vec<String>,
) -> Result<(), ConfigError> {
    use crate::presets::{KEYS, PLACEHOLDER};
    for (name, preset) in &config.presets {
        let path = ["presets", name.as_str()];
        let at = |key: &'static str| ["presets", name.as_str(), key];
        if name.trim().is_empty() {
            return Err(merged.err(&path, "needs a name: calls choose a preset by it"));
        }
        if merged.at(&at("template")).is_none() {
            return Err(merged.err(
                &path,
                format!("missing key `template`: the prompt to send, with {PLACEHOLDER} where the call's prompt goes"),
            ));
        }
        if !preset.template.contains(PLACEHOLDER) {
            return Err(merged.err(
                &at("template"),
                format!(
                    "must contain {PLACEHOLDER}, where the call's prompt goes (such as \
                     \"{PLACEHOLDER}, watercolor, soft light\")"
                ),
            ));
        }
        check_defaults(&preset.options, &path, &KEYS, merged)?;
        if let Some(provider) = &preset.provider {
            match config.providers.get(provider) {
                Some(p) if !p.enabled() => notices.push(format!(
                    "presets.{name}.provider names the disabled provider `{provider}`: calls \
                     with this preset that name no provider fail"
                )),
                Some(_) => {}
                None if config.routes.contains_key(provider) => {}
                None => {
                    let known: Vec<&str> = config
                        .providers
                        .keys()
                        .chain(config.routes.keys())
                        .map(String::as_str)
                        .collect();
                    return Err(merged.err(
                        &at("provider"),
                        format!(
                            "names `{provider}`, which is no configured provider or route; \
                             configured: {}",
                            known.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The image options at `path` (`[defaults]`, a provider's or a preset's): known keys (the
/// options' and `extra`, the table's own), values in range.
fn check_defaults(
    defaults: &Defaults,
    path: &[&str],
    extra: &[&str],
    merged: &Merged,
) -> Result<(), ConfigError> {
    if let Some(table) = merged.at(path).and_then(Value::as_dict) {
        let known = |k: &str| Defaults::KEYS.contains(&k) || extra.contains(&k);
        if let Some(unknown) = table.keys().find(|k| !known(k)) {
            let mut key = path.to_vec();
            key.push(unknown);
            let expected: Vec<&str> = extra.iter().chain(&Defaults::KEYS).copied().collect();
            return Err(merged.err(
                &key,
                format!(
                    "unknown field `{unknown}`, expected one of: {}",
                    expected.join(", ")
                ),
            ));
        }
    }
    if defaults.output_compression.is_some_and(|c| c > 100) {
        let mut key = path.to_vec();
        key.push("output_compression");
        return Err(merged.err(&key, "must be between 0 and 100"));
    }
    if defaults.partial_images.is_some_and(|n| n > 3) {
        let mut key = path.to_vec();
        key.push("partial_images");
        return Err(merged.err(&key, "must be between 0 and 3"));
    }
    Ok(())
}

/// `value` at `key` must lie in `range`: durations and sizes far beyond any real use overflow
/// the clock or the allocator (`deadline_s = 2^63` panicked every call), and 0 would make
/// every call wait forever or fail.
fn check_range(
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    key: &[&str],
    merged: &Merged,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(merged.err(
        key,
        format!("must be between {} and {}", range.start(), range.end()),
    ))
}

/// A `usize` setting in `range` (see [`check_range`]).
fn check_size(
    value: usize,
    range: std::ops::RangeInclusive<u64>,
    key: &[&str],
    merged: &Merged,
) -> Result<(), ConfigError> {
    check_range(u64::try_from(value).unwrap_or(u64::MAX), range, key, merged)
}

/// `server.http.public_url` and `[server.auth.oauth]`: URLs that parse, with a scheme safe
/// for what they carry, and the settings a resource server cannot do without.
fn check_oauth(server: &super::ServerConfig, merged: &Merged) -> Result<(), ConfigError> {
    if let Some(public) = &server.http.public_url {
        let key = ["server", "http", "public_url"];
        let url = url::Url::parse(public.trim()).map_err(|_| {
            merged.err(&key, "is not a URL; use the address clients reach this server at, such as https://img.example.com")
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(merged.err(&key, "must be an http:// or https:// URL with a host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(merged.err(&key, "must not have a query or fragment"));
        }
    }
    let Some(oauth) = &server.auth.oauth else {
        return Ok(());
    };
    let key = |field: &'static str| ["server", "auth", "oauth", field];
    let idp_url =
        |field: &'static str, value: &str| -> Result<(), ConfigError> {
            let url = url::Url::parse(value.trim()).map_err(|_| {
                merged.err(
                    &key(field),
                    "is not a URL, such as https://auth.example.com",
                )
            })?;
            let loopback = match url.host() {
                Some(url::Host::Domain(host)) => host.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            match url.scheme() {
                "https" if url.host().is_some() => {}
                "http" if loopback => {}
                _ => return Err(merged.err(
                    &key(field),
                    "must be an https:// URL (http:// only on a loopback host, for development): \
                     tokens and keys from it decide who may call",
                )),
            }
            if url.query().is_some() && field == "issuer" || url.fragment().is_some() {
                return Err(merged.err(&key(field), "must not have a query or fragment"));
            }
            Ok(())
        };
    if oauth.issuer.trim().is_empty() {
        return Err(merged.err(
            &key("issuer"),
            "is missing: name the authorization server exactly as its tokens' `iss` claim does",
        ));
    }
    idp_url("issuer", &oauth.issuer)?;
    if oauth.audience.trim().is_empty() {
        return Err(merged.err(
            &key("audience"),
            "is missing, and has no default: set it to the `aud` your authorization server puts \
             in tokens for this server, usually its resource URL (server.http.public_url + \"/mcp\")",
        ));
    }
    if let Some(jwks) = &oauth.jwks_url {
        idp_url("jwks_url", jwks)?;
    }
    for scope in &oauth.required_scopes {
        // A scope travels in a `WWW-Authenticate` header: RFC 6749's scope-token characters only.
        let valid = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        if !valid {
            return Err(merged.err(
                &key("required_scopes"),
                "holds a scope that is empty or has spaces, quotes, backslashes or non-ASCII \
                 characters; list each scope as its own string",
            ));
        }
    }
    check_range(oauth.leeway_s, 0..=600, &key("leeway_s"), merged)?;
    check_range(
        oauth.jwks_refresh_min_s,
        0..=3600,
        &key("jwks_refresh_min_s"),
        merged,
    )
}

/// One day, in seconds: the longest any single wait or call may be set to take.
const DAY_S: u64 = 86_400;
/// The most calls in flight at once, overall or per provider.
const MAX_IN_FLIGHT: u64 = 65_536;

/// The largest per-caller limit (calls in flight, or requests per minute).
const MAX_CALLER_LIMIT: u64 = 1_000_000;

/// Checks what serde cannot: ranges and URLs.
fn validate(config: &Config, merged: &Merged) -> Result<(), ConfigError> {
    check_defaults(&config.defaults, &["defaults"], &[], merged)?;
    if let Some((path, problem)) = config.budget.problem() {
        return Err(merged.err(&path, problem));
    }
    if let Some(name) =
        (config.budget.providers.keys()).find(|n| !config.providers.contains_key(*n))
    {
        return Err(merged.err(
            &["budget", "providers", name.as_str()],
            "is not a configured provider",
        ));
    }
    if let Some(problem) = config.cluster.url_problem() {
        return Err(merged.err(&["cluster", "redis_url"], problem));
    }
    if let Some(level) = &config.log_level {
        // The parser's message quotes the directive; the key and its source are enough.
        if tracing_subscriber::EnvFilter::builder()
            .parse(level)
            .is_err()
        {
            return Err(merged.err(
                &["log_level"],
                "is not a log filter; use a level (error, warn, info, debug, trace) or \
                 directives such as imagegen_mcp=debug,warn",
            ));
        }
    }
    check_size(
        config.limits.max_in_flight,
        1..=MAX_IN_FLIGHT,
        &["limits", "max_in_flight"],
        merged,
    )?;
    check_size(
        config.batch.max_items,
        1..=1000,
        &["batch", "max_items"],
        merged,
    )?;
    check_range(
        config.catalog.check_interval_h,
        1..=8760,
        &["catalog", "check_interval_h"],
        merged,
    )?;
    check_range(
        config.reload.poll_s,
        0..=DAY_S,
        &["reload", "poll_s"],
        merged,
    )?;
    check_range(
        config.reload.debounce_ms,
        0..=60_000,
        &["reload", "debounce_ms"],
        merged,
    )?;
    check_range(
        config.input.max_image_mb,
        1..=1024,
        &["input", "max_image_mb"],
        merged,
    )?;
    check_range(
        config.input.max_mask_mb,
        1..=1024,
        &["input", "max_mask_mb"],
        merged,
    )?;
    check_size(
        config.output.preview_budget_bytes,
        0..=64 << 20,
        &["output", "preview_budget_bytes"],
        merged,
    )?;
    check_range(
        config.output.max_read_mb,
        1..=1024,
        &["output", "max_read_mb"],
        merged,
    )?;
    check_range(
        config.server.http.max_body_mb,
        1..=4096,
        &["server", "http", "max_body_mb"],
        merged,
    )?;
    let per_caller = &config.server.limits.per_caller;
    let mut caller_limits = vec![
        (
            per_caller.max_in_flight,
            vec!["server", "limits", "per_caller", "max_in_flight"],
        ),
        (
            per_caller.requests_per_minute,
            vec!["server", "limits", "per_caller", "requests_per_minute"],
        ),
    ];
    let indices: Vec<String> = (0..config.server.auth.tokens.len())
        .map(|i| i.to_string())
        .collect();
    for (token, i) in config.server.auth.tokens.iter().zip(&indices) {
        caller_limits.push((
            token.max_in_flight,
            vec!["server", "auth", "tokens", i.as_str(), "max_in_flight"],
        ));
        caller_limits.push((
            token.requests_per_minute,
            vec![
                "server",
                "auth",
                "tokens",
                i.as_str(),
                "requests_per_minute",
            ],
        ));
    }
    for (limit, key) in caller_limits {
        if let Some(limit) = limit {
            check_range(u64::from(limit), 1..=MAX_CALLER_LIMIT, &key, merged)?;
        }
    }
    check_range(
        config.server.shutdown_grace_s,
        0..=DAY_S,
        &["server", "shutdown_grace_s"],
        merged,
    )?;
    check_oauth(&config.server, merged)?;
    check_moderation(config, merged)?;
    for (name, provider) in &config.providers {
        check_defaults(
            &provider.common.defaults,
            &["providers", name, "defaults"],
            &[],
            merged,
        )?;
        if let Some(limit) = provider.common.max_in_flight {
            check_size(
                limit,
                1..=MAX_IN_FLIGHT,
                &["providers", name, "max_in_flight"],
                merged,
            )?;
        }
        if let Err(e) = provider.check() {
            return Err(merged.err(&["providers", name, e.key], e.message));
        }
    }
    Ok(())
}

/// `[moderation_check]`, when enabled: a named provider must be an enabled one, and the
/// model a name. Whether the provider has a moderation endpoint is known once it is built
/// (the engine says).
fn check_moderation(config: &Config, merged: &Merged) -> Result<(), ConfigError> {
    let check = &config.moderation_check;
    if !check.enabled {
        return Ok(());
    }
    if check.model.trim().is_empty() {
        return Err(merged.err(
            &["moderation_check", "model"],
            "is empty; name a moderation model such as omni-moderation-latest",
        ));
    }
    let Some(name) = &check.provider else {
        return Ok(());
    };
    if !config.providers.get(name).is_some_and(|p| p.enabled()) {
        let enabled: Vec<&str> = config
            .providers
            .iter()
            .filter(|(_, p)| p.enabled())
            .map(|(n, _)| n.as_str())
            .collect();
        return Err(merged.err(
            &["moderation_check", "provider"],
            format!(
                "names `{name}`, which is not an enabled provider; enabled: {}",
                enabled.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The built-in catalog with `[models]` applied, and each provider's: its kind's view with
/// `[models]` and then `[providers.NAME.models]` applied. Entries go one at a time, to name
/// the failing one.
fn build_catalogs(
    config: &Config,
    merged: &Merged,
) -> Result<(Catalog, BTreeMap<String, Arc<Catalog>>), ConfigError> {
    let mut shared = Catalog::builtin();
    apply_models(&mut shared, &config.models, &[], merged)?;
    let mut per_provider = BTreeMap::new();
    for (name, provider) in config.providers.iter().filter(|(_, p)| p.enabled()) {
        let mut catalog = provider.kind.catalog();
        apply_models(&mut catalog, &config.models, &[], merged)?;
        apply_models(
            &mut catalog,
            &provider.common.models,
            &["providers", name],
            merged,
        )?;
        per_provider.insert(name.clone(), Arc::new(catalog));
    }
    Ok((shared, per_provider))
}

/// Applies the `models` entries found under the table at `under` to `catalog`.
fn apply_models(
    catalog: &mut Catalog,
    models: &BTreeMap<String, ModelOverride>,
    under: &[&str],
    merged: &Merged,
) -> Result<(), ConfigError> {
    for (name, entry) in models {
        catalog
            .extend(std::iter::once((name, entry)))
            .map_err(|msg| {
                let mut path = under.to_vec();
                path.extend(["models", name.as_str()]);
                let prefix: String = under.iter().map(|p| format!("{p}.")).collect();
                ConfigError::new(format!("{prefix}{msg} (from {})", merged.source_at(&path)))
            })?;
    }
    Ok(())
}

/// Start-up notices derived from the final configuration.
fn advice(
    config: &Config,
    keys: &BTreeMap<String, Vec<ResolvedKey>>,
    default_source: &str,
) -> Vec<String> {
    let mut notes = Vec::new();
    let enabled: Vec<(&String, &ProviderConfig)> = config
        .providers
        .iter()
        .filter(|(_, c)| c.enabled())
        .collect();
    let default = config.default_provider.as_deref().unwrap_or_default();
    let default_is_mock = config
        .providers
        .get(default)
        .is_some_and(|c| c.kind.is_stand_in());
    let real: Vec<&str> = enabled
        .iter()
        .filter(|(_, c)| !c.kind.is_stand_in())
        .map(|(n, _)| n.as_str())
        .collect();
    if default_is_mock && real.is_empty() {
        notes.push(
            "no provider configured: using the offline mock provider \
             (set OPENAI_API_KEY or write a config file to use OpenAI)"
                .into(),
        );
    } else if default_is_mock && default_source == "default" {
        notes.push(format!(
            "default_provider is not set: using the offline mock provider; set it to one of: {}",
            real.join(", ")
        ));
    }
    for (name, provider) in &enabled {
        if let Some(hint) = provider.kind.missing_key_hint(&provider.common) {
            if !keys.contains_key(name.as_str()) {
                notes.push(format!(
                    "provider `{name}` has no API key: {hint} under [providers.{name}]"
                ));
            }
        }
    }
    notes
}
