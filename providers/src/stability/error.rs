//! Stability's error answers, `{"id", "name", "errors": [...]}`: the one status table.

use std::time::SystemTime;

use reqwest::{header::HeaderMap, StatusCode};
use serde_json::Value;

use crate::{
    http::{describe_wait, error::text_body_message, retry},
    keys::PoolKey,
    secret::Scrubber,
    ErrorKind, ProviderError,
};

/// What an error body says.
#[derive(Debug, Default)]
struct StabilityError {
    /// `name` (`bad_request`, `content_moderation`, ...), when it is a plain token.
    name: Option<String>,
    /// `errors`, joined and scrubbed (or `message`, or the body as text).
    message: Option<String>,
}

impl StabilityError {
    fn parse(status: StatusCode, body: &[u8], scrubber: &Scrubber) -> Self {
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            let message = text_body_message(status, body, scrubber);
            return Self {
                name: None,
                message,
            };
        };
        let errors: Vec<&str> = json
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .take(8)
            .collect();
        let message = if errors.is_empty() {
            json.get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
        } else {
            Some(errors.join("; "))
        };
        Self {
            name: json
                .get("name")
                .and_then(Value::as_str)
                .and_then(|n| scrubber.token(n)),
            message: message.map(|m| scrubber.excerpt(&m, 500)),
        }
    }
}

/// Turns an error answer into a [`ProviderError`]: the one place statuses are classified.
pub(super) fn parse_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: Option<&PoolKey>,
    scrubber: &Scrubber,
) -> ProviderError {
    let e = StabilityError::parse(status, body, scrubber);
    let said = e
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let s = status.as_u16();
    let whose = key
        .map(|k| format!("the API key {}", k.fingerprint()))
        .unwrap_or_else(|| "the request (no API key is set)".into());
    let retry_after = retry::retry_after(headers, SystemTime::now());
    let moderated = e.name.as_deref() == Some("content_moderation");
    let (kind, message, retryable) = match s {
        400..=499 if moderated => (
            ErrorKind::ContentPolicy,
            format!("Stability's moderation refused the request (HTTP {s}){said}; rephrase it"),
            false,
        ),
        401 => (
            ErrorKind::Auth,
            format!("{whose} was rejected (HTTP 401){said}; check that it is current"),
            false,
        ),
        // Payment Required: the account's credits are spent.
        402 => (
            ErrorKind::QuotaExhausted,
            format!(
                "{whose} has no credits left (HTTP 402){said}; add credits, retrying will not help"
            ),
            false,
        ),
        403 => (
            ErrorKind::Permission,
            format!("{whose} may not do this (HTTP 403){said}"),
            false,
        ),
        404 => (
            ErrorKind::NotFound,
            format!("not found (HTTP 404){said}; check the model name and the base URL"),
            false,
        ),
        413 => (
            ErrorKind::InvalidRequest,
            format!("the request is too large for Stability (HTTP 413){said}; send smaller images"),
            false,
        ),
        400 | 422 => (
            ErrorKind::InvalidRequest,
            format!("Stability rejected the request (HTTP {s}){said}"),
            false,
        ),
        429 => (
            ErrorKind::RateLimited,
            match retry_after {
                Some(wait) => format!(
                    "rate limited by Stability (HTTP 429){said}; it asked to wait {}",
                    describe_wait(wait)
                ),
                None => format!("rate limited by Stability (HTTP 429){said}"),
            },
            true,
        ),
        500..=599 => (
            ErrorKind::UpstreamUnavailable,
            format!("Stability is unavailable (HTTP {s}){said}"),
            true,
        ),
        _ => (
            ErrorKind::BadResponse,
            format!("unexpected HTTP {s} from Stability{said}"),
            false,
        ),
    };
    ProviderError::new(kind, message)
        .with_status(s)
        .with_retryable(retryable)
        .with_retry_after(retry_after)
        .with_model_unavailable(s == 404)
        .with_provider_detail(e.name, e.message)
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
            &Scrubber::default(),
        )
    }

    #[test]
    fn stability_statuses_map_to_kinds() {
        let moderated = classify(
            403,
            json!({"id": "a1", "name": "content_moderation",
            "errors": ["Your request was flagged by our content moderation system"]}),
        );
        assert_eq!(moderated.kind, ErrorKind::ContentPolicy);
        assert!(moderated.message.contains("flagged"), "{moderated}");
        let bad = classify(
            400,
            json!({"id": "a2", "name": "bad_request", "errors": ["prompt: required", "seed: too big"]}),
        );
        assert_eq!(bad.kind, ErrorKind::InvalidRequest);
        assert!(
            bad.message.contains("prompt: required; seed: too big"),
            "{bad}"
        );
        assert_eq!(bad.provider_code.as_deref(), Some("bad_request"));
        assert_eq!(
            classify(
                402,
                json!({"name": "payment_required", "errors": ["no credits"]})
            )
            .kind,
            ErrorKind::QuotaExhausted
        );
        assert_eq!(
            classify(401, json!({"name": "unauthorized", "errors": ["bad key"]})).kind,
            ErrorKind::Auth
        );
        let busy = classify(
            429,
            json!({"name": "rate_limit_exceeded", "errors": ["slow down"]}),
        );
        assert!(busy.retryable && busy.kind == ErrorKind::RateLimited);
        assert_eq!(
            classify(413, json!({"name": "payload_too_large", "errors": ["big"]})).kind,
            ErrorKind::InvalidRequest
        );
    }
}
