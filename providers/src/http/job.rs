//! What every submit-then-poll provider (BFL, fal, Replicate) shares: one account's settings,
//! the executor and downloader made from them, JSON requests under their timeout and cap, and
//! result images fetched at once (their URLs expire).
//!
//! A provider keeps only its own: the wire format, how a job is followed, the error table.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use reqwest::{header::HeaderMap, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use crate::{
    build::{CommonConfig, HttpConfig},
    keys::{KeyPool, PoolKey},
    secret::Scrubber,
    CallOptions, Catalog, ErrorKind, GeneratedImage, ModelCapabilities, ProviderError,
};

use super::{
    body::bad,
    cancel::CancelOnDrop,
    config::{poller, retry_policy},
    download,
    executor::Executor,
    json::send_json,
    redacted,
    transient::{TransientChecks, GIVE_UP_AT},
    Downloader, PollStatus, Poller, RetryPolicy,
};

/// What differs between the kinds' defaults, the rest being the same for all.
#[derive(Debug, Clone, Copy)]
pub struct JobDefaults {
    /// The model used when a request names none.
    pub model: &'static str,
    /// The kind's own catalog entries (its advertised models, in order).
    pub catalog_entries: fn() -> Vec<(&'static str, ModelCapabilities)>,
    /// Where the kind serves results, allowed besides the base URL's origin.
    pub delivery_hosts: &'static [&'static str],
    /// Per-request timeout.
    pub timeout: Duration,
}

/// Everything one account of a submit-then-poll API needs.
#[derive(Clone)]
#[non_exhaustive]
pub struct JobSettings {
    /// API base URL.
    pub base_url: url::Url,
    /// The API keys; their `Debug` shows fingerprints only.
    pub keys: Arc<KeyPool>,
    /// The model used when a request names none.
    pub model: String,
    /// The models to advertise in listings.
    pub models: Vec<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How failed submissions are retried.
    pub retry: RetryPolicy,
    /// The longest one call may take, polling and download included.
    pub deadline: Duration,
    /// How often a job's status is checked.
    pub poll: Poller,
    /// Hosts results may be downloaded from besides the base URL's origin.
    pub download_hosts: Vec<String>,
    /// The largest answer or image accepted, bytes.
    pub max_response_bytes: usize,
    /// The model catalog requests are checked against.
    pub catalog: Arc<Catalog>,
}

