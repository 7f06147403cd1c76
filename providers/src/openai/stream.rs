//! Streamed generations and edits: server-sent events up to the completed one, each partial
//! image reported as it arrives.

use futures_util::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::{
    http::{
        body::{decode_base64, too_large},
        error::{error_chain, transport_error},
        sse::{SseEvent, SseParser},
    },
    keys::PoolKey,
    secret::Scrubber,
    ErrorKind, Events, GeneratedImage, ProviderError, ProviderEvent,
};

use super::{Call, OpenAiProvider};

impl OpenAiProvider {
    /// Reads a server-sent event stream up to its completed event, reporting partial images.
    ///
    /// The completed event ends the read even when partials were still due: it holds the final
    /// image, and anything after it is not worth waiting for.
    pub(super) async fn read_stream(
        &self,
        resp: reqwest::Response,
        call: &Call<'_>,
        key: Option<&PoolKey>,
        events: &Events,
    ) -> Result<Value, ProviderError> {
        let s = &self.settings;
        let mut parser = SseParser::default();
        let mut stream = resp.bytes_stream();
        let (mut received, mut partials) = (0, 0);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| match e.is_timeout() {
                true => transport_error(e, "the image API", s.timeout),
                false => stream_ended(&error_chain(&e.without_url())),
            })?;
            received += chunk.len();
            if received > s.max_response_bytes {
                return Err(too_large("the response stream", s.max_response_bytes));
            }
            for event in parser.push(&chunk) {
                match StreamEvent::read(event, &self.scrubber) {
                    // Previews beyond those asked for are not decoded: each costs a decode.
                    StreamEvent::Partial(_) if partials >= call.partials => {
                        tracing::debug!(
                            partials,
                            "ignoring a partial image beyond those asked for"
                        );
                    }
                    StreamEvent::Partial(data) => {
                        report_partial(&data, partials, events);
                        partials += 1;
                    }
                    StreamEvent::Completed(data) => return Ok(data),
                    StreamEvent::Failed(data) => return Err(self.stream_error(&data, key)),
                    StreamEvent::Other => {}
                }
            }
        }
        Err(stream_ended("no more data"))
    }
}

pub(super) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// A stream that stopped before its completed event: retryable, like a dropped connection.
pub(super) fn stream_ended(detail: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::Network,
        format!("the stream ended before the image was complete ({detail})"),
    )
}

/// One server-sent event of an image stream, by what it means.
#[derive(Debug)]
pub(super) enum StreamEvent {
    Partial(Value),
    Completed(Value),
    Failed(Value),
    Other,
}

impl StreamEvent {
    /// Reads the event's name from its data's `type`, else from its `event:` line, so both
    /// styles of server work (`image_generation.*` and `image_edit.*` alike).
    pub(super) fn read(event: SseEvent, scrubber: &Scrubber) -> Self {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return match event.event.as_str() {
                // Scrubbed whole before the cut, so no part of a key survives it.
                "error" => Self::Failed(
                    serde_json::json!({ "message": scrubber.excerpt(&event.data, 200) }),
                ),
                _ => Self::Other,
            };
        };
        let name = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&event.event)
            .to_string();
        if name == "error"
            || event.event == "error"
            || data.get("error").is_some_and(|e| !e.is_null())
        {
            Self::Failed(data)
        } else if name.ends_with(".partial_image") {
            Self::Partial(data)
        } else if name.ends_with(".completed") {
            Self::Completed(data)
        } else {
            Self::Other
        }
    }
}

/// Sends a partial image as an event; `seen` partials came before it.
pub(super) fn report_partial(data: &Value, seen: u32, events: &Events) {
    let index = data
        .get("partial_image_index")
        .and_then(Value::as_u64)
        .map_or(seen, |i| i as u32);
    let image = data
        .get("b64_json")
        .and_then(Value::as_str)
        .and_then(|b64| decode_base64(b64).ok())
        .and_then(|bytes| GeneratedImage::from_encoded(bytes).ok());
    match image {
        Some(image) => events.send(ProviderEvent::PartialImage { index, image }),
        // A partial is only a preview: a broken one must not fail a generation still under way.
        None => tracing::warn!(index, "skipping an unusable partial image"),
    }
}
