//! OpenAI Images API provider (`kind = "openai"`), also used for OpenAI-compatible servers.
//!
//! The same engine serves `azure_openai` and `openai_compatible`: each passes a
//! `flavour::Flavour` (its routes, how the credential travels, extra headers, what an
//! unknown model is sent, its own reading of error answers); OpenAI's is the default.
//!
//! One `POST {base_url}/images/generations` per attempt (`/images/edits` and
//! `/images/variations` as `multipart/form-data` for edits and variations), retried per
//! [`RetryPolicy`] within an overall deadline by the shared [`Executor`]. A form cannot be cloned, so each attempt builds
//! its own from the request; the image bytes are shared, not copied. Each attempt takes a key from the pool: a rate-limited key rests and a
//! rejected one is disabled, and the call moves to another key at once, which is not a retry.
//! With `partial_images` the generation or edit streams as server-sent events, and each partial
//! image is reported as a [`ProviderEvent`] as it arrives. Only the parameters the model's catalog
//! entry takes are sent, because OpenAI answers anything else with `400 unknown_parameter`. Results arrive as base64 (asked for on DALL·E models) or as
//! URLs, which compatible servers may return anyway; URLs are fetched only from the base URL's
//! origin (scheme, host and port) or `download_hosts`, redirects included, so a response cannot
//! make this server fetch arbitrary addresses or other ports of its host. An answer holding more
//! images than were asked for is refused before any is decoded or downloaded. Every body is read
//! under `max_response_bytes`. Errors are classified once, in `parse_error`, and every string the
//! upstream sends is scrubbed of the pool's keys (shown as their
//! [`fingerprint`](crate::secret::fingerprint)) and the base URL's password at the edge, by the
//! [`Executor`] that runs the attempts.
//! `parse_error` also marks answers saying the model does not exist or was retired, so callers
//! can move to its replacement. `GET {base_url}/models` lists the account's image models with
//! their announced shutdown dates.

mod config;
pub(crate) use config::settings as shared_settings;
pub use config::{Config, STANDARD_ENV};
mod error;
pub(crate) mod flavour;
pub(crate) mod images_body;
mod moderation;
mod retry;
mod stream;
mod wire;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::try_join_all;
use reqwest::{
    header::HeaderMap,
    multipart::{Form, Part},
};
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::{
    http::{
        body::{
            announced_length, bad, decode_base64, decode_slots, read_capped, read_chunks,
            read_truncated, too_large, ReadError,
        },
        download::{decode_data_url, Downloader},
        endpoint,
        error::{redacted, transport_error},
        executor::{Attempt, Executor, Sent},
        retry::RetryPolicy,
        token::bearer,
    },
    keys::{KeyPool, PoolKey},
    secret::Scrubber,
    validate, CallOptions, Catalog, EditRequest, GenerateRequest, GenerateResult, GeneratedImage,
    ImageFormat, ImageProvider, InputImage, ModelCapabilities, ModerationInput, ModerationVerdict,
    Param, ProviderError, ProviderEvent, SvgOptions, UpstreamModel, Usage, VariationRequest,
};

use flavour::{EditRoute, Flavour, KeyHeader};
use images_body::{BodyScanner, ImagesBody};
use stream::is_event_stream;
use wire::{parse_models, Answer, ImagesResponse, Source};

/// The default API base.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// The model used when the configuration names none: the fast GPT Image 2.6 model.
pub const DEFAULT_MODEL: &str = "gpt-image-2.6-flare";

/// The current OpenAI image models advertised when the configuration lists none.
pub const DEFAULT_MODELS: &[&str] = &[
    "gpt-image-2.6-flare",
    "gpt-image-2.6-sunburst",
    "gpt-image-2.5-flare",
    "gpt-image-2.5-sunburst",
    "gpt-image-2",
];

/// The built-in aliases: `fast` and `best`, usable wherever a model name is.
pub const ALIASES: &[(&str, &str)] = &[
    ("fast", "gpt-image-2.6-flare"),
    ("best", "gpt-image-2.6-sunburst"),
];

/// The host whose model lifecycle the catalog's OpenAI dates describe.
const OPENAI_HOST: &str = "api.openai.com";

