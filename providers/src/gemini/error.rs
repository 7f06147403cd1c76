//! Google's error answers, `{"error": {"code", "message", "status", "details": [...]}}`: the
//! one status table (`parse_error`), with what the `details` say (rate against quota, the
//! wait `RetryInfo` asks for, a rejected key answered as HTTP 400).

use std::time::{Duration, SystemTime};

use reqwest::{header::HeaderMap, StatusCode};
use serde_json::Value;

use crate::{
    http::{describe_wait, error::text_body_message, retry},
    keys::PoolKey,
    secret::Scrubber,
    ErrorKind, ProviderError,
};

/// What an error body says; every field is optional because proxies and outages send other shapes.
#[derive(Debug, Default)]
pub(super) struct GoogleError {
    /// `error.message`, scrubbed.
    pub(super) message: Option<String>,
    /// `error.status` (`RESOURCE_EXHAUSTED`, ...), when it is a plain token.
    pub(super) status: Option<String>,
    /// `google.rpc.RetryInfo.retryDelay`.
    pub(super) retry_delay: Option<Duration>,
    /// `google.rpc.ErrorInfo.reason`s (`API_KEY_INVALID`, `RATE_LIMIT_EXCEEDED`, ...).
    pub(super) reasons: Vec<String>,
    /// `google.rpc.QuotaFailure` violations' `quotaId` / `quotaMetric`.
    pub(super) quotas: Vec<String>,
}

/// Reads a `google.protobuf.Duration` as JSON writes it: `"7s"`, `"0.5s"`, `"1.250s"`.
pub(super) fn proto_duration(text: &str) -> Option<Duration> {
    retry::seconds(text.trim().strip_suffix('s')?, 1.0)
}

