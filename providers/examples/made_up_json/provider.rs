//! A provider for Pixie, a made-up JSON image API, written on the shared core: settings, its
//! catalog entries, one "send one attempt" closure, its `parse_error`, a poll and a download.
//! Keys, retries, `Retry-After`, deadlines, cancellation, progress events and secret
//! scrubbing all come from [`Executor`]; waiting on the job from [`Poller`]; fetching the
//! result from [`Downloader`].
//!
//! The API:
//! - `POST {base}/jobs` with `{"model", "prompt", "size"}` and `Authorization: Bearer KEY`
//!   answers `202 {"id": "..."}`, or `200 {"id", "status": "done", "result_url"}` when the job
//!   finished at once (a fast model; the result URL may be a `data:` URL);
//! - `GET {base}/jobs/{id}` answers `{"status": "queued" | "running"}`, `{"status": "done",
//!   "result_url": "..."}` or `{"status": "failed", "error": {"code", "message"}}`;
//! - errors are `{"error": {"code": "...", "message": "..."}}` with a status from the table in
//!   [`parse_error`].

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use imagegen_providers::{
    http::{
        body::{read_capped, read_truncated, too_large, ReadError},
        download, endpoint,
        executor::{Attempt, Executor, Sent},
        retry, transport_error, Downloader, PollStatus, Poller, RetryPolicy,
    },
    keys::{KeyPool, PoolKey},
    secret::Scrubber,
    CallOptions, ErrorKind, GenerateRequest, GenerateResult, GeneratedImage, ImageFormat,
    ImageProvider, ModelCapabilities, ProviderError,
};
use reqwest::{header::HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

/// The kind written in configuration.
pub const KIND: &str = "pixie";

/// Pixie's one model.
pub const MODEL: &str = "pixie-1";

/// Step 1, the settings: everything one Pixie account needs. In the real crate this struct
/// is the provider's variant of `ProviderConfig` (its common part holds `base_url`, the keys,
/// the timeouts and retry knobs).
#[derive(Debug, Clone)]
pub struct PixieSettings {
    /// API base, e.g. `https://api.pixie.example/v1`.
    pub base_url: url::Url,
    /// The API keys; their `Debug` shows fingerprints only.
    pub keys: Arc<KeyPool>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How failed submissions are retried.
    pub retry: RetryPolicy,
    /// The longest one call may take, polling and download included.
    pub deadline: Duration,
    /// How often the job's status is checked.
    pub poll: Poller,
    /// Hosts besides the base URL's origin that result URLs may point to.
    pub download_hosts: Vec<String>,
    /// The largest body or image accepted.
    pub max_response_bytes: usize,
}

impl PixieSettings {
    /// Defaults for `base_url` with `keys`.
    pub fn new(base_url: url::Url, keys: Arc<KeyPool>) -> Self {
        Self {
            base_url,
            keys,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            deadline: Duration::from_secs(300),
            poll: Poller::default(),
            download_hosts: Vec::new(),
            max_response_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Step 2, the catalog entries: what each model can do, checked (by the `Checked` layer)
/// before any paid call.
pub fn capabilities(model: &str) -> ModelCapabilities {
    let mut caps = ModelCapabilities::unknown();
    if model == MODEL {
        caps.sizes = vec!["512x512".into(), "1024x1024".into()];
        caps.custom_sizes = None;
        caps.max_n = 1;
        caps.formats = vec![ImageFormat::Png];
        caps.max_prompt_chars = 2_000;
        caps.edit = false;
        caps.params = Vec::new();
        caps.known = true;
        caps.note = None;
    }
    caps
}

/// The Pixie provider.
#[derive(Debug)]
pub struct PixieProvider {
    settings: PixieSettings,
    client: reqwest::Client,
    executor: Executor,
    downloader: Downloader,
}

/// What a submission answers: the job, finished already when the model was quick.
#[derive(Debug, Deserialize)]
struct Job {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    result_url: Option<String>,
}

/// What a status check answers.
#[derive(Debug, Deserialize)]
struct Status {
    status: String,
    #[serde(default)]
    result_url: Option<String>,
    #[serde(default)]
    error: Option<Value>,
}

impl PixieProvider {
    /// A provider with `settings`, sending through `client` (shared per connect timeout).
    pub fn new(settings: PixieSettings, client: reqwest::Client) -> Self {
        let scrubber = Scrubber::new(&settings.keys, &settings.base_url);
        let executor = Executor::new(
            KIND,
            Arc::clone(&settings.keys),
            settings.retry,
            settings.deadline,
        )
        .with_scrubber(scrubber);
        let downloader = Downloader::new(
            &settings.base_url,
            &settings.download_hosts,
            settings.timeout,
            settings.max_response_bytes,
        );
        Self {
            settings,
            client,
            executor,
            downloader,
        }
    }

    /// Step 3, send one attempt: one request with the key the executor chose, its answer
    /// read or its error classified. No loop, no retry, no key handling.
    async fn submit(&self, body: &Value, key: Option<&PoolKey>) -> Result<Job, ProviderError> {
        let req = self
            .client
            .post(endpoint(&self.settings.base_url, "jobs"))
            .timeout(self.settings.timeout)
            .json(body);
        let json = self.send(req, key, "the Pixie API").await?;
        serde_json::from_value(json).map_err(|e| bad(format!("the job answer is unusable: {e}")))
    }

    /// One status check of `job`.
    async fn check(
        &self,
        job: &Job,
        key: Option<&PoolKey>,
    ) -> Result<PollStatus<String>, ProviderError> {
        let url = endpoint(&self.settings.base_url, &format!("jobs/{}", job.id));
        let req = self.client.get(url).timeout(self.settings.timeout);
        let json = self.send(req, key, "the Pixie job status").await?;
        let status: Status = serde_json::from_value(json)
            .map_err(|e| bad(format!("the status is unusable: {e}")))?;
        match status.status.as_str() {
            "done" => status
                .result_url
                .map(PollStatus::Done)
                .ok_or_else(|| bad("the job is done but names no result_url")),
            "failed" => Err(job_failed(status.error.as_ref())),
            other => Ok(PollStatus::Pending {
                status: Some(other.to_string()),
            }),
        }
    }

    /// Sends `req` with `key`, and reads a JSON answer or classifies the error.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        key: Option<&PoolKey>,
        what: &str,
    ) -> Result<Value, ProviderError> {
        let timeout = self.settings.timeout;
        let req = match key {
            Some(key) => req.bearer_auth(key.expose()),
            None => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(e, what, timeout))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if !status.is_success() {
            let body = read_truncated(resp, 64 * 1024).await;
            return Err(parse_error(status, &headers, &body, key));
        }
        let cap = self.settings.max_response_bytes;
        let body = read_capped(resp, cap).await.map_err(|e| match e {
            ReadError::TooLarge => too_large(what, cap),
            ReadError::Transport(e) => transport_error(e, what, timeout),
        })?;
        serde_json::from_slice(&body).map_err(|e| bad(format!("{what} answered with no JSON: {e}")))
    }
}

/// Step 4, `parse_error`: the one status table. The executor reads `kind`, `retryable` and
/// `retry_after` to rest or disable the key and to retry; it scrubs the key from the message.
pub fn parse_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: Option<&PoolKey>,
) -> ProviderError {
    let said = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message")?.as_str().map(String::from));
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/code")?.as_str().map(String::from));
    let detail = said
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let s = status.as_u16();
    let key = key
        .map(|k| format!(" {}", k.fingerprint()))
        .unwrap_or_default();
    let (kind, message) = match s {
        401 => (
            ErrorKind::Auth,
            format!("the API key{key} was rejected (HTTP 401){detail}"),
        ),
        403 => (
            ErrorKind::Permission,
            format!("the API key{key} may not do this (HTTP 403){detail}"),
        ),
        404 => (ErrorKind::NotFound, format!("not found (HTTP 404){detail}")),
        400 | 422 if code.as_deref() == Some("unsafe_prompt") => (
            ErrorKind::ContentPolicy,
            "the prompt was refused by the provider's safety system; rephrase it".to_string(),
        ),
        400 | 422 => (
            ErrorKind::InvalidRequest,
            format!("the request was rejected (HTTP {s}){detail}"),
        ),
        429 => (
            ErrorKind::RateLimited,
            format!("rate limited (HTTP 429){detail}"),
        ),
        500..=599 => (
            ErrorKind::UpstreamUnavailable,
            format!("Pixie is unavailable (HTTP {s}){detail}"),
        ),
        _ => (
            ErrorKind::BadResponse,
            format!("unexpected HTTP {s}{detail}"),
        ),
    };
    ProviderError::new(kind, message)
        .with_status(s)
        .with_retryable(matches!(s, 429 | 500..=599))
        .with_retry_after(retry::retry_after(headers, std::time::SystemTime::now()))
        .with_provider_detail(code, said)
}

/// A job the provider reports as failed; never retried, since it was billed.
fn job_failed(error: Option<&Value>) -> ProviderError {
    let code = error
        .and_then(|e| e.get("code")?.as_str())
        .map(String::from);
    let message = error
        .and_then(|e| e.get("message")?.as_str())
        .map(String::from);
    let kind = match code.as_deref() {
        Some("unsafe_prompt") => ErrorKind::ContentPolicy,
        _ => ErrorKind::UpstreamUnavailable,
    };
    let said = message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    ProviderError::new(kind, format!("the Pixie job failed{said}"))
        .with_retryable(false)
        .with_request_sent(true)
        .with_provider_detail(code, message)
}

fn bad(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::BadResponse, message)
}

#[async_trait]
impl ImageProvider for PixieProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn default_model(&self) -> &str {
        MODEL
    }

    fn models(&self) -> Vec<String> {
        vec![MODEL.to_string()]
    }

    fn capabilities(&self, model: &str) -> ModelCapabilities {
        capabilities(model)
    }

    /// Step 5, the call: the executor runs `submit` (retrying it as the policy says), then
    /// the job is polled and its result downloaded, within the same deadline.
    async fn generate_opts(
        &self,
        request: &GenerateRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let body = json!({
            "model": request.model,
            "prompt": request.prompt,
            "size": request.options.size.as_deref().unwrap_or("1024x1024"),
        });
        let body = &body;
        self.executor
            .run(
                options,
                "pixie generation",
                &request.model,
                |attempt: Attempt| async move { self.submit(body, attempt.key()).await },
                |sent: Sent<Job>| async move {
                    let key = sent.key.as_deref();
                    let url = match (&sent.value.status, &sent.value.result_url) {
                        (Some(done), Some(url)) if done == "done" => url.clone(),
                        _ => {
                            self.settings
                                .poll
                                .run(options, sent.deadline, "the Pixie job", |_| {
                                    self.check(&sent.value, key)
                                })
                                .await?
                        }
                    };
                    // An inline result needs no fetch; any other goes through the allow-list.
                    let bytes = if download::is_data_url(&url) {
                        download::decode_data_url(&url)
                            .map_err(|e| bad(format!("the inline result is unusable: {e}")))?
                    } else {
                        self.downloader.fetch(1, &url).await?
                    };
                    let image = GeneratedImage::from_encoded(bytes)
                        .map_err(|_| bad("the result URL served something that is not an image"))?;
                    let mut result = GenerateResult::new(vec![image], request.model.clone());
                    result.request_id = Some(sent.value.id.clone());
                    Ok(result)
                },
            )
            .await
    }
}
