//! Gemini's wire format: the `generateContent` body, and reading its answer (images, text,
//! safety blocks).

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{
    http::body::{bad, decode_base64},
    options::parse_aspect_ratio,
    secret::Scrubber,
    validate::parse_size,
    ErrorKind, ImageOptions, InputImage, ProviderError, Resolution, UpstreamModel,
};

/// Every `aspectRatio` Google lists; a ratio asked for exactly is sent as it is.
pub(super) const RATIOS: [&str; 14] = [
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9", "1:8", "8:1", "1:4",
    "4:1",
];

/// The ratios every image model takes, which a size or an unlisted ratio is mapped to (the
/// extreme ones are not taken by every model).
const COMMON_RATIOS: usize = 10;

/// Text kept from an answer, characters: it is a note, not a document.
const MAX_TEXT_CHARS: usize = 2_000;

/// The `aspectRatio` nearest to `w:h`: one listed exactly when it is, else the nearest (in
/// log scale) of the common ones.
pub(super) fn nearest_ratio(w: u32, h: u32) -> &'static str {
    let want = f64::from(w) / f64::from(h);
    let value = |r: &str| {
        let (a, b) = parse_aspect_ratio(r).unwrap_or((1, 1));
        f64::from(a) / f64::from(b)
    };
    if let Some(exact) = RATIOS.iter().find(|r| (value(r) - want).abs() < 1e-9) {
        return exact;
    }
    RATIOS[..COMMON_RATIOS]
        .iter()
        .min_by(|a, b| {
            let da = (value(a).ln() - want.ln()).abs();
            let db = (value(b).ln() - want.ln()).abs();
            da.partial_cmp(&db).unwrap_or(std::cmp::Ordering::Equal)
        })
        .copied()
        .unwrap_or("1:1")
}

/// The `imageSize` nearest a long side of `long` pixels (ties to the smaller, cheaper one).
pub(super) fn nearest_resolution(long: u32) -> Resolution {
    Resolution::ALL
        .into_iter()
        .min_by_key(|r| r.long_side().abs_diff(long))
        .unwrap_or(Resolution::OneK)
}

/// `imageSize` as Google spells it: a capital K.
pub(super) fn image_size(resolution: Resolution) -> &'static str {
    match resolution {
        Resolution::OneK => "1K",
        Resolution::TwoK => "2K",
        Resolution::FourK => "4K",
    }
}

/// The `imageConfig` for `options`: `aspectRatio` and `imageSize` from the ratio and
/// resolution asked for, or from a `WxH` size mapped to the nearest of them. `imageSize` is
/// sent only to models that take it (`sizes` says whether).
pub(super) fn image_config(
    options: &ImageOptions,
    takes_image_size: bool,
) -> Result<Map<String, Value>, ProviderError> {
    let mut config = Map::new();
    let (ratio, resolution) = match (&options.size, &options.aspect_ratio) {
        (Some(size), _) => {
            let (w, h) = parse_size(size).ok_or_else(|| {
                ProviderError::invalid_param(
                    "size",
                    format!("size `{size}` is not WIDTHxHEIGHT; Gemini takes aspect_ratio and resolution"),
                )
            })?;
            (
                Some(nearest_ratio(w, h)),
                Some(nearest_resolution(w.max(h))),
            )
        }
        (None, Some(ratio)) => {
            let (w, h) = parse_aspect_ratio(ratio).ok_or_else(|| {
                ProviderError::invalid_param(
                    "aspect_ratio",
                    format!("aspect_ratio `{ratio}` is not WIDTH:HEIGHT such as 16:9"),
                )
            })?;
            (Some(nearest_ratio(w, h)), options.resolution)
        }
        (None, None) => (None, options.resolution),
    };
    if let Some(ratio) = ratio {
        config.insert("aspectRatio".into(), ratio.into());
    }
    match resolution {
        Some(r) if takes_image_size => {
            config.insert("imageSize".into(), image_size(r).into());
        }
        // Asked for outright, not derived from a size: refused rather than dropped in silence.
        Some(r) if options.size.is_none() && options.resolution.is_some() => {
            return Err(ProviderError::invalid_param(
                "resolution",
                format!("this model makes one resolution (about 1K) and takes no imageSize; leave resolution `{r}` unset"),
            ))
        }
        _ => {}
    }
    Ok(config)
}

/// An image as an `inlineData` part.
pub(super) fn inline_part(image: &InputImage) -> Value {
    json!({"inlineData": {
        "mimeType": image.mime(),
        "data": base64::engine::general_purpose::STANDARD.encode(&image.bytes),
    }})
}