/// How to reach one OpenAI (or compatible) account.
#[derive(Clone)]
#[non_exhaustive]
pub struct OpenAiSettings {
    /// API base, e.g. `https://api.openai.com/v1` (no trailing slash needed).
    pub base_url: url::Url,
    /// The API keys; an empty pool sends no `Authorization` header (some compatible servers need none).
    pub keys: Arc<KeyPool>,
    /// `OpenAI-Organization` header.
    pub organization: Option<String>,
    /// `OpenAI-Project` header.
    pub project: Option<String>,
    /// The model used when a request names none.
    pub model: String,
    /// The models to advertise in listings.
    pub models: Vec<String>,
    /// Per-attempt timeout for the whole request, response body included.
    pub timeout: Duration,
    /// How many times a retryable failure is retried (moving to another key is not a retry).
    pub max_retries: u32,
    /// The wait before the first retry when the server gives no hint; it doubles each retry.
    pub retry_base: Duration,
    /// The longest wait between retries when the server gives no hint.
    pub retry_max: Duration,
    /// The longest server-asked wait honoured; a longer one fails the call, saying when to try again.
    pub retry_after_cap: Duration,
    /// Whether a read timeout is retried: off by default, because the upstream may bill for the
    /// generation it was still working on, and a retry would pay for it twice.
    pub retry_on_timeout: bool,
    /// The longest one call may take, every attempt and wait included.
    pub deadline: Duration,
    /// Where else result URLs may be downloaded from: `host:port`, or a bare `host` meaning
    /// its default ports (80 and 443) only.
    pub download_hosts: Vec<String>,
    /// The largest response body or downloaded image accepted, in bytes.
    pub max_response_bytes: usize,
    /// Timeout for downloading one result URL.
    pub download_timeout: Duration,
    /// The model catalog to check requests against.
    pub catalog: Arc<Catalog>,
    /// Whether the catalog's shutdown dates hold for this server; `None`: only for OpenAI's own API.
    pub catalog_dates_apply: Option<bool>,
}

impl fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSettings")
            // Without its password (or its query, which may be signed).
            .field("base_url", &redacted(&self.base_url))
            .field("keys", &self.keys)
            .field("organization", &self.organization)
            .field("project", &self.project)
            .field("model", &self.model)
            .field("retry", &self.retry_policy())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl OpenAiSettings {
    /// Settings for `base_url` with one key (or none) and every other value at its default.
    pub fn new(base_url: url::Url, api_key: Option<SecretString>) -> Self {
        let keys = api_key.map(|k| (k, "settings".to_string()));
        Self {
            base_url,
            keys: Arc::new(KeyPool::new(keys, Duration::from_secs(600))),
            organization: None,
            project: None,
            model: DEFAULT_MODEL.into(),
            models: DEFAULT_MODELS.iter().map(|m| m.to_string()).collect(),
            timeout: Duration::from_secs(180),
            max_retries: 2,
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(8),
            retry_after_cap: Duration::from_secs(120),
            retry_on_timeout: false,
            deadline: Duration::from_secs(300),
            download_hosts: Vec::new(),
            max_response_bytes: 64 * 1024 * 1024,
            download_timeout: Duration::from_secs(60),
            catalog: Arc::new(Catalog::builtin()),
            catalog_dates_apply: None,
        }
    }

    /// The retry settings as one policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            base: self.retry_base,
            max: self.retry_max,
            retry_after_cap: self.retry_after_cap,
            retry_on_timeout: self.retry_on_timeout,
        }
    }
}

/// Error bodies are only read for their message; more than this is never useful.
const ERROR_BODY_CAP: usize = 64 * 1024;

/// A model listing is a few hundred entries of a few hundred bytes each; far more is not one.
const MODELS_BODY_CAP: usize = 4 * 1024 * 1024;

/// The OpenAI provider.
pub struct OpenAiProvider {
    settings: OpenAiSettings,
    client: reqwest::Client,
    /// Fetches result URLs from the allowed hosts only.
    downloader: Downloader,
    /// Runs the attempts of each call: keys, retries, deadline, cancellation.
    executor: Executor,
    /// The same for moderation checks, which are quick and free: see `moderation`.
    moderation_executor: Executor,
    generations_url: url::Url,
    edits_url: url::Url,
    variations_url: url::Url,
    moderations_url: url::Url,
    /// Cleans every string the upstream sends of the pool's keys and the base URL's password.
    scrubber: Scrubber,
    /// What this kind does its own way (OpenAI, Azure, a compatible server).
    flavour: Flavour,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The endpoints carry the base URL's password, so only the settings' redacted view shows.
        f.debug_struct("OpenAiProvider")
            .field("settings", &self.settings)
            .field("allowed_hosts", self.downloader.allowed_hosts())
            .field("flavour", &self.flavour)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// A provider using `client` (whose connection pool may be shared) with `settings`.
    pub fn new(settings: OpenAiSettings, client: reqwest::Client) -> Self {
        Self::with_flavour(settings, client, Flavour::openai())
    }

