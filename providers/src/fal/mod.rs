//! fal.ai's queue (`kind = "fal"`): submit, poll the status (queue position as progress),
//! fetch the result, download its images at once; cancel when the call is abandoned.
//!
//! `POST {base_url}/{model_id}` with `Authorization: Key <key>` answers `{"request_id",
//! "status_url", "response_url", "cancel_url"}`; `status_url` answers `IN_QUEUE` (with its
//! `queue_position`, shown in progress), `IN_PROGRESS` (its last log line shown) and
//! `COMPLETED`; `response_url` then answers the model's output, `{"images": [{"url", ...}]}`,
//! whose URLs (or `data:` URIs) are downloaded at once through the shared [`Downloader`]. A
//! base URL answering the output directly (`https://fal.run`, the synchronous route) needs no
//! polling. The key goes to the three URLs too, so they must be on the base URL's origin.
//!
//! When the call is cancelled, reaches its deadline or is dropped while the request waits,
//! `PUT cancel_url` is sent (best effort, within 5 s; fal cancels only requests not yet
//! started). `n` is the model's `num_images`. An image fal's safety checker flagged
//! (`has_nsfw_concepts`) fails the call as `content_policy`: fal sends such images black. A
//! status check failing with a retryable error is checked again (the third in a row ends the
//! wait).

pub(crate) mod catalog;
mod config;

pub use catalog::catalog_entries;
pub use config::{Config, STANDARD_ENV};

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::{header::HeaderMap, StatusCode};
use serde_json::{Map, Value};

use crate::{
    http::{
        body::bad,
        cancel::{auth_header, CancelOnDrop, OpenJob},
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
pub const KIND: &str = "fal";

/// fal's queue.
pub const DEFAULT_BASE_URL: &str = "https://queue.fal.run";

/// The model used when neither the call nor the configuration names one.
pub const DEFAULT_MODEL: &str = "fal-ai/flux/schnell";

/// Where fal serves outputs, allowed besides `download_hosts`.
pub const DELIVERY_HOSTS: [&str; 2] = ["fal.media", "*.fal.media"];

/// Built-in aliases.
const ALIASES: [(&str, &str); 2] = [
    ("fast", "fal-ai/flux/schnell"),
    ("best", "fal-ai/flux-pro/v1.1"),
];

/// Said after a failed download.
const EXPIRY_HINT: &str =
    "fal's output URLs may have expired; results are fetched at once for that reason";

/// fal's defaults where kinds differ.
const DEFAULTS: JobDefaults = JobDefaults {
    model: DEFAULT_MODEL,
    catalog_entries,
    delivery_hosts: &DELIVERY_HOSTS,
    timeout: Duration::from_secs(60),
};

/// Everything one fal account needs: the shared [`JobSettings`], read through `Deref`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FalSettings {
    /// What every submit-then-poll account has.
    pub job: JobSettings,
}

deref_to_job!(FalSettings);

impl FalSettings {
    /// Defaults for `base_url` with `keys`: fal's media hosts allowed, polling from 500 ms.
    pub fn new(base_url: url::Url, keys: Arc<KeyPool>) -> Self {
        Self {
            job: JobSettings::new(base_url, keys, &DEFAULTS),
        }
    }
}

/// The fal provider.
pub struct FalProvider {
    settings: FalSettings,
    client: reqwest::Client,
    executor: Executor,
    downloader: Downloader,
}

impl fmt::Debug for FalProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FalProvider")
            .field("settings", &self.settings)
            .field("allowed_hosts", self.downloader.allowed_hosts())
            .finish_non_exhaustive()
    }
}

/// A submitted request: where to follow it, or the output when the answer already was it.
#[derive(Debug)]
struct Queued {
    id: Option<String>,
    status_url: url::Url,
    response_url: url::Url,
    cancel_url: url::Url,
    output: Option<Value>,
}

