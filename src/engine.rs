//! The one path every generation takes, from the CLI or an MCP tool: pick the provider and
//! model, merge defaults, check the request against the model's capabilities before any paid
//! call, generate, and save the images.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use imagegen_providers::{
    build::{BuildContext, CommonConfig},
    cost::{Cost, CostBasis},
    keys::KeyPool,
    layers::{Limit, Limited},
    validate::{self, Operation},
    CallOptions, Catalog, Date, EditRequest, ErrorKind, Events, GenerateRequest, GenerateResult,
    GeneratedImage, ImageFormat, ImageOptions, ImageProvider, InputImage, ModelState, Param,
    ProviderError, ProviderEvent, SvgOptions, VariationRequest,
};
use schemars::JsonSchema;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::moderation::{Cleared, ModerationCheck};
use crate::routing::{falls_over, RouteConfig, RouteStep, SharedHealth};
use crate::{
    budget::{self, Budgets, Settlement},
    cache,
    cluster::Cluster,
    config::{
        CacheConfig, Defaults, Delivery, LoadedConfig, OnShutdown, OutputConfig, PresetConfig,
        ProviderConfig,
    },
    error::ToolError,
    inputs::InputPolicy,
    lifecycle::{self, LiveCatalog, ModelWatch, SharedWatch},
    presets,
    progress::Progress,
    storage::{ImageStore, Provenance, StoredImage, Viewer},
};
use crate::{
    cost::{Billing, CallCost, Charge, Costs, Priced},
    ledger::{self, Ledger},
};

/// The parameters of `generate_image` (and of `imagegen-mcp generate`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct GenerateParams {
    /// What to draw: a full description of the image (each model's longest prompt is in
    /// `list_providers`).
    pub prompt: String,
    /// Which configured provider or route to use (see `list_providers`); default: the
    /// configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Providers to move to, in order, when the first is down, rate limited or out of quota
    /// (default: the provider's configured `fallback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Vec<String>>,
    /// A model the provider offers, or an alias such as `fast` or `best`; default: the
    /// provider's model. See `list_providers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A prompt preset configured on the server (`list_providers` lists them): the prompt
    /// goes into its template and its options apply where the call sets none; the result
    /// shows the prompt as given and as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Size, shape, quality, format and the other options of the image.
    #[serde(flatten)]
    pub options: ImageOptions,
    /// How to return images: `preview` (small inline preview + link to the full image, the
    /// default), `link` (no inline image), or `full` (the original inline when it fits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// `true`: an identical earlier request's stored images come back (`cached: true`) instead
    /// of a new, paid generation; `false`: always generate. Default: the server's `[cache]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// The file name to save the image under (`cat`, `cat.png`), kept inside the image store:
    /// odd characters become `-`, the extension is always the image's real format, and a
    /// name already taken gets `-2`, `-3`, ...; the result says which name was used. Default:
    /// a name made from the time, the prompt and a content hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// `true` once the user agreed to this call's estimated cost: needed only above the
    /// server's `budget.confirm_above_usd`, when the client cannot ask the user itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_cost: Option<bool>,
}

/// The parameters of `edit_image` (and of `imagegen-mcp edit`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct EditParams {
    /// What the result should show or what to change ("same scene at night", "remove the car").
    pub prompt: String,
    /// The input images (how many a model takes is in `list_providers`): each the
    /// `imagegen://images/...` URI of an image this server made, a file path inside the allowed
    /// directories (relative paths are relative to the output directory), a
    /// `data:image/...;base64,` URL, or base64 data.
    pub images: Vec<String>,
    /// A PNG with alpha, the size of the first image: its transparent pixels mark what to
    /// change. Same forms as `images`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// Markup edits: a transparent PNG the size of the first image holding only annotations
    /// (circles, arrows, notes); the prompt says what each mark means. Same forms as `images`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub markup: Option<String>,
    /// Which configured provider or route to use; default: the configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Providers to move to, in order, when the first fails, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Vec<String>>,
    /// Model name or alias; default: the provider's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A prompt preset, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Size, shape, quality, format and the other options of the results.
    #[serde(flatten)]
    pub options: ImageOptions,
    /// `preview` (default), `link` or `full`, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Serve an identical earlier request from the store, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// The file name to save the result under, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The user agreed to the estimated cost, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_cost: Option<bool>,
}

impl EditParams {
    /// The parameters an edit shares with a generation, for the same checks and defaults.
    pub fn as_generate(&self) -> GenerateParams {
        GenerateParams {
            prompt: self.prompt.clone(),
            provider: self.provider.clone(),
            fallback: self.fallback.clone(),
            model: self.model.clone(),
            preset: self.preset.clone(),
            options: self.options.clone(),
            delivery: self.delivery,
            cache: self.cache,
            filename: self.filename.clone(),
            confirm_cost: self.confirm_cost,
        }
    }
}

/// The parameters of `create_variation`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct VariationParams {
    /// The image to vary, in any form `edit_image` accepts.
    pub image: String,
    /// Which configured provider to use; default: the configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Model name; only models whose `list_providers` entry has `variations: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Output size `WIDTHxHEIGHT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// How many variations to make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// `preview` (default), `link` or `full`, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Serve an identical earlier request from the store, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
    /// The file name to save the result under, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The user agreed to the estimated cost, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_cost: Option<bool>,
}

/// A successful generation: saved images and what the provider said about them.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The provider that served the call.
    pub provider: String,
    /// The model that served the call.
    pub model: String,
    /// Each saved image beside its bytes.
    pub images: Vec<(StoredImage, GeneratedImage)>,
    /// Partial images streamed before the final one, as saved.
    pub partials: Vec<StoredImage>,
    /// The prompt as the caller gave it (empty for a variation).
    pub prompt: String,
    /// The prompt as it went upstream, after the preset's template (none for a variation).
    pub prompt_sent: Option<String>,
    /// The preset the call named.
    pub preset: Option<String>,
    /// The prompt as the provider rewrote it.
    pub revised_prompt: Option<String>,
    /// Token usage, when reported.
    pub usage: Option<serde_json::Value>,
    /// The provider's request id.
    pub request_id: Option<String>,
    /// The model the call asked for, when another one served it (an alias, a replacement).
    pub requested_model: Option<String>,
    /// What the caller should know: a replacement, a deprecation, parameters dropped.
    pub notes: Vec<String>,
    /// The parameters as they went upstream, prompt and images aside.
    pub sent: serde_json::Map<String, serde_json::Value>,
    /// Each provider a routed call went to or skipped, in order (empty for one provider).
    pub route: Vec<RouteStep>,
    /// Set when the images came from the cache: when the original call stored them.
    pub cached: Option<String>,
    /// What the call cost (zero for a cache hit), and the estimate made before it.
    pub cost: Option<CallCost>,
}

/// One configured provider with its effective defaults.
#[derive(Debug, Clone)]
pub struct ProviderEntry {
    /// The provider.
    pub provider: Arc<dyn ImageProvider>,
    /// `[defaults]` overlaid with the provider's own defaults.
    pub defaults: Defaults,
    /// Model aliases: the provider's built-in ones overlaid with configured ones.
    pub aliases: BTreeMap<String, String>,
    /// The text model that writes SVGs when a call names none.
    pub svg_model: Option<String>,
    /// The provider's API keys and what is known about each (remote providers only).
    pub keys: Option<Arc<KeyPool>>,
    /// What the pool was built from.
    pool_inputs: PoolInputs,
    /// The provider's own bound on calls in flight.
    slots: Option<Limit>,
    /// The catalog as this provider sees it: its kind's entries and its own overrides.
    pub catalog: Arc<Catalog>,
    /// The providers its calls move to when it fails, in order.
    pub fallback: Vec<String>,
    /// Whether a content-policy refusal moves its calls on too.
    pub fallback_on_policy: bool,
}

impl ProviderEntry {
    /// Whether a call naming `model` can go here: an alias of this provider, or a model its
    /// catalog knows.
    pub fn serves(&self, model: &str) -> bool {
        self.aliases.contains_key(model)
            || self.offered_models().iter().any(|m| m == model)
            || self.catalog.get(model).known
    }

    /// Why no call can go out now, when every key of the pool is cooling down or disabled.
    pub fn keys_resting(&self) -> Option<String> {
        let status = self.keys.as_ref()?.status();
        (!status.is_empty() && status.iter().all(|k| k.state != "active"))
            .then(|| "every API key is cooling down or disabled".to_string())
    }

    /// `model` with this provider's aliases resolved.
    pub fn resolve_alias(&self, model: &str) -> String {
        self.aliases
            .get(model)
            .cloned()
            .unwrap_or_else(|| model.to_string())
    }

    /// The model a call naming none gets, its alias resolved.
    pub fn default_model(&self) -> String {
        self.resolve_alias(self.provider.default_model())
    }

    /// The models the provider offers, with its default first when the list lacks it.
    pub fn offered_models(&self) -> Vec<String> {
        let mut models = self.provider.models();
        let default = self.default_model();
        if !models.contains(&default) {
            models.insert(0, default);
        }
        models
    }
}

/// What a key pool is built from: a hash of its keys and their sources, the recheck interval
/// and the per-key request budget. Equal inputs keep the running pool across a reload.
type PoolInputs = ([u8; 32], u64, Option<u32>);

/// How long a cancelled call's provider may take to stop its upstream job before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// What a call carries besides its parameters: where its progress goes and what cancels it.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// Phases of the call, for progress notifications.
    pub progress: Progress,
    /// Cancelled when the client gives up: the upstream request and any wait end at once.
    pub cancel: CancellationToken,
    /// Who made the call and how: recorded in each image's sidecar.
    pub origin: Origin,
}

/// Who made a call and through which tool or command.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The HTTP caller (token name or OAuth subject); `None` over stdio and the CLI.
    pub caller: Option<String>,
    /// The tool or command (`generate_image`, `edit_image`, `generate_images`, ...).
    pub tool: Option<String>,
    /// Whose stored images the call may be answered with from the cache.
    pub viewer: Viewer,
}

/// What a call's images are saved with, beside what the provider answered.
struct Saving<'a> {
    /// The prompt as the caller gave it.
    prompt: &'a str,
    /// The prompt as it went upstream.
    prompt_sent: Option<&'a str>,
    /// The preset the call named.
    preset: Option<&'a str>,
    /// What the names' slugs are made from when not the prompt.
    name_hint: Option<&'a str>,
    /// The input images of an edit, as the sidecar records them.
    inputs: Vec<String>,
    /// The request's cache key, when the call uses the cache.
    cache_key: Option<String>,
    /// The file name the caller asked for.
    filename: Option<&'a str>,
    /// What the call's price depends on.
    priced: Priced,
}

