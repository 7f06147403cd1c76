//! The moderation pre-check: `POST {base_url}/moderations`, free to call, through the same
//! executor as the image calls (the pool's keys, retries, deadline, cancellation, scrubbing).
//!
//! A prompt alone goes as a plain string (every moderation model takes one); with images the
//! input is a list of parts, `{"type":"text"}` and `{"type":"image_url"}` holding a `data:`
//! URL. OpenAI takes at most one image per request (`too_many_images` otherwise), so the
//! first request carries the prompt and the first image, and each further image is a request
//! of its own; the verdicts are merged. Unlike an image call, a moderation is quick and bills
//! nothing, so its attempts time out sooner and a timed-out attempt is retried.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::try_join_all;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::{
    http::{
        body::{bad, read_capped, read_truncated, too_large, ReadError},
        error::transport_error,
        executor::{Attempt, Executor, Sent},
    },
    keys::PoolKey,
    secret::Scrubber,
    CallOptions, InputImage, ModerationInput, ModerationVerdict, ProviderError,
};

use super::{scrub_token, wire::quoted, OpenAiProvider, ERROR_BODY_CAP};

/// A moderation answer is a few kilobytes (one result, a few dozen categories).
const MODERATION_BODY_CAP: usize = 1024 * 1024;

/// The longest one moderation attempt may take: the classifier answers in well under a second.
pub(super) const MODERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest one moderation check may take, every attempt and wait included.
pub(super) const MODERATION_DEADLINE: Duration = Duration::from_secs(60);

/// The most flagged categories a verdict keeps: far more than the classifier has.
const MAX_CATEGORIES: usize = 64;

/// The longest category name kept as it is; longer ones read as `other`.
const MAX_CATEGORY_LEN: usize = 64;

/// What is logged and shown of the call.
const WHAT: &str = "moderation";

/// The executor of moderation calls: the image calls' keys and retry policy, with timeouts
/// retried (nothing is billed) and a deadline of [`MODERATION_DEADLINE`] at most.
pub(super) fn executor(kind: &'static str, images: &Executor) -> Executor {
    let mut policy = *images.policy();
    policy.retry_on_timeout = true;
    Executor::new(
        kind,
        images.keys().clone(),
        policy,
        images.deadline().min(MODERATION_DEADLINE),
    )
    .with_scrubber(images.scrubber().clone())
}

impl OpenAiProvider {
    /// Classifies `input`: one request for the prompt and its first image, one for each
    /// further image, all at once; flagged when any of them is.
    pub(super) async fn moderate_input(
        &self,
        input: &ModerationInput,
        options: &CallOptions,
    ) -> Result<ModerationVerdict, ProviderError> {
        let model = input.model();
        let mut bodies = vec![request_body(model, Some(&input.text), input.images.first())];
        bodies.extend(
            input
                .images
                .iter()
                .skip(1)
                .map(|image| request_body(model, None, Some(image))),
        );
        let verdicts = try_join_all(
            bodies
                .iter()
                .map(|body| self.moderation(body, model, options)),
        )
        .await?;
        Ok(merge(verdicts, model))
    }

    /// One moderation request, retried as the executor's policy says.
    async fn moderation(
        &self,
        body: &Value,
        model: &str,
        options: &CallOptions,
    ) -> Result<ModerationVerdict, ProviderError> {
        self.moderation_executor
            .run(
                options,
                WHAT,
                model,
                |attempt: Attempt| async move { self.send_moderation(body, attempt.key()).await },
                |sent: Sent<(HeaderMap, Bytes)>| async move {
                    let (headers, body) = sent.value;
                    let id = self.request_id(&headers);
                    parse_verdict(&body, model, &self.scrubber)
                        .map(|v| v.with_request_id(id.clone()))
                        .map_err(|e| e.with_request_id(id).with_request_sent(true))
                },
            )
            .await
    }

