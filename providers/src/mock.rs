//! An offline provider that draws real, deterministic images, with injectable latency and faults.
//!
//! Each image is a gradient with circles and bars whose colours and positions come from a hash
//! of (prompt, seed, index), so the same request always gives the same bytes and different
//! prompts look visibly different. Scripted failures (`fail_sequence`) and slow streams of
//! partial images (`latency` with `partial_images`) let retries, progress and cancellation be
//! exercised offline.

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
use image::{ImageEncoder, Rgba, RgbaImage};
use sha2::{Digest, Sha256};

use crate::{
    validate::parse_size, Catalog, ErrorKind, Events, GenerateRequest, GenerateResult,
    GeneratedImage, ImageFormat, ImageProvider, ModelCapabilities, ProviderError, ProviderEvent,
};

/// The mock's own model name.
pub const MOCK_MODEL: &str = "mock-image-1";

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

    async fn generate(&self, request: &GenerateRequest) -> Result<GenerateResult, ProviderError> {
        self.generate_with_events(request, &Events::none()).await
    }

    async fn generate_with_events(
        &self,
        request: &GenerateRequest,
        events: &Events,
    ) -> Result<GenerateResult, ProviderError> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        events.send(ProviderEvent::Requesting { attempt: 1 });
        let latency = self.settings.latency;
        if let Some(err) = self.injected_failure(call) {
            tokio::time::sleep(latency).await;
            return Err(err);
        }
        // A slow stream: each partial after its share of the latency, the final after the rest.
        let partials = u32::from(request.partial_images.unwrap_or(0));
        let step = latency / (partials + 1);
        for index in 0..partials {
            tokio::time::sleep(step).await;
            let request = request.clone();
            let image = blocking(move || render_preview(&request)).await?;
            events.send(ProviderEvent::PartialImage { index, image });
        }
        tokio::time::sleep(latency.saturating_sub(step * partials)).await;
        events.send(ProviderEvent::Receiving);
        let request = request.clone();
        let images = blocking(move || render_all(&request)).await?;
        let mut result = GenerateResult::new(images, self.settings.model.clone());
        result.request_id = Some(format!("mock-{:016x}", fastrand::u64(..)));
        Ok(result)
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
    Ok(GeneratedImage {
        bytes: Bytes::from(bytes),
        format,
        width,
        height,
    })
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
            let rgb = image::DynamicImage::ImageRgba8(img.clone()).into_rgb8();
            let quality = compression.unwrap_or(90).clamp(1, 100);
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                .write_image(rgb.as_raw(), w, h, image::ExtendedColorType::Rgb8)
                .map_err(failed)?
        }
        ImageFormat::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgba8)
            .map_err(failed)?,
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
        for format in ImageFormat::ALL {
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
        let (events, mut rx) = Events::channel();
        let started = tokio::time::Instant::now();
        let result = p.generate_with_events(&r, &events).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(events);
        let mut partials = Vec::new();
        while let Some(event) = rx.recv().await {
            if let ProviderEvent::PartialImage { index, image } = event {
                partials.push((index, image.width, image.height));
            }
        }
        assert_eq!(partials, vec![(0, 32, 16), (1, 32, 16)]);
        assert_eq!((result.images[0].width, result.images[0].height), (128, 64));
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
}
