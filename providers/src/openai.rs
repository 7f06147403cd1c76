//! OpenAI Images API provider (`kind = "openai"`), also used for OpenAI-compatible servers.
//!
//! One `POST {base_url}/images/generations` per attempt (`/images/edits` and
//! `/images/variations` as `multipart/form-data` for edits and variations), retried per
//! [`RetryPolicy`] within an overall deadline. A form cannot be cloned, so each attempt builds
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
//! [`fingerprint`](crate::secret::fingerprint)) and the base URL's password at the edge, in `send`.
//! `parse_error` also marks answers saying the model does not exist or was retired, so callers
//! can move to its replacement. `GET {base_url}/models` lists the account's image models with
//! their announced shutdown dates.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::{future::try_join_all, StreamExt};
use reqwest::{
    header::HeaderMap,
    multipart::{Form, Part},
    StatusCode,
};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::{
    images_body::{BodyScanner, Decoded, ImagesBody, LENIENT_BASE64, PLACEHOLDER},
    keys::{KeyPool, PoolKey},
    retry::{self, GiveUp, RetryPolicy},
    secret::Scrubber,
    sse::{SseEvent, SseParser},
    validate, Catalog, EditRequest, ErrorKind, Events, GenerateRequest, GenerateResult,
    GeneratedImage, ImageFormat, ImageProvider, InputImage, ModelCapabilities, Param,
    ProviderError, ProviderEvent, SvgOptions, UpstreamModel, Usage, VariationRequest,
};

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

/// The most redirects a result-URL download follows.
const MAX_REDIRECTS: usize = 5;

/// Error bodies are only read for their message; more than this is never useful.
const ERROR_BODY_CAP: usize = 64 * 1024;

/// A model listing is a few hundred entries of a few hundred bytes each; far more is not one.
const MODELS_BODY_CAP: usize = 4 * 1024 * 1024;

/// How the ids of image models begin; the listing holds every model of the account.
const IMAGE_MODEL_PREFIXES: [&str; 3] = ["gpt-image-", "chatgpt-image-", "dall-e-"];

