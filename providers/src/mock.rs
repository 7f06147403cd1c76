//! An offline provider that draws real, deterministic images, with injectable latency and faults.
//!
//! Each image is a gradient with circles and bars whose colours and positions come from a hash
//! of (prompt, seed, index), so the same request always gives the same bytes and different
//! prompts look visibly different. Scripted failures (`fail_sequence`) and slow streams of
//! partial images (`latency` with `partial_images`) let retries, progress and cancellation be
//! exercised offline.
//!
//! Edits and variations transform the first input image the same deterministic way: resized to
//! the requested size, tinted and overdrawn with shapes from a hash of the prompt, but only
//! where the mask is transparent, so tests can check that masked-off pixels are kept.

use std::{
    io::Cursor,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use image::{imageops::FilterType, ImageEncoder, Rgba, RgbaImage};
use sha2::{Digest, Sha256};

use crate::{
    image_info,
    validate::{self, parse_size},
    Catalog, EditRequest, ErrorKind, Events, GenerateRequest, GenerateResult, GeneratedImage,
    ImageFormat, ImageProvider, InputImage, ModelCapabilities, ProviderError, ProviderEvent,
    VariationRequest,
};

/// The mock's own model name.
pub const MOCK_MODEL: &str = "mock-image-1";

/// What people are told when the mock served a call because no real provider is configured.
pub const STAND_IN_NOTICE: &str =
    "made offline by the mock provider; set OPENAI_API_KEY to use OpenAI";

/// How a mock provider behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MockSettings {
    /// The model used when a request names none.
    pub model: String,
    /// Delay before answering, to exercise progress and timeouts; partial images are spread over it.
    pub latency: Duration,
    /// Fraction of calls (0.0..=1.0) that fail with `fail_with`.
    pub fail_rate: f64,
    /// The error kind injected failures have.
    pub fail_with: ErrorKind,
    /// The model catalog to describe and check models with.
    pub catalog: Arc<Catalog>,
    /// How this provider's first calls end, in order: `Some(kind)` fails the call with that
    /// kind, `None` lets it succeed; calls after the sequence behave as configured otherwise.
    pub fail_sequence: Vec<Option<ErrorKind>>,
}

impl MockSettings {
    /// Parses a configured sequence such as `["rate_limited", "ok"]` for [`MockSettings::fail_sequence`].
    pub fn parse_fail_sequence<S: AsRef<str>>(
        items: &[S],
    ) -> Result<Vec<Option<ErrorKind>>, String> {
        items
            .iter()
            .map(|item| match item.as_ref() {
                "ok" => Ok(None),
                kind => kind.parse().map(Some).map_err(|e| format!("{e}, or `ok`")),
            })
            .collect()
    }
}

impl Default for MockSettings {
    fn default() -> Self {
        Self {
            model: MOCK_MODEL.into(),
            latency: Duration::ZERO,
            fail_rate: 0.0,
            fail_with: ErrorKind::UpstreamUnavailable,
            catalog: Arc::new(Catalog::builtin()),
            fail_sequence: Vec::new(),
        }
    }
}

/// The offline provider (`kind = "mock"`).
#[derive(Debug)]
pub struct MockProvider {
    settings: MockSettings,
    /// Calls started so far, to follow `fail_sequence`.
    calls: AtomicUsize,
}

impl MockProvider {
    /// A mock provider with `settings`.
    pub fn new(settings: MockSettings) -> Self {
        Self {
            settings,
            calls: AtomicUsize::new(0),
        }
    }

