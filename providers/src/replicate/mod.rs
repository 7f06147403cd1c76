//! Replicate (`kind = "replicate"`): create a prediction, wait or poll, download at once.
//!
//! `POST {base_url}/models/{owner}/{name}/predictions` (or `POST {base_url}/predictions` with
//! a `version` for `owner/name:version` and bare version ids) with `{"input": {...}}`, the
//! token as a bearer and `Prefer: wait=N` (at most 60 s, and less than the request timeout):
//! a prediction finished within it comes back with its `output`; one still `starting` or
//! `processing` is polled at its `urls.get` with the shared [`Poller`](crate::http::Poller)
//! (progress: the status, with the percentage of the model's last progress bar when its logs
//! show one). Output URLs
//! (kept one hour by Replicate) are downloaded at once through the shared [`Downloader`].
//!
//! When the call is cancelled, reaches its deadline, or is dropped while a prediction runs,
//! the prediction is cancelled at its `urls.cancel` (best effort, within 5 s) so it stops
//! billing. The token goes to `urls.get` and `urls.cancel` too, so both must be on the base
//! URL's origin. Replicate models name their inputs themselves: `n` is sent as the model's own
//! input where the catalog knows it (`num_outputs`, `number_of_images`), else that many
//! predictions run at once (seeds counting up), and `sent` says which (`predictions`). A
//! status check failing with a retryable error is checked again (the third in a row ends the
//! wait), as Replicate's own client retries its GETs.

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
        job::{deref_to_job, fetch_image, same_origin, JobDefaults, JobSettings},
        json::{capped, error_text, str_at},
        retry, Downloader, PollStatus,
    },
    keys::{KeyPool, PoolKey},
    CallOptions, EditRequest, ErrorKind, GenerateRequest, GenerateResult, GeneratedImage,
    ImageFormat, ImageProvider, InputImage, ModelCapabilities, Param, ProviderError,
};

/// The kind written in configuration.
pub const KIND: &str = "replicate";

/// Replicate's API.
pub const DEFAULT_BASE_URL: &str = "https://api.replicate.com/v1";

/// The model used when neither the call nor the configuration names one.
pub const DEFAULT_MODEL: &str = "black-forest-labs/flux-schnell";

/// Where Replicate serves outputs, allowed besides `download_hosts`.
pub const DELIVERY_HOSTS: [&str; 2] = ["replicate.delivery", "*.replicate.delivery"];

/// Built-in aliases.
const ALIASES: [(&str, &str); 2] = [
    ("fast", "black-forest-labs/flux-schnell"),
    ("best", "openai/gpt-image-2.6-sunburst"),
];

/// The longest `Prefer: wait` Replicate honours.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Said after a failed download: why an old output cannot be fetched again.
const EXPIRY_HINT: &str = "Replicate deletes API predictions' outputs one hour after they are made";

/// Replicate's defaults where kinds differ.
const DEFAULTS: JobDefaults = JobDefaults {
    model: DEFAULT_MODEL,
    catalog_entries,
    delivery_hosts: &DELIVERY_HOSTS,
    timeout: Duration::from_secs(180),
};

/// Everything one Replicate account needs: the shared [`JobSettings`] (read through `Deref`), and
/// how long a creation waits.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplicateSettings {
    /// What every submit-then-poll account has.
    pub job: JobSettings,
    /// How long the creating request asks to wait for the result (`Prefer: wait`).
    pub wait: Duration,
}

deref_to_job!(ReplicateSettings);

impl ReplicateSettings {
    /// Defaults for `base_url` with `keys`: Replicate's delivery hosts allowed, a 60 s wait.
    pub fn new(base_url: url::Url, keys: Arc<KeyPool>) -> Self {
        Self {
            job: JobSettings::new(base_url, keys, &DEFAULTS),
            wait: MAX_WAIT,
        }
    }
}

/// The Replicate provider.
pub struct ReplicateProvider {
    settings: ReplicateSettings,
    client: reqwest::Client,
    executor: Executor,
    downloader: Downloader,
}

impl fmt::Debug for ReplicateProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicateProvider")
            .field("settings", &self.settings)
            .field("allowed_hosts", self.downloader.allowed_hosts())
            .finish_non_exhaustive()
    }
}

