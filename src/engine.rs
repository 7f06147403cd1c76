//! The one path every generation takes, from the CLI or an MCP tool: pick the provider and
//! model, merge defaults, check the request against the model's capabilities before any paid
//! call, generate, and save the images.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use imagegen_providers::{
    keys::KeyPool,
    mock::{MockProvider, MockSettings},
    openai::{OpenAiProvider, OpenAiSettings},
    validate, Catalog, EditRequest, ErrorKind, Events, GenerateRequest, GenerateResult,
    GeneratedImage, ImageFormat, ImageProvider, InputImage, Param, ProviderError, ProviderEvent,
    VariationRequest,
};
use schemars::JsonSchema;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{Defaults, Delivery, LoadedConfig, OpenAiConfig, OutputConfig, ProviderConfig},
    error::ToolError,
    inputs::InputPolicy,
    progress::Progress,
    storage::{ImageStore, StoredImage},
};

/// The parameters of `generate_image` (and of `imagegen-mcp generate`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct GenerateParams {
    /// What to draw: a full description of the image. Up to 32,000 characters for GPT image
    /// models (4,000 for dall-e-3).
    pub prompt: String,
    /// Which configured provider to use (see `list_providers`); default: the configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Model name, e.g. `gpt-image-2.6-flare`, `gpt-image-2.6-sunburst` or an alias (`fast`, `best`); default: the provider's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `WIDTHxHEIGHT` such as `1024x1024`, `1536x1024` (landscape), `1024x1536` (portrait), or
    /// `auto`. gpt-image-2 also takes custom sizes (multiples of 16). See `list_providers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// `low`, `medium`, `high` or `auto` for GPT image models; `standard` or `hd` for dall-e-3.
    /// Higher quality is slower and costs more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    /// How many images to make (1-10 for GPT image models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// `png` (default), `jpeg` or `webp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
    /// 0-100 compression for `jpeg` and `webp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_compression: Option<u8>,
    /// `transparent` (needs png or webp), `opaque` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<String>,
    /// `vivid` or `natural` (dall-e-3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// `auto` (default) or `low` content moderation (GPT image models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<String>,
    /// Seed for reproducible output, where the provider supports it (the mock does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// 0-3 partial images streamed while the image is made (GPT image models, n = 1): each
    /// arrives as a progress notification linking to it, before the final image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_images: Option<u8>,
    /// How to return images: `preview` (small inline preview + link to the full image, the
    /// default), `link` (no inline image), or `full` (the original inline when it fits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

/// The parameters of `edit_image` (and of `imagegen-mcp edit`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct EditParams {
    /// What the result should show or what to change ("same scene at night", "remove the car").
    pub prompt: String,
    /// 1-16 input images (1 for dall-e-2): each the `imagegen://images/...` URI of an image
    /// this server made, a file path inside the allowed directories (relative paths are
    /// relative to the output directory), a `data:image/...;base64,` URL, or base64 data.
    pub images: Vec<String>,
    /// A PNG with alpha, the size of the first image: its transparent pixels mark what to
    /// change. Same forms as `images`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// `high` or `low`: how closely to keep the inputs' details such as faces (not on gpt-image-1-mini).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_fidelity: Option<String>,
    /// Which configured provider to use; default: the configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Model name; default: the provider's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Output size `WIDTHxHEIGHT` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// `low`, `medium`, `high` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    /// How many results to make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// `png` (default), `jpeg` or `webp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
    /// 0-100 compression for `jpeg` and `webp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_compression: Option<u8>,
    /// `transparent` (needs png or webp), `opaque` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<String>,
    /// `auto` or `low` content moderation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<String>,
    /// Seed, where the provider supports it (the mock does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// 0-3 partial images streamed before the final one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_images: Option<u8>,
    /// `preview` (default), `link` or `full`, as for `generate_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

