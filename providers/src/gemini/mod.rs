//! Google's native image models (`kind = "gemini"`, "Nano Banana") through `generateContent`,
//! on the Gemini API or on Vertex AI.
//!
//! One `POST {base}/v1beta/models/{model}:generateContent` per attempt with the key in
//! `x-goog-api-key`, or on Vertex AI `POST {base}/v1/projects/{project}/locations/{location}/
//! publishers/google/models/{model}:generateContent` with `Authorization: Bearer` and an access
//! token from [`Tokens`] (a file or a command such as `gcloud auth print-access-token`); a 401
//! forgets the token and the attempt is sent once more with a fresh one. `aspect_ratio` and
//! `resolution` become `generationConfig.imageConfig` (`aspectRatio`, `imageSize`); a `WxH`
//! size becomes the nearest ratio and resolution, and `sent` says which. A request makes one
//! image, so `n` above 1 is sent as that many concurrent requests (`sent.requests` says so).
//! Edits send their images as `inlineData` parts. Answers carry images as base64
//! `inlineData` parts, read under the body cap; safety blocks arrive as HTTP 200 and become
//! `content_policy` naming the reason. Errors are classified once, in [`error::parse_error`].

mod config;
mod error;
mod wire;

pub use config::{Config, VertexConfig, DEFAULT_TOKEN_REFRESH_S, STANDARD_ENV};

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use futures_util::future::try_join_all;
use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::SecretString;
use serde_json::{json, Map, Value};

use crate::{
    catalog::SizeRule,
    http::{
        body::{bad, decode_slots, read_capped, read_truncated, too_large, ReadError},
        error::{redacted, transport_error},
        executor::{Attempt, Executor},
        retry::RetryPolicy,
        token::bearer,
        Tokens,
    },
    keys::{KeyPool, PoolKey},
    secret::Scrubber,
    CallOptions, Catalog, EditRequest, GenerateRequest, GenerateResult, GeneratedImage,
    ImageFormat, ImageOptions, ImageProvider, ModelCapabilities, ModelState, Param, ProviderError,
    ProviderEvent, UpstreamModel, Usage,
};

use wire::Answer;

/// The Gemini API's origin.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// The model used when the configuration names none: Nano Banana Pro, the image model whose
/// GA Google itself lists with no shutdown announced.
pub const DEFAULT_MODEL: &str = "gemini-3-pro-image";

/// The current image models advertised when the configuration lists none, newest first.
pub const DEFAULT_MODELS: &[&str] = &[
    "gemini-nano-banana-2.1",
    "gemini-3-pro-image",
    "gemini-3.1-flash-image",
    "gemini-3.1-flash-lite-image",
    "gemini-2.5-flash-image",
];

/// The built-in aliases: `fast` (Nano Banana 2.1, the cheapest current model) and `best`.
pub const ALIASES: &[(&str, &str)] = &[
    ("fast", "gemini-nano-banana-2.1"),
    ("best", "gemini-3-pro-image"),
];

/// What replaces the shut-down Google image models.
const REPLACEMENT: &str = "gemini-nano-banana-2.1";

/// Concurrent requests one call may make: each request makes one image.
pub const MAX_N: u32 = 4;

/// Error bodies are only read for their message.
const ERROR_BODY_CAP: usize = 64 * 1024;

/// A model listing is a few hundred entries; far more is not one.
const MODELS_BODY_CAP: usize = 4 * 1024 * 1024;

/// The instruction sent beside a mask, which `generateContent` has no field for.
const MASK_NOTE: &str = "The last image is a mask of the first: change only where the mask is \
                         transparent and keep everything else as it is.";

/// Where calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The Gemini API (`{base}/v1beta/models/...`).
    GeminiApi {
        /// The origin, `https://generativelanguage.googleapis.com`.
        base_url: url::Url,
    },
    /// Vertex AI (`{base}/v1/projects/{project}/locations/{location}/publishers/google/models/...`).
    Vertex {
        /// The regional origin, `https://{location}-aiplatform.googleapis.com`.
        base_url: url::Url,
        /// The Google Cloud project.
        project: String,
        /// The region, or `global`.
        location: String,
    },
}

