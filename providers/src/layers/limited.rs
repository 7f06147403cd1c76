//! Bounds on calls in flight, around any provider.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    CallOptions, EditRequest, GenerateRequest, GenerateResult, ImageProvider, ModelCapabilities,
    ModerationInput, ModerationVerdict, ProviderError, ProviderEvent, UpstreamModel,
    VariationRequest,
};

/// A bound on calls in flight: a semaphore, the limit it was made with, and whose it is.
///
/// Clones share the bound: one [`Limit`] given to every provider's [`Limited`] bounds them
/// together (the server's `[limits] max_in_flight`).
#[derive(Debug, Clone)]
pub struct Limit {
    semaphore: Arc<Semaphore>,
    limit: usize,
    whose: &'static str,
}

impl Limit {
    /// A bound of `limit` calls, described as `whose` ("the provider's") while calls wait on it.
    pub fn new(limit: usize, whose: &'static str) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit,
            whose,
        }
    }

    /// `previous` when it has the same limit, else a fresh bound: a reload keeps the
    /// semaphore, so calls started before it still count against the limit after it.
    pub fn keep_or_new(previous: Option<&Limit>, limit: usize, whose: &'static str) -> Self {
        match previous {
            Some(p) if p.limit == limit => p.clone(),
            _ => Self::new(limit, whose),
        }
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.limit
            .saturating_sub(self.semaphore.available_permits())
    }

    /// The most calls that may hold a slot at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot, waiting for one (and saying so through `options`' events) when all are taken.
    async fn acquire(&self, options: &CallOptions) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return Some(permit);
        }
        options.events.send(ProviderEvent::Queued {
            reason: format!(
                "{} limit of {} calls in flight is reached",
                self.whose, self.limit
            ),
        });
        // The semaphores here are never closed.
        self.semaphore.clone().acquire_owned().await.ok()
    }
}

/// Holds a slot of every [`Limit`] it has, in order, for the length of each call.
///
/// Put the narrowest bound first (the provider's own before the server's): a call queued for
/// a busy provider then holds no server slot that a call to an idle provider could use.
#[derive(Debug, Clone)]
pub struct Limited {
    inner: Arc<dyn ImageProvider>,
    limits: Vec<Limit>,
}

impl Limited {
    /// Wraps `inner` in `limits`, taken in the order given.
    pub fn new(inner: Arc<dyn ImageProvider>, limits: Vec<Limit>) -> Self {
        Self { inner, limits }
    }

    async fn slots(&self, options: &CallOptions) -> Vec<OwnedSemaphorePermit> {
        let mut permits = Vec::with_capacity(self.limits.len());
        for limit in &self.limits {
            permits.extend(limit.acquire(options).await);
        }
        permits
    }
}

#[async_trait]
impl ImageProvider for Limited {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn default_model(&self) -> &str {
        self.inner.default_model()
    }

    fn models(&self) -> Vec<String> {
        self.inner.models()
    }

    fn capabilities(&self, model: &str) -> ModelCapabilities {
        self.inner.capabilities(model)
    }

    fn lifecycle_is_authoritative(&self) -> bool {
        self.inner.lifecycle_is_authoritative()
    }

    fn aliases(&self) -> Vec<(String, String)> {
        self.inner.aliases()
    }

    fn stand_in_notice(&self) -> Option<String> {
        self.inner.stand_in_notice()
    }

    async fn list_models(&self) -> Result<Vec<UpstreamModel>, ProviderError> {
        self.inner.list_models().await
    }

    fn moderates(&self) -> bool {
        self.inner.moderates()
    }

    async fn moderate(
        &self,
        input: &ModerationInput,
        options: &CallOptions,
    ) -> Result<ModerationVerdict, ProviderError> {
        // No slot: the limits bound image calls, and a free check that waited behind them
        // would only delay the call it guards, which takes its slots itself.
        self.inner.moderate(input, options).await
    }

    async fn generate_opts(
        &self,
        request: &GenerateRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let _slots = self.slots(options).await;
        self.inner.generate_opts(request, options).await
    }

    async fn edit_opts(
        &self,
        request: &EditRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let _slots = self.slots(options).await;
        self.inner.edit_opts(request, options).await
    }

    async fn variation_opts(
        &self,
        request: &VariationRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let _slots = self.slots(options).await;
        self.inner.variation_opts(request, options).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        mock::{MockProvider, MockSettings, MOCK_MODEL},
        Events,
    };

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_a_limit_wait_and_say_why_and_a_shared_limit_spans_providers() {
        let slow = || -> Arc<dyn ImageProvider> {
            Arc::new(MockProvider::new(MockSettings {
                latency: Duration::from_secs(10),
                ..MockSettings::default()
            }))
        };
        let server = Limit::new(2, "the server's");
        let a = Limited::new(
            slow(),
            vec![Limit::new(1, "the provider's"), server.clone()],
        );
        let b = Limited::new(slow(), vec![server.clone()]);
        let request = GenerateRequest::new("x", MOCK_MODEL);
        let (events, mut seen) = Events::channel();
        let options = CallOptions {
            events,
            ..CallOptions::default()
        };
        let quiet = CallOptions::default();
        let started = tokio::time::Instant::now();
        let (first, second, third) = tokio::join!(
            a.generate_opts(&request, &quiet),
            a.generate_opts(&request, &options),
            b.generate_opts(&request, &quiet),
        );
        assert!(first.is_ok() && second.is_ok() && third.is_ok());
        // `a`'s second call waited for its first; `b`'s ran beside them under the server's 2.
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        let reason = match seen.try_recv() {
            Ok(ProviderEvent::Queued { reason }) => reason,
            other => panic!("expected a queued event, got {other:?}"),
        };
        assert_eq!(
            reason,
            "the provider's limit of 1 calls in flight is reached"
        );
        assert_eq!(server.in_flight(), 0);

        let kept = Limit::keep_or_new(Some(&server), 2, "the server's");
        assert!(Arc::ptr_eq(&kept.semaphore, &server.semaphore));
        let fresh = Limit::keep_or_new(Some(&server), 3, "the server's");
        assert_eq!((fresh.limit(), fresh.in_flight()), (3, 0));
    }
}
