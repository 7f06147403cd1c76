//! The one error type every provider returns.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

/// What went wrong, as a stable snake_case string used in tool results, config knobs and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request itself is wrong (bad size, unknown parameter, prompt too long).
    InvalidRequest,
    /// The provider or model cannot do what was asked.
    Unsupported,
    /// The API key is missing, wrong or revoked.
    Auth,
    /// The key is valid but may not use this resource.
    Permission,
    /// The model or resource does not exist.
    NotFound,
    /// The provider's safety system refused the prompt or image.
    ContentPolicy,
    /// Too many requests for now; a later call may succeed.
    RateLimited,
    /// The account's quota or billing limit is used up.
    QuotaExhausted,
    /// The call took longer than allowed.
    Timeout,
    /// The caller cancelled the call.
    Cancelled,
    /// The provider is down or overloaded (5xx).
    UpstreamUnavailable,
    /// The provider could not be reached.
    Network,
    /// The provider answered with something this server cannot use.
    BadResponse,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 13] = [
        Self::InvalidRequest,
        Self::Unsupported,
        Self::Auth,
        Self::Permission,
        Self::NotFound,
        Self::ContentPolicy,
        Self::RateLimited,
        Self::QuotaExhausted,
        Self::Timeout,
        Self::Cancelled,
        Self::UpstreamUnavailable,
        Self::Network,
        Self::BadResponse,
    ];

    /// The snake_case name of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unsupported => "unsupported",
            Self::Auth => "auth",
            Self::Permission => "permission",
            Self::NotFound => "not_found",
            Self::ContentPolicy => "content_policy",
            Self::RateLimited => "rate_limited",
            Self::QuotaExhausted => "quota_exhausted",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::Network => "network",
            Self::BadResponse => "bad_response",
        }
    }

    /// Whether a later identical call may succeed when nothing else is known.
    pub fn retryable_by_default(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Timeout | Self::UpstreamUnavailable | Self::Network
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown error kind `{s}`; expected one of: {}",
                    names.join(", ")
                )
            })
    }
}

/// Whether a failed call is worth retrying, after what this crate already tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetryStatus {
    /// Retrying the same call cannot help (a bad request, a rejected key, no quota).
    Permanent,
    /// A later identical call may succeed (a rate limit, an outage, a dropped connection).
    Temporary,
    /// Temporary, but the retries this crate was allowed ran out (or would pass the deadline).
    Persistent,
}

impl RetryStatus {
    /// The status of an error that is (or is not) worth retrying.
    pub fn from_retryable(retryable: bool) -> Self {
        match retryable {
            true => Self::Temporary,
            false => Self::Permanent,
        }
    }

    /// Whether a later identical call may succeed: anything but [`RetryStatus::Permanent`].
    pub fn is_retryable(self) -> bool {
        self != Self::Permanent
    }

    /// The snake_case name of this status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Temporary => "temporary",
            Self::Persistent => "persistent",
        }
    }
}

impl fmt::Display for RetryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed provider call: what happened, whether to retry, and what the provider said.
///
/// It never holds a secret: messages are written by this crate or copied from the
/// provider's error body, never from request headers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
#[non_exhaustive]
pub struct ProviderError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// A message a person can act on.
    pub message: String,
    /// Whether a later identical call may succeed: always `retry.is_retryable()` (set both
    /// through [`ProviderError::with_retryable`] or [`ProviderError::with_retry`]).
    pub retryable: bool,
    /// Whether to retry, and whether this crate's own retries already ran out.
    pub retry: RetryStatus,
    /// Whether the request reached the provider, so it may be working on it (and billing it):
    /// set at the HTTP edge. A connect failure was not sent; a read timeout or a reset after
    /// the request went out, and every HTTP answer, was.
    pub request_sent: bool,
    /// How long the provider asked us to wait before trying again.
    pub retry_after: Option<Duration>,
    /// The request parameter at fault, when known.
    pub param: Option<String>,
    /// The provider's own error code (`invalid_size`, `insufficient_quota`, ...).
    pub provider_code: Option<String>,
    /// The provider's own error message, verbatim.
    pub provider_message: Option<String>,
    /// The HTTP status the provider answered with.
    pub status: Option<u16>,
    /// The provider's request id (`x-request-id`), to quote to its support.
    pub request_id: Option<String>,
    /// How many upstream requests the call made (0 when unknown or not applicable).
    pub attempts: u32,
    /// The provider said the requested model does not exist or was retired (a 404
    /// `model_not_found`, or a message saying it is deprecated or shut down).
    pub model_unavailable: bool,
    /// The kind of provider that failed (`openai`, `mock`, ...), when known.
    pub provider: Option<String>,
    /// The model the failed call asked for, when known.
    pub model: Option<String>,
    /// The fingerprint of the API key the last attempt used (`sk-…abcd`), never the key.
    pub key_fingerprint: Option<String>,
}

