//! Black Forest Labs' FLUX API (`kind = "bfl"`): submit, then poll, then download.
//!
//! `POST {base_url}/{model}` with the key in `x-key` answers a task `{"id", "polling_url"}`;
//! the task is polled at that `polling_url` (BFL fails over between regional clusters, so the
//! returned URL is always used) with the shared [`Poller`](crate::http::Poller), and its
//! `result.sample`, a signed URL that expires after 10 minutes, is downloaded at once through
//! the shared [`Downloader`].
//! The key goes to the polling URL too, so it must name one of BFL's documented API hosts
//! ([`API_HOSTS`], https) or the base URL's own origin: a hostile answer cannot collect the key.
//!
//! One task makes one image: `n` above 1 submits that many tasks at once (each with its own
//! attempts and key), a seed counting up per task so they differ; `sent` says so (`tasks`,
//! `seeds`). Statuses `Request Moderated` / `Content Moderated` are `content_policy`; HTTP 402
//! (no credits) is `quota_exhausted`; 429 (too many active tasks) is `rate_limited` with
//! `Retry-After`. A status check that fails with a retryable error is checked again (the
//! third such failure in a row ends the wait) since the task is already paid for; the submission itself is retried by the
//! [`Executor`] as the policy says.

pub(crate) mod catalog;
mod config;

pub use catalog::catalog_entries;
pub use config::{Config, STANDARD_ENV};

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::{
    header::{HeaderMap, HeaderValue},
    StatusCode,
};
use serde_json::{Map, Value};

use crate::{
    http::{
        body::bad,
        endpoint,
        executor::{Attempt, Executor, Sent},
        job::{deref_to_job, fetch_image, same_origin, unusable_key, JobDefaults, JobSettings},
        json::{capped, error_text, str_at},
        retry, Downloader, PollStatus,
    },
    keys::{KeyPool, PoolKey},
    options::size_for,
    validate, CallOptions, EditRequest, ErrorKind, GenerateRequest, GenerateResult, GeneratedImage,
    ImageFormat, ImageProvider, InputImage, ModelCapabilities, Param, ProviderError,
};

/// The kind written in configuration.
pub const KIND: &str = "bfl";

/// BFL's global endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.bfl.ai/v1";

/// The model used when neither the call nor the configuration names one.
pub const DEFAULT_MODEL: &str = "flux-2-pro";

/// BFL's documented API hosts: global, regional multi-cluster, and single-cluster.
pub const API_HOSTS: [&str; 5] = [
    "api.bfl.ai",
    "api.eu.bfl.ai",
    "api.us.bfl.ai",
    "api.eu1.bfl.ai",
    "api.us1.bfl.ai",
];

/// Where BFL serves results (`delivery-eu1.bfl.ai` and the like; older results came from an
/// Azure blob store, unconfirmed), allowed besides `download_hosts`.
pub const DELIVERY_HOSTS: [&str; 2] = ["*.bfl.ai", "bfldeliverysc.blob.core.windows.net"];

/// Built-in aliases: the fastest and the best FLUX.2 model.
const ALIASES: [(&str, &str); 2] = [("fast", "flux-2-klein-4b"), ("best", "flux-2-max")];

/// Said after a failed download: why an old result cannot be fetched again.
const EXPIRY_HINT: &str = "BFL result URLs expire 10 minutes after the image is made";

/// BFL's defaults where kinds differ.
const DEFAULTS: JobDefaults = JobDefaults {
    model: DEFAULT_MODEL,
    catalog_entries,
    delivery_hosts: &DELIVERY_HOSTS,
    timeout: Duration::from_secs(60),
};

/// Everything one BFL account needs: the shared [`JobSettings`], read through `Deref`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BflSettings {
    /// What every submit-then-poll account has.
    pub job: JobSettings,
}

deref_to_job!(BflSettings);

impl BflSettings {
    /// Defaults for `base_url` with `keys`: BFL's delivery hosts allowed, polling from 500 ms.
    pub fn new(base_url: url::Url, keys: Arc<KeyPool>) -> Self {
        Self {
            job: JobSettings::new(base_url, keys, &DEFAULTS),
        }
    }
}

/// The BFL provider.
pub struct BflProvider {
    settings: BflSettings,
    client: reqwest::Client,
    executor: Executor,
    downloader: Downloader,
}

impl fmt::Debug for BflProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BflProvider")
            .field("settings", &self.settings)
            .field("allowed_hosts", self.downloader.allowed_hosts())
            .finish_non_exhaustive()
    }
}

/// A submitted task: where to poll it, or its result when the answer already held it.
#[derive(Debug)]
struct Task {
    id: String,
    polling_url: url::Url,
    done: Option<String>,
}