impl Endpoint {
    /// The origin requests go to.
    pub fn base_url(&self) -> &url::Url {
        match self {
            Self::GeminiApi { base_url } | Self::Vertex { base_url, .. } => base_url,
        }
    }

    /// `generateContent` of `model` (a leading `models/` is dropped; the name is one
    /// percent-encoded path segment, so no model name can change the path).
    pub fn generate_url(&self, model: &str) -> url::Url {
        let model = model.strip_prefix("models/").unwrap_or(model);
        let mut url = self.base_url().clone();
        let last = format!("{model}:generateContent");
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty();
            match self {
                Self::GeminiApi { .. } => {
                    segments.extend(["v1beta", "models", &last]);
                }
                Self::Vertex {
                    project, location, ..
                } => {
                    segments.extend([
                        "v1",
                        "projects",
                        project,
                        "locations",
                        location,
                        "publishers",
                        "google",
                        "models",
                        &last,
                    ]);
                }
            }
        }
        url
    }
}

/// How to reach one Gemini API or Vertex AI account.
#[derive(Clone)]
#[non_exhaustive]
pub struct GeminiSettings {
    /// Where calls go.
    pub endpoint: Endpoint,
    /// The API keys (`x-goog-api-key`); unused when `tokens` is set.
    pub keys: Arc<KeyPool>,
    /// Access tokens sent as `Authorization: Bearer` instead of a key (Vertex AI).
    pub tokens: Option<Arc<Tokens>>,
    /// The model used when a request names none.
    pub model: String,
    /// The models to advertise.
    pub models: Vec<String>,
    /// Per-attempt timeout, body included.
    pub timeout: Duration,
    /// How retryable failures are retried.
    pub retry: RetryPolicy,
    /// The longest one call may take.
    pub deadline: Duration,
    /// The largest answer accepted, bytes (images arrive inline as base64).
    pub max_response_bytes: usize,
    /// The catalog requests are checked against.
    pub catalog: Arc<Catalog>,
}

impl fmt::Debug for GeminiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiSettings")
            .field("base_url", &redacted(self.endpoint.base_url()))
            .field("vertex", &matches!(self.endpoint, Endpoint::Vertex { .. }))
            .field("keys", &self.keys)
            .field("tokens", &self.tokens)
            .field("model", &self.model)
            .field("retry", &self.retry)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl GeminiSettings {
    /// Settings for `endpoint` with `keys` and every other value at its default.
    pub fn new(endpoint: Endpoint, keys: Arc<KeyPool>) -> Self {
        Self {
            endpoint,
            keys,
            tokens: None,
            model: DEFAULT_MODEL.into(),
            models: DEFAULT_MODELS.iter().map(|m| m.to_string()).collect(),
            timeout: Duration::from_secs(180),
            retry: RetryPolicy::default(),
            deadline: Duration::from_secs(300),
            max_response_bytes: 64 * 1024 * 1024,
            catalog: Arc::new(Catalog::for_kind(catalog_entries())),
        }
    }
}

/// One Google image model's capabilities: ratio-based, one image per request (split by the
/// provider up to [`MAX_N`]), PNG, edits with reference images.
fn google_image(image_size: bool, max_edit_images: u32) -> ModelCapabilities {
    let mut params = vec![Param::Size, Param::AspectRatio, Param::N, Param::Seed];
    if image_size {
        params.push(Param::Resolution);
    }
    ModelCapabilities {
        // Any `WxH` is taken and mapped to the nearest aspectRatio (and imageSize).
        sizes: vec!["1024x1024".into()],
        custom_sizes: Some(SizeRule {
            multiple_of: 1,
            min_side: 64,
            max_side: 8192,
            max_ratio: 8.0,
            min_pixels: 1,
            max_pixels: u64::MAX,
        }),
        qualities: Vec::new(),
        styles: Vec::new(),
        max_n: MAX_N,
        formats: vec![ImageFormat::Png],
        max_prompt_chars: 32_000,
        edit: true,
        max_edit_images,
        variations: false,
        params,
        complexities: Vec::new(),
        gif: None,
        state: ModelState::Active,
        shutdown_date: None,
        replacement: None,
        known: true,
        note: Some(
            "sizes map to the nearest aspect ratio (1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, \
             21:9) and resolution; n above 1 is sent as concurrent requests"
                .into(),
        ),
        extra_params: vec!["personGeneration".into()],
        prices: None,
    }
}

