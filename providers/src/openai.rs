//! OpenAI Images API provider (`kind = "openai"`), also used for OpenAI-compatible servers.
//!
//! One `POST {base_url}/images/generations` per attempt, retried per [`crate::retry`]. Only the
//! parameters the model's catalog entry takes are sent, because OpenAI answers anything else
//! with `400 unknown_parameter`. Results arrive as base64 (asked for on DALL·E models) or as
//! URLs, which compatible servers may return anyway; URLs are fetched only from the base URL's
//! host or `download_hosts`, redirects included, so a response cannot make this server fetch
//! arbitrary addresses. Every body is read under `max_response_bytes`. Errors are classified
//! once, in `parse_error`, and never carry the API key: only its [`fingerprint`](crate::secret::fingerprint).

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::{future::try_join_all, StreamExt};
use reqwest::{header::HeaderMap, StatusCode};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{
    keys::{KeyPool, PoolKey},
    retry, Catalog, ErrorKind, GenerateRequest, GenerateResult, GeneratedImage, ImageProvider,
    ModelCapabilities, Param, ProviderError, Usage,
};

/// The default API base.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// The current OpenAI image models advertised when the configuration lists none.
pub const DEFAULT_MODELS: &[&str] = &["gpt-image-1.5", "gpt-image-1-mini", "gpt-image-2"];

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
    /// How many times a retryable failure is retried.
    pub max_retries: u32,
    /// Hosts besides the base URL's own from which result URLs may be downloaded.
    pub download_hosts: Vec<String>,
    /// The largest response body or downloaded image accepted, in bytes.
    pub max_response_bytes: usize,
    /// Timeout for downloading one result URL.
    pub download_timeout: Duration,
    /// The model catalog to check requests against.
    pub catalog: Arc<Catalog>,
}

impl fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("base_url", &self.base_url.as_str())
            .field("keys", &self.keys)
            .field("organization", &self.organization)
            .field("project", &self.project)
            .field("model", &self.model)
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
            model: "gpt-image-1.5".into(),
            models: DEFAULT_MODELS.iter().map(|m| m.to_string()).collect(),
            timeout: Duration::from_secs(180),
            max_retries: 2,
            download_hosts: Vec::new(),
            max_response_bytes: 64 * 1024 * 1024,
            download_timeout: Duration::from_secs(60),
            catalog: Arc::new(Catalog::builtin()),
        }
    }
}

/// The most redirects a result-URL download follows.
const MAX_REDIRECTS: usize = 5;

/// Error bodies are only read for their message; more than this is never useful.
const ERROR_BODY_CAP: usize = 64 * 1024;

/// The OpenAI provider.
#[derive(Debug)]
pub struct OpenAiProvider {
    settings: OpenAiSettings,
    client: reqwest::Client,
    /// Fetches result URLs; its redirect policy keeps to `allowed_hosts`. `None` when it could
    /// not be built, which only makes URL results fail.
    downloads: Option<reqwest::Client>,
    generations_url: url::Url,
    allowed_hosts: Arc<AllowedHosts>,
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
                let host = next.host_str().unwrap_or_default();
                let msg = format!(
                    "a redirect to host `{host}` was refused; add it to download_hosts to allow it"
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
        Self {
            settings,
            client,
            downloads,
            generations_url,
            allowed_hosts,
        }
    }

    /// The JSON body for `request`, holding only what the model takes.
    fn request_body(&self, request: &GenerateRequest) -> Value {
        let caps = self.settings.catalog.get(&request.model);
        let mut body = Map::new();
        body.insert("model".into(), request.model.clone().into());
        body.insert("prompt".into(), request.prompt.clone().into());
        body.insert("n".into(), request.n.max(1).into());
        let optional = [
            (Param::Size, request.size.clone().map(Value::from)),
            (Param::Quality, request.quality.clone().map(Value::from)),
            (
                Param::OutputFormat,
                request.output_format.map(|f| f.as_str().into()),
            ),
            (
                Param::OutputCompression,
                request.output_compression.map(Value::from),
            ),
            (
                Param::Background,
                request.background.clone().map(Value::from),
            ),
            (Param::Style, request.style.clone().map(Value::from)),
            (
                Param::Moderation,
                request.moderation.clone().map(Value::from),
            ),
            (Param::Seed, request.seed.map(Value::from)),
        ];
        // The caller validated explicit parameters already; this guard keeps anything the
        // model would reject with `unknown_parameter` off the wire regardless.
        for (param, value) in optional {
            if let Some(value) = value.filter(|_| caps.takes(param)) {
                body.insert(param.as_str().into(), value);
            }
        }
        if caps.takes(Param::ResponseFormat) {
            // Inline bytes: no expiring URL and no second fetch.
            body.insert("response_format".into(), "b64_json".into());
        }
        for (key, value) in &request.extra {
            if key != "model" && key != "prompt" {
                body.insert(key.clone(), value.clone());
            }
        }
        Value::Object(body)
    }