/// The OpenAI provider.
pub struct OpenAiProvider {
    settings: OpenAiSettings,
    client: reqwest::Client,
    /// Fetches result URLs; its redirect policy keeps to `allowed_hosts`. `None` when it could
    /// not be built, which only makes URL results fail.
    downloads: Option<reqwest::Client>,
    generations_url: url::Url,
    edits_url: url::Url,
    variations_url: url::Url,
    allowed_hosts: Arc<AllowedHosts>,
    /// Cleans every string the upstream sends of the pool's keys and the base URL's password.
    scrubber: Scrubber,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The endpoints carry the base URL's password, so only the settings' redacted view shows.
        f.debug_struct("OpenAiProvider")
            .field("settings", &self.settings)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// A provider using `client` (whose connection pool may be shared) with `settings`.
    pub fn new(settings: OpenAiSettings, client: reqwest::Client) -> Self {
        let allowed_hosts = Arc::new(AllowedHosts::new(&settings));
        let policy_hosts = Arc::clone(&allowed_hosts);
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                let msg = format!("more than {MAX_REDIRECTS} redirects");
                return attempt.error(RedirectRefused(msg));
            }
            let next = attempt.url();
            if !matches!(next.scheme(), "http" | "https") {
                let msg = format!("a redirect to a `{}:` URL was refused", next.scheme());
                return attempt.error(RedirectRefused(msg));
            }
            if !policy_hosts.allows(next) {
                let msg = format!(
                    "a redirect to {} was refused; add `{}` to download_hosts to allow it",
                    describe_origin(next),
                    host_port(next)
                );
                return attempt.error(RedirectRefused(msg));
            }
            attempt.follow()
        });
        // A separate client because the shared one follows redirects anywhere; referers are
        // off because result URLs often carry signed query strings.
        let downloads = reqwest::Client::builder()
            .redirect(policy)
            .referer(false)
            .build()
            .map_err(|e| tracing::warn!(error = %e, "could not build the download client"))
            .ok();
        let generations_url = endpoint(&settings.base_url, "images/generations");
        let edits_url = endpoint(&settings.base_url, "images/edits");
        let variations_url = endpoint(&settings.base_url, "images/variations");
        let scrubber = Scrubber::new(&settings.keys, &settings.base_url);
        Self {
            scrubber,
            settings,
            client,
            downloads,
            generations_url,
            edits_url,
            variations_url,
            allowed_hosts,
        }
    }

    /// The JSON body for `request`, holding only what the model takes.
    fn request_body(&self, request: &GenerateRequest) -> Value {
        Value::Object(self.request_fields(request))
    }

    /// The fields of a generation (or of the part an edit shares with one) the model takes,
    /// with `extra` applied last so it can override anything but `model` and `prompt`.
    fn request_fields(&self, request: &GenerateRequest) -> Map<String, Value> {
        let caps = self.settings.catalog.get(&request.model);
        let gif = request.options.output_format == Some(ImageFormat::Gif);
        let svg = request.options.output_format == Some(ImageFormat::Svg);
        let mut body = Map::new();
        body.insert("model".into(), request.model.clone().into());
        body.insert("prompt".into(), request.prompt.clone().into());
        body.insert("n".into(), request.n().into());
        let optional = [
            // Sent as validation read it, not as given (`"1024X1024\n"`).
            // A ratio and resolution become the nearest size the model allows.
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

    /// The multipart form of one attempt at `request`: the text fields as for a generation,
    /// plus `input_fidelity`, one file part per image, the mask and the markup layer.
    fn edit_form(&self, request: &EditRequest) -> Result<Form, ProviderError> {
        let caps = self.settings.catalog.get(&request.model);
        let mut fields = self.request_fields(&request.as_generation());
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

    /// One attempt at a call: the response headers and answer, or the classified error with
    /// every secret scrubbed from it, before anything logs it or rests a key over it.
    async fn send(
        &self,
        call: &Call<'_>,
        key: Option<&PoolKey>,
        events: &Events,
    ) -> Result<(HeaderMap, Answer), ProviderError> {
        self.exchange(call, key, events)
            .await
            .map_err(|e| self.scrubber.error(e))
    }

    /// The request and answer of one attempt, classified but not yet scrubbed.
    async fn exchange(
        &self,
        call: &Call<'_>,
        key: Option<&PoolKey>,
        events: &Events,
    ) -> Result<(HeaderMap, Answer), ProviderError> {
        let s = &self.settings;
        let req = self.client.post(call.url.clone()).timeout(s.timeout);
        let req = match &call.body {
            CallBody::Json(body) => req.json(body),
            CallBody::Edit(request) => req.multipart(self.edit_form(request)?),
            CallBody::Variation(request) => req.multipart(self.variation_form(request)?),
        };
        let resp = self
            .account_headers(req, key)
            .send()
            .await
            .map_err(|e| self.transport_error(e, "the image API", s.timeout))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if !status.is_success() {
            let body = read_truncated(resp, ERROR_BODY_CAP.min(s.max_response_bytes)).await;
            return Err(self.parse_error(status, &headers, &body, key, Some(call.model)));
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
                    ReadError::Transport(e) => self.transport_error(e, "the image API", s.timeout),
                })
        };
        let answer = answer.map_err(|e| e.with_request_id(self.request_id(&headers)))?;
        Ok((headers, answer))
    }

    /// Adds the key and the organization and project headers to `req`.
    fn account_headers(
        &self,
        mut req: reqwest::RequestBuilder,
        key: Option<&PoolKey>,
    ) -> reqwest::RequestBuilder {
        // Per request rather than a client default header, so keys can rotate while the
        // connection pool is shared; `bearer_auth` marks the header sensitive.
        if let Some(key) = key {
            req = req.bearer_auth(key.expose());
        }
        if let Some(org) = &self.settings.organization {
            req = req.header("OpenAI-Organization", org);
        }
        if let Some(project) = &self.settings.project {
            req = req.header("OpenAI-Project", project);
        }
        req
    }

    /// Reads a server-sent event stream up to its completed event, reporting partial images.
    ///
    /// The completed event ends the read even when partials were still due: it holds the final
    /// image, and anything after it is not worth waiting for.
    async fn read_stream(
        &self,
        resp: reqwest::Response,
        call: &Call<'_>,
        key: Option<&PoolKey>,
        events: &Events,
    ) -> Result<Value, ProviderError> {
        let s = &self.settings;
        let mut parser = SseParser::default();
        let mut stream = resp.bytes_stream();
        let (mut received, mut partials) = (0, 0);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| match e.is_timeout() {
                true => self.transport_error(e, "the image API", s.timeout),
                false => stream_ended(&error_chain(&e.without_url())),
            })?;
            received += chunk.len();
            if received > s.max_response_bytes {
                return Err(too_large("the response stream", s.max_response_bytes));
            }
            for event in parser.push(&chunk) {
                match StreamEvent::read(event, &self.scrubber) {
                    // Previews beyond those asked for are not decoded: each costs a decode.
                    StreamEvent::Partial(_) if partials >= call.partials => {
                        tracing::debug!(
                            partials,
                            "ignoring a partial image beyond those asked for"
                        );
                    }
                    StreamEvent::Partial(data) => {
                        report_partial(&data, partials, events);
                        partials += 1;
                    }
                    StreamEvent::Completed(data) => return Ok(data),
                    StreamEvent::Failed(data) => return Err(self.stream_error(&data, key)),
                    StreamEvent::Other => {}
                }
            }
        }
        Err(stream_ended("no more data"))
    }

    /// Classifies an `error` event, which arrives under HTTP 200 once the stream has started.
    fn stream_error(&self, data: &Value, key: Option<&PoolKey>) -> ProviderError {
        let detail = ErrorDetail::from_json(data);
        let provider_message = detail.message.clone();
        let said = provider_message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let unavailable = detail.is(MODEL_NOT_FOUND);
        let (kind, message) = if detail.is_refusal() {
            (
                ErrorKind::ContentPolicy,
                "the prompt was refused by the provider's safety system; rephrase it".to_string(),
            )
        } else if unavailable {
            (
                ErrorKind::NotFound,
                format!("the provider does not serve the model{said}; check the model name"),
            )
        } else if detail.is("insufficient_quota") || detail.is("billing_hard_limit_reached") {
            (
                ErrorKind::QuotaExhausted,
                format!(
                    "the account's quota or billing limit is reached{said}{}",
                    whose(key)
                ),
            )
        } else if detail.is("rate_limit_exceeded") {
            (
                ErrorKind::RateLimited,
                format!("rate limited by the provider during the stream{said}"),
            )
        } else {
            (
                ErrorKind::UpstreamUnavailable,
                format!("the provider reported an error during the stream{said}"),
            )
        };
        let mut err = ProviderError::new(kind, message)
            .with_model_unavailable(unavailable)
            .with_provider_detail(detail.code.or(detail.error_type), provider_message);
        err.param = detail.param;
        err
    }

    /// Turns an error response into a [`ProviderError`]: the one place statuses are classified.
    /// `model` is the model the request named, if it named one.
    fn parse_error(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        key: Option<&PoolKey>,
        model: Option<&str>,
    ) -> ProviderError {
        let detail = ErrorDetail::parse(status, headers, body, &self.scrubber);
        let provider_message = detail.message.clone();
        let (code, error_type) = (detail.code.as_deref(), detail.error_type.as_deref());
        let is = |v: &str| detail.is(v);
        let retry_after = retry::retry_after(headers, SystemTime::now());
        let said = provider_message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let s = status.as_u16();
        let (kind, message) = match s {
            401 => (
                ErrorKind::Auth,
                match key {
                    Some(key) => format!(
                        "the API key {} was rejected (HTTP 401){said}; check that it is current \
                         and meant for {}",
                        key.fingerprint(),
                        self.host()
                    ),
                    None => format!(
                        "the server requires an API key and none is set (HTTP 401){said}; set \
                         OPENAI_API_KEY or api_key in the configuration"
                    ),
                },
            ),
            403 => (
                ErrorKind::Permission,
                format!(
                    "the API key{} may not use this model or resource (HTTP 403){said}; check \
                     the organization, the project and the model's access",
                    key.map(|k| format!(" {}", k.fingerprint()))
                        .unwrap_or_default()
                ),
            ),
            404 => (
                ErrorKind::NotFound,
                format!("not found (HTTP 404){said}; check the model name and the base URL"),
            ),
            400 | 422 if detail.is_refusal() => (
                ErrorKind::ContentPolicy,
                "the prompt was refused by the provider's safety system; rephrase it".into(),
            ),
            400 | 422 if is("billing_hard_limit_reached") => (
                ErrorKind::QuotaExhausted,
                format!(
                    "the account's billing limit is reached{said}{}; raise it or add credit",
                    whose(key)
                ),
            ),
            400 | 422 => (
                ErrorKind::InvalidRequest,
                format!("the provider rejected the request (HTTP {s}){said}"),
            ),
            408 => (
                ErrorKind::Timeout,
                format!("the provider timed out handling the request (HTTP 408){said}"),
            ),
            409 => (
                ErrorKind::UpstreamUnavailable,
                format!("the provider reported a conflict (HTTP 409){said}; try again"),
            ),
            429 if is("insufficient_quota") => (
                ErrorKind::QuotaExhausted,
                format!(
                    "the account's quota is used up (HTTP 429){said}{}; check the plan and \
                     billing details, retrying will not help",
                    whose(key)
                ),
            ),
            429 => (
                ErrorKind::RateLimited,
                match retry_after {
                    Some(wait) => format!(
                        "rate limited by the provider (HTTP 429){said}; it asked to wait {}",
                        describe_wait(wait)
                    ),
                    None => format!("rate limited by the provider (HTTP 429){said}"),
                },
            ),
            500..=599 => (
                ErrorKind::UpstreamUnavailable,
                format!("the provider is unavailable (HTTP {s}){said}"),
            ),
            _ => (
                ErrorKind::BadResponse,
                format!("unexpected HTTP {s} from the provider{said}"),
            ),
        };
        let retryable = retry::should_retry_header(headers)
            .unwrap_or_else(|| retry::status_is_retryable(s, code, error_type));
        let unavailable = model_unavailable(s, &detail, model);
        let mut err = ProviderError::new(kind, message)
            .with_model_unavailable(unavailable)
            .with_status(s)
            .with_retryable(retryable)
            .with_retry_after(retry_after)
            .with_request_id(self.request_id(headers))
            .with_provider_detail(detail.code.or(detail.error_type), provider_message);
        err.param = detail.param;
        err
    }

    /// Classifies a failure to send a request or read its answer.
    fn transport_error(&self, e: reqwest::Error, what: &str, timeout: Duration) -> ProviderError {
        // Redirect refusals carry our own message naming the host.
        if let Some(refused) = find_source::<RedirectRefused>(&e) {
            return ProviderError::new(ErrorKind::BadResponse, format!("{what}: {refused}"));
        }
        let e = e.without_url();
        let detail = error_chain(&e);
        if e.is_connect() {
            ProviderError::new(
                ErrorKind::Network,
                format!("could not connect to {what}: {detail}"),
            )
        } else if e.is_timeout() {
            ProviderError::new(
                ErrorKind::Timeout,
                format!(
                    "{what} gave no complete answer within {}; the request was sent and may \
                     still be billed",
                    describe_wait(timeout)
                ),
            )
        } else if e.is_builder() {
            ProviderError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "could not build the request ({detail}); check the API key, organization \
                     and project for invalid characters"
                ),
            )
            .with_retryable(false)
        } else if e.is_body() || e.is_decode() {
            ProviderError::new(
                ErrorKind::BadResponse,
                format!("the answer from {what} broke off: {detail}"),
            )
        } else {
            ProviderError::new(
                ErrorKind::Network,
                format!("the connection to {what} failed: {detail}"),
            )
        }
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
            Source::Url(url) => (self.download(index, url).await?, None),
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

    /// Fetches a result URL from an allowed host, within the size cap.
    async fn download(&self, index: usize, raw: &str) -> Result<Bytes, ProviderError> {
        let s = &self.settings;
        // Joining makes relative URLs from compatible servers work and leaves absolute ones be.
        let url = s
            .base_url
            .join(raw)
            .map_err(|e| bad(format!("image {index}: the result URL is not valid: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "image {index}: refusing to download a `{}:` URL; only http and https are allowed",
                url.scheme()
            )));
        }
        if !self.allowed_hosts.allows(&url) {
            return Err(bad(format!(
                "image {index}: refusing to download from {}: only the base URL's own scheme, \
                 host and port and the hosts in download_hosts are allowed; add `{}` to \
                 download_hosts to allow it",
                describe_origin(&url),
                host_port(&url)
            )));
        }
        let client = self.downloads.as_ref().ok_or_else(|| {
            bad("result URLs cannot be downloaded: the download client could not be built")
        })?;
        let shown = redacted(&url);
        let what = format!("the download of image {index} from {shown}");
        let resp = client
            .get(url)
            .timeout(s.download_timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(e, &what, s.download_timeout))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(bad(format!(
                "{what} failed with HTTP {}; result URLs expire 60 minutes after generation",
                status.as_u16()
            ))
            .with_status(status.as_u16()));
        }
        read_capped(resp, s.max_response_bytes)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => too_large(&format!("image {index}"), s.max_response_bytes),
                ReadError::Transport(e) => self.transport_error(e, &what, s.download_timeout),
            })
    }
}

