//! The moderation pre-check (`[moderation_check]`): once per call, before it is routed and
//! before the cache is asked, the prompt (and an edit's input images) goes to a provider's
//! moderation endpoint. A flagged prompt is refused as `content_policy`, naming the flagged
//! categories, and nothing is generated; the refusal is not a provider failure, so it rests
//! no key, marks no provider unhealthy and moves the call to no fallback. A check that fails
//! refuses the call or lets it through with a note, as `on_error` says.

use std::{collections::BTreeMap, sync::Arc};

use imagegen_providers::{
    CallOptions, ErrorKind, ImageProvider, InputImage, ModerationInput, ModerationVerdict,
    ProviderError,
};

use crate::{
    config::{ModerationCheckConfig, OnModerationError},
    engine::{CallContext, Generation, ProviderEntry},
    error::ToolError,
};

/// The check as configured, on the provider chosen for it.
#[derive(Debug, Clone)]
pub struct ModerationCheck {
    /// The configured name of the provider whose endpoint is asked.
    provider_name: String,
    /// That provider (its key pool and base URL).
    provider: Arc<dyn ImageProvider>,
    /// The moderation model.
    model: String,
    /// What a failed check does to the call.
    on_error: OnModerationError,
    /// Whether an edit's input images are checked too.
    images: bool,
}

/// How a call may go on after the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleared {
    /// The prompt was checked and not flagged.
    Clean,
    /// The check failed and `on_error = "allow"` let the call go on: the note says so.
    Unchecked(String),
}

impl Cleared {
    /// `generation` with the note this outcome calls for, if any.
    pub fn noted(self, mut generation: Generation) -> Generation {
        if let Self::Unchecked(note) = self {
            generation.notes.push(note);
        }
        generation
    }
}

impl ModerationCheck {
    /// The check `config` asks for over the built `providers`, or `None` when it is off.
    ///
    /// The provider is the one `config.provider` names, else `default` when it moderates,
    /// else the first provider (by name) that does; none that moderates is an error.
    pub fn from_config(
        config: &ModerationCheckConfig,
        providers: &BTreeMap<String, ProviderEntry>,
        default: &str,
    ) -> anyhow::Result<Option<Self>> {
        if !config.enabled {
            return Ok(None);
        }
        let moderating = |name: &str| {
            providers
                .get(name)
                .filter(|e| e.provider.moderates())
                .map(|e| (name.to_string(), e.provider.clone()))
        };
        let chosen = match &config.provider {
            Some(name) => {
                let found = moderating(name);
                if found.is_none() {
                    anyhow::bail!(
                        "moderation_check.provider: provider `{name}` has no moderation endpoint; {}",
                        can_moderate(providers)
                    );
                }
                found
            }
            None => moderating(default).or_else(|| {
                providers
                    .iter()
                    .find(|(_, e)| e.provider.moderates())
                    .map(|(name, e)| (name.clone(), e.provider.clone()))
            }),
        };
        let Some((provider_name, provider)) = chosen else {
            anyhow::bail!(
                "moderation_check.enabled: no configured provider has a moderation endpoint; \
                 configure an `openai` provider (its key and base URL are used) or set \
                 [moderation_check] enabled = false"
            );
        };
        Ok(Some(Self {
            provider_name,
            provider,
            model: config.model.clone(),
            on_error: config.on_error,
            images: config.images,
        }))
    }

    /// The configured name of the provider the check asks.
    pub fn provider_name(&self) -> &str {
        &self.provider_name
    }

    /// Checks `prompt` and, when configured, an edit's `images`: `Ok` when the call may go
    /// on (with a note when the check failed and was let through), the refusal otherwise.
    pub async fn check(
        &self,
        prompt: &str,
        images: &[InputImage],
        call: &CallContext,
    ) -> Result<Cleared, ToolError> {
        // A blank prompt is refused by the request checks, with a clearer message.
        if prompt.trim().is_empty() {
            return Ok(Cleared::Clean);
        }
        call.progress.phase("moderation pre-check");
        let mut input = ModerationInput::text(prompt).with_model(self.model.clone());
        if self.images {
            input = input.with_images(images.to_vec());
        }
        let options = CallOptions::new().with_cancel(call.cancel.child_token());
        let outcome = tokio::select! {
            outcome = self.provider.moderate(&input, &options) => outcome,
            () = call.cancel.cancelled() => Err(ProviderError::new(
                ErrorKind::Cancelled,
                "the call was cancelled by the client during the moderation pre-check; nothing was generated",
            )),
        };
        let label = match &outcome {
            Ok(v) if v.flagged => "flagged",
            Ok(_) => "clean",
            Err(e) if e.kind == ErrorKind::Cancelled => "cancelled",
            Err(_) => "error",
        };
        if label != "cancelled" {
            metrics::counter!(crate::telemetry::MODERATION_CHECKS, "outcome" => label).increment(1);
        }
        match outcome {
            Ok(verdict) if verdict.flagged => Err(self.flagged(verdict)),
            Ok(verdict) => {
                tracing::debug!(provider = ?self.provider_name, model = ?verdict.model, "moderation pre-check: clean");
                Ok(Cleared::Clean)
            }
            Err(e) if e.kind == ErrorKind::Cancelled => {
                Err(ToolError::from_provider(e, Some(&self.provider_name), None))
            }
            Err(e) => self.failed(e),
        }
    }

    /// The refusal of a flagged prompt: `content_policy`, never retryable, naming the
    /// categories in the message and as a list.
    fn flagged(&self, verdict: ModerationVerdict) -> ToolError {
        let named = match verdict.categories.is_empty() {
            true => "no category named".to_string(),
            false => verdict.categories.join(", "),
        };
        tracing::info!(provider = ?self.provider_name, categories = %named, request_id = verdict.request_id.as_deref(), "moderation pre-check flagged the prompt; nothing generated");
        let err = ProviderError::new(
            ErrorKind::ContentPolicy,
            format!("the moderation pre-check flagged the prompt: {named}; nothing was generated"),
        )
        .with_retryable(false)
        .with_request_id(verdict.request_id);
        let mut error = ToolError::from_provider(err, Some(&self.provider_name), None);
        error.categories = Some(verdict.categories);
        error
    }

    /// A failed check: the call's error (`refuse`), or a note for its result (`allow`).
    fn failed(&self, err: ProviderError) -> Result<Cleared, ToolError> {
        let error = ToolError::from_provider(err, Some(&self.provider_name), None);
        tracing::warn!(provider = ?self.provider_name, kind = %error.kind, message = ?error.message, on_error = ?self.on_error, "moderation pre-check failed");
        match self.on_error {
            OnModerationError::Refuse => {
                let mut error = error;
                error.message = format!(
                    "the moderation pre-check failed: {} ({}); nothing was generated \
                     ([moderation_check] on_error = \"refuse\")",
                    error.message, error.kind
                );
                Err(error)
            }
            OnModerationError::Allow => Ok(Cleared::Unchecked(format!(
                "moderation pre-check failed ({}: {}); generated without it",
                error.kind, error.message
            ))),
        }
    }
}

/// Which providers could serve the check, for an error message.
fn can_moderate(providers: &BTreeMap<String, ProviderEntry>) -> String {
    let names: Vec<&str> = providers
        .iter()
        .filter(|(_, e)| e.provider.moderates())
        .map(|(n, _)| n.as_str())
        .collect();
    match names.is_empty() {
        true => "no configured provider has one (an `openai` provider does)".into(),
        false => format!("providers that have one: {}", names.join(", ")),
    }
}
