//! An offline provider that draws real, deterministic images, with injectable latency and faults.
//!
//! Each image is a gradient with circles and bars whose colours and positions come from a hash
//! of (prompt, seed, index), so the same request always gives the same bytes and different
//! prompts look visibly different.

use std::{io::Cursor, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use image::{ImageEncoder, Rgba, RgbaImage};
use sha2::{Digest, Sha256};

use crate::{
    validate::parse_size, Catalog, ErrorKind, GenerateRequest, GenerateResult, GeneratedImage,
    ImageFormat, ImageProvider, ModelCapabilities, ProviderError,
};

/// The mock's own model name.
pub const MOCK_MODEL: &str = "mock-image-1";

/// How a mock provider behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MockSettings {
    /// The model used when a request names none.
    pub model: String,
    /// Delay before answering, to exercise progress and timeouts.
    pub latency: Duration,
    /// Fraction of calls (0.0..=1.0) that fail with `fail_with`.
    pub fail_rate: f64,
    /// The error kind injected failures have.
    pub fail_with: ErrorKind,
    /// The model catalog to describe and check models with.
    pub catalog: Arc<Catalog>,
}

impl Default for MockSettings {
    fn default() -> Self {
        Self {
            model: MOCK_MODEL.into(),
            latency: Duration::ZERO,
            fail_rate: 0.0,
            fail_with: ErrorKind::UpstreamUnavailable,
            catalog: Arc::new(Catalog::builtin()),
        }
    }
}

/// The offline provider (`kind = "mock"`).
#[derive(Debug)]
pub struct MockProvider {
    settings: MockSettings,
}

impl MockProvider {
    /// A mock provider with `settings`.
    pub fn new(settings: MockSettings) -> Self {
        Self { settings }
    }

    fn injected_failure(&self) -> Option<ProviderError> {
        let s = &self.settings;
        if s.fail_rate <= 0.0 || fastrand::f64() >= s.fail_rate {
            return None;
        }
        let err = ProviderError::new(
            s.fail_with,
            format!(
                "mock provider: injected `{}` failure (fail_rate = {})",
                s.fail_with, s.fail_rate
            ),
        )
        .with_request_id(Some(format!("mock-{:016x}", fastrand::u64(..))));
        Some(match s.fail_with {
            ErrorKind::RateLimited => err
                .with_status(429)
                .with_retry_after(Some(Duration::from_secs(1))),
            ErrorKind::UpstreamUnavailable => err.with_status(503),
            ErrorKind::Auth => err.with_status(401),
            _ => err,
        })
    }
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
        if !self.settings.latency.is_zero() {
            tokio::time::sleep(self.settings.latency).await;
        }
        if let Some(err) = self.injected_failure() {
            return Err(err);
        }
        let request = request.clone();
        let images = tokio::task::spawn_blocking(move || render_all(&request))
            .await
            .map_err(|e| {
                ProviderError::new(ErrorKind::BadResponse, format!("mock renderer failed: {e}"))
            })??;
        let mut result = GenerateResult::new(images, self.settings.model.clone());
        result.request_id = Some(format!("mock-{:016x}", fastrand::u64(..)));
        Ok(result)
    }
}

fn render_all(request: &GenerateRequest) -> Result<Vec<GeneratedImage>, ProviderError> {
    let (width, height) = match request.size.as_deref() {
        None | Some("auto") => (1024, 1024),
        Some(size) => parse_size(size).ok_or_else(|| {
            ProviderError::invalid_param("size", format!("size `{size}` is not WIDTHxHEIGHT"))
        })?,
    };
    let format = request.output_format.unwrap_or(ImageFormat::Png);
    let transparent =
        request.background.as_deref() == Some("transparent") && format.supports_alpha();
    (0..request.n.max(1))
        .map(|index| {
            let seed = Seed::new(&request.prompt, request.seed.unwrap_or(0), index);
            let pixels = draw(&seed, width, height, transparent);
            let bytes = encode(&pixels, format, request.output_compression)?;
            Ok(GeneratedImage {
                bytes: Bytes::from(bytes),
                format,
                width,
                height,
            })
        })
        .collect()
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
