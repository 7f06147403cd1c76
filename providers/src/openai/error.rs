//! OpenAI's error answers: the one status table (`parse_error`), `error` events of a stream,
//! and telling a retired model from other errors.

use std::time::SystemTime;

use reqwest::{header::HeaderMap, StatusCode};
use serde_json::Value;

use crate::{http::describe_wait, keys::PoolKey, secret::Scrubber, ErrorKind, ProviderError};

use super::{flavour::ErrorContext, retry, whose, Call, OpenAiProvider};

impl OpenAiProvider {
    /// `err` as the flavour reads its own error answers (Azure's content filter and
    /// deployments, ...); unchanged for OpenAI.
    pub(super) fn refine(
        &self,
        err: ProviderError,
        status: u16,
        body: &[u8],
        key: Option<&PoolKey>,
        token: bool,
        call: &Call<'_>,
    ) -> ProviderError {
        match self.flavour.refine_error {
            Some(refine) => refine(
                err,
                &ErrorContext {
                    status,
                    body,
                    key,
                    token,
                    model: Some(call.model),
                },
            ),
            None => err,
        }
    }

    /// The error a successful (200) answer holds instead of images, as Azure sends its
    /// content filter's verdict: `{"created": ..., "error": {"code": "contentFilter", ...}}`.
    /// `None` when the body holds no `error`.
    pub(super) fn answer_error(&self, body: &[u8], call: &Call<'_>) -> Option<ProviderError> {
        let json: Value = serde_json::from_slice(body).ok()?;
        if !matches!(json.get("error"), Some(Value::Object(_) | Value::String(_))) {
            return None;
        }
        let detail = ErrorDetail::from_json(&json);
        let provider_message = detail
            .message
            .as_deref()
            .map(|m| self.scrubber.excerpt(m, 300));
        let refused = detail.is_refusal()
            || provider_message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("safety system"));
        let err = match refused {
            true => ProviderError::new(
                ErrorKind::ContentPolicy,
                "the prompt or its result was refused by the provider's safety system; rephrase it",
            )
            .with_retryable(false),
            false => ProviderError::new(
                ErrorKind::BadResponse,
                format!(
                    "the provider answered HTTP 200 with an error and no images{}",
                    provider_message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            ),
        }
        .with_provider_detail(detail.code.or(detail.error_type), provider_message);
        Some(self.refine(err, 200, body, None, false, call))
    }

    /// Classifies an `error` event, which arrives under HTTP 200 once the stream has started.
    pub(super) fn stream_error(&self, data: &Value, key: Option<&PoolKey>) -> ProviderError {
        let detail = ErrorDetail::from_json(data);
        let provider_message = detail.message.clone();
        let said = provider_message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let unavailable = detail.is(MODEL_NOT_FOUND);
        let (kind, message) = if detail.is_refusal() {
            (
                ErrorKind::ContentPolicy,
                "the prompt was refused by the provider's safety system; rephrase it".to_string(),
            )
        } else if unavailable {
            (
                ErrorKind::NotFound,
                format!("the provider does not serve the model{said}; check the model name"),
            )
        } else if detail.is("insufficient_quota") || detail.is("billing_hard_limit_reached") {
            (
                ErrorKind::QuotaExhausted,
                format!(
                    "the account's quota or billing limit is reached{said}{}",
                    whose(key)
                ),
            )
        } else if detail.is("rate_limit_exceeded") {
            (
                ErrorKind::RateLimited,
                format!("rate limited by the provider during the stream{said}"),
            )
        } else {
            (
                ErrorKind::UpstreamUnavailable,
                format!("the provider reported an error during the stream{said}"),
            )
        };
        let mut err = ProviderError::new(kind, message)
            .with_model_unavailable(unavailable)
            .with_provider_detail(detail.code.or(detail.error_type), provider_message);
        err.param = detail.param;
        err
    }

