//! Requests and results shared by every provider.

use std::{fmt, str::FromStr};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// An encoded image format a provider can return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Lossless, supports transparency.
    Png,
    /// Lossy, opaque.
    #[serde(alias = "jpg")]
    Jpeg,
    /// Lossy or lossless, supports transparency.
    Webp,
}

impl ImageFormat {
    /// Every format, in preference order.
    pub const ALL: [ImageFormat; 3] = [Self::Png, Self::Jpeg, Self::Webp];

    /// The name used in APIs and configuration (`png`, `jpeg`, `webp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }

    /// The MIME type of this format.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }

    /// Whether the format can carry an alpha channel.
    pub fn supports_alpha(self) -> bool {
        !matches!(self, Self::Jpeg)
    }

    /// Recognises a format from the first bytes of an encoded image.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else {
            None
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(Self::Png),
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            "webp" => Ok(Self::Webp),
            other => Err(format!(
                "unknown output_format `{other}`; expected png, jpeg or webp"
            )),
        }
    }
}

/// One generation request, already merged with defaults and ready to send.
///
/// Optional fields left `None` are not sent, so the provider's own default applies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GenerateRequest {
    /// What to draw.
    pub prompt: String,
    /// The model to use (always set by the caller of the provider).
    pub model: String,
    /// `WxH`, or `auto`.
    pub size: Option<String>,
    /// `low`, `medium`, `high`, `auto`, `standard`, `hd`, ... as the model allows.
    pub quality: Option<String>,
    /// How many images to make.
    pub n: u32,
    /// The encoding of the returned images.
    pub output_format: Option<ImageFormat>,
    /// 0..=100 for JPEG and WebP.
    pub output_compression: Option<u8>,
    /// `transparent`, `opaque` or `auto`.
    pub background: Option<String>,
    /// `vivid` or `natural` (dall-e-3).
    pub style: Option<String>,
    /// `low` or `auto` (GPT image models).
    pub moderation: Option<String>,
    /// Seed for providers that support reproducible output.
    pub seed: Option<u64>,
    /// Stream the generation, sending this many partial images (0..=3) before the final one.
    pub partial_images: Option<u8>,
    /// Provider-specific extras passed through verbatim.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl GenerateRequest {
    /// A request for one image of `prompt` with `model`, everything else at its default.
    pub fn new(prompt: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            model: model.into(),
            n: 1,
            ..Self::default()
        }
    }
}

/// Token usage reported by the provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Prompt tokens (text and image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Generated image tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Both together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
    /// Anything else the provider reported, kept verbatim.
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// One generated image, encoded.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct GeneratedImage {
    /// The encoded image.
    pub bytes: Bytes,
    /// The encoding, read from the bytes themselves.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl GeneratedImage {
    /// Wraps encoded bytes, reading the format and dimensions from the image header.
    pub fn from_encoded(bytes: Bytes) -> Result<Self, String> {
        let info = crate::image_info::probe(&bytes)?;
        Ok(Self {
            bytes,
            format: info.format,
            width: info.width,
            height: info.height,
        })
    }

    /// The MIME type of the image.
    pub fn mime(&self) -> &'static str {
        self.format.mime()
    }
}

impl fmt::Debug for GeneratedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Megabytes of image bytes in a log line help no one.
        f.debug_struct("GeneratedImage")
            .field("bytes", &self.bytes.len())
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}

/// What a successful generation returns.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct GenerateResult {
    /// The images, in the provider's order.
    pub images: Vec<GeneratedImage>,
    /// The prompt as the provider rewrote it (dall-e-3), if it did.
    pub revised_prompt: Option<String>,
    /// Token usage, when reported.
    pub usage: Option<Usage>,
    /// The provider's request id.
    pub request_id: Option<String>,
    /// The model that served the request.
    pub model: String,
}

impl GenerateResult {
    /// A result holding `images` from `model`, with nothing else known.
    pub fn new(images: Vec<GeneratedImage>, model: impl Into<String>) -> Self {
        Self {
            images,
            revised_prompt: None,
            usage: None,
            request_id: None,
            model: model.into(),
        }
    }
}
