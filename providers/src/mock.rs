//! An offline provider that draws real, deterministic images, with injectable latency and faults.
//!
//! Each image is a gradient with circles and bars whose colours and positions come from a hash
//! of (prompt, seed, index), so the same request always gives the same bytes and different
//! prompts look visibly different. Scripted failures (`fail_sequence`, injected by the
//! [`Chaos`] layer that [`provider`] wraps the mock in) and slow streams of partial images
//! (`latency` with `partial_images`) let retries, progress and cancellation be exercised offline.
//!
//! `output_format = gif` animates the same picture: the shapes slide sideways, frame by frame,
//! in a looping GIF of `frame_count` frames. `output_format = svg` writes the same shapes as
//! SVG markup. `complexity` sets how many shapes there are (low fewer, high more).
//!
//! Edits and variations transform the first input image the same deterministic way: resized to
//! the requested size, tinted and overdrawn with shapes from a hash of the prompt, but only
//! where the mask is transparent, so tests can check that masked-off pixels are kept. With a
//! `markup` layer, only the pixels the markup draws on change (or, with a mask too, those plus
//! the ones the mask opens).

use std::{io::Cursor, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use image::{imageops::FilterType, ImageEncoder, Rgba, RgbaImage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    build::{BuildContext, CommonConfig, SettingError},
    image_info,
    layers::{Chaos, ChaosSettings},
    validate::parse_size,
    CallOptions, Catalog, EditRequest, ErrorKind, Events, GenerateRequest, GenerateResult,
    GeneratedImage, ImageFormat, ImageOptions, ImageProvider, InputImage, ModelCapabilities,
    ProviderError, ProviderEvent, VariationRequest,
};

/// The mock's own model name.
pub const MOCK_MODEL: &str = "mock-image-1";

/// The mock's catalog entry: everything the newest OpenAI model takes, plus a seed, any size
/// within reason, and variations, so every tool path can be tried offline.
pub fn catalog_entries() -> Vec<(&'static str, ModelCapabilities)> {
    let mut caps = Catalog::builtin_entry("gpt-image-2.6-flare");
    caps.params.push(crate::Param::Seed);
    caps.custom_sizes = Some(crate::SizeRule {
        multiple_of: 1,
        min_side: 16,
        max_side: 4096,
        max_ratio: 8.0,
        min_pixels: 256,
        max_pixels: 16_777_216,
    });
    caps.variations = true;
    caps.note = Some("offline procedural images for tests and demos".into());
    vec![(MOCK_MODEL, caps)]
}

/// What people are told when the mock served a call because no real provider is configured.
pub const STAND_IN_NOTICE: &str =
    "made offline by the mock provider; set OPENAI_API_KEY to use OpenAI";

/// The "text model" named as `svg.model` when a call names none: the mock writes SVGs itself,
/// so any name works.
pub const SVG_WRITER: &str = "mock-svg-writer";

/// `kind = "mock"`: the settings only the mock reads, its fault knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Delay before each answer, milliseconds.
    pub latency_ms: u64,
    /// Fraction of calls (0.0..=1.0) that fail.
    pub fail_rate: f64,
    /// The error kind injected failures have.
    pub fail_with: ErrorKind,
    /// How the first calls end, in order (`["rate_limited", "ok"]`): an error kind fails the
    /// call, `ok` lets it succeed; later calls follow `fail_rate`.
    pub fail_sequence: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            fail_rate: 0.0,
            fail_with: ErrorKind::UpstreamUnavailable,
            fail_sequence: Vec::new(),
        }
    }
}

impl Config {
    /// Every key of these settings.
    pub const KEYS: &'static [&'static str] =
        &["latency_ms", "fail_rate", "fail_with", "fail_sequence"];

    pub(crate) fn check(&self) -> Result<(), SettingError> {
        let invalid = |key, message: String| Err(SettingError::new(key, message));
        if self.latency_ms > 600_000 {
            return invalid("latency_ms", "must be between 0 and 600000".into());
        }
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return invalid("fail_rate", "must be between 0.0 and 1.0".into());
        }
        match ChaosSettings::parse_fail_sequence(&self.fail_sequence) {
            Ok(_) => Ok(()),
            Err(e) => invalid("fail_sequence", e),
        }
    }

    /// The mock these settings and `common` describe, behind the fault layer when faults are set.
    pub(crate) fn build(
        &self,
        common: &CommonConfig,
        context: BuildContext<'_>,
    ) -> Arc<dyn ImageProvider> {
        provider(MockSettings {
            model: common.model.clone().unwrap_or_else(|| MOCK_MODEL.into()),
            latency: Duration::from_millis(self.latency_ms),
            fail_rate: self.fail_rate,
            fail_with: self.fail_with,
            catalog: context.catalog,
            // Checked with the rest of the configuration; a bad one would have stopped the load.
            fail_sequence: ChaosSettings::parse_fail_sequence(&self.fail_sequence)
                .unwrap_or_default(),
        })
    }
}

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
        ChaosSettings::parse_fail_sequence(items)
    }

    /// The faults these settings ask for, as the [`Chaos`] layer takes them: an injected
    /// failure arrives after `latency`, as the mock's own answers do.
    pub fn chaos(&self) -> ChaosSettings {
        ChaosSettings {
            fail_sequence: self.fail_sequence.clone(),
            fail_rate: self.fail_rate,
            fail_with: self.fail_with,
            latency: self.latency,
            ..ChaosSettings::default()
        }
    }
}