    /// Turns an error response into a [`ProviderError`]: the one place statuses are classified.
    /// `model` is the model the request named, if it named one.
    pub(super) fn parse_error(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        key: Option<&PoolKey>,
        model: Option<&str>,
    ) -> ProviderError {
        let detail = ErrorDetail::parse(status, headers, body, &self.scrubber);
        let provider_message = detail.message.clone();
        let (code, error_type) = (detail.code.as_deref(), detail.error_type.as_deref());
        let is = |v: &str| detail.is(v);
        let retry_after = retry::retry_after(headers, SystemTime::now());
        let said = provider_message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let s = status.as_u16();
        let (kind, message) = match s {
            401 => (
                ErrorKind::Auth,
                match key {
                    Some(key) => format!(
                        "the API key {} was rejected (HTTP 401){said}; check that it is current \
                         and meant for {}",
                        key.fingerprint(),
                        self.host()
                    ),
                    None => format!(
                        "the server requires an API key and none is set (HTTP 401){said}; set \
                         OPENAI_API_KEY or api_key in the configuration"
                    ),
                },
            ),
            403 => (
                ErrorKind::Permission,
                format!(
                    "the API key{} may not use this model or resource (HTTP 403){said}; check \
                     the organization, the project and the model's access",
                    key.map(|k| format!(" {}", k.fingerprint()))
                        .unwrap_or_default()
                ),
            ),
            404 => (
                ErrorKind::NotFound,
                format!("not found (HTTP 404){said}; check the model name and the base URL"),
            ),
            400 | 422 if detail.is_refusal() => (
                ErrorKind::ContentPolicy,
                "the prompt was refused by the provider's safety system; rephrase it".into(),
            ),
            400 | 422 if is("billing_hard_limit_reached") => (
                ErrorKind::QuotaExhausted,
                format!(
                    "the account's billing limit is reached{said}{}; raise it or add credit",
                    whose(key)
                ),
            ),
            400 | 422 => (
                ErrorKind::InvalidRequest,
                format!("the provider rejected the request (HTTP {s}){said}"),
            ),
            408 => (
                ErrorKind::Timeout,
                format!("the provider timed out handling the request (HTTP 408){said}"),
            ),
            409 => (
                ErrorKind::UpstreamUnavailable,
                format!("the provider reported a conflict (HTTP 409){said}; try again"),
            ),
            429 if is("insufficient_quota") => (
                ErrorKind::QuotaExhausted,
                format!(
                    "the account's quota is used up (HTTP 429){said}{}; check the plan and \
                     billing details, retrying will not help",
                    whose(key)
                ),
            ),
            429 => (
                ErrorKind::RateLimited,
                match retry_after {
                    Some(wait) => format!(
                        "rate limited by the provider (HTTP 429){said}; it asked to wait {}",
                        describe_wait(wait)
                    ),
                    None => format!("rate limited by the provider (HTTP 429){said}"),
                },
            ),
            500..=599 => (
                ErrorKind::UpstreamUnavailable,
                format!("the provider is unavailable (HTTP {s}){said}"),
            ),
            _ => (
                ErrorKind::BadResponse,
                format!("unexpected HTTP {s} from the provider{said}"),
            ),
        };
        let retryable = retry::should_retry_header(headers)
            .unwrap_or_else(|| retry::status_is_retryable(s, code, error_type));
        let unavailable = model_unavailable(s, &detail, model);
        let mut err = ProviderError::new(kind, message)
            .with_model_unavailable(unavailable)
            .with_status(s)
            .with_retryable(retryable)
            .with_retry_after(retry_after)
            .with_request_id(self.request_id(headers))
            .with_provider_detail(detail.code.or(detail.error_type), provider_message);
        err.param = detail.param;
        err
    }
}

/// What an error body says; every field is optional because servers fill them loosely.
#[derive(Debug, Default)]
pub(super) struct ErrorDetail {
    message: Option<String>,
    error_type: Option<String>,
    param: Option<String>,
    code: Option<String>,
}

