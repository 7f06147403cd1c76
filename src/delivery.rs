//! What a tool result carries: structured data for programs, and inline images that fit the
//! client's limits.
//!
//! Clients reject tool results over about 1 MB and some count base64 against a 25k-token
//! limit, while a 1024x1024 PNG is 1-3 MB. So the full image is saved and linked, and the
//! inline copy is a downscaled preview whose base64 keeps the whole result under
//! `output.preview_budget_bytes`.
//!
//! An animated GIF is previewed by its first frame. An SVG is never inlined as itself, since
//! clients show raster images only: its preview is a PNG rendering made by resvg with nothing
//! loaded from outside the markup (see [`render_svg`]).

use std::io::Cursor;

use base64::Engine as _;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageEncoder};
use imagegen_providers::{GeneratedImage, ImageFormat};
use resvg::{tiny_skia, usvg};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cost::CallCost;
use crate::routing::RouteStep;
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
    /// The prompt as the call gave it (absent for a variation, which has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The prompt exactly as it went upstream, after the preset's template: equal to
    /// `prompt` when the server changed nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_sent: Option<String>,
    /// The prompt as the provider rewrote it, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
    /// The prompt preset the call named; `notes` says what it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Token usage as the provider reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<serde_json::Value>,
    /// The provider's request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Partial images streamed before the final one, as saved, in arrival order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partial_images: Vec<StoredImage>,
    /// The parameters as they went upstream (prompt and images aside): a ratio mapped to a
    /// size, an alias resolved, so that no mapping is silent.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub sent: serde_json::Map<String, serde_json::Value>,
    /// For a call that moved between providers: each provider asked or skipped, in order, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteStep>,
    /// True when the images came from the cache: no provider was called and nothing was
    /// billed; `request_id` and `original_created` are then the original call's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// For a cache hit: when the original call stored the images (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_created: Option<String>,
    /// What the call cost: `usd` (`null` when the model has no known price), `basis`
    /// (`usage` or `estimate`), `note`, and `estimate_usd`, the estimate made before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CallCost>,
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
            prompt: g.prompt_sent.as_ref().map(|_| g.prompt.clone()),
            prompt_sent: g.prompt_sent.clone(),
            revised_prompt: g.revised_prompt.clone(),
            preset: g.preset.clone(),
            usage: g.usage.clone(),
            request_id: g.request_id.clone(),
            partial_images: g.partials.clone(),
            sent: g.sent.clone(),
            route: g.route.clone(),
            cached: g.cached.is_some(),
            original_created: g.cached.clone(),
            cost: g.cost.clone(),
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
            prompt: None,
            prompt_sent: None,
            revised_prompt: None,
            preset: None,
            usage: None,
            partial_images: Vec::new(),
            sent: serde_json::Map::new(),
            route: Vec::new(),
            cached: false,
            original_created: None,
            cost: None,
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

/// The most pixels decoded for a preview: above the largest image any model in the catalog
/// makes (3840x2160, or the mock's 4096x4096). A header may claim anything, and a 0.5 MB PNG
/// of 11000x11000 decodes to half a gigabyte; such an image is saved and linked, not previewed.
const MAX_DECODE_PIXELS: u64 = 4096 * 4096;
/// The most memory a preview's decoder may take: that many pixels at 16 bits a channel.
const MAX_DECODE_ALLOC: u64 = MAX_DECODE_PIXELS * 8;

/// The decoder limits of every preview.
fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    limits
}

/// The most SVG markup rendered for a preview; a model's drawing is a few hundred kilobytes.
const MAX_SVG_BYTES: usize = 8 * 1024 * 1024;

/// The first frame of a GIF, decoded within the limits above; later frames are never read.
fn first_gif_frame(bytes: &[u8]) -> Result<DynamicImage, String> {
    use image::{AnimationDecoder as _, ImageDecoder as _};
    let unreadable = |e: image::ImageError| format!("could not decode the GIF for a preview: {e}");
    let mut decoder =
        image::codecs::gif::GifDecoder::new(Cursor::new(bytes)).map_err(unreadable)?;
    decoder.set_limits(decode_limits()).map_err(unreadable)?;
    let frame = decoder
        .into_frames()
        .next()
        .ok_or("could not decode the GIF for a preview: it has no frames")?
        .map_err(unreadable)?;
    Ok(DynamicImage::ImageRgba8(frame.into_buffer()))
}

