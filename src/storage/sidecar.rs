//! The JSON sidecar stored next to every image: how it was made, so history search, the cache
//! and the gallery never depend on the image file itself (whose bytes stay the provider's).

use imagegen_providers::Usage;
use serde::{Deserialize, Serialize};

/// The sidecar format this build writes; readers accept any version up to it.
pub const SIDECAR_VERSION: u32 = 1;

/// The suffix that turns an image name into its sidecar's name (`NAME.json`).
pub const SIDECAR_SUFFIX: &str = ".json";

/// Everything known about one stored image, kept in `NAME.json` beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// [`SIDECAR_VERSION`] when written.
    pub version: u32,
    /// The image's name in the store (`imagegen://images/{name}`).
    pub name: String,
    /// MIME type of the image.
    pub mime: String,
    /// Size of the image in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the stored image: the provider's bytes, unchanged, unless
    /// `output.embed_metadata` wrote into them (then `upstream_sha256` is the provider's).
    pub sha256: String,
    /// Hex SHA-256 of the provider's bytes, only when the stored file differs from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_sha256: Option<String>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames of an animation; absent for a still image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u32>,
    /// When it was stored, RFC 3339 in UTC.
    pub created: String,
    /// Who made it: the HTTP caller (token name or OAuth subject); absent over stdio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The tool or command that made it (`generate_image`, `edit_image`, `batch`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// The prompt as the caller gave it.
    #[serde(default)]
    pub prompt: String,
    /// The prompt as sent upstream, when it differs from `prompt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_sent: Option<String>,
    /// The prompt preset the call named, whose template made `prompt_sent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The prompt as the provider rewrote it, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
    /// The provider's configured name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The model that served the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The parameters exactly as sent upstream, prompt and images aside.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Token usage, when the provider reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The provider's request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// URIs (or file names) of the input images of an edit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// What the server did or skipped that a reader should know (metadata not embedded, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The `filename` the caller asked for (at most 200 characters of it), when it asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename_requested: Option<String>,
}

/// The name of the sidecar of image `name`.
pub fn sidecar_name(name: &str) -> String {
    format!("{name}{SIDECAR_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_sidecar_reads_and_optional_fields_stay_out_of_the_file() {
        let json = r#"{"version":1,"name":"a.png","mime":"image/png","bytes":3,
            "sha256":"ab","width":1,"height":1,"created":"2026-12-01T00:00:00Z"}"#;
        let sidecar: Sidecar = serde_json::from_str(json).unwrap();
        assert_eq!(sidecar.prompt, "");
        assert_eq!(sidecar_name(&sidecar.name), "a.png.json");
        let written = serde_json::to_string(&sidecar).unwrap();
        for absent in [
            "caller",
            "usage",
            "inputs",
            "params",
            "frames",
            "upstream_sha256",
        ] {
            assert!(!written.contains(absent), "{absent} in {written}");
        }
    }
}