/// The catalog entries of `kind = "gemini"`, as of 2026-12-01 (the reference's reading; an
/// unconfirmed shutdown is not entered as a date: the API's 404 moves the call to the
/// replacement instead, so either reading is handled).
pub fn catalog_entries() -> Vec<(&'static str, ModelCapabilities)> {
    let note = |caps: ModelCapabilities, text: &str| ModelCapabilities {
        note: Some(format!("{text}; {}", caps.note.clone().unwrap_or_default())),
        ..caps
    };
    let gone = |caps: ModelCapabilities, date: &str, replacement: &str| ModelCapabilities {
        shutdown_date: Some(date.into()),
        replacement: Some(replacement.into()),
        ..caps
    };
    vec![
        (
            "gemini-nano-banana-2.1",
            note(
                google_image(true, 14),
                "Nano Banana 2.1 (GA about 2026-10-07, reported by third parties)",
            ),
        ),
        (
            "gemini-3-pro-image",
            note(google_image(true, 14), "Nano Banana Pro"),
        ),
        (
            "gemini-3.1-flash-image",
            ModelCapabilities {
                replacement: Some(REPLACEMENT.into()),
                ..note(
                    google_image(true, 14),
                    "Nano Banana 2; a shutdown on 2026-10-29 is reported by third parties \
                     only: if Google answers 404, gemini-nano-banana-2.1 serves instead",
                )
            },
        ),
        (
            "gemini-3.1-flash-lite-image",
            note(
                google_image(false, 14),
                "Nano Banana 2 Lite (GA unconfirmed)",
            ),
        ),
        (
            "gemini-2.5-flash-image",
            ModelCapabilities {
                state: ModelState::Deprecated,
                ..gone(
                    note(
                        google_image(false, 3),
                        "one snapshot of Google's page said shutdown on 2026-10-02, a wiki says \
                         2027-03-15: if Google answers 404, the replacement serves",
                    ),
                    "2027-03-15",
                    REPLACEMENT,
                )
            },
        ),
        (
            "gemini-3.1-flash-image-preview",
            gone(google_image(true, 14), "2026-06-25", REPLACEMENT),
        ),
        (
            "gemini-3-pro-image-preview",
            gone(google_image(true, 14), "2026-06-25", "gemini-3-pro-image"),
        ),
        (
            "imagen-4.0-*",
            gone(
                ModelCapabilities {
                    edit: false,
                    note: Some("Imagen 4 (`:predict`) is shut down; IDs answer 404".into()),
                    ..google_image(true, 1)
                },
                "2026-08-17",
                REPLACEMENT,
            ),
        ),
    ]
}

/// The Gemini provider.
pub struct GeminiProvider {
    settings: GeminiSettings,
    client: reqwest::Client,
    executor: Executor,
    scrubber: Scrubber,
}

