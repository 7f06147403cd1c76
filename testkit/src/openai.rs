//! Bodies in the OpenAI Images API's wire format, for fakes of it.

use serde_json::{json, Value};

use crate::{img, sse};

/// The streamed partial-image event's name.
pub const PARTIAL: &str = "image_generation.partial_image";
/// The streamed final-image event's name.
pub const COMPLETED: &str = "image_generation.completed";

/// The usage block every answer carries.
pub fn usage() -> Value {
    json!({"input_tokens": 10, "output_tokens": 100, "total_tokens": 110})
}

/// A successful JSON answer with one `b64_json` image per entry of `images`.
pub fn b64_body(images: &[Vec<u8>]) -> Value {
    let data: Vec<Value> = images
        .iter()
        .map(|bytes| json!({"b64_json": img::b64(bytes)}))
        .collect();
    json!({"created": 1, "data": data, "usage": usage()})
}

/// A successful JSON answer with `n` square blue PNGs `side` pixels wide.
pub fn ok_body(n: usize, side: u32) -> Value {
    b64_body(&vec![img::png(side, side); n])
}

/// A successful JSON answer with one `url` image per entry of `urls`.
pub fn url_body(urls: &[&str]) -> Value {
    let data: Vec<Value> = urls.iter().map(|url| json!({ "url": url })).collect();
    json!({"created": 1, "data": data, "usage": usage()})
}

/// An error body: `{"error": {"message", "type", "code"}}`.
pub fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "code": code}})
}

/// A content-policy refusal's body.
pub fn refusal_body() -> Value {
    error_body(
        "Your request was rejected as a result of our safety system.",
        "image_generation_user_error",
        "moderation_blocked",
    )
}

/// A streamed partial image (number `index`) of `bytes`.
pub fn partial_event(index: u32, bytes: &[u8]) -> String {
    sse::event(
        PARTIAL,
        &json!({"type": PARTIAL, "b64_json": img::b64(bytes), "partial_image_index": index}),
    )
}

/// The streamed final image of `bytes`, as a PNG of `size` (`WxH`).
pub fn completed_event(bytes: &[u8], size: &str) -> String {
    sse::event(
        COMPLETED,
        &json!({"type": COMPLETED, "b64_json": img::b64(bytes), "size": size,
               "output_format": "png",
               "usage": {"input_tokens": 12, "output_tokens": 340, "total_tokens": 352}}),
    )
}