    /// A provider of another OpenAI-shaped kind (Azure, a compatible server).
    pub(crate) fn with_flavour(
        settings: OpenAiSettings,
        client: reqwest::Client,
        flavour: Flavour,
    ) -> Self {
        let mut downloader = Downloader::new(
            &settings.base_url,
            &settings.download_hosts,
            settings.download_timeout,
            settings.max_response_bytes,
        );
        if !flavour.download_hint.is_empty() {
            downloader = downloader.with_failure_hint(flavour.download_hint);
        }
        let (generations_url, edits_url, variations_url) = match &flavour.routes {
            Some(routes) => (
                routes.generations.clone(),
                match &routes.edits {
                    EditRoute::Fixed(url) => url.clone(),
                    // Built per call from the model: see `edit_url`.
                    EditRoute::PerDeployment { base, .. } => base.clone(),
                },
                routes.variations.clone(),
            ),
            None => (
                endpoint(&settings.base_url, "images/generations"),
                endpoint(&settings.base_url, "images/edits"),
                endpoint(&settings.base_url, "images/variations"),
            ),
        };
        let scrubber = scrubber_for(&settings, &flavour.headers);
        let executor = Executor::new(
            flavour.kind,
            Arc::clone(&settings.keys),
            settings.retry_policy(),
            settings.deadline,
        )
        .with_scrubber(scrubber.clone());
        let moderation_executor = moderation::executor(flavour.kind, &executor);
        Self {
            moderation_executor,
            moderations_url: endpoint(&settings.base_url, "moderations"),
            scrubber,
            settings,
            client,
            downloader,
            executor,
            generations_url,
            edits_url,
            variations_url,
            flavour,
        }
    }

    /// The rules `model` is sent and checked by: its catalog entry (or that of the model an
    /// Azure deployment serves), as the flavour applies them.
    fn caps(&self, model: &str) -> ModelCapabilities {
        let caps = self.settings.catalog.get(model);
        let caps = match self.flavour.rules_of.get(model) {
            Some(serves) if !caps.known => self.settings.catalog.get(serves),
            _ => caps,
        };
        self.flavour.rules(caps)
    }

    /// Where an edit for `model` goes: one URL, or the model's deployment-scoped path.
    fn edit_url(&self, model: &str) -> url::Url {
        match self.flavour.routes.as_ref().map(|r| &r.edits) {
            Some(EditRoute::PerDeployment { base, api_version }) => {
                let mut url = base.clone();
                if let Ok(mut segments) = url.path_segments_mut() {
                    segments
                        .pop_if_empty()
                        .push(model)
                        .push("images")
                        .push("edits");
                }
                url.set_query(None);
                if !api_version.is_empty() {
                    url.query_pairs_mut()
                        .append_pair("api-version", api_version);
                }
                url
            }
            _ => self.edits_url.clone(),
        }
    }

    /// Whether the edit route names the deployment itself, so the form carries no `model`.
    fn edit_route_names_model(&self) -> bool {
        matches!(
            self.flavour.routes.as_ref().map(|r| &r.edits),
            Some(EditRoute::PerDeployment { .. })
        )
    }

    /// The JSON body for `request`, holding only what the model takes.
    fn request_body(&self, request: &GenerateRequest) -> Value {
        Value::Object(self.request_fields(request))
    }

    /// The fields of a generation (or of the part an edit shares with one) the model takes,
    /// with `extra` applied last so it can override anything but `model` and `prompt`.
    fn request_fields(&self, request: &GenerateRequest) -> Map<String, Value> {
        let caps = self.caps(&request.model);
        let gif = request.options.output_format == Some(ImageFormat::Gif);
        let svg = request.options.output_format == Some(ImageFormat::Svg);
        let mut body = Map::new();
        body.insert("model".into(), request.model.clone().into());
        body.insert("prompt".into(), request.prompt.clone().into());
        body.insert("n".into(), request.n().into());
        let optional = [
            // Sent as validation read it, not as given (`"1024X1024\n"`); a ratio and
            // resolution become the nearest size the model allows.
            (
                Param::Size,
                crate::options::size_for(&request.options, &caps)
                    .ok()
                    .flatten()
                    .map(|s| validate::normalized_size(&s).into()),
            ),
            (
                Param::Quality,
                request.options.quality.clone().map(Value::from),
            ),
            (
                Param::OutputFormat,
                request.options.output_format.map(|f| f.as_str().into()),
            ),
            (
                Param::OutputCompression,
                request.options.output_compression.map(Value::from),
            ),
            (
                Param::Background,
                request.options.background.clone().map(Value::from),
            ),
            (Param::Style, request.options.style.clone().map(Value::from)),
            (
                Param::Moderation,
                request.options.moderation.clone().map(Value::from),
            ),
            (Param::Seed, request.options.seed.map(Value::from)),
            (
                Param::Complexity,
                request.options.complexity.clone().map(Value::from),
            ),
            // Animation and authoring settings mean nothing for other formats, and the API
            // takes them only beside the format they belong to.
            (
                Param::FrameCount,
                request.options.frame_count.filter(|_| gif).map(Value::from),
            ),
            (
                Param::FrameDurationMs,
                request
                    .options
                    .frame_duration_ms
                    .filter(|_| gif)
                    .map(Value::from),
            ),
            (
                Param::Svg,
                request
                    .options
                    .svg
                    .as_ref()
                    .filter(|_| svg)
                    .and_then(svg_object),
            ),
        ];
        // The caller validated explicit parameters already; this guard keeps anything the
        // model would reject with `unknown_parameter` off the wire regardless.
        for (param, value) in optional {
            if let Some(value) = value.filter(|_| caps.takes(param)) {
                body.insert(param.as_str().into(), value);
            }
        }
        // A GIF never streams; validation refuses the combination, and this keeps it off the wire.
        if let Some(partials) = request
            .options
            .partial_images
            .filter(|_| caps.takes(Param::Stream) && !gif)
            .filter(|p| *p > 0 || self.flavour.streams_zero_partials)
        {
            body.insert("stream".into(), true.into());
            body.insert("partial_images".into(), partials.into());
        }
        if caps.takes(Param::ResponseFormat) {
            // Inline bytes: no expiring URL and no second fetch.
            body.insert("response_format".into(), "b64_json".into());
        }
        for (key, value) in request.options.extra.iter().flatten() {
            if key != "model" && key != "prompt" {
                body.insert(key.clone(), value.clone());
            }
        }
        body
    }