impl FalProvider {
    /// A provider with `settings`, sending through `client` (shared per connect timeout).
    pub fn new(settings: FalSettings, client: reqwest::Client) -> Self {
        let executor = settings.executor(KIND);
        let downloader = settings.downloader(EXPIRY_HINT);
        Self {
            settings,
            client,
            executor,
            downloader,
        }
    }

    /// The model's input for `request` (and an edit's `images`).
    fn input(
        &self,
        request: &GenerateRequest,
        images: &[InputImage],
    ) -> Result<Map<String, Value>, ProviderError> {
        let caps = self.settings.catalog.get(&request.model);
        let options = &request.options;
        let mut input = Map::new();
        input.insert("prompt".into(), request.prompt.clone().into());
        if caps.takes(Param::Size) {
            if let Some(size) = size_for(options, &caps)? {
                if let Some((w, h)) = validate::parse_size(&validate::normalized_size(&size)) {
                    input.insert(
                        "image_size".into(),
                        serde_json::json!({"width": w, "height": h}),
                    );
                }
            }
        } else if let Some(ratio) = &options.aspect_ratio {
            input.insert("aspect_ratio".into(), ratio.trim().into());
        }
        input.insert("num_images".into(), request.n().max(1).into());
        if let Some(seed) = options.seed {
            input.insert("seed".into(), seed.into());
        }
        let format = match options.format() {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            other => {
                return Err(ProviderError::invalid_param(
                    "output_format",
                    format!(
                        "fal's FLUX endpoints make jpeg or png images, not {}",
                        other.as_str()
                    ),
                ))
            }
        };
        input.insert("output_format".into(), format.into());
        if let Some(image) = images.first() {
            let data = base64::engine::general_purpose::STANDARD.encode(&image.bytes);
            input.insert(
                "image_url".into(),
                format!("data:{};base64,{data}", image.mime()).into(),
            );
        }
        for (key, value) in options.extra.iter().flatten() {
            if key != "prompt" && key != "image_url" {
                input.insert(key.clone(), value.clone());
            }
        }
        Ok(input)
    }