    /// One call of any kind, so every kind honours latency and scripted faults alike: a failure
    /// if one is due, else `partials` previews spread over the latency, then the images.
    async fn serve<P, R>(
        &self,
        partials: Option<u8>,
        events: &Events,
        preview: P,
        render: R,
    ) -> Result<GenerateResult, ProviderError>
    where
        P: Fn() -> Result<GeneratedImage, ProviderError> + Clone + Send + 'static,
        R: FnOnce() -> Result<Vec<GeneratedImage>, ProviderError> + Send + 'static,
    {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        events.send(ProviderEvent::Requesting { attempt: 1 });
        let latency = self.settings.latency;
        if let Some(err) = self.injected_failure(call) {
            tokio::time::sleep(latency).await;
            return Err(err);
        }
        // A slow stream: each partial after its share of the latency, the final after the rest.
        let partials = u32::from(partials.unwrap_or(0));
        let step = latency / (partials + 1);
        for index in 0..partials {
            tokio::time::sleep(step).await;
            let image = blocking(preview.clone()).await?;
            events.send(ProviderEvent::PartialImage { index, image });
        }
        tokio::time::sleep(latency.saturating_sub(step * partials)).await;
        events.send(ProviderEvent::Receiving);
        let images = blocking(render).await?;
        let mut result = GenerateResult::new(images, self.settings.model.clone());
        result.request_id = Some(format!("mock-{:016x}", fastrand::u64(..)));
        Ok(result)
    }

    /// The failure call number `call` (0-based) is scripted or drawn to have, if any.
    fn injected_failure(&self, call: usize) -> Option<ProviderError> {
        let s = &self.settings;
        match s.fail_sequence.get(call) {
            Some(scripted) => {
                scripted.map(|kind| failure(kind, format!("call {} of fail_sequence", call + 1)))
            }
            None if s.fail_rate > 0.0 && fastrand::f64() < s.fail_rate => {
                Some(failure(s.fail_with, format!("fail_rate = {}", s.fail_rate)))
            }
            None => None,
        }
    }
}

/// An injected failure of `kind`, shaped like the HTTP error a real provider would give.
fn failure(kind: ErrorKind, why: String) -> ProviderError {
    let err = ProviderError::new(
        kind,
        format!("mock provider: injected `{kind}` failure ({why})"),
    )
    .with_request_id(Some(format!("mock-{:016x}", fastrand::u64(..))))
    .with_attempts(1);
    match kind {
        ErrorKind::RateLimited => err
            .with_status(429)
            .with_retry_after(Some(Duration::from_secs(1))),
        ErrorKind::UpstreamUnavailable => err.with_status(503),
        ErrorKind::Auth => err.with_status(401),
        ErrorKind::Permission => err.with_status(403),
        ErrorKind::QuotaExhausted => err.with_status(429),
        ErrorKind::InvalidRequest | ErrorKind::ContentPolicy => err.with_status(400),
        _ => err,
    }
}

/// Runs CPU-bound drawing off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ProviderError::new(ErrorKind::BadResponse, format!("mock renderer failed: {e}"))
    })?
}