#[async_trait]
impl ImageProvider for OpenAiProvider {
    fn kind(&self) -> &'static str {
        "openai"
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
        self.settings.catalog_dates_apply.unwrap_or_else(|| {
            self.settings
                .base_url
                .host_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(OPENAI_HOST))
        })
    }

    fn aliases(&self) -> Vec<(String, String)> {
        ALIASES
            .iter()
            .map(|(alias, model)| (alias.to_string(), model.to_string()))
            .collect()
    }

    async fn list_models(&self) -> Result<Vec<UpstreamModel>, ProviderError> {
        let s = &self.settings;
        // One attempt with whichever key the pool offers: the listing is advisory, and a
        // failure here must not rest or disable a key the image calls are using.
        let key = self.next_key(&[])?;
        let req = self
            .client
            .get(endpoint(&s.base_url, "models"))
            .timeout(s.timeout);
        let what = "the model listing";
        let resp = self
            .account_headers(req, key.as_deref())
            .send()
            .await
            .map_err(|e| self.transport_error(e, what, s.timeout))?;
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
            ReadError::Transport(e) => self.transport_error(e, what, s.timeout),
        });
        body.and_then(|body| parse_models(&body, &self.scrubber))
            .map_err(|e| {
                self.scrubber
                    .error(e.with_request_id(self.request_id(&headers)))
            })
    }

    async fn generate(&self, request: &GenerateRequest) -> Result<GenerateResult, ProviderError> {
        self.generate_with_events(request, &Events::none()).await
    }

    #[tracing::instrument(skip_all, fields(model = %request.model))]
    async fn generate_with_events(
        &self,
        request: &GenerateRequest,
        events: &Events,
    ) -> Result<GenerateResult, ProviderError> {
        let call = Call {
            url: &self.generations_url,
            model: &request.model,
            n: request.n(),
            partials: request.options.partial_images.map_or(0, u32::from),
            what: "image generation",
            body: CallBody::Json(self.request_body(request)),
        };
        self.call(&call, events).await
    }

    #[tracing::instrument(skip_all, fields(model = %request.model))]
    async fn edit_with_events(
        &self,
        request: &EditRequest,
        events: &Events,
    ) -> Result<GenerateResult, ProviderError> {
        // The caller validated the request; this guard only keeps a model the catalog says
        // cannot edit from costing a round trip.
        if !self.settings.catalog.get(&request.model).edit {
            return Err(ProviderError::unsupported(format!(
                "{} cannot edit images",
                request.model
            )));
        }
        let call = Call {
            url: &self.edits_url,
            model: &request.model,
            n: request.n(),
            partials: request.options.partial_images.map_or(0, u32::from),
            what: "image edit",
            body: CallBody::Edit(request),
        };
        self.call(&call, events).await
    }

    #[tracing::instrument(skip_all, fields(model = %request.model))]
    async fn create_variation(
        &self,
        request: &VariationRequest,
    ) -> Result<GenerateResult, ProviderError> {
        let catalog = &self.settings.catalog;
        if !catalog.get(&request.model).variations {
            return Err(validate::variations_unsupported(
                &request.model,
                &catalog.variation_models(),
            ));
        }
        let call = Call {
            url: &self.variations_url,
            model: &request.model,
            n: request.n.max(1),
            partials: 0,
            what: "image variation",
            body: CallBody::Variation(request),
        };
        self.call(&call, &Events::none()).await
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

/// How far a call got, kept outside its future so a deadline can report it.
#[derive(Debug, Default)]
struct CallState {
    attempts: u32,
    last_error: Option<ProviderError>,
}

impl OpenAiProvider {
    /// Runs `call` within the deadline, turning a cut-off into an error that says how far it got.
    async fn call(
        &self,
        call: &Call<'_>,
        events: &Events,
    ) -> Result<GenerateResult, ProviderError> {
        let deadline = later(self.settings.deadline);
        let mut state = CallState::default();
        // Everything runs inside this one future, so reaching the deadline (or the caller
        // dropping it) abandons the request in flight or the wait in progress at once.
        let outcome =
            tokio::time::timeout_at(deadline, self.run(call, events, deadline, &mut state)).await;
        match outcome {
            Ok(result) => result.map_err(|e| e.with_attempts(state.attempts)),
            Err(_) => Err(self.deadline_reached(state)),
        }
    }

    /// The attempts of one call: keys, retries and waits, up to a result or a final error.
    async fn run(
        &self,
        call: &Call<'_>,
        events: &Events,
        deadline: Instant,
        state: &mut CallState,
    ) -> Result<GenerateResult, ProviderError> {
        let policy = self.settings.retry_policy();
        let pool = &self.settings.keys;
        let mut retries = 0;
        // Keys this call moved away from since its last wait.
        let mut left: Vec<Arc<PoolKey>> = Vec::new();
        let mut key = self.wait_for_key(&left, deadline, &policy, events).await?;
        loop {
            state.attempts += 1;
            events.send(ProviderEvent::Requesting {
                attempt: state.attempts,
            });
            let err = match self.send(call, key.as_deref(), events).await {
                Ok((headers, answer)) => {
                    if let Some(key) = &key {
                        pool.succeeded(key);
                    }
                    return self.finish(call, &headers, answer, retries).await;
                }
                Err(err) => err,
            };
            // How long until some key of the pool is usable again, when none is now.
            let mut key_wait = Duration::ZERO;
            // A 403 is often about one model (an unverified organisation, say): taking a lone key
            // out of rotation would block every other model too, so only pools move on from it.
            let action = KeyAction::after(&err, policy.retry_after_cap)
                .filter(|_| err.kind != ErrorKind::Permission || pool.len() > 1);
            if let (Some(used), Some(action)) = (key.clone(), action) {
                action.apply(pool, &used);
                left.push(used.clone());
                match self.next_key(&left) {
                    Ok(next) => {
                        tracing::info!(
                            from = used.fingerprint(),
                            reason = %action.reason,
                            "moving to another API key"
                        );
                        events.send(ProviderEvent::SwitchingKey {
                            from: used.fingerprint().to_string(),
                            reason: action.reason,
                        });
                        key = next;
                        state.last_error = Some(err);
                        continue;
                    }
                    Err(none_left) if action.disables => {
                        return Err(no_key_left(err, &none_left, pool.len(), retries));
                    }
                    Err(none_left) => key_wait = none_left.retry_after.unwrap_or_default(),
                }
            }
            let delay = match policy.next_delay(&err, retries) {
                Ok(delay) => delay.max(key_wait),
                Err(why) => return Err(gave_up(err, why, &policy, retries)),
            };
            if later(delay) >= deadline {
                let mut err = err;
                err.message = format!(
                    "{}; not retried because waiting {} would pass the call's deadline of {}",
                    err.message,
                    describe_wait(delay),
                    describe_wait(self.settings.deadline)
                );
                return Err(after_retries(err, retries));
            }
            tracing::warn!(
                status = ?err.status,
                kind = %err.kind,
                delay_ms = delay.as_millis() as u64,
                attempt = state.attempts,
                retry = retries + 1,
                max_retries = policy.max_retries,
                request_id = err.request_id.as_deref(),
                call = call.what,
                "image request failed; retrying"
            );
            events.send(ProviderEvent::Retrying {
                attempt: state.attempts,
                delay,
                reason: err.message.clone(),
            });
            state.last_error = Some(err);
            tokio::time::sleep(delay).await;
            retries += 1;
            left.clear();
            key = self.wait_for_key(&left, deadline, &policy, events).await?;
        }
    }

    /// The next key, waiting when every key is resting briefly: a rate limit seen by one call
    /// should slow the calls beside it, not fail them. A wait past the retry cap or the
    /// deadline fails at once with the pool's error, which says when a key will be usable.
    async fn wait_for_key(
        &self,
        left: &[Arc<PoolKey>],
        deadline: Instant,
        policy: &RetryPolicy,
        events: &Events,
    ) -> Result<Option<Arc<PoolKey>>, ProviderError> {
        loop {
            let err = match self.next_key(left) {
                Ok(key) => return Ok(key),
                Err(err) => err,
            };
            let wait = match err.retry_after {
                // The floor keeps a cooldown ending right now from spinning.
                Some(wait) if err.kind == ErrorKind::RateLimited => {
                    wait.max(Duration::from_millis(10))
                }
                _ => return Err(err),
            };
            if wait > policy.retry_after_cap || later(wait) >= deadline {
                return Err(err);
            }
            events.send(ProviderEvent::Retrying {
                attempt: 0,
                delay: wait,
                reason: format!("waiting for an API key: {}", err.message),
            });
            tokio::time::sleep(wait).await;
        }
    }

    /// The key for the next attempt, skipping `left`; `None` when the pool has no keys at all.
    fn next_key(&self, left: &[Arc<PoolKey>]) -> Result<Option<Arc<PoolKey>>, ProviderError> {
        let pool = &self.settings.keys;
        if pool.is_empty() {
            return Ok(None);
        }
        let left: Vec<&PoolKey> = left.iter().map(|k| &**k).collect();
        pool.pick(&left).map(Some)
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
            // Parse errors and download failures quote what the upstream sent.
            self.scrubber.error(e)
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

    /// The error of a call cut off by its deadline, saying how far it got.
    fn deadline_reached(&self, call: CallState) -> ProviderError {
        let n = call.attempts;
        let last = call
            .last_error
            .map(|e| format!("; the last failure before it: {e}"))
            .unwrap_or_default();
        ProviderError::new(
            ErrorKind::Timeout,
            format!(
                "the call did not finish within its deadline of {} after {n} attempt{}{last}",
                describe_wait(self.settings.deadline),
                if n == 1 { "" } else { "s" }
            ),
        )
        .with_attempts(n)
    }
}

/// What a failure says about the key that was used.
#[derive(Debug)]
struct KeyAction {
    /// Out of rotation (rejected, no quota) rather than resting (rate limited).
    disables: bool,
    /// The failure's kind, kept with a disabled key so the pool can report it.
    kind: ErrorKind,
    /// Why, for logs, events and the pool's status.
    reason: String,
    retry_after: Option<Duration>,
}

impl KeyAction {
    /// The action `err` calls for, if it is about the key at all. A server-asked rest is cut
    /// to `cap`: a longer one fails the call, and must not lock the key out for longer.
    fn after(err: &ProviderError, cap: Duration) -> Option<Self> {
        let what = match err.kind {
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Auth => "rejected",
            ErrorKind::Permission => "not permitted",
            ErrorKind::QuotaExhausted => "out of quota or over the billing limit",
            _ => return None,
        };
        let detail: Vec<String> = err
            .status
            .map(|s| format!("HTTP {s}"))
            .into_iter()
            .chain(err.provider_code.clone())
            .collect();
        let reason = match detail.is_empty() {
            true => what.to_string(),
            false => format!("{what} ({})", detail.join(", ")),
        };
        Some(Self {
            disables: err.kind != ErrorKind::RateLimited,
            kind: err.kind,
            reason,
            retry_after: err.retry_after.map(|wait| wait.min(cap)),
        })
    }

    fn apply(&self, pool: &KeyPool, key: &PoolKey) {
        match self.disables {
            true => pool.disable(key, self.kind, self.reason.clone()),
            false => pool.cool_down(key, self.retry_after),
        }
    }
}

/// The error of the last usable key, noting that the pool has none left.
fn no_key_left(
    mut err: ProviderError,
    pool_err: &ProviderError,
    keys: usize,
    retries: u32,
) -> ProviderError {
    if keys > 1 {
        err.message = format!("{}; {}", err.message, pool_err.message);
    }
    after_retries(err, retries)
}

/// Says in the message why the policy stopped retrying, where the error does not already.
fn gave_up(
    mut err: ProviderError,
    why: GiveUp,
    policy: &RetryPolicy,
    retries: u32,
) -> ProviderError {
    match why {
        GiveUp::ReadTimeout => err
            .message
            .push_str(", so it is not retried (set retry_on_timeout = true to retry it)"),
        GiveUp::WaitTooLong(wait) => {
            let when = http_date_after(wait);
            err.message = format!(
                "{}; the provider asked to wait {}, longer than retry_after_cap ({}), so it was \
                 not retried: try again after {when}",
                err.message,
                describe_wait(wait),
                describe_wait(policy.retry_after_cap)
            );
        }
        GiveUp::Permanent | GiveUp::OutOfRetries => {}
    }
    after_retries(err, retries)
}

/// The HTTP date `wait` from now, or "much later" past what an HTTP date can say (year
/// 9999): a server may ask for any wait, and neither the clock nor the formatter may panic.
fn http_date_after(wait: Duration) -> String {
    // 9999-12-31T23:59:59Z, the last second `httpdate` formats.
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    let last = SystemTime::UNIX_EPOCH + LAST;
    match SystemTime::now().checked_add(wait) {
        Some(when) if when <= last => httpdate::fmt_http_date(when),
        _ => "much later (a date past year 9999)".into(),
    }
}

/// The instant `wait` from now, or about a century from now when that cannot be represented.
fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 60 * 60))
}