impl BflProvider {
    /// A provider with `settings`, sending through `client` (shared per connect timeout).
    pub fn new(settings: BflSettings, client: reqwest::Client) -> Self {
        let executor = settings.executor(KIND);
        let downloader = settings.downloader(EXPIRY_HINT);
        Self {
            settings,
            client,
            executor,
            downloader,
        }
    }

    /// The body of a task for `request`, `images` (edits) and `mask`: prompt, the size as
    /// `width`/`height` (or `aspect_ratio` for ratio-only models), seed, format, `extra`.
    fn body(
        &self,
        request: &GenerateRequest,
        images: &[InputImage],
        mask: Option<&InputImage>,
    ) -> Result<Map<String, Value>, ProviderError> {
        let caps = self.settings.catalog.get(&request.model);
        let options = &request.options;
        let mut body = Map::new();
        body.insert("prompt".into(), request.prompt.clone().into());
        if caps.takes(Param::Size) {
            if let Some(size) = size_for(options, &caps)? {
                let size = validate::normalized_size(&size);
                if let Some((w, h)) = validate::parse_size(&size) {
                    body.insert("width".into(), w.into());
                    body.insert("height".into(), h.into());
                }
            }
        } else if let Some(ratio) = &options.aspect_ratio {
            // Ratio-only models (Kontext, ultra) take 21:9 to 9:21.
            let fits = crate::options::parse_aspect_ratio(ratio).is_some_and(|(w, h)| {
                let r = f64::from(w) / f64::from(h);
                (9.0 / 21.0 - 1e-9..=21.0 / 9.0 + 1e-9).contains(&r)
            });
            if !fits {
                return Err(ProviderError::invalid_param(
                    "aspect_ratio",
                    format!("{} takes aspect ratios from 21:9 to 9:21", request.model),
                ));
            }
            body.insert("aspect_ratio".into(), ratio.trim().into());
        }
        if let Some(seed) = options.seed {
            body.insert("seed".into(), seed.into());
        }
        // BFL's default is JPEG; every provider's is PNG unless asked otherwise.
        body.insert(
            "output_format".into(),
            wire_format(options.format())?.into(),
        );
        let b64 =
            |image: &InputImage| base64::engine::general_purpose::STANDARD.encode(&image.bytes);
        for (i, image) in images.iter().enumerate() {
            let field = match i {
                0 => "input_image".to_string(),
                n => format!("input_image_{}", n + 1),
            };
            body.insert(field, b64(image).into());
        }
        if let Some(mask) = mask {
            body.insert("mask".into(), b64(mask).into());
        }
        for (key, value) in options.extra.iter().flatten() {
            if key != "prompt" && !key.starts_with("input_image") && key != "mask" {
                body.insert(key.clone(), value.clone());
            }
        }
        Ok(body)
    }

