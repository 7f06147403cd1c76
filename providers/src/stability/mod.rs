//! Stability AI's Stable Image API (`kind = "stability"`): multipart `stable-image` routes.
//!
//! Generations go to `POST {base}/v2beta/stable-image/generate/{ultra|core|sd3}` (the SD 3.5
//! models name themselves in `model`), as `multipart/form-data` with `Authorization: Bearer`.
//! Edits with a mask go to `edit/inpaint` (the mask's transparent pixels become the white
//! "paint here" pixels Stability reads); edits without one are image-to-image on the model's
//! own route (`mode=image-to-image` and `strength` on `sd3`, `image` and `strength` on
//! `ultra`). `Accept: image/*` asks for the image's bytes, with `finish-reason` and `seed`
//! headers; a JSON answer (`{"image", "finish_reason", "seed"}`) is read too. A
//! `CONTENT_FILTERED` finish is `content_policy`. A request makes one image, so `n` above 1 is
//! that many concurrent requests (`sent.requests` says so). A size becomes the nearest
//! `aspect_ratio`. Errors are classified once, in [`error::parse_error`].

mod config;
mod error;

pub use config::{Config, STANDARD_ENV};

use std::{fmt, io::Cursor, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::try_join_all;
use reqwest::{
    header::{HeaderMap, ACCEPT, CONTENT_TYPE},
    multipart::{Form, Part},
};
use serde_json::{Map, Value};

use crate::{
    catalog::SizeRule,
    http::{
        body::{bad, decode_base64, read_capped, read_truncated, too_large, ReadError},
        error::{redacted, transport_error},
        executor::{Attempt, Executor},
        retry::{self, RetryPolicy},
    },
    keys::{KeyPool, PoolKey},
    options::parse_aspect_ratio,
    secret::Scrubber,
    validate::parse_size,
    CallOptions, Catalog, EditRequest, ErrorKind, GenerateRequest, GenerateResult, GeneratedImage,
    ImageFormat, ImageOptions, ImageProvider, InputImage, ModelCapabilities, ModelState, Param,
    ProviderError, ProviderEvent,
};

/// The API's origin.
pub const DEFAULT_BASE_URL: &str = "https://api.stability.ai";

/// The model used when the configuration names none: SD 3.5 Large, which generates, edits
/// image-to-image and inpaints.
pub const DEFAULT_MODEL: &str = "sd3.5-large";

/// The models advertised when the configuration lists none.
pub const DEFAULT_MODELS: &[&str] = &[
    "stable-image-ultra",
    "stable-image-core",
    "sd3.5-large",
    "sd3.5-large-turbo",
    "sd3.5-medium",
];

/// The built-in aliases.
pub const ALIASES: &[(&str, &str)] = &[
    ("fast", "stable-image-core"),
    ("best", "stable-image-ultra"),
];

/// Concurrent requests one call may make: each request makes one image.
pub const MAX_N: u32 = 4;

/// Every `aspect_ratio` the generate routes take.
const RATIOS: [&str; 9] = [
    "16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21",
];

/// The largest seed the API takes.
const MAX_SEED: u64 = 4_294_967_294;

/// `strength` of an image-to-image edit when `extra` gives none: the middle of 0..1, keeping
/// the input's layout while following the prompt.
const DEFAULT_STRENGTH: f64 = 0.6;

/// Error bodies are only read for their message.
const ERROR_BODY_CAP: usize = 64 * 1024;

/// How to reach one Stability account.
#[derive(Clone)]
#[non_exhaustive]
pub struct StabilitySettings {
    /// The API origin.
    pub base_url: url::Url,
    /// The API keys.
    pub keys: Arc<KeyPool>,
    /// The model used when a request names none.
    pub model: String,
    /// The models to advertise.
    pub models: Vec<String>,
    /// Per-attempt timeout, body included.
    pub timeout: Duration,
    /// How retryable failures are retried.
    pub retry: RetryPolicy,
    /// The longest one call may take.
    pub deadline: Duration,
    /// The largest answer accepted, bytes.
    pub max_response_bytes: usize,
    /// The catalog requests are checked against.
    pub catalog: Arc<Catalog>,
}

impl fmt::Debug for StabilitySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StabilitySettings")
            .field("base_url", &redacted(&self.base_url))
            .field("keys", &self.keys)
            .field("model", &self.model)
            .field("retry", &self.retry)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl StabilitySettings {
    /// Settings for `base_url` with `keys` and every other value at its default.
    pub fn new(base_url: url::Url, keys: Arc<KeyPool>) -> Self {
        Self {
            base_url,
            keys,
            model: DEFAULT_MODEL.into(),
            models: DEFAULT_MODELS.iter().map(|m| m.to_string()).collect(),
            timeout: Duration::from_secs(180),
            retry: RetryPolicy::default(),
            deadline: Duration::from_secs(300),
            max_response_bytes: 64 * 1024 * 1024,
            catalog: Arc::new(Catalog::for_kind(catalog_entries())),
        }
    }
}

fn stable_image(formats: &[ImageFormat], extras: &[&str], note: &str) -> ModelCapabilities {
    ModelCapabilities {
        // Any `WxH` is taken and mapped to the nearest aspect_ratio.
        sizes: vec!["1024x1024".into()],
        custom_sizes: Some(SizeRule {
            multiple_of: 1,
            min_side: 64,
            max_side: 8192,
            max_ratio: 3.0,
            min_pixels: 1,
            max_pixels: u64::MAX,
        }),
        qualities: Vec::new(),
        styles: Vec::new(),
        max_n: MAX_N,
        formats: formats.to_vec(),
        max_prompt_chars: 10_000,
        edit: true,
        max_edit_images: 1,
        variations: false,
        params: vec![
            Param::Size,
            Param::AspectRatio,
            Param::N,
            Param::OutputFormat,
            Param::Seed,
        ],
        complexities: Vec::new(),
        gif: None,
        state: ModelState::Active,
        shutdown_date: None,
        replacement: None,
        known: true,
        note: Some(format!(
            "{note}; sizes map to the nearest aspect ratio (16:9, 1:1, 21:9, 2:3, 3:2, 4:5, 5:4, \
             9:16, 9:21); n above 1 is sent as concurrent requests"
        )),
        extra_params: extras.iter().map(|e| e.to_string()).collect(),
        prices: None,
    }
}

/// The catalog entries of `kind = "stability"`, as of 2026-12-01 (no shutdown announced for
/// the Stable Image models; SD 1.6's API ended on 2025-07-24).
pub fn catalog_entries() -> Vec<(&'static str, ModelCapabilities)> {
    use ImageFormat::{Jpeg, Png, Webp};
    let sd3 = |note: &str, extras: &[&str]| stable_image(&[Png, Jpeg], extras, note);
    vec![
        (
            "stable-image-ultra",
            stable_image(
                &[Png, Jpeg, Webp],
                &["negative_prompt", "strength"],
                "Stable Image Ultra",
            ),
        ),
        (
            "stable-image-core",
            stable_image(
                &[Png, Jpeg, Webp],
                &["negative_prompt", "style_preset"],
                "Stable Image Core; edits need a mask (inpainting)",
            ),
        ),
        (
            "sd3.5-large",
            sd3(
                "Stable Diffusion 3.5 Large",
                &["negative_prompt", "strength", "cfg_scale"],
            ),
        ),
        (
            "sd3.5-large-turbo",
            sd3(
                "Stable Diffusion 3.5 Large Turbo",
                &["strength", "cfg_scale"],
            ),
        ),
        (
            "sd3.5-medium",
            sd3(
                "Stable Diffusion 3.5 Medium",
                &["negative_prompt", "strength", "cfg_scale"],
            ),
        ),
        (
            "stable-diffusion-v1-6",
            ModelCapabilities {
                shutdown_date: Some("2025-07-24".into()),
                replacement: Some("stable-image-core".into()),
                edit: false,
                ..sd3("Stable Diffusion 1.6 (its API ended)", &[])
            },
        ),
    ]
}

/// Which route serves `model`: `ultra`, `core`, or `sd3` (which takes the model by name).
fn route(model: &str) -> &'static str {
    match model {
        "stable-image-ultra" => "ultra",
        "stable-image-core" => "core",
        _ => "sd3",
    }
}