/// A prediction as Replicate describes it.
#[derive(Debug)]
struct Prediction {
    id: String,
    state: State,
    get: url::Url,
    cancel: url::Url,
}

/// Where a prediction is.
#[derive(Debug)]
enum State {
    /// `starting` or `processing`, as shown in progress.
    Running(String),
    /// `succeeded`, with its output URLs.
    Done(Vec<String>),
}

impl ReplicateProvider {
    /// A provider with `settings`, sending through `client` (shared per connect timeout).
    pub fn new(settings: ReplicateSettings, client: reqwest::Client) -> Self {
        let executor = settings.executor(KIND);
        let downloader = settings.downloader(EXPIRY_HINT);
        Self {
            settings,
            client,
            executor,
            downloader,
        }
    }

    /// The model's `input` for `request` (and an edit's `images`), in Replicate's names.
    fn input(
        &self,
        request: &GenerateRequest,
        images: &[InputImage],
        n: u32,
    ) -> Result<Map<String, Value>, ProviderError> {
        let caps = self.settings.catalog.get(&request.model);
        let options = &request.options;
        let mut input = Map::new();
        input.insert("prompt".into(), request.prompt.clone().into());
        if let Some(ratio) = &options.aspect_ratio {
            input.insert("aspect_ratio".into(), ratio.trim().into());
        }
        if let Some(seed) = options.seed {
            input.insert("seed".into(), seed.into());
        }
        // Replicate's FLUX models default to WebP; every provider's default is PNG.
        let format = match options.format() {
            ImageFormat::Jpeg => "jpg",
            other => other.as_str(),
        };
        input.insert("output_format".into(), format.into());
        if let Some((name, _)) = catalog::n_input(&request.model) {
            input.insert(name.into(), n.into());
        }
        if caps.takes(Param::Complexity) {
            if let Some(complexity) = &options.complexity {
                input.insert("complexity".into(), complexity.clone().into());
            }
        }
        if caps.takes(Param::FrameCount) && options.output_format == Some(ImageFormat::Gif) {
            if let Some(frames) = options.frame_count {
                input.insert("frame_count".into(), frames.into());
            }
        }
        if let Some(image) = images.first() {
            let data = base64::engine::general_purpose::STANDARD.encode(&image.bytes);
            let uri = format!("data:{};base64,{data}", image.mime());
            input.insert("input_image".into(), uri.into());
        }
        for (key, value) in options.extra.iter().flatten() {
            if key != "prompt" && key != "input_image" {
                input.insert(key.clone(), value.clone());
            }
        }
        Ok(input)
    }