/// Renders SVG markup to RGBA with its longer side `side` pixels.
///
/// The markup comes from a model and may be hostile, so nothing outside it is loaded: no
/// resource directory, and `<image>` references resolve to nothing, whether paths, `file:`
/// or `http:` URLs, or embedded `data:` images (so those parts are left empty; decoding an
/// embedded image of unchecked size is how a small file asks for gigabytes). resvg never runs
/// scripts or fetches stylesheets, and is built without text support, so no system fonts are
/// read and text is not drawn in previews. The XML parser refuses entity-expansion bombs, and
/// the input and raster sizes are bounded.
pub fn render_svg(bytes: &[u8], side: u32) -> Result<DynamicImage, String> {
    if bytes.len() > MAX_SVG_BYTES {
        return Err(format!(
            "the SVG is {} bytes, over the {MAX_SVG_BYTES} bytes a preview renders",
            bytes.len()
        ));
    }
    let tree = usvg::Tree::from_data(bytes, &svg_options())
        .map_err(|e| format!("could not read the SVG for a preview: {e}"))?;
    let size = tree.size();
    let scale = side as f32 / size.width().max(size.height());
    let fit = |n: f32| ((n * scale).round() as u32).clamp(1, side);
    let (width, height) = (fit(size.width()), fit(size.height()));
    let mut pixmap = tiny_skia::Pixmap::new(width, height)
        .ok_or("could not render the SVG for a preview: no raster of that size")?;
    let transform = tiny_skia::Transform::from_scale(
        width as f32 / size.width(),
        height as f32 / size.height(),
    );
    resvg::render(&tree, transform, &mut pixmap.as_mut());
    image::RgbaImage::from_raw(width, height, pixmap.take_demultiplied())
        .map(DynamicImage::ImageRgba8)
        .ok_or_else(|| "could not render the SVG for a preview".to_string())
}

/// How previews parse SVG: no resource directory, and every `<image>` reference, path, URL or
/// `data:`, resolved to nothing.
fn svg_options() -> usvg::Options<'static> {
    usvg::Options {
        resources_dir: None,
        image_href_resolver: usvg::ImageHrefResolver {
            resolve_data: Box::new(|_, _, _| None),
            resolve_string: Box::new(|_, _| None),
        },
        ..usvg::Options::default()
    }
}

/// The pixels a preview is made from: the image itself, a GIF's first frame, or an SVG's
/// rendering (kept RGBA, so its preview is a PNG with crisp edges, not a JPEG).
fn preview_source(image: &GeneratedImage) -> Result<DynamicImage, String> {
    let pixels = u64::from(image.width) * u64::from(image.height);
    if image.format != ImageFormat::Svg && pixels > MAX_DECODE_PIXELS {
        return Err(format!(
            "no preview: the image is {}x{}, more pixels than previews decode ({MAX_DECODE_PIXELS}); the saved file is complete",
            image.width, image.height
        ));
    }
    let unreadable =
        |e: image::ImageError| format!("could not decode the image for a preview: {e}");
    match image.format {
        ImageFormat::Svg => render_svg(&image.bytes, PREVIEW_MAX_SIDE),
        ImageFormat::Gif => first_gif_frame(&image.bytes).map(eight_bit),
        _ => {
            let mut reader = image::ImageReader::new(Cursor::new(&image.bytes[..]))
                .with_guessed_format()
                .map_err(|e| format!("could not decode the image for a preview: {e}"))?;
            reader.limits(decode_limits());
            reader.decode().map(eight_bit).map_err(unreadable)
        }
    }
}