    /// The text fields of an edit: those of a generation, plus `input_fidelity`.
    fn edit_fields(&self, request: &EditRequest) -> Map<String, Value> {
        let caps = self.caps(&request.model);
        let mut fields = self.request_fields(&request.as_generation());
        if self.edit_route_names_model() {
            fields.remove("model");
        }
        if let Some(fidelity) = request
            .options
            .input_fidelity
            .clone()
            .filter(|_| caps.takes(Param::InputFidelity))
        {
            // Like every field, an `extra` entry of the same name wins.
            fields
                .entry("input_fidelity")
                .or_insert_with(|| fidelity.into());
        }
        fields
    }

    /// The multipart form of one attempt at `request`: the text fields as for a generation,
    /// plus `input_fidelity`, one file part per image, the mask and the markup layer.
    fn edit_form(&self, request: &EditRequest) -> Result<Form, ProviderError> {
        let caps = self.caps(&request.model);
        let fields = self.edit_fields(request);
        // Models that take one image (dall-e-2) expect `image`; the others a list, `image[]`.
        let image_field = match caps.max_edit_images {
            0 | 1 => "image",
            _ => "image[]",
        };
        let mut form = text_fields(Form::new(), fields);
        for image in &request.images {
            form = form.part(image_field, file_part(image)?);
        }
        if let Some(mask) = &request.mask {
            form = form.part("mask", file_part(mask)?);
        }
        if let Some(markup) = request
            .markup
            .as_ref()
            .filter(|_| caps.takes(Param::Markup))
        {
            // Sent as the mask is: OpenAI's own shape for it is not documented.
            form = form.part("markup", file_part(markup)?);
        }
        Ok(form)
    }

    /// The multipart form of one attempt at a variation: always base64, like DALL·E generations.
    fn variation_form(&self, request: &VariationRequest) -> Result<Form, ProviderError> {
        let mut fields = Map::new();
        fields.insert("model".into(), request.model.clone().into());
        fields.insert("n".into(), request.n.max(1).into());
        if let Some(size) = &request.size {
            fields.insert("size".into(), validate::normalized_size(size).into());
        }
        fields.insert("response_format".into(), "b64_json".into());
        for (key, value) in &request.extra {
            if key != "model" {
                fields.insert(key.clone(), value.clone());
            }
        }
        Ok(text_fields(Form::new(), fields).part("image", file_part(&request.image)?))
    }

    /// One attempt at a call: the response headers and answer, or the classified error (the
    /// executor scrubs it before anything logs it or rests a key over it).
    ///
    /// With a token source the current token is sent; a 401 for it forgets it and sends once
    /// more with a fresh one (it may have been revoked or expired early), within the attempt.
    async fn send(
        &self,
        call: &Call<'_>,
        key: Option<&PoolKey>,
        options: &CallOptions,
    ) -> Result<(HeaderMap, Answer), ProviderError> {
        let Some(tokens) = &self.flavour.tokens else {
            return self.send_with(call, key, None, options).await;
        };
        let token = tokens.token().await?;
        match self.send_with(call, key, Some(&token), options).await {
            Err(e) if e.status == Some(401) => {
                tracing::debug!(source = %tokens.source().describe(), "token refused; fetching a fresh one");
                tokens.invalidate().await;
                let fresh = tokens.token().await?;
                // A server may echo the refused token along with the fresh one.
                self.send_with(call, key, Some(&fresh), options)
                    .await
                    .map_err(|e| scrub_token(e, &token, &self.settings.base_url))
            }
            other => other,
        }
    }