impl ErrorDetail {
    /// Reads OpenAI's `{"error": {...}}`, a bare `{"error": "..."}` or `{"message"|"detail": ...}`,
    /// or else the body as text (HTML pages are named, not quoted).
    /// A text body is scrubbed whole before it is cut.
    pub(super) fn parse(
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        scrubber: &Scrubber,
    ) -> Self {
        if let Ok(json) = serde_json::from_slice::<Value>(body) {
            return Self::from_json(&json);
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let html_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("html"));
        let message = if text.is_empty() {
            None
        } else if html_type || text.starts_with('<') {
            Some(format!("HTTP {} with an HTML body", status.as_u16()))
        } else {
            Some(scrubber.excerpt(text, 200))
        };
        Self {
            message,
            ..Self::default()
        }
    }

    /// Reads the JSON shapes of [`ErrorDetail::parse`]; a flat object may also carry a `code`
    /// (as stream `error` events do).
    pub(super) fn from_json(json: &Value) -> Self {
        match json.get("error") {
            Some(Value::Object(e)) => Self {
                message: text_field(e.get("message")),
                error_type: text_field(e.get("type")),
                param: text_field(e.get("param")),
                code: text_field(e.get("code")),
            },
            Some(Value::String(message)) => Self {
                message: text_field(Some(&Value::String(message.clone()))),
                ..Self::default()
            },
            _ => Self {
                message: text_field(json.get("message")).or_else(|| text_field(json.get("detail"))),
                code: text_field(json.get("code")),
                ..Self::default()
            },
        }
    }

    /// Whether the provider's code or type is `value`.
    pub(super) fn is(&self, value: &str) -> bool {
        self.code.as_deref() == Some(value) || self.error_type.as_deref() == Some(value)
    }

    /// Whether the provider's safety system refused the prompt or image.
    pub(super) fn is_refusal(&self) -> bool {
        [
            "moderation_blocked",
            "image_generation_user_error",
            "content_policy_violation",
            "contentFilter",
        ]
        .iter()
        .any(|v| self.is(v))
    }
}

/// The code (or type) OpenAI gives an unknown model.
pub(super) const MODEL_NOT_FOUND: &str = "model_not_found";

/// What providers say of a model they no longer serve; matched in lowercase.
pub(super) const RETIRED_PHRASES: [&str; 6] = [
    "deprecated",
    "shut down",
    "shutdown",
    "retired",
    "no longer available",
    "does not exist",
];

/// Whether an error answer says the requested model does not exist or was retired: a 404
/// `model_not_found`, or a 400/404/410 whose message says so of the model.
///
/// How OpenAI answers for a shut-down model is not documented, so the message is read too;
/// it must be about the model (name it, or the word "model", or blame the `model` parameter),
/// so that a parameter called deprecated does not count as the model gone.
pub(super) fn model_unavailable(status: u16, detail: &ErrorDetail, model: Option<&str>) -> bool {
    if status == 404 && detail.is(MODEL_NOT_FOUND) {
        return true;
    }
    if !matches!(status, 400 | 404 | 410) {
        return false;
    }
    let Some(message) = detail.message.as_deref().map(str::to_lowercase) else {
        return false;
    };
    let about_model = message.contains("model")
        || detail.param.as_deref() == Some("model")
        || model.is_some_and(|m| !m.is_empty() && message.contains(&m.to_lowercase()));
    about_model && RETIRED_PHRASES.iter().any(|p| message.contains(p))
}