    /// One attempt: the answer's headers and (capped) body, or the classified error.
    async fn send_moderation(
        &self,
        body: &Value,
        key: Option<&PoolKey>,
    ) -> Result<(HeaderMap, Bytes), ProviderError> {
        let token = match &self.flavour.tokens {
            Some(tokens) => Some(tokens.token().await?),
            None => None,
        };
        let s = &self.settings;
        let timeout = s.timeout.min(MODERATION_TIMEOUT);
        let req = self
            .client
            .post(self.moderations_url.clone())
            .timeout(timeout)
            .json(body);
        let outcome = async {
            let resp = self
                .account_headers(req, key, token.as_ref())
                .send()
                .await
                .map_err(|e| transport_error(e, "the moderation endpoint", timeout))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            if !status.is_success() {
                let body = read_truncated(resp, ERROR_BODY_CAP.min(s.max_response_bytes)).await;
                return Err(self.parse_error(status, &headers, &body, key, None));
            }
            let cap = MODERATION_BODY_CAP.min(s.max_response_bytes);
            let body = read_capped(resp, cap).await.map_err(|e| {
                match e {
                    ReadError::TooLarge => too_large("the moderation answer", cap),
                    ReadError::Transport(e) => {
                        transport_error(e, "the moderation endpoint", timeout)
                    }
                }
                .with_request_id(self.request_id(&headers))
                .with_request_sent(true)
            })?;
            Ok((headers, body))
        }
        .await;
        match &token {
            Some(token) => outcome.map_err(|e| scrub_token(e, token, &s.base_url)),
            None => outcome,
        }
    }
}

/// The JSON body of one request: the prompt as a plain string when no image goes with it,
/// else a list of parts with the image as a `data:` URL.
fn request_body(model: &str, text: Option<&str>, image: Option<&InputImage>) -> Value {
    let input = match (text, image) {
        (Some(text), None) => Value::String(text.to_string()),
        (text, image) => {
            let mut parts = Vec::new();
            if let Some(text) = text.filter(|t| !t.trim().is_empty()) {
                parts.push(json!({"type": "text", "text": text}));
            }
            if let Some(image) = image {
                parts.push(json!({
                    "type": "image_url",
                    "image_url": {"url": data_url(image)},
                }));
            }
            Value::Array(parts)
        }
    };
    json!({"model": model, "input": input})
}

/// `image` as a `data:` URL.
fn data_url(image: &InputImage) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image.bytes);
    format!("data:{};base64,{b64}", image.mime())
}

/// Reads a moderation answer: `{"model", "results": [{"flagged", "categories": {name: bool},
/// ...}]}`. Unknown fields are ignored and the categories are an open map; an answer without
/// a `results` list, or with an empty one, is no verdict.
fn parse_verdict(
    body: &[u8],
    asked: &str,
    scrubber: &Scrubber,
) -> Result<ModerationVerdict, ProviderError> {
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the moderation answer is not the expected JSON ({e}); it starts with: {}",
            quoted(body, scrubber)
        ))
    })?;
    let results = json
        .get("results")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| bad("the moderation answer has no `results`, so it gives no verdict"))?;
    let mut flagged = false;
    let mut categories: Vec<String> = Vec::new();
    for result in results {
        let Some(result) = result.as_object() else {
            return Err(bad("a moderation result is not an object"));
        };
        match result.get("flagged") {
            Some(Value::Bool(f)) => flagged |= f,
            _ => return Err(bad("a moderation result has no boolean `flagged`")),
        }
        let named = result
            .get("categories")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .map(|(name, _)| category_name(name, scrubber));
        for name in named {
            if !categories.contains(&name) && categories.len() < MAX_CATEGORIES {
                categories.push(name);
            }
        }
    }
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .and_then(|m| scrubber.token(m))
        .unwrap_or_else(|| asked.to_string());
    Ok(ModerationVerdict::new(flagged, categories, model))
}

/// A category name fit for messages and logs: a plain lowercase token (`self-harm/intent`)
/// holding no secret, else `other`.
fn category_name(name: &str, scrubber: &Scrubber) -> String {
    let plain = !name.is_empty()
        && name.len() <= MAX_CATEGORY_LEN
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'/' | b'-' | b'_' | b'.')
        });
    match plain && !scrubber.finds(name) {
        true => name.to_string(),
        false => "other".to_string(),
    }
}

