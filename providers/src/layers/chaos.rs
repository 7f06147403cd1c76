//! Injected latency and faults around any provider.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;

use crate::{
    CallOptions, EditRequest, ErrorKind, GenerateRequest, GenerateResult, ImageProvider,
    ModelCapabilities, ProviderError, ProviderEvent, UpstreamModel, VariationRequest,
};

/// Which calls fail, how, and how slowly.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChaosSettings {
    /// How the first calls end, in order: `Some(kind)` fails the call with that kind, `None`
    /// passes it on; calls after the sequence follow `fail_rate`.
    pub fail_sequence: Vec<Option<ErrorKind>>,
    /// Fraction of calls (0.0..=1.0) after the sequence that fail with `fail_with`.
    pub fail_rate: f64,
    /// The error kind `fail_rate` failures have.
    pub fail_with: ErrorKind,
    /// How long an injected failure takes to arrive.
    pub latency: Duration,
    /// A delay added before every call that is passed on.
    pub delay: Duration,
}

impl Default for ChaosSettings {
    fn default() -> Self {
        Self {
            fail_sequence: Vec::new(),
            fail_rate: 0.0,
            fail_with: ErrorKind::UpstreamUnavailable,
            latency: Duration::ZERO,
            delay: Duration::ZERO,
        }
    }
}

impl ChaosSettings {
    /// Parses a configured sequence such as `["rate_limited", "ok"]` for
    /// [`ChaosSettings::fail_sequence`].
    pub fn parse_fail_sequence<S: AsRef<str>>(
        items: &[S],
    ) -> Result<Vec<Option<ErrorKind>>, String> {
        items
            .iter()
            .map(|item| match item.as_ref() {
                "ok" => Ok(None),
                kind => kind.parse().map(Some).map_err(|e| format!("{e}, or `ok`")),
            })
            .collect()
    }

    /// Whether these settings inject anything at all.
    pub fn is_quiet(&self) -> bool {
        self.fail_sequence.iter().all(Option::is_none)
            && self.fail_rate <= 0.0
            && self.delay.is_zero()
    }
}

/// Fails calls as [`ChaosSettings`] script, shaped like the HTTP errors a real provider gives,
/// and passes the others on to the inner provider. Generations, edits and variations share one
/// call count.
#[derive(Debug)]
pub struct Chaos {
    inner: Arc<dyn ImageProvider>,
    settings: ChaosSettings,
    /// Calls started so far, to follow `fail_sequence`.
    calls: AtomicUsize,
}

impl Chaos {
    /// Wraps `inner` with `settings`.
    pub fn new(inner: Arc<dyn ImageProvider>, settings: ChaosSettings) -> Self {
        Self {
            inner,
            settings,
            calls: AtomicUsize::new(0),
        }
    }

    /// The provider calls pass on to.
    pub fn inner(&self) -> &Arc<dyn ImageProvider> {
        &self.inner
    }

