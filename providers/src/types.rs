//! Requests and results shared by every provider.

use std::{fmt, str::FromStr};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ImageOptions;

/// An encoded image format a provider can return.
///
/// Read case-insensitively through [`FromStr`] (`jpg` is `jpeg`), so a bad name gets the
/// message that lists the good ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Lossless, supports transparency.
    Png,
    /// Lossy, opaque.
    Jpeg,
    /// Lossy or lossless, supports transparency.
    Webp,
    /// Animated (or still) palette image; GPT Image 2.6 returns animations as GIF.
    Gif,
    /// Vector markup written by a text model (GPT Image 2.6 `output_format = "svg"`).
    Svg,
}

impl ImageFormat {
    /// Every format, in preference order.
    pub const ALL: [ImageFormat; 5] = [Self::Png, Self::Jpeg, Self::Webp, Self::Gif, Self::Svg];

    /// The still raster formats every image model returns and every edit takes as input.
    pub const RASTER: [ImageFormat; 3] = [Self::Png, Self::Jpeg, Self::Webp];

    /// The name used in APIs and configuration (`png`, `jpeg`, `webp`, `gif`, `svg`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
            Self::Gif => "gif",
            Self::Svg => "svg",
        }
    }

    /// The MIME type of this format.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
            Self::Svg => "image/svg+xml",
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
            Self::Gif => "gif",
            Self::Svg => "svg",
        }
    }

    /// Whether a transparent background can be asked for in this format (the API allows
    /// it for png and webp only).
    pub fn supports_alpha(self) -> bool {
        matches!(self, Self::Png | Self::Webp)
    }

    /// Whether this is one of the [`RASTER`](Self::RASTER) formats.
    pub fn is_raster(self) -> bool {
        Self::RASTER.contains(&self)
    }

    /// Recognises a format from the first bytes of an encoded image; the echoed
    /// `output_format` of an answer is never trusted over this.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(Self::Gif)
        } else if looks_like_svg(bytes) {
            Some(Self::Svg)
        } else {
            None
        }
    }
}

/// Whether `bytes` start as SVG markup: `<svg`, or an XML declaration, comments or a doctype
/// followed by `<svg`, within the first few kilobytes (after an optional BOM and whitespace).
fn looks_like_svg(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(4096)];
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = head.iter().position(|b| !b.is_ascii_whitespace());
    let Some(head) = start.map(|i| &head[i..]) else {
        return false;
    };
    if head.starts_with(b"<svg") {
        return true;
    }
    (head.starts_with(b"<?xml") || head.starts_with(b"<!--") || head.starts_with(b"<!DOCTYPE"))
        && head.windows(4).any(|w| w == b"<svg")
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ImageFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for ImageFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(Self::Png),
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            "webp" => Ok(Self::Webp),
            "gif" => Ok(Self::Gif),
            "svg" => Ok(Self::Svg),
            other => Err(format!(
                "unknown output_format `{other}`; expected png, jpeg, webp, gif or svg"
            )),
        }
    }
}

/// One generation request, already merged with defaults and ready to send.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GenerateRequest {
    /// What to draw.
    pub prompt: String,
    /// The model to use (always set by the caller of the provider).
    pub model: String,
    /// How the images are asked for; unset options are not sent.
    pub options: ImageOptions,
}

impl GenerateRequest {
    /// A request for one image of `prompt` with `model`, everything else at its default.
    pub fn new(prompt: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            model: model.into(),
            options: ImageOptions::default(),
        }
    }

    /// How many images are asked for.
    pub fn n(&self) -> u32 {
        self.options.n()
    }
}

/// An encoded image sent to a provider: an edit's input or mask, or a variation's source.
///
/// The bytes are shared, not copied, so a request can be resent (a retry) without copying them.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct InputImage {
    /// The encoded image.
    pub bytes: Bytes,
    /// The encoding, which sets the content type the image is sent with.
    pub format: ImageFormat,
    /// The file name sent with the image, e.g. `image-1.png`.
    pub name: String,
}

impl InputImage {
    /// Wraps `bytes` known to be encoded as `format`, sent under the file name `name`.
    pub fn new(bytes: impl Into<Bytes>, format: ImageFormat, name: impl Into<String>) -> Self {
        Self {
            bytes: bytes.into(),
            format,
            name: name.into(),
        }
    }

    /// Wraps `bytes`, reading the format from them; an error names `name` and the first bytes.
    pub fn sniffed(
        bytes: impl Into<Bytes>,
        name: impl Into<String>,
    ) -> Result<Self, crate::ProviderError> {
        let (bytes, name) = (bytes.into(), name.into());
        match ImageFormat::sniff(&bytes) {
            Some(format) if format.is_raster() => Ok(Self {
                bytes,
                format,
                name,
            }),
            _ => Err(crate::ProviderError::invalid_param(
                "images",
                format!("`{name}` {}", crate::image_info::not_an_image(&bytes)),
            )),
        }
    }

    /// The MIME type the image is sent with.
    pub fn mime(&self) -> &'static str {
        self.format.mime()
    }
}

impl fmt::Debug for InputImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Like `GeneratedImage`: the length says enough, the bytes would flood a log.
        f.debug_struct("InputImage")
            .field("bytes", &self.bytes.len())
            .field("format", &self.format)
            .field("name", &self.name)
            .finish()
    }
}