    /// [`Self::send`] with `token` (when set) as the credential; the token never shows in
    /// the error, even when the upstream echoes it.
    async fn send_with(
        &self,
        call: &Call<'_>,
        key: Option<&PoolKey>,
        token: Option<&SecretString>,
        options: &CallOptions,
    ) -> Result<(HeaderMap, Answer), ProviderError> {
        let outcome = self.send_once(call, key, token, options).await;
        match token {
            Some(token) => outcome.map_err(|e| scrub_token(e, token, &self.settings.base_url)),
            None => outcome,
        }
    }

    async fn send_once(
        &self,
        call: &Call<'_>,
        key: Option<&PoolKey>,
        token: Option<&SecretString>,
        options: &CallOptions,
    ) -> Result<(HeaderMap, Answer), ProviderError> {
        let events = &options.events;
        let s = &self.settings;
        let req = self.client.post(call.url.clone()).timeout(s.timeout);
        let req = match &call.body {
            CallBody::Json(body) => req.json(body),
            CallBody::Edit(request) => req.multipart(self.edit_form(request)?),
            CallBody::Variation(request) => req.multipart(self.variation_form(request)?),
        };
        let resp = self
            .account_headers(req, key, token)
            .send()
            .await
            .map_err(|e| transport_error(e, "the image API", s.timeout))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if !status.is_success() {
            let body = read_truncated(resp, ERROR_BODY_CAP.min(s.max_response_bytes)).await;
            let err = self.parse_error(status, &headers, &body, key, Some(call.model));
            return Err(self.refine(err, status.as_u16(), &body, key, token.is_some(), call));
        }
        events.send(ProviderEvent::Receiving);
        // Asked to stream or not, a compatible server may answer either way: the content type decides.
        let answer = if is_event_stream(&headers) {
            self.read_stream(resp, call, key, events)
                .await
                .map(Answer::Completed)
        } else {
            // Never more images decoded than asked for: `build_result` refuses the rest.
            read_images(resp, s.max_response_bytes, call.n as usize)
                .await
                .map(Answer::Json)
                .map_err(|e| match e {
                    ReadError::TooLarge => too_large("the response", s.max_response_bytes),
                    ReadError::Transport(e) => transport_error(e, "the image API", s.timeout),
                })
        };
        // The answer had started: whatever broke after that, the request was sent.
        let answer = answer.map_err(|e| {
            e.with_request_id(self.request_id(&headers))
                .with_request_sent(true)
        })?;
        Ok((headers, answer))
    }

    /// Adds the credential (a token, else the key), the organization and project headers and
    /// the flavour's extra headers to `req`.
    fn account_headers(
        &self,
        mut req: reqwest::RequestBuilder,
        key: Option<&PoolKey>,
        token: Option<&SecretString>,
    ) -> reqwest::RequestBuilder {
        if !self.flavour.headers.is_empty() {
            req = req.headers(self.flavour.headers.clone());
        }
        // Per request rather than a client default header, so keys can rotate while the
        // connection pool is shared; `bearer_auth` marks the header sensitive.
        match (token, key, self.flavour.key_header) {
            (Some(token), _, _) => req = req.header(reqwest::header::AUTHORIZATION, bearer(token)),
            (None, Some(key), KeyHeader::Bearer) => req = req.bearer_auth(key.expose()),
            (None, Some(key), KeyHeader::ApiKey) => {
                if let Ok(mut value) = reqwest::header::HeaderValue::from_str(key.expose()) {
                    value.set_sensitive(true);
                    req = req.header("api-key", value);
                }
            }
            (None, None, _) => {}
        }
        if let Some(org) = &self.settings.organization {
            req = req.header("OpenAI-Organization", org);
        }
        if let Some(project) = &self.settings.project {
            req = req.header("OpenAI-Project", project);
        }
        req
    }