/// The `aspect_ratio` nearest to `w:h` (in log scale).
fn nearest_ratio(w: u32, h: u32) -> &'static str {
    let want = (f64::from(w) / f64::from(h)).ln();
    let value = |r: &str| {
        let (a, b) = parse_aspect_ratio(r).unwrap_or((1, 1));
        (f64::from(a) / f64::from(b)).ln()
    };
    RATIOS
        .iter()
        .min_by(|a, b| {
            let (da, db) = ((value(a) - want).abs(), (value(b) - want).abs());
            da.partial_cmp(&db).unwrap_or(std::cmp::Ordering::Equal)
        })
        .copied()
        .unwrap_or("1:1")
}

/// What one request sends: the route, the text fields, and the images.
#[derive(Debug, Clone)]
struct Call {
    route: String,
    fields: Map<String, Value>,
    image: Option<InputImage>,
    mask: Option<Bytes>,
    model: String,
}

impl Call {
    /// The form of one attempt (a sent form is consumed, so each attempt builds its own; the
    /// image bytes are shared, not copied).
    fn form(&self, prompt: &str) -> Result<Form, ProviderError> {
        let mut form = Form::new().text("prompt", prompt.to_string());
        for (name, value) in &self.fields {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            form = form.text(name.clone(), text);
        }
        if let Some(image) = &self.image {
            form = form.part(
                "image",
                part(image.bytes.clone(), &image.name, image.mime())?,
            );
        }
        if let Some(mask) = &self.mask {
            form = form.part("mask", part(mask.clone(), "mask.png", "image/png")?);
        }
        Ok(form)
    }
}