/// Notes in the message that retries were made and did not help.
fn after_retries(mut err: ProviderError, retries: u32) -> ProviderError {
    if retries > 0 {
        let s = if retries == 1 { "y" } else { "ies" };
        err.message = format!("{} (after {retries} retr{s})", err.message);
    }
    err
}

/// Names the key in a message about the account, e.g. ` (key sk-…abcd)`.
fn whose(key: Option<&PoolKey>) -> String {
    key.map(|k| format!(" (key {})", k.fingerprint()))
        .unwrap_or_default()
}

/// What a successful attempt returned.
#[derive(Debug)]
enum Answer {
    /// A JSON body holding every image, its images decoded as it arrived.
    Json(ImagesBody),
    /// The data of a stream's completed event, holding the final image.
    Completed(Value),
}

/// Where one result image's bytes come from.
enum Source<'a> {
    /// Decoded while the body was read.
    Decoded(Result<Decoded, String>),
    /// Base64 still to decode.
    Text(&'a str),
    /// A `data:` URL.
    DataUrl(&'a str),
    /// A URL to download.
    Url(&'a str),
    /// Neither `b64_json` nor `url`.
    Missing,
}

impl<'a> Source<'a> {
    fn of(datum: &'a Datum, decoded: Option<&mut ImagesBody>) -> Self {
        if let Some(b64) = datum.b64_json.as_deref().filter(|s| !s.trim().is_empty()) {
            return match b64.starts_with(PLACEHOLDER) {
                true => decoded
                    .and_then(|body| body.take(b64))
                    .map_or(Self::Missing, Self::Decoded),
                false => Self::Text(b64),
            };
        }
        match datum
            .url
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => Self::Missing,
            Some(url)
                if url
                    .get(..5)
                    .is_some_and(|s| s.eq_ignore_ascii_case("data:")) =>
            {
                Self::DataUrl(url)
            }
            Some(url) => Self::Url(url),
        }
    }
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// A stream that stopped before its completed event: retryable, like a dropped connection.
fn stream_ended(detail: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::Network,
        format!("the stream ended before the image was complete ({detail})"),
    )
}

/// One server-sent event of an image stream, by what it means.
#[derive(Debug)]
enum StreamEvent {
    Partial(Value),
    Completed(Value),
    Failed(Value),
    Other,
}

impl StreamEvent {
    /// Reads the event's name from its data's `type`, else from its `event:` line, so both
    /// styles of server work (`image_generation.*` and `image_edit.*` alike).
    fn read(event: SseEvent, scrubber: &Scrubber) -> Self {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return match event.event.as_str() {
                // Scrubbed whole before the cut, so no part of a key survives it.
                "error" => Self::Failed(
                    serde_json::json!({ "message": scrubber.excerpt(&event.data, 200) }),
                ),
                _ => Self::Other,
            };
        };
        let name = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&event.event)
            .to_string();
        if name == "error"
            || event.event == "error"
            || data.get("error").is_some_and(|e| !e.is_null())
        {
            Self::Failed(data)
        } else if name.ends_with(".partial_image") {
            Self::Partial(data)
        } else if name.ends_with(".completed") {
            Self::Completed(data)
        } else {
            Self::Other
        }
    }
}