    /// The creation endpoint and body for `model`: the model's own route for `owner/name`, the
    /// generic one with a `version` otherwise.
    fn create_request(
        &self,
        model: &str,
        input: &Map<String, Value>,
    ) -> Result<(url::Url, Value), ProviderError> {
        let plain = |s: &str| {
            !s.is_empty()
                && !s.chars().all(|c| c == '.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let invalid = || {
            ProviderError::invalid_param(
                "model",
                "a Replicate model is `owner/name`, `owner/name:version` or a version id",
            )
        };
        let mut body = Map::new();
        let url = match model.split_once(':') {
            None => match model.split_once('/') {
                Some((owner, name)) if plain(owner) && plain(name) => endpoint(
                    &self.settings.base_url,
                    &format!("models/{owner}/{name}/predictions"),
                ),
                None if model.len() == 64 && model.chars().all(|c| c.is_ascii_hexdigit()) => {
                    body.insert("version".into(), model.into());
                    endpoint(&self.settings.base_url, "predictions")
                }
                _ => return Err(invalid()),
            },
            Some((name, version)) => {
                let ok = name
                    .split_once('/')
                    .is_some_and(|(o, n)| plain(o) && plain(n))
                    && !version.is_empty()
                    && version.chars().all(|c| c.is_ascii_hexdigit());
                if !ok {
                    return Err(invalid());
                }
                body.insert("version".into(), version.into());
                endpoint(&self.settings.base_url, "predictions")
            }
        };
        body.insert("input".into(), Value::Object(input.clone()));
        Ok((url, Value::Object(body)))
    }

    /// Creates one prediction with `key`, asking to wait for it.
    async fn create(
        &self,
        url: &url::Url,
        body: &Value,
        attempt: &Attempt,
    ) -> Result<Prediction, ProviderError> {
        let key = attempt.key();
        let mut req = self.client.post(url.clone()).json(body);
        // The wait must end before the request times out and before the call's deadline:
        // a creation cut off there would leave a prediction running that nobody can cancel.
        let left = attempt
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        let wait = self
            .settings
            .wait
            .min(MAX_WAIT)
            .min(self.settings.timeout.saturating_sub(Duration::from_secs(5)))
            .min(left.saturating_sub(Duration::from_secs(5)));
        if wait >= Duration::from_secs(1) {
            req = req.header("prefer", format!("wait={}", wait.as_secs()));
        }
        let (_, json) = self.send(req, key, "the Replicate API").await?;
        self.prediction(&json)
    }

    /// One status check of a prediction.
    async fn check(
        &self,
        url: &url::Url,
        key: Option<&PoolKey>,
    ) -> Result<Prediction, ProviderError> {
        let req = self.client.get(url.clone());
        let (_, json) = self.send(req, key, "the Replicate prediction").await?;
        self.prediction(&json)
    }

    /// Reads a prediction: a failed or cancelled one is an error (not retried: it ran).
    fn prediction(&self, json: &Value) -> Result<Prediction, ProviderError> {
        let id = str_at(json, "/id")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| bad("the Replicate answer names no prediction `id`"))?
            .to_string();
        let status = str_at(json, "/status")
            .ok_or_else(|| bad("the Replicate prediction has no `status`"))?;
        let base = &self.settings.base_url;
        let own = |field: &str, fallback: &str| -> Result<url::Url, ProviderError> {
            let Some(raw) = str_at(json, field) else {
                return Ok(endpoint(base, fallback));
            };
            let url = url::Url::parse(raw)
                .map_err(|_| bad("the Replicate prediction's URLs are not valid"))?;
            if !same_origin(&url, base) {
                return Err(bad(format!(
                    "the Replicate prediction's URLs point to host `{}`, not the API's; they \
                     were not used, so the token was not sent there",
                    url.host_str().unwrap_or_default()
                )));
            }
            Ok(url)
        };
        let get = own("/urls/get", &format!("predictions/{id}"))?;
        let cancel = own("/urls/cancel", &format!("predictions/{id}/cancel"))?;
        let state = match status {
            "succeeded" => State::Done(outputs(json.get("output"))?),
            "failed" => return Err(failed(json)),
            "canceled" | "aborted" => {
                return Err(ProviderError::new(
                    ErrorKind::Cancelled,
                    format!("the Replicate prediction was {status} before it finished"),
                )
                .with_request_sent(true)
                .with_retryable(false)
                .with_provider_detail(Some(status.to_string()), None))
            }
            other => State::Running(format!("{}{}", capped(other, 40), progress(json))),
        };
        Ok(Prediction {
            id,
            state,
            get,
            cancel,
        })
    }