impl fmt::Debug for JobSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSettings")
            .field("base_url", &redacted(&self.base_url))
            .field("keys", &self.keys)
            .field("model", &self.model)
            .field("retry", &self.retry)
            .field("deadline", &self.deadline)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl JobSettings {
    /// Defaults for `base_url` with `keys`: the kind's delivery hosts allowed, polling from
    /// 500 ms up to 4 s, a 300 s deadline, answers up to 64 MiB.
    pub fn new(base_url: url::Url, keys: Arc<KeyPool>, defaults: &JobDefaults) -> Self {
        Self {
            base_url,
            keys,
            model: defaults.model.into(),
            models: (defaults.catalog_entries)()
                .into_iter()
                .map(|(m, _)| m.into())
                .collect(),
            timeout: defaults.timeout,
            retry: RetryPolicy::default(),
            deadline: Duration::from_secs(300),
            poll: poller(500, 4_000),
            download_hosts: defaults
                .delivery_hosts
                .iter()
                .map(|h| h.to_string())
                .collect(),
            max_response_bytes: 64 * 1024 * 1024,
            catalog: Arc::new(Catalog::for_kind((defaults.catalog_entries)())),
        }
    }

    /// Applies the configuration every kind shares: the model and listing, the `[http]`
    /// settings, the poll intervals, the built catalog.
    pub(crate) fn configure(
        &mut self,
        common: &CommonConfig,
        http: &HttpConfig,
        catalog: Arc<Catalog>,
        (poll_interval_ms, poll_max_interval_ms): (u64, u64),
    ) {
        if let Some(model) = &common.model {
            self.model = model.clone();
        }
        if let Some(models) = &common.offered_models {
            self.models = models.clone();
        }
        self.timeout = http.timeout();
        self.retry = retry_policy(http);
        self.deadline = Duration::from_secs(http.deadline_s);
        self.poll = poller(poll_interval_ms, poll_max_interval_ms);
        self.download_hosts
            .extend(http.download_hosts.iter().cloned());
        self.max_response_bytes = http.max_response_mb.saturating_mul(1024 * 1024);
        self.catalog = catalog;
    }

    /// The executor for `kind`'s submissions, scrubbing these keys and base URL from errors.
    pub fn executor(&self, kind: &'static str) -> Executor {
        let scrubber = Scrubber::new(&self.keys, &self.base_url);
        Executor::new(kind, Arc::clone(&self.keys), self.retry, self.deadline)
            .with_scrubber(scrubber)
    }

    /// The downloader for results, saying `hint` after a failed download.
    pub fn downloader(&self, hint: &str) -> Downloader {
        Downloader::new(
            &self.base_url,
            &self.download_hosts,
            self.timeout,
            self.max_response_bytes,
        )
        .with_failure_hint(hint)
    }

    /// Sends `req` (naming it `what`) under these settings' timeout and cap and reads its JSON
    /// answer, `parse_error` classifying an error answer.
    pub async fn send_json(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        parse_error: impl FnOnce(StatusCode, &HeaderMap, &[u8]) -> ProviderError,
    ) -> Result<(HeaderMap, Value), ProviderError> {
        send_json(
            req,
            what,
            self.timeout,
            self.max_response_bytes,
            parse_error,
        )
        .await
    }

    /// Polls a submitted job with `check` until it is done. A check failing with a retryable
    /// error is checked again (the [`GIVE_UP_AT`]-th in a row ends the wait), since the job
    /// is already paid for. Once the job ended upstream (done, or a failure the API reported,
    /// which carries a `provider_code`), `open` is told there is nothing left to cancel.
    pub async fn poll_job<T, C, CF>(
        &self,
        options: &CallOptions,
        deadline: Instant,
        what: &str,
        open: Option<&CancelOnDrop>,
        check: C,
    ) -> Result<T, ProviderError>
    where
        C: Fn() -> CF,
        CF: Future<Output = Result<PollStatus<T>, ProviderError>>,
    {
        let transient = TransientChecks::new(GIVE_UP_AT);
        let (transient, check) = (&transient, &check);
        self.poll
            .run(options, deadline, what, |_| async move {
                let checked = check().await;
                let ended = match &checked {
                    Ok(status) => matches!(status, PollStatus::Done(_)),
                    Err(e) => e.provider_code.is_some(),
                };
                if let (true, Some(open)) = (ended, open) {
                    open.set(None);
                }
                transient.judge(checked)
            })
            .await
    }
}

/// Downloads (or decodes, for a `data:` URL) image `index` (1-based) at `url`; `noun` names
/// what the API calls it (`result`, `output`) in messages.
pub async fn fetch_image(
    downloader: &Downloader,
    index: usize,
    url: &str,
    noun: &str,
) -> Result<GeneratedImage, ProviderError> {
    let bytes = if download::is_data_url(url) {
        download::decode_data_url(url)
            .map_err(|e| bad(format!("image {index}: the inline {noun} is unusable: {e}")))?
    } else {
        downloader.fetch(index, url).await?
    };
    GeneratedImage::from_encoded(bytes).map_err(|_| {
        bad(format!(
            "image {index}: the {noun} URL served something that is not an image"
        ))
    })
}

/// Whether `url` is on `base`'s origin (scheme, host, port): the key may only go there.
pub fn same_origin(url: &url::Url, base: &url::Url) -> bool {
    url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
}

/// The error for `key` holding characters no header can carry: never sent, never retried.
pub fn unusable_key(key: &PoolKey) -> ProviderError {
    ProviderError::new(
        ErrorKind::InvalidRequest,
        format!(
            "the API key {} holds characters a header cannot carry",
            key.fingerprint()
        ),
    )
    .with_retryable(false)
    .with_request_sent(false)
}

/// `Deref`/`DerefMut` from a kind's settings to its [`JobSettings`] field `job`, so the shared
/// fields read as the kind's own (`settings.timeout`).
macro_rules! deref_to_job {
    ($settings:ty) => {
        impl std::ops::Deref for $settings {
            type Target = $crate::http::job::JobSettings;

            fn deref(&self) -> &Self::Target {
                &self.job
            }
        }

        impl std::ops::DerefMut for $settings {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.job
            }
        }
    };
}
pub(crate) use deref_to_job;