/// Encodes a downscaled copy of `image` whose base64 fits in `budget` bytes.
pub fn preview(image: &GeneratedImage, budget: usize) -> Result<Inline, String> {
    let decoded = preview_source(image)?;
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

/// A thumbnail of `image` with its longer side at most `side` pixels (never enlarged): its
/// bytes and MIME type (JPEG, or PNG for see-through pixels), for the gallery's tiles.
pub fn thumbnail(image: &GeneratedImage, side: u32) -> Result<(Vec<u8>, &'static str), String> {
    let decoded = preview_source(image)?;
    let alpha = decoded.color().has_alpha();
    let side = side.clamp(PREVIEW_MIN_SIDE, PREVIEW_MAX_SIDE);
    let small = if decoded.width().max(decoded.height()) > side {
        shrink(&mut Resizer::new(), &decoded, side)?
    } else {
        decoded
    };
    let bytes = encode(&small, 80)?;
    Ok((bytes, if alpha { "image/png" } else { "image/jpeg" }))
}

/// What the model should know about `image` beyond its pixels: that it is animated or vector,
/// and what that means for what it is shown (`preview` true when a preview is shown).
fn kind_note(image: &GeneratedImage, preview: bool) -> Option<String> {
    match image.format {
        ImageFormat::Svg => Some(
            "vector image (SVG); the preview is a raster rendering, the saved file is the full vector image"
                .into(),
        ),
        _ if image.frames > 1 && preview => Some(format!(
            "animated, {} frames; the preview shows the first frame",
            image.frames
        )),
        _ if image.frames > 1 => Some(format!("animated, {} frames", image.frames)),
        _ => None,
    }
}

/// Notes joined into one, or none.
fn notes(parts: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    let parts: Vec<String> = parts.into_iter().flatten().collect();
    (!parts.is_empty()).then(|| parts.join("; "))
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
            // Clients show raster images only, so an SVG is always shown as a rendering.
            let vector = img.format == ImageFormat::Svg;
            let fits = original_len <= each && !vector;
            let as_original = || InlinePlan {
                inline: Some(original()),
                note: kind_note(img, false),
            };
            if fits && (mode == Delivery::Full || img.width.max(img.height) <= PREVIEW_MAX_SIDE) {
                return as_original();
            }
            let why_not_full = (mode == Delivery::Full && !vector).then(|| {
                format!(
                    "the full image ({original_len} bytes as base64) exceeds the inline budget of {each} bytes, so a preview is shown instead"
                )
            });
            match preview(img, each) {
                // Flat artwork often compresses better as the original than as a smaller JPEG.
                Ok(p) if fits && p.base64.len() >= original_len => as_original(),
                Ok(p) => InlinePlan {
                    inline: Some(p),
                    note: notes([why_not_full, kind_note(img, true)]),
                },
                Err(e) => InlinePlan {
                    inline: None,
                    note: notes([Some(e), kind_note(img, false)]),
                },
            }
        })
        .collect()
}