    /// Sends one submission with `key` and reads the task it answers.
    async fn submit(
        &self,
        model: &str,
        body: &Map<String, Value>,
        key: Option<&PoolKey>,
    ) -> Result<Task, ProviderError> {
        // The model is the endpoint's path: nothing that could leave it.
        let plain = !model.is_empty()
            && !model.chars().all(|c| c == '.')
            && model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain {
            return Err(ProviderError::invalid_param(
                "model",
                "a BFL model is an endpoint name such as flux-2-pro",
            ));
        }
        let url = endpoint(&self.settings.base_url, model);
        let req = with_key(self.client.post(url).json(body), key)?;
        let (_, json) = self.send(req, key, "the BFL API").await?;
        let id = str_at(&json, "/id")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| bad("the BFL submission answer names no task `id`"))?
            .to_string();
        let polling_url = self.polling_url(str_at(&json, "/polling_url"), &id)?;
        // A server that finished at once (a local stand-in) may answer with the result.
        let done = (str_at(&json, "/status") == Some("Ready"))
            .then(|| str_at(&json, "/result/sample").map(String::from))
            .flatten();
        Ok(Task {
            id,
            polling_url,
            done,
        })
    }

    /// Where to poll task `id`: the URL BFL returned when it names one of BFL's API hosts (or
    /// the base URL's origin), else `{base_url}/get_result?id=...`.
    fn polling_url(&self, raw: Option<&str>, id: &str) -> Result<url::Url, ProviderError> {
        let Some(raw) = raw else {
            let mut url = endpoint(&self.settings.base_url, "get_result");
            url.query_pairs_mut().append_pair("id", id);
            return Ok(url);
        };
        let url = url::Url::parse(raw)
            .map_err(|_| bad("the BFL submission answer's polling_url is not a URL"))?;
        let base = &self.settings.base_url;
        let same_origin = same_origin(&url, base);
        let bfl_host = url.scheme() == "https"
            && url.port_or_known_default() == Some(443)
            && url
                .host_str()
                .is_some_and(|h| API_HOSTS.contains(&h.to_ascii_lowercase().as_str()));
        if !(same_origin || bfl_host) {
            return Err(bad(format!(
                "the BFL polling_url names host `{}`, which is not one of BFL's API hosts ({}) \
                 nor the base URL's; it was not polled, so the key was not sent there",
                url.host_str().unwrap_or_default(),
                API_HOSTS.join(", ")
            )));
        }
        Ok(url)
    }

    /// One status check of `task`: pending (with BFL's status and progress), the result URL,
    /// or the task's failure.
    async fn check(
        &self,
        task: &Task,
        key: Option<&PoolKey>,
    ) -> Result<PollStatus<String>, ProviderError> {
        let req = with_key(self.client.get(task.polling_url.clone()), key)?;
        let (_, json) = self.send(req, key, "the BFL task status").await?;
        let status =
            str_at(&json, "/status").ok_or_else(|| bad("the BFL task status names no `status`"))?;
        match status {
            "Ready" => str_at(&json, "/result/sample")
                .map(|s| PollStatus::Done(s.to_string()))
                .ok_or_else(|| bad("the BFL task is Ready but its result has no `sample` URL")),
            "Request Moderated" | "Content Moderated" => Err(moderated(status, &json)),
            "Error" | "Failed" => Err(task_failed(status, &json)),
            "Task not found" => Err(ProviderError::new(
                ErrorKind::NotFound,
                "BFL no longer knows the task (Task not found): results are kept for 10 \
                 minutes, and each region only knows its own tasks",
            )
            .with_request_sent(true)
            .with_retryable(false)),
            other => {
                // `Pending`, and FLUX 3's finer stages, with a percentage when BFL gives one.
                let progress = json
                    .get("progress")
                    .and_then(Value::as_f64)
                    .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
                    .map(|p| if p <= 1.0 { p * 100.0 } else { p })
                    .map(|p| format!(" ({p:.0}%)"))
                    .unwrap_or_default();
                Ok(PollStatus::Pending {
                    status: Some(format!("{}{progress}", capped(other, 40))),
                })
            }
        }
    }

    /// Sends `req` and reads its JSON answer, classifying an error answer.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        key: Option<&PoolKey>,
        what: &str,
    ) -> Result<(HeaderMap, Value), ProviderError> {
        self.settings
            .send_json(req, what, |status, headers, body| {
                parse_error(status, headers, body, key)
            })
            .await
    }

    /// One task from submission to image: the executor runs the submission, then the task is
    /// polled and its result downloaded within the same deadline.
    async fn task(
        &self,
        index: usize,
        model: &str,
        body: &Map<String, Value>,
        options: &CallOptions,
    ) -> Result<(GeneratedImage, String), ProviderError> {
        self.executor
            .run(
                options,
                "flux generation",
                model,
                |attempt: Attempt| async move { self.submit(model, body, attempt.key()).await },
                |sent: Sent<Task>| async move {
                    let task = sent.value;
                    let key = sent.key.as_deref();
                    let sample = match &task.done {
                        Some(sample) => sample.clone(),
                        None => {
                            let task = &task;
                            self.settings
                                .poll_job(options, sent.deadline, "the FLUX task", None, || {
                                    self.check(task, key)
                                })
                                .await?
                        }
                    };
                    let image = self.fetch(index, &sample).await?;
                    Ok((image, task.id))
                },
            )
            .await
    }

    /// Downloads (or decodes) result image `index` (1-based) from `sample`.
    async fn fetch(&self, index: usize, sample: &str) -> Result<GeneratedImage, ProviderError> {
        fetch_image(&self.downloader, index, sample, "result").await
    }

    /// Runs `n` tasks of `body` at once (seeds counting up), as one result.
    async fn run(
        &self,
        model: &str,
        n: u32,
        body: Map<String, Value>,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let n = n.max(1) as usize;
        let seed = body.get("seed").and_then(Value::as_i64);
        let bodies: Vec<Map<String, Value>> = (0..n)
            .map(|i| {
                let mut body = body.clone();
                if let (Some(seed), true) = (seed, i > 0) {
                    body.insert("seed".into(), seed.wrapping_add(i as i64).into());
                }
                body
            })
            .collect();
        let tasks = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| self.task(i + 1, model, body, options));
        // One failure fails the call; the other tasks are abandoned (BFL cannot cancel them).
        let done = futures_util::future::try_join_all(tasks).await?;
        let ids: Vec<String> = done.iter().map(|(_, id)| id.clone()).collect();
        let images = done.into_iter().map(|(image, _)| image).collect();
        let mut result = GenerateResult::new(images, model);
        result.request_id = ids.first().cloned();
        let mut sent = body;
        sent.retain(|k, _| !k.starts_with("input_image") && k != "mask");
        sent.insert("model".into(), model.into());
        if n > 1 {
            sent.insert("tasks".into(), n.into());
            if let Some(seed) = seed {
                let seeds: Vec<Value> =
                    (0..n).map(|i| seed.wrapping_add(i as i64).into()).collect();
                sent.insert("seeds".into(), seeds.into());
            }
        }
        Ok(result.with_sent(sent))
    }
}