    /// The upstream's `x-request-id`, when it is a plain token holding no secret.
    fn request_id(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| self.scrubber.token(v))
    }

    fn host(&self) -> &str {
        self.settings.base_url.host_str().unwrap_or("the base URL")
    }

    /// Builds the result from a successful answer: decodes or downloads every image.
    async fn build_result(
        &self,
        call: &Call<'_>,
        answer: Answer,
    ) -> Result<GenerateResult, ProviderError> {
        let model = call.model;
        let (resp, mut decoded) = match answer {
            Answer::Json(body) => (
                ImagesResponse::from_body(&body.skeleton, &self.scrubber)?,
                Some(body),
            ),
            Answer::Completed(data) => (ImagesResponse::from_completed(data)?, None),
        };
        tracing::debug!(
            size = resp.size.as_deref(),
            quality = resp.quality.as_deref(),
            background = resp.background.as_deref(),
            output_format = resp.output_format.as_deref(),
            "image API answered"
        );
        if resp.data.is_none() && self.flavour.reads_error_in_200 {
            if let Some(err) = decoded
                .as_ref()
                .and_then(|body| self.answer_error(&body.skeleton, call))
            {
                return Err(err);
            }
        }
        let data = resp
            .data
            .ok_or_else(|| bad("the response has no `data` field, so it holds no images"))?;
        if data.is_empty() {
            return Err(bad(
                "the response's `data` list is empty: no images were returned",
            ));
        }
        // Checked before anything is decoded or downloaded: a server answering 2,000 images
        // (or 200 URLs) to `n = 1` must cost nothing, and leave nothing behind.
        if data.len() > call.n as usize {
            return Err(bad(format!(
                "the response holds {} images but {} {} asked for; it was not used",
                data.len(),
                call.n,
                if call.n == 1 { "was" } else { "were" }
            )));
        }
        let sources: Vec<Source> = data
            .iter()
            .map(|datum| Source::of(datum, decoded.as_mut()))
            .collect();
        // Decoding a 2 MB string (a stream's final event) is CPU work: a burst of answers done
        // a few at a time finishes each sooner and keeps fewer copies alive at once.
        let permit = match sources.iter().any(|s| matches!(s, Source::Text(_))) {
            true => Some(decode_slots().acquire().await),
            false => None,
        };
        let images = try_join_all(
            sources
                .into_iter()
                .enumerate()
                .map(|(i, source)| self.source_image(i + 1, source)),
        )
        .await?;
        drop(permit);
        let mut result = GenerateResult::new(images, model);
        result.revised_prompt = data
            .iter()
            .find_map(|d| d.revised_prompt.as_deref())
            .map(|p| self.scrubber.scrub(p));
        result.usage = resp
            .usage
            .and_then(|u| serde_json::from_value::<Usage>(u).ok());
        Ok(result)
    }

    /// Result image `index` (1-based): decoded, or downloaded.
    async fn source_image(
        &self,
        index: usize,
        source: Source<'_>,
    ) -> Result<GeneratedImage, ProviderError> {
        let unusable = |e: String| {
            bad(format!(
                "image {index}: `b64_json` is not valid base64: {e}"
            ))
        };
        let downloaded = matches!(source, Source::Url(_));
        let (bytes, sha256) = match source {
            Source::Decoded(decoded) => decoded
                .map(|d| (Bytes::from(d.bytes), Some(d.sha256)))
                .map_err(unusable)?,
            Source::Text(b64) => (
                decode_base64(b64).map_err(|e| unusable(e.to_string()))?,
                None,
            ),
            Source::DataUrl(url) => (
                decode_data_url(url)
                    .map_err(|e| bad(format!("image {index}: unusable `data:` URL: {e}")))?,
                None,
            ),
            Source::Url(url) => (self.downloader.fetch(index, url).await?, None),
            Source::Missing => {
                return Err(bad(format!(
                    "image {index} has neither `b64_json` nor `url`"
                )))
            }
        };
        let image = GeneratedImage::from_encoded(bytes).map_err(|e| match downloaded {
            // What a URL served is not quoted: an error that echoes a fetched page's first
            // bytes would let an answer read whatever its URLs reach.
            true => bad(format!(
                "image {index}: the result URL served something that is not an image"
            )),
            false => bad(format!("image {index} is not a usable image: {e}")),
        })?;
        Ok(match sha256 {
            Some(sha256) => image.with_sha256(sha256),
            None => image,
        })
    }
}