    /// One attempt at the generation call: the response headers and body, or the classified error.
    async fn post(
        &self,
        body: &Value,
        key: Option<&PoolKey>,
    ) -> Result<(HeaderMap, Bytes), ProviderError> {
        let s = &self.settings;
        let mut req = self
            .client
            .post(self.generations_url.clone())
            .timeout(s.timeout)
            .json(body);
        // Per request rather than a client default header, so keys can rotate while the
        // connection pool is shared; `bearer_auth` marks the header sensitive.
        if let Some(key) = key {
            req = req.bearer_auth(key.expose());
        }
        if let Some(org) = &s.organization {
            req = req.header("OpenAI-Organization", org);
        }
        if let Some(project) = &s.project {
            req = req.header("OpenAI-Project", project);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(e, "the image API", s.timeout))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if !status.is_success() {
            let body = read_truncated(resp, ERROR_BODY_CAP.min(s.max_response_bytes)).await;
            return Err(self.parse_error(status, &headers, &body, key));
        }
        let body = read_capped(resp, s.max_response_bytes)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => too_large("the response", s.max_response_bytes),
                ReadError::Transport(e) => self.transport_error(e, "the image API", s.timeout),
            })
            .map_err(|e| e.with_request_id(request_id(&headers)))?;
        Ok((headers, body))
    }

    /// Turns an error response into a [`ProviderError`]: the one place statuses are classified.
    fn parse_error(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        key: Option<&PoolKey>,
    ) -> ProviderError {
        let detail = ErrorDetail::parse(status, headers, body);
        let provider_message = detail.message.map(|m| scrub(m, key));
        let (code, error_type) = (detail.code.as_deref(), detail.error_type.as_deref());
        let is = |v: &str| code == Some(v) || error_type == Some(v);
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
                    "the API key may not use this model or resource (HTTP 403){said}; check the \
                     organization, the project and the model's access"
                ),
            ),
            404 => (
                ErrorKind::NotFound,
                format!("not found (HTTP 404){said}; check the model name and the base URL"),
            ),
            400 | 422
                if is("moderation_blocked")
                    || is("image_generation_user_error")
                    || is("content_policy_violation")
                    || is("contentFilter") =>
            {
                (
                    ErrorKind::ContentPolicy,
                    "the prompt was refused by the provider's safety system; rephrase it".into(),
                )
            }
            400 | 422 if is("billing_hard_limit_reached") => (
                ErrorKind::QuotaExhausted,
                format!("the account's billing limit is reached{said}; raise it or add credit"),
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
                    "the account's quota is used up (HTTP 429){said}; check the plan and \
                     billing details, retrying will not help"
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
        let mut err = ProviderError::new(kind, message)
            .with_status(s)
            .with_retryable(retryable)
            .with_retry_after(retry_after)
            .with_request_id(request_id(headers))
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
                     still be billed, so it is not retried automatically",
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

    fn host(&self) -> &str {
        self.settings.base_url.host_str().unwrap_or("the base URL")
    }

    /// Builds the result from a successful response body.
    async fn parse_success(
        &self,
        request: &GenerateRequest,
        body: &[u8],
    ) -> Result<GenerateResult, ProviderError> {
        let resp: ImagesResponse = serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "the response is not the expected JSON ({e}); it starts with: {}",
                snippet(&String::from_utf8_lossy(&body[..body.len().min(400)]), 120)
            ))
        })?;
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
        let images = try_join_all(data.iter().enumerate().map(|(i, datum)| async move {
            let bytes = self.datum_bytes(i + 1, datum).await?;
            GeneratedImage::from_encoded(bytes)
                .map_err(|e| bad(format!("image {} is not a usable image: {e}", i + 1)))
        }))
        .await?;
        let mut result = GenerateResult::new(images, request.model.clone());
        result.revised_prompt = data.iter().find_map(|d| d.revised_prompt.clone());
        result.usage = resp
            .usage
            .and_then(|u| serde_json::from_value::<Usage>(u).ok());
        Ok(result)
    }

    /// The encoded bytes of result `index` (1-based), decoded or downloaded.
    async fn datum_bytes(&self, index: usize, datum: &Datum) -> Result<Bytes, ProviderError> {
        if let Some(b64) = datum.b64_json.as_deref().filter(|s| !s.trim().is_empty()) {
            return decode_base64(b64).map_err(|e| {
                bad(format!(
                    "image {index}: `b64_json` is not valid base64: {e}"
                ))
            });
        }
        let Some(url) = datum
            .url
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return Err(bad(format!(
                "image {index} has neither `b64_json` nor `url`"
            )));
        };
        match url.get(..5) {
            Some(scheme) if scheme.eq_ignore_ascii_case("data:") => decode_data_url(url)
                .map_err(|e| bad(format!("image {index}: unusable `data:` URL: {e}"))),
            _ => self.download(index, url).await,
        }
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
            let host = url.host_str().unwrap_or_default();
            return Err(bad(format!(
                "image {index}: refusing to download from host `{host}`: only {} and the hosts in \
                 download_hosts are allowed; add `{host}` to download_hosts to allow it",
                self.host()
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

    #[tracing::instrument(skip_all, fields(model = %request.model))]
    async fn generate(&self, request: &GenerateRequest) -> Result<GenerateResult, ProviderError> {
        let body = self.request_body(request);
        let max_retries = self.settings.max_retries;
        let mut retries = 0;
        let (headers, bytes) = loop {
            // Key rotation within a call (cooldown, disable, move on) comes with the key-pool work;
            // for now each attempt takes the next usable key.
            let key = match self.settings.keys.is_empty() {
                true => None,
                false => Some(self.settings.keys.pick(&[])?),
            };
            match self.post(&body, key.as_deref()).await {
                Ok(answer) => break answer,
                Err(err) => match retry::next_delay(&err, retries, max_retries) {
                    Some(delay) => {
                        tracing::warn!(
                            status = ?err.status,
                            kind = %err.kind,
                            delay_ms = delay.as_millis() as u64,
                            attempt = retries + 1,
                            max_retries,
                            request_id = err.request_id.as_deref(),
                            "image generation failed; retrying"
                        );
                        tokio::time::sleep(delay).await;
                        retries += 1;
                    }
                    None => return Err(gave_up(err, retries)),
                },
            }
        };
        let id = request_id(&headers);
        let mut result = self.parse_success(request, &bytes).await.map_err(|mut e| {
            if e.request_id.is_none() {
                e.request_id = id.clone();
            }
            e
        })?;
        result.request_id = id;
        tracing::debug!(
            images = result.images.len(),
            retries,
            request_id = result.request_id.as_deref(),
            "image generation done"
        );
        Ok(result)
    }
}

/// Replaces the API key with its fingerprint, in case a server echoes it back.
fn scrub(text: String, key: Option<&PoolKey>) -> String {
    match key {
        Some(key) if !key.expose().is_empty() && text.contains(key.expose()) => {
            text.replace(key.expose(), key.fingerprint())
        }
        _ => text,
    }
}

/// Notes in the message that retries were made and did not help.
fn gave_up(mut err: ProviderError, retries: u32) -> ProviderError {
    if retries > 0 {
        let s = if retries == 1 { "y" } else { "ies" };
        err.message = format!("{} (after {retries} retr{s})", err.message);
    }
    err
}

/// `base` with `path` appended to its path, keeping any query (Azure-style `api-version`).
fn endpoint(base: &url::Url, path: &str) -> url::Url {
    let mut url = base.clone();
    let joined = format!("{}/{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

/// Hosts result URLs may be downloaded from: the base URL's host and `download_hosts`.
#[derive(Debug)]
struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    fn new(settings: &OpenAiSettings) -> Self {
        let base = settings.base_url.host_str().map(normalize_host);
        let extra = settings.download_hosts.iter().map(|h| normalize_host(h));
        Self(
            base.into_iter()
                .chain(extra)
                .filter(|h| !h.is_empty())
                .collect(),
        )
    }

    fn allows(&self, url: &url::Url) -> bool {
        let Some(host) = url.host_str().map(normalize_host) else {
            return false;
        };
        self.0.contains(&host)
    }
}

/// Lowercases a host and drops IPv6 brackets, so `[::1]` and `::1` compare equal.
fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
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

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
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

/// The first `max` characters of `text` with whitespace runs collapsed to one space.
fn snippet(text: &str, max: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &collapsed[..cut]),
        None => collapsed,
    }
}

enum ReadError {
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads a body as a stream, giving up as soon as it exceeds `cap` bytes.
async fn read_capped(resp: reqwest::Response, cap: usize) -> Result<Bytes, ReadError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut out = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReadError::Transport)?;
        if out.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
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
    use base64::engine::{
        general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig,
    };
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    LENIENT.decode(clean).map(Bytes::from)
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
    fn parse(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        if let Ok(json) = serde_json::from_slice::<Value>(body) {
            return match json.get("error") {
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
                    message: text_field(json.get("message"))
                        .or_else(|| text_field(json.get("detail"))),
                    ..Self::default()
                },
            };
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
            Some(snippet(text, 200))
        };
        Self {
            message,
            ..Self::default()
        }
    }
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
        let d = ErrorDetail::parse(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"error":{"message":null,"type":"invalid_request_error","param":"size","code":null}}"#,
        );
        assert_eq!(d.message, None);
        assert_eq!(d.error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(d.param.as_deref(), Some("size"));
        let d = ErrorDetail::parse(
            StatusCode::BAD_GATEWAY,
            &h,
            b"  <html><body>Bad gateway</body></html>",
        );
        assert_eq!(d.message.as_deref(), Some("HTTP 502 with an HTML body"));
        let long = format!("error   code:\n 1015 {}", "x".repeat(500));
        let d = ErrorDetail::parse(StatusCode::TOO_MANY_REQUESTS, &h, long.as_bytes());
        let message = d.message.unwrap();
        assert!(message.starts_with("error code: 1015 xxx"), "{message}");
        assert_eq!(message.chars().count(), 201);
        let d = ErrorDetail::parse(StatusCode::BAD_REQUEST, &h, br#"{"error":"nope","code":7}"#);
        assert_eq!(d.message.as_deref(), Some("nope"));
        let d = ErrorDetail::parse(
            StatusCode::UNPROCESSABLE_ENTITY,
            &h,
            br#"{"detail":"bad n"}"#,
        );
        assert_eq!(d.message.as_deref(), Some("bad n"));
        let d = ErrorDetail::parse(StatusCode::BAD_REQUEST, &h, br#"{"error":{"code":400}}"#);
        assert_eq!(d.code.as_deref(), Some("400"));
    }

    #[test]
    fn hosts_compare_case_insensitively_and_exactly() {
        let mut settings = OpenAiSettings::new("http://API.example.com/v1".parse().unwrap(), None);
        settings.download_hosts = vec!["Files.Example.NET".into(), "[::1]".into()];
        let hosts = AllowedHosts::new(&settings);
        let allows = |u: &str| hosts.allows(&u.parse().unwrap());
        assert!(allows("https://api.example.com/x.png"));
        assert!(allows("https://files.example.net:8443/x.png"));
        assert!(allows("http://[::1]:9000/x.png"));
        assert!(!allows("https://evil.files.example.net/x.png"));
        assert!(!allows("https://example.com/x.png"));
    }

    #[test]
    fn snippets_and_sizes_read_well() {
        assert_eq!(snippet("a \n\t b", 200), "a b");
        assert_eq!(describe_bytes(64 * 1024 * 1024), "64 MiB");
        assert_eq!(describe_bytes(1000), "1000 bytes");
        assert_eq!(describe_wait(Duration::from_secs(121)), "121 s");
        assert_eq!(describe_wait(Duration::from_millis(50)), "0.1 s");
    }
}
