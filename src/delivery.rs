//! What a tool result carries: structured data for programs, and inline images that fit the
//! client's limits.
//!
//! Clients reject tool results over about 1 MB and some count base64 against a 25k-token
//! limit, while a 1024x1024 PNG is 1-3 MB. So the full image is saved and linked, and the
//! inline copy is a downscaled preview whose base64 keeps the whole result under
//! `output.preview_budget_bytes`.

use base64::Engine as _;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageEncoder};
use imagegen_providers::GeneratedImage;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{config::Delivery, engine::Generation, error::ToolError, storage::StoredImage};

/// The structured result of `generate_image` and of `generate --json`.
///
/// Both fields are always present so that a success and a failure validate against one schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GenerateOutput {
    /// The saved images (empty on failure).
    pub images: Vec<StoredImage>,
    /// The failure, or null on success.
    pub error: Option<ToolError>,
    /// The provider that served the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The model that served the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The model the call asked for, when another one served it (an alias, a replacement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_model: Option<String>,
    /// What the caller should know: a replacement model, a deprecation, parameters dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The prompt as the provider rewrote it, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
    /// Token usage as the provider reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<serde_json::Value>,
    /// The provider's request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Partial images streamed before the final one, as saved, in arrival order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partial_images: Vec<StoredImage>,
}

impl GenerateOutput {
    /// The output of a successful generation.
    pub fn success(g: &Generation) -> Self {
        Self {
            images: g.images.iter().map(|(s, _)| s.clone()).collect(),
            error: None,
            provider: Some(g.provider.clone()),
            model: Some(g.model.clone()),
            requested_model: g.requested_model.clone(),
            notes: g.notes.clone(),
            revised_prompt: g.revised_prompt.clone(),
            usage: g.usage.clone(),
            request_id: g.request_id.clone(),
            partial_images: g.partials.clone(),
        }
    }

    /// The output of a failed call.
    pub fn failure(error: ToolError) -> Self {
        Self {
            images: Vec::new(),
            provider: error.provider.clone(),
            model: error.model.clone(),
            request_id: error.request_id.clone(),
            error: Some(error),
            requested_model: None,
            notes: Vec::new(),
            revised_prompt: None,
            usage: None,
            partial_images: Vec::new(),
        }
    }
}

/// An image to put inline in a tool result.
#[derive(Debug, Clone, PartialEq)]
pub struct Inline {
    /// Base64 of the encoded image.
    pub base64: String,
    /// Its MIME type.
    pub mime: &'static str,
    /// Its width in pixels.
    pub width: u32,
    /// Its height in pixels.
    pub height: u32,
    /// True when this is the original image, not a preview.
    pub original: bool,
}

/// What goes inline for one image, and a note for the model about it.
#[derive(Debug, Clone, PartialEq)]
pub struct InlinePlan {
    /// The inline image, if any.
    pub inline: Option<Inline>,
    /// Why the inline image is what it is, when that needs saying.
    pub note: Option<String>,
}

/// Enough for a model to see what it made, at a third of the image tokens of 1024 px (and a
/// preview three times cheaper to resize and encode than at 768 px).
const PREVIEW_MAX_SIDE: u32 = 512;
const PREVIEW_MIN_SIDE: u32 = 32;

fn b64_len(raw: usize) -> usize {
    raw.div_ceil(3) * 4
}

/// The image at 8 bits a channel, with alpha only when some pixel is see-through: the two
/// layouts the encoders take, and JPEG when nothing needs alpha.
fn eight_bit(decoded: DynamicImage) -> DynamicImage {
    if !decoded.color().has_alpha() {
        return DynamicImage::ImageRgb8(decoded.into_rgb8());
    }
    let rgba = decoded.into_rgba8();
    match rgba.pixels().any(|p| p.0[3] < 255) {
        true => DynamicImage::ImageRgba8(rgba),
        false => DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(rgba).into_rgb8()),
    }
}

/// `image` scaled to fit `side` x `side`, keeping its aspect ratio.
fn shrink(resizer: &mut Resizer, image: &DynamicImage, side: u32) -> Result<DynamicImage, String> {
    let scale = f64::from(side) / f64::from(image.width().max(image.height()));
    let fit = |n: u32| ((f64::from(n) * scale).round() as u32).clamp(1, side);
    let mut small = DynamicImage::new(fit(image.width()), fit(image.height()), image.color());
    // SIMD convolution: a fifteenth of the time of `DynamicImage::thumbnail` at 1024 -> 512.
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    resizer
        .resize(image, &mut small, &options)
        .map_err(|e| format!("could not resize the image for a preview: {e}"))?;
    Ok(small)
}