impl EditParams {
    /// The parameters an edit shares with a generation, for the same checks and defaults.
    pub fn as_generate(&self) -> GenerateParams {
        GenerateParams {
            prompt: self.prompt.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            size: self.size.clone(),
            quality: self.quality.clone(),
            n: self.n,
            output_format: self.output_format.clone(),
            output_compression: self.output_compression,
            background: self.background.clone(),
            style: None,
            moderation: self.moderation.clone(),
            seed: self.seed,
            partial_images: self.partial_images,
            delivery: self.delivery,
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
    /// The prompt as the provider rewrote it.
    pub revised_prompt: Option<String>,
    /// Token usage, when reported.
    pub usage: Option<serde_json::Value>,
    /// The provider's request id.
    pub request_id: Option<String>,
}

/// One configured provider with its effective defaults.
#[derive(Debug, Clone)]
pub struct ProviderEntry {
    /// The provider.
    pub provider: Arc<dyn ImageProvider>,
    /// `[defaults]` overlaid with the provider's own defaults.
    pub defaults: Defaults,
    /// The provider's API keys and what is known about each (OpenAI providers only).
    pub keys: Option<Arc<KeyPool>>,
    /// What the pool was built from.
    pool_inputs: PoolInputs,
    /// The provider's own bound on calls in flight.
    slots: Option<Slots>,
}

/// What a key pool is built from: a hash of its keys and their sources, the recheck interval
/// and the per-key request budget. Equal inputs keep the running pool across a reload.
type PoolInputs = ([u8; 32], u64, Option<u32>);

/// A bound on calls in flight: a semaphore and the limit it was made with.
///
/// Reloads keep the semaphore while the limit stays the same, so calls started before a
/// reload still count against the limit after it.
#[derive(Debug, Clone)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    limit: usize,
}

impl Slots {
    /// `previous` when it has the same limit, else a fresh bound of `limit`.
    fn keep_or_new(previous: Option<&Slots>, limit: usize) -> Self {
        match previous {
            Some(p) if p.limit == limit => p.clone(),
            _ => Self {
                semaphore: Arc::new(Semaphore::new(limit)),
                limit,
            },
        }
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.semaphore.available_permits()
    }

    /// The most calls that may hold a slot at once.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// What a call carries besides its parameters: where its progress goes and what cancels it.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// Phases of the call, for progress notifications.
    pub progress: Progress,
    /// Cancelled when the client gives up: the upstream request and any wait end at once.
    pub cancel: CancellationToken,
}

/// One `reqwest::Client` per distinct client-level settings, kept across reloads.
///
/// Timeouts on connect (and proxies, later) live on the client, not on each request, and a
/// client owns its connection pool: reusing it means a key rotation costs no new TLS handshakes.
#[derive(Debug, Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<u64, reqwest::Client>>,
}

impl ClientCache {
    /// The client for these settings, built on first use.
    pub fn client(&self, connect_timeout_s: u64) -> reqwest::Result<reqwest::Client> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&connect_timeout_s) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(connect_timeout_s))
            .user_agent(concat!("imagegen-mcp/", env!("CARGO_PKG_VERSION")))
            .build()?;
        clients.insert(connect_timeout_s, client.clone());
        Ok(client)
    }

    /// How many distinct clients exist.
    pub fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no client was built yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything a call needs, built once from a loaded configuration.
#[derive(Debug)]
pub struct Engine {
    providers: BTreeMap<String, ProviderEntry>,
    default_provider: String,
    catalog: Arc<Catalog>,
    output: OutputConfig,
    store: ImageStore,
    /// `[limits] max_in_flight`: upstream calls in flight across all providers.
    slots: Slots,
    inputs: InputPolicy,
    max_batch_items: usize,
}

fn overlay(base: &Defaults, top: &Defaults) -> Defaults {
    Defaults {
        size: top.size.clone().or_else(|| base.size.clone()),
        quality: top.quality.clone().or_else(|| base.quality.clone()),
        output_format: top.output_format.or(base.output_format),
        output_compression: top.output_compression.or(base.output_compression),
        background: top.background.clone().or_else(|| base.background.clone()),
        style: top.style.clone().or_else(|| base.style.clone()),
        moderation: top.moderation.clone().or_else(|| base.moderation.clone()),
        partial_images: top.partial_images.or(base.partial_images),
    }
}