/// Sends a partial image as an event; `seen` partials came before it.
fn report_partial(data: &Value, seen: u32, events: &Events) {
    let index = data
        .get("partial_image_index")
        .and_then(Value::as_u64)
        .map_or(seen, |i| i as u32);
    let image = data
        .get("b64_json")
        .and_then(Value::as_str)
        .and_then(|b64| decode_base64(b64).ok())
        .and_then(|bytes| GeneratedImage::from_encoded(bytes).ok());
    match image {
        Some(image) => events.send(ProviderEvent::PartialImage { index, image }),
        // A partial is only a preview: a broken one must not fail a generation still under way.
        None => tracing::warn!(index, "skipping an unusable partial image"),
    }
}

/// `base` with `path` appended to its path, keeping any query (Azure-style `api-version`).
fn endpoint(base: &url::Url, path: &str) -> url::Url {
    let mut url = base.clone();
    let joined = format!("{}/{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

/// Where result URLs may be downloaded from: the base URL's origin and `download_hosts`.
///
/// Ports count: a result URL (or a redirect) naming another port of the base URL's host would
/// otherwise make this server a port scanner of that host.
#[derive(Debug)]
struct AllowedHosts {
    /// The base URL's scheme, host and port (its scheme's default when it names none).
    base: Option<(String, String, u16)>,
    /// `download_hosts` entries: `host:port`, or a bare host meaning ports 80 and 443.
    extra: Vec<(String, Option<u16>)>,
}

impl AllowedHosts {
    fn new(settings: &OpenAiSettings) -> Self {
        let url = &settings.base_url;
        let base = match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => {
                Some((url.scheme().to_string(), normalize_host(host), port))
            }
            _ => None,
        };
        let extra = settings
            .download_hosts
            .iter()
            .map(|entry| split_host_port(entry))
            .filter(|(host, _)| !host.is_empty())
            .collect();
        Self { base, extra }
    }

    fn allows(&self, url: &url::Url) -> bool {
        let (Some(host), Some(port)) = (
            url.host_str().map(normalize_host),
            url.port_or_known_default(),
        ) else {
            return false;
        };
        let base = self
            .base
            .as_ref()
            .is_some_and(|(s, h, p)| s == url.scheme() && *h == host && *p == port);
        base || self.extra.iter().any(|(h, p)| {
            *h == host
                && match p {
                    Some(p) => *p == port,
                    None => matches!(port, 80 | 443),
                }
        })
    }
}

/// A `download_hosts` entry as host and port: `host`, `host:port`, `[v6]`, `[v6]:port` or a
/// bare IPv6 address (which has no port).
fn split_host_port(entry: &str) -> (String, Option<u16>) {
    let entry = entry.trim();
    let (host, port) = match entry
        .strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
    {
        Some((host, rest)) => (host, rest.strip_prefix(':')),
        None => match entry.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            _ => (entry, None),
        },
    };
    match port.map(str::parse::<u16>) {
        None => (normalize_host(host), None),
        Some(Ok(port)) => (normalize_host(host), Some(port)),
        // An entry that does not parse allows nothing rather than every port.
        Some(Err(_)) => (String::new(), None),
    }
}