impl fmt::Debug for GeminiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiProvider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The credential one attempt sends.
enum Credential<'a> {
    Key(Option<&'a PoolKey>),
    Token(&'a SecretString),
}

impl GeminiProvider {
    /// A provider using `client` (whose connection pool may be shared) with `settings`.
    pub fn new(settings: GeminiSettings, client: reqwest::Client) -> Self {
        let scrubber = Scrubber::new(&settings.keys, settings.endpoint.base_url());
        let executor = Executor::new(
            "gemini",
            Arc::clone(&settings.keys),
            settings.retry,
            settings.deadline,
        )
        .with_scrubber(scrubber.clone());
        Self {
            settings,
            client,
            executor,
            scrubber,
        }
    }

    /// `generationConfig` for `options` on `model`: both modalities (image models answer
    /// text beside the image), `imageConfig`, the seed, and the declared extras.
    fn generation_config(
        &self,
        model: &str,
        options: &ImageOptions,
    ) -> Result<Map<String, Value>, ProviderError> {
        let caps = self.settings.catalog.get(model);
        let takes_image_size = caps.params.contains(&Param::Resolution);
        let mut image = wire::image_config(options, takes_image_size)?;
        for (key, value) in options.extra.iter().flatten() {
            if caps.extra_params.contains(key) {
                image.insert(key.clone(), value.clone());
            }
        }
        let mut config = Map::new();
        config.insert("responseModalities".into(), json!(["TEXT", "IMAGE"]));
        if !image.is_empty() {
            config.insert("imageConfig".into(), Value::Object(image));
        }
        if let Some(seed) = options.seed {
            // `seed` is an int32 on the wire.
            let seed = i32::try_from(seed).map_err(|_| {
                ProviderError::invalid_param(
                    "seed",
                    format!("seed {seed} is too large: Gemini takes 0..=2147483647"),
                )
            })?;
            config.insert("seed".into(), seed.into());
        }
        Ok(config)
    }

    /// One attempt: the request with the pool's key, or with the access token (fetched again
    /// and sent once more after a 401, since a token can expire or be revoked before its time).
    async fn attempt(
        &self,
        url: &url::Url,
        model: &str,
        body: &Value,
        key: Option<&PoolKey>,
        options: &CallOptions,
    ) -> Result<(Answer, Scrubber), ProviderError> {
        let Some(tokens) = &self.settings.tokens else {
            return self
                .send(url, model, body, Credential::Key(key), options)
                .await
                .map(|answer| (answer, self.scrubber.clone()));
        };
        let token = tokens.token().await?;
        let first = self
            .send(url, model, body, Credential::Token(&token), options)
            .await;
        // The answer is read with a scrubber that knows the token: the pool's knows keys only.
        match first {
            Err(e) if e.status == Some(401) => {
                tokens.invalidate().await;
                let fresh = tokens.token().await?;
                tracing::info!("the access token was refused; sending once more with a fresh one");
                let scrubber = self.token_scrubber([&token, &fresh]);
                self.send(url, model, body, Credential::Token(&fresh), options)
                    .await
                    .map(|answer| (answer, scrubber.clone()))
                    .map_err(|e| refused_again(scrubber.error(e)))
            }
            other => {
                let scrubber = self.token_scrubber([&token]);
                other
                    .map(|answer| (answer, scrubber.clone()))
                    .map_err(|e| scrubber.error(e))
            }
        }
    }

    /// A scrubber for `tokens` (shown as their fingerprints) and the base URL's password.
    fn token_scrubber<'t>(&self, tokens: impl IntoIterator<Item = &'t SecretString>) -> Scrubber {
        let tokens = tokens.into_iter().map(|t| (t.clone(), "token".to_string()));
        let pool = KeyPool::new(tokens, Duration::from_secs(1));
        Scrubber::new(&pool, self.settings.endpoint.base_url())
    }

    /// Sends one request and reads its answer, or classifies its error.
    async fn send(
        &self,
        url: &url::Url,
        model: &str,
        body: &Value,
        credential: Credential<'_>,
        options: &CallOptions,
    ) -> Result<Answer, ProviderError> {
        let s = &self.settings;
        let mut req = self.client.post(url.clone()).timeout(s.timeout).json(body);
        let (key, is_bearer) = match credential {
            Credential::Key(Some(key)) => {
                let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
                    ProviderError::new(
                        crate::ErrorKind::Auth,
                        format!(
                            "the API key {} holds characters a header cannot carry",
                            key.fingerprint()
                        ),
                    )
                    .with_retryable(false)
                })?;
                value.set_sensitive(true);
                req = req.header("x-goog-api-key", value);
                (Some(key), false)
            }
            Credential::Key(None) => (None, false),
            Credential::Token(token) => {
                req = req.header(reqwest::header::AUTHORIZATION, bearer(token));
                (None, true)
            }
        };
        let what = "the Gemini API";
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(e, what, s.timeout))?;
        let status = resp.status();
        let headers: HeaderMap = resp.headers().clone();
        if !status.is_success() {
            let text = read_truncated(resp, ERROR_BODY_CAP.min(s.max_response_bytes)).await;
            return Err(error::parse_error(
                status,
                &headers,
                &text,
                key,
                is_bearer,
                model,
                &self.scrubber,
            ));
        }
        options.events.send(ProviderEvent::Receiving);
        let cap = s.max_response_bytes;
        let body = read_capped(resp, cap).await.map_err(|e| {
            match e {
                ReadError::TooLarge => too_large("the answer", cap),
                ReadError::Transport(e) => transport_error(e, what, s.timeout),
            }
            .with_request_sent(true)
        })?;
        Answer::parse(&body).map_err(|e| e.with_request_sent(true))
    }

    /// One request's result: one image (and the model's text) from its answer.
    async fn one(
        &self,
        model: &str,
        body: &Value,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let url = self.settings.endpoint.generate_url(model);
        let (url, body) = (&url, body);
        self.executor
            .run(
                options,
                "gemini generation",
                model,
                |attempt: Attempt| async move {
                    self.attempt(url, model, body, attempt.key(), options).await
                },
                |sent| async move {
                    let (answer, scrubber) = sent.value;
                    // Decoding megabytes of base64 is CPU work: a few at a time.
                    let permit = decode_slots().acquire().await;
                    let read = answer
                        .read(1, &scrubber)
                        .map_err(|e| scrubber.error(e).with_request_sent(true))?;
                    drop(permit);
                    let images = read
                        .images
                        .into_iter()
                        .enumerate()
                        .map(|(i, bytes)| {
                            GeneratedImage::from_encoded(bytes).map_err(|e| {
                                bad(format!("image {} is not a usable image: {e}", i + 1))
                                    .with_request_sent(true)
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut result = GenerateResult::new(images, model);
                    result.revised_prompt = read.text;
                    result.usage = answer.usage_metadata.as_ref().map(usage);
                    result.request_id = answer
                        .response_id
                        .as_ref()
                        .and_then(Value::as_str)
                        .and_then(|id| scrubber.token(id));
                    Ok(result)
                },
            )
            .await
    }

    /// Runs `n` requests of `body` at once and gathers their images into one result.
    async fn call(
        &self,
        model: &str,
        n: u32,
        body: Value,
        config: Map<String, Value>,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        if n > MAX_N {
            // The catalog can be overridden past what this provider splits into requests.
            return Err(ProviderError::invalid_param(
                "n",
                format!(
                    "n = {n}: Gemini makes one image per request and sends at most {MAX_N} at once"
                ),
            ));
        }
        let n = n.max(1);
        let body = &body;
        let results = try_join_all((0..n).map(|_| self.one(model, body, options))).await?;
        let mut merged = GenerateResult::new(Vec::new(), model);
        let mut usages = Vec::new();
        for result in results {
            merged.images.extend(result.images);
            merged.revised_prompt = merged.revised_prompt.or(result.revised_prompt);
            merged.request_id = merged.request_id.or(result.request_id);
            usages.extend(result.usage);
        }
        merged.usage = sum_usage(usages);
        let mut sent = Map::new();
        sent.insert("model".into(), model.into());
        sent.insert("generationConfig".into(), Value::Object(config));
        if n > 1 {
            // Said, not silent: each request makes one image.
            sent.insert("requests".into(), n.into());
        }
        Ok(merged.with_sent(sent))
    }
}

/// The body of one request: the prompt (and images) as parts, and the generation config.
fn request_body(parts: Vec<Value>, config: &Map<String, Value>) -> Value {
    json!({
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": config,
    })
}

/// `usageMetadata` as [`Usage`]: prompt, candidate (image) and total tokens.
fn usage(meta: &Value) -> Usage {
    let count = |name: &str| meta.get(name).and_then(Value::as_u64);
    Usage {
        input_tokens: count("promptTokenCount"),
        output_tokens: count("candidatesTokenCount"),
        total_tokens: count("totalTokenCount"),
        ..Usage::default()
    }
}

/// The usage of several requests added up.
fn sum_usage(usages: Vec<Usage>) -> Option<Usage> {
    if usages.is_empty() {
        return None;
    }
    let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    };
    Some(usages.into_iter().fold(Usage::default(), |mut sum, u| {
        sum.input_tokens = add(sum.input_tokens, u.input_tokens);
        sum.output_tokens = add(sum.output_tokens, u.output_tokens);
        sum.total_tokens = add(sum.total_tokens, u.total_tokens);
        sum
    }))
}

/// `err` of a request sent with a freshly fetched token: a second refusal is final.
fn refused_again(mut err: ProviderError) -> ProviderError {
    if err.status == Some(401) {
        err.message = format!("{} (a freshly fetched token was refused too)", err.message);
    }
    err
}

#[async_trait]
impl ImageProvider for GeminiProvider {
    fn kind(&self) -> &'static str {
        "gemini"
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

    fn lifecycle_is_authoritative(&self) -> bool {
        // Google's own API: a date that has passed means the model is gone.
        true
    }

    fn aliases(&self) -> Vec<(String, String)> {
        crate::catalog::alias_pairs(ALIASES)
    }

    async fn list_models(&self) -> Result<Vec<UpstreamModel>, ProviderError> {
        let Endpoint::GeminiApi { base_url } = &self.settings.endpoint else {
            return Err(ProviderError::unsupported(
                "Vertex AI lists publisher models elsewhere; the model listing is the Gemini API's",
            ));
        };
        let s = &self.settings;
        // One request with whichever key the pool offers: the listing is advisory, and a
        // failure here must not rest or disable a key the image calls are using.
        let key = self.executor.next_key(&[])?;
        let mut url = base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["v1beta", "models"]);
        }
        url.set_query(Some("pageSize=1000"));
        let mut req = self.client.get(url).timeout(s.timeout);
        if let Some(key) = key.as_deref() {
            if let Ok(mut value) = HeaderValue::from_str(key.expose()) {
                value.set_sensitive(true);
                req = req.header("x-goog-api-key", value);
            }
        }
        let what = "the model listing";
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(e, what, s.timeout))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if !status.is_success() {
            let body = read_truncated(resp, ERROR_BODY_CAP).await;
            let err = error::parse_error(
                status,
                &headers,
                &body,
                key.as_deref(),
                false,
                "",
                &self.scrubber,
            );
            return Err(self.scrubber.error(err.with_model_unavailable(false)));
        }
        let cap = MODELS_BODY_CAP.min(s.max_response_bytes);
        let body = read_capped(resp, cap).await.map_err(|e| match e {
            ReadError::TooLarge => too_large(what, cap),
            ReadError::Transport(e) => transport_error(e, what, s.timeout),
        })?;
        wire::parse_models(&body, &self.scrubber)
    }

    #[tracing::instrument(skip_all, fields(model = %request.model))]
    async fn generate_opts(
        &self,
        request: &GenerateRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let config = self.generation_config(&request.model, &request.options)?;
        let parts = vec![json!({"text": request.prompt})];
        let body = request_body(parts, &config);
        self.call(&request.model, request.n(), body, config, options)
            .await
    }

    #[tracing::instrument(skip_all, fields(model = %request.model))]
    async fn edit_opts(
        &self,
        request: &EditRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let config = self.generation_config(&request.model, &request.options)?;
        let mut parts = vec![json!({"text": request.prompt})];
        parts.extend(request.images.iter().map(wire::inline_part));
        if let Some(mask) = &request.mask {
            parts.push(json!({"text": MASK_NOTE}));
            parts.push(wire::inline_part(mask));
        }
        let body = request_body(parts, &config);
        let mut result = self
            .call(&request.model, request.n(), body, config, options)
            .await?;
        if request.mask.is_some() {
            result.sent.insert(
                "mask".into(),
                "sent as a last image part with an instruction".into(),
            );
        }
        Ok(result)
    }
}