fn part(bytes: Bytes, name: &str, mime: &str) -> Result<Part, ProviderError> {
    let len = bytes.len() as u64;
    Part::stream_with_length(reqwest::Body::from(bytes), len)
        .file_name(name.to_string())
        .mime_str(mime)
        .map_err(|e| ProviderError::invalid_param("images", format!("cannot send `{name}`: {e}")))
}

/// A mask whose transparent pixels mark where to edit, as Stability reads one: white where
/// to paint, black where to keep (its grey levels are the strength).
fn stability_mask(mask: &InputImage) -> Result<Bytes, ProviderError> {
    let decoded = image::load_from_memory(&mask.bytes)
        .map_err(|e| ProviderError::invalid_param("mask", format!("the mask cannot be read: {e}")))?
        .to_rgba8();
    let grey = image::GrayImage::from_fn(decoded.width(), decoded.height(), |x, y| {
        image::Luma([255 - decoded.get_pixel(x, y)[3]])
    });
    let mut out = Cursor::new(Vec::new());
    grey.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| {
            ProviderError::invalid_param("mask", format!("the mask cannot be converted: {e}"))
        })?;
    Ok(Bytes::from(out.into_inner()))
}

/// The Stability provider.
pub struct StabilityProvider {
    settings: StabilitySettings,
    client: reqwest::Client,
    executor: Executor,
    scrubber: Scrubber,
}

impl fmt::Debug for StabilityProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StabilityProvider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl StabilityProvider {
    /// A provider using `client` (whose connection pool may be shared) with `settings`.
    pub fn new(settings: StabilitySettings, client: reqwest::Client) -> Self {
        let scrubber = Scrubber::new(&settings.keys, &settings.base_url);
        let executor = Executor::new(
            "stability",
            Arc::clone(&settings.keys),
            settings.retry,
            settings.deadline,
        )
        .with_scrubber(scrubber.clone());
        Self {
            settings,
            client,
            executor,
            scrubber,
        }
    }

    /// The text fields every route shares: format, seed and the declared extras (`with_ratio`:
    /// whether the route takes `aspect_ratio`, which edits do not: they keep the input's shape).
    fn fields(
        &self,
        model: &str,
        options: &ImageOptions,
        with_ratio: bool,
    ) -> Result<Map<String, Value>, ProviderError> {
        let caps = self.settings.catalog.get(model);
        let mut fields = Map::new();
        if options.resolution.is_some() {
            return Err(ProviderError::invalid_param(
                "resolution",
                format!("{model} makes one resolution (about 1 megapixel) and takes no resolution; leave it unset"),
            ));
        }
        let ratio = match (&options.size, &options.aspect_ratio) {
            (Some(size), _) => {
                let (w, h) = parse_size(size).ok_or_else(|| {
                    ProviderError::invalid_param(
                        "size",
                        format!("size `{size}` is not WIDTHxHEIGHT"),
                    )
                })?;
                Some(nearest_ratio(w, h))
            }
            (None, Some(ratio)) => {
                let (w, h) = parse_aspect_ratio(ratio).ok_or_else(|| {
                    ProviderError::invalid_param(
                        "aspect_ratio",
                        format!("aspect_ratio `{ratio}` is not WIDTH:HEIGHT such as 16:9"),
                    )
                })?;
                Some(nearest_ratio(w, h))
            }
            (None, None) => None,
        };
        if let Some(ratio) = ratio.filter(|_| with_ratio) {
            fields.insert("aspect_ratio".into(), ratio.into());
        }
        if let Some(format) = options.output_format {
            fields.insert("output_format".into(), format.as_str().into());
        }
        if let Some(seed) = options.seed {
            if seed > MAX_SEED {
                return Err(ProviderError::invalid_param(
                    "seed",
                    format!("seed {seed} is too large: Stability takes 0..={MAX_SEED}"),
                ));
            }
            fields.insert("seed".into(), seed.into());
        }
        for (key, value) in options.extra.iter().flatten() {
            if caps.extra_params.contains(key) && key != "strength" {
                fields.insert(key.clone(), value.clone());
            }
        }
        Ok(fields)
    }