    /// Sends `req` with `key` as a bearer and reads its JSON answer, classifying an error.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        key: Option<&PoolKey>,
        what: &str,
    ) -> Result<(HeaderMap, Value), ProviderError> {
        let req = match key {
            Some(key) => req.bearer_auth(key.expose()),
            None => req,
        };
        self.settings
            .send_json(req, what, |status, headers, body| {
                parse_error(status, headers, body, key)
            })
            .await
    }

    /// One prediction from creation to images (at most `n`), cancelled at Replicate if the call
    /// ends (error, cancellation, deadline, drop) while it runs.
    async fn run_one(
        &self,
        first_index: usize,
        model: &str,
        n: usize,
        create: &(url::Url, Value),
        options: &CallOptions,
    ) -> Result<(Vec<GeneratedImage>, String), ProviderError> {
        let guard = CancelOnDrop::new(self.client.clone(), reqwest::Method::POST);
        let guard = &guard;
        let outcome = self
            .executor
            .run(
                options,
                "replicate prediction",
                model,
                |attempt: Attempt| async move {
                    let prediction = self.create(&create.0, &create.1, &attempt).await?;
                    if matches!(prediction.state, State::Running(_)) {
                        guard.set(Some(OpenJob {
                            url: prediction.cancel.clone(),
                            auth: attempt
                                .key()
                                .and_then(|k| auth_header("Bearer", k.expose())),
                        }));
                    }
                    Ok(prediction)
                },
                |sent: Sent<Prediction>| async move {
                    let prediction = sent.value;
                    let key = sent.key.as_deref();
                    let urls = match prediction.state {
                        State::Done(urls) => urls,
                        State::Running(_) => {
                            let get = &prediction.get;
                            self.settings
                                .poll_job(
                                    options,
                                    sent.deadline,
                                    "the Replicate prediction",
                                    Some(guard),
                                    || async move {
                                        let p = self.check(get, key).await?;
                                        Ok(match p.state {
                                            State::Running(status) => PollStatus::Pending {
                                                status: Some(status),
                                            },
                                            State::Done(urls) => PollStatus::Done(urls),
                                        })
                                    },
                                )
                                .await?
                        }
                    };
                    if urls.len() > n {
                        return Err(bad(format!(
                            "the Replicate prediction answered {} images for the {n} asked for",
                            urls.len()
                        )));
                    }
                    let mut images = Vec::with_capacity(urls.len());
                    for (i, url) in urls.iter().enumerate() {
                        images.push(self.fetch(first_index + i, url).await?);
                    }
                    Ok((images, prediction.id))
                },
            )
            .await;
        if outcome.is_err() {
            guard.cancel().await;
        }
        outcome
    }

    /// Downloads (or decodes) output `index` (1-based).
    async fn fetch(&self, index: usize, url: &str) -> Result<GeneratedImage, ProviderError> {
        fetch_image(&self.downloader, index, url, "output").await
    }

    /// Runs `request` (with an edit's `images`): one prediction for models that take `n`,
    /// else `n` at once.
    async fn call(
        &self,
        request: &GenerateRequest,
        images: &[InputImage],
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let model = request.model.as_str();
        let n = request.n().max(1);
        let per_prediction = catalog::n_input(model).is_some();
        let (predictions, each) = if per_prediction { (1, n) } else { (n, 1) };
        let input = self.input(request, images, each)?;
        let seed = input.get("seed").and_then(Value::as_i64);
        let creates = (0..predictions)
            .map(|i| {
                let mut input = input.clone();
                if let (Some(seed), true) = (seed, i > 0) {
                    input.insert("seed".into(), seed.wrapping_add(i64::from(i)).into());
                }
                self.create_request(model, &input)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let runs = creates.iter().enumerate().map(|(i, create)| {
            self.run_one(i * each as usize + 1, model, each as usize, create, options)
        });
        // One failure fails the call; the other predictions are dropped, and so cancelled.
        let done = futures_util::future::try_join_all(runs).await?;
        let ids: Vec<String> = done.iter().map(|(_, id)| id.clone()).collect();
        let images = done.into_iter().flat_map(|(images, _)| images).collect();
        let mut result = GenerateResult::new(images, model);
        result.request_id = ids.first().cloned();
        let mut sent = input;
        sent.remove("input_image");
        sent.insert("model".into(), model.into());
        if predictions > 1 {
            sent.insert("predictions".into(), predictions.into());
            if let Some(seed) = seed {
                let seeds: Vec<Value> = (0..predictions)
                    .map(|i| seed.wrapping_add(i64::from(i)).into())
                    .collect();
                sent.insert("seeds".into(), seeds.into());
            }
        }
        Ok(result.with_sent(sent))
    }
}

/// The output URLs of a succeeded prediction: one string, or a list of them.
fn outputs(output: Option<&Value>) -> Result<Vec<String>, ProviderError> {
    let urls: Option<Vec<String>> = match output {
        Some(Value::String(url)) => Some(vec![url.clone()]),
        Some(Value::Array(items)) => items.iter().map(|v| v.as_str().map(String::from)).collect(),
        _ => None,
    };
    urls.filter(|urls| !urls.is_empty())
        .ok_or_else(|| bad("the Replicate prediction succeeded without output URLs"))
}

/// ` (45%)` from the last progress bar in a prediction's logs, if any.
fn progress(json: &Value) -> String {
    let Some(logs) = str_at(json, "/logs") else {
        return String::new();
    };
    let tail = logs.get(logs.len().saturating_sub(2048)..).unwrap_or(logs);
    tail.rsplit(|c: char| c.is_whitespace() || c == '|')
        .find_map(|word| {
            let n: f64 = word.strip_suffix('%')?.trim().parse().ok()?;
            (0.0..=100.0).contains(&n).then(|| format!(" ({n:.0}%)"))
        })
        .unwrap_or_default()
}

/// Words of a refusal by a model's or Replicate's safety checker.
fn is_refusal(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "nsfw",
        "flagged",
        "safety",
        "sensitive",
        "content policy",
        "moderat",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// A failed prediction: its `error` text, scrubbed by the executor and capped here.
fn failed(json: &Value) -> ProviderError {
    let said = json
        .get("error")
        .filter(|e| !e.is_null())
        .map(|e| capped(e.as_str().map_or(e.to_string(), String::from).as_str(), 300));
    let detail = said
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let kind = if said.as_deref().is_some_and(is_refusal) {
        ErrorKind::ContentPolicy
    } else {
        ErrorKind::UpstreamUnavailable
    };
    ProviderError::new(kind, format!("the Replicate prediction failed{detail}"))
        .with_request_sent(true)
        .with_retryable(false)
        .with_provider_detail(Some("failed".into()), said)
}

/// The status table of Replicate's RFC 7807 errors.
pub fn parse_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: Option<&PoolKey>,
) -> ProviderError {
    let said = error_text(body, &["detail", "title", "error"]);
    let detail = said
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let s = status.as_u16();
    let key = key
        .map(|k| format!(" {}", k.fingerprint()))
        .unwrap_or_default();
    let (kind, message) = match s {
        400 | 422 if said.as_deref().is_some_and(is_refusal) => (
            ErrorKind::ContentPolicy,
            format!("Replicate refused the input (HTTP {s}){detail}; rephrase the prompt"),
        ),
        401 => (
            ErrorKind::Auth,
            format!("the Replicate API token{key} was rejected (HTTP 401){detail}"),
        ),
        402 => (
            ErrorKind::QuotaExhausted,
            format!("the Replicate account of token{key} cannot pay for this (HTTP 402){detail}; set up billing or add credit"),
        ),
        403 => (
            ErrorKind::Permission,
            format!("the Replicate API token{key} may not run this model (HTTP 403){detail}"),
        ),
        404 => (
            ErrorKind::NotFound,
            format!("Replicate has no such model or version (HTTP 404){detail}"),
        ),
        400 | 413 | 422 => (
            ErrorKind::InvalidRequest,
            format!("Replicate rejected the input (HTTP {s}){detail}"),
        ),
        429 => (
            ErrorKind::RateLimited,
            format!("Replicate is rate limiting token{key} (HTTP 429){detail}"),
        ),
        500..=599 => (
            ErrorKind::UpstreamUnavailable,
            format!("Replicate is unavailable (HTTP {s}){detail}"),
        ),
        _ => (ErrorKind::BadResponse, format!("Replicate answered HTTP {s}{detail}")),
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

#[async_trait]
impl ImageProvider for ReplicateProvider {
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
    fn progress_reads_the_last_percentage_of_the_logs() {
        let json = serde_json::json!({"logs": "Using seed: 1\n 10%|█         | 1/10\n 45%|████▌     | 4/10"});
        assert_eq!(progress(&json), " (45%)");
        assert_eq!(progress(&serde_json::json!({"logs": "starting"})), "");
        assert_eq!(progress(&serde_json::json!({})), "");
    }

    #[test]
    fn model_names_become_their_routes_and_nothing_else() {
        let keys = Arc::new(KeyPool::new([], Duration::from_secs(60)));
        let p = ReplicateProvider::new(
            ReplicateSettings::new(DEFAULT_BASE_URL.parse().unwrap(), keys),
            reqwest::Client::new(),
        );
        let input = Map::new();
        let (url, body) = p
            .create_request("black-forest-labs/flux-schnell", &input)
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://api.replicate.com/v1/models/black-forest-labs/flux-schnell/predictions"
        );
        assert!(body.get("version").is_none());
        let (url, body) = p.create_request("owner/model:abc123", &input).unwrap();
        assert_eq!(url.as_str(), "https://api.replicate.com/v1/predictions");
        assert_eq!(body["version"], "abc123");
        for bad in ["../../admin", "a/..", "a/b/c", "a/b:zz", "flux", "a/b?x=1"] {
            assert!(p.create_request(bad, &input).is_err(), "{bad}");
        }
    }
}