/// What the provider's events told of a call while it ran.
#[derive(Debug, Default)]
struct Seen {
    /// Partial images, saved as they came.
    partials: Vec<StoredImage>,
    /// The fingerprint of the key the last attempt used.
    key: Option<String>,
    /// Whether any request was sent.
    requested: bool,
}

/// How an edit input appears in a sidecar: a stored image's URI, a file's name, never data.
fn input_record(spec: &str) -> String {
    let spec = spec.trim();
    if spec.starts_with(crate::storage::IMAGE_URI_PREFIX) {
        return spec.chars().take(300).collect();
    }
    if spec.starts_with("data:") || !crate::inputs::looks_like_path(spec) {
        return "inline image data".into();
    }
    let name = std::path::Path::new(spec)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    format!("file {}", name.chars().take(200).collect::<String>())
}

pub use imagegen_providers::http::ClientCache;

/// Everything a call needs, built once from a loaded configuration.
#[derive(Debug)]
pub struct Engine {
    providers: BTreeMap<String, ProviderEntry>,
    default_provider: String,
    catalog: Arc<Catalog>,
    output: OutputConfig,
    store: ImageStore,
    cache: CacheConfig,
    /// `[limits] max_in_flight`: upstream calls in flight across all providers.
    slots: Limit,
    inputs: InputPolicy,
    max_batch_items: usize,
    on_shutdown: OnShutdown,
    /// What running taught about models, shared by every engine of this process.
    watch: SharedWatch,
    /// Whether `default_provider` was picked for want of a choice.
    default_is_fallback: bool,
    /// `[routes]`.
    routes: BTreeMap<String, RouteConfig>,
    /// What recent calls say about each provider, shared by every engine of this process.
    health: SharedHealth,
    /// `[budget]` and its counts (kept across reloads, shared through `[cluster]`).
    budgets: Budgets,
    /// Estimates and observed costs, shared by every engine with the same ledger.
    costs: Arc<Costs>,
    /// The usage ledger, shared by every engine with the same ledger directory.
    ledger: Arc<Ledger>,
    /// Set once the budgets hold the ledger's spend of this month (see `seed_budgets`).
    seeded: Arc<tokio::sync::OnceCell<()>>,
    /// `[moderation_check]`, when enabled.
    moderation: Option<ModerationCheck>,
    /// `[presets]`.
    presets: BTreeMap<String, PresetConfig>,
}

fn overlay(base: &Defaults, top: &Defaults) -> Defaults {
    top.clone().or(base)
}

/// The key pool of provider `name`: the previous engine's pool when nothing it was built from
/// changed (so every cooldown and disabled key stays, even updates from calls still running on
/// the old engine), else a new pool that carries over what the old one knew about keys that stay.
fn key_pool(
    name: &str,
    loaded: &LoadedConfig,
    config: &CommonConfig,
    previous: Option<&Engine>,
) -> (Arc<KeyPool>, PoolInputs) {
    let recheck_s = config.key_recheck_s;
    let keys = loaded.api_keys(name);
    let mut hash = Sha256::new();
    for key in keys {
        hash.update(Sha256::digest(key.key.expose_secret().as_bytes()));
        hash.update(format!("{}\0", key.source));
    }
    let inputs = (
        hash.finalize().into(),
        recheck_s,
        config.requests_per_minute,
    );
    let old = previous
        .and_then(|e| e.providers.get(name))
        .and_then(|e| Some((e.keys.as_ref()?, e.pool_inputs)));
    if let Some((old_pool, old_inputs)) = old {
        if old_inputs == inputs {
            return (old_pool.clone(), inputs);
        }
    }
    let pool = KeyPool::new(
        keys.iter().map(|k| (k.key.clone(), k.source.clone())),
        Duration::from_secs(recheck_s),
    )
    .with_requests_per_minute(config.requests_per_minute);
    if let Some((old_pool, old_inputs)) = old {
        // Cooldowns always carry over; a disabled key gets another chance when the keys changed.
        pool.carry_over(old_pool, old_inputs.0 != inputs.0);
    }
    (Arc::new(pool), inputs)
}

/// `[budget]` over the counts of `previous` (spend survives a reload), on the cluster of
/// `[cluster]` (its connection kept while its URL and prefix stay).
fn budgets(loaded: &LoadedConfig, previous: Option<&Engine>) -> anyhow::Result<Budgets> {
    let config = &loaded.config;
    let old = previous.map(|e| &e.budgets);
    let cluster = Cluster::keep_or_open(old.and_then(Budgets::cluster), &config.cluster)?;
    let (limits, fail_open) = (config.budget.clone(), config.cluster.fail_open);
    let deadlines = config
        .providers
        .iter()
        .map(|(name, p)| (name.clone(), Duration::from_secs(p.http.deadline_s)))
        .collect();
    let budgets = match old {
        Some(old) => old.reconfigured(limits, fail_open, cluster),
        None => Budgets::new(limits, fail_open, cluster),
    };
    Ok(budgets.with_deadlines(deadlines))
}

/// Builds the provider named `name` from its configuration.
fn build_provider(
    name: &str,
    cfg: &ProviderConfig,
    loaded: &LoadedConfig,
    previous: Option<&Engine>,
    clients: &ClientCache,
    server_slots: &Limit,
) -> anyhow::Result<ProviderEntry> {
    let catalog = loaded
        .provider_catalog(name)
        .cloned()
        .unwrap_or_else(|| Arc::new(cfg.kind.catalog()));
    let defaults = overlay(&loaded.config.defaults, &cfg.common.defaults);
    let previous_slots = previous
        .and_then(|e| e.providers.get(name))
        .and_then(|e| e.slots.as_ref());
    let slots = cfg
        .common
        .max_in_flight
        .map(|limit| Limit::keep_or_new(previous_slots, limit, "the provider's"));
    let (pool, pool_inputs) = key_pool(name, loaded, &cfg.common, previous);
    let provider = cfg
        .build(BuildContext {
            keys: pool.clone(),
            catalog: catalog.clone(),
            clients,
        })
        .map_err(|e| anyhow::anyhow!("providers.{name}: {e}"))?;
    // The provider's bound first: see `Limited`.
    let limits = slots
        .iter()
        .cloned()
        .chain([server_slots.clone()])
        .collect();
    let provider = Arc::new(Limited::new(provider, limits));
    Ok(ProviderEntry {
        aliases: BTreeMap::new(),
        svg_model: cfg.svg_model().map(String::from),
        provider,
        defaults,
        keys: cfg.kind.is_remote().then_some(pool),
        pool_inputs,
        slots,
        catalog,
        fallback: cfg.common.fallback.clone(),
        fallback_on_policy: cfg.common.fallback_on_policy,
    })
}

impl Engine {
    /// Builds every enabled provider of `loaded`.
    pub fn from_config(loaded: &LoadedConfig) -> anyhow::Result<Self> {
        Self::build(loaded, None, &ClientCache::default())
    }

    /// Builds every enabled provider of `loaded`, taking HTTP clients from `clients` and key
    /// state from `previous` (the engine this one replaces).
    pub fn build(
        loaded: &LoadedConfig,
        previous: Option<&Engine>,
        clients: &ClientCache,
    ) -> anyhow::Result<Self> {
        let config = &loaded.config;
        let catalog = Arc::new(loaded.catalog().clone());
        let slots = Limit::keep_or_new(
            previous.map(|e| &e.slots),
            config.limits.max_in_flight,
            "the server's",
        );
        let mut providers = BTreeMap::new();
        for (name, cfg) in config.providers.iter().filter(|(_, c)| c.enabled()) {
            let mut entry = build_provider(name, cfg, loaded, previous, clients, &slots)?;
            entry.aliases = lifecycle::aliases(entry.provider.as_ref(), &cfg.common.aliases);
            providers.insert(name.clone(), entry);
        }
        let default_provider = loaded.default_provider().to_string();
        anyhow::ensure!(
            providers.contains_key(&default_provider)
                || config.routes.contains_key(&default_provider),
            "default_provider `{default_provider}` is not an enabled provider or a route"
        );
        let moderation =
            ModerationCheck::from_config(&config.moderation_check, &providers, &default_provider)?;
        let store = ImageStore::from_config(loaded.output_dir(), &config.storage)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let ledger_dir = ledger::dir_of(loaded);
        // A reload that keeps the ledger's place keeps its uploads and averages.
        let (ledger, costs, seeded) = match previous.filter(|p| p.ledger.dir() == ledger_dir) {
            Some(p) => (p.ledger.clone(), p.costs.clone(), p.seeded.clone()),
            None => {
                let ledger = Arc::new(Ledger::new(ledger_dir.clone(), &store));
                ledger.spawn_uploads();
                let costs = Arc::new(Costs::persisted(ledger_dir.join("observed-costs.json")));
                (ledger, costs, Arc::default())
            }
        };
        let budgets = budgets(loaded, previous)?;
        // Key cooldowns and disables are shared through `[cluster]` too, or kept here.
        crate::cluster::share_keys(
            budgets.cluster(),
            providers.values().filter_map(|e| e.keys.as_ref()),
        );
        const MB: u64 = 1_000_000;
        Ok(Self {
            inputs: InputPolicy::new(
                loaded.output_dir(),
                &config.input.allowed_dirs,
                config.input.max_image_mb.saturating_mul(MB),
                config.input.max_mask_mb.saturating_mul(MB),
            ),
            max_batch_items: config.batch.max_items,
            providers,
            default_provider,
            catalog,
            output: config.output.clone(),
            store,
            cache: config.cache,
            slots,
            on_shutdown: config.catalog.on_shutdown,
            default_is_fallback: loaded.default_provider_is_fallback(),
            watch: previous.map_or_else(SharedWatch::default, |e| e.watch.clone()),
            routes: config.routes.clone(),
            health: previous.map_or_else(SharedHealth::default, |e| e.health.clone()),
            budgets,
            costs,
            ledger,
            seeded,
            moderation,
            presets: config.presets.clone(),
        })
    }