#[async_trait]
impl ImageProvider for MockProvider {
    fn kind(&self) -> &'static str {
        "mock"
    }

    fn default_model(&self) -> &str {
        &self.settings.model
    }

    fn models(&self) -> Vec<String> {
        vec![self.settings.model.clone()]
    }

    fn capabilities(&self, model: &str) -> ModelCapabilities {
        self.settings.catalog.get(model)
    }

    fn lifecycle_is_authoritative(&self) -> bool {
        // The mock serves whatever it is asked; its catalog is the only truth it has.
        true
    }

    fn aliases(&self) -> Vec<(String, String)> {
        ["fast", "best"]
            .map(|alias| (alias.to_string(), MOCK_MODEL.to_string()))
            .to_vec()
    }

    fn stand_in_notice(&self) -> Option<String> {
        Some(STAND_IN_NOTICE.into())
    }

    async fn generate(&self, request: &GenerateRequest) -> Result<GenerateResult, ProviderError> {
        self.generate_with_events(request, &Events::none()).await
    }

    async fn generate_with_events(
        &self,
        request: &GenerateRequest,
        events: &Events,
    ) -> Result<GenerateResult, ProviderError> {
        let request = Arc::new(request.clone());
        let (for_preview, for_render) = (Arc::clone(&request), Arc::clone(&request));
        self.serve(
            request.partial_images,
            events,
            move || render_preview(&for_preview),
            move || render_all(&for_render),
        )
        .await
    }

    async fn edit_with_events(
        &self,
        request: &EditRequest,
        events: &Events,
    ) -> Result<GenerateResult, ProviderError> {
        if !self.settings.catalog.get(&request.model).edit {
            return Err(ProviderError::unsupported(format!(
                "{} cannot edit images",
                request.model
            )));
        }
        if request.images.is_empty() {
            return Err(ProviderError::invalid_param(
                "images",
                "an edit needs at least one input image",
            ));
        }
        // Cloning shares the image bytes; only the request's small fields are copied.
        let request = Arc::new(request.clone());
        let (for_preview, for_render) = (Arc::clone(&request), Arc::clone(&request));
        self.serve(
            request.partial_images,
            events,
            move || Edit::new(&for_preview, 4)?.render(&for_preview, 0),
            move || edit_all(&for_render),
        )
        .await
    }

    async fn create_variation(
        &self,
        request: &VariationRequest,
    ) -> Result<GenerateResult, ProviderError> {
        let catalog = &self.settings.catalog;
        if !catalog.get(&request.model).variations {
            return Err(validate::variations_unsupported(
                &request.model,
                &catalog.variation_models(),
            ));
        }
        // A variation is an unmasked edit whose "prompt" is fixed, so only the index varies it.
        let mut edit = EditRequest::new(
            "mock variation",
            request.model.clone(),
            vec![request.image.clone()],
        );
        edit.size = request.size.clone();
        edit.n = request.n;
        let edit = Arc::new(edit);
        let for_preview = Arc::clone(&edit);
        self.serve(
            None,
            &Events::none(),
            move || Edit::new(&for_preview, 4)?.render(&for_preview, 0),
            move || edit_all(&edit),
        )
        .await
    }
}

/// The largest input side the mock decodes: larger inputs are refused before any pixel memory
/// is allocated, so a hostile or huge upload cannot exhaust memory.
const MAX_INPUT_SIDE: u32 = 4096;

/// The most memory one input's decoder may allocate (a 4096x4096 RGBA16 image).
const MAX_INPUT_ALLOC: u64 = 4096 * 4096 * 8;

