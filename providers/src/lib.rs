//! Image generation providers behind one async trait.
//!
//! This crate knows nothing of MCP, files on disk or configuration files: it turns a
//! [`GenerateRequest`] (or an [`EditRequest`], a [`VariationRequest`]) into a [`GenerateResult`]
//! or a [`ProviderError`], and describes what each model can do so requests can be checked
//! before any paid call is made.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod azure_openai;
pub mod bfl;
pub mod build;
pub mod catalog;
pub mod cost;
pub mod error;
pub mod fal;
pub mod gemini;
pub mod http;
pub mod image_info;
pub mod keys;
pub mod layers;
pub mod mock;
pub mod openai;
pub mod openai_compatible;
pub mod options;
pub mod replicate;
pub mod secret;
pub mod stability;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;
pub mod validate;

use std::{fmt::Debug, time::Duration};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use catalog::{
    Catalog, Date, GifRules, Lifecycle, ModelCapabilities, ModelOverride, ModelState, Param,
    SizeRule,
};
pub use error::{ErrorKind, ProviderError, RetryStatus};
pub use options::{ImageOptions, Resolution, SvgOptions, SvgReasoning};
pub use secret::fingerprint;
pub use types::{
    EditRequest, GenerateRequest, GenerateResult, GeneratedImage, ImageFormat, InputImage, Usage,
    VariationRequest,
};

/// A source of generated images: one configured provider instance (an OpenAI account, the mock, ...).
#[async_trait]
pub trait ImageProvider: Send + Sync + Debug {
    /// The provider kind as written in configuration (`openai`, `mock`, ...).
    fn kind(&self) -> &'static str;

    /// The model used when a request names none.
    fn default_model(&self) -> &str;

    /// The models this provider advertises, in display order.
    fn models(&self) -> Vec<String>;

    /// What `model` can do; unknown models get only the checks that always hold.
    fn capabilities(&self, model: &str) -> ModelCapabilities;

    /// Whether the catalog's lifecycle dates are this provider's own (the vendor's API itself,
    /// not a compatible server that may still serve a model the vendor shut down).
    ///
    /// When true a shut-down model is replaced (or refused) before anything is sent; when
    /// false it is sent as asked, and replaced only if the server says it does not exist.
    fn lifecycle_is_authoritative(&self) -> bool {
        false
    }

