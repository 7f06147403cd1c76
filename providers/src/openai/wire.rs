//! OpenAI's answers as this crate reads them: the images response (leniently: unknown
//! fields ignored, described ones read as plain strings), where each image's bytes come from,
//! and the model listing.

use serde::Deserialize;
use serde_json::Value;

use crate::{http::body::bad, secret::Scrubber, ProviderError, UpstreamModel};

use super::images_body::{Decoded, ImagesBody, PLACEHOLDER};

/// How the ids of image models begin; the listing holds every model of the account.
pub(super) const IMAGE_MODEL_PREFIXES: [&str; 3] = ["gpt-image-", "chatgpt-image-", "dall-e-"];

/// The start of a body fit for a message, scrubbed before it is cut: a window a secret
/// cannot straddle unnoticed (the scrubber drops a secret's beginning at its end).
pub(super) fn quoted(body: &[u8], scrubber: &Scrubber) -> String {
    scrubber.excerpt(&String::from_utf8_lossy(&body[..body.len().min(4096)]), 120)
}

/// What a successful attempt returned.
#[derive(Debug)]
pub(super) enum Answer {
    /// A JSON body holding every image, its images decoded as it arrived.
    Json(ImagesBody),
    /// The data of a stream's completed event, holding the final image.
    Completed(Value),
}

/// Where one result image's bytes come from.
pub(super) enum Source<'a> {
    /// Decoded while the body was read.
    Decoded(Result<Decoded, String>),
    /// Base64 still to decode.
    Text(&'a str),
    /// A `data:` URL.
    DataUrl(&'a str),
    /// A URL to download.
    Url(&'a str),
    /// Neither `b64_json` nor `url`.
    Missing,
}

impl<'a> Source<'a> {
    pub(super) fn of(datum: &'a Datum, decoded: Option<&mut ImagesBody>) -> Self {
        if let Some(b64) = datum.b64_json.as_deref().filter(|s| !s.trim().is_empty()) {
            return match b64.starts_with(PLACEHOLDER) {
                true => decoded
                    .and_then(|body| body.take(b64))
                    .map_or(Self::Missing, Self::Decoded),
                false => Self::Text(b64),
            };
        }
        match datum
            .url
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => Self::Missing,
            Some(url)
                if url
                    .get(..5)
                    .is_some_and(|s| s.eq_ignore_ascii_case("data:")) =>
            {
                Self::DataUrl(url)
            }
            Some(url) => Self::Url(url),
        }
    }
}

/// The generation response; unknown fields are ignored and the described ones are read as
/// plain strings, so new values never break parsing.
#[derive(Debug, Deserialize)]
pub(super) struct ImagesResponse {
    #[serde(default)]
    pub(super) data: Option<Vec<Datum>>,
    #[serde(default)]
    pub(super) usage: Option<Value>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub(super) size: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub(super) quality: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub(super) background: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub(super) output_format: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Datum {
    #[serde(default, deserialize_with = "lenient_string")]
    pub(super) b64_json: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub(super) url: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub(super) revised_prompt: Option<String>,
}

impl ImagesResponse {
    /// Parses a JSON answer (its skeleton, when read by [`BodyScanner`]).
    pub(super) fn from_body(body: &[u8], scrubber: &Scrubber) -> Result<Self, ProviderError> {
        serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "the response is not the expected JSON ({e}); it starts with: {}",
                quoted(body, scrubber)
            ))
        })
    }

    /// A stream's completed event holds one image's fields beside the response's own.
    pub(super) fn from_completed(data: Value) -> Result<Self, ProviderError> {
        let unexpected = |e: serde_json::Error| {
            bad(format!(
                "the completed event is not the expected JSON ({e})"
            ))
        };
        let datum: Datum = serde_json::from_value(data.clone()).map_err(unexpected)?;
        let mut resp: ImagesResponse = serde_json::from_value(data).map_err(unexpected)?;
        resp.data = Some(vec![datum]);
        Ok(resp)
    }
}

/// The image models of a `GET /models` answer, sorted by id: entries without a string id are
/// skipped, and a `shutdown_date` that is not a non-blank string counts as none announced.
/// Ids and dates are printed and logged, so only plain tokens without a secret are kept.
pub(super) fn parse_models(
    body: &[u8],
    scrubber: &Scrubber,
) -> Result<Vec<UpstreamModel>, ProviderError> {
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the model listing is not the expected JSON ({e}); it starts with: {}",
            quoted(body, scrubber)
        ))
    })?;
    let data = json
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("the model listing has no `data` list"))?;
    let mut models: Vec<UpstreamModel> = data
        .iter()
        .filter_map(|entry| {
            let id = scrubber.token(entry.get("id")?.as_str()?)?;
            let lower = id.to_ascii_lowercase();
            if !IMAGE_MODEL_PREFIXES.iter().any(|p| lower.starts_with(p)) {
                return None;
            }
            let shutdown = entry
                .get("shutdown_date")
                .and_then(Value::as_str)
                .and_then(|d| scrubber.token(d));
            Some(UpstreamModel::new(id, shutdown))
        })
        .collect();
    models.sort_by(|a, b| a.id.cmp(&b.id));
    // A listing naming a model twice would otherwise show it twice.
    models.dedup_by(|a, b| a.id == b.id);
    Ok(models)
}

pub(super) fn lenient_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn model_listings_are_read_leniently() {
        let body = br#"{"object":"list","data":[
            {"id":"gpt-image-2","object":"model","created":1,"owned_by":"system","shutdown_date":null},
            {"id":"dall-e-3","shutdown_date":"2026-05-12","extra":{"x":1}},
            {"id":"gpt-4o","shutdown_date":"2027-01-01"},
            {"id":42},
            {"object":"model"},
            {"id":"chatgpt-image-latest","shutdown_date":20261201},
            {"id":"gpt-image-1.5","shutdown_date":"  "},
            {"id":"GPT-IMAGE-X"},
            {"id":"gpt-image-9\nERROR forged log line"},
            {"id":"gpt-image-3","shutdown_date":"2027-01-01\nERROR forged"},
            "not an object",
            {"id":"gpt-image-2"}
        ]}"#;
        let models = parse_models(body, &Scrubber::default()).unwrap();
        let got: Vec<(&str, Option<&str>)> = models
            .iter()
            .map(|m| (m.id.as_str(), m.shutdown_date.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("GPT-IMAGE-X", None),
                ("chatgpt-image-latest", None),
                ("dall-e-3", Some("2026-05-12")),
                ("gpt-image-1.5", None),
                ("gpt-image-2", None),
                ("gpt-image-3", None),
            ]
        );
        for broken in [&b"not json"[..], b"{}", br#"{"data":{}}"#, b"[]"] {
            let err = parse_models(broken, &Scrubber::default()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadResponse, "{err}");
        }
        assert!(parse_models(br#"{"data":[]}"#, &Scrubber::default())
            .unwrap()
            .is_empty());
    }
}