/// A string (or number, which some servers send as `code`) that is not blank.
pub(super) fn text_field(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_detail(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ErrorDetail {
        ErrorDetail::parse(status, headers, body, &Scrubber::default())
    }

    #[test]
    fn error_bodies_are_read_leniently() {
        let h = HeaderMap::new();
        let d = parse_detail(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"error":{"message":null,"type":"invalid_request_error","param":"size","code":null}}"#,
        );
        assert_eq!(d.message, None);
        assert_eq!(d.error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(d.param.as_deref(), Some("size"));
        let d = parse_detail(
            StatusCode::BAD_GATEWAY,
            &h,
            b"  <html><body>Bad gateway</body></html>",
        );
        assert_eq!(d.message.as_deref(), Some("HTTP 502 with an HTML body"));
        let long = format!("error   code:\n 1015 {}", "x".repeat(500));
        let d = parse_detail(StatusCode::TOO_MANY_REQUESTS, &h, long.as_bytes());
        let message = d.message.unwrap();
        assert!(message.starts_with("error code: 1015 xxx"), "{message}");
        assert_eq!(message.chars().count(), 201);
        let d = parse_detail(StatusCode::BAD_REQUEST, &h, br#"{"error":"nope","code":7}"#);
        assert_eq!(d.message.as_deref(), Some("nope"));
        let d = parse_detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            &h,
            br#"{"detail":"bad n"}"#,
        );
        assert_eq!(d.message.as_deref(), Some("bad n"));
        let d = parse_detail(StatusCode::BAD_REQUEST, &h, br#"{"error":{"code":400}}"#);
        assert_eq!(d.code.as_deref(), Some("400"));
    }

    fn detail(message: Option<&str>, code: Option<&str>, param: Option<&str>) -> ErrorDetail {
        ErrorDetail {
            message: message.map(String::from),
            error_type: Some("invalid_request_error".into()),
            param: param.map(String::from),
            code: code.map(String::from),
        }
    }

    #[test]
    fn retired_models_are_told_apart_from_other_errors() {
        let model = Some("gpt-image-1.5");
        let yes = [
            (404, detail(None, Some("model_not_found"), None)),
            (
                404,
                ErrorDetail {
                    error_type: Some("model_not_found".into()),
                    ..ErrorDetail::default()
                },
            ),
            (
                404,
                detail(Some("The model `gpt-image-9` does not exist"), None, None),
            ),
            (
                400,
                detail(
                    Some("The model `gpt-image-1.5` has been DEPRECATED."),
                    None,
                    None,
                ),
            ),
            (
                400,
                detail(
                    Some("gpt-image-1.5 was shut down on 2026-12-01"),
                    None,
                    None,
                ),
            ),
            (
                410,
                detail(Some("gpt-image-1.5 is no longer available"), None, None),
            ),
            (410, detail(Some("This model is retired"), None, None)),
            (400, detail(Some("Retired."), None, Some("model"))),
        ];
        for (status, d) in &yes {
            assert!(model_unavailable(*status, d, model), "{status} {d:?}");
        }
        let no = [
            // A 400 with the code but nothing saying the model is gone: only a 404 counts.
            (400, detail(Some("bad"), Some("model_not_found"), None)),
            (
                404,
                detail(Some("Invalid URL (POST /v1/images/foo)"), None, None),
            ),
            (
                400,
                detail(Some("Invalid size '999x999'."), Some("invalid_size"), None),
            ),
            // A parameter called deprecated is not the model gone.
            (
                400,
                detail(
                    Some("The parameter `response_format` is deprecated"),
                    Some("unknown_parameter"),
                    Some("response_format"),
                ),
            ),
            (400, detail(None, None, Some("model"))),
            // Other statuses never mean the model is gone, whatever they say.
            (
                403,
                detail(Some("The model gpt-image-1.5 is retired"), None, None),
            ),
            (
                500,
                detail(Some("model does not exist"), Some("model_not_found"), None),
            ),
        ];
        for (status, d) in &no {
            assert!(!model_unavailable(*status, d, model), "{status} {d:?}");
        }
        // Without the requested model's name, the word "model" is needed.
        let bare = detail(Some("gpt-image-1.5 is no longer available"), None, None);
        assert!(!model_unavailable(410, &bare, None));
        assert!(!model_unavailable(410, &bare, Some("")));
    }
}