/// The sentence telling the model what it is looking at for one image.
pub fn describe(index: usize, count: usize, stored: &StoredImage, plan: &InlinePlan) -> String {
    let kind = match stored.frames {
        Some(frames) => format!(" animated with {frames} frames"),
        None if stored.mime == ImageFormat::Svg.mime() => " vector image".into(),
        None => String::new(),
    };
    // Only the local store has a path worth telling; an object store's key is no path.
    let place = match &stored.path {
        Some(path) => format!("saved to {}", path.display()),
        None => "stored".to_string(),
    };
    let mut text = format!(
        "Image {} of {count}: {}x{} {}{kind} ({} bytes) {place}. Full image: {} (read it with resources/read).",
        index + 1,
        stored.width,
        stored.height,
        stored.mime,
        stored.bytes,
        stored.uri,
    );
    match &plan.inline {
        Some(i) if i.original => text.push_str(" Shown inline at full size."),
        Some(i) if stored.mime == ImageFormat::Svg.mime() => text.push_str(&format!(
            " Shown inline as a {}x{} {} rendering; the saved file is the vector original.",
            i.width, i.height, i.mime
        )),
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
    use imagegen_providers::{build::stand_in, GenerateRequest, ImageProviderExt};
    use std::io::Cursor;

    async fn images(n: u32, size: &str, background: Option<&str>) -> Vec<GeneratedImage> {
        let mut r = GenerateRequest::new("budget test", "mock-image-1");
        r.options.n = Some(n);
        r.options.size = Some(size.into());
        r.options.background = background.map(str::to_owned);
        stand_in().generate(&r).await.unwrap().images
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

    /// A real 1x1 PNG whose header claims `width`x`height`: what a decompression bomb's header
    /// looks like, without the half-gigabyte of pixels.
    fn claimed_png(width: u32, height: u32) -> Bytes {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = 0xFFFF_FFFFu32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let mut png = Vec::new();
        image::DynamicImage::ImageRgba8(image::RgbaImage::new(1, 1))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        // IHDR's data sits at bytes 16..29, its CRC (over type and data) at 29..33.
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(png)
    }

    #[test]
    fn a_huge_image_is_saved_and_linked_but_not_decoded_for_a_preview() {
        let bomb = GeneratedImage::from_encoded(claimed_png(11_000, 11_000)).unwrap();
        assert_eq!((bomb.width, bomb.height), (11_000, 11_000));
        let plan = &plan_inline(&[&bomb], Delivery::Preview, 80_000)[0];
        assert!(plan.inline.is_none());
        let note = plan.note.as_deref().unwrap();
        assert!(
            note.contains("11000x11000") && note.contains("saved file is complete"),
            "{note}"
        );
        // Under the pixel cap, the decoder's memory limit still holds a lying header to account.
        let liar = GeneratedImage::from_encoded(claimed_png(4096, 4096)).unwrap();
        let plan = &plan_inline(&[&liar], Delivery::Preview, 80_000)[0];
        assert!(plan.inline.is_none() && plan.note.is_some());
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

    async fn made(format: ImageFormat, size: &str, frames: Option<u32>) -> GeneratedImage {
        let mut r = GenerateRequest::new("media test", "mock-image-1");
        r.options.size = Some(size.into());
        r.options.output_format = Some(format);
        r.options.frame_count = frames;
        stand_in().generate(&r).await.unwrap().images.remove(0)
    }

    fn decode_inline(inline: &Inline) -> image::RgbaImage {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&inline.base64)
            .unwrap();
        image::load_from_memory(&bytes).unwrap().into_rgba8()
    }

    /// The mean absolute difference per channel of two images of one size.
    fn distance(a: &image::RgbaImage, b: &image::RgbaImage) -> f64 {
        assert_eq!(a.dimensions(), b.dimensions());
        let sum: u64 = a
            .pixels()
            .zip(b.pixels())
            .map(|(p, q)| {
                (0..3)
                    .map(|c| u64::from(p.0[c].abs_diff(q.0[c])))
                    .sum::<u64>()
            })
            .sum();
        sum as f64 / (a.width() * a.height() * 3) as f64
    }

    fn gif_frames(bytes: &[u8]) -> Vec<image::RgbaImage> {
        use image::AnimationDecoder as _;
        image::codecs::gif::GifDecoder::new(Cursor::new(bytes))
            .unwrap()
            .into_frames()
            .map(|f| f.unwrap().into_buffer())
            .collect()
    }

    #[tokio::test]
    async fn a_gif_previews_as_its_first_frame_and_says_it_is_animated() {
        let gif = made(ImageFormat::Gif, "768x512", Some(3)).await;
        let plan = &plan_inline(&[&gif], Delivery::Preview, 200_000)[0];
        let inline = plan.inline.as_ref().unwrap();
        assert!(!inline.original);
        assert_eq!(
            (inline.width, inline.height, inline.mime),
            (512, 341, "image/jpeg")
        );
        let note = plan.note.as_deref().unwrap();
        assert_eq!(
            note,
            "animated, 3 frames; the preview shows the first frame"
        );
        let shown = decode_inline(inline);
        let frames = gif_frames(&gif.bytes);
        let scaled = |f: &image::RgbaImage| {
            image::imageops::resize(f, 512, 341, image::imageops::FilterType::Triangle)
        };
        let (first, second) = (
            distance(&shown, &scaled(&frames[0])),
            distance(&shown, &scaled(&frames[1])),
        );
        assert!(
            first < 6.0 && first * 2.0 < second,
            "first frame {first}, second {second}"
        );
        let stored = StoredImage {
            name: "x.gif".into(),
            path: Some("/tmp/x.gif".into()),
            uri: "imagegen://images/x.gif".into(),
            mime: "image/gif".into(),
            width: 768,
            height: 512,
            bytes: gif.bytes.len() as u64,
            sha256: String::new(),
            frames: Some(3),
        };
        let text = describe(0, 1, &stored, plan);
        assert!(text.contains("image/gif animated with 3 frames"), "{text}");
        assert!(text.contains("the preview shows the first frame"), "{text}");
    }

    #[tokio::test]
    async fn full_mode_inlines_a_gif_that_fits_as_itself() {
        let gif = made(ImageFormat::Gif, "64x64", Some(3)).await;
        let plan = &plan_inline(&[&gif], Delivery::Full, 200_000)[0];
        let inline = plan.inline.as_ref().unwrap();
        assert_eq!((inline.original, inline.mime), (true, "image/gif"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&inline.base64)
            .unwrap();
        assert_eq!(bytes, gif.bytes.to_vec());
        assert_eq!(plan.note.as_deref(), Some("animated, 3 frames"));
    }

    #[tokio::test]
    async fn an_svg_previews_as_a_png_rendering_of_the_same_picture_never_as_itself() {
        let svg = made(ImageFormat::Svg, "512x320", None).await;
        let png = made(ImageFormat::Png, "512x320", None).await;
        for mode in [Delivery::Preview, Delivery::Full] {
            let plan = &plan_inline(&[&svg], mode, 1_000_000)[0];
            let inline = plan.inline.as_ref().unwrap();
            assert_eq!(
                (inline.original, inline.mime, inline.width, inline.height),
                (false, "image/png", 512, 320),
                "{mode:?}"
            );
            assert_eq!(
                plan.note.as_deref(),
                Some("vector image (SVG); the preview is a raster rendering, the saved file is the full vector image")
            );
            // resvg draws the mock's markup as the mock draws its pixels, edges aside.
            let raster = image::load_from_memory(&png.bytes).unwrap().into_rgba8();
            let shown = decode_inline(inline);
            let close = shown
                .pixels()
                .zip(raster.pixels())
                .filter(|(a, b)| (0..3).all(|c| a.0[c].abs_diff(b.0[c]) <= 8))
                .count();
            assert!(close > 512 * 320 * 95 / 100, "{close} pixels alike");
        }
        // A small SVG is still rendered at the preview size: vectors scale for free.
        let icon = made(ImageFormat::Svg, "64x32", None).await;
        let inline = preview(&icon, 1_000_000).unwrap();
        assert_eq!((inline.width, inline.height), (512, 256));
    }

    #[test]
    fn a_hostile_svg_is_previewed_without_loading_anything_it_points_at() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let red = dir.path().join("red.png");
        image::RgbaImage::from_pixel(16, 16, image::Rgba([255, 0, 0, 255]))
            .save(&red)
            .unwrap();
        let red = red.display().to_string();
        let red_data =
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(&red).unwrap());
        let markup = format!(
            r##"<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="100" height="100">
  <rect width="100" height="100" fill="#0000ff"/>
  <image href="http://127.0.0.1:{port}/x.png" x="0" y="0" width="50" height="50"/>
  <image xlink:href="{red}" x="50" y="0" width="50" height="50"/>
  <image href="file://{red}" x="0" y="50" width="50" height="50"/>
  <image href="red.png" x="25" y="25" width="50" height="50"/>
  <image href="data:image/png;base64,{red_data}" x="50" y="50" width="50" height="50"/>
  <use href="http://127.0.0.1:{port}/defs.svg#shape"/>
  <style>@import url("http://127.0.0.1:{port}/style.css");</style>
  <script>fetch("http://127.0.0.1:{port}/script")</script>
  <text x="10" y="90" font-size="40" fill="red">text needs fonts</text>
</svg>"##
        );
        let svg = GeneratedImage::new(Bytes::from(markup), ImageFormat::Svg, 100, 100);
        let inline = preview(&svg, 1_000_000).unwrap();
        let shown = decode_inline(&inline);
        assert_eq!(shown.dimensions(), (512, 512));
        let reddish = shown
            .pixels()
            .filter(|p| p.0[0] > 128 && p.0[1] < 100 && p.0[2] < 100)
            .count();
        assert_eq!(reddish, 0, "no referenced image or text was drawn");
        assert!(
            shown.pixels().all(|p| p.0[2] > 200),
            "the blue rectangle is all there is"
        );
        // The references were real: usvg's default resolver would have loaded them.
        let ours = svg_options();
        let default = usvg::Options::default();
        let data = std::sync::Arc::new(std::fs::read(&red).unwrap());
        assert!((default.image_href_resolver.resolve_string)(&red, &default).is_some());
        assert!(
            (default.image_href_resolver.resolve_data)("image/png", data.clone(), &default)
                .is_some()
        );
        assert!((ours.image_href_resolver.resolve_string)(&red, &ours).is_none());
        assert!((ours.image_href_resolver.resolve_data)("image/png", data, &ours).is_none());
        // An external entity is refused by the parser, not read.
        let entity = format!(
            "<?xml version=\"1.0\"?><!DOCTYPE svg [<!ENTITY ext SYSTEM \"file://{red}\">]>\
             <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><text>&ext;</text></svg>"
        );
        let entity = GeneratedImage::new(Bytes::from(entity), ImageFormat::Svg, 10, 10);
        assert!(preview(&entity, 1_000_000).unwrap_err().contains("entity"));
        match listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the preview connected to the test's listener: {other:?}"),
        }
    }

    #[test]
    fn svg_bombs_and_giant_gifs_fail_cleanly_and_fast() {
        let started = std::time::Instant::now();
        let mut laughs =
            String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE svg [\n<!ENTITY l0 \"ha\">\n");
        for i in 1..12 {
            let prev = format!("&l{};", i - 1).repeat(10);
            laughs.push_str(&format!("<!ENTITY l{i} \"{prev}\">\n"));
        }
        laughs.push_str("]>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><text>&l11;</text></svg>");
        let bomb = GeneratedImage::new(Bytes::from(laughs), ImageFormat::Svg, 10, 10);
        // Refused by the parser or rendered without the text: either way, quickly.
        let _ = preview(&bomb, 100_000);
        let huge = format!(
            "<svg width='10' height='10'><desc>{}</desc></svg>",
            " ".repeat(MAX_SVG_BYTES)
        );
        let huge = GeneratedImage::new(Bytes::from(huge), ImageFormat::Svg, 10, 10);
        assert!(preview(&huge, 100_000).unwrap_err().contains("over the"));
        let junk = GeneratedImage::new(
            Bytes::from_static(b"<svg width='1'"),
            ImageFormat::Svg,
            1,
            1,
        );
        assert!(preview(&junk, 100_000).unwrap_err().contains("SVG"));
        // A GIF declaring 65535 x 65535 is refused before anything is decoded.
        let mut gif = b"GIF89a\xFF\xFF\xFF\xFF\x00\x00\x00".to_vec();
        gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0]);
        gif.extend_from_slice(&[2, 2, 0x4C, 0x01, 0, 0x3B]);
        let gif = GeneratedImage::new(Bytes::from(gif), ImageFormat::Gif, 65535, 65535);
        assert!(preview(&gif, 100_000).unwrap_err().contains("65535x65535"));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    /// Timing of an SVG preview, for the numbers in the docs: run with
    /// `cargo test --release --lib svg_preview_timing -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn svg_preview_timing() {
        const RUNS: u32 = 10;
        for size in ["1024x1024", "1536x1024"] {
            let svg = made(ImageFormat::Svg, size, None).await;
            preview(&svg, 80_000).unwrap();
            let started = std::time::Instant::now();
            for _ in 0..RUNS {
                preview(&svg, 80_000).unwrap();
            }
            println!("svg preview {size}: {:?}", started.elapsed() / RUNS);
        }
        let gif = made(ImageFormat::Gif, "960x960", None).await;
        preview(&gif, 80_000).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..RUNS {
            first_gif_frame(&gif.bytes).unwrap();
        }
        println!(
            "gif first frame 960x960, 9 frames: {:?}",
            started.elapsed() / RUNS
        );
        let started = std::time::Instant::now();
        for _ in 0..RUNS {
            preview(&gif, 80_000).unwrap();
        }
        println!(
            "gif preview 960x960, 9 frames: {:?}",
            started.elapsed() / RUNS
        );
    }
}