    /// The model id checked as a path (`owner/name[/subpath]`), and its `owner/name` part,
    /// which status, result and cancel URLs use.
    fn model_paths<'a>(&self, model: &'a str) -> Result<(&'a str, String), ProviderError> {
        let segments: Vec<&str> = model.split('/').collect();
        let plain = |s: &&str| {
            !s.is_empty()
                && !s.chars().all(|c| c == '.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if segments.len() < 2 || !segments.iter().all(plain) {
            return Err(ProviderError::invalid_param(
                "model",
                "a fal model is `owner/name` or `owner/name/subpath`",
            ));
        }
        Ok((model, format!("{}/{}", segments[0], segments[1])))
    }

    /// Submits one request with `key`.
    async fn submit(
        &self,
        model: &str,
        input: &Map<String, Value>,
        key: Option<&PoolKey>,
    ) -> Result<Queued, ProviderError> {
        let (path, app) = self.model_paths(model)?;
        let req = self
            .client
            .post(endpoint(&self.settings.base_url, path))
            .json(input);
        let (_, json) = self.send(req, key, "the fal queue").await?;
        // The synchronous route answers the output itself.
        if json.get("images").is_some() || json.get("image").is_some() {
            let here = endpoint(&self.settings.base_url, path);
            return Ok(Queued {
                id: str_at(&json, "/request_id").map(String::from),
                status_url: here.clone(),
                response_url: here.clone(),
                cancel_url: here,
                output: Some(json),
            });
        }
        let id = str_at(&json, "/request_id")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| bad("the fal queue's answer names no `request_id`"))?;
        let requests = format!("{app}/requests/{id}");
        Ok(Queued {
            id: Some(id.to_string()),
            status_url: self.own_url(&json, "/status_url", &format!("{requests}/status"))?,
            response_url: self.own_url(&json, "/response_url", &requests)?,
            cancel_url: self.own_url(&json, "/cancel_url", &format!("{requests}/cancel"))?,
            output: None,
        })
    }

    /// The URL at `field` of `json`, which must be on the base URL's origin (the key goes
    /// there), or `{base_url}/{fallback}` when absent.
    fn own_url(
        &self,
        json: &Value,
        field: &str,
        fallback: &str,
    ) -> Result<url::Url, ProviderError> {
        let base = &self.settings.base_url;
        let Some(raw) = str_at(json, field) else {
            return Ok(endpoint(base, fallback));
        };
        let url = url::Url::parse(raw).map_err(|_| bad("the fal queue's URLs are not valid"))?;
        if !same_origin(&url, base) {
            return Err(bad(format!(
                "the fal queue's URLs point to host `{}`, not the queue's; they were not used, \
                 so the key was not sent there",
                url.host_str().unwrap_or_default()
            )));
        }
        Ok(url)
    }

    /// One status check: pending with the queue position or last log line, or done.
    async fn check(
        &self,
        queued: &Queued,
        key: Option<&PoolKey>,
    ) -> Result<PollStatus<()>, ProviderError> {
        let mut url = queued.status_url.clone();
        url.query_pairs_mut().append_pair("logs", "1");
        let (_, json) = self
            .send(self.client.get(url), key, "the fal request status")
            .await?;
        let status = str_at(&json, "/status")
            .ok_or_else(|| bad("the fal request status names no `status`"))?;
        match status {
            "COMPLETED" if json.get("error").is_some_and(|e| !e.is_null()) => Err(failed(&json)),
            "COMPLETED" => Ok(PollStatus::Done(())),
            "FAILED" | "ERROR" => Err(failed(&json)),
            "CANCELED" | "CANCELLED" => Err(ProviderError::new(
                ErrorKind::Cancelled,
                "the fal request was cancelled before it finished",
            )
            .with_request_sent(true)
            .with_retryable(false)
            .with_provider_detail(Some(status.into()), None)),
            "IN_QUEUE" => {
                let position = json
                    .get("queue_position")
                    .and_then(Value::as_u64)
                    .map(|p| format!(" (queue position {p})"))
                    .unwrap_or_default();
                Ok(PollStatus::Pending {
                    status: Some(format!("IN_QUEUE{position}")),
                })
            }
            other => {
                let last_log = json
                    .get("logs")
                    .and_then(Value::as_array)
                    .and_then(|logs| logs.last())
                    .and_then(|log| log.get("message")?.as_str())
                    .map(|m| format!(": {}", capped(m, 80)))
                    .unwrap_or_default();
                Ok(PollStatus::Pending {
                    status: Some(format!("{}{last_log}", capped(other, 40))),
                })
            }
        }
    }

    /// Sends `req` with `Authorization: Key <key>` and reads its JSON answer.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        key: Option<&PoolKey>,
        what: &str,
    ) -> Result<(HeaderMap, Value), ProviderError> {
        let req = match key {
            Some(key) => {
                let auth = auth_header("Key", key.expose()).ok_or_else(|| unusable_key(key))?;
                req.header(reqwest::header::AUTHORIZATION, auth)
            }
            None => req,
        };
        self.settings
            .send_json(req, what, |status, headers, body| {
                parse_error(status, headers, body, key)
            })
            .await
    }

    /// The images of an output, at most `n`, downloaded at once.
    async fn images(&self, output: &Value, n: usize) -> Result<Vec<GeneratedImage>, ProviderError> {
        let listed: Vec<&Value> = match (output.get("images"), output.get("image")) {
            (Some(Value::Array(items)), _) => items.iter().collect(),
            (_, Some(image @ Value::Object(_))) => vec![image],
            _ => return Err(bad("the fal output has no `images`")),
        };
        if listed.is_empty() {
            return Err(bad("the fal output holds no image"));
        }
        if listed.len() > n {
            return Err(bad(format!(
                "the fal output holds {} images for the {n} asked for",
                listed.len()
            )));
        }
        let flagged = output
            .get("has_nsfw_concepts")
            .and_then(Value::as_array)
            .map_or(0, |f| {
                f.iter().filter(|v| v.as_bool() == Some(true)).count()
            });
        if flagged > 0 {
            return Err(ProviderError::new(
                ErrorKind::ContentPolicy,
                format!(
                    "fal's safety checker flagged {flagged} of {} images (fal sends them black); \
                     rephrase the prompt",
                    listed.len()
                ),
            )
            .with_request_sent(true)
            .with_retryable(false));
        }
        let mut images = Vec::with_capacity(listed.len());
        for (i, item) in listed.iter().enumerate() {
            let index = i + 1;
            let url = item
                .get("url")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("image {index} of the fal output has no `url`")))?;
            images.push(fetch_image(&self.downloader, index, url, "output").await?);
        }
        Ok(images)
    }

    /// Runs one request from submission to images, cancelling it at fal if the call ends first.
    async fn call(
        &self,
        request: &GenerateRequest,
        images: &[InputImage],
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let model = request.model.as_str();
        let input = self.input(request, images)?;
        let n = request.n().max(1) as usize;
        let guard = CancelOnDrop::new(self.client.clone(), reqwest::Method::PUT);
        let (guard, input_ref) = (&guard, &input);
        let outcome = self
            .executor
            .run(
                options,
                "fal request",
                model,
                |attempt: Attempt| async move {
                    let queued = self.submit(model, input_ref, attempt.key()).await?;
                    if queued.output.is_none() {
                        guard.set(Some(OpenJob {
                            url: queued.cancel_url.clone(),
                            auth: attempt.key().and_then(|k| auth_header("Key", k.expose())),
                        }));
                    }
                    Ok(queued)
                },
                |sent: Sent<Queued>| async move {
                    let queued = sent.value;
                    let key = sent.key.as_deref();
                    let output = match &queued.output {
                        Some(output) => output.clone(),
                        None => {
                            let queued = &queued;
                            self.settings
                                .poll_job(
                                    options,
                                    sent.deadline,
                                    "the fal request",
                                    Some(guard),
                                    || self.check(queued, key),
                                )
                                .await?;
                            let req = self.client.get(queued.response_url.clone());
                            self.send(req, key, "the fal result")
                                .await
                                .map_err(|e| e.with_request_sent(true).with_retryable(false))?
                                .1
                        }
                    };
                    let images = self.images(&output, n).await?;
                    Ok((images, queued.id.clone()))
                },
            )
            .await;
        if outcome.is_err() {
            guard.cancel().await;
        }
        let (images, id) = outcome?;
        let mut result = GenerateResult::new(images, model);
        result.request_id = id;
        let mut sent = input;
        sent.remove("image_url");
        sent.insert("model".into(), model.into());
        Ok(result.with_sent(sent))
    }
}