    /// The shared catalog (built-in entries and `[models]`) with what running taught, judged
    /// as of today.
    pub fn live_catalog(&self) -> LiveCatalog<'_> {
        self.live(&self.catalog)
    }

    /// [`Engine::live_catalog`] as one provider sees it, with its kind's and its own entries.
    pub fn live_catalog_of<'a>(&'a self, entry: &'a ProviderEntry) -> LiveCatalog<'a> {
        self.live(&entry.catalog)
    }

    fn live<'a>(&'a self, catalog: &'a Catalog) -> LiveCatalog<'a> {
        LiveCatalog {
            catalog,
            watch: &self.watch,
            today: Date::today(),
        }
    }

    /// Whether the default provider was picked for want of a choice (see
    /// [`LoadedConfig::default_provider_is_fallback`]).
    pub fn default_is_fallback(&self) -> bool {
        self.default_is_fallback
    }

    /// What running taught about models (shared across reloads).
    pub fn watch(&self) -> &ModelWatch {
        &self.watch
    }

    /// What a call for a shut-down model does.
    pub fn on_shutdown(&self) -> OnShutdown {
        self.on_shutdown
    }

    /// Warnings for defaults and aliases that point at deprecated or shut-down models, for
    /// start-up, reloads and `config check`.
    pub fn lifecycle_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, entry) in &self.providers {
            let live = self.live_catalog_of(entry);
            let default = entry.default_model();
            let what = format!("the default model of provider `{name}`");
            out.extend(live.warning(&default, &what));
            for (alias, model) in &entry.aliases {
                let what = format!("alias `{alias}` of provider `{name}`");
                out.extend(live.warning(model, &what));
            }
        }
        out
    }

    /// Default models that a call would be refused for (`[catalog] on_shutdown = "refuse"`
    /// and the model shut down), as errors for `config check`.
    pub fn refused_defaults(&self) -> Vec<String> {
        if self.on_shutdown != OnShutdown::Refuse {
            return Vec::new();
        }
        self.providers
            .iter()
            .filter(|(_, e)| e.provider.lifecycle_is_authoritative())
            .filter_map(|(name, entry)| {
                let live = self.live_catalog_of(entry);
                let model = entry.default_model();
                (live.lifecycle(&model).state == ModelState::ShutDown).then(|| {
                    let instead = live
                        .replacement(&model)
                        .map(|r| format!("; set it to `{r}`"))
                        .unwrap_or_default();
                    format!(
                        "the default model of provider `{name}` is `{model}`, which is shut down, \
                         and [catalog] on_shutdown = \"refuse\" refuses every call for it{instead}"
                    )
                })
            })
            .collect()
    }

    /// The configured providers, by name.
    pub fn providers(&self) -> &BTreeMap<String, ProviderEntry> {
        &self.providers
    }

    /// The provider used when a call names none.
    pub fn default_provider(&self) -> &str {
        &self.default_provider
    }

    /// The model catalog in force.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Output settings.
    pub fn output(&self) -> &OutputConfig {
        &self.output
    }

    /// Where images are saved.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// The configured prompt presets, by name.
    pub fn presets(&self) -> &BTreeMap<String, PresetConfig> {
        &self.presets
    }

    /// The prompt as it will be sent: through the named preset's template, if any.
    fn prompt_to_send(&self, prompt: &str, preset: Option<&str>) -> Result<String, ToolError> {
        Ok(match self.preset(preset)? {
            Some((_, preset)) => preset.expand(prompt),
            None => prompt.to_string(),
        })
    }

    /// The preset a call names, or an error listing the configured ones.
    fn preset<'a>(
        &'a self,
        name: Option<&'a str>,
    ) -> Result<Option<(&'a str, &'a PresetConfig)>, ToolError> {
        let Some(name) = name else {
            return Ok(None);
        };
        match self.presets.get(name) {
            Some(preset) => Ok(Some((name, preset))),
            None if self.presets.is_empty() => Err(ToolError::invalid_param(
                "preset",
                format!("unknown preset `{name}`: no presets are configured ([presets.NAME] in the configuration)"),
            )),
            None => Err(ToolError::invalid_param(
                "preset",
                format!(
                    "unknown preset `{name}`; configured: {}",
                    self.presets.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    /// `provider` and `model` with the named preset's where the call names none (see
    /// [`presets::preset_target`]); an unknown preset is refused here, before anything else.
    fn aim(
        &self,
        preset: Option<&str>,
        provider: &mut Option<String>,
        model: &mut Option<String>,
    ) -> Result<(), ToolError> {
        if let Some((_, preset)) = self.preset(preset)? {
            (*provider, *model) =
                presets::preset_target(provider.as_deref(), model.as_deref(), preset);
        }
        Ok(())
    }

    /// `params` aimed by its preset (see [`Engine::aim`]), cloned only when it names one.
    fn aimed<'p>(
        &self,
        params: &'p GenerateParams,
    ) -> Result<std::borrow::Cow<'p, GenerateParams>, ToolError> {
        if params.preset.is_none() {
            return Ok(std::borrow::Cow::Borrowed(params));
        }
        let mut params = params.clone();
        self.aim(
            params.preset.as_deref(),
            &mut params.provider,
            &mut params.model,
        )?;
        Ok(std::borrow::Cow::Owned(params))
    }

    /// Resolves the provider, the model (aliases, lifecycle) and builds a checked request; no
    /// money is spent here.
    ///
    /// A parameter the caller set that the model does not take is refused; a configured
    /// default the model does not take is left out. A call for a shut-down model goes to its
    /// replacement (`[catalog] on_shutdown = "replace"`), dropping what the replacement does
    /// not take, or is refused (`"refuse"`); for a provider whose server may still serve the
    /// model, it is sent as asked and the replacement is kept as the fallback.
    pub fn prepare(&self, params: &GenerateParams) -> Result<Prepared, ToolError> {
        self.prepare_for(params, Operation::Generate)
    }

    /// [`Engine::prepare`] for `operation`: an edit's options are checked as an edit's.
    fn prepare_for(
        &self,
        params: &GenerateParams,
        operation: Operation,
    ) -> Result<Prepared, ToolError> {
        let aimed = self.aimed(params)?;
        let params = &*aimed;
        let preset = self.preset(params.preset.as_deref())?;
        let name = params.provider.as_deref().unwrap_or(&self.default_provider);
        let entry = self.entry(name)?;
        let provider = entry.provider.clone();
        let asked = params
            .model
            .clone()
            .unwrap_or_else(|| provider.default_model().to_string());
        let model = entry.resolve_alias(&asked);
        let live = self.live_catalog_of(entry);
        let life = live.lifecycle(&model);
        let replacement = live.replacement(&model);
        let when = life.describe(live.today);
        let mut notes = Vec::new();
        let mut target = model.clone();
        let mut fallback_model = None;
        match life.state {
            ModelState::ShutDown if provider.lifecycle_is_authoritative() => {
                match (self.on_shutdown, &replacement) {
                    (OnShutdown::Replace, Some(r)) => {
                        tracing::info!(provider = ?name, requested = ?model, model = ?r, "replacing a shut-down model");
                        notes.push(format!(
                            "`{model}` was {when}; the call went to its replacement `{r}`"
                        ));
                        target = r.clone();
                    }
                    (mode, r) => {
                        let instead = match r {
                            Some(r) => format!("; its replacement is `{r}`: ask for that model"),
                            None => "; the catalog names no replacement".into(),
                        };
                        let why = match mode {
                            OnShutdown::Refuse => " ([catalog] on_shutdown = \"refuse\")",
                            OnShutdown::Replace => "",
                        };
                        return Err(ToolError::from_provider(
                            ProviderError::invalid_param(
                                "model",
                                format!("`{model}` was {when}{instead}{why}"),
                            ),
                            Some(name),
                            Some(&model),
                        ));
                    }
                }
            }
            ModelState::ShutDown => {
                tracing::warn!(provider = ?name, model = ?model, state = %when, "the catalog says this model is shut down; sending it as asked, since this provider's server may still serve it");
                notes.push(format!(
                    "the catalog says `{model}` was {when}; it was sent as asked, since this provider's server may still serve it"
                ));
                if self.on_shutdown == OnShutdown::Replace {
                    fallback_model = replacement.clone();
                }
            }
            ModelState::Deprecated => {
                let instead = replacement
                    .as_deref()
                    .map(|r| format!("; switch to `{r}`"))
                    .unwrap_or_default();
                notes.push(format!("`{model}` is {when}{instead}"));
            }
            ModelState::Active => {}
        }
        let replaced = target != model;
        let (request, filled) = self.build_request(
            name, entry, params, preset, operation, &target, replaced, &mut notes,
        )?;
        if let Some((preset_name, preset)) = preset {
            // First: it says what became of the prompt, which everything else is about.
            let note = preset.note(preset_name, &params.prompt, &request.prompt, &filled);
            tracing::info!(preset = ?preset_name, "preset applied");
            notes.insert(0, note);
        }
        // A fallback that cannot be built (the replacement refuses what was asked) is no fallback.
        let fallback = fallback_model.and_then(|r| {
            let mut dropped = Vec::new();
            let (request, _) = self
                .build_request(name, entry, params, preset, operation, &r, true, &mut dropped)
                .ok()?;
            let mut note = format!(
                "the provider no longer serves `{model}` (the catalog says it was {when}); the call went to its replacement `{r}`"
            );
            for d in dropped {
                note.push_str("; ");
                note.push_str(&d);
            }
            Some(Fallback { request, note })
        });
        Ok(Prepared {
            provider_name: name.to_string(),
            provider,
            request,
            requested_model: asked,
            notes,
            fallback,
        })
    }

    /// The checked request for `model`, with the options the call left unset filled from
    /// the preset, then the configured defaults (see [`presets::fill_layers`]), and the
    /// options the preset filled; with `lenient`, parameters the model does not take (or
    /// values it refuses) are dropped with a note instead of failing the call.
    #[allow(clippy::too_many_arguments)]
    fn build_request(
        &self,
        name: &str,
        entry: &ProviderEntry,
        params: &GenerateParams,
        preset: Option<(&str, &PresetConfig)>,
        operation: Operation,
        model: &str,
        lenient: bool,
        notes: &mut Vec<String>,
    ) -> Result<(GenerateRequest, Vec<Param>), ToolError> {
        let provider = &entry.provider;
        let caps = provider.capabilities(model);
        let fail = |e| ToolError::from_provider(e, Some(name), Some(model));

        let prompt = match preset {
            // A template alone is no prompt: the call's own must say what to draw.
            Some(_) if params.prompt.trim().is_empty() => {
                return Err(fail(ProviderError::invalid_param(
                    "prompt",
                    "prompt must not be empty",
                )))
            }
            Some((_, preset)) => preset.expand(&params.prompt),
            None => params.prompt.clone(),
        };
        let mut request = GenerateRequest::new(prompt, model);
        request.options = params.options.clone();
        // Zero partial images is the same as none: nothing streams.
        request.options.partial_images = params.options.partial_images.filter(|&n| n > 0);
        // The writer of an SVG defaults to the provider's setting: it is part of the ask.
        if request.options.output_format == Some(ImageFormat::Svg) {
            if let Some(writer) = &entry.svg_model {
                let svg = request.options.svg.get_or_insert_with(SvgOptions::default);
                svg.model.get_or_insert_with(|| writer.clone());
            }
        }
        notes.extend(imagegen_providers::options::size_as_ratio(
            &mut request.options,
            &caps,
        ));
        check_or_drop(&mut request, &caps, operation, lenient, notes).map_err(|mut e| {
            if let (Some((preset_name, _)), Some("prompt")) = (preset, e.param.as_deref()) {
                e.message
                    .push_str(&format!(" (as sent, in preset `{preset_name}`'s template)"));
            }
            fail(e)
        })?;

        let takes = |param| caps.takes(param) && operation.allows(param);
        // A call that set `partial_images` itself, even to 0, keeps its choice.
        let asked_stream = params.options.partial_images.is_some();
        let filled = presets::fill_layers(
            &mut request.options,
            preset.map(|(_, p)| &p.options),
            &entry.defaults,
            |param| takes(param) && (param != Param::Stream || !asked_stream),
        );
        if let Some((preset_name, preset)) = preset {
            for param in preset.options.params_set() {
                if !takes(param) && !params.options.is_set(param) {
                    notes.push(format!(
                        "preset `{preset_name}`'s `{}` was not sent: `{model}` does not take it here",
                        presets::key(param)
                    ));
                }
            }
        }
        if filled.preset.is_empty() && filled.defaults.is_empty() {
            return Ok((request, filled.preset));
        }
        validate::check_for(&request, &caps, operation).map_err(|mut e| {
            let is = |p: &Param| {
                Some(p.as_str()) == e.param.as_deref()
                    || Some(presets::key(*p)) == e.param.as_deref()
            };
            let from = match preset {
                Some((preset_name, _)) if filled.preset.iter().any(is) => {
                    format!("preset `{preset_name}`")
                }
                Some((preset_name, _)) if !filled.defaults.iter().any(is) => {
                    format!("the options of preset `{preset_name}` or the configured [defaults]")
                }
                _ => "the configured [defaults]".to_string(),
            };
            e.message
                .push_str(&format!(" (the value comes from {from})"));
            fail(e)
        })?;
        Ok((request, filled.preset))
    }

    /// The error for `model` when the provider said it does not exist: for a model the
    /// catalog thinks active it "looks retired", naming the likely replacement; the live
    /// status remembers it either way.
    fn model_missing(
        &self,
        mut err: ProviderError,
        entry: &ProviderEntry,
        model: &str,
    ) -> ProviderError {
        let live = self.live_catalog_of(entry);
        let said = err
            .provider_message
            .clone()
            .unwrap_or_else(|| err.message.clone());
        self.watch.mark_missing(model, said);
        let likely = live.replacement(model).or_else(|| {
            let default = entry.default_model();
            (default != model).then_some(default)
        });
        let instead = likely
            .map(|r| format!("; the likely replacement is `{r}`"))
            .unwrap_or_default();
        if live.lifecycle(model).state != ModelState::ShutDown {
            err.message = format!(
                "the provider says `{model}` does not exist, though the catalog thinks it active: it looks retired{instead} ({})",
                err.message
            );
        } else {
            err.message = format!("{}{instead}", err.message);
        }
        err
    }

    /// `model` as a metric label for provider `provider`: itself when the provider or the
    /// catalog knows it, else `other`, so a caller's made-up names cannot grow the series.
    pub fn metric_model(&self, provider: &str, model: &str) -> String {
        let known = self
            .providers
            .get(provider)
            .is_some_and(|e| e.serves(model))
            || self.catalog.get(model).known;
        match known {
            true => model.to_string(),
            false => "other".to_string(),
        }
    }

    /// Upstream calls in flight now, all providers together, and the limit.
    pub fn in_flight(&self) -> (usize, usize) {
        (self.slots.in_flight(), self.slots.limit())
    }

    /// Generates and saves images; every failure is a structured [`ToolError`].
    ///
    /// Cancelling `call.cancel` ends the call at once with a `cancelled` error: the upstream
    /// request and any retry wait are dropped. A failed or cancelled call saves nothing
    /// (partial images already saved are removed).
    pub async fn generate(
        &self,
        params: &GenerateParams,
        call: &CallContext,
    ) -> Result<Generation, ToolError> {
        call.progress.phase("validating");
        let aimed = self.aimed(params)?;
        let params = &*aimed;
        let plan = self.plan(params.provider.as_deref(), params.fallback.as_deref())?;
        let sent = self.prompt_to_send(&params.prompt, params.preset.as_deref())?;
        let cleared = self.moderate(&sent, &[], call).await?;
        let generation = self.routed(&plan, RoutedCall::Generate(params), call).await;
        generation.map(|g| cleared.noted(g))
    }

    /// The moderation pre-check of a call about to be routed: once, whichever provider then
    /// serves it (or the cache), so a flagged prompt costs nothing anywhere.
    async fn moderate(
        &self,
        prompt: &str,
        images: &[InputImage],
        call: &CallContext,
    ) -> Result<Cleared, ToolError> {
        match &self.moderation {
            Some(check) => check.check(prompt, images, call).await,
            None => Ok(Cleared::Clean),
        }
    }

    /// The moderation pre-check in force, if any.
    pub fn moderation(&self) -> Option<&ModerationCheck> {
        self.moderation.as_ref()
    }

    /// Runs a prepared generation on its provider and saves the results.
    async fn generate_prepared(
        &self,
        prepared: Prepared,
        params: &GenerateParams,
        call: &CallContext,
    ) -> Result<Generation, ToolError> {
        let entry = self.entry(&prepared.provider_name)?;
        let provider = prepared.provider.clone();
        let kind = provider.kind();
        let (request, fallback) = (&prepared.request, prepared.fallback.as_ref());
        let priced = Priced::of(&provider.capabilities(&request.model), &request.options);
        let upstream = |options: CallOptions| async move {
            match provider.generate_opts(request, &options).await {
                Err(e) if e.model_unavailable => match fallback {
                    Some(f) => provider.generate_opts(&f.request, &options).await,
                    None => Err(self.model_missing(e, entry, &request.model)),
                },
                other => other,
            }
        };
        let saving = Saving {
            prompt: &params.prompt,
            prompt_sent: Some(&request.prompt),
            preset: params.preset.as_deref(),
            name_hint: None,
            inputs: Vec::new(),
            cache_key: self.cache_key(params.cache, call, || cache::Request {
                kind,
                operation: "generate",
                model: &request.model,
                prompt: &request.prompt,
                options: &request.options,
                inputs: Vec::new(),
            }),
            filename: params.filename.as_deref(),
            priced,
        };
        let generation = self
            .run(
                &prepared.provider_name,
                &request.model,
                saving,
                call,
                upstream,
            )
            .await?;
        Ok(prepared.finish(generation))
    }

    /// Edits images (`params.images`, already read by [`Engine::inputs`]) and saves the results.
    pub async fn edit(
        &self,
        params: &EditParams,
        inputs: EditInputs,
        call: &CallContext,
    ) -> Result<Generation, ToolError> {
        call.progress.phase("validating");
        let mut aimed = None;
        if params.preset.is_some() {
            // Cloned only with a preset: an edit's inline images can be megabytes.
            let mut p = params.clone();
            self.aim(p.preset.as_deref(), &mut p.provider, &mut p.model)?;
            aimed = Some(p);
        }
        let params = aimed.as_ref().unwrap_or(params);
        let plan = self.plan(params.provider.as_deref(), params.fallback.as_deref())?;
        let sent = self.prompt_to_send(&params.prompt, params.preset.as_deref())?;
        let cleared = self.moderate(&sent, &inputs.images, call).await?;
        let generation = self
            .routed(&plan, RoutedCall::Edit(params, &inputs), call)
            .await;
        generation.map(|g| cleared.noted(g))
    }

    /// One provider's attempt at `op`.
    async fn attempt(
        &self,
        op: &RoutedCall<'_>,
        name: &str,
        call: &CallContext,
    ) -> Result<Generation, Attempted> {
        match op {
            RoutedCall::Generate(params) => {
                let mut params = (*params).clone();
                params.provider = Some(name.to_string());
                let prepared = self.prepare(&params).map_err(Attempted::Refused)?;
                self.generate_prepared(prepared, &params, call)
                    .await
                    .map_err(Attempted::Failed)
            }
            RoutedCall::Edit(params, inputs) => {
                let mut params = (*params).clone();
                params.provider = Some(name.to_string());
                self.edit_on(&params, inputs, call).await
            }
        }
    }

    /// Edits on the provider `params` names, telling refusals before any call from failures.
    async fn edit_on(
        &self,
        params: &EditParams,
        inputs: &EditInputs,
        call: &CallContext,
    ) -> Result<Generation, Attempted> {
        let refused = Attempted::Refused;
        let prepared = self
            .prepare_for(&params.as_generate(), Operation::Edit)
            .map_err(refused)?;
        let entry = self.entry(&prepared.provider_name).map_err(refused)?;
        let provider = prepared.provider.clone();
        let kind = provider.kind();
        let name = prepared.provider_name.as_str();
        let edit_of = |generate: &GenerateRequest| {
            let mut request = EditRequest::new(
                generate.prompt.clone(),
                generate.model.clone(),
                inputs.images.clone(),
            )
            .with_generation(generate.clone());
            request.mask = inputs.mask.clone();
            request.markup = inputs.markup.clone();
            let caps = provider.capabilities(&request.model);
            validate::check_edit(&request, &caps)?;
            validate::check_edit_images(&request)?;
            Ok::<_, ProviderError>(request)
        };
        let model = prepared.request.model.clone();
        let request = edit_of(&prepared.request)
            .map_err(|e| refused(ToolError::from_provider(e, Some(name), Some(&model))))?;
        let fallback = prepared
            .fallback
            .as_ref()
            .and_then(|f| edit_of(&f.request).ok());
        let (request, fallback) = (&request, fallback.as_ref());
        let priced = Priced::of(&provider.capabilities(&request.model), &request.options);
        let upstream = |options: CallOptions| async move {
            match provider.edit_opts(request, &options).await {
                Err(e) if e.model_unavailable => match fallback {
                    Some(f) => provider.edit_opts(f, &options).await,
                    None => Err(self.model_missing(e, entry, &request.model)),
                },
                other => other,
            }
        };
        let saving = Saving {
            prompt: &params.prompt,
            prompt_sent: Some(&request.prompt),
            preset: params.preset.as_deref(),
            name_hint: None,
            inputs: params.images.iter().map(|s| input_record(s)).collect(),
            cache_key: self.cache_key(params.cache, call, || cache::Request {
                kind,
                operation: "edit",
                model: &request.model,
                prompt: &request.prompt,
                options: &request.options,
                inputs: (request.images.iter().map(|i| ("image", i)))
                    .chain(request.mask.iter().map(|i| ("mask", i)))
                    .chain(request.markup.iter().map(|i| ("markup", i)))
                    .collect(),
            }),
            filename: params.filename.as_deref(),
            priced,
        };
        let generation = self
            .run(name, &model, saving, call, upstream)
            .await
            .map_err(Attempted::Failed)?;
        Ok(prepared.finish(generation))
    }

    /// The providers a call for `named` (a provider, a route, or the default) goes to, in
    /// order: a route's list, or the provider then its fallbacks (the call's `fallback` when
    /// given, else the provider's configured one). Disabled providers are left out.
    fn plan(&self, named: Option<&str>, fallback: Option<&[String]>) -> Result<Plan, ToolError> {
        let name = named.unwrap_or(&self.default_provider);
        let (mut listed, on_policy) = match self.routes.get(name) {
            Some(route) => (route.providers.clone(), route.fallback_on_policy),
            None => {
                let entry = self.entry(name)?;
                let mut listed = vec![name.to_string()];
                listed.extend_from_slice(fallback.unwrap_or(&entry.fallback));
                (listed, entry.fallback_on_policy)
            }
        };
        if self.routes.contains_key(name) {
            listed.extend_from_slice(fallback.unwrap_or_default());
        }
        for extra in fallback.unwrap_or_default() {
            if !self.providers.contains_key(extra) {
                return Err(ToolError::invalid_param(
                    "fallback",
                    format!(
                        "unknown provider `{extra}`; configured: {}",
                        self.provider_names()
                    ),
                ));
            }
        }
        let mut providers: Vec<String> = Vec::with_capacity(listed.len());
        for p in listed {
            if self.providers.contains_key(&p) && !providers.contains(&p) {
                providers.push(p);
            }
        }
        if providers.is_empty() {
            return Err(ToolError::invalid_param(
                "provider",
                format!("route `{name}` has no enabled provider"),
            ));
        }
        Ok(Plan {
            providers,
            on_policy,
        })
    }

    /// Runs `attempt` on each provider of `plan` in turn until one serves the call or fails
    /// in a way that would fail anywhere (see [`falls_over`]).
    ///
    /// A concrete model name pins the fallbacks to providers that know it; an alias lets
    /// each serve its own. A provider whose circuit is open or whose keys all rest is skipped
    /// unless none is left after it. The result lists every provider asked or skipped.
    async fn routed(
        &self,
        plan: &Plan,
        op: RoutedCall<'_>,
        call: &CallContext,
    ) -> Result<Generation, ToolError> {
        let model = match &op {
            RoutedCall::Generate(p) => p.model.as_deref(),
            RoutedCall::Edit(p, _) => p.model.as_deref(),
        };
        let mut steps: Vec<RouteStep> = Vec::new();
        let mut last_error: Option<ToolError> = None;
        let count = plan.providers.len();
        for (i, name) in plan.providers.iter().enumerate() {
            let entry = &self.providers[name];
            let is_last = i + 1 == count;
            if i > 0 {
                if let Some(model) = model.filter(|m| !entry.serves(m)) {
                    steps.push(RouteStep::skipped(
                        name,
                        format!("it does not serve `{model}`"),
                    ));
                    continue;
                }
            }
            if !is_last {
                let resting = entry.keys_resting();
                if let Some(why) = resting.or_else(|| self.health.skip_reason(name)) {
                    steps.push(RouteStep::skipped(name, why));
                    continue;
                }
            }
            if i > 0 {
                call.progress.phase(format!("trying provider `{name}`"));
            }
            match self.attempt(&op, name, call).await {
                Ok(mut generation) => {
                    // A cache hit says nothing of the provider's health: it was not called.
                    if generation.cached.is_none() {
                        self.health.record(name, Ok(()));
                    }
                    if !steps.is_empty() {
                        generation
                            .notes
                            .extend(steps.iter().filter_map(RouteStep::note));
                        steps.push(RouteStep::served(name));
                        generation.route = steps;
                    }
                    return Ok(generation);
                }
                // What the first provider refuses is refused: the call asked it for that.
                Err(Attempted::Refused(e)) if i == 0 => return Err(e),
                Err(Attempted::Refused(e)) => {
                    steps.push(RouteStep::skipped(
                        name,
                        format!("it cannot do what was asked ({})", e.message),
                    ));
                }
                Err(Attempted::Failed(e)) => {
                    self.health.record(name, Err(&e));
                    if is_last || !falls_over(&e, plan.on_policy) {
                        return Err(with_route(e, &steps));
                    }
                    tracing::warn!(provider = ?name, kind = e.kind.as_str(), "provider failed; moving to the next");
                    steps.push(RouteStep::failed(name, &e));
                    last_error = Some(e);
                }
            }
        }
        let mut error = last_error.unwrap_or_else(|| {
            ToolError::invalid_param("provider", "no provider of the route could take the call")
        });
        error.message = format!("no provider could serve the call; last: {}", error.message);
        Err(with_route(error, &steps))
    }

    /// The usage ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The configured provider names, for messages.
    fn provider_names(&self) -> String {
        self.providers
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What recent calls say about provider `name`.
    pub fn health(&self, name: &str) -> crate::routing::HealthStatus {
        self.health.status(name)
    }

    /// The configured routes.
    pub fn routes(&self) -> &BTreeMap<String, RouteConfig> {
        &self.routes
    }

    /// `[budget]` and its counts: the ledger seeds them at start-up.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Makes variations of `image` and saves them; only models whose catalog entry says so.
    pub async fn variation(
        &self,
        params: &VariationParams,
        image: InputImage,
        call: &CallContext,
    ) -> Result<Generation, ToolError> {
        call.progress.phase("validating");
        // Variations are not routed (few models make them): a route's first provider serves.
        let named = params.provider.as_deref().unwrap_or(&self.default_provider);
        let name = match self.routes.get(named) {
            Some(route) => route.providers.first().map_or(named, String::as_str),
            None => named,
        };
        let entry = self.entry(name)?;
        let provider = entry.provider.clone();
        let asked = params
            .model
            .clone()
            .unwrap_or_else(|| provider.default_model().to_string());
        let model = entry.resolve_alias(&asked);
        let fail = |e| ToolError::from_provider(e, Some(name), Some(&model));
        let mut request = VariationRequest::new(model.clone(), image);
        request.size = params.size.clone();
        request.n = params.n.unwrap_or(1);
        // This provider's models as they are, other providers' with the provider to ask.
        let supporting: Vec<String> = entry
            .catalog
            .variation_models()
            .into_iter()
            .chain(
                self.providers
                    .iter()
                    .filter(|(other, _)| other.as_str() != name)
                    .flat_map(|(other, e)| {
                        e.catalog
                            .variation_models()
                            .into_iter()
                            .filter(|m| !entry.catalog.get(m).variations)
                            .map(move |m| format!("{m} (provider `{other}`)"))
                    }),
            )
            .collect();
        validate::check_variation(&request, &provider.capabilities(&model), &supporting)
            .map_err(fail)?;
        let live = self.live_catalog_of(entry);
        let life = live.lifecycle(&model);
        // No current model makes variations, so a shut-down one has no replacement to go to.
        if life.state == ModelState::ShutDown && provider.lifecycle_is_authoritative() {
            return Err(fail(ProviderError::invalid_param(
                "model",
                format!(
                    "`{model}` was {}; no current model of this provider makes variations: use \
                     edit_image with the image and a prompt instead",
                    life.describe(live.today)
                ),
            )));
        }
        validate::check_variation_image(&request).map_err(fail)?;
        let mut asked_options = ImageOptions::default();
        asked_options.size = request.size.clone();
        asked_options.n = Some(request.n);
        let cache_key = self.cache_key(params.cache, call, || cache::Request {
            kind: provider.kind(),
            operation: "variation",
            model: &request.model,
            prompt: "",
            options: &asked_options,
            inputs: vec![("image", &request.image)],
        });
        let request = &request;
        let priced = Priced::of(&provider.capabilities(&model), &asked_options);
        let upstream = |options: CallOptions| async move {
            match provider.variation_opts(request, &options).await {
                Err(e) if e.model_unavailable => Err(self.model_missing(e, entry, &request.model)),
                other => other,
            }
        };
        let saving = Saving {
            prompt: "",
            prompt_sent: None,
            preset: None,
            name_hint: Some("variation"),
            inputs: vec![input_record(&params.image)],
            cache_key,
            filename: params.filename.as_deref(),
            priced,
        };
        let mut generation = self.run(name, &model, saving, call, upstream).await?;
        if generation.model != asked {
            generation.requested_model = Some(asked);
        }
        Ok(generation)
    }

    /// What a generation (or, with `edit`, an edit) would cost by the estimate table, on the
    /// first provider its plan goes to, before anything is sent. `None` when the price is
    /// unknown, or when the call would fail its checks (it then fails on its own, at no cost).
    pub fn estimate_usd(&self, params: &GenerateParams, edit: bool) -> Option<f64> {
        let aimed = self.aimed(params).ok()?;
        let plan = self
            .plan(aimed.provider.as_deref(), aimed.fallback.as_deref())
            .ok()?;
        let mut first = aimed.into_owned();
        first.provider = plan.providers.into_iter().next();
        let operation = if edit {
            Operation::Edit
        } else {
            Operation::Generate
        };
        let prepared = self.prepare_for(&first, operation).ok()?;
        let request = &prepared.request;
        let priced = Priced::of(
            &prepared.provider.capabilities(&request.model),
            &request.options,
        );
        self.costs
            .estimate(priced.prices.as_ref(), &request.model, &priced.order())
            .usd
    }

    /// What a variation would cost by the estimate table, as [`Engine::estimate_usd`].
    pub fn variation_estimate_usd(&self, params: &VariationParams) -> Option<f64> {
        let named = params.provider.as_deref().unwrap_or(&self.default_provider);
        let name = match self.routes.get(named) {
            Some(route) => route.providers.first().map_or(named, String::as_str),
            None => named,
        };
        let entry = self.entry(name).ok()?;
        let asked = params
            .model
            .clone()
            .unwrap_or_else(|| entry.provider.default_model().to_string());
        let model = entry.resolve_alias(&asked);
        let mut options = ImageOptions::default();
        options.size = params.size.clone();
        options.n = Some(params.n.unwrap_or(1));
        let priced = Priced::of(&entry.provider.capabilities(&model), &options);
        self.costs
            .estimate(priced.prices.as_ref(), &model, &priced.order())
            .usd
    }

    /// The cache key of `request` when this call uses the cache (`asked`, else `[cache]`).
    fn cache_key<'r>(
        &self,
        asked: Option<bool>,
        call: &CallContext,
        request: impl FnOnce() -> cache::Request<'r>,
    ) -> Option<String> {
        asked
            .unwrap_or(self.cache.enabled)
            .then(|| cache::key(&request(), &call.origin.viewer))
    }

    /// The images of cache entry `key`, when it is current and each image is still stored and
    /// visible to `viewer`; `None` is a miss, whatever the reason.
    async fn cached(&self, key: &str, viewer: &Viewer, provider: &str) -> Option<Generation> {
        let json = match self.store.cache_entry(key, cache::MAX_ENTRY_BYTES).await {
            Ok(json) => json?,
            Err(e) => {
                tracing::warn!("cannot read the cache, calling the provider: {e}");
                return None;
            }
        };
        let entry = cache::Entry::parse(&json, self.cache.ttl_s, time::OffsetDateTime::now_utc())?;
        let cap = self.output.max_read_mb.saturating_mul(1_000_000);
        let mut images = Vec::with_capacity(entry.images.len());
        for name in &entry.images {
            let sidecar = self.store.sidecar(name, viewer).await.ok()?;
            let (bytes, _) = self.store.read(name, cap, viewer).await.ok()?;
            let image = GeneratedImage::from_encoded(bytes).ok()?;
            images.push((self.store.stored_of(&sidecar), image));
        }
        tracing::info!(provider = ?provider, model = ?entry.model, images = images.len(), original = ?entry.created, "served from the cache");
        Some(Generation {
            provider: provider.to_string(),
            model: entry.model,
            images,
            partials: Vec::new(),
            // The call's own, set by `run`: the key holds the prompt as sent, not these.
            prompt: String::new(),
            prompt_sent: None,
            preset: None,
            revised_prompt: entry.revised_prompt,
            usage: None,
            request_id: entry.request_id,
            requested_model: None,
            notes: vec![format!(
                "served from the cache: an identical request made these images at {}; the provider was not called, so nothing was billed",
                entry.created
            )],
            sent: entry.sent,
            route: Vec::new(),
            cached: Some(entry.created),
            cost: None,
        })
    }

    /// The provider named `name`, or an error listing the configured ones.
    fn entry(&self, name: &str) -> Result<&ProviderEntry, ToolError> {
        self.providers.get(name).ok_or_else(|| {
            let names: Vec<_> = self.providers.keys().map(String::as_str).collect();
            ToolError::invalid_param(
                "provider",
                format!(
                    "unknown provider `{name}`; configured: {}",
                    names.join(", ")
                ),
            )
        })
    }

    /// Where edit inputs may come from.
    pub fn inputs(&self) -> &InputPolicy {
        &self.inputs
    }

    /// The most items one batch may hold.
    pub fn max_batch_items(&self) -> usize {
        self.max_batch_items
    }

    /// Runs one upstream call under the in-flight limits, forwarding its events as progress,
    /// ending it at once on cancellation, and saving what it returns; every call (and cache
    /// hit) is costed and written to the usage ledger.
    async fn run<F, Fut>(
        &self,
        name: &str,
        model: &str,
        saving: Saving<'_>,
        call: &CallContext,
        upstream: F,
    ) -> Result<Generation, ToolError>
    where
        F: FnOnce(CallOptions) -> Fut,
        Fut: std::future::Future<Output = Result<GenerateResult, ProviderError>>,
    {
        if let Some(key) = &saving.cache_key {
            let hit = self.cached(key, &call.origin.viewer, name).await;
            metrics::counter!(
                crate::telemetry::CACHE_LOOKUPS,
                "provider" => name.to_string(),
                "outcome" => if hit.is_some() { "hit" } else { "miss" }
            )
            .increment(1);
            if let Some(mut hit) = hit {
                let free = Cost::known(0.0, CostBasis::Usage).noted("served from the cache");
                hit.cost = Some(CallCost::new(free.clone(), None));
                let charge = Charge {
                    cost: free,
                    billing: Billing::NotBilled,
                };
                self.record(
                    name,
                    &hit.model,
                    call,
                    hit.images.len(),
                    &charge,
                    None,
                    "ok",
                    &Seen::default(),
                    hit.request_id.clone(),
                    None,
                    true,
                )
                .await;
                hit.prompt = saving.prompt.to_string();
                hit.prompt_sent = saving.prompt_sent.map(str::to_string);
                hit.preset = saving.preset.map(str::to_string);
                return Ok(hit);
            }
        }
        let estimate =
            self.costs
                .estimate(saving.priced.prices.as_ref(), model, &saving.priced.order());
        self.seed_budgets().await;
        // Before anything is sent: a call that would pass a budget ends here.
        let hold = self
            .budgets
            .reserve(&budget::Charge {
                provider: name,
                caller: Some(
                    call.origin
                        .caller
                        .as_deref()
                        .unwrap_or(crate::http::ANONYMOUS),
                ),
                estimate_usd: estimate.usd,
            })
            .await?;
        let budget_note = hold.note().map(str::to_string);
        let seen = Mutex::new(Seen::default());
        let outcome = self
            .call_upstream(name, model, &saving, call, &seen, upstream)
            .await;
        let seen = seen.into_inner().unwrap_or_else(|e| e.into_inner());
        let priced = &saving.priced;
        let result = match outcome {
            Ok(result) => result,
            Err((error, provider_error)) => {
                let charge = match &provider_error {
                    Some(e) => self.costs.failed(
                        priced.prices.as_ref(),
                        model,
                        &priced.order(),
                        e,
                        seen.requested,
                        seen.partials.len(),
                    ),
                    None => Charge {
                        cost: Cost::known(0.0, CostBasis::Usage),
                        billing: Billing::NotBilled,
                    },
                };
                hold.settle(settlement(&charge, estimate.usd)).await;
                let key = seen.key.clone().or_else(|| {
                    provider_error
                        .as_ref()
                        .and_then(|e| e.key_fingerprint.clone())
                });
                let seen = Seen { key, ..seen };
                self.record(
                    name,
                    model,
                    call,
                    0,
                    &charge,
                    estimate.usd,
                    error.kind.as_str(),
                    &seen,
                    error.request_id.clone(),
                    None,
                    false,
                )
                .await;
                return Err(error);
            }
        };
        let sizes: Vec<(u32, u32)> = result.images.iter().map(|i| (i.width, i.height)).collect();
        let cost = self.costs.succeeded(
            priced.prices.as_ref(),
            &result.model,
            &priced.order(),
            result.usage.as_ref(),
            &sizes,
        );
        let charge = Charge {
            cost,
            billing: Billing::Billed,
        };
        hold.settle(settlement(&charge, estimate.usd)).await;
        tracing::info!(
            provider = ?name,
            model = ?result.model,
            cost_usd = ?charge.cost.usd,
            basis = ?charge.cost.basis,
            "call costed"
        );
        let tokens = result.usage.as_ref().and_then(ledger::Tokens::of);
        let request_id = result.request_id.clone();
        let served = result.model.clone();
        let saved = self
            .save(name, saving, call, result, seen.partials.clone())
            .await;
        let (outcome, images) = match &saved {
            Ok(g) => ("ok", g.images.len()),
            Err(e) => (e.kind.as_str(), 0),
        };
        self.record(
            name,
            &served,
            call,
            images,
            &charge,
            estimate.usd,
            outcome,
            &seen,
            request_id,
            tokens,
            false,
        )
        .await;
        let mut generation = saved?;
        generation.notes.extend(budget_note);
        generation.cost = Some(CallCost::new(charge.cost, estimate.usd));
        Ok(generation)
    }

    /// Once per process, before the first call that a budget limits: this month's spend so far
    /// from the usage ledger, so that a restart does not reset the budgets.
    async fn seed_budgets(&self) {
        if !self.budgets.config().any() {
            return;
        }
        self.seeded
            .get_or_init(|| async {
                let today = time::OffsetDateTime::now_utc().date();
                let read = match self.ledger.read(ledger::month_start(today), today).await {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::warn!("cannot read the usage ledger to seed the budgets: {e}");
                        return;
                    }
                };
                let today = ledger::day_name(today);
                let mut spent: BTreeMap<(budget::Scope, budget::Period), f64> = BTreeMap::new();
                for line in &read.lines {
                    let Some(usd) = line.cost_usd.filter(|usd| *usd > 0.0) else {
                        continue;
                    };
                    let caller = line.caller.as_deref().unwrap_or(crate::http::ANONYMOUS);
                    let scopes = [
                        budget::Scope::Global,
                        budget::Scope::Provider(line.provider.clone()),
                        budget::Scope::Caller(caller.to_string()),
                    ];
                    let periods: &[budget::Period] = if line.time.starts_with(&today) {
                        &budget::Period::ALL
                    } else {
                        &[budget::Period::Month]
                    };
                    for scope in scopes {
                        for period in periods {
                            *spent.entry((scope.clone(), *period)).or_default() += usd;
                        }
                    }
                }
                let seeds = spent.len();
                self.budgets
                    .seed(
                        spent
                            .into_iter()
                            .map(|((scope, period), usd)| (scope, period, usd)),
                    )
                    .await;
                tracing::info!(
                    lines = read.lines.len(),
                    seeds,
                    "budgets seeded from the usage ledger"
                );
            })
            .await;
    }

    /// Writes one call to the usage ledger and counts its cost in the metrics.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        provider: &str,
        model: &str,
        call: &CallContext,
        images: usize,
        charge: &Charge,
        estimate_usd: Option<f64>,
        outcome: &str,
        seen: &Seen,
        request_id: Option<String>,
        tokens: Option<ledger::Tokens>,
        cached: bool,
    ) {
        if let Some(usd) = charge.cost.usd.filter(|usd| *usd > 0.0) {
            metrics::counter!(
                crate::telemetry::COST_MICRODOLLARS,
                "provider" => provider.to_string(),
                "model" => self.metric_model(provider, model),
                "basis" => match charge.cost.basis {
                    CostBasis::Usage => "usage",
                    CostBasis::Estimate => "estimate",
                }
            )
            .increment((usd * 1e6).round() as u64);
        }
        let line = ledger::Line {
            time: crate::clock::now_rfc3339(),
            provider: provider.to_string(),
            model: model.to_string(),
            key: seen.key.clone(),
            caller: call.origin.caller.clone(),
            tool: call.origin.tool.clone(),
            images: u32::try_from(images).unwrap_or(u32::MAX),
            tokens,
            cost_usd: charge.cost.usd,
            basis: charge.cost.basis,
            estimate_usd,
            billing: charge.billing,
            outcome: outcome.to_string(),
            request_id,
            cached,
        };
        self.ledger.append(&line).await;
    }

    /// The upstream call itself, under the in-flight limits, with its events forwarded; a
    /// failure comes with the provider's error when there was one (a cancellation has none).
    async fn call_upstream<F, Fut>(
        &self,
        name: &str,
        model: &str,
        saving: &Saving<'_>,
        call: &CallContext,
        seen: &Mutex<Seen>,
        upstream: F,
    ) -> Result<GenerateResult, (ToolError, Option<ProviderError>)>
    where
        F: FnOnce(CallOptions) -> Fut,
        Fut: std::future::Future<Output = Result<GenerateResult, ProviderError>>,
    {
        let fail = |e| ToolError::from_provider(e, Some(name), Some(model));
        let cancelled = || {
            ProviderError::new(
                ErrorKind::Cancelled,
                "the call was cancelled by the client; nothing was saved",
            )
        };
        let take_partials =
            || std::mem::take(&mut seen.lock().unwrap_or_else(|e| e.into_inner()).partials);
        tracing::info!(provider = ?name, model = ?model, "calling the provider");
        let started = std::time::Instant::now();
        let model_label = self.metric_model(name, model);
        let work = async {
            let (events, received) = Events::channel();
            let options = CallOptions::new()
                .with_events(events)
                .with_cancel(call.cancel.child_token());
            // `events` moves into the call and drops with it, which ends the forwarding.
            let forward = forward_events(received, call, &self.store, saving.prompt, seen, name);
            let upstream = async {
                let result = upstream(options).await;
                let outcome = match &result {
                    Ok(_) => "ok",
                    Err(e) => e.kind.as_str(),
                };
                metrics::histogram!(
                    crate::telemetry::UPSTREAM_SECONDS,
                    "provider" => name.to_string(),
                    "model" => model_label.clone(),
                    "outcome" => outcome
                )
                .record(started.elapsed().as_secs_f64());
                result
            };
            tokio::join!(upstream, forward).0
        };
        tokio::pin!(work);
        let result = tokio::select! {
            result = &mut work => result,
            () = call.cancel.cancelled() => {
                // The provider sees the cancellation too: a moment to tell its upstream to
                // stop the job (queue APIs bill for jobs left running), then it is dropped.
                let _ = tokio::time::timeout(CANCEL_GRACE, &mut work).await;
                Err(cancelled())
            }
        };
        if result.is_err() || call.cancel.is_cancelled() {
            // A failed or cancelled call leaves nothing behind: its partial images may show a
            // prompt that was then refused. They are counted before they go.
            let partials = take_partials();
            for partial in &partials {
                let _ = self.store.remove(&partial.name).await;
            }
            seen.lock().unwrap_or_else(|e| e.into_inner()).partials = partials;
        }
        if call.cancel.is_cancelled() {
            tracing::info!(provider = ?name, elapsed_ms = started.elapsed().as_millis() as u64, "call cancelled");
            let e = cancelled();
            return Err((fail(e.clone()), Some(e)));
        }
        let result = result.map_err(|e| (fail(e.clone()), Some(e)))?;
        tracing::info!(
            provider = ?name,
            model = ?result.model,
            images = result.images.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "provider answered"
        );
        Ok(result)
    }

    /// Saves what a provider returned, all or nothing, and records it in the cache.
    async fn save(
        &self,
        name: &str,
        saving: Saving<'_>,
        call: &CallContext,
        result: GenerateResult,
        partials: Vec<StoredImage>,
    ) -> Result<Generation, ToolError> {
        call.progress.phase("saving");
        let model_label = self.metric_model(name, &result.model);
        let how = Provenance {
            caller: call.origin.caller.clone(),
            tool: call.origin.tool.clone(),
            prompt: saving.prompt.to_string(),
            name_hint: saving.name_hint.map(str::to_string),
            prompt_sent: saving.prompt_sent.map(str::to_string),
            preset: saving.preset.map(str::to_string),
            revised_prompt: result.revised_prompt.clone(),
            provider: Some(name.to_string()),
            model: Some(result.model.clone()),
            params: result.sent.clone(),
            usage: result.usage.clone(),
            request_id: result.request_id.clone(),
            inputs: saving.inputs,
            notes: Vec::new(),
            embed_metadata: self.output().embed_metadata,
            filename: saving.filename.map(str::to_string),
        };
        // All at once: each save waits on the disk or the network, not on the others.
        let saves = result.images.iter().map(|img| self.store.save(img, &how));
        let outcomes = futures::future::join_all(saves).await;
        let mut saved = Vec::with_capacity(outcomes.len());
        let mut failure = None;
        for (outcome, img) in outcomes.into_iter().zip(result.images) {
            match outcome {
                Ok(stored) => saved.push((stored, img)),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            // All or nothing: the call fails, so none of its images stays behind.
            for (stored, _) in &saved {
                let _ = self.store.remove(&stored.name).await;
            }
            for partial in &partials {
                let _ = self.store.remove(&partial.name).await;
            }
            return Err(ToolError::storage(format!(
                "the image was generated but could not be saved: {e}"
            )));
        }
        metrics::counter!(
            crate::telemetry::IMAGE_BYTES,
            "provider" => name.to_string(),
            "model" => model_label
        )
        .increment(saved.iter().map(|(stored, _)| stored.bytes).sum());
        if let Some(key) = &saving.cache_key {
            let entry = cache::Entry::new(
                saved.iter().map(|(s, _)| s.name.clone()).collect(),
                result.model.clone(),
                result.request_id.clone(),
                result.revised_prompt.clone(),
                result.sent.clone(),
            );
            // The images are saved and the call has succeeded: a cache that cannot be written
            // costs a later hit, never this result.
            let json = serde_json::to_vec(&entry).unwrap_or_default();
            if let Err(e) = self.store.put_cache_entry(key, json).await {
                tracing::warn!("cannot record the call in the cache: {e}");
            }
        }
        let notes = saving
            .filename
            .map(|asked| {
                saved
                    .iter()
                    .filter_map(|(stored, _)| {
                        crate::storage::filename::rename_note(asked, &stored.name)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Generation {
            provider: name.to_string(),
            model: result.model,
            images: saved,
            partials,
            prompt: saving.prompt.to_string(),
            prompt_sent: saving.prompt_sent.map(str::to_string),
            preset: saving.preset.map(str::to_string),
            revised_prompt: result.revised_prompt,
            usage: result.usage.and_then(|u| serde_json::to_value(u).ok()),
            request_id: result.request_id,
            sent: result.sent,
            requested_model: None,
            notes,
            route: Vec::new(),
            cached: None,
            cost: None,
        })
    }
}

/// What a finished call settles its budget hold with: what it cost when billed (the estimate
/// when the cost is unknown), possibly billed when sent and never answered, else nothing.
fn settlement(charge: &Charge, estimate_usd: Option<f64>) -> Settlement {
    match charge.billing {
        Billing::Billed => Settlement::Billed(charge.cost.usd.or(estimate_usd).unwrap_or(0.0)),
        Billing::NotBilled => Settlement::NotBilled,
        Billing::PossiblyBilled => Settlement::PossiblyBilled,
    }
}

/// The providers one call may go to, in order.
#[derive(Debug, Clone)]
struct Plan {
    providers: Vec<String>,
    on_policy: bool,
}

/// A call that may be routed, with what it needs.
enum RoutedCall<'a> {
    Generate(&'a GenerateParams),
    Edit(&'a EditParams, &'a EditInputs),
}

/// How one provider's attempt at a routed call ended, when it did not serve it.
enum Attempted {
    /// Refused before anything was sent: this provider (or its model) cannot do what was asked.
    Refused(ToolError),
    /// The provider was called and failed.
    Failed(ToolError),
}

/// `error` with what the providers before it did, so a failure after fallbacks says all.
fn with_route(mut error: ToolError, steps: &[RouteStep]) -> ToolError {
    let earlier: Vec<String> = steps.iter().filter_map(RouteStep::note).collect();
    if !earlier.is_empty() {
        error.message = format!("{} (before it: {})", error.message, earlier.join("; "));
    }
    error
}

/// A checked request and what its result should say, from [`Engine::prepare`].
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The provider that will serve it.
    pub provider_name: String,
    /// That provider.
    pub provider: Arc<dyn ImageProvider>,
    /// The request, for the model that will be asked.
    pub request: GenerateRequest,
    /// The model the call asked for (maybe an alias).
    pub requested_model: String,
    /// Replacements, deprecations and dropped parameters, for the result.
    pub notes: Vec<String>,
    /// Sent once instead when the provider says the model does not exist.
    pub fallback: Option<Fallback>,
}

/// The replacement request of a model that a compatible server may no longer serve.
#[derive(Debug, Clone)]
pub struct Fallback {
    /// The request for the replacement.
    pub request: GenerateRequest,
    /// The note the result carries when it was used.
    pub note: String,
}

impl Prepared {
    /// `generation` with this call's notes, and the model it asked for when another served it.
    fn finish(self, mut generation: Generation) -> Generation {
        let mut notes = self.notes;
        if let Some(f) = self.fallback {
            if generation.model == f.request.model && f.request.model != self.request.model {
                notes.push(f.note);
            }
        }
        if generation.model != self.requested_model {
            generation.requested_model = Some(self.requested_model);
        }
        for note in &notes {
            tracing::info!(model = ?generation.model, note = ?note, "result note");
        }
        // The saving's own notes (a file name not used as asked) come after the model's.
        notes.append(&mut generation.notes);
        generation.notes = notes;
        generation
    }
}

/// The images of an edit, read from wherever the call named them.
#[derive(Debug, Clone, Default)]
pub struct EditInputs {
    /// The images; the first is the one edited.
    pub images: Vec<InputImage>,
    /// The mask.
    pub mask: Option<InputImage>,
    /// The markup layer.
    pub markup: Option<InputImage>,
}

/// Checks `request`; with `lenient`, drops each parameter the model refuses (with a note)
/// until the request passes, so a replacement model serves what it can.
fn check_or_drop(
    request: &mut GenerateRequest,
    caps: &imagegen_providers::ModelCapabilities,
    operation: Operation,
    lenient: bool,
    notes: &mut Vec<String>,
) -> Result<(), ProviderError> {
    // Each round clears one parameter, and there are fewer than this many.
    for _ in 0..Param::ALL.len() + 1 {
        let err = match validate::check_for(request, caps, operation) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let param = err.param.as_deref().and_then(|name| {
            request.options.params_set().into_iter().find(|p| {
                p.as_str() == name
                    || (name == "partial_images" && *p == Param::Stream)
                    || (name == "svg.model" && *p == Param::Svg)
            })
        });
        match param {
            Some(param) if lenient => {
                notes.push(format!(
                    "`{}` was dropped: {}",
                    err.param.as_deref().unwrap_or(param.as_str()),
                    err.message
                ));
                request.options.clear(param);
            }
            _ => return Err(err),
        }
    }
    validate::check_for(request, caps, operation)
}

/// Turns provider events into progress phases (and metrics) until the provider is done;
/// partial images are saved as they come, so the progress message can link to each.
async fn forward_events(
    mut received: tokio::sync::mpsc::UnboundedReceiver<ProviderEvent>,
    call: &CallContext,
    store: &ImageStore,
    prompt: &str,
    seen: &Mutex<Seen>,
    provider: &str,
) {
    let progress = &call.progress;
    while let Some(event) = received.recv().await {
        crate::telemetry::count_event(provider, &event);
        match event {
            ProviderEvent::Queued { reason } => {
                progress.phase(format!("waiting for a slot ({reason})"))
            }
            ProviderEvent::Requesting { attempt, key } => {
                {
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    seen.requested = true;
                    seen.key = key.or(seen.key.take());
                }
                match attempt {
                    1 => progress.phase("requesting"),
                    n => progress.phase(format!("requesting (attempt {n})")),
                }
            }
            ProviderEvent::Retrying {
                attempt,
                delay,
                reason,
            } => progress.phase(format!(
                "retry {attempt} in {:.1} s because {reason}",
                delay.as_secs_f64()
            )),
            ProviderEvent::SwitchingKey { from, reason } => progress.phase(format!(
                "switching from key {from} to another key: {reason}"
            )),
            ProviderEvent::Receiving => progress.phase("receiving"),
            ProviderEvent::PartialImage { index, image } => {
                let how = Provenance {
                    caller: call.origin.caller.clone(),
                    tool: call.origin.tool.clone(),
                    prompt: prompt.to_string(),
                    name_hint: Some(format!("partial {} {prompt}", index + 1)),
                    notes: vec![format!("partial image {} of a streamed call", index + 1)],
                    ..Provenance::default()
                };
                match store.save(&image, &how).await {
                    Ok(stored) => {
                        progress.phase(format!(
                            "partial image {} received: {}",
                            index + 1,
                            stored.uri
                        ));
                        seen.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .partials
                            .push(stored);
                    }
                    // A partial is a courtesy: failing to keep one never fails the call.
                    Err(e) => tracing::warn!("cannot save a partial image: {e}"),
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CliOverrides;

    const SENTINEL: &str = "sk-SENTINEL-engine-0123456789abcdef";

    fn engine(toml: &str) -> Engine {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("imagegen.toml");
        std::fs::write(&file, toml).unwrap();
        let env = [
            ("HOME", dir.path().to_str().unwrap()),
            ("XDG_DATA_HOME", dir.path().to_str().unwrap()),
        ];
        let loaded = LoadedConfig::load_from(&CliOverrides::default(), env, dir.path()).unwrap();
        Engine::from_config(&loaded).unwrap()
    }

    fn params(prompt: &str) -> GenerateParams {
        GenerateParams {
            prompt: prompt.into(),
            ..GenerateParams::default()
        }
    }

    const OPENAI_WITH_DEFAULTS: &str = r#"
default_provider = "openai"
[defaults]
moderation = "low"
style = "vivid"
quality = "high"
[providers.openai]
kind = "openai"
api_key = "sk-SENTINEL-engine-0123456789abcdef"
"#;

    /// An OpenAI-compatible server (not OpenAI itself), which may still serve shut-down models.
    const COMPATIBLE: &str = "base_url = \"http://127.0.0.1:9/v1\"\n";

    #[test]
    fn config_defaults_the_model_does_not_take_are_dropped_not_refused() {
        let e = engine(OPENAI_WITH_DEFAULTS);
        let gpt = e.prepare(&params("x")).unwrap().request;
        assert_eq!(gpt.model, "gpt-image-2.6-flare");
        assert_eq!(gpt.options.moderation.as_deref(), Some("low"));
        assert_eq!(gpt.options.quality.as_deref(), Some("high"));
        assert_eq!(gpt.options.style, None, "GPT image models take no style");

        let e = engine(&format!("{OPENAI_WITH_DEFAULTS}{COMPATIBLE}"));
        let mut p = params("x");
        p.model = Some("dall-e-3".into());
        p.options.quality = Some("hd".into());
        let dalle = e.prepare(&p).unwrap().request;
        assert_eq!(
            dalle.options.moderation, None,
            "dall-e-3 rejects moderation"
        );
        assert_eq!(dalle.options.style.as_deref(), Some("vivid"));
    }

    #[test]
    fn a_shut_down_model_goes_to_its_replacement_without_what_it_does_not_take() {
        let e = engine(OPENAI_WITH_DEFAULTS);
        let mut p = params("x");
        p.model = Some("dall-e-3".into());
        p.options.quality = Some("hd".into());
        p.options.style = Some("natural".into());
        p.options.size = Some("1792x1024".into());
        let prepared = e.prepare(&p).unwrap();
        let r = &prepared.request;
        assert_eq!(r.model, "gpt-image-2.6-flare");
        assert_eq!(
            (r.options.style.as_deref(), r.options.size.as_deref()),
            (None, Some("1792x1024"))
        );
        assert_eq!(
            r.options.quality.as_deref(),
            Some("high"),
            "the default applies once `hd` is dropped"
        );
        let notes = prepared.notes.join("\n");
        assert!(notes.contains("`dall-e-3` was shut down on 2026-05-12; the call went to its replacement `gpt-image-2.6-flare`"), "{notes}");
        assert!(
            notes.contains("`quality` was dropped") && notes.contains("`style` was dropped"),
            "{notes}"
        );
        assert!(prepared.fallback.is_none());

        let refuse = engine(&format!(
            "{OPENAI_WITH_DEFAULTS}[catalog]\non_shutdown = \"refuse\"\n"
        ));
        p.model = Some("gpt-image-1.5".into());
        let err = refuse.prepare(&p).unwrap_err();
        assert_eq!(
            (err.kind.as_str(), err.param.as_deref()),
            ("invalid_request", Some("model"))
        );
        assert!(
            err.message.contains("shut down on 2026-12-01")
                && err.message.contains("`gpt-image-2.6-flare`"),
            "{}",
            err.message
        );
        assert!(
            refuse.refused_defaults().is_empty(),
            "the default model is current"
        );
        let stale = engine(&format!("{OPENAI_WITH_DEFAULTS}model = \"gpt-image-1.5\"\n[catalog]\non_shutdown = \"refuse\"\n"));
        assert_eq!(stale.refused_defaults().len(), 1);
        assert!(stale.lifecycle_warnings()[0].contains("`gpt-image-1.5`, which is shut down on 2026-12-01; use `gpt-image-2.6-flare` instead"), "{:?}", stale.lifecycle_warnings());
    }

    #[test]
    fn a_compatible_server_gets_the_shut_down_model_with_its_replacement_as_fallback() {
        let e = engine(&format!("{OPENAI_WITH_DEFAULTS}{COMPATIBLE}"));
        let mut p = params("x");
        p.model = Some("gpt-image-1.5".into());
        let prepared = e.prepare(&p).unwrap();
        assert_eq!(prepared.request.model, "gpt-image-1.5");
        assert!(
            prepared.notes[0].contains("sent as asked"),
            "{:?}",
            prepared.notes
        );
        let fallback = prepared.fallback.unwrap();
        assert_eq!(fallback.request.model, "gpt-image-2.6-flare");
        assert!(fallback.note.contains("replacement `gpt-image-2.6-flare`"));
    }

    #[test]
    fn aliases_name_models_and_configuration_overrides_them() {
        let e = engine(OPENAI_WITH_DEFAULTS);
        let mut p = params("x");
        p.model = Some("best".into());
        let prepared = e.prepare(&p).unwrap();
        assert_eq!(prepared.request.model, "gpt-image-2.6-sunburst");
        assert_eq!(prepared.requested_model, "best");
        let e = engine(&format!("{OPENAI_WITH_DEFAULTS}model = \"fast\"\n[providers.openai.aliases]\nfast = \"gpt-image-2\"\n"));
        assert_eq!(
            e.prepare(&params("x")).unwrap().request.model,
            "gpt-image-2"
        );
        let mock = engine("[providers.mock]\nkind = \"mock\"\n");
        p.model = Some("fast".into());
        assert_eq!(mock.prepare(&p).unwrap().request.model, "mock-image-1");
    }

    #[test]
    fn a_deprecated_model_works_with_a_note_and_a_warning() {
        let e = engine(&format!("{OPENAI_WITH_DEFAULTS}model = \"gpt-image-2\"\n[models.\"gpt-image-2\"]\nshutdown_date = \"2099-01-01\"\nreplacement = \"gpt-image-2.6-flare\"\n"));
        let prepared = e.prepare(&params("x")).unwrap();
        assert_eq!(prepared.request.model, "gpt-image-2");
        assert!(
            prepared.notes[0]
                .starts_with("`gpt-image-2` is deprecated: shuts down on 2099-01-01 (in "),
            "{:?}",
            prepared.notes
        );
        assert!(
            prepared.notes[0].ends_with("days); switch to `gpt-image-2.6-flare`"),
            "{:?}",
            prepared.notes
        );
        let warnings = e.lifecycle_warnings();
        assert!(
            warnings.iter().any(|w| w.starts_with(
                "the default model of provider `openai` is `gpt-image-2`, which is deprecated"
            )),
            "{warnings:?}"
        );
    }

    #[test]
    fn explicit_parameters_the_model_does_not_take_are_refused_by_name() {
        let e = engine(OPENAI_WITH_DEFAULTS);
        let mut p = params("x");
        p.options.style = Some("natural".into());
        let err = e.prepare(&p).unwrap_err();
        assert_eq!(
            (err.kind.as_str(), err.param.as_deref()),
            ("invalid_request", Some("style"))
        );
        assert_eq!(err.provider.as_deref(), Some("openai"));
        assert_eq!(err.model.as_deref(), Some("gpt-image-2.6-flare"));
    }

    #[test]
    fn an_invalid_default_value_is_blamed_on_the_configuration() {
        let e = engine("[defaults]\nsize = \"1000x1000\"\n[providers.mock]\nkind = \"mock\"\n");
        let mut p = params("x");
        p.model = Some("gpt-image-2".into());
        let err = e.prepare(&p).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("size"));
        assert!(err.message.contains("[defaults]"), "{}", err.message);
    }

    #[test]
    fn per_provider_defaults_win_over_global_ones() {
        let e = engine(
            "[defaults]\nsize = \"64x64\"\nquality = \"low\"\n[providers.mock.defaults]\nsize = \"32x32\"\n",
        );
        let r = e.prepare(&params("x")).unwrap().request;
        assert_eq!(
            (r.options.size.as_deref(), r.options.quality.as_deref()),
            (Some("32x32"), Some("low"))
        );
    }

    #[test]
    fn debug_output_never_holds_the_key() {
        let e = engine(OPENAI_WITH_DEFAULTS);
        let debug = format!("{e:?}");
        assert!(debug.contains("openai"));
        assert!(
            !debug.contains(SENTINEL) && !debug.contains("SENTINEL-engine"),
            "{debug}"
        );
    }
}