/// One `generateContent` answer, as far as it is read. Every field is optional: blocks leave
/// out `content`, prompt blocks leave out `candidates`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Answer {
    #[serde(default)]
    candidates: Option<Vec<Candidate>>,
    #[serde(default, alias = "prompt_feedback")]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default, alias = "usage_metadata")]
    pub(super) usage_metadata: Option<Value>,
    #[serde(default, alias = "response_id")]
    pub(super) response_id: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default, alias = "finish_reason")]
    finish_reason: Option<Value>,
    #[serde(default, alias = "finish_message")]
    finish_message: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Option<Vec<Part>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<Value>,
    #[serde(default, alias = "inline_data")]
    inline_data: Option<Blob>,
    /// Gemini 3 image models show their working as "thought" images before the final one.
    #[serde(default)]
    thought: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Blob {
    #[serde(default, alias = "mime_type")]
    mime_type: Option<Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default, alias = "block_reason")]
    block_reason: Option<Value>,
    #[serde(default, alias = "block_reason_message")]
    block_reason_message: Option<Value>,
}

/// The `finishReason`s that mean the output was withheld by a safety or policy filter.
const BLOCKED: [&str; 9] = [
    "SAFETY",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "RECITATION",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
    "LANGUAGE",
];

/// What an answer holds once read: the images' bytes (at most the ones wanted) and its text.
#[derive(Debug)]
pub(super) struct Read {
    /// Each image's decoded bytes, in answer order.
    pub(super) images: Vec<bytes::Bytes>,
    /// The text parts, joined and scrubbed (the model's notes on what it drew).
    pub(super) text: Option<String>,
}