/// The mock as configured: drawn by [`MockProvider`], its faults (`fail_sequence`,
/// `fail_rate`, `fail_with`) injected by a [`Chaos`] layer around it when any is set.
pub fn provider(settings: MockSettings) -> Arc<dyn ImageProvider> {
    let chaos = settings.chaos();
    let mock: Arc<dyn ImageProvider> = Arc::new(MockProvider::new(settings));
    match chaos.is_quiet() {
        true => mock,
        false => Arc::new(Chaos::new(mock, chaos)),
    }
}

impl Default for MockSettings {
    fn default() -> Self {
        Self {
            model: MOCK_MODEL.into(),
            latency: Duration::ZERO,
            fail_rate: 0.0,
            fail_with: ErrorKind::UpstreamUnavailable,
            catalog: Arc::new(Catalog::for_kind(catalog_entries())),
            fail_sequence: Vec::new(),
        }
    }
}

/// The offline provider (`kind = "mock"`). It never fails on its own: [`provider`] wraps it
/// in [`Chaos`] for the configured faults.
#[derive(Debug)]
pub struct MockProvider {
    settings: MockSettings,
}

impl MockProvider {
    /// Maps a ratio and resolution in `options` to the size the mock draws, as a provider whose
    /// API takes sizes would send it, and returns what the mock "sent": the model and the
    /// options it draws with.
    fn draw_size(
        &self,
        model: &str,
        options: &mut ImageOptions,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ProviderError> {
        options.size = crate::options::size_for(options, &self.settings.catalog.get(model))?;
        let mut sent = match serde_json::to_value(&*options) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        sent.remove("aspect_ratio");
        sent.remove("resolution");
        sent.insert("model".into(), model.into());
        Ok(sent)
    }

    /// A mock provider with `settings`; their fault knobs take effect through [`provider`].
    pub fn new(settings: MockSettings) -> Self {
        Self { settings }
    }

    /// One call of any kind, so every kind honours latency and cancellation alike: `partials`
    /// previews spread over the latency, then the images; `options.cancel` ends it at once.
    async fn serve<P, R>(
        &self,
        partials: Option<u8>,
        options: &CallOptions,
        preview: P,
        render: R,
    ) -> Result<GenerateResult, ProviderError>
    where
        P: Fn() -> Result<GeneratedImage, ProviderError> + Clone + Send + 'static,
        R: FnOnce() -> Result<Vec<GeneratedImage>, ProviderError> + Send + 'static,
    {
        tokio::select! {
            biased;
            _ = options.cancel.cancelled() => {
                Err(ProviderError::new(ErrorKind::Cancelled, "the call was cancelled"))
            }
            result = self.draw(partials, &options.events, preview, render) => result,
        }
    }

    /// The work of [`MockProvider::serve`].
    async fn draw<P, R>(
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
        events.send(ProviderEvent::Requesting {
            attempt: 1,
            key: None,
        });
        let latency = self.settings.latency;
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

    async fn generate_opts(
        &self,
        request: &GenerateRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let encoding = Encoding::new(&self.settings.catalog, &request.model, &request.options);
        let mut request = request.clone();
        let sent = self.draw_size(&request.model, &mut request.options)?;
        let request = Arc::new(request);
        let (for_preview, for_render) = (Arc::clone(&request), Arc::clone(&request));
        let result = self
            .serve(
                request.options.partial_images,
                options,
                move || render_preview(&for_preview, encoding),
                move || render_all(&for_render, encoding),
            )
            .await?;
        Ok(result.with_sent(sent))
    }

    async fn edit_opts(
        &self,
        request: &EditRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let encoding = Encoding::new(&self.settings.catalog, &request.model, &request.options);
        // Cloning shares the image bytes; only the request's small fields are copied.
        let mut request = request.clone();
        let sent = self.draw_size(&request.model, &mut request.options)?;
        let request = Arc::new(request);
        let (for_preview, for_render) = (Arc::clone(&request), Arc::clone(&request));
        let result = self
            .serve(
                request.options.partial_images,
                options,
                move || Edit::new(&for_preview, 4)?.render(&for_preview, 0, encoding),
                move || edit_all(&for_render, encoding),
            )
            .await?;
        Ok(result.with_sent(sent))
    }

    async fn variation_opts(
        &self,
        request: &VariationRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let catalog = &self.settings.catalog;
        // A variation is an unmasked edit whose "prompt" is fixed, so only the index varies it.
        let mut edit = EditRequest::new(
            "mock variation",
            request.model.clone(),
            vec![request.image.clone()],
        );
        edit.options.size = request.size.clone();
        edit.options.n = Some(request.n);
        let encoding = Encoding::new(catalog, &request.model, &ImageOptions::default());
        let edit = Arc::new(edit);
        let for_preview = Arc::clone(&edit);
        self.serve(
            None,
            // Variations report no progress.
            &CallOptions::new().with_cancel(options.cancel.clone()),
            move || Edit::new(&for_preview, 4)?.render(&for_preview, 0, encoding),
            move || edit_all(&edit, encoding),
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
fn edit_all(
    request: &EditRequest,
    encoding: Encoding,
) -> Result<Vec<GeneratedImage>, ProviderError> {
    let edit = Edit::new(request, 1)?;
    (0..request.n().max(1))
        .map(|index| edit.render(request, index, encoding))
        .collect()
}

/// The first input image at the output size, and which of its pixels the edit may change.
struct Edit {
    input: RgbaImage,
    /// The mask at the output size; `None` lets the edit change every pixel.
    mask: Option<RgbaImage>,
    /// The markup layer at the output size: its drawn (alpha != 0) pixels are what to change.
    markup: Option<RgbaImage>,
}

impl Edit {
    /// Decodes and resizes the inputs to the requested size divided by `divisor` (4 for previews).
    fn new(request: &EditRequest, divisor: u32) -> Result<Self, ProviderError> {
        let first = request.images.first().ok_or_else(|| {
            ProviderError::invalid_param("images", "an edit needs at least one input image")
        })?;
        let input = decode_input(first, "image 1", "images")?;
        let (width, height) = match request.options.size.as_deref() {
            None | Some("auto") => input.dimensions(),
            Some(size) => parse_size(size).ok_or_else(|| {
                ProviderError::invalid_param("size", format!("size `{size}` is not WIDTHxHEIGHT"))
            })?,
        };
        let size = ((width / divisor).max(1), (height / divisor).max(1));
        let input = resized(input, size, FilterType::Triangle);
        // Nearest keeps a layer's alpha crisp: a blurred edge would change kept pixels.
        let layer = |layer: &Option<InputImage>, what: &str, param: &str| {
            layer
                .as_ref()
                .map(|image| {
                    Ok(resized(
                        decode_input(image, what, param)?,
                        size,
                        FilterType::Nearest,
                    ))
                })
                .transpose()
        };
        Ok(Self {
            input,
            mask: layer(&request.mask, "the mask", "mask")?,
            markup: layer(&request.markup, "the markup", "markup")?,
        })
    }

    /// Whether the edit may change the pixel at (x, y): never where the mask is opaque (the
    /// mask is a hard limit); with markup, where the markup is drawn or the mask is
    /// transparent; without markup, wherever the mask allows.
    fn changes(&self, x: u32, y: u32) -> bool {
        let alpha = |layer: &Option<RgbaImage>| layer.as_ref().map(|l| l.get_pixel(x, y).0[3]);
        match (alpha(&self.mask), alpha(&self.markup)) {
            (Some(mask), _) if mask != 0 => false,
            (_, None) => true,
            (mask, Some(marked)) => marked != 0 || mask.is_some(),
        }
    }

    /// Output `index`: where the edit may change pixels, the input tinted and overdrawn with
    /// shapes from a hash of the prompt (moving from frame to frame in a GIF); elsewhere the
    /// input unchanged. An SVG result is the shapes over a rectangle of the input's mean colour.
    fn render(
        &self,
        request: &EditRequest,
        index: u32,
        encoding: Encoding,
    ) -> Result<GeneratedImage, ProviderError> {
        let seed = Seed::new(&request.prompt, request.options.seed.unwrap_or(0), index);
        let (width, height) = self.input.dimensions();
        let scene = Scene::new(&seed, width, height, request.options.complexity.as_deref());
        if encoding.format == ImageFormat::Svg {
            let backdrop = BackDrop::Flat(mean_colour(&self.input));
            return Ok(svg_image(&scene, width, height, backdrop));
        }
        let tint = [seed.0[8], seed.0[9], seed.0[10]];
        let frame = |phase: f32| {
            let shapes = scene.draw(width, height, true, phase);
            let mut out = self.input.clone();
            for (x, y, px) in out.enumerate_pixels_mut() {
                if !self.changes(x, y) {
                    continue;
                }
                let shape = shapes.get_pixel(x, y);
                // The edit paints what it changes, so changed pixels are opaque.
                *px = if shape.0[3] != 0 {
                    *shape
                } else {
                    let mix =
                        |c: usize| ((u16::from(px.0[c]) * 3 + u16::from(tint[c]) * 2) / 5) as u8;
                    Rgba([mix(0), mix(1), mix(2), 255])
                };
            }
            out
        };
        encoding.image(frame, width, height)
    }
}

/// The mean colour of `img`, opaque.
fn mean_colour(img: &RgbaImage) -> Rgba<u8> {
    let mut sum = [0u64; 3];
    for px in img.pixels() {
        for (s, c) in sum.iter_mut().zip(px.0) {
            *s += u64::from(c);
        }
    }
    let count = u64::from(img.width()) * u64::from(img.height());
    let mean = |c: usize| (sum[c] / count.max(1)) as u8;
    Rgba([mean(0), mean(1), mean(2), 255])
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
    match request.options.size.as_deref() {
        None | Some("auto") => Ok((1024, 1024)),
        Some(size) => parse_size(size).ok_or_else(|| {
            ProviderError::invalid_param("size", format!("size `{size}` is not WIDTHxHEIGHT"))
        }),
    }
}

fn render_all(
    request: &GenerateRequest,
    encoding: Encoding,
) -> Result<Vec<GeneratedImage>, ProviderError> {
    let size = dimensions(request)?;
    (0..request.n().max(1))
        .map(|index| render(request, index, size, encoding))
        .collect()
}

/// The first image drawn at a quarter of its size: the same picture, as a cheap partial.
fn render_preview(
    request: &GenerateRequest,
    encoding: Encoding,
) -> Result<GeneratedImage, ProviderError> {
    let (width, height) = dimensions(request)?;
    render(
        request,
        0,
        ((width / 4).max(1), (height / 4).max(1)),
        encoding,
    )
}

fn render(
    request: &GenerateRequest,
    index: u32,
    (width, height): (u32, u32),
    encoding: Encoding,
) -> Result<GeneratedImage, ProviderError> {
    let format = encoding.format;
    let transparent =
        request.options.background.as_deref() == Some("transparent") && format.supports_alpha();
    let seed = Seed::new(&request.prompt, request.options.seed.unwrap_or(0), index);
    let scene = Scene::new(&seed, width, height, request.options.complexity.as_deref());
    if format == ImageFormat::Svg {
        return Ok(svg_image(&scene, width, height, BackDrop::Gradient));
    }
    encoding.image(
        |phase| scene.draw(width, height, transparent, phase),
        width,
        height,
    )
}

/// How the mock encodes a result: the format and, for an animated GIF, frames and delay.
#[derive(Debug, Clone, Copy)]
struct Encoding {
    format: ImageFormat,
    compression: Option<u8>,
    /// Frames of a GIF (1 for every other format).
    frames: u32,
    /// Each GIF frame's delay, in the format's hundredths of a second.
    delay_cs: u16,
}

/// The most GIF frames the mock draws whatever it is asked, so a request that skipped the
/// catalog's checks cannot make it draw without end.
const MAX_GIF_FRAMES: u32 = 64;

impl Encoding {
    /// The encoding a request asks for, with the catalog's GIF defaults for `model`.
    fn new(catalog: &Catalog, model: &str, options: &ImageOptions) -> Self {
        let format = options.format();
        let (compression, frame_count, frame_duration_ms) = (
            options.output_compression,
            options.frame_count,
            options.frame_duration_ms,
        );
        let gif = catalog.get(model).gif.unwrap_or_default();
        let frames = match format {
            ImageFormat::Gif => frame_count
                .unwrap_or(gif.default_frames)
                .clamp(1, MAX_GIF_FRAMES),
            _ => 1,
        };
        // GIF delays are hundredths of a second; 200 ms is what the API does by default.
        let delay_cs = (frame_duration_ms.unwrap_or(200).saturating_add(5) / 10).min(65_535);
        Self {
            format,
            compression,
            frames,
            delay_cs: delay_cs as u16,
        }
    }

    /// Encodes the picture `frame(phase)` draws, phase 0.0 for a still image and
    /// `i / frames` for frame `i` of a GIF.
    fn image(
        &self,
        frame: impl Fn(f32) -> RgbaImage,
        width: u32,
        height: u32,
    ) -> Result<GeneratedImage, ProviderError> {
        if self.format != ImageFormat::Gif {
            let bytes = encode(&frame(0.0), self.format, self.compression)?;
            return Ok(GeneratedImage::new(
                Bytes::from(bytes),
                self.format,
                width,
                height,
            ));
        }
        let bytes = encode_gif(
            (0..self.frames).map(|i| frame(i as f32 / self.frames as f32)),
            width,
            height,
            self.delay_cs,
        )?;
        Ok(
            GeneratedImage::new(Bytes::from(bytes), ImageFormat::Gif, width, height)
                .with_frames(self.frames),
        )
    }
}

/// Levels per channel of the GIF palette: a 6x7x6 colour cube, 252 of the 256 entries.
const CUBE: [u32; 3] = [6, 7, 6];

/// The fixed palette every mock GIF uses, as `[r, g, b, ...]`.
fn gif_palette() -> Vec<u8> {
    let level = |i: u32, levels: u32| (i * 255 / (levels - 1)) as u8;
    let mut palette = Vec::with_capacity(256 * 3);
    for r in 0..CUBE[0] {
        for g in 0..CUBE[1] {
            for b in 0..CUBE[2] {
                palette.extend([level(r, CUBE[0]), level(g, CUBE[1]), level(b, CUBE[2])]);
            }
        }
    }
    palette
}

/// An animated GIF of `frames`, looping forever. Each frame is mapped to a fixed colour cube
/// by arithmetic: a per-frame NeuQuant palette (what `image`'s encoder does) took 630 ms
/// for nine 1024 px frames against 100-170 ms this way (release build, `gif_timing`), and
/// the mock's flat colours need no better.
fn encode_gif(
    frames: impl Iterator<Item = RgbaImage>,
    width: u32,
    height: u32,
    delay_cs: u16,
) -> Result<Vec<u8>, ProviderError> {
    let side = |n: u32| {
        u16::try_from(n).map_err(|_| {
            ProviderError::new(
                ErrorKind::InvalidRequest,
                format!("{n} px is too large for GIF"),
            )
        })
    };
    let (w, h) = (side(width)?, side(height)?);
    let failed = |e: gif::EncodingError| {
        ProviderError::new(
            ErrorKind::BadResponse,
            format!("mock could not encode gif: {e}"),
        )
    };
    let mut encoder = gif::Encoder::new(Vec::new(), w, h, &gif_palette()).map_err(failed)?;
    encoder.set_repeat(gif::Repeat::Infinite).map_err(failed)?;
    let quantise = |v: u8, levels: u32| (u32::from(v) * (levels - 1) + 127) / 255;
    for img in frames {
        let indices: Vec<u8> = img
            .pixels()
            .map(|px| {
                let [r, g, b, _] = px.0;
                let (r, g, b) = (
                    quantise(r, CUBE[0]),
                    quantise(g, CUBE[1]),
                    quantise(b, CUBE[2]),
                );
                ((r * CUBE[1] + g) * CUBE[2] + b) as u8
            })
            .collect();
        let frame = gif::Frame {
            width: w,
            height: h,
            delay: delay_cs,
            buffer: std::borrow::Cow::Owned(indices),
            ..gif::Frame::default()
        };
        encoder.write_frame(&frame).map_err(failed)?;
    }
    encoder.into_inner().map_err(failed)
}

/// What is behind an SVG's shapes.
enum BackDrop {
    /// The raster drawing's vertical gradient.
    Gradient,
    /// One colour (an edit's input, summarised).
    Flat(Rgba<u8>),
}

/// An SVG document of `scene`: the vector twin of the raster drawing, at `width` x `height`.
fn svg_image(scene: &Scene, width: u32, height: u32, backdrop: BackDrop) -> GeneratedImage {
    use std::fmt::Write as _;
    let hex = |c: Rgba<u8>| format!("#{:02x}{:02x}{:02x}", c.0[0], c.0[1], c.0[2]);
    let mut svg = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
         width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n"
    );
    // Writing to a String cannot fail.
    let _ = match backdrop {
        BackDrop::Gradient => writeln!(
            svg,
            "  <defs><linearGradient id=\"bg\" x1=\"0\" y1=\"0\" x2=\"0\" y2=\"1\">\
             <stop offset=\"0\" stop-color=\"{}\"/><stop offset=\"1\" stop-color=\"{}\"/>\
             </linearGradient></defs>\n  <rect width=\"{width}\" height=\"{height}\" fill=\"url(#bg)\"/>",
            hex(scene.top),
            hex(scene.bottom)
        ),
        BackDrop::Flat(colour) => writeln!(
            svg,
            "  <rect width=\"{width}\" height=\"{height}\" fill=\"{}\"/>",
            hex(colour)
        ),
    };
    for shape in &scene.shapes {
        let _ = match *shape {
            Shape::Circle { cx, cy, r, fill } => writeln!(
                svg,
                "  <circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"{r:.1}\" fill=\"{}\"/>",
                hex(fill)
            ),
            Shape::Bar { x0, y0, w, h, fill } => writeln!(
                svg,
                "  <rect x=\"{x0}\" y=\"{y0}\" width=\"{w}\" height=\"{h}\" fill=\"{}\"/>",
                hex(fill)
            ),
        };
    }
    svg.push_str("</svg>\n");
    GeneratedImage::new(Bytes::from(svg), ImageFormat::Svg, width, height)
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

/// One shape of a drawing.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Circle {
        cx: f32,
        cy: f32,
        r: f32,
        fill: Rgba<u8>,
    },
    Bar {
        x0: u32,
        y0: u32,
        w: u32,
        h: u32,
        fill: Rgba<u8>,
    },
}

/// What a mock picture holds: a vertical gradient and shapes, all from the request's seed, so
/// the raster, GIF and SVG renderings of one request show the same picture.
struct Scene {
    top: Rgba<u8>,
    bottom: Rgba<u8>,
    shapes: Vec<Shape>,
}

impl Scene {
    /// The scene of `seed` at `width` x `height`; `complexity` sets how many shapes it has
    /// (unset: 3 to 7, as before the parameter existed; low: about half; medium: 4 more;
    /// high: twice as many and 12 more). The shapes of a simpler level are the first ones of
    /// a richer level, drawn from the same random stream.
    fn new(seed: &Seed, width: u32, height: u32, complexity: Option<&str>) -> Self {
        let mut rng = seed.rng();
        let (top, bottom) = (colour(&mut rng, 255), colour(&mut rng, 255));
        let base = 3 + rng.u32(..5);
        let count = match complexity {
            Some("low") => base.div_ceil(2),
            Some("medium") => base + 4,
            Some("high") => base * 2 + 12,
            _ => base,
        };
        let scale = width.min(height) as f32;
        let shapes = (0..count)
            .map(|_| {
                let fill = colour(&mut rng, 255);
                if rng.bool() {
                    let (cx, cy) = (rng.f32() * width as f32, rng.f32() * height as f32);
                    let r = scale * (0.05 + rng.f32() * 0.25);
                    Shape::Circle { cx, cy, r, fill }
                } else {
                    let w = (width as f32 * (0.1 + rng.f32() * 0.5)) as u32;
                    let h = (height as f32 * (0.03 + rng.f32() * 0.15)) as u32;
                    let x0 = rng.u32(..width.saturating_sub(w).max(1));
                    let y0 = rng.u32(..height.saturating_sub(h).max(1));
                    Shape::Bar { x0, y0, w, h, fill }
                }
            })
            .collect();
        Self {
            top,
            bottom,
            shapes,
        }
    }

    /// The scene in pixels, with each shape moved sideways by `phase` (0.0..1.0) of the width,
    /// alternately right and left and wrapping around, so the frames of a GIF loop smoothly.
    fn draw(&self, width: u32, height: u32, transparent: bool, phase: f32) -> RgbaImage {
        let (top, bottom) = (self.top, self.bottom);
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
        for (i, shape) in self.shapes.iter().enumerate() {
            let direction = if i % 2 == 0 { 1.0 } else { -1.0 };
            let shift = phase * width as f32 * direction;
            match *shape {
                Shape::Circle { cx, cy, r, fill } => {
                    let cx = if phase == 0.0 {
                        cx
                    } else {
                        (cx + shift).rem_euclid(width as f32)
                    };
                    fill_circle(&mut img, cx, cy, r, fill);
                }
                Shape::Bar { x0, y0, w, h, fill } => {
                    let x0 = (i64::from(x0) + shift as i64).rem_euclid(i64::from(width.max(1)));
                    let x0 = x0 as u32;
                    for y in y0..(y0 + h).min(height) {
                        for x in x0..(x0 + w).min(width) {
                            img.put_pixel(x, y, fill);
                        }
                    }
                }
            }
        }
        img
    }
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
        // Animations and markup take their own paths (`Encoding::image`, `svg_image`).
        ImageFormat::Gif | ImageFormat::Svg => {
            return Err(ProviderError::new(
                ErrorKind::BadResponse,
                format!("mock: a still {format} encoder was asked for"),
            ))
        }
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{image_info::probe, layers::Checked, ImageProviderExt as _};

    fn provider() -> MockProvider {
        MockProvider::new(MockSettings::default())
    }

    /// The mock behind the catalog checks every caller puts in front of it.
    fn checked() -> Checked {
        Checked::new(
            Arc::new(provider()),
            Arc::new(Catalog::for_kind(catalog_entries())),
        )
    }

    #[tokio::test]
    async fn images_are_deterministic_per_prompt_seed_and_size() {
        let p = provider();
        let mut r = GenerateRequest::new("a lighthouse at dusk", MOCK_MODEL);
        r.options.size = Some("256x128".into());
        let a = p.generate(&r).await.unwrap();
        let b = p.generate(&r).await.unwrap();
        assert_eq!(a.images[0].bytes, b.images[0].bytes);
        r.prompt = "a red fox in snow".into();
        let c = p.generate(&r).await.unwrap();
        assert_ne!(a.images[0].bytes, c.images[0].bytes);
        r.options.seed = Some(7);
        let d = p.generate(&r).await.unwrap();
        assert_ne!(c.images[0].bytes, d.images[0].bytes);
    }

    #[tokio::test]
    async fn every_format_decodes_at_the_requested_size() {
        let p = provider();
        for format in ImageFormat::RASTER {
            let mut r = GenerateRequest::new("shapes", MOCK_MODEL);
            r.options.size = Some("320x200".into());
            r.options.output_format = Some(format);
            r.options.n = Some(2);
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
        r.options.size = Some("64x64".into());
        let result = provider().generate(&r).await.unwrap();
        let decoded = image::load_from_memory(&result.images[0].bytes)
            .unwrap()
            .into_rgba8();
        assert!(decoded.pixels().all(|p| p.0[3] == 255));
    }

    #[tokio::test]
    async fn transparent_background_leaves_alpha_zero_corners_visible() {
        let mut r = GenerateRequest::new("ghost", MOCK_MODEL);
        r.options.size = Some("64x64".into());
        r.options.background = Some("transparent".into());
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

        let p = super::provider(MockSettings {
            fail_sequence: sequence,
            ..MockSettings::default()
        });
        let mut r = GenerateRequest::new("x", MOCK_MODEL);
        r.options.size = Some("32x32".into());
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
        r.options.size = Some("128x64".into());
        r.options.partial_images = Some(2);
        let (events, rx) = Events::channel();
        let started = tokio::time::Instant::now();
        let result = p.generate_with_events(&r, &events).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(events);
        assert_eq!(partial_sizes(rx).await, vec![(0, 32, 16), (1, 32, 16)]);
        assert_eq!((result.images[0].width, result.images[0].height), (128, 64));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_a_slow_call_at_once() {
        let p = MockProvider::new(MockSettings {
            latency: Duration::from_secs(60),
            ..MockSettings::default()
        });
        let options = CallOptions::new();
        let cancel = options.cancel.clone();
        let started = tokio::time::Instant::now();
        let r = GenerateRequest::new("slow", MOCK_MODEL);
        let (outcome, _) = tokio::join!(p.generate_opts(&r, &options), async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        });
        assert_eq!(outcome.unwrap_err().kind, ErrorKind::Cancelled);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
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
        let p = super::provider(MockSettings {
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
        r.options.n = Some(2);
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
            r.options.size = Some("96x48".into());
            r.options.output_format = Some(format);
            let result = p.edit(&r).await.unwrap();
            let info = probe(&result.images[0].bytes).unwrap();
            assert_eq!((info.format, info.width, info.height), (format, 96, 48));
        }
        let mut r = edit_request("streamed");
        r.options.size = Some("128x64".into());
        r.options.partial_images = Some(2);
        let (events, rx) = Events::channel();
        let result = p.edit_with_events(&r, &events).await.unwrap();
        drop(events);
        assert_eq!(partial_sizes(rx).await, vec![(0, 32, 16), (1, 32, 16)]);
        assert_eq!((result.images[0].width, result.images[0].height), (128, 64));
    }

    #[tokio::test]
    async fn edits_follow_the_fail_sequence_shared_with_generation() {
        let p = super::provider(MockSettings {
            fail_sequence: vec![None, Some(ErrorKind::ContentPolicy)],
            ..MockSettings::default()
        });
        let mut g = GenerateRequest::new("x", MOCK_MODEL);
        g.options.size = Some("32x32".into());
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
        assert_eq!(
            checked().edit(&r).await.unwrap_err().kind,
            ErrorKind::Unsupported
        );
    }

    #[tokio::test]
    async fn variations_vary_the_image_and_name_the_models_that_can() {
        let p = provider();
        let image = InputImage::new(photo(64, 64), ImageFormat::Png, "image.png");
        let mut r = VariationRequest::new(MOCK_MODEL, image.clone());
        r.n = 2;
        r.size = Some("32x32".into());
        let result = p.variation(&r).await.unwrap();
        assert_eq!(result.images.len(), 2);
        assert_ne!(result.images[0].bytes, result.images[1].bytes);
        assert_eq!((result.images[0].width, result.images[0].height), (32, 32));
        let err = checked()
            .variation(&VariationRequest::new("gpt-image-1.5", image))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unsupported);
        assert!(err.message.contains("dall-e-2, mock-image-1"), "{err}");
    }

    /// Every frame of a GIF, decoded, with its delay in milliseconds.
    fn gif_frames(bytes: &[u8]) -> Vec<(RgbaImage, u32)> {
        use image::AnimationDecoder as _;
        let decoder = image::codecs::gif::GifDecoder::new(Cursor::new(bytes)).unwrap();
        decoder
            .into_frames()
            .map(|frame| {
                let frame = frame.unwrap();
                let (numer, denom) = frame.delay().numer_denom_ms();
                (frame.into_buffer(), numer / denom.max(1))
            })
            .collect()
    }

    #[tokio::test]
    async fn gifs_have_the_frames_asked_for_each_different_and_looping() {
        let p = provider();
        let mut r = GenerateRequest::new("a bouncing ball", MOCK_MODEL);
        r.options.size = Some("64x48".into());
        r.options.output_format = Some(ImageFormat::Gif);
        r.options.frame_count = Some(4);
        r.options.frame_duration_ms = Some(120);
        let result = p.generate(&r).await.unwrap();
        let gif = &result.images[0];
        assert_eq!(
            (gif.format, gif.frames, gif.width, gif.height),
            (ImageFormat::Gif, 4, 64, 48)
        );
        let info = probe(&gif.bytes).unwrap();
        assert_eq!(
            (info.format, info.width, info.height, info.frames),
            (ImageFormat::Gif, 64, 48, 4)
        );
        let frames = gif_frames(&gif.bytes);
        assert_eq!(frames.len(), 4);
        for (i, (frame, delay)) in frames.iter().enumerate() {
            assert_eq!(frame.dimensions(), (64, 48), "frame {i}");
            assert_eq!(*delay, 120, "frame {i}");
            assert!(frame.pixels().all(|p| p.0[3] == 255), "frame {i} is opaque");
            for (j, (other, _)) in frames.iter().enumerate().skip(i + 1) {
                let differing = frame
                    .pixels()
                    .zip(other.pixels())
                    .filter(|(a, b)| a != b)
                    .count();
                assert!(
                    differing > 64 * 48 / 50,
                    "frames {i} and {j} differ in {differing} px"
                );
            }
        }
        assert_eq!(
            p.generate(&r).await.unwrap().images,
            result.images,
            "deterministic"
        );
        // The catalog's default frame count and the API's default duration.
        r.options.frame_count = None;
        r.options.frame_duration_ms = None;
        let result = p.generate(&r).await.unwrap();
        assert_eq!(result.images[0].frames, 9);
        let frames = gif_frames(&result.images[0].bytes);
        assert_eq!((frames.len(), frames[0].1), (9, 200));
        // The first frame is the still picture, in the GIF's palette.
        r.options.output_format = None;
        let still = pixels(&p.generate(&r).await.unwrap().images[0]);
        let close = still
            .pixels()
            .zip(frames[0].0.pixels())
            .all(|(a, b)| (0..3).all(|c| a.0[c].abs_diff(b.0[c]) <= 26));
        assert!(
            close,
            "frame 0 is the PNG's picture within the palette's steps"
        );
    }

    #[tokio::test]
    async fn svgs_are_the_same_picture_as_markup_at_the_requested_size() {
        let p = provider();
        let mut r = GenerateRequest::new("a lighthouse", MOCK_MODEL);
        r.options.size = Some("320x200".into());
        r.options.output_format = Some(ImageFormat::Svg);
        let result = p.generate(&r).await.unwrap();
        let svg = &result.images[0];
        assert_eq!(
            (svg.format, svg.frames, svg.width, svg.height),
            (ImageFormat::Svg, 1, 320, 200)
        );
        let info = probe(&svg.bytes).unwrap();
        assert_eq!(
            (info.format, info.width, info.height),
            (ImageFormat::Svg, 320, 200)
        );
        let text = std::str::from_utf8(&svg.bytes).unwrap();
        assert!(text.contains(r#"viewBox="0 0 320 200""#), "{text}");
        let seed = Seed::new("a lighthouse", 0, 0);
        let scene = Scene::new(&seed, 320, 200, None);
        let hex = |c: Rgba<u8>| format!("#{:02x}{:02x}{:02x}", c.0[0], c.0[1], c.0[2]);
        assert!(
            text.contains(&hex(scene.top)) && text.contains(&hex(scene.bottom)),
            "{text}"
        );
        let shapes = text.matches("<circle").count() + text.matches("<rect x=").count();
        assert_eq!(shapes, scene.shapes.len(), "{text}");
        assert_eq!(p.generate(&r).await.unwrap().images, result.images);
        // An SVG edit: the edit's shapes over the input's mean colour.
        let mut e = edit_request("vectorise");
        e.options.output_format = Some(ImageFormat::Svg);
        let edited = p.edit(&e).await.unwrap();
        assert_eq!(
            probe(&edited.images[0].bytes).map(|i| (i.format, i.width)),
            Ok((ImageFormat::Svg, 64))
        );
    }

    #[tokio::test]
    async fn complexity_levels_draw_fewer_or_more_shapes_and_unset_is_unchanged() {
        let seed = Seed::new("a city at night", 3, 0);
        let count = |level| Scene::new(&seed, 256, 256, level).shapes.len();
        let (unset, low, medium, high) = (
            count(None),
            count(Some("low")),
            count(Some("medium")),
            count(Some("high")),
        );
        assert!((3..=7).contains(&unset), "{unset}");
        assert!(
            low < unset && unset < medium && medium < high,
            "{low} {unset} {medium} {high}"
        );
        let p = provider();
        let mut r = GenerateRequest::new("a city at night", MOCK_MODEL);
        r.options.size = Some("96x96".into());
        r.options.seed = Some(3);
        let mut outputs = Vec::new();
        for level in [None, Some("low"), Some("medium"), Some("high")] {
            r.options.complexity = level.map(str::to_owned);
            outputs.push(p.generate(&r).await.unwrap().images[0].bytes.clone());
        }
        for i in 0..outputs.len() {
            for j in i + 1..outputs.len() {
                assert_ne!(outputs[i], outputs[j], "levels {i} and {j}");
            }
        }
        // Unset complexity draws what the mock drew before the parameter existed: these are
        // the pixel hashes of the mock at commit 358d959.
        for (prompt, size, seed, golden) in [
            (
                "a city at night",
                "96x96",
                3,
                "95f18e57c0e9ea0b3188738775459c070b61e317b531ba88eebf91670e74a4a1",
            ),
            (
                "golden",
                "200x120",
                0,
                "56a2443efec605602719fa8ba889fabbb28a7b6cb89cdaa70e57708d9cc5433e",
            ),
        ] {
            let mut r = GenerateRequest::new(prompt, MOCK_MODEL);
            r.options.size = Some(size.into());
            r.options.seed = Some(seed);
            let px = pixels(&p.generate(&r).await.unwrap().images[0]);
            let hash: [u8; 32] = Sha256::digest(px.as_raw()).into();
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, golden, "{prompt}");
        }
    }

    /// A markup layer: an opaque red ring-ish disc at (48, 48) radius 10, the rest transparent.
    fn markup(width: u32, height: u32) -> Bytes {
        let img = RgbaImage::from_fn(width, height, |x, y| {
            let (dx, dy) = (x as i32 - 48, y as i32 - 48);
            Rgba([255, 0, 0, if dx * dx + dy * dy <= 100 { 255 } else { 0 }])
        });
        Bytes::from(encode(&img, ImageFormat::Png, None).unwrap())
    }

    fn marked(x: u32, y: u32) -> bool {
        let (dx, dy) = (x as i32 - 48, y as i32 - 48);
        dx * dx + dy * dy <= 100
    }

    #[tokio::test]
    async fn markup_edits_change_only_the_marked_pixels_unless_a_mask_opens_more() {
        let input = image::load_from_memory(&photo(64, 64))
            .unwrap()
            .into_rgba8();
        let mut r = edit_request("make the circled thing gold");
        r.markup = Some(InputImage::new(
            markup(64, 64),
            ImageFormat::Png,
            "markup.png",
        ));
        let out = pixels(&provider().edit(&r).await.unwrap().images[0]);
        let (mut kept, mut marked_total, mut changed) = (0, 0, 0);
        for (x, y, px) in out.enumerate_pixels() {
            if marked(x, y) {
                marked_total += 1;
                changed += usize::from(px != input.get_pixel(x, y));
            } else {
                assert_eq!(px, input.get_pixel(x, y), "unmarked pixel at {x},{y}");
                kept += 1;
            }
        }
        assert_eq!(kept + marked_total, 64 * 64);
        assert!(
            marked_total > 300 && changed > marked_total * 9 / 10,
            "{changed} of {marked_total}"
        );

        // With a mask keeping the left half and opening the right: the right half changes
        // (the mask opens it), the left half is kept, marked or not.
        let mut r = edit_request("make the circled thing gold");
        r.markup = Some(InputImage::new(
            markup(64, 64),
            ImageFormat::Png,
            "markup.png",
        ));
        r.mask = Some(InputImage::new(
            half_mask(64, 64),
            ImageFormat::Png,
            "mask.png",
        ));
        let out = pixels(&provider().edit(&r).await.unwrap().images[0]);
        let mut right_changed = 0;
        for (x, y, px) in out.enumerate_pixels() {
            if x < 32 {
                assert_eq!(px, input.get_pixel(x, y), "masked pixel at {x},{y}");
            } else {
                right_changed += usize::from(px != input.get_pixel(x, y));
            }
        }
        assert!(right_changed > 32 * 64 * 9 / 10, "{right_changed}");
    }

    #[tokio::test]
    async fn gif_edits_animate_the_edited_picture() {
        let mut r = edit_request("make it dance");
        r.options.output_format = Some(ImageFormat::Gif);
        r.options.frame_count = Some(3);
        let result = provider().edit(&r).await.unwrap();
        let gif = &result.images[0];
        assert_eq!(
            (gif.format, gif.frames, gif.width, gif.height),
            (ImageFormat::Gif, 3, 64, 64)
        );
        let frames = gif_frames(&gif.bytes);
        assert_eq!(frames.len(), 3);
        assert_ne!(frames[0].0, frames[1].0);
        assert_eq!(probe(&gif.bytes).map(|i| i.frames), Ok(3));
    }

    /// Timing of the GIF path, for the numbers in the docs: run with
    /// `cargo test --release -p imagegen-providers --lib gif_timing -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn gif_timing() {
        let p = provider();
        for size in ["512x512", "1024x1024"] {
            let mut r = GenerateRequest::new("timing", MOCK_MODEL);
            r.options.size = Some(size.into());
            r.options.output_format = Some(ImageFormat::Gif);
            p.generate(&r).await.unwrap();
            let started = std::time::Instant::now();
            const RUNS: u32 = 5;
            let mut bytes = 0;
            for _ in 0..RUNS {
                bytes = p.generate(&r).await.unwrap().images[0].bytes.len();
            }
            println!(
                "gif 9 frames {size}: {:?} per image, {bytes} bytes",
                started.elapsed() / RUNS
            );
            // What `image`'s encoder (a NeuQuant palette per frame) takes for the same frames.
            let (w, h) = parse_size(size).unwrap();
            let scene = Scene::new(&Seed::new("timing", 0, 0), w, h, None);
            let started = std::time::Instant::now();
            let mut out = Vec::new();
            {
                let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 10);
                for i in 0..9 {
                    let frame = scene.draw(w, h, false, i as f32 / 9.0);
                    encoder.encode_frame(image::Frame::new(frame)).unwrap();
                }
            }
            println!(
                "  image's GifEncoder (speed 10): {:?}, {} bytes",
                started.elapsed(),
                out.len()
            );
        }
    }
}
