//! The request cache: an identical request returns the images already stored for it, without
//! calling (or paying) the provider.
//!
//! "Identical" is decided on what would go upstream: the provider kind, the operation, the
//! model, the prompt as sent, the checked options (defaults filled in, ratios mapped to sizes)
//! and the SHA-256 of every input image. The key is the SHA-256 of those, and its entry is a
//! small JSON object in the store (`cache/KEY.json`) naming the images, so every replica that
//! shares the store serves every other's hits. The images themselves are the stored ones: a
//! hit is only served when each is still there and visible to the caller.

use imagegen_providers::{ImageOptions, InputImage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::storage::{hex, is_valid_name, Viewer};

/// The entry format this build writes; an entry of another version is a miss.
const ENTRY_VERSION: u32 = 1;

/// The largest entry read back: far above any this server writes (a few hundred bytes per
/// image, at most 10 images a request).
pub const MAX_ENTRY_BYTES: u64 = 256 * 1024;

/// What makes two requests the same, before hashing.
#[derive(Serialize)]
struct KeyMaterial<'a> {
    version: u32,
    kind: &'a str,
    operation: &'a str,
    model: &'a str,
    prompt: &'a str,
    options: &'a ImageOptions,
    /// `role:sha256` of each input image, in order.
    inputs: Vec<String>,
    /// Over HTTP without a shared store each caller has their own entries, so a hit never
    /// shows one caller another's image.
    owner: Option<&'a str>,
}

/// One upstream request as the cache sees it.
pub struct Request<'a> {
    /// The provider's kind (`openai`, `mock`, ...): the same ask of another kind is another image.
    pub kind: &'a str,
    /// `generate`, `edit` or `variation`.
    pub operation: &'a str,
    /// The model the request goes to.
    pub model: &'a str,
    /// The prompt as sent.
    pub prompt: &'a str,
    /// The checked options as sent.
    pub options: &'a ImageOptions,
    /// The input images with their roles (`image`, `mask`, `markup`).
    pub inputs: Vec<(&'static str, &'a InputImage)>,
}

/// The hex key of `request` made for `viewer`.
pub fn key(request: &Request<'_>, viewer: &Viewer) -> String {
    let material = KeyMaterial {
        version: ENTRY_VERSION,
        kind: request.kind,
        operation: request.operation,
        model: request.model,
        prompt: request.prompt,
        options: request.options,
        inputs: request
            .inputs
            .iter()
            .map(|(role, image)| format!("{role}:{}", hex(&Sha256::digest(&image.bytes))))
            .collect(),
        owner: match viewer {
            Viewer::Everyone => None,
            Viewer::Caller(caller) => Some(caller),
        },
    };
    // Serialising a struct of strings and options cannot fail; an empty key would only miss.
    let json = serde_json::to_vec(&material).unwrap_or_default();
    hex(&Sha256::digest(json))
}

/// What the store keeps for one cached request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// [`ENTRY_VERSION`] when written.
    pub version: u32,
    /// The images the request made, by name, in order.
    pub images: Vec<String>,
    /// When the original call's images were stored, RFC 3339 in UTC.
    pub created: String,
    /// The original call's request id at the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The model that served the original call.
    pub model: String,
    /// The prompt as the provider rewrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
    /// The parameters as they went upstream.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub sent: serde_json::Map<String, serde_json::Value>,
}

impl Entry {
    /// The entry in `json` if it is one this build reads, names only image names, and is
    /// younger than `ttl_s` at `now`.
    pub fn parse(json: &[u8], ttl_s: u64, now: time::OffsetDateTime) -> Option<Self> {
        let entry: Self = serde_json::from_slice(json).ok()?;
        if entry.version != ENTRY_VERSION
            || entry.images.is_empty()
            || !entry.images.iter().all(|n| is_valid_name(n))
        {
            return None;
        }
        let created = time::OffsetDateTime::parse(
            &entry.created,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        let age = now - created;
        let ttl = time::Duration::seconds(i64::try_from(ttl_s).unwrap_or(i64::MAX));
        (age < ttl).then_some(entry)
    }

    /// A new entry for images `names` stored now.
    pub fn new(
        names: Vec<String>,
        model: String,
        request_id: Option<String>,
        revised_prompt: Option<String>,
        sent: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        let created = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            version: ENTRY_VERSION,
            images: names,
            created,
            request_id,
            model,
            revised_prompt,
            sent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagegen_providers::ImageFormat;

    fn request<'a>(prompt: &'a str, options: &'a ImageOptions) -> Request<'a> {
        Request {
            kind: "mock",
            operation: "generate",
            model: "mock-1",
            prompt,
            options,
            inputs: Vec::new(),
        }
    }

    #[test]
    fn the_key_follows_everything_sent_and_the_owner_but_nothing_else() {
        let mut options = ImageOptions::default();
        options.size = Some("1024x1024".into());
        let base = key(&request("a fox", &options), &Viewer::Everyone);
        assert_eq!(base.len(), 64);
        assert_eq!(base, key(&request("a fox", &options), &Viewer::Everyone));
        assert_ne!(base, key(&request("a fox!", &options), &Viewer::Everyone));
        let mut other = ImageOptions::default();
        other.size = Some("1024x1536".into());
        assert_ne!(base, key(&request("a fox", &other), &Viewer::Everyone));
        let mut kind = request("a fox", &options);
        kind.kind = "openai";
        assert_ne!(base, key(&kind, &Viewer::Everyone));
        let alice = key(&request("a fox", &options), &Viewer::Caller("alice".into()));
        assert_ne!(base, alice);
        assert_ne!(
            alice,
            key(&request("a fox", &options), &Viewer::Caller("bob".into()))
        );
        let (one, two) = (
            InputImage::new(vec![1, 2, 3], ImageFormat::Png, "image-1.png"),
            InputImage::new(vec![1, 2, 4], ImageFormat::Png, "image-1.png"),
        );
        let mut edit = request("a fox", &options);
        edit.inputs = vec![("image", &one)];
        let with_one = key(&edit, &Viewer::Everyone);
        edit.inputs = vec![("image", &two)];
        assert_ne!(with_one, key(&edit, &Viewer::Everyone));
        edit.inputs = vec![("mask", &one)];
        assert_ne!(with_one, key(&edit, &Viewer::Everyone));
    }

    #[test]
    fn entries_expire_and_hostile_ones_are_misses() {
        let entry = Entry::new(
            vec!["20261201-000000-a-fox-12345678.png".into()],
            "mock-1".into(),
            Some("req_1".into()),
            None,
            serde_json::Map::new(),
        );
        let json = serde_json::to_vec(&entry).unwrap();
        let now = time::OffsetDateTime::now_utc();
        assert_eq!(Entry::parse(&json, 60, now), Some(entry.clone()));
        let later = now + time::Duration::seconds(61);
        assert_eq!(Entry::parse(&json, 60, later), None, "expired");
        for hostile in [
            br#"{"version":1,"images":["../../etc/passwd"],"created":"2026-12-01T00:00:00Z","model":"m"}"#.as_slice(),
            br#"{"version":1,"images":[],"created":"2026-12-01T00:00:00Z","model":"m"}"#,
            br#"{"version":2,"images":["a.png"],"created":"2026-12-01T00:00:00Z","model":"m"}"#,
            br#"{"version":1,"images":["a.png"],"created":"yesterday","model":"m"}"#,
            b"not json",
        ] {
            assert_eq!(Entry::parse(hostile, u64::MAX, now), None);
        }
    }
}