/// The key pool of provider `name`: the previous engine's pool when nothing it was built from
/// changed (so every cooldown and disabled key stays, even updates from calls still running on
/// the old engine), else a new pool that carries over what the old one knew about keys that stay.
fn key_pool(
    name: &str,
    loaded: &LoadedConfig,
    config: &OpenAiConfig,
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

/// Builds the provider named `name` from its configuration.
fn build_provider(
    name: &str,
    cfg: &ProviderConfig,
    loaded: &LoadedConfig,
    catalog: &Arc<Catalog>,
    previous: Option<&Engine>,
    clients: &ClientCache,
) -> anyhow::Result<ProviderEntry> {
    let defaults = overlay(&loaded.config.defaults, cfg.defaults());
    let previous_slots = previous
        .and_then(|e| e.providers.get(name))
        .and_then(|e| e.slots.as_ref());
    let slots = cfg
        .max_in_flight()
        .map(|limit| Slots::keep_or_new(previous_slots, limit));
    Ok(match cfg {
        ProviderConfig::Mock(m) => ProviderEntry {
            provider: Arc::new(MockProvider::new({
                let mut s = MockSettings::default();
                s.model = m.model.clone();
                s.latency = Duration::from_millis(m.latency_ms);
                s.fail_rate = m.fail_rate;
                s.fail_with = m.fail_with;
                s.fail_sequence = MockSettings::parse_fail_sequence(&m.fail_sequence)
                    .map_err(|e| anyhow::anyhow!("providers.{name}.fail_sequence: {e}"))?;
                s.catalog = catalog.clone();
                s
            })),
            defaults,
            keys: None,
            pool_inputs: ([0; 32], 0, None),
            slots,
        },
        ProviderConfig::Openai(o) => {
            let base_url = url::Url::parse(&o.base_url).map_err(|e| {
                anyhow::anyhow!(
                    "providers.{name}.base_url `{}` is not a URL: {e}",
                    o.base_url
                )
            })?;
            let (pool, pool_inputs) = key_pool(name, loaded, o, previous);
            let mut s = OpenAiSettings::new(base_url, None);
            s.keys = pool.clone();
            s.organization = o.organization.clone();
            s.project = o.project.clone();
            s.model = o.model.clone();
            if let Some(models) = &o.models {
                s.models = models.clone();
            }
            s.timeout = Duration::from_secs(o.timeout_s);
            s.max_retries = o.max_retries;
            s.retry_base = Duration::from_millis(o.retry_base_ms);
            s.retry_max = Duration::from_millis(o.retry_max_ms);
            s.retry_after_cap = Duration::from_secs(o.retry_after_cap_s);
            s.retry_on_timeout = o.retry_on_timeout;
            s.deadline = Duration::from_secs(o.deadline_s);
            s.download_hosts = o.download_hosts.clone();
            s.max_response_bytes = o.max_response_mb.saturating_mul(1024 * 1024);
            s.catalog = catalog.clone();
            let client = clients.client(o.connect_timeout_s)?;
            ProviderEntry {
                provider: Arc::new(OpenAiProvider::new(s, client)),
                defaults,
                keys: Some(pool),
                pool_inputs,
                slots,
            }
        }
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
        let mut providers = BTreeMap::new();
        for (name, cfg) in config.providers.iter().filter(|(_, c)| c.enabled()) {
            let entry = build_provider(name, cfg, loaded, &catalog, previous, clients)?;
            providers.insert(name.clone(), entry);
        }
        let default_provider = loaded.default_provider().to_string();
        anyhow::ensure!(
            providers.contains_key(&default_provider),
            "default_provider `{default_provider}` is not an enabled provider"
        );
        let store = ImageStore::new(loaded.output_dir());
        const MB: u64 = 1_000_000;
        Ok(Self {
            inputs: InputPolicy::new(
                &store,
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
            slots: Slots::keep_or_new(previous.map(|e| &e.slots), config.limits.max_in_flight),
        })
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

    /// Resolves the provider and model and builds a checked request; no money is spent here.
    ///
    /// A parameter the caller set that the model does not take is refused; a configured
    /// default the model does not take is left out.
    pub fn prepare(
        &self,
        params: &GenerateParams,
    ) -> Result<(String, Arc<dyn ImageProvider>, GenerateRequest), ToolError> {
        let name = params.provider.as_deref().unwrap_or(&self.default_provider);
        let entry = self.entry(name)?;
        let provider = entry.provider.clone();
        let model = params
            .model
            .clone()
            .unwrap_or_else(|| provider.default_model().to_string());
        let caps = provider.capabilities(&model);
        let fail = |e| ToolError::from_provider(e, Some(name), Some(&model));

        let mut request = GenerateRequest::new(params.prompt.clone(), model.clone());
        request.size = params.size.clone();
        request.quality = params.quality.clone();
        request.n = params.n.unwrap_or(1);
        request.output_format = params
            .output_format
            .as_deref()
            .map(|f| f.parse::<ImageFormat>())
            .transpose()
            .map_err(|e| ToolError::invalid_param("output_format", e))?;
        request.output_compression = params.output_compression;
        request.background = params.background.clone();
        request.style = params.style.clone();
        request.moderation = params.moderation.clone();
        request.seed = params.seed;
        request.partial_images = params.partial_images.filter(|&n| n > 0);
        validate::check(&request, &caps).map_err(fail)?;

        let d = &entry.defaults;
        let defaults: [(Param, bool); 8] = [
            (Param::Size, request.size.is_none() && d.size.is_some()),
            (
                Param::Quality,
                request.quality.is_none() && d.quality.is_some(),
            ),
            (
                Param::OutputFormat,
                request.output_format.is_none() && d.output_format.is_some(),
            ),
            (
                Param::OutputCompression,
                request.output_compression.is_none() && d.output_compression.is_some(),
            ),
            (
                Param::Background,
                request.background.is_none() && d.background.is_some(),
            ),
            (Param::Style, request.style.is_none() && d.style.is_some()),
            (
                Param::Moderation,
                request.moderation.is_none() && d.moderation.is_some(),
            ),
            // Streaming makes one image: a default never turns a call for several into an error.
            (
                Param::Stream,
                params.partial_images.is_none()
                    && d.partial_images.is_some_and(|n| n > 0)
                    && request.n == 1,
            ),
        ];
        for (param, applies) in defaults {
            if !applies || !caps.takes(param) {
                continue;
            }
            match param {
                Param::Size => request.size = d.size.clone(),
                Param::Quality => request.quality = d.quality.clone(),
                Param::OutputFormat => request.output_format = d.output_format,
                Param::OutputCompression => request.output_compression = d.output_compression,
                Param::Background => request.background = d.background.clone(),
                Param::Style => request.style = d.style.clone(),
                Param::Moderation => request.moderation = d.moderation.clone(),
                Param::Stream => request.partial_images = d.partial_images,
                _ => {}
            }
        }
        validate::check(&request, &caps).map_err(|mut e| {
            e.message
                .push_str(" (the value comes from the configured [defaults])");
            fail(e)
        })?;
        Ok((name.to_string(), provider, request))
    }

    /// Upstream calls in flight now, all providers together, and the limit.
    pub fn in_flight(&self) -> (usize, usize) {
        (self.slots.in_flight(), self.slots.limit())
    }

    /// Waits for a slot under the global limit and the provider's own, reporting the wait.
    async fn acquire_slots(
        &self,
        entry: &ProviderEntry,
        progress: &Progress,
    ) -> Vec<OwnedSemaphorePermit> {
        let mut permits = Vec::with_capacity(2);
        // The provider's bound first: a call queued for a busy provider holds no global slot
        // that a call to an idle provider could use.
        for (slots, whose) in [
            (entry.slots.as_ref(), "the provider's"),
            (Some(&self.slots), "the server's"),
        ] {
            let Some(slots) = slots else { continue };
            let semaphore = slots.semaphore.clone();
            let permit = match semaphore.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    progress.phase(format!(
                        "waiting for a slot ({whose} limit of {} calls in flight is reached)",
                        slots.limit
                    ));
                    match semaphore.acquire_owned().await {
                        Ok(permit) => permit,
                        // Semaphores here are never closed.
                        Err(_) => continue,
                    }
                }
            };
            permits.push(permit);
        }
        permits
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
        let (name, provider, request) = self.prepare(params)?;
        let model = request.model.clone();
        let upstream =
            |events: Events| async move { provider.generate_with_events(&request, &events).await };
        self.run(&name, &model, &params.prompt, call, upstream)
            .await
    }

    /// Edits images (`params.images`, already read by [`Engine::inputs`]) and saves the results.
    pub async fn edit(
        &self,
        params: &EditParams,
        images: Vec<InputImage>,
        mask: Option<InputImage>,
        call: &CallContext,
    ) -> Result<Generation, ToolError> {
        call.progress.phase("validating");
        let (name, provider, generate) = self.prepare(&params.as_generate())?;
        let model = generate.model.clone();
        let fail = |e| ToolError::from_provider(e, Some(&name), Some(&model));
        let mut request = EditRequest::new(generate.prompt, generate.model.clone(), images);
        request.mask = mask;
        request.size = generate.size;
        request.quality = generate.quality;
        request.n = generate.n;
        request.output_format = generate.output_format;
        request.output_compression = generate.output_compression;
        request.background = generate.background;
        request.moderation = generate.moderation;
        request.seed = generate.seed;
        request.partial_images = generate.partial_images;
        request.input_fidelity = params.input_fidelity.clone();
        let caps = provider.capabilities(&model);
        validate::check_edit(&request, &caps).map_err(fail)?;
        validate::check_edit_images(&request).map_err(fail)?;
        let upstream =
            |events: Events| async move { provider.edit_with_events(&request, &events).await };
        self.run(&name, &model, &params.prompt, call, upstream)
            .await
    }

    /// Makes variations of `image` and saves them; only models whose catalog entry says so.
    pub async fn variation(
        &self,
        params: &VariationParams,
        image: InputImage,
        call: &CallContext,
    ) -> Result<Generation, ToolError> {
        call.progress.phase("validating");
        let name = params.provider.as_deref().unwrap_or(&self.default_provider);
        let entry = self.entry(name)?;
        let provider = entry.provider.clone();
        let model = params
            .model
            .clone()
            .unwrap_or_else(|| provider.default_model().to_string());
        let fail = |e| ToolError::from_provider(e, Some(name), Some(&model));
        let mut request = VariationRequest::new(model.clone(), image);
        request.size = params.size.clone();
        request.n = params.n.unwrap_or(1);
        let supporting = self.catalog.variation_models();
        validate::check_variation(&request, &provider.capabilities(&model), &supporting)
            .map_err(fail)?;
        validate::check_variation_image(&request).map_err(fail)?;
        let upstream = |_events: Events| async move { provider.create_variation(&request).await };
        self.run(name, &model, "variation", call, upstream).await
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
    /// ending it at once on cancellation, and saving what it returns.
    async fn run<F, Fut>(
        &self,
        name: &str,
        model: &str,
        prompt: &str,
        call: &CallContext,
        upstream: F,
    ) -> Result<Generation, ToolError>
    where
        F: FnOnce(Events) -> Fut,
        Fut: std::future::Future<Output = Result<GenerateResult, ProviderError>>,
    {
        let progress = &call.progress;
        let entry = self.entry(name)?;
        let fail = |e| ToolError::from_provider(e, Some(name), Some(model));
        let cancelled = || {
            fail(ProviderError::new(
                ErrorKind::Cancelled,
                "the call was cancelled by the client; nothing was saved",
            ))
        };
        tracing::info!(provider = %name, %model, "calling the provider");
        let started = std::time::Instant::now();
        let partials = Mutex::new(Vec::<StoredImage>::new());
        let take_partials =
            || std::mem::take(&mut *partials.lock().unwrap_or_else(|e| e.into_inner()));

        let work = async {
            let _permits = self.acquire_slots(entry, progress).await;
            let (events, received) = Events::channel();
            // `events` moves into the call and drops with it, which ends the forwarding.
            let forward = forward_events(received, progress, &self.store, prompt, &partials);
            tokio::join!(upstream(events), forward).0
        };
        let result = tokio::select! {
            result = work => result.map_err(fail),
            () = call.cancel.cancelled() => Err(cancelled()),
        };
        if result.is_err() || call.cancel.is_cancelled() {
            // A failed or cancelled call leaves nothing behind: its partial images may show a
            // prompt that was then refused.
            for partial in take_partials() {
                let _ = self.store.remove(&partial.name);
            }
        }
        if call.cancel.is_cancelled() {
            tracing::info!(provider = %name, elapsed_ms = started.elapsed().as_millis() as u64, "call cancelled");
            return Err(cancelled());
        }
        let result = result?;
        tracing::info!(
            provider = %name,
            model = %result.model,
            images = result.images.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "provider answered"
        );
        progress.phase("saving");
        let store = self.store.clone();
        let label = prompt.to_string();
        let images = result.images;
        let saved = tokio::task::spawn_blocking(move || {
            images
                .into_iter()
                .map(|img| store.save(&img, &label).map(|s| (s, img)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ToolError::storage(format!("saving failed: {e}")))?
        .map_err(|e| {
            ToolError::storage(format!(
                "the image was generated but could not be saved in {}: {e}",
                self.store.dir().display()
            ))
        })?;
        Ok(Generation {
            provider: name.to_string(),
            model: result.model,
            images: saved,
            partials: take_partials(),
            revised_prompt: result.revised_prompt,
            usage: result.usage.and_then(|u| serde_json::to_value(u).ok()),
            request_id: result.request_id,
        })
    }
}

/// Turns provider events into progress phases until the provider is done; partial images are
/// saved as they come, so the progress message can link to each.
async fn forward_events(
    mut received: tokio::sync::mpsc::UnboundedReceiver<ProviderEvent>,
    progress: &Progress,
    store: &ImageStore,
    prompt: &str,
    partials: &Mutex<Vec<StoredImage>>,
) {
    while let Some(event) = received.recv().await {
        match event {
            ProviderEvent::Requesting { attempt: 1 } => progress.phase("requesting"),
            ProviderEvent::Requesting { attempt } => {
                progress.phase(format!("requesting (attempt {attempt})"))
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
                let store = store.clone();
                let label = format!("partial {} {prompt}", index + 1);
                let saved = tokio::task::spawn_blocking(move || store.save(&image, &label)).await;
                match saved {
                    Ok(Ok(stored)) => {
                        progress.phase(format!(
                            "partial image {} received: {}",
                            index + 1,
                            stored.uri
                        ));
                        partials
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(stored);
                    }
                    // A partial is a courtesy: failing to keep one never fails the call.
                    Ok(Err(e)) => tracing::warn!("cannot save a partial image: {e}"),
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

    #[test]
    fn config_defaults_the_model_does_not_take_are_dropped_not_refused() {
        let e = engine(OPENAI_WITH_DEFAULTS);
        let (_, _, gpt) = e.prepare(&params("x")).unwrap();
        assert_eq!(gpt.moderation.as_deref(), Some("low"));
        assert_eq!(gpt.quality.as_deref(), Some("high"));
        assert_eq!(gpt.style, None, "GPT image models take no style");

        let mut p = params("x");
        p.model = Some("dall-e-3".into());
        p.quality = Some("hd".into());
        let (_, _, dalle) = e.prepare(&p).unwrap();
        assert_eq!(dalle.moderation, None, "dall-e-3 rejects moderation");
        assert_eq!(dalle.style.as_deref(), Some("vivid"));
    }

    #[test]
    fn explicit_parameters_the_model_does_not_take_are_refused_by_name() {
        let e = engine(OPENAI_WITH_DEFAULTS);
        let mut p = params("x");
        p.style = Some("natural".into());
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
        let (_, _, r) = e.prepare(&params("x")).unwrap();
        assert_eq!(
            (r.size.as_deref(), r.quality.as_deref()),
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