/// One edit request: change `images` as `prompt` says, already merged with defaults.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EditRequest {
    /// What to change, or what the result should show.
    pub prompt: String,
    /// The model to use (always set by the caller of the provider).
    pub model: String,
    /// The images to edit or draw from, 1..=16 as the model allows; the first one is edited.
    pub images: Vec<InputImage>,
    /// A PNG the size of the first image whose transparent pixels mark where to change it.
    pub mask: Option<InputImage>,
    /// A transparent PNG the size of the first image holding only annotations (circles,
    /// arrows, notes) that the prompt explains (GPT Image 2.6).
    pub markup: Option<InputImage>,
    /// How the results are asked for, as for a generation; unset options are not sent.
    pub options: ImageOptions,
}

impl EditRequest {
    /// A request for one edit of `images` by `prompt` with `model`, everything else at its default.
    pub fn new(
        prompt: impl Into<String>,
        model: impl Into<String>,
        images: Vec<InputImage>,
    ) -> Self {
        Self {
            prompt: prompt.into(),
            model: model.into(),
            images,
            mask: None,
            markup: None,
            options: ImageOptions::default(),
        }
    }

    /// Takes the prompt, model and options of `generate`.
    pub fn with_generation(mut self, generate: GenerateRequest) -> Self {
        self.prompt = generate.prompt;
        self.model = generate.model;
        self.options = generate.options;
        self
    }

    /// The generation this edit shares its prompt, model and options with, so both are
    /// checked and sent alike.
    pub fn as_generation(&self) -> GenerateRequest {
        GenerateRequest {
            prompt: self.prompt.clone(),
            model: self.model.clone(),
            options: self.options.clone(),
        }
    }

    /// How many images are asked for.
    pub fn n(&self) -> u32 {
        self.options.n()
    }
}

/// One variation request: new images in the manner of `image` (dall-e-2 and compatible servers).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct VariationRequest {
    /// The model to use (always set by the caller of the provider).
    pub model: String,
    /// The source image.
    pub image: InputImage,
    /// `WxH`.
    pub size: Option<String>,
    /// How many images to make.
    pub n: u32,
    /// Provider-specific extras passed through verbatim.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl VariationRequest {
    /// A request for one variation of `image` with `model`, everything else at its default.
    pub fn new(model: impl Into<String>, image: InputImage) -> Self {
        Self {
            model: model.into(),
            image,
            size: None,
            n: 1,
            extra: serde_json::Map::new(),
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
    /// SHA-256 of `bytes`, when it was computed while they arrived.
    pub sha256: Option<[u8; 32]>,
    /// Frames of an animation (1 for a still image).
    pub frames: u32,
}

impl GeneratedImage {
    /// An image whose encoding and size the caller already knows (it encoded the bytes).
    pub fn new(bytes: Bytes, format: ImageFormat, width: u32, height: u32) -> Self {
        Self {
            bytes,
            format,
            width,
            height,
            sha256: None,
            frames: 1,
        }
    }

    /// Wraps encoded bytes, reading the format, dimensions and frame count from the bytes.
    pub fn from_encoded(bytes: Bytes) -> Result<Self, String> {
        let info = crate::image_info::probe(&bytes)?;
        let mut image = Self::new(bytes, info.format, info.width, info.height);
        image.frames = info.frames;
        Ok(image)
    }

    /// Records the frame count of an animation.
    pub fn with_frames(mut self, frames: u32) -> Self {
        self.frames = frames;
        self
    }

    /// Records the SHA-256 of `bytes` computed while they arrived, so nobody hashes them again.
    pub fn with_sha256(mut self, sha256: [u8; 32]) -> Self {
        self.sha256 = Some(sha256);
        self
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
            .field("frames", &self.frames)
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
    /// The parameters as they went upstream, prompt and images aside (a ratio mapped to a
    /// size, an alias resolved, an `extra` applied), so no mapping is silent.
    pub sent: serde_json::Map<String, serde_json::Value>,
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
            sent: serde_json::Map::new(),
        }
    }

    /// Records the parameters as sent, leaving the prompt out: it is the caller's own, and long.
    pub fn with_sent(mut self, mut sent: serde_json::Map<String, serde_json::Value>) -> Self {
        sent.remove("prompt");
        self.sent = sent;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_gives_image_lengths_not_bytes() {
        let image = InputImage::new(vec![0x89; 10_000], ImageFormat::Png, "image-1.png");
        let mut edit = EditRequest::new("a hat", "gpt-image-1.5", vec![image.clone()]);
        edit.mask = Some(image.clone());
        let text = format!("{edit:?} {:?}", VariationRequest::new("dall-e-2", image));
        assert!(text.contains("bytes: 10000"), "{text}");
        assert!(text.len() < 1_000, "{text}");
    }

    #[test]
    fn sniffed_inputs_read_their_format_or_name_what_they_are_not() {
        let png = Bytes::from_static(b"\x89PNG\r\n\x1a\n rest");
        let image = InputImage::sniffed(png, "a.png").unwrap();
        assert_eq!(
            (image.format, image.mime()),
            (ImageFormat::Png, "image/png")
        );
        let err = InputImage::sniffed(Bytes::from_static(b"%PDF-1.7"), "doc.pdf").unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::InvalidRequest);
        assert!(
            err.message.starts_with("`doc.pdf` is not a PNG"),
            "{}",
            err.message
        );
    }
}