    /// Built-in model aliases (`fast`, `best`, ...) for this provider, by alias.
    fn aliases(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// A sentence for people when this provider served a call they did not choose it for
    /// (the offline mock standing in for a missing key), or `None`.
    fn stand_in_notice(&self) -> Option<String> {
        None
    }

    /// The image models the provider serves now, as its API lists them; providers without a
    /// model listing keep this default, which refuses.
    async fn list_models(&self) -> Result<Vec<UpstreamModel>, ProviderError> {
        Err(ProviderError::unsupported(format!(
            "provider `{}` cannot list its models",
            self.kind()
        )))
    }

    /// Generates images; `request.model` is always set and already validated.
    ///
    /// Progress goes to `options.events`; `options.cancel` and `options.deadline` end the call
    /// early. Dropping the returned future cancels the call too, including any upstream
    /// request and retry wait.
    async fn generate_opts(
        &self,
        request: &GenerateRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError>;

    /// Edits images as `request.prompt` says; `request` is already validated. Providers that
    /// cannot edit keep this default, which refuses.
    async fn edit_opts(
        &self,
        request: &EditRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let _ = (request, options);
        Err(ProviderError::unsupported(format!(
            "provider `{}` cannot edit images",
            self.kind()
        )))
    }

    /// Makes variations of one image. Providers that cannot keep this default, which refuses.
    async fn variation_opts(
        &self,
        request: &VariationRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let _ = (request, options);
        Err(ProviderError::unsupported(format!(
            "provider `{}` cannot make image variations",
            self.kind()
        )))
    }
}

/// Conveniences over [`ImageProvider`]'s `*_opts` methods, for every provider.
#[async_trait]
pub trait ImageProviderExt: ImageProvider {
    /// Generates images with default options.
    async fn generate(&self, request: &GenerateRequest) -> Result<GenerateResult, ProviderError> {
        self.generate_opts(request, &CallOptions::default()).await
    }

    /// Generates images, reporting progress (attempts, retries, partial images) to `events`.
    async fn generate_with_events(
        &self,
        request: &GenerateRequest,
        events: &Events,
    ) -> Result<GenerateResult, ProviderError> {
        self.generate_opts(request, &CallOptions::new().with_events(events.clone()))
            .await
    }

    /// Edits images with default options.
    async fn edit(&self, request: &EditRequest) -> Result<GenerateResult, ProviderError> {
        self.edit_opts(request, &CallOptions::default()).await
    }

    /// Edits images, reporting progress to `events`.
    async fn edit_with_events(
        &self,
        request: &EditRequest,
        events: &Events,
    ) -> Result<GenerateResult, ProviderError> {
        self.edit_opts(request, &CallOptions::new().with_events(events.clone()))
            .await
    }

    /// Makes variations of one image with default options.
    async fn variation(&self, request: &VariationRequest) -> Result<GenerateResult, ProviderError> {
        self.variation_opts(request, &CallOptions::default()).await
    }
}

impl<T: ImageProvider + ?Sized> ImageProviderExt for T {}

/// How one call runs: where its progress goes, what cancels it, and when it must be done.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Where progress events go.
    pub events: Events,
    /// Cancelling it ends the call at once with a `cancelled` error: the upstream request in
    /// flight and any wait are dropped.
    pub cancel: CancellationToken,
    /// When the call must be done at the latest; the provider's own `deadline_s` applies too,
    /// whichever comes first.
    pub deadline: Option<tokio::time::Instant>,
}

impl CallOptions {
    /// No events, no cancellation, no deadline but the provider's own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports progress to `events`.
    pub fn with_events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// Ends the call when `cancel` fires.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Ends the call at `deadline` at the latest.
    pub fn with_deadline(mut self, deadline: tokio::time::Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

/// One image model as the provider's own listing describes it (`GET /v1/models`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpstreamModel {
    /// The model id.
    pub id: String,
    /// The shutdown day the provider announces (`YYYY-MM-DD`), if any.
    pub shutdown_date: Option<String>,
}

impl UpstreamModel {
    /// A listed model with its announced shutdown day, if any.
    pub fn new(id: impl Into<String>, shutdown_date: Option<String>) -> Self {
        Self {
            id: id.into(),
            shutdown_date,
        }
    }
}

/// Something a provider reports while a call runs, for progress notifications.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ProviderEvent {
    /// The call waits for a slot under a limit on calls in flight.
    Queued {
        /// Which limit is reached, for people.
        reason: String,
    },
    /// Attempt number `attempt` (1-based) is being sent.
    Requesting {
        /// Which attempt.
        attempt: u32,
        /// The fingerprint of the API key it uses (never the key), for the usage ledger.
        key: Option<String>,
    },
    /// A retryable failure: the next attempt starts after `delay`.
    Retrying {
        /// The attempt that failed.
        attempt: u32,
        /// How long until the next one.
        delay: Duration,
        /// Why, for people.
        reason: String,
    },
    /// The key was rate limited or refused; the call moves to another key of the pool.
    SwitchingKey {
        /// The fingerprint of the key left behind.
        from: String,
        /// Why, for people.
        reason: String,
    },
    /// A key of the pool was taken out of rotation by this call's failure: resting (rate
    /// limited) or disabled (rejected, no quota), for metrics and logs.
    KeyRested {
        /// The fingerprint of the key.
        fingerprint: String,
        /// Disabled until a recheck or a reload, rather than resting for a while.
        disabled: bool,
        /// The failure's kind.
        kind: ErrorKind,
    },
    /// The response has started to arrive.
    Receiving,
    /// A submitted job is not done yet (submit-then-poll APIs).
    Pending {
        /// How many status checks were made so far.
        checks: u32,
        /// The provider's word for where the job is, if it said.
        status: Option<String>,
    },
    /// A partial image from a streaming generation, in arrival order.
    PartialImage {
        /// The provider's partial image index.
        index: u32,
        /// The partial image.
        image: GeneratedImage,
    },
}

/// Where a provider sends [`ProviderEvent`]s; sending never blocks and never fails a call.
#[derive(Debug, Clone, Default)]
pub struct Events(Option<tokio::sync::mpsc::UnboundedSender<ProviderEvent>>);

impl Events {
    /// A sink that drops every event.
    pub fn none() -> Self {
        Self(None)
    }

    /// A sink and the receiver its events arrive on.
    pub fn channel() -> (Self, tokio::sync::mpsc::UnboundedReceiver<ProviderEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self(Some(tx)), rx)
    }

    /// Reports `event` if anyone listens.
    pub fn send(&self, event: ProviderEvent) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(event);
        }
    }
}