/// Encodes a preview: JPEG, or PNG when it has see-through pixels.
fn encode(small: &DynamicImage, quality: u8) -> Result<Vec<u8>, String> {
    let (w, h) = (small.width(), small.height());
    let mut out = Vec::new();
    let encoded = match small {
        DynamicImage::ImageRgba8(rgba) => image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Best,
            image::codecs::png::FilterType::Adaptive,
        )
        .write_image(rgba.as_raw(), w, h, image::ExtendedColorType::Rgba8)
        .map_err(|e| e.to_string()),
        // A SIMD encoder: a quarter of the time of `image`'s JPEG encoder, and smaller files.
        rgb => {
            let (w, h) = (u16::try_from(w), u16::try_from(h));
            let (Ok(w), Ok(h)) = (w, h) else {
                return Err("the preview is too large for JPEG".into());
            };
            jpeg_encoder::Encoder::new(&mut out, quality)
                .encode(rgb.as_bytes(), w, h, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| e.to_string())
        }
    };
    encoded.map_err(|e| format!("could not encode a preview: {e}"))?;
    Ok(out)
}

/// Encodes a downscaled copy of `image` whose base64 fits in `budget` bytes.
pub fn preview(image: &GeneratedImage, budget: usize) -> Result<Inline, String> {
    let decoded = image::load_from_memory(&image.bytes)
        .map_err(|e| format!("could not decode the image for a preview: {e}"))?;
    let decoded = eight_bit(decoded);
    let alpha = decoded.color().has_alpha();
    let mut resizer = Resizer::new();
    let mut side = PREVIEW_MAX_SIDE.min(decoded.width().max(decoded.height()));
    let mut quality = 80u8;
    while side >= PREVIEW_MIN_SIDE {
        let small = shrink(&mut resizer, &decoded, side)?;
        let bytes = encode(&small, quality)?;
        if b64_len(bytes.len()) <= budget {
            return Ok(Inline {
                base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
                mime: if alpha { "image/png" } else { "image/jpeg" },
                width: small.width(),
                height: small.height(),
                original: false,
            });
        }
        // Shrink by the area ratio needed, with a margin so most images fit on the next try.
        let ratio = (budget as f64 / b64_len(bytes.len()) as f64).sqrt() * 0.9;
        side = ((side as f64) * ratio.min(0.9)) as u32;
        quality = quality.saturating_sub(10).max(50);
    }
    Err(format!(
        "the inline budget of {budget} bytes is too small for even a {PREVIEW_MIN_SIDE}px preview"
    ))
}

/// Decides what to inline for each image so all of them together fit `budget` bytes of base64.
pub fn plan_inline(images: &[&GeneratedImage], mode: Delivery, budget: usize) -> Vec<InlinePlan> {
    if mode == Delivery::Link || images.is_empty() {
        return images
            .iter()
            .map(|_| InlinePlan {
                inline: None,
                note: None,
            })
            .collect();
    }
    let each = budget / images.len();
    images
        .iter()
        .map(|img| {
            let original_len = b64_len(img.bytes.len());
            let original = || Inline {
                base64: base64::engine::general_purpose::STANDARD.encode(&img.bytes),
                mime: img.mime(),
                width: img.width,
                height: img.height,
                original: true,
            };
            let fits = original_len <= each;
            if fits && (mode == Delivery::Full || img.width.max(img.height) <= PREVIEW_MAX_SIDE) {
                return InlinePlan { inline: Some(original()), note: None };
            }
            let why_not_full = (mode == Delivery::Full).then(|| {
                format!(
                    "the full image ({original_len} bytes as base64) exceeds the inline budget of {each} bytes, so a preview is shown instead"
                )
            });
            match preview(img, each) {
                // Flat artwork often compresses better as the original than as a smaller JPEG.
                Ok(p) if fits && p.base64.len() >= original_len => InlinePlan { inline: Some(original()), note: None },
                Ok(p) => InlinePlan { inline: Some(p), note: why_not_full },
                Err(e) => InlinePlan { inline: None, note: Some(e) },
            }
        })
        .collect()
}