/// BFL's name of `format`: `jpeg` or `png`.
fn wire_format(format: ImageFormat) -> Result<&'static str, ProviderError> {
    match format {
        ImageFormat::Jpeg => Ok("jpeg"),
        ImageFormat::Png => Ok("png"),
        other => Err(ProviderError::invalid_param(
            "output_format",
            format!("FLUX makes jpeg or png images, not {}", other.as_str()),
        )),
    }
}

/// `req` carrying `key` in `x-key`, marked sensitive so no log shows it.
fn with_key(
    req: reqwest::RequestBuilder,
    key: Option<&PoolKey>,
) -> Result<reqwest::RequestBuilder, ProviderError> {
    let Some(key) = key else { return Ok(req) };
    let mut value = HeaderValue::from_str(key.expose()).map_err(|_| unusable_key(key))?;
    value.set_sensitive(true);
    Ok(req.header("x-key", value))
}

/// The status table: what each BFL error answer means for the key and for retrying.
pub fn parse_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: Option<&PoolKey>,
) -> ProviderError {
    let said = error_text(body, &["message", "detail", "error"]);
    let detail = said
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let moderated = said
        .as_deref()
        .is_some_and(|m| m.to_ascii_lowercase().contains("moderat"));
    let s = status.as_u16();
    let key = key
        .map(|k| format!(" {}", k.fingerprint()))
        .unwrap_or_default();
    let (kind, message) = match s {
        400 | 403 | 422 if moderated => (
            ErrorKind::ContentPolicy,
            format!("BFL's moderation refused the request (HTTP {s}){detail}; rephrase the prompt or use another input image"),
        ),
        401 => (
            ErrorKind::Auth,
            format!("the BFL API key{key} was rejected (HTTP 401){detail}"),
        ),
        402 => (
            ErrorKind::QuotaExhausted,
            format!("the BFL account of key{key} has no credits left (HTTP 402){detail}; add credits at dashboard.bfl.ai"),
        ),
        403 => (
            ErrorKind::Permission,
            format!("the BFL API key{key} may not do this (HTTP 403){detail}"),
        ),
        404 => (
            ErrorKind::NotFound,
            format!("BFL has no such endpoint (HTTP 404){detail}; check the model name"),
        ),
        400 | 413 | 422 => (
            ErrorKind::InvalidRequest,
            format!("BFL rejected the request (HTTP {s}){detail}"),
        ),
        429 => (
            ErrorKind::RateLimited,
            format!("BFL is rate limiting key{key} (HTTP 429: too many active tasks or requests){detail}"),
        ),
        500..=599 => (
            ErrorKind::UpstreamUnavailable,
            format!("BFL is unavailable (HTTP {s}){detail}"),
        ),
        _ => (ErrorKind::BadResponse, format!("BFL answered HTTP {s}{detail}")),
    };
    ProviderError::new(kind, message)
        .with_status(s)
        .with_retryable(matches!(
            kind,
            ErrorKind::RateLimited | ErrorKind::UpstreamUnavailable
        ))
        .with_retry_after(retry::retry_after(headers, std::time::SystemTime::now()))
        .with_provider_detail(None, said)
}

/// A task BFL's moderation stopped: the request (prompt, input image) or the image made.
fn moderated(status: &str, json: &Value) -> ProviderError {
    let what = if status == "Content Moderated" {
        "the image made was withheld by BFL's moderation"
    } else {
        "BFL's moderation refused the prompt or input image"
    };
    let reasons = json
        .get("details")
        .filter(|d| !d.is_null())
        .map(|d| format!(" ({})", capped(&d.to_string(), 200)))
        .unwrap_or_default();
    ProviderError::new(
        ErrorKind::ContentPolicy,
        format!("{what} ({status}){reasons}; rephrase the prompt or lower the risk of the input"),
    )
    .with_request_sent(true)
    .with_retryable(false)
    .with_provider_detail(Some(status.to_string()), None)
}