impl GoogleError {
    /// Reads Google's error JSON (also wrapped in a one-element list, as some endpoints send
    /// it), or else the body as text (HTML pages are named, not quoted).
    pub(super) fn parse(status: StatusCode, body: &[u8], scrubber: &Scrubber) -> Self {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            let message = text_body_message(status, body, scrubber);
            return Self {
                message,
                ..Self::default()
            };
        };
        let error = json
            .get("error")
            .or_else(|| json.get(0).and_then(|first| first.get("error")));
        let Some(error) = error else {
            return Self::default();
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let mut out = Self {
            message: text(error.get("message"))
                .or_else(|| error.as_str().map(str::to_string))
                .map(|m| scrubber.excerpt(&m, 500)),
            status: text(error.get("status")).and_then(|s| scrubber.token(&s)),
            ..Self::default()
        };
        for detail in error
            .get("details")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .take(32)
        {
            let kind = detail.get("@type").and_then(Value::as_str).unwrap_or("");
            if kind.ends_with("google.rpc.RetryInfo") {
                out.retry_delay = detail
                    .get("retryDelay")
                    .and_then(Value::as_str)
                    .and_then(proto_duration);
            } else if kind.ends_with("google.rpc.ErrorInfo") {
                out.reasons.extend(text(detail.get("reason")));
            } else if kind.ends_with("google.rpc.QuotaFailure") {
                for v in detail
                    .get("violations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .take(32)
                {
                    out.quotas.extend(text(v.get("quotaId")));
                    out.quotas.extend(text(v.get("quotaMetric")));
                }
            }
        }
        out
    }

    fn has_reason(&self, reasons: &[&str]) -> bool {
        self.reasons.iter().any(|r| reasons.contains(&r.as_str()))
    }

    /// Whether a quota violation is a daily (or longer) one: waiting minutes will not help.
    fn quota_is_used_up(&self) -> bool {
        self.quotas.iter().any(|q| {
            let q = q.to_ascii_lowercase();
            q.contains("perday") || q.contains("per_day") || q.contains("permonth")
        })
    }

    /// Whether a 400 is Google's safety system refusing the input (Vertex answers some of
    /// these as errors rather than as a blocked 200).
    fn is_refusal(&self) -> bool {
        let message = self.message.as_deref().unwrap_or("").to_ascii_lowercase();
        self.has_reason(&["SAFETY", "PROHIBITED_CONTENT", "IMAGE_SAFETY", "BLOCKLIST"])
            || message.contains("responsible ai")
            || message.contains("safety filter")
            || message.contains("prohibited content")
    }
}

/// Turns an error answer into a [`ProviderError`]: the one place statuses are classified.
/// `bearer` says whether the request carried an access token rather than an API key.
pub(super) fn parse_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: Option<&PoolKey>,
    bearer: bool,
    model: &str,
    scrubber: &Scrubber,
) -> ProviderError {
    let e = GoogleError::parse(status, body, scrubber);
    let said = e
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let s = status.as_u16();
    let credential = match (bearer, key) {
        (true, _) => "the access token".to_string(),
        (false, Some(key)) => format!("the API key {}", key.fingerprint()),
        (false, None) => "the request (no API key is set)".to_string(),
    };
    let retry_after = e
        .retry_delay
        .or_else(|| retry::retry_after(headers, SystemTime::now()));
    let is_status = |name: &str| e.status.as_deref() == Some(name);
    let (kind, message, retryable) = match s {
        400 if e.has_reason(&["API_KEY_INVALID"]) => (
            ErrorKind::Auth,
            format!("{credential} was rejected (HTTP 400){said}; check that it is a current Gemini API key"),
            false,
        ),
        400 if e.is_refusal() => (
            ErrorKind::ContentPolicy,
            format!("the request was refused by Google's safety system (HTTP 400){said}; rephrase it"),
            false,
        ),
        400 if is_status("FAILED_PRECONDITION") => (
            ErrorKind::Permission,
            format!("the account may not use the API as it is set up (HTTP 400 FAILED_PRECONDITION){said}; check billing and the region"),
            false,
        ),
        400 | 422 => (
            ErrorKind::InvalidRequest,
            format!("Google rejected the request (HTTP {s}){said}"),
            false,
        ),
        401 => (
            ErrorKind::Auth,
            format!("{credential} was rejected (HTTP 401){said}; check that it is current"),
            false,
        ),
        403 => (
            ErrorKind::Permission,
            format!("{credential} may not use this model or project (HTTP 403){said}; check that the API is enabled and the model is allowed"),
            false,
        ),
        404 => (
            ErrorKind::NotFound,
            format!("not found (HTTP 404){said}; check the model name{}", if bearer { ", the project and the location" } else { "" }),
            false,
        ),
        429 if e.quota_is_used_up() => (
            ErrorKind::QuotaExhausted,
            format!("{credential} has used up its daily quota (HTTP 429){said}; retrying today will not help, check the plan and billing"),
            false,
        ),
        429 => (
            ErrorKind::RateLimited,
            match retry_after {
                Some(wait) => format!("rate limited by Google (HTTP 429){said}; it asked to wait {}", describe_wait(wait)),
                None => format!("rate limited by Google (HTTP 429){said}"),
            },
            true,
        ),
        408 | 504 => (
            ErrorKind::UpstreamUnavailable,
            format!("Google did not finish in time (HTTP {s}){said}"),
            true,
        ),
        409 | 500..=599 => (
            ErrorKind::UpstreamUnavailable,
            format!("Google is unavailable (HTTP {s}){said}"),
            true,
        ),
        _ => (
            ErrorKind::BadResponse,
            format!("unexpected HTTP {s} from Google{said}"),
            false,
        ),
    };
    // A 404 from generateContent is about the model unless it says otherwise (Vertex names a
    // missing project or location in the message).
    let message_lower = e.message.as_deref().unwrap_or("").to_ascii_lowercase();
    let unavailable = s == 404
        && (message_lower.contains("model")
            || message_lower.contains(&model.to_ascii_lowercase())
            || e.message.is_none());
    ProviderError::new(kind, message)
        .with_status(s)
        .with_retryable(retryable)
        .with_retry_after(retry_after)
        .with_model_unavailable(unavailable)
        .with_provider_detail(e.status.clone(), e.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn classify(status: u16, body: Value) -> ProviderError {
        parse_error(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.to_string().as_bytes(),
            None,
            false,
            "gemini-3-pro-image",
            &Scrubber::default(),
        )
    }

    #[test]
    fn resource_exhausted_is_a_rate_limit_or_a_used_up_quota_as_the_details_say() {
        let rate = classify(
            429,
            json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
            "message": "You exceeded your current quota",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                    {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                     "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7.5s"}]}}),
        );
        assert_eq!(rate.kind, ErrorKind::RateLimited);
        assert!(rate.retryable);
        assert_eq!(rate.retry_after, Some(Duration::from_millis(7500)));
        assert_eq!(rate.provider_code.as_deref(), Some("RESOURCE_EXHAUSTED"));
        let daily = classify(
            429,
            json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
            "message": "quota", "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                    {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}),
        );
        assert_eq!(daily.kind, ErrorKind::QuotaExhausted);
        assert!(!daily.retryable);
    }

    #[test]
    fn google_statuses_map_to_kinds() {
        let bad_key = classify(
            400,
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "API key not valid. Please pass a valid API key.",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                         "domain": "googleapis.com"}]}}),
        );
        assert_eq!(bad_key.kind, ErrorKind::Auth);
        let invalid = classify(
            400,
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad aspectRatio"}}),
        );
        assert_eq!(invalid.kind, ErrorKind::InvalidRequest);
        let denied = classify(
            403,
            json!({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "no"}}),
        );
        assert_eq!(denied.kind, ErrorKind::Permission);
        let gone = classify(
            404,
            json!({"error": {"code": 404, "status": "NOT_FOUND",
            "message": "models/imagen-4.0-generate-001 is not found for API version v1beta"}}),
        );
        assert_eq!(gone.kind, ErrorKind::NotFound);
        assert!(gone.model_unavailable);
        let down = classify(
            503,
            json!({"error": {"code": 503, "status": "UNAVAILABLE", "message": "overloaded"}}),
        );
        assert!(down.retryable && down.kind == ErrorKind::UpstreamUnavailable);
        let list = classify(
            401,
            json!([{"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "expired"}}]),
        );
        assert_eq!(
            (list.kind, list.provider_code.as_deref()),
            (ErrorKind::Auth, Some("UNAUTHENTICATED"))
        );
        assert_eq!(proto_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(proto_duration("soon"), None);
    }
}