/// A request that failed at fal: its `error` (and `error_type`), capped; not retried.
fn failed(json: &Value) -> ProviderError {
    let said = json
        .get("error")
        .filter(|e| !e.is_null())
        .map(|e| capped(e.as_str().map_or(e.to_string(), String::from).as_str(), 300));
    let error_type = str_at(json, "/error_type").map(String::from);
    let refusal = [said.as_deref(), error_type.as_deref()]
        .into_iter()
        .flatten()
        .any(is_refusal);
    let detail = said
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let kind = if refusal {
        ErrorKind::ContentPolicy
    } else {
        ErrorKind::UpstreamUnavailable
    };
    ProviderError::new(kind, format!("the fal request failed{detail}"))
        .with_request_sent(true)
        .with_retryable(false)
        .with_provider_detail(Some(error_type.unwrap_or_else(|| "failed".into())), said)
}

/// Words of a refusal by fal's or a model's safety checker.
fn is_refusal(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["content_policy", "nsfw", "safety", "flagged"]
        .iter()
        .any(|w| text.contains(w))
}

/// The status table of fal's errors (`{"detail": ...}`, `X-Fal-Error-Type`).
pub fn parse_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: Option<&PoolKey>,
) -> ProviderError {
    let said = error_text(body, &["detail", "error", "message"]);
    let detail = said
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let error_type = headers
        .get("x-fal-error-type")
        .and_then(|v| v.to_str().ok())
        .filter(|t| t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(String::from);
    // A refusal's type sits in the detail list (`"type": "content_policy_violation"`).
    let raw = String::from_utf8_lossy(body);
    let refusal = is_refusal(&raw) || error_type.as_deref().is_some_and(is_refusal);
    let lower = said.as_deref().unwrap_or_default().to_ascii_lowercase();
    let out_of_balance = ["balance", "exhausted", "locked", "billing"]
        .iter()
        .any(|w| lower.contains(w));
    let s = status.as_u16();
    let key = key
        .map(|k| format!(" {}", k.fingerprint()))
        .unwrap_or_default();
    let (kind, message) = match s {
        400 | 422 if refusal => (
            ErrorKind::ContentPolicy,
            format!("fal refused the input (HTTP {s}){detail}; rephrase the prompt"),
        ),
        401 => (
            ErrorKind::Auth,
            format!("the fal key{key} was rejected (HTTP 401){detail}"),
        ),
        402 => (
            ErrorKind::QuotaExhausted,
            format!("the fal account of key{key} has no balance left (HTTP 402){detail}"),
        ),
        403 if out_of_balance => (
            ErrorKind::QuotaExhausted,
            format!("the fal account of key{key} is out of balance (HTTP 403){detail}; top it up"),
        ),
        403 => (
            ErrorKind::Permission,
            format!("the fal key{key} may not do this (HTTP 403){detail}"),
        ),
        404 => (
            ErrorKind::NotFound,
            format!("fal has no such endpoint or request (HTTP 404){detail}"),
        ),
        400 | 413 | 422 => (
            ErrorKind::InvalidRequest,
            format!("fal rejected the input (HTTP {s}){detail}"),
        ),
        429 => (
            ErrorKind::RateLimited,
            format!("fal is rate limiting key{key} (HTTP 429){detail}"),
        ),
        500..=599 => (
            ErrorKind::UpstreamUnavailable,
            format!("fal is unavailable (HTTP {s}){detail}"),
        ),
        _ => (
            ErrorKind::BadResponse,
            format!("fal answered HTTP {s}{detail}"),
        ),
    };
    ProviderError::new(kind, message)
        .with_status(s)
        .with_retryable(matches!(
            kind,
            ErrorKind::RateLimited | ErrorKind::UpstreamUnavailable
        ))
        .with_retry_after(retry::retry_after(headers, std::time::SystemTime::now()))
        .with_provider_detail(error_type, said)
}

#[async_trait]
impl ImageProvider for FalProvider {
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

    fn aliases(&self) -> Vec<(String, String)> {
        crate::catalog::alias_pairs(&ALIASES)
    }

    async fn generate_opts(
        &self,
        request: &GenerateRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        self.call(request, &[], options).await
    }

    async fn edit_opts(
        &self,
        request: &EditRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let mut result = self
            .call(&request.as_generation(), &request.images, options)
            .await?;
        result
            .sent
            .insert("input_images".into(), request.images.len().into());
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_balance_are_read_from_the_detail() {
        let err = |s: u16, body: &str| {
            parse_error(
                StatusCode::from_u16(s).unwrap(),
                &HeaderMap::new(),
                body.as_bytes(),
                None,
            )
        };
        assert_eq!(
            err(422, r#"{"detail": [{"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation"}]}"#).kind,
            ErrorKind::ContentPolicy
        );
        assert_eq!(
            err(
                403,
                r#"{"detail": "User is locked. Reason: Exhausted balance."}"#
            )
            .kind,
            ErrorKind::QuotaExhausted
        );
        assert_eq!(
            err(403, r#"{"detail": "Forbidden"}"#).kind,
            ErrorKind::Permission
        );
        assert_eq!(
            err(422, r#"{"detail": [{"msg": "bad size"}]}"#).kind,
            ErrorKind::InvalidRequest
        );
    }
}