/// Decodes an input image, called `what` in messages, within the limits above.
fn decode_input(image: &InputImage, what: &str, param: &str) -> Result<RgbaImage, ProviderError> {
    let invalid = |why: String| ProviderError::invalid_param(param, format!("mock: {what} {why}"));
    let format = ImageFormat::sniff(&image.bytes)
        .and_then(image_info::to_image_format)
        .ok_or_else(|| invalid(image_info::not_an_image(&image.bytes)))?;
    let mut reader = image::ImageReader::with_format(Cursor::new(&image.bytes[..]), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(MAX_INPUT_ALLOC);
    reader.limits(limits);
    reader.decode().map(|img| img.into_rgba8()).map_err(|e| {
        invalid(format!(
            "cannot be decoded (at most {MAX_INPUT_SIDE} px a side): {e}"
        ))
    })
}

/// Every image of an edit: the input is decoded once and transformed `n` ways.
fn edit_all(request: &EditRequest) -> Result<Vec<GeneratedImage>, ProviderError> {
    let edit = Edit::new(request, 1)?;
    (0..request.n.max(1))
        .map(|index| edit.render(request, index))
        .collect()
}

/// The first input image at the output size, and which of its pixels the edit may change.
struct Edit {
    input: RgbaImage,
    /// The mask at the output size; `None` lets the edit change every pixel.
    mask: Option<RgbaImage>,
}

impl Edit {
    /// Decodes and resizes the inputs to the requested size divided by `divisor` (4 for previews).
    fn new(request: &EditRequest, divisor: u32) -> Result<Self, ProviderError> {
        let first = request.images.first().ok_or_else(|| {
            ProviderError::invalid_param("images", "an edit needs at least one input image")
        })?;
        let input = decode_input(first, "image 1", "images")?;
        let (width, height) = match request.size.as_deref() {
            None | Some("auto") => input.dimensions(),
            Some(size) => parse_size(size).ok_or_else(|| {
                ProviderError::invalid_param("size", format!("size `{size}` is not WIDTHxHEIGHT"))
            })?,
        };
        let size = ((width / divisor).max(1), (height / divisor).max(1));
        let input = resized(input, size, FilterType::Triangle);
        let mask = match &request.mask {
            // Nearest keeps the mask's alpha crisp: a blurred edge would change kept pixels.
            Some(mask) => Some(resized(
                decode_input(mask, "the mask", "mask")?,
                size,
                FilterType::Nearest,
            )),
            None => None,
        };
        Ok(Self { input, mask })
    }

    /// Output `index`: where the mask is transparent, the input tinted and overdrawn with shapes
    /// from a hash of the prompt; elsewhere the input unchanged.
    fn render(&self, request: &EditRequest, index: u32) -> Result<GeneratedImage, ProviderError> {
        let format = request.output_format.unwrap_or(ImageFormat::Png);
        let seed = Seed::new(&request.prompt, request.seed.unwrap_or(0), index);
        let (width, height) = self.input.dimensions();
        let shapes = draw(&seed, width, height, true);
        let tint = [seed.0[8], seed.0[9], seed.0[10]];
        let mut out = self.input.clone();
        for (x, y, px) in out.enumerate_pixels_mut() {
            if self
                .mask
                .as_ref()
                .is_some_and(|m| m.get_pixel(x, y).0[3] != 0)
            {
                continue;
            }
            let shape = shapes.get_pixel(x, y);
            // The edit paints what it changes, so changed pixels are opaque.
            *px = if shape.0[3] != 0 {
                *shape
            } else {
                let mix = |c: usize| ((u16::from(px.0[c]) * 3 + u16::from(tint[c]) * 2) / 5) as u8;
                Rgba([mix(0), mix(1), mix(2), 255])
            };
        }
        let bytes = encode(&out, format, request.output_compression)?;
        Ok(GeneratedImage::new(
            Bytes::from(bytes),
            format,
            width,
            height,
        ))
    }
}

/// `img` at `size`, untouched when it already has it.
fn resized(img: RgbaImage, (width, height): (u32, u32), filter: FilterType) -> RgbaImage {
    if img.dimensions() == (width, height) {
        img
    } else {
        image::imageops::resize(&img, width, height, filter)
    }
}

fn dimensions(request: &GenerateRequest) -> Result<(u32, u32), ProviderError> {
    match request.size.as_deref() {
        None | Some("auto") => Ok((1024, 1024)),
        Some(size) => parse_size(size).ok_or_else(|| {
            ProviderError::invalid_param("size", format!("size `{size}` is not WIDTHxHEIGHT"))
        }),
    }
}

fn render_all(request: &GenerateRequest) -> Result<Vec<GeneratedImage>, ProviderError> {
    let size = dimensions(request)?;
    (0..request.n.max(1))
        .map(|index| render(request, index, size))
        .collect()
}

/// The first image drawn at a quarter of its size: the same picture, as a cheap partial.
fn render_preview(request: &GenerateRequest) -> Result<GeneratedImage, ProviderError> {
    let (width, height) = dimensions(request)?;
    render(request, 0, ((width / 4).max(1), (height / 4).max(1)))
}

fn render(
    request: &GenerateRequest,
    index: u32,
    (width, height): (u32, u32),
) -> Result<GeneratedImage, ProviderError> {
    let format = request.output_format.unwrap_or(ImageFormat::Png);
    let transparent =
        request.background.as_deref() == Some("transparent") && format.supports_alpha();
    let seed = Seed::new(&request.prompt, request.seed.unwrap_or(0), index);
    let pixels = draw(&seed, width, height, transparent);
    let bytes = encode(&pixels, format, request.output_compression)?;
    Ok(GeneratedImage::new(
        Bytes::from(bytes),
        format,
        width,
        height,
    ))
}

/// A stream of deterministic pseudo-random numbers derived from the request.
struct Seed([u8; 32]);

impl Seed {
    fn new(prompt: &str, seed: u64, index: u32) -> Self {
        let mut h = Sha256::new();
        h.update(prompt.as_bytes());
        h.update(seed.to_le_bytes());
        h.update(index.to_le_bytes());
        Self(h.finalize().into())
    }

    fn rng(&self) -> fastrand::Rng {
        fastrand::Rng::with_seed(u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes")))
    }
}

fn colour(rng: &mut fastrand::Rng, alpha: u8) -> Rgba<u8> {
    Rgba([rng.u8(..), rng.u8(..), rng.u8(..), alpha])
}

fn draw(seed: &Seed, width: u32, height: u32, transparent: bool) -> RgbaImage {
    let mut rng = seed.rng();
    let (top, bottom) = (colour(&mut rng, 255), colour(&mut rng, 255));
    let mut img = RgbaImage::new(width, height);
    if !transparent {
        for y in 0..height {
            let t = y as f32 / height.max(2).saturating_sub(1) as f32;
            let mix =
                |c: usize| (top.0[c] as f32 * (1.0 - t) + bottom.0[c] as f32 * t).round() as u8;
            // Alpha is set, not mixed: float rounding would make "opaque" images 254/255 alpha.
            let px = Rgba([mix(0), mix(1), mix(2), 255]);
            for x in 0..width {
                img.put_pixel(x, y, px);
            }
        }
    }
    let scale = width.min(height) as f32;
    for _ in 0..(3 + rng.u32(..5)) {
        let fill = colour(&mut rng, 255);
        if rng.bool() {
            let (cx, cy) = (rng.f32() * width as f32, rng.f32() * height as f32);
            let r = scale * (0.05 + rng.f32() * 0.25);
            fill_circle(&mut img, cx, cy, r, fill);
        } else {
            let w = (width as f32 * (0.1 + rng.f32() * 0.5)) as u32;
            let h = (height as f32 * (0.03 + rng.f32() * 0.15)) as u32;
            let x0 = rng.u32(..width.saturating_sub(w).max(1));
            let y0 = rng.u32(..height.saturating_sub(h).max(1));
            for y in y0..(y0 + h).min(height) {
                for x in x0..(x0 + w).min(width) {
                    img.put_pixel(x, y, fill);
                }
            }
        }
    }
    img
}

fn fill_circle(img: &mut RgbaImage, cx: f32, cy: f32, r: f32, fill: Rgba<u8>) {
    let (w, h) = img.dimensions();
    let y0 = (cy - r).max(0.0) as u32;
    let y1 = ((cy + r).max(0.0) as u32).min(h);
    for y in y0..y1 {
        let dy = y as f32 + 0.5 - cy;
        let half = (r * r - dy * dy).max(0.0).sqrt();
        let x0 = (cx - half).max(0.0) as u32;
        let x1 = ((cx + half).max(0.0) as u32).min(w);
        for x in x0..x1 {
            img.put_pixel(x, y, fill);
        }
    }
}

fn encode(
    img: &RgbaImage,
    format: ImageFormat,
    compression: Option<u8>,
) -> Result<Vec<u8>, ProviderError> {
    let mut out = Cursor::new(Vec::new());
    let (w, h) = img.dimensions();
    let failed = |e: image::ImageError| {
        ProviderError::new(
            ErrorKind::BadResponse,
            format!("mock could not encode {format}: {e}"),
        )
    };
    match format {
        ImageFormat::Png => image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Adaptive,
        )
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgba8)
        .map_err(failed)?,
        ImageFormat::Jpeg => {
            let quality = compression.unwrap_or(90).clamp(1, 100);
            let side = |n: u32| {
                u16::try_from(n).map_err(|_| {
                    ProviderError::new(
                        ErrorKind::InvalidRequest,
                        format!("{n} px is too large for JPEG"),
                    )
                })
            };
            // A SIMD encoder that drops alpha itself: a fifth of the time of `image`'s.
            jpeg_encoder::Encoder::new(out.get_mut(), quality)
                .encode(
                    img.as_raw(),
                    side(w)?,
                    side(h)?,
                    jpeg_encoder::ColorType::Rgba,
                )
                .map_err(|e| {
                    ProviderError::new(
                        ErrorKind::BadResponse,
                        format!("mock could not encode {format}: {e}"),
                    )
                })?
        }
        ImageFormat::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgba8)
            .map_err(failed)?,
        ImageFormat::Gif | ImageFormat::Svg => {
            return Err(ProviderError::unsupported(format!(
                "the mock cannot encode {format} yet"
            )))
        }
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_info::probe;

    fn provider() -> MockProvider {
        MockProvider::new(MockSettings::default())
    }

    #[tokio::test]
    async fn images_are_deterministic_per_prompt_seed_and_size() {
        let p = provider();
        let mut r = GenerateRequest::new("a lighthouse at dusk", MOCK_MODEL);
        r.size = Some("256x128".into());
        let a = p.generate(&r).await.unwrap();
        let b = p.generate(&r).await.unwrap();
        assert_eq!(a.images[0].bytes, b.images[0].bytes);
        r.prompt = "a red fox in snow".into();
        let c = p.generate(&r).await.unwrap();
        assert_ne!(a.images[0].bytes, c.images[0].bytes);
        r.seed = Some(7);
        let d = p.generate(&r).await.unwrap();
        assert_ne!(c.images[0].bytes, d.images[0].bytes);
    }

    #[tokio::test]
    async fn every_format_decodes_at_the_requested_size() {
        let p = provider();
        for format in ImageFormat::RASTER {
            let mut r = GenerateRequest::new("shapes", MOCK_MODEL);
            r.size = Some("320x200".into());
            r.output_format = Some(format);
            r.n = 2;
            let result = p.generate(&r).await.unwrap();
            assert_eq!(result.images.len(), 2);
            assert_ne!(
                result.images[0].bytes, result.images[1].bytes,
                "n images differ"
            );
            for img in &result.images {
                let info = probe(&img.bytes).unwrap();
                assert_eq!((info.format, info.width, info.height), (format, 320, 200));
                image::load_from_memory(&img.bytes).expect("decodes");
            }
        }
    }

    #[tokio::test]
    async fn opaque_images_are_fully_opaque_and_transparent_ones_are_not() {
        let mut r = GenerateRequest::new("solid", MOCK_MODEL);
        r.size = Some("64x64".into());
        let result = provider().generate(&r).await.unwrap();
        let decoded = image::load_from_memory(&result.images[0].bytes)
            .unwrap()
            .into_rgba8();
        assert!(decoded.pixels().all(|p| p.0[3] == 255));
    }

    #[tokio::test]
    async fn transparent_background_leaves_alpha_zero_corners_visible() {
        let mut r = GenerateRequest::new("ghost", MOCK_MODEL);
        r.size = Some("64x64".into());
        r.background = Some("transparent".into());
        let result = provider().generate(&r).await.unwrap();
        let decoded = image::load_from_memory(&result.images[0].bytes)
            .unwrap()
            .into_rgba8();
        assert!(decoded.pixels().any(|p| p.0[3] == 0));
    }

    #[tokio::test]
    async fn fail_sequence_scripts_the_first_calls_then_behaves_normally() {
        let sequence = MockSettings::parse_fail_sequence(&["rate_limited", "ok", "auth"]).unwrap();
        assert_eq!(
            sequence,
            vec![Some(ErrorKind::RateLimited), None, Some(ErrorKind::Auth)]
        );
        let err = MockSettings::parse_fail_sequence(&["ok", "rate-limited"]).unwrap_err();
        assert!(
            err.contains("rate_limited") && err.contains("`ok`"),
            "{err}"
        );

        let p = MockProvider::new(MockSettings {
            fail_sequence: sequence,
            ..MockSettings::default()
        });
        let mut r = GenerateRequest::new("x", MOCK_MODEL);
        r.size = Some("32x32".into());
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            let outcome = p.generate(&r).await.err();
            outcomes.push(outcome.map(|e| (e.kind, e.status, e.attempts)));
        }
        assert_eq!(
            outcomes,
            vec![
                Some((ErrorKind::RateLimited, Some(429), 1)),
                None,
                Some((ErrorKind::Auth, Some(401), 1)),
                None
            ]
        );
    }

    #[tokio::test]
    async fn partial_images_arrive_spread_over_the_latency_then_the_final() {
        let p = MockProvider::new(MockSettings {
            latency: Duration::from_millis(300),
            ..MockSettings::default()
        });
        let mut r = GenerateRequest::new("slow stream", MOCK_MODEL);
        r.size = Some("128x64".into());
        r.partial_images = Some(2);
        let (events, rx) = Events::channel();
        let started = tokio::time::Instant::now();
        let result = p.generate_with_events(&r, &events).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(events);
        assert_eq!(partial_sizes(rx).await, vec![(0, 32, 16), (1, 32, 16)]);
        assert_eq!((result.images[0].width, result.images[0].height), (128, 64));
    }

    /// The partial images a call reported, as (index, width, height), in arrival order.
    async fn partial_sizes(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<ProviderEvent>,
    ) -> Vec<(u32, u32, u32)> {
        let mut partials = Vec::new();
        while let Some(event) = rx.recv().await {
            if let ProviderEvent::PartialImage { index, image } = event {
                partials.push((index, image.width, image.height));
            }
        }
        partials
    }

    #[tokio::test]
    async fn fail_rate_one_always_fails_with_the_configured_kind() {
        let p = MockProvider::new(MockSettings {
            fail_rate: 1.0,
            fail_with: ErrorKind::RateLimited,
            ..MockSettings::default()
        });
        let err = p
            .generate(&GenerateRequest::new("x", MOCK_MODEL))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert!(err.retryable);
        assert_eq!(err.status, Some(429));
        assert!(err.retry_after.is_some());
    }

    /// A 64x64 opaque PNG whose every pixel differs from its neighbours, so changes show.
    fn photo(width: u32, height: u32) -> Bytes {
        let img = RgbaImage::from_fn(width, height, |x, y| {
            Rgba([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8, 255])
        });
        Bytes::from(encode(&img, ImageFormat::Png, None).unwrap())
    }

    /// A mask keeping (opaque) the left half and letting the edit change (transparent) the right.
    fn half_mask(width: u32, height: u32) -> Bytes {
        let img = RgbaImage::from_fn(width, height, |x, _| {
            Rgba([0, 0, 0, if x < width / 2 { 255 } else { 0 }])
        });
        Bytes::from(encode(&img, ImageFormat::Png, None).unwrap())
    }

    fn edit_request(prompt: &str) -> EditRequest {
        let image = InputImage::new(photo(64, 64), ImageFormat::Png, "image-1.png");
        EditRequest::new(prompt, MOCK_MODEL, vec![image])
    }

    fn pixels(image: &GeneratedImage) -> RgbaImage {
        image::load_from_memory(&image.bytes).unwrap().into_rgba8()
    }

    #[tokio::test]
    async fn edits_are_deterministic_per_prompt_and_index() {
        let p = provider();
        let mut r = edit_request("add a red hat");
        r.n = 2;
        let a = p.edit(&r).await.unwrap();
        let b = p.edit(&r).await.unwrap();
        assert_eq!(a.images, b.images);
        assert_ne!(a.images[0].bytes, a.images[1].bytes, "n outputs differ");
        r.prompt = "add a blue scarf".into();
        let c = p.edit(&r).await.unwrap();
        assert_ne!(a.images[0].bytes, c.images[0].bytes);
        let input = image::load_from_memory(&photo(64, 64))
            .unwrap()
            .into_rgba8();
        assert_ne!(pixels(&a.images[0]), input, "the edit changes something");
    }

    #[tokio::test]
    async fn pixels_the_mask_keeps_are_unchanged_and_the_others_change() {
        let mut r = edit_request("replace the right half");
        r.mask = Some(InputImage::new(
            half_mask(64, 64),
            ImageFormat::Png,
            "mask.png",
        ));
        let result = provider().edit(&r).await.unwrap();
        let out = pixels(&result.images[0]);
        let input = image::load_from_memory(&photo(64, 64))
            .unwrap()
            .into_rgba8();
        assert_eq!(out.dimensions(), (64, 64));
        let (mut kept, mut changed) = (0, 0);
        for (x, y, px) in out.enumerate_pixels() {
            if x < 32 {
                assert_eq!(px, input.get_pixel(x, y), "kept pixel at {x},{y}");
                kept += 1;
            } else if px != input.get_pixel(x, y) {
                changed += 1;
            }
        }
        assert_eq!(kept, 32 * 64);
        assert!(
            changed > 32 * 64 * 9 / 10,
            "{changed} of the right half changed"
        );
    }

    #[tokio::test]
    async fn edits_honour_size_format_and_partial_images() {
        let p = MockProvider::new(MockSettings {
            latency: Duration::from_millis(30),
            ..MockSettings::default()
        });
        for format in ImageFormat::RASTER {
            let mut r = edit_request("resize me");
            r.size = Some("96x48".into());
            r.output_format = Some(format);
            let result = p.edit(&r).await.unwrap();
            let info = probe(&result.images[0].bytes).unwrap();
            assert_eq!((info.format, info.width, info.height), (format, 96, 48));
        }
        let mut r = edit_request("streamed");
        r.size = Some("128x64".into());
        r.partial_images = Some(2);
        let (events, rx) = Events::channel();
        let result = p.edit_with_events(&r, &events).await.unwrap();
        drop(events);
        assert_eq!(partial_sizes(rx).await, vec![(0, 32, 16), (1, 32, 16)]);
        assert_eq!((result.images[0].width, result.images[0].height), (128, 64));
    }

    #[tokio::test]
    async fn edits_follow_the_fail_sequence_shared_with_generation() {
        let p = MockProvider::new(MockSettings {
            fail_sequence: vec![None, Some(ErrorKind::ContentPolicy)],
            ..MockSettings::default()
        });
        let mut g = GenerateRequest::new("x", MOCK_MODEL);
        g.size = Some("32x32".into());
        p.generate(&g).await.unwrap();
        let err = p.edit(&edit_request("x")).await.unwrap_err();
        assert_eq!(
            (err.kind, err.status),
            (ErrorKind::ContentPolicy, Some(400))
        );
        p.edit(&edit_request("x")).await.unwrap();
    }

    #[tokio::test]
    async fn oversized_or_broken_inputs_are_refused_without_decoding_them() {
        let p = provider();
        let mut r = edit_request("too wide");
        r.images[0] = InputImage::new(photo(5000, 4), ImageFormat::Png, "wide.png");
        let err = p.edit(&r).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest);
        assert!(err.message.contains("4096"), "{err}");
        r.images[0] = InputImage::new(Bytes::from_static(b"%PDF-1.7"), ImageFormat::Png, "x.pdf");
        let err = p.edit(&r).await.unwrap_err();
        assert!(err.message.contains("25 50 44 46"), "{err}");
        let mut r = edit_request("x");
        r.model = "dall-e-3".into();
        assert_eq!(p.edit(&r).await.unwrap_err().kind, ErrorKind::Unsupported);
    }

    #[tokio::test]
    async fn variations_vary_the_image_and_name_the_models_that_can() {
        let p = provider();
        let image = InputImage::new(photo(64, 64), ImageFormat::Png, "image.png");
        let mut r = VariationRequest::new(MOCK_MODEL, image.clone());
        r.n = 2;
        r.size = Some("32x32".into());
        let result = p.create_variation(&r).await.unwrap();
        assert_eq!(result.images.len(), 2);
        assert_ne!(result.images[0].bytes, result.images[1].bytes);
        assert_eq!((result.images[0].width, result.images[0].height), (32, 32));
        let err = p
            .create_variation(&VariationRequest::new("gpt-image-1.5", image))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(err.message.contains("dall-e-2, mock-image-1"), "{err}");
    }
}