impl ProviderError {
    /// A new error of `kind`, retryable when the kind usually is.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable: kind.retryable_by_default(),
            retry: RetryStatus::from_retryable(kind.retryable_by_default()),
            request_sent: false,
            retry_after: None,
            param: None,
            provider_code: None,
            provider_message: None,
            status: None,
            request_id: None,
            attempts: 0,
            model_unavailable: false,
            provider: None,
            model: None,
            key_fingerprint: None,
        }
    }

    /// An `invalid_request` error about one parameter.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message).with_param(param)
    }

    /// An `unsupported` error: the provider or model cannot do what was asked.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Names the parameter at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Overrides whether the call may be retried.
    pub fn with_retryable(self, retryable: bool) -> Self {
        self.with_retry(RetryStatus::from_retryable(retryable))
    }

    /// Sets the retry status, and `retryable` with it.
    pub fn with_retry(mut self, retry: RetryStatus) -> Self {
        self.retry = retry;
        self.retryable = retry.is_retryable();
        self
    }

    /// Marks a temporary error as one this crate stopped retrying; permanent ones stay so.
    pub fn persistent(self) -> Self {
        match self.retry {
            RetryStatus::Temporary => self.with_retry(RetryStatus::Persistent),
            _ => self,
        }
    }

    /// Records whether the request reached the provider.
    pub fn with_request_sent(mut self, sent: bool) -> Self {
        self.request_sent = sent;
        self
    }

    /// Records the provider kind and the model asked for, where not known yet.
    pub fn with_context(mut self, provider: &str, model: Option<&str>) -> Self {
        self.provider.get_or_insert_with(|| provider.to_string());
        if let Some(model) = model {
            self.model.get_or_insert_with(|| model.to_string());
        }
        self
    }

    /// Records the fingerprint of the key the failed attempt used.
    pub fn with_key_fingerprint(mut self, fingerprint: Option<String>) -> Self {
        self.key_fingerprint = fingerprint;
        self
    }

    /// Records the provider's requested wait before a retry.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Records the HTTP status; a status means the provider answered, so the request was sent.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self.request_sent = true;
        self
    }

    /// Records the provider's request id.
    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }

    /// Records how many upstream requests the call made.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// Marks the error as the provider saying the model does not exist or was retired.
    pub fn with_model_unavailable(mut self, unavailable: bool) -> Self {
        self.model_unavailable = unavailable;
        self
    }

    /// Records the provider's code and message.
    pub fn with_provider_detail(mut self, code: Option<String>, message: Option<String>) -> Self {
        self.provider_code = code;
        self.provider_message = message;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names_and_serde() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind.as_str().parse::<ErrorKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        let err = "rate-limited".parse::<ErrorKind>().unwrap_err();
        assert!(err.contains("rate_limited"), "{err}");
    }

    #[test]
    fn retryability_follows_the_kind_unless_overridden() {
        assert!(ProviderError::new(ErrorKind::RateLimited, "x").retryable);
        assert!(!ProviderError::new(ErrorKind::QuotaExhausted, "x").retryable);
        assert!(
            !ProviderError::new(ErrorKind::RateLimited, "x")
                .with_retryable(false)
                .retryable
        );
    }

    #[test]
    fn retry_status_and_retryable_agree_and_serialize_in_snake_case() {
        let temporary = ProviderError::new(ErrorKind::RateLimited, "x");
        assert_eq!(temporary.retry, RetryStatus::Temporary);
        let persistent = temporary.clone().persistent();
        assert_eq!(
            (persistent.retry, persistent.retryable),
            (RetryStatus::Persistent, true)
        );
        let permanent = temporary.with_retryable(false);
        assert_eq!(
            (permanent.retry, permanent.retryable),
            (RetryStatus::Permanent, false)
        );
        assert_eq!(permanent.persistent().retry, RetryStatus::Permanent);
        assert_eq!(
            serde_json::to_string(&RetryStatus::Persistent).unwrap(),
            "\"persistent\""
        );
    }

    #[test]
    fn an_http_status_means_the_request_was_sent() {
        let err = ProviderError::new(ErrorKind::Network, "x");
        assert!(!err.request_sent);
        assert!(err.with_status(502).request_sent);
    }
}