    /// Counts the call, then fails it if that is due, or waits the configured delay.
    async fn before(&self, options: &CallOptions) -> Result<(), ProviderError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let s = &self.settings;
        let (failure, wait) = match self.injected_failure(call) {
            Some(err) => {
                // The event a real attempt reports before its answer arrives.
                options.events.send(ProviderEvent::Requesting {
                    attempt: 1,
                    key: None,
                });
                (Some(err), s.latency)
            }
            None => (None, s.delay),
        };
        if !wait.is_zero() {
            tokio::select! {
                biased;
                _ = options.cancel.cancelled() => {
                    return Err(ProviderError::new(ErrorKind::Cancelled, "the call was cancelled"));
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// The failure call number `call` (0-based) is scripted or drawn to have, if any.
    fn injected_failure(&self, call: usize) -> Option<ProviderError> {
        let s = &self.settings;
        let kind = self.inner.kind();
        match s.fail_sequence.get(call) {
            Some(scripted) => scripted
                .map(|fail| failure(kind, fail, format!("call {} of fail_sequence", call + 1))),
            None if s.fail_rate > 0.0 && fastrand::f64() < s.fail_rate => Some(failure(
                kind,
                s.fail_with,
                format!("fail_rate = {}", s.fail_rate),
            )),
            None => None,
        }
    }
}

/// An injected failure of `kind` from a provider of kind `provider`, shaped like the HTTP
/// error a real provider would give.
fn failure(provider: &str, kind: ErrorKind, why: String) -> ProviderError {
    let err = ProviderError::new(
        kind,
        format!("{provider} provider: injected `{kind}` failure ({why})"),
    )
    .with_request_id(Some(format!("{provider}-{:016x}", fastrand::u64(..))))
    .with_attempts(1);
    match kind {
        ErrorKind::RateLimited => err
            .with_status(429)
            .with_retry_after(Some(Duration::from_secs(1))),
        ErrorKind::UpstreamUnavailable => err.with_status(503),
        ErrorKind::Auth => err.with_status(401),
        ErrorKind::Permission => err.with_status(403),
        ErrorKind::QuotaExhausted => err.with_status(429),
        ErrorKind::InvalidRequest | ErrorKind::ContentPolicy => err.with_status(400),
        _ => err,
    }
}

#[async_trait]
impl ImageProvider for Chaos {
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

    async fn generate_opts(
        &self,
        request: &GenerateRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        self.before(options).await?;
        self.inner.generate_opts(request, options).await
    }

    async fn edit_opts(
        &self,
        request: &EditRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        self.before(options).await?;
        self.inner.edit_opts(request, options).await
    }

    async fn variation_opts(
        &self,
        request: &VariationRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        self.before(options).await?;
        self.inner.variation_opts(request, options).await
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use serde_json::json;
    use wiremock::{matchers::method, Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::{
        mock::{MockProvider, MockSettings, MOCK_MODEL},
        openai::{OpenAiProvider, OpenAiSettings},
        Events, ImageProviderExt as _,
    };

    #[tokio::test]
    async fn scripted_faults_come_first_then_calls_reach_the_real_provider() {
        let server = MockServer::start().await;
        // A real PNG for the stub to answer with.
        let mut r = GenerateRequest::new("x", MOCK_MODEL);
        r.options.size = Some("16x16".into());
        let png = MockProvider::new(MockSettings::default())
            .generate(&r)
            .await
            .unwrap()
            .images[0]
            .bytes
            .clone();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"data": [{"b64_json": b64}]})),
            )
            .mount(&server)
            .await;
        let base = format!("{}/v1", server.uri()).parse().unwrap();
        let openai = OpenAiProvider::new(OpenAiSettings::new(base, None), reqwest::Client::new());
        let settings = ChaosSettings {
            fail_sequence: vec![Some(ErrorKind::RateLimited), None],
            ..ChaosSettings::default()
        };
        let chaos = Chaos::new(Arc::new(openai), settings);
        assert_eq!(chaos.kind(), "openai");

        let request = GenerateRequest::new("a lighthouse", "gpt-image-2");
        let (events, mut rx) = Events::channel();
        let err = chaos
            .generate_with_events(&request, &events)
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind, err.status, err.retry_after),
            (
                ErrorKind::RateLimited,
                Some(429),
                Some(Duration::from_secs(1))
            )
        );
        assert!(err.message.contains("openai provider: injected"), "{err}");
        assert!(matches!(
            rx.try_recv(),
            Ok(ProviderEvent::Requesting {
                attempt: 1,
                key: None,
            })
        ));
        assert!(server.received_requests().await.unwrap().is_empty());

        let result = chaos.generate(&request).await.unwrap();
        assert_eq!(result.images[0].bytes, png);
        assert_eq!(server.received_requests().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn fail_rate_one_always_fails_with_the_configured_kind() {
        let settings = ChaosSettings {
            fail_rate: 1.0,
            fail_with: ErrorKind::Auth,
            ..ChaosSettings::default()
        };
        let chaos = Chaos::new(
            Arc::new(MockProvider::new(MockSettings::default())),
            settings,
        );
        for _ in 0..3 {
            let err = chaos
                .generate(&GenerateRequest::new("x", MOCK_MODEL))
                .await
                .unwrap_err();
            assert_eq!((err.kind, err.status), (ErrorKind::Auth, Some(401)));
            assert!(!err.retryable);
        }
    }

    #[test]
    fn quiet_settings_inject_nothing() {
        assert!(ChaosSettings::default().is_quiet());
        let only_ok = ChaosSettings {
            fail_sequence: vec![None, None],
            ..ChaosSettings::default()
        };
        assert!(only_ok.is_quiet());
        let slow = ChaosSettings {
            delay: Duration::from_millis(1),
            ..ChaosSettings::default()
        };
        assert!(!slow.is_quiet());
    }
}