#[async_trait]
impl ImageProvider for OpenAiProvider {
    fn kind(&self) -> &'static str {
        self.flavour.kind
    }

    fn default_model(&self) -> &str {
        &self.settings.model
    }

    fn models(&self) -> Vec<String> {
        self.settings.models.clone()
    }

    fn capabilities(&self, model: &str) -> ModelCapabilities {
        self.caps(model)
    }

    fn lifecycle_is_authoritative(&self) -> bool {
        self.settings.catalog_dates_apply.unwrap_or_else(|| {
            self.settings
                .base_url
                .host_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(OPENAI_HOST))
        })
    }

    fn aliases(&self) -> Vec<(String, String)> {
        if !self.flavour.aliases {
            return Vec::new();
        }
        ALIASES
            .iter()
            .map(|(alias, model)| (alias.to_string(), model.to_string()))
            .collect()
    }

    async fn list_models(&self) -> Result<Vec<UpstreamModel>, ProviderError> {
        if !self.flavour.lists_models {
            return Err(ProviderError::unsupported(format!(
                "provider `{}` cannot list its models",
                self.flavour.kind
            )));
        }
        let s = &self.settings;
        // One attempt with whichever key the pool offers: the listing is advisory, and a
        // failure here must not rest or disable a key the image calls are using.
        let key = self.executor.next_key(&[])?;
        let req = self
            .client
            .get(endpoint(&s.base_url, "models"))
            .timeout(s.timeout);
        let what = "the model listing";
        let resp = self
            .account_headers(req, key.as_deref(), None)
            .send()
            .await
            .map_err(|e| transport_error(e, what, s.timeout))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if !status.is_success() {
            let body = read_truncated(resp, ERROR_BODY_CAP.min(s.max_response_bytes)).await;
            let err = self.parse_error(status, &headers, &body, key.as_deref(), None);
            return Err(self.scrubber.error(err));
        }
        let cap = MODELS_BODY_CAP.min(s.max_response_bytes);
        let body = read_capped(resp, cap).await.map_err(|e| match e {
            ReadError::TooLarge => too_large("the model listing", cap),
            ReadError::Transport(e) => transport_error(e, what, s.timeout),
        });
        body.and_then(|body| parse_models(&body, &self.scrubber))
            .map_err(|e| {
                self.scrubber
                    .error(e.with_request_id(self.request_id(&headers)))
            })
    }

    fn moderates(&self) -> bool {
        self.flavour.moderates
    }

    #[tracing::instrument(skip_all, fields(model = %input.model()))]
    async fn moderate(
        &self,
        input: &ModerationInput,
        options: &CallOptions,
    ) -> Result<ModerationVerdict, ProviderError> {
        if !self.flavour.moderates {
            return Err(ProviderError::unsupported(format!(
                "provider `{}` has no moderation endpoint",
                self.flavour.kind
            )));
        }
        self.moderate_input(input, options).await
    }

    #[tracing::instrument(skip_all, fields(model = %request.model))]
    async fn generate_opts(
        &self,
        request: &GenerateRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let call = Call {
            url: &self.generations_url,
            model: &request.model,
            n: request.n().max(1),
            partials: request.options.partial_images.map_or(0, u32::from),
            what: "image generation",
            body: CallBody::Json(self.request_body(request)),
        };
        let result = self.call(&call, options).await?;
        Ok(result.with_sent(self.request_fields(request)))
    }

    #[tracing::instrument(skip_all, fields(model = %request.model))]
    async fn edit_opts(
        &self,
        request: &EditRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let url = self.edit_url(&request.model);
        let call = Call {
            url: &url,
            model: &request.model,
            n: request.n().max(1),
            partials: request.options.partial_images.map_or(0, u32::from),
            what: "image edit",
            body: CallBody::Edit(request),
        };
        let result = self.call(&call, options).await?;
        Ok(result.with_sent(self.edit_fields(request)))
    }

    #[tracing::instrument(skip_all, fields(model = %request.model))]
    async fn variation_opts(
        &self,
        request: &VariationRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let call = Call {
            url: &self.variations_url,
            model: &request.model,
            n: request.n.max(1),
            partials: 0,
            what: "image variation",
            body: CallBody::Variation(request),
        };
        // Variations never stream, and report no progress beyond the attempts.
        self.call(&call, options).await
    }
}

impl OpenAiProvider {
    /// Runs `call`: the executor makes the attempts, and the successful answer is turned into
    /// the result within the same deadline.
    async fn call(
        &self,
        call: &Call<'_>,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        self.executor
            .run(
                options,
                call.what,
                call.model,
                |attempt: Attempt| async move { self.send(call, attempt.key(), options).await },
                |sent: Sent<(HeaderMap, Answer)>| async move {
                    let (headers, answer) = sent.value;
                    self.finish(call, &headers, answer, sent.retries).await
                },
            )
            .await
    }

    /// Turns a successful attempt's answer into the call's result.
    async fn finish(
        &self,
        call: &Call<'_>,
        headers: &HeaderMap,
        answer: Answer,
        retries: u32,
    ) -> Result<GenerateResult, ProviderError> {
        let id = self.request_id(headers);
        let mut result = self.build_result(call, answer).await.map_err(|mut e| {
            if e.request_id.is_none() {
                e.request_id = id.clone();
            }
            e.with_request_sent(true)
        })?;
        result.request_id = id;
        tracing::debug!(
            images = result.images.len(),
            retries,
            request_id = result.request_id.as_deref(),
            call = call.what,
            "image request done"
        );
        Ok(result)
    }
}