/// Lowercases a host and drops IPv6 brackets, so `[::1]` and `::1` compare equal.
fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// A URL's host and port for messages, e.g. host `files.example.com` port 8443.
fn describe_origin(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("host `{host}` port {port}"),
        None => format!("host `{host}`"),
    }
}

/// A URL's `host:port`, as a `download_hosts` entry allowing it is written.
fn host_port(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Why the download client refused to follow a redirect.
#[derive(Debug)]
struct RedirectRefused(String);

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedirectRefused {}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// An error and its causes on one line; reqwest's own text holds no headers.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut current = e.source();
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

/// A URL fit for messages: no credentials, no (often signed) query string.
fn redacted(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

fn bad(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::BadResponse, message)
}

fn too_large(what: &str, cap: usize) -> ProviderError {
    bad(format!(
        "{what} is larger than {}; raise max_response_bytes to accept it",
        describe_bytes(cap)
    ))
}

fn describe_bytes(n: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if n >= MIB && n % MIB == 0 {
        format!("{} MiB", n / MIB)
    } else if n >= MIB {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    } else {
        format!("{n} bytes")
    }
}

fn describe_wait(wait: Duration) -> String {
    let secs = wait.as_secs_f64();
    if secs >= 1.0 && wait.subsec_millis() == 0 {
        format!("{} s", wait.as_secs())
    } else {
        format!("{secs:.1} s")
    }
}

/// The start of a body fit for a message, scrubbed before it is cut: a window a secret
/// cannot straddle unnoticed (the scrubber drops a secret's beginning at its end).
fn quoted(body: &[u8], scrubber: &Scrubber) -> String {
    scrubber.excerpt(&String::from_utf8_lossy(&body[..body.len().min(4096)]), 120)
}

enum ReadError {
    TooLarge,
    Transport(reqwest::Error),
}

/// Answers decoded at once across the process: one per core.
fn decode_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    })
}

/// Reads a body as a stream, giving up as soon as it exceeds `cap` bytes.
async fn read_capped(resp: reqwest::Response, cap: usize) -> Result<Bytes, ReadError> {
    let announced = announced_length(&resp, cap)?;
    // One allocation of the announced size instead of a buffer doubling (and copying) its way up.
    let mut out = BytesMut::with_capacity(announced);
    read_chunks(resp, cap, |chunk| out.extend_from_slice(chunk)).await?;
    Ok(out.freeze())
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

/// The body's announced length (0 when unknown), refused at once when over `cap`.
fn announced_length(resp: &reqwest::Response, cap: usize) -> Result<usize, ReadError> {
    match resp.content_length() {
        Some(n) if n > cap as u64 => Err(ReadError::TooLarge),
        n => Ok(n.unwrap_or(0) as usize),
    }
}

/// Hands each chunk of a body to `take`, giving up as soon as the body exceeds `cap` bytes.
async fn read_chunks(
    resp: reqwest::Response,
    cap: usize,
    mut take: impl FnMut(&[u8]),
) -> Result<(), ReadError> {
    let mut received = 0;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReadError::Transport)?;
        received += chunk.len();
        if received > cap {
            return Err(ReadError::TooLarge);
        }
        take(&chunk);
    }
    Ok(())
}

/// Reads at most `cap` bytes of a body, ignoring failures: for error bodies, where the status
/// already says what happened and the text is a bonus.
async fn read_truncated(resp: reqwest::Response, cap: usize) -> Bytes {
    let mut out = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = cap - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    out.freeze()
}

/// Standard base64, tolerating line breaks, spaces and missing padding.
fn decode_base64(text: &str) -> Result<Bytes, base64::DecodeError> {
    // Copying 2 MB to drop whitespace that is almost never there cost a fifth of a call's CPU.
    if !text.bytes().any(|b| b.is_ascii_whitespace()) {
        return LENIENT_BASE64.decode(text).map(Bytes::from);
    }
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    LENIENT_BASE64.decode(clean).map(Bytes::from)
}

/// Decodes `data:image/png;base64,...`.
fn decode_data_url(url: &str) -> Result<Bytes, String> {
    let (meta, data) = url[5..]
        .split_once(',')
        .ok_or_else(|| "no `,` separates the media type from the data".to_string())?;
    if !meta.to_ascii_lowercase().ends_with(";base64") {
        return Err("only base64 `data:` URLs are supported".into());
    }
    decode_base64(data).map_err(|e| format!("invalid base64: {e}"))
}

/// What an error body says; every field is optional because servers fill them loosely.
#[derive(Debug, Default)]
struct ErrorDetail {
    message: Option<String>,
    error_type: Option<String>,
    param: Option<String>,
    code: Option<String>,
}

impl ErrorDetail {
    /// Reads OpenAI's `{"error": {...}}`, a bare `{"error": "..."}` or `{"message"|"detail": ...}`,
    /// or else the body as text (HTML pages are named, not quoted).
    /// A text body is scrubbed whole before it is cut.
    fn parse(status: StatusCode, headers: &HeaderMap, body: &[u8], scrubber: &Scrubber) -> Self {
        if let Ok(json) = serde_json::from_slice::<Value>(body) {
            return Self::from_json(&json);
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let html_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("html"));
        let message = if text.is_empty() {
            None
        } else if html_type || text.starts_with('<') {
            Some(format!("HTTP {} with an HTML body", status.as_u16()))
        } else {
            Some(scrubber.excerpt(text, 200))
        };
        Self {
            message,
            ..Self::default()
        }
    }

    /// Reads the JSON shapes of [`ErrorDetail::parse`]; a flat object may also carry a `code`
    /// (as stream `error` events do).
    fn from_json(json: &Value) -> Self {
        match json.get("error") {
            Some(Value::Object(e)) => Self {
                message: text_field(e.get("message")),
                error_type: text_field(e.get("type")),
                param: text_field(e.get("param")),
                code: text_field(e.get("code")),
            },
            Some(Value::String(message)) => Self {
                message: text_field(Some(&Value::String(message.clone()))),
                ..Self::default()
            },
            _ => Self {
                message: text_field(json.get("message")).or_else(|| text_field(json.get("detail"))),
                code: text_field(json.get("code")),
                ..Self::default()
            },
        }
    }