/// The verdicts of one input's requests as one: flagged when any is, the categories of all,
/// the request id of the first flagged one (else of the first).
fn merge(verdicts: Vec<ModerationVerdict>, asked: &str) -> ModerationVerdict {
    let mut iter = verdicts.into_iter();
    let Some(mut out) = iter.next() else {
        return ModerationVerdict::new(false, Vec::new(), asked);
    };
    for v in iter {
        if v.flagged && !out.flagged {
            out.request_id = v.request_id.clone();
        }
        out.flagged |= v.flagged;
        for c in v.categories {
            if !out.categories.contains(&c) && out.categories.len() < MAX_CATEGORIES {
                out.categories.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn answers_are_read_leniently_and_keep_only_plain_category_names() {
        let body = br#"{"id":"modr-1","model":"omni-moderation-2024-09-26","extra":[1],
            "results":[{"flagged":true,
              "categories":{"violence":true,"harassment/threatening":true,"hate":false,
                            "Bad Name\n":true,"illicit/violent":null,"new-category":true},
              "category_scores":{"violence":0.9},
              "category_applied_input_types":{"violence":["text"]}}]}"#;
        let v = parse_verdict(body, "omni-moderation-latest", &Scrubber::default()).unwrap();
        assert!(v.flagged);
        // serde_json's map is sorted; what matters is each flagged name once, odd ones as `other`.
        let mut got = v.categories.clone();
        got.sort();
        assert_eq!(
            got,
            [
                "harassment/threatening",
                "new-category",
                "other",
                "violence"
            ]
        );
        assert_eq!(v.model, "omni-moderation-2024-09-26");

        let clean = br#"{"results":[{"flagged":false,"categories":{"violence":false}}]}"#;
        let v = parse_verdict(clean, "omni-moderation-latest", &Scrubber::default()).unwrap();
        assert!(!v.flagged);
        assert!(v.categories.is_empty());
        assert_eq!(
            v.model, "omni-moderation-latest",
            "the asked model when none is named"
        );

        for broken in [
            &b"not json"[..],
            b"{}",
            br#"{"results":[]}"#,
            br#"{"results":{}}"#,
            br#"{"results":["x"]}"#,
            br#"{"results":[{"categories":{}}]}"#,
            br#"{"results":[{"flagged":"yes"}]}"#,
        ] {
            let err = parse_verdict(broken, "m", &Scrubber::default()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
        }
    }

    #[test]
    fn a_prompt_alone_is_a_string_and_images_are_data_url_parts() {
        let body = request_body("omni-moderation-latest", Some("a cat"), None);
        assert_eq!(
            body,
            json!({"model": "omni-moderation-latest", "input": "a cat"})
        );
        let png = InputImage::new(
            Bytes::from_static(b"\x89PNG"),
            crate::ImageFormat::Png,
            "a.png",
        );
        let body = request_body("m", Some("a cat"), Some(&png));
        assert_eq!(
            body["input"],
            json!([
                {"type": "text", "text": "a cat"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}}
            ])
        );
        let body = request_body("m", None, Some(&png));
        assert_eq!(body["input"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn merged_verdicts_are_flagged_when_any_is() {
        let clean = ModerationVerdict::new(false, vec![], "m").with_request_id(Some("a".into()));
        let flagged = ModerationVerdict::new(true, vec!["violence".into()], "m")
            .with_request_id(Some("b".into()));
        let also = ModerationVerdict::new(true, vec!["violence".into(), "hate".into()], "m");
        let v = merge(vec![clean.clone(), flagged, also], "m");
        assert!(v.flagged);
        assert_eq!(v.categories, ["violence", "hate"]);
        assert_eq!(v.request_id.as_deref(), Some("b"));
        assert_eq!(merge(vec![clean.clone()], "m"), clean);
    }
}