    /// One attempt: the form to the route, read as image bytes or as JSON.
    async fn send(
        &self,
        call: &Call,
        prompt: &str,
        key: Option<&PoolKey>,
        options: &CallOptions,
    ) -> Result<(Bytes, HeaderMap), ProviderError> {
        let s = &self.settings;
        let mut url = s.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty();
            segments.extend(["v2beta", "stable-image"]);
            segments.extend(call.route.split('/'));
        }
        let mut req = self
            .client
            .post(url)
            .timeout(s.timeout)
            .header(ACCEPT, "image/*")
            .multipart(call.form(prompt)?);
        if let Some(key) = key {
            req = req.bearer_auth(key.expose());
        }
        let what = "the Stability API";
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(e, what, s.timeout))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if !status.is_success() {
            let body = read_truncated(resp, ERROR_BODY_CAP.min(s.max_response_bytes)).await;
            return Err(error::parse_error(
                status,
                &headers,
                &body,
                key,
                &self.scrubber,
            ));
        }
        options.events.send(ProviderEvent::Receiving);
        let cap = s.max_response_bytes;
        let body = read_capped(resp, cap).await.map_err(|e| {
            match e {
                ReadError::TooLarge => too_large("the answer", cap),
                ReadError::Transport(e) => transport_error(e, what, s.timeout),
            }
            .with_request_sent(true)
        })?;
        Ok((body, headers))
    }

    /// The image of an answer: its bytes, or the JSON's base64 `image`; a filtered finish is
    /// `content_policy`.
    fn read(&self, body: Bytes, headers: &HeaderMap) -> Result<GeneratedImage, ProviderError> {
        let json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        let (bytes, finish) = if json {
            let value: Value = serde_json::from_slice(&body).map_err(|e| {
                bad(format!(
                    "the answer is not JSON ({:?} error at line {}, column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ))
            })?;
            let finish = value
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            if finish.as_deref() == Some("CONTENT_FILTERED") {
                return Err(filtered());
            }
            let image = value
                .get("image")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("the JSON answer has no base64 `image`"))?;
            let bytes = decode_base64(image)
                .map_err(|e| bad(format!("`image` is not valid base64: {e}")))?;
            (bytes, finish)
        } else {
            (
                body,
                retry::header(headers, "finish-reason").map(str::to_string),
            )
        };
        match finish.as_deref() {
            Some("CONTENT_FILTERED") => return Err(filtered()),
            None | Some("SUCCESS") => {}
            Some(other) => {
                let reason = self
                    .scrubber
                    .token(other)
                    .unwrap_or_else(|| "unreadable".into());
                return Err(bad(format!(
                    "Stability finished without an image (finish-reason {reason})"
                ))
                .with_provider_detail(Some(reason), None));
            }
        }
        GeneratedImage::from_encoded(bytes)
            .map_err(|e| bad(format!("the answer is not a usable image: {e}")))
    }

    /// One request's image, through the executor.
    async fn one(
        &self,
        call: &Call,
        prompt: &str,
        options: &CallOptions,
    ) -> Result<GeneratedImage, ProviderError> {
        self.executor
            .run(
                options,
                "stability generation",
                &call.model,
                |attempt: Attempt| async move { self.send(call, prompt, attempt.key(), options).await },
                |sent| async move {
                    let (body, headers) = sent.value;
                    self.read(body, &headers).map_err(|e| e.with_request_sent(true))
                },
            )
            .await
    }

    /// Runs `n` requests of `call` at once and gathers their images into one result.
    async fn call(
        &self,
        call: Call,
        prompt: &str,
        n: u32,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        if n > MAX_N {
            // The catalog can be overridden past what this provider splits into requests.
            return Err(ProviderError::invalid_param(
                "n",
                format!("n = {n}: Stability makes one image per request and sends at most {MAX_N} at once"),
            ));
        }
        let n = n.max(1);
        let call_ref = &call;
        let images = try_join_all((0..n).map(|_| self.one(call_ref, prompt, options))).await?;
        let mut sent = call.fields.clone();
        sent.insert("route".into(), call.route.clone().into());
        if n > 1 {
            sent.insert("requests".into(), n.into());
        }
        Ok(GenerateResult::new(images, call.model.clone()).with_sent(sent))
    }
}