    /// Whether the provider's code or type is `value`.
    fn is(&self, value: &str) -> bool {
        self.code.as_deref() == Some(value) || self.error_type.as_deref() == Some(value)
    }

    /// Whether the provider's safety system refused the prompt or image.
    fn is_refusal(&self) -> bool {
        [
            "moderation_blocked",
            "image_generation_user_error",
            "content_policy_violation",
            "contentFilter",
        ]
        .iter()
        .any(|v| self.is(v))
    }
}

/// The code (or type) OpenAI gives an unknown model.
const MODEL_NOT_FOUND: &str = "model_not_found";

/// What providers say of a model they no longer serve; matched in lowercase.
const RETIRED_PHRASES: [&str; 6] = [
    "deprecated",
    "shut down",
    "shutdown",
    "retired",
    "no longer available",
    "does not exist",
];

/// Whether an error answer says the requested model does not exist or was retired: a 404
/// `model_not_found`, or a 400/404/410 whose message says so of the model.
///
/// How OpenAI answers for a shut-down model is not documented, so the message is read too;
/// it must be about the model (name it, or the word "model", or blame the `model` parameter),
/// so that a parameter called deprecated does not count as the model gone.
fn model_unavailable(status: u16, detail: &ErrorDetail, model: Option<&str>) -> bool {
    if status == 404 && detail.is(MODEL_NOT_FOUND) {
        return true;
    }
    if !matches!(status, 400 | 404 | 410) {
        return false;
    }
    let Some(message) = detail.message.as_deref().map(str::to_lowercase) else {
        return false;
    };
    let about_model = message.contains("model")
        || detail.param.as_deref() == Some("model")
        || model.is_some_and(|m| !m.is_empty() && message.contains(&m.to_lowercase()));
    about_model && RETIRED_PHRASES.iter().any(|p| message.contains(p))
}

/// A string (or number, which some servers send as `code`) that is not blank.
fn text_field(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The generation response; unknown fields are ignored and the described ones are read as
/// plain strings, so new values never break parsing.
#[derive(Debug, Deserialize)]
struct ImagesResponse {
    #[serde(default)]
    data: Option<Vec<Datum>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default, deserialize_with = "lenient_string")]
    size: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    quality: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    background: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    output_format: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Datum {
    #[serde(default, deserialize_with = "lenient_string")]
    b64_json: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    url: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    revised_prompt: Option<String>,
}

impl ImagesResponse {
    /// Parses a JSON answer (its skeleton, when read by [`BodyScanner`]).
    fn from_body(body: &[u8], scrubber: &Scrubber) -> Result<Self, ProviderError> {
        serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "the response is not the expected JSON ({e}); it starts with: {}",
                quoted(body, scrubber)
            ))
        })
    }

    /// A stream's completed event holds one image's fields beside the response's own.
    fn from_completed(data: Value) -> Result<Self, ProviderError> {
        let unexpected = |e: serde_json::Error| {
            bad(format!(
                "the completed event is not the expected JSON ({e})"
            ))
        };
        let datum: Datum = serde_json::from_value(data.clone()).map_err(unexpected)?;
        let mut resp: ImagesResponse = serde_json::from_value(data).map_err(unexpected)?;
        resp.data = Some(vec![datum]);
        Ok(resp)
    }
}

/// The image models of a `GET /models` answer, sorted by id: entries without a string id are
/// skipped, and a `shutdown_date` that is not a non-blank string counts as none announced.
/// Ids and dates are printed and logged, so only plain tokens without a secret are kept.
fn parse_models(body: &[u8], scrubber: &Scrubber) -> Result<Vec<UpstreamModel>, ProviderError> {
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the model listing is not the expected JSON ({e}); it starts with: {}",
            quoted(body, scrubber)
        ))
    })?;
    let data = json
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the model listing has no `data` list"))?;
    let mut models: Vec<UpstreamModel> = data
        .iter()
        .filter_map(|entry| {
            let id = scrubber.token(entry.get("id")?.as_str()?)?;
            let lower = id.to_ascii_lowercase();
            if !IMAGE_MODEL_PREFIXES.iter().any(|p| lower.starts_with(p)) {
                return None;
            }
            let shutdown = entry
                .get("shutdown_date")
                .and_then(Value::as_str)
                .and_then(|d| scrubber.token(d));
            Some(UpstreamModel::new(id, shutdown))
        })
        .collect();
    models.sort_by(|a, b| a.id.cmp(&b.id));
    // A listing naming a model twice would otherwise show it twice.
    models.dedup_by(|a, b| a.id == b.id);
    Ok(models)
}

fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_detail(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ErrorDetail {
        ErrorDetail::parse(status, headers, body, &Scrubber::default())
    }

    #[test]
    fn endpoint_joins_with_or_without_a_trailing_slash_and_keeps_the_query() {
        for base in ["https://api.openai.com/v1", "https://api.openai.com/v1/"] {
            let url = endpoint(&base.parse().unwrap(), "images/generations");
            assert_eq!(url.as_str(), "https://api.openai.com/v1/images/generations");
        }
        let azure =
            "https://x.openai.azure.com/openai/deployments/d?api-version=2025-04-01-preview";
        let url = endpoint(&azure.parse().unwrap(), "images/generations");
        assert_eq!(
            url.as_str(),
            "https://x.openai.azure.com/openai/deployments/d/images/generations?api-version=2025-04-01-preview"
        );
        let root = endpoint(
            &"http://localhost:8080".parse().unwrap(),
            "images/generations",
        );
        assert_eq!(root.as_str(), "http://localhost:8080/images/generations");
    }

    #[test]
    fn base64_tolerates_whitespace_and_missing_padding() {
        assert_eq!(&decode_base64("aGVs\nbG8=\n").unwrap()[..], b"hello");
        assert_eq!(&decode_base64("aGVsbG8").unwrap()[..], b"hello");
        assert!(decode_base64("***").is_err());
        assert_eq!(
            &decode_data_url("data:image/png;base64,aGVsbG8=").unwrap()[..],
            b"hello"
        );
        assert!(decode_data_url("data:text/plain,hello").is_err());
    }

    #[test]
    fn error_bodies_are_read_leniently() {
        let h = HeaderMap::new();
        let d = parse_detail(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"error":{"message":null,"type":"invalid_request_error","param":"size","code":null}}"#,
        );
        assert_eq!(d.message, None);
        assert_eq!(d.error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(d.param.as_deref(), Some("size"));
        let d = parse_detail(
            StatusCode::BAD_GATEWAY,
            &h,
            b"  <html><body>Bad gateway</body></html>",
        );
        assert_eq!(d.message.as_deref(), Some("HTTP 502 with an HTML body"));
        let long = format!("error   code:\n 1015 {}", "x".repeat(500));
        let d = parse_detail(StatusCode::TOO_MANY_REQUESTS, &h, long.as_bytes());
        let message = d.message.unwrap();
        assert!(message.starts_with("error code: 1015 xxx"), "{message}");
        assert_eq!(message.chars().count(), 201);
        let d = parse_detail(StatusCode::BAD_REQUEST, &h, br#"{"error":"nope","code":7}"#);
        assert_eq!(d.message.as_deref(), Some("nope"));
        let d = parse_detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            &h,
            br#"{"detail":"bad n"}"#,
        );
        assert_eq!(d.message.as_deref(), Some("bad n"));
        let d = parse_detail(StatusCode::BAD_REQUEST, &h, br#"{"error":{"code":400}}"#);
        assert_eq!(d.code.as_deref(), Some("400"));
    }

    #[test]
    fn hosts_compare_case_insensitively_and_exactly_with_their_ports() {
        let mut settings = OpenAiSettings::new("http://API.example.com/v1".parse().unwrap(), None);
        settings.download_hosts = vec![
            "Files.Example.NET".into(),
            "[::1]:9000".into(),
            "cdn.example.org:8443".into(),
            "bad.example.org:http".into(),
        ];
        let hosts = AllowedHosts::new(&settings);
        let allows = |u: &str| hosts.allows(&u.parse().unwrap());
        assert!(allows("http://api.example.com/x.png"));
        assert!(allows("http://api.example.com:80/x.png"));
        // The base URL's origin is its scheme, host and port.
        assert!(!allows("https://api.example.com/x.png"));
        assert!(!allows("http://api.example.com:8080/x.png"));
        // A bare download host means its default ports only.
        assert!(allows("https://files.example.net/x.png"));
        assert!(allows("http://files.example.net/x.png"));
        assert!(!allows("https://files.example.net:8443/x.png"));
        assert!(allows("http://[::1]:9000/x.png"));
        assert!(!allows("http://[::1]:9001/x.png"));
        assert!(allows("https://cdn.example.org:8443/x.png"));
        assert!(!allows("https://cdn.example.org/x.png"));
        assert!(!allows("http://bad.example.org/x.png"));
        assert!(!allows("https://evil.files.example.net/x.png"));
        assert!(!allows("https://example.com/x.png"));
        assert_eq!(split_host_port("::1"), ("::1".into(), None));
    }

    fn detail(message: Option<&str>, code: Option<&str>, param: Option<&str>) -> ErrorDetail {
        ErrorDetail {
            message: message.map(String::from),
            error_type: Some("invalid_request_error".into()),
            param: param.map(String::from),
            code: code.map(String::from),
        }
    }

    #[test]
    fn retired_models_are_told_apart_from_other_errors() {
        let model = Some("gpt-image-1.5");
        let yes = [
            (404, detail(None, Some("model_not_found"), None)),
            (
                404,
                ErrorDetail {
                    error_type: Some("model_not_found".into()),
                    ..ErrorDetail::default()
                },
            ),
            (
                404,
                detail(Some("The model `gpt-image-9` does not exist"), None, None),
            ),
            (
                400,
                detail(
                    Some("The model `gpt-image-1.5` has been DEPRECATED."),
                    None,
                    None,
                ),
            ),
            (
                400,
                detail(
                    Some("gpt-image-1.5 was shut down on 2026-12-01"),
                    None,
                    None,
                ),
            ),
            (
                410,
                detail(Some("gpt-image-1.5 is no longer available"), None, None),
            ),
            (410, detail(Some("This model is retired"), None, None)),
            (400, detail(Some("Retired."), None, Some("model"))),
        ];
        for (status, d) in &yes {
            assert!(model_unavailable(*status, d, model), "{status} {d:?}");
        }
        let no = [
            // A 400 with the code but nothing saying the model is gone: only a 404 counts.
            (400, detail(Some("bad"), Some("model_not_found"), None)),
            (
                404,
                detail(Some("Invalid URL (POST /v1/images/foo)"), None, None),
            ),
            (
                400,
                detail(Some("Invalid size '999x999'."), Some("invalid_size"), None),
            ),
            // A parameter called deprecated is not the model gone.
            (
                400,
                detail(
                    Some("The parameter `response_format` is deprecated"),
                    Some("unknown_parameter"),
                    Some("response_format"),
                ),
            ),
            (400, detail(None, None, Some("model"))),
            // Other statuses never mean the model is gone, whatever they say.
            (
                403,
                detail(Some("The model gpt-image-1.5 is retired"), None, None),
            ),
            (
                500,
                detail(Some("model does not exist"), Some("model_not_found"), None),
            ),
        ];
        for (status, d) in &no {
            assert!(!model_unavailable(*status, d, model), "{status} {d:?}");
        }
        // Without the requested model's name, the word "model" is needed.
        let bare = detail(Some("gpt-image-1.5 is no longer available"), None, None);
        assert!(!model_unavailable(410, &bare, None));
        assert!(!model_unavailable(410, &bare, Some("")));
    }

    #[test]
    fn model_listings_are_read_leniently() {
        let body = br#"{"object":"list","data":[
            {"id":"gpt-image-2","object":"model","created":1,"owned_by":"system","shutdown_date":null},
            {"id":"dall-e-3","shutdown_date":"2026-05-12","extra":{"x":1}},
            {"id":"gpt-4o","shutdown_date":"2027-01-01"},
            {"id":42},
            {"object":"model"},
            {"id":"chatgpt-image-latest","shutdown_date":20261201},
            {"id":"gpt-image-1.5","shutdown_date":"  "},
            {"id":"GPT-IMAGE-X"},
            {"id":"gpt-image-9\nERROR forged log line"},
            {"id":"gpt-image-3","shutdown_date":"2027-01-01\nERROR forged"},
            "not an object",
            {"id":"gpt-image-2"}
        ]}"#;
        let models = parse_models(body, &Scrubber::default()).unwrap();
        let got: Vec<(&str, Option<&str>)> = models
            .iter()
            .map(|m| (m.id.as_str(), m.shutdown_date.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("GPT-IMAGE-X", None),
                ("chatgpt-image-latest", None),
                ("dall-e-3", Some("2026-05-12")),
                ("gpt-image-1.5", None),
                ("gpt-image-2", None),
                ("gpt-image-3", None),
            ]
        );
        for broken in [&b"not json"[..], b"{}", br#"{"data":{}}"#, b"[]"] {
            let err = parse_models(broken, &Scrubber::default()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
        }
        assert!(parse_models(br#"{"data":[]}"#, &Scrubber::default())
            .unwrap()
            .is_empty());
    }

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

    #[test]
    fn sizes_and_waits_read_well() {
        assert_eq!(describe_bytes(64 * 1024 * 1024), "64 MiB");
        assert_eq!(describe_bytes(1000), "1000 bytes");
        assert_eq!(describe_wait(Duration::from_secs(121)), "121 s");
        assert_eq!(describe_wait(Duration::from_millis(50)), "0.1 s");
    }

    #[test]
    fn far_future_dates_and_instants_never_panic() {
        for secs in [300_000_000_000, i64::MAX as u64, u64::MAX] {
            let wait = Duration::from_secs(secs);
            assert!(http_date_after(wait).starts_with("much later"), "{secs}");
            assert!(later(wait) > Instant::now());
        }
        assert!(http_date_after(Duration::from_secs(60)).ends_with("GMT"));
        assert!(http_date_after(Duration::MAX).starts_with("much later"));
    }
}