/// The sentence telling the model what it is looking at for one image.
pub fn describe(index: usize, count: usize, stored: &StoredImage, plan: &InlinePlan) -> String {
    let mut text = format!(
        "Image {} of {count}: {}x{} {} ({} bytes) saved to {}. Full image: {} (read it with resources/read).",
        index + 1,
        stored.width,
        stored.height,
        stored.mime,
        stored.bytes,
        stored.path.display(),
        stored.uri,
    );
    match &plan.inline {
        Some(i) if i.original => text.push_str(" Shown inline at full size."),
        Some(i) => text.push_str(&format!(
            " Shown inline as a {}x{} {} preview; the saved file is the full-resolution original.",
            i.width, i.height, i.mime
        )),
        None => {}
    }
    if let Some(note) = &plan.note {
        text.push_str(&format!(" Note: {note}."));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use imagegen_providers::{
        mock::{MockProvider, MockSettings, MOCK_MODEL},
        GenerateRequest, ImageProvider,
    };

    async fn images(n: u32, size: &str, background: Option<&str>) -> Vec<GeneratedImage> {
        let mut r = GenerateRequest::new("budget test", MOCK_MODEL);
        r.n = n;
        r.size = Some(size.into());
        r.background = background.map(str::to_owned);
        MockProvider::new(MockSettings::default())
            .generate(&r)
            .await
            .unwrap()
            .images
    }

    fn total(plans: &[InlinePlan]) -> usize {
        plans
            .iter()
            .filter_map(|p| p.inline.as_ref())
            .map(|i| i.base64.len())
            .sum()
    }

    #[tokio::test]
    async fn previews_fit_the_budget_together() {
        let imgs = images(4, "1536x1024", None).await;
        let refs: Vec<_> = imgs.iter().collect();
        let plans = plan_inline(&refs, Delivery::Preview, 80_000);
        for p in &plans {
            let inline = p
                .inline
                .as_ref()
                .unwrap_or_else(|| panic!("no preview: {:?}", p.note));
            assert_eq!((inline.mime, inline.original), ("image/jpeg", false));
        }
        assert!(total(&plans) <= 80_000, "{}", total(&plans));
        let first = plans[0].inline.as_ref().unwrap();
        let ratio = first.width as f64 / first.height as f64;
        assert!((ratio - 1.5).abs() < 0.02, "aspect ratio kept: {ratio}");
    }

    #[tokio::test]
    async fn transparent_images_preview_as_png() {
        let imgs = images(1, "512x512", Some("transparent")).await;
        let plans = plan_inline(&[&imgs[0]], Delivery::Preview, 80_000);
        assert_eq!(plans[0].inline.as_ref().unwrap().mime, "image/png");
    }

    #[tokio::test]
    async fn full_mode_inlines_originals_that_fit_and_explains_otherwise() {
        let small = images(1, "64x64", None).await;
        let plan = &plan_inline(&[&small[0]], Delivery::Full, 80_000)[0];
        let inline = plan.inline.as_ref().unwrap();
        assert!(inline.original);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&inline.base64)
                .unwrap(),
            small[0].bytes.to_vec()
        );
        let big = images(1, "1024x1024", None).await;
        let budget = b64_len(big[0].bytes.len()) - 1;
        let plan = &plan_inline(&[&big[0]], Delivery::Full, budget)[0];
        assert!(!plan.inline.as_ref().unwrap().original);
        assert!(plan.note.as_ref().unwrap().contains("exceeds"));
    }

    #[tokio::test]
    async fn an_original_smaller_than_its_preview_is_sent_instead() {
        let imgs = images(1, "1024x1024", None).await;
        let plan = &plan_inline(&[&imgs[0]], Delivery::Preview, 1_000_000)[0];
        let inline = plan.inline.as_ref().unwrap();
        let preview = preview(&imgs[0], 1_000_000).unwrap();
        assert_eq!(
            inline.original,
            b64_len(imgs[0].bytes.len()) <= preview.base64.len()
        );
        assert!(inline.base64.len() <= preview.base64.len());
    }

    #[test]
    fn link_mode_inlines_nothing_and_a_tiny_budget_says_why() {
        let img = GeneratedImage::from_encoded(Bytes::from_static(include_bytes!(
            "../tests/data/pixel.png"
        )))
        .unwrap();
        assert!(plan_inline(&[&img], Delivery::Link, 80_000)[0]
            .inline
            .is_none());
        let plan = &plan_inline(&[&img], Delivery::Preview, 10)[0];
        assert!(plan.inline.is_none());
        assert!(plan.note.as_ref().unwrap().contains("too small"));
    }
}
