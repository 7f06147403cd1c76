//! Server-sent events as an image API streams them.

use serde_json::Value;

/// One event: `event: NAME` and its JSON `data`, with the blank line that ends it.
pub fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// A `data:`-only event (no `event:` line), as some APIs send.
pub fn data(data: &Value) -> String {
    format!("data: {data}\n\n")
}