fn text_of(value: Option<&Value>) -> Option<&str> {
    value
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

impl Answer {
    /// Reads a body: unusable JSON is a `bad_response` that quotes nothing of it.
    pub(super) fn parse(body: &[u8]) -> Result<Self, ProviderError> {
        serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "the answer is not a generateContent response ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })
    }

    /// The images (at most `want`, thoughts skipped) and text of the answer; a block is a
    /// `content_policy` error naming its reason, no image and no block a `bad_response`.
    pub(super) fn read(&self, want: usize, scrubber: &Scrubber) -> Result<Read, ProviderError> {
        let candidates = self.candidates.as_deref().unwrap_or_default();
        let parts = || {
            candidates
                .iter()
                .filter_map(|c| c.content.as_ref()?.parts.as_deref())
                .flatten()
                .filter(|p| p.thought != Some(Value::Bool(true)))
        };
        let mut text: Vec<&str> = parts().filter_map(|p| text_of(p.text.as_ref())).collect();
        text.truncate(8);
        let text = (!text.is_empty()).then(|| scrubber.excerpt(&text.join("\n"), MAX_TEXT_CHARS));
        let mut images = Vec::new();
        for (i, blob) in parts().filter_map(|p| p.inline_data.as_ref()).enumerate() {
            let mime = text_of(blob.mime_type.as_ref()).unwrap_or("image/png");
            if !mime.starts_with("image/") {
                continue;
            }
            if images.len() == want {
                break;
            }
            let data = text_of(blob.data.as_ref())
                .ok_or_else(|| bad(format!("image part {} has no base64 `data`", i + 1)))?;
            let bytes = decode_base64(data)
                .map_err(|e| bad(format!("image part {} is not valid base64: {e}", i + 1)))?;
            images.push(bytes);
        }
        if !images.is_empty() {
            return Ok(Read { images, text });
        }
        let said = |message: Option<&str>| {
            message
                .map(|m| format!(": {}", scrubber.excerpt(m, 300)))
                .unwrap_or_default()
        };
        if let Some(feedback) = &self.prompt_feedback {
            if let Some(reason) = text_of(feedback.block_reason.as_ref()) {
                let reason = scrubber.token(reason).unwrap_or_else(|| "OTHER".into());
                let message = text_of(feedback.block_reason_message.as_ref());
                return Err(blocked(
                    format!(
                        "the prompt was blocked by Google's safety filters (blockReason {reason}){}; rephrase it",
                        said(message)
                    ),
                    &reason,
                    message.map(|m| scrubber.excerpt(m, 300)),
                ));
            }
        }
        let reasons: Vec<(String, Option<&str>)> = candidates
            .iter()
            .filter_map(|c| {
                let reason = text_of(c.finish_reason.as_ref())?;
                Some((
                    scrubber.token(reason).unwrap_or_else(|| "OTHER".into()),
                    text_of(c.finish_message.as_ref()),
                ))
            })
            .collect();
        if let Some((reason, message)) = reasons.iter().find(|(r, _)| BLOCKED.contains(&r.as_str()))
        {
            return Err(blocked(
                format!(
                    "the image was withheld by Google's safety filters (finishReason {reason}){}; rephrase the prompt",
                    said(*message)
                ),
                reason,
                message.map(|m| scrubber.excerpt(m, 300)),
            ));
        }
        let why = match reasons.first() {
            Some((reason, message)) => format!("finishReason {reason}{}", said(*message)),
            None if candidates.is_empty() => "no candidates and no promptFeedback".into(),
            None => "no finishReason".into(),
        };
        let text_note = match &text {
            Some(t) => format!(
                "; the model answered only with text: {}",
                scrubber.excerpt(t, 300)
            ),
            None => String::new(),
        };
        Err(bad(format!(
            "Google answered with no image ({why}){text_note}; ask for an image explicitly or try again"
        ))
        .with_provider_detail(reasons.first().map(|(r, _)| r.clone()), None))
    }
}

/// The image models of a `GET models` listing: those that `generateContent` serves whose
/// name says they make images (Google lists no shutdown dates there).
pub(super) fn parse_models(
    body: &[u8],
    scrubber: &Scrubber,
) -> Result<Vec<UpstreamModel>, ProviderError> {
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the model listing is not JSON ({:?} error)",
            e.classify()
        ))
    })?;
    let models = json
        .get("models")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the model listing has no `models` list"))?;
    let mut out: Vec<UpstreamModel> = models
        .iter()
        .filter_map(|m| {
            let name = m.get("name")?.as_str()?;
            let id = scrubber.token(name.strip_prefix("models/").unwrap_or(name))?;
            let generates = m
                .get("supportedGenerationMethods")
                .and_then(Value::as_array)
                .is_some_and(|all| all.iter().any(|v| v == "generateContent"));
            let lower = id.to_ascii_lowercase();
            (generates && (lower.contains("image") || lower.contains("nano-banana")))
                .then(|| UpstreamModel::new(id, None))
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    Ok(out)
}

fn blocked(message: String, reason: &str, said: Option<String>) -> ProviderError {
    ProviderError::new(ErrorKind::ContentPolicy, message)
        .with_retryable(false)
        .with_provider_detail(Some(reason.to_string()), said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_map_to_the_nearest_ratio_and_resolution() {
        assert_eq!(nearest_ratio(1536, 1024), "3:2");
        assert_eq!(nearest_ratio(1024, 1536), "2:3");
        assert_eq!(nearest_ratio(1920, 1080), "16:9");
        assert_eq!(nearest_ratio(1, 8), "1:8");
        assert_eq!(nearest_ratio(1000, 1), "21:9");
        assert_eq!(nearest_ratio(7, 3), "21:9");
        assert_eq!(nearest_resolution(1536), Resolution::OneK);
        assert_eq!(nearest_resolution(2500), Resolution::TwoK);
        assert_eq!(nearest_resolution(8000), Resolution::FourK);
        let asked = ImageOptions {
            size: Some("1536x1024".into()),
            ..Default::default()
        };
        let config = image_config(&asked, true).unwrap();
        assert_eq!(
            Value::Object(config),
            json!({"aspectRatio": "3:2", "imageSize": "1K"})
        );
        let config = image_config(&asked, false).unwrap();
        assert_eq!(Value::Object(config), json!({"aspectRatio": "3:2"}));
        let res = ImageOptions {
            resolution: Some(Resolution::FourK),
            ..Default::default()
        };
        assert_eq!(
            image_config(&res, false).unwrap_err().param.as_deref(),
            Some("resolution")
        );
    }

    #[test]
    fn thoughts_are_skipped_and_snake_case_is_read() {
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\nfinal");
        let body = json!({"candidates": [{"content": {"parts": [
            {"inlineData": {"mimeType": "image/png", "data": "dGhvdWdodA=="}, "thought": true},
            {"text": "Here you go"},
            {"inline_data": {"mime_type": "image/png", "data": png}},
        ]}, "finishReason": "STOP"}]});
        let answer = Answer::parse(body.to_string().as_bytes()).unwrap();
        let read = answer.read(1, &Scrubber::default()).unwrap();
        assert_eq!(read.images.len(), 1);
        assert!(read.images[0].ends_with(b"final"));
        assert_eq!(read.text.as_deref(), Some("Here you go"));
    }
}