/// What one call sends, and where.
#[derive(Debug)]
struct Call<'a> {
    url: &'a url::Url,
    /// The model that serves it, named in the result.
    model: &'a str,
    /// How many images were asked for: an answer holding more is refused.
    n: u32,
    /// How many partial images were asked for: any more are ignored.
    partials: u32,
    /// What the call is, for logs.
    what: &'static str,
    body: CallBody<'a>,
}

/// The body of a call: JSON is built once and reused; a multipart form is rebuilt from the
/// request for each attempt, because a sent form is consumed.
#[derive(Debug)]
enum CallBody<'a> {
    Json(Value),
    Edit(&'a EditRequest),
    Variation(&'a VariationRequest),
}

/// Adds each field as a text part: strings as they are, anything else as its JSON text.
fn text_fields(mut form: Form, fields: Map<String, Value>) -> Form {
    for (name, value) in fields {
        // File parts carry these names; a text field of the same name would shadow them.
        if matches!(name.as_str(), "image" | "image[]" | "mask" | "markup") {
            continue;
        }
        let text = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        form = form.text(name, text);
    }
    form
}

/// The `svg` request object as the API nests it, `{"model": ..., "reasoning": {"effort": ...}}`,
/// with absent keys left out; `None` when nothing is set.
fn svg_object(svg: &SvgOptions) -> Option<Value> {
    let mut object = Map::new();
    if let Some(model) = &svg.model {
        object.insert("model".into(), model.clone().into());
    }
    if let Some(effort) = svg.reasoning.as_ref().and_then(|r| r.effort.clone()) {
        object.insert("reasoning".into(), serde_json::json!({ "effort": effort }));
    }
    (!object.is_empty()).then_some(Value::Object(object))
}

/// A file part holding `image`, sharing its bytes rather than copying them.
fn file_part(image: &InputImage) -> Result<Part, ProviderError> {
    let len = image.bytes.len() as u64;
    Part::stream_with_length(reqwest::Body::from(image.bytes.clone()), len)
        .file_name(image.name.clone())
        .mime_str(image.mime())
        .map_err(|e| {
            ProviderError::invalid_param("images", format!("cannot send `{}`: {e}", image.name))
                .with_retryable(false)
        })
}

/// A scrubber of the pool's keys, the base URL's password and the values of the flavour's
/// extra headers (which may be secrets a server echoes back).
fn scrubber_for(settings: &OpenAiSettings, headers: &HeaderMap) -> Scrubber {
    if headers.is_empty() {
        return Scrubber::new(&settings.keys, &settings.base_url);
    }
    let header_values = headers
        .values()
        .filter_map(|v| v.to_str().ok())
        .map(|v| (SecretString::from(v.to_string()), "header".to_string()));
    let secrets: Vec<(SecretString, String)> = settings
        .keys
        .secrets()
        .map(|(key, _)| (SecretString::from(key.to_string()), "key".to_string()))
        .chain(header_values)
        .collect();
    Scrubber::new(&KeyPool::new(secrets, Duration::ZERO), &settings.base_url)
}

/// `err` without `token` in any of its texts (an upstream may echo what it was sent).
fn scrub_token(err: ProviderError, token: &SecretString, base_url: &url::Url) -> ProviderError {
    let pool = KeyPool::new([(token.clone(), "token".to_string())], Duration::ZERO);
    Scrubber::new(&pool, base_url).error(err)
}

/// Names the key in a message about the account, e.g. ` (key sk-…abcd)`.
fn whose(key: Option<&PoolKey>) -> String {
    key.map(|k| format!(" (key {})", k.fingerprint()))
        .unwrap_or_default()
}

/// Reads an images answer within `cap` bytes, decoding its images as they arrive.
/// Decodes at most `max_images` of them.
async fn read_images(
    resp: reqwest::Response,
    cap: usize,
    max_images: usize,
) -> Result<ImagesBody, ReadError> {
    let mut scanner = BodyScanner::new(announced_length(&resp, cap)?, max_images);
    read_chunks(resp, cap, |chunk| scanner.push(chunk)).await?;
    Ok(scanner.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_options_nest_as_the_api_does_and_leave_out_what_is_absent() {
        use crate::SvgReasoning;
        let full = SvgOptions {
            model: Some("gpt-5.5-mini".into()),
            reasoning: Some(SvgReasoning {
                effort: Some("low".into()),
            }),
        };
        assert_eq!(
            svg_object(&full),
            Some(serde_json::json!({"model": "gpt-5.5-mini", "reasoning": {"effort": "low"}}))
        );
        let no_effort = SvgOptions {
            reasoning: Some(SvgReasoning::default()),
            ..full.clone()
        };
        assert_eq!(
            svg_object(&no_effort),
            Some(serde_json::json!({"model": "gpt-5.5-mini"}))
        );
        assert_eq!(svg_object(&SvgOptions::default()), None);
    }
}