/// A task that failed at BFL: not retried, since it was submitted (and may be billed).
fn task_failed(status: &str, json: &Value) -> ProviderError {
    let said = ["/result/error", "/error", "/details", "/message"]
        .iter()
        .find_map(|p| json.pointer(p).filter(|v| !v.is_null()))
        .map(|v| capped(v.as_str().map_or(v.to_string(), String::from).as_str(), 300));
    let detail = said
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    ProviderError::new(
        ErrorKind::UpstreamUnavailable,
        format!("the FLUX task failed at BFL ({status}){detail}"),
    )
    .with_request_sent(true)
    .with_retryable(false)
    .with_provider_detail(Some(status.to_string()), said)
}

#[async_trait]
impl ImageProvider for BflProvider {
    fn kind(&self) -> &'static str {
        KIND
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
        self.settings
            .base_url
            .host_str()
            .is_some_and(|h| API_HOSTS.contains(&h))
    }

    fn aliases(&self) -> Vec<(String, String)> {
        crate::catalog::alias_pairs(&ALIASES)
    }

    async fn generate_opts(
        &self,
        request: &GenerateRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let body = self.body(request, &[], None)?;
        self.run(&request.model, request.n(), body, options).await
    }

    async fn edit_opts(
        &self,
        request: &EditRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let body = self.body(
            &request.as_generation(),
            &request.images,
            request.mask.as_ref(),
        )?;
        let mut result = self.run(&request.model, request.n(), body, options).await?;
        result
            .sent
            .insert("input_images".into(), request.images.len().into());
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(base: &str) -> BflProvider {
        let keys = Arc::new(KeyPool::new([], Duration::from_secs(60)));
        BflProvider::new(
            BflSettings::new(base.parse().unwrap(), keys),
            reqwest::Client::new(),
        )
    }

    #[test]
    fn polling_urls_must_name_bfl_hosts_or_the_base_origin() {
        let p = provider("https://api.bfl.ai/v1");
        for ok in [
            "https://api.eu.bfl.ai/v1/get_result?id=1",
            "https://api.us1.bfl.ai/v1/get_result?id=1",
            "https://API.BFL.AI/v1/get_result?id=1",
        ] {
            assert!(p.polling_url(Some(ok), "1").is_ok(), "{ok}");
        }
        for refused in [
            "https://evil.example.com/get_result?id=1",
            "http://api.eu.bfl.ai/v1/get_result?id=1",
            "https://api.eu.bfl.ai:8443/v1/get_result",
            "https://api.bfl.ai.evil.com/v1/get_result",
            "https://169.254.169.254/latest",
            "not a url",
        ] {
            assert!(p.polling_url(Some(refused), "1").is_err(), "{refused}");
        }
        let fallback = p.polling_url(None, "a b").unwrap();
        assert_eq!(fallback.as_str(), "https://api.bfl.ai/v1/get_result?id=a+b");
        let local = provider("http://127.0.0.1:9/v1");
        assert!(local
            .polling_url(Some("http://127.0.0.1:9/v1/get_result?id=1"), "1")
            .is_ok());
        assert!(local
            .polling_url(Some("http://127.0.0.1:10/v1/get_result?id=1"), "1")
            .is_err());
    }

    #[test]
    fn the_status_table_names_quota_moderation_and_rate_limits() {
        let err = |s: u16, body: &str| {
            parse_error(
                StatusCode::from_u16(s).unwrap(),
                &HeaderMap::new(),
                body.as_bytes(),
                None,
            )
        };
        let quota = err(402, r#"{"detail": "Insufficient credits"}"#);
        assert_eq!(quota.kind, ErrorKind::QuotaExhausted);
        assert!(!quota.retryable);
        assert!(quota.message.contains("Insufficient credits"), "{quota}");
        assert_eq!(
            err(400, r#"{"detail": "Request Moderated"}"#).kind,
            ErrorKind::ContentPolicy
        );
        assert_eq!(
            err(
                422,
                r#"{"detail": [{"loc": ["body", "width"], "msg": "must be a multiple of 16"}]}"#
            )
            .kind,
            ErrorKind::InvalidRequest
        );
        let limited = err(429, r#"{"detail": "too many active tasks"}"#);
        assert_eq!(limited.kind, ErrorKind::RateLimited);
        assert!(limited.retryable);
        assert!(err(503, "oops").retryable);
        assert_eq!(err(418, "").kind, ErrorKind::BadResponse);
    }
}