fn filtered() -> ProviderError {
    ProviderError::new(
        ErrorKind::ContentPolicy,
        "Stability's content filter withheld the image (finish-reason CONTENT_FILTERED); rephrase the prompt",
    )
    .with_retryable(false)
    .with_provider_detail(Some("CONTENT_FILTERED".into()), None)
}

#[async_trait]
impl ImageProvider for StabilityProvider {
    fn kind(&self) -> &'static str {
        "stability"
    }

    fn default_model(&self) -> &str {
        &self.settings.model
    }

    fn models(&self) -> Vec<String> {
        self.settings.models.clone()
    }

    fn capabilities(&self, model: &str) -> ModelCapabilities {
        self.settings.catalog.get(model)
    }

    fn lifecycle_is_authoritative(&self) -> bool {
        true
    }

    fn aliases(&self) -> Vec<(String, String)> {
        crate::catalog::alias_pairs(ALIASES)
    }

    #[tracing::instrument(skip_all, fields(model = %request.model))]
    async fn generate_opts(
        &self,
        request: &GenerateRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let route = route(&request.model);
        let mut fields = self.fields(&request.model, &request.options, true)?;
        if route == "sd3" {
            fields.insert("model".into(), request.model.clone().into());
        }
        let call = Call {
            route: format!("generate/{route}"),
            fields,
            image: None,
            mask: None,
            model: request.model.clone(),
        };
        self.call(call, &request.prompt, request.n(), options).await
    }

    #[tracing::instrument(skip_all, fields(model = %request.model))]
    async fn edit_opts(
        &self,
        request: &EditRequest,
        options: &CallOptions,
    ) -> Result<GenerateResult, ProviderError> {
        let model = request.model.as_str();
        let image = request
            .images
            .first()
            .cloned()
            .ok_or_else(|| ProviderError::invalid_param("images", "an edit needs an image"))?;
        let mut fields = self.fields(model, &request.options, false)?;
        let call = match &request.mask {
            Some(mask) => Call {
                route: "edit/inpaint".into(),
                fields,
                image: Some(image),
                mask: Some(stability_mask(mask)?),
                model: model.to_string(),
            },
            None => {
                let route = route(model);
                if route == "core" {
                    return Err(ProviderError::invalid_param(
                        "mask",
                        format!("{model} edits only with a mask (inpainting); give a mask, or use sd3.5-large or stable-image-ultra for image-to-image"),
                    ));
                }
                let strength = request
                    .options
                    .extra
                    .as_ref()
                    .and_then(|e| e.get("strength"))
                    .cloned()
                    .unwrap_or_else(|| DEFAULT_STRENGTH.into());
                fields.insert("strength".into(), strength);
                if route == "sd3" {
                    fields.insert("mode".into(), "image-to-image".into());
                    fields.insert("model".into(), model.into());
                }
                Call {
                    route: format!("generate/{route}"),
                    fields,
                    image: Some(image),
                    mask: None,
                    model: model.to_string(),
                }
            }
        };
        self.call(call, &request.prompt, request.n(), options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_map_to_the_nearest_ratio_and_models_to_their_route() {
        assert_eq!(nearest_ratio(1536, 1024), "3:2");
        assert_eq!(nearest_ratio(1024, 1024), "1:1");
        assert_eq!(nearest_ratio(1080, 2520), "9:21");
        assert_eq!(route("sd3.5-large-turbo"), "sd3");
        assert_eq!(route("stable-image-ultra"), "ultra");
    }

    #[test]
    fn a_transparent_mask_becomes_white_where_to_paint() {
        let mut rgba = image::RgbaImage::from_pixel(2, 1, image::Rgba([0, 0, 0, 255]));
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        let mut png = Cursor::new(Vec::new());
        rgba.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let mask = InputImage::new(png.into_inner(), ImageFormat::Png, "m.png");
        let grey = image::load_from_memory(&stability_mask(&mask).unwrap())
            .unwrap()
            .to_luma8();
        assert_eq!((grey.get_pixel(0, 0)[0], grey.get_pixel(1, 0)[0]), (255, 0));
    }
}
