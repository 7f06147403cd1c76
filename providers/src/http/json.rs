//! One JSON request of a submit-then-poll API: sent, its error answer handed to the
//! provider's `parse_error`, its success read under a cap and parsed, with no part of the body
//! quoted in any error (an upstream may echo secrets).

use std::time::Duration;

use reqwest::{header::HeaderMap, StatusCode};
use serde_json::Value;

use crate::ProviderError;

use super::{
    body::{bad, read_capped, read_truncated, too_large, ReadError},
    error::transport_error,
};

/// Error bodies are only read for their message; more than this is never useful.
pub const ERROR_BODY_CAP: usize = 64 * 1024;

/// Sends `req` (naming it `what` in messages) and returns the answer's headers and JSON, or the
/// error `parse_error` makes of a non-success status, its headers and body (read up to
/// [`ERROR_BODY_CAP`]). A success body over `cap` bytes or that is not JSON is `bad_response`.
pub async fn send_json(
    req: reqwest::RequestBuilder,
    what: &str,
    timeout: Duration,
    cap: usize,
    parse_error: impl FnOnce(StatusCode, &HeaderMap, &[u8]) -> ProviderError,
) -> Result<(HeaderMap, Value), ProviderError> {
    let resp = req
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| transport_error(e, what, timeout))?;
    let status = resp.status();
    let headers = resp.headers().clone();
    if !status.is_success() {
        let body = read_truncated(resp, ERROR_BODY_CAP).await;
        return Err(parse_error(status, &headers, &body));
    }
    let body = read_capped(resp, cap).await.map_err(|e| match e {
        ReadError::TooLarge => too_large(what, cap),
        ReadError::Transport(e) => transport_error(e, what, timeout),
    })?;
    // serde's message names a position, never the content.
    let json = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "{what} answered with something that is not JSON ({e})"
        ))
    })?;
    Ok((headers, json))
}

/// The string at `pointer` in `value`, if it is one.
pub fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer)?.as_str()
}

/// A text an upstream sent, fit for a message: whitespace collapsed, at most `max` characters
/// (the executor scrubs secrets from every error it returns).
pub fn capped(text: &str, max: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match collapsed.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &collapsed[..cut]),
        None => collapsed,
    }
}

/// The human text of a JSON error body: the first string among `fields` (top level), or
/// FastAPI-style `detail` lists joined (`[{"msg": ...}]`), capped at 300 characters.
pub fn error_text(body: &[u8], fields: &[&str]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    for field in fields {
        match value.get(*field) {
            Some(Value::String(s)) if !s.trim().is_empty() => return Some(capped(s, 300)),
            Some(Value::Array(items)) => {
                let msgs: Vec<&str> = items
                    .iter()
                    .filter_map(|i| i.get("msg").and_then(Value::as_str).or_else(|| i.as_str()))
                    .take(5)
                    .collect();
                if !msgs.is_empty() {
                    return Some(capped(&msgs.join("; "), 300));
                }
            }
            Some(Value::Object(inner)) => {
                if let Some(Value::String(s)) = inner.get("message") {
                    return Some(capped(s, 300));
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_come_from_strings_lists_or_objects_and_are_capped() {
        assert_eq!(
            error_text(br#"{"detail": "no credits"}"#, &["message", "detail"]).as_deref(),
            Some("no credits")
        );
        assert_eq!(
            error_text(
                br#"{"detail": [{"loc": ["body"], "msg": "bad width"}, {"msg": "bad height"}]}"#,
                &["detail"]
            )
            .as_deref(),
            Some("bad width; bad height")
        );
        assert_eq!(
            error_text(br#"{"error": {"message": "x"}}"#, &["error"]).as_deref(),
            Some("x")
        );
        assert_eq!(error_text(b"not json", &["detail"]), None);
        let long = format!(r#"{{"detail": "{}"}}"#, "a".repeat(1000));
        assert!(
            error_text(long.as_bytes(), &["detail"])
                .unwrap()
                .chars()
                .count()
                <= 301
        );
    }
}
