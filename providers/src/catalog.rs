//! Model capabilities and lifecycles as data: a built-in catalog that configuration can
//! extend or override.
//!
//! OpenAI ships image models several times a year and shuts old ones down as often; a new
//! model, a new shutdown date or a wrong rule must be a config change, not a release. Names
//! ending in `*` match every model with that prefix (future snapshots of a known family).
//! Each entry says whether the model is `active`, `deprecated` or `shut_down`, when it shuts
//! down and what replaces it; a shutdown date that has passed makes it `shut_down`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cost::Prices;
use crate::ImageFormat;

/// A request parameter a model may or may not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Param {
    /// `size`.
    Size,
    /// `aspect_ratio`; a model that takes `size` takes it too (the provider maps it to a size).
    AspectRatio,
    /// `resolution`; a model that takes `size` takes it too (the provider maps it to a size).
    Resolution,
    /// `quality`.
    Quality,
    /// `n` above 1.
    N,
    /// `output_format`.
    OutputFormat,
    /// `output_compression`.
    OutputCompression,
    /// `background`.
    Background,
    /// `style`.
    Style,
    /// `moderation`.
    Moderation,
    /// `seed`.
    Seed,
    /// `response_format` (legacy DALL·E models only; GPT models reject it).
    ResponseFormat,
    /// `stream` and `partial_images`.
    Stream,
    /// `input_fidelity` on edits.
    InputFidelity,
    /// `complexity`: planning effort before rendering (GPT Image 2.6).
    Complexity,
    /// `frame_count` of an animated GIF.
    FrameCount,
    /// `frame_duration_ms` of an animated GIF.
    FrameDurationMs,
    /// `svg`: how an SVG result is authored.
    Svg,
    /// `markup` on edits: an annotation layer the prompt explains.
    Markup,
    /// `extra`: provider-specific parameters, each of which the model must declare.
    Extra,
}

impl Param {
    /// Every parameter, in the order they are checked and listed.
    pub const ALL: [Param; 20] = [
        Self::Size,
        Self::AspectRatio,
        Self::Resolution,
        Self::Quality,
        Self::N,
        Self::OutputFormat,
        Self::OutputCompression,
        Self::Background,
        Self::Style,
        Self::Moderation,
        Self::Seed,
        Self::ResponseFormat,
        Self::Stream,
        Self::InputFidelity,
        Self::Complexity,
        Self::FrameCount,
        Self::FrameDurationMs,
        Self::Svg,
        Self::Markup,
        Self::Extra,
    ];

    /// The parameter's name on the wire and in tool calls.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::AspectRatio => "aspect_ratio",
            Self::Resolution => "resolution",
            Self::Quality => "quality",
            Self::N => "n",
            Self::OutputFormat => "output_format",
            Self::OutputCompression => "output_compression",
            Self::Background => "background",
            Self::Style => "style",
            Self::Moderation => "moderation",
            Self::Seed => "seed",
            Self::ResponseFormat => "response_format",
            Self::Stream => "stream",
            Self::InputFidelity => "input_fidelity",
            Self::Complexity => "complexity",
            Self::FrameCount => "frame_count",
            Self::FrameDurationMs => "frame_duration_ms",
            Self::Svg => "svg",
            Self::Markup => "markup",
            Self::Extra => "extra",
        }
    }
}

/// Where a model is in its vendor's lifecycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Served, with no shutdown announced.
    #[default]
    Active,
    /// Served, but a shutdown is announced: switch to the replacement.
    Deprecated,
    /// No longer served by the vendor.
    ShutDown,
}

impl ModelState {
    /// The name used in configuration and results (`active`, `deprecated`, `shut_down`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Deprecated => "deprecated",
            Self::ShutDown => "shut_down",
        }
    }
}

impl std::fmt::Display for ModelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A calendar day (`YYYY-MM-DD`, no time zone), as vendors announce shutdowns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Days since 1970-01-01.
    days: i64,
}

impl Date {
    /// Parses `YYYY-MM-DD`; anything else (times, other separators, impossible days) is refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a date of the form YYYY-MM-DD");
        let b = text.trim().as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
            let part = std::str::from_utf8(&b[r]).map_err(|_| bad())?;
            match part.bytes().all(|c| c.is_ascii_digit()) {
                true => part.parse().map_err(|_| bad()),
                false => Err(bad()),
            }
        };
        let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_days = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
            return Err(bad());
        }
        Ok(Self {
            days: days_from_civil(y, m, d),
        })
    }

    /// Today in UTC.
    pub fn today() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            days: (secs / 86_400) as i64,
        }
    }

    /// Days from `self` to `later` (negative when `later` is earlier).
    pub fn days_until(self, later: Date) -> i64 {
        later.days - self.days
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (y, m, d) = civil_from_days(self.days);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// Howard Hinnant's `days_from_civil`: days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A model's lifecycle on a given day: what [`ModelCapabilities::lifecycle`] works out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// The state on that day.
    pub state: ModelState,
    /// The announced shutdown day, if any.
    pub shutdown_date: Option<Date>,
    /// What to use instead, if the catalog knows.
    pub replacement: Option<String>,
}

impl Lifecycle {
    /// "shut down on 2026-12-01", "shuts down on 2027-03-01 (in 90 days)", or "active".
    pub fn describe(&self, today: Date) -> String {
        match (self.state, self.shutdown_date) {
            (ModelState::ShutDown, Some(date)) => format!("shut down on {date}"),
            (ModelState::ShutDown, None) => "shut down".into(),
            (ModelState::Deprecated, Some(date)) => {
                let days = today.days_until(date);
                format!(
                    "deprecated: shuts down on {date} (in {days} day{})",
                    if days == 1 { "" } else { "s" }
                )
            }
            (ModelState::Deprecated, None) => "deprecated".into(),
            (ModelState::Active, _) => "active".into(),
        }
    }
}

/// The largest GIF frame for a number of frames: all frames share one image's pixel budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameSideCap {
    /// This cap holds for animations of up to this many frames.
    pub up_to_frames: u32,
    /// The longest frame side, pixels.
    pub max_side: u32,
}

/// What an animated GIF may be (`output_format = gif`); the reference's reading, which
/// configuration can override field by field when the API turns out to differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GifRules {
    /// The fewest frames.
    pub min_frames: u32,
    /// The most frames.
    pub max_frames: u32,
    /// The frames made when `frame_count` is not set.
    pub default_frames: u32,
    /// The shortest frame duration, milliseconds.
    pub min_frame_duration_ms: u32,
    /// The longest frame duration, milliseconds.
    pub max_frame_duration_ms: u32,
    /// Frame side caps by frame count, smallest count first; empty means no cap.
    pub frame_side_caps: Vec<FrameSideCap>,
    /// Whether a GIF can be streamed with partial images.
    pub streaming: bool,
    /// Whether a GIF edit can take a mask.
    pub mask: bool,
    /// Whether `output_compression` applies to GIFs.
    pub compression: bool,
}

impl Default for GifRules {
    fn default() -> Self {
        // Reference: frames 2..16 (default 9), 20..655,350 ms; no stream, mask or compression;
        // square-frame caps 960 (2-9 frames), 816 (10-12), 720 (13-16), measured by a third party.
        Self {
            min_frames: 2,
            max_frames: 16,
            default_frames: 9,
            min_frame_duration_ms: 20,
            max_frame_duration_ms: 655_350,
            frame_side_caps: vec![
                FrameSideCap {
                    up_to_frames: 9,
                    max_side: 960,
                },
                FrameSideCap {
                    up_to_frames: 12,
                    max_side: 816,
                },
                FrameSideCap {
                    up_to_frames: 16,
                    max_side: 720,
                },
            ],
            streaming: false,
            mask: false,
            compression: false,
        }
    }
}

impl GifRules {
    /// The longest frame side allowed for `frames` frames, if capped.
    pub fn max_side(&self, frames: u32) -> Option<u32> {
        self.frame_side_caps
            .iter()
            .find(|cap| frames <= cap.up_to_frames)
            .or(self.frame_side_caps.last())
            .map(|cap| cap.max_side)
    }

    /// The caps in words: "960 px for 2-9 frames, 816 px for 10-12, ...".
    pub fn describe_caps(&self) -> String {
        let mut from = self.min_frames;
        let mut parts = Vec::new();
        for cap in &self.frame_side_caps {
            parts.push(format!(
                "{} px for {from}-{} frames",
                cap.max_side, cap.up_to_frames
            ));
            from = cap.up_to_frames.saturating_add(1);
        }
        parts.join(", ")
    }
}

/// Rules for free-form `WxH` sizes (gpt-image-2 and later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeRule {
    /// Both sides must be multiples of this.
    pub multiple_of: u32,
    /// The shortest allowed side.
    pub min_side: u32,
    /// The longest allowed side.
    pub max_side: u32,
    /// The largest allowed long-side / short-side ratio.
    pub max_ratio: f64,
    /// The fewest pixels in all.
    pub min_pixels: u64,
    /// The most pixels in all.
    pub max_pixels: u64,
}

impl SizeRule {
    /// The rule that always holds: any positive size up to 16384 a side.
    pub fn any() -> Self {
        Self {
            multiple_of: 1,
            min_side: 1,
            max_side: 16384,
            max_ratio: f64::INFINITY,
            min_pixels: 1,
            max_pixels: u64::MAX,
        }
    }

    /// Why `width`x`height` breaks this rule, or `None` when it fits.
    pub fn violation(&self, width: u32, height: u32) -> Option<String> {
        let (long, short) = (width.max(height), width.min(height));
        let pixels = u64::from(width) * u64::from(height);
        if self.multiple_of > 1 && (width % self.multiple_of != 0 || height % self.multiple_of != 0)
        {
            Some(format!(
                "both sides must be multiples of {}",
                self.multiple_of
            ))
        } else if short < self.min_side || long > self.max_side {
            Some(format!(
                "each side must be between {} and {} pixels",
                self.min_side, self.max_side
            ))
        } else if f64::from(long) > f64::from(short) * self.max_ratio {
            Some(format!(
                "the long side may be at most {} times the short side",
                self.max_ratio
            ))
        } else if pixels < self.min_pixels || pixels > self.max_pixels {
            Some(format!(
                "the total pixel count must be between {} and {}",
                self.min_pixels, self.max_pixels
            ))
        } else {
            None
        }
    }
}

/// What one model can do, used to check requests before any paid call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelCapabilities {
    /// Fixed sizes accepted as written (`1024x1024`, `auto`, ...).
    pub sizes: Vec<String>,
    /// Free-form `WxH` sizes accepted under these rules, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_sizes: Option<SizeRule>,
    /// Accepted `quality` values; empty means any.
    pub qualities: Vec<String>,
    /// Accepted `style` values; empty means any.
    pub styles: Vec<String>,
    /// The most images one request may ask for.
    pub max_n: u32,
    /// Formats the model can return.
    pub formats: Vec<ImageFormat>,
    /// The longest prompt, in characters.
    pub max_prompt_chars: usize,
    /// Whether the model can edit images.
    pub edit: bool,
    /// The most input images one edit may send (the first is the one edited).
    #[serde(default = "default_max_edit_images")]
    pub max_edit_images: u32,
    /// Whether the model can make variations of an image.
    pub variations: bool,
    /// The optional parameters the model takes.
    pub params: Vec<Param>,
    /// Accepted `complexity` values; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub complexities: Vec<String>,
    /// Animated GIF rules, for models that return GIFs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gif: Option<GifRules>,
    /// The lifecycle state as written; a passed `shutdown_date` makes it `shut_down`.
    #[serde(default)]
    pub state: ModelState,
    /// The announced shutdown day, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_date: Option<String>,
    /// The model to use instead once this one is shut down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// Whether this entry came from a catalog (false: a guess for an unknown model).
    #[serde(default)]
    pub known: bool,
    /// A remark shown to users (preview, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The provider-specific parameters `extra` may carry for this model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_params: Vec<String>,
    /// What the model costs; `None`: not known (its calls' cost is reported as unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<Prices>,
}

impl ModelCapabilities {
    /// Whether the model takes `param`: `aspect_ratio` and `resolution` wherever `size` is
    /// taken, since the provider turns them into a size; `extra` where it declares any.
    pub fn takes(&self, param: Param) -> bool {
        match param {
            Param::AspectRatio | Param::Resolution => {
                self.params.contains(&param) || self.params.contains(&Param::Size)
            }
            Param::Extra => !self.extra_params.is_empty(),
            _ => self.params.contains(&param),
        }
    }

    /// Only the checks that always hold, for a model no catalog knows.
    pub fn unknown() -> Self {
        Self {
            sizes: vec!["auto".into()],
            custom_sizes: Some(SizeRule::any()),
            qualities: Vec::new(),
            styles: Vec::new(),
            max_n: 10,
            formats: ImageFormat::RASTER.to_vec(),
            max_prompt_chars: 32_000,
            edit: true,
            max_edit_images: 16,
            variations: false,
            params: gpt_params(),
            complexities: Vec::new(),
            gif: None,
            state: ModelState::Active,
            shutdown_date: None,
            replacement: None,
            known: false,
            note: Some("not in the model catalog: only basic checks apply".into()),
            extra_params: Vec::new(),
            prices: None,
        }
    }

    /// The lifecycle on `today`: a shutdown date on or before it means `shut_down`, a later
    /// one `deprecated` (an entry written `active` with an announced date is deprecated).
    /// An unreadable date counts as none (configuration refuses them at load).
    pub fn lifecycle(&self, today: Date) -> Lifecycle {
        let shutdown_date = self
            .shutdown_date
            .as_deref()
            .and_then(|d| Date::parse(d).ok());
        let state = match shutdown_date {
            Some(date) if date <= today => ModelState::ShutDown,
            Some(_) if self.state == ModelState::Active => ModelState::Deprecated,
            _ => self.state,
        };
        Lifecycle {
            state,
            shutdown_date,
            replacement: self.replacement.clone(),
        }
    }

    /// Applies the fields an override sets.
    pub fn apply(&mut self, o: &ModelOverride) {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &o.$field { self.$field = v.clone(); }
            )*};
        }
        set!(
            sizes,
            qualities,
            styles,
            max_n,
            formats,
            max_prompt_chars,
            edit,
            max_edit_images,
            variations,
            params,
            complexities,
            state,
            extra_params
        );
        macro_rules! set_optional {
            ($($field:ident),*) => {$(
                if o.$field.is_some() { self.$field = o.$field.clone(); }
            )*};
        }
        set_optional!(custom_sizes, note, gif, shutdown_date, replacement);
        if let Some(top) = &o.prices {
            let base = self.prices.take().unwrap_or_default();
            self.prices = Some(base.overlay(top));
        }
        self.known = true;
    }
}

/// A configuration entry that adds a model or changes a built-in one; unset fields are inherited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ModelOverride {
    /// A catalog model to start from (default: the entry of the same name, else an unknown model).
    pub like: Option<String>,
    /// See [`ModelCapabilities::sizes`].
    pub sizes: Option<Vec<String>>,
    /// See [`ModelCapabilities::custom_sizes`].
    pub custom_sizes: Option<SizeRule>,
    /// See [`ModelCapabilities::qualities`].
    pub qualities: Option<Vec<String>>,
    /// See [`ModelCapabilities::styles`].
    pub styles: Option<Vec<String>>,
    /// See [`ModelCapabilities::max_n`].
    pub max_n: Option<u32>,
    /// See [`ModelCapabilities::formats`].
    pub formats: Option<Vec<ImageFormat>>,
    /// See [`ModelCapabilities::max_prompt_chars`].
    pub max_prompt_chars: Option<usize>,
    /// See [`ModelCapabilities::edit`].
    pub edit: Option<bool>,
    /// See [`ModelCapabilities::max_edit_images`].
    pub max_edit_images: Option<u32>,
    /// See [`ModelCapabilities::variations`].
    pub variations: Option<bool>,
    /// See [`ModelCapabilities::params`].
    pub params: Option<Vec<Param>>,
    /// See [`ModelCapabilities::complexities`].
    pub complexities: Option<Vec<String>>,
    /// See [`ModelCapabilities::gif`]; unset fields of the table keep the reference's values.
    pub gif: Option<GifRules>,
    /// See [`ModelCapabilities::state`].
    pub state: Option<ModelState>,
    /// See [`ModelCapabilities::shutdown_date`].
    pub shutdown_date: Option<String>,
    /// See [`ModelCapabilities::replacement`].
    pub replacement: Option<String>,
    /// See [`ModelCapabilities::note`].
    pub note: Option<String>,
    /// See [`ModelCapabilities::extra_params`].
    pub extra_params: Option<Vec<String>>,
    /// Prices over the built-in ones (each figure set replaces that figure only).
    pub prices: Option<Prices>,
}

/// Model names mapped to their capabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    models: BTreeMap<String, ModelCapabilities>,
}

/// GPT image models take up to 16 input images; the default for entries written before the field.
fn default_max_edit_images() -> u32 {
    16
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn gpt_params() -> Vec<Param> {
    use Param::*;
    vec![
        Size,
        Quality,
        N,
        OutputFormat,
        OutputCompression,
        Background,
        Moderation,
        Stream,
        InputFidelity,
    ]
}

/// The sizes every GPT image model lists.
const GPT_SIZES: [&str; 4] = ["1024x1024", "1536x1024", "1024x1536", "auto"];

/// The day OpenAI shut down the GPT Image 1.5 family, `gpt-image-1-mini` and `chatgpt-image-latest`.
const GPT_IMAGE_1_SHUTDOWN: &str = "2026-12-01";

/// What replaces every shut-down OpenAI model: the fast GPT Image 2.6 model.
const OPENAI_REPLACEMENT: &str = "gpt-image-2.6-flare";

fn gpt_image_1() -> ModelCapabilities {
    ModelCapabilities {
        sizes: strings(&GPT_SIZES),
        custom_sizes: None,
        qualities: strings(&["low", "medium", "high", "auto"]),
        styles: Vec::new(),
        max_n: 10,
        formats: ImageFormat::RASTER.to_vec(),
        max_prompt_chars: 32_000,
        edit: true,
        max_edit_images: 16,
        variations: false,
        params: gpt_params(),
        complexities: Vec::new(),
        gif: None,
        state: ModelState::Active,
        shutdown_date: None,
        replacement: None,
        known: true,
        note: None,
        extra_params: Vec::new(),
        prices: None,
    }
}

/// `caps` shut down by OpenAI on `date`, replaced by GPT Image 2.6 flare: the date decides the
/// state. Compatible servers may still serve such a model, so its capabilities stay.
fn shut_down(caps: ModelCapabilities, date: &str) -> ModelCapabilities {
    ModelCapabilities {
        shutdown_date: Some(date.into()),
        replacement: Some(OPENAI_REPLACEMENT.into()),
        ..caps
    }
}

fn gpt_image_2() -> ModelCapabilities {
    ModelCapabilities {
        custom_sizes: Some(SizeRule {
            multiple_of: 16,
            min_side: 16,
            max_side: 3840,
            max_ratio: 3.0,
            min_pixels: 655_360,
            max_pixels: 8_294_400,
        }),
        // `xhigh` and `max` on gpt-image-2 are unconfirmed: refused here, as the reference
        // reads it; `[models."gpt-image-2"] qualities = [...]` lifts that.
        note: Some("transparent backgrounds are a preview feature on gpt-image-2".into()),
        ..gpt_image_1()
    }
}

fn gpt_image_2_5() -> ModelCapabilities {
    ModelCapabilities {
        qualities: strings(&["low", "medium", "high", "xhigh", "max", "auto"]),
        note: None,
        ..gpt_image_2()
    }
}

fn gpt_image_2_6() -> ModelCapabilities {
    let mut params = gpt_params();
    params.extend([
        Param::Complexity,
        Param::FrameCount,
        Param::FrameDurationMs,
        Param::Svg,
        Param::Markup,
    ]);
    ModelCapabilities {
        formats: ImageFormat::ALL.to_vec(),
        params,
        complexities: strings(&["low", "medium", "high"]),
        gif: Some(GifRules::default()),
        ..gpt_image_2_5()
    }
}

/// A kind's built-in `(alias, model)` pairs as [`crate::ImageProvider::aliases`] returns them.
pub fn alias_pairs(aliases: &[(&str, &str)]) -> Vec<(String, String)> {
    aliases
        .iter()
        .map(|(a, m)| (a.to_string(), m.to_string()))
        .collect()
}

impl Catalog {
    /// The models every provider kind shares (the OpenAI families, which compatible servers
    /// and Azure serve under the same names), as of 2026-12-01.
    pub fn builtin() -> Self {
        let mut models = BTreeMap::new();
        let mut add = |names: &[&str], caps: ModelCapabilities| {
            for name in names {
                let prices = crate::cost::builtin(name);
                models.insert(
                    name.to_string(),
                    ModelCapabilities {
                        prices,
                        ..caps.clone()
                    },
                );
            }
        };
        // Exact names, plus `-*` for the dated snapshots each family will get.
        add(
            &[
                "gpt-image-2.6-flare",
                "gpt-image-2.6-flare-*",
                "gpt-image-2.6-sunburst",
                "gpt-image-2.6-sunburst-*",
            ],
            gpt_image_2_6(),
        );
        add(
            &[
                "gpt-image-2.5-flare",
                "gpt-image-2.5-flare-*",
                "gpt-image-2.5-sunburst",
                "gpt-image-2.5-sunburst-*",
            ],
            gpt_image_2_5(),
        );
        add(&["gpt-image-2", "gpt-image-2-*"], gpt_image_2());
        let mini_params: Vec<Param> = gpt_params()
            .into_iter()
            .filter(|p| *p != Param::InputFidelity)
            .collect();
        add(
            &["gpt-image-1.5", "gpt-image-1.5-*", "chatgpt-image-latest"],
            shut_down(gpt_image_1(), GPT_IMAGE_1_SHUTDOWN),
        );
        add(
            &["gpt-image-1-mini", "gpt-image-1-mini-*"],
            shut_down(
                ModelCapabilities {
                    params: mini_params,
                    ..gpt_image_1()
                },
                GPT_IMAGE_1_SHUTDOWN,
            ),
        );
        add(&["gpt-image-1"], shut_down(gpt_image_1(), "2026-10-23"));
        add(
            &["dall-e-3"],
            shut_down(
                ModelCapabilities {
                    sizes: strings(&["1024x1024", "1792x1024", "1024x1792"]),
                    custom_sizes: None,
                    qualities: strings(&["standard", "hd"]),
                    styles: strings(&["vivid", "natural"]),
                    max_n: 1,
                    formats: vec![ImageFormat::Png],
                    max_prompt_chars: 4_000,
                    edit: false,
                    max_edit_images: 1,
                    variations: false,
                    params: vec![
                        Param::Size,
                        Param::Quality,
                        Param::Style,
                        Param::ResponseFormat,
                    ],
                    ..gpt_image_1()
                },
                "2026-05-12",
            ),
        );
        add(
            &["dall-e-2"],
            shut_down(
                ModelCapabilities {
                    sizes: strings(&["256x256", "512x512", "1024x1024"]),
                    custom_sizes: None,
                    qualities: strings(&["standard"]),
                    styles: Vec::new(),
                    max_n: 10,
                    formats: vec![ImageFormat::Png],
                    max_prompt_chars: 1_000,
                    edit: true,
                    // dall-e-2 edits one square PNG and takes it as `image`, not `image[]`.
                    max_edit_images: 1,
                    variations: true,
                    params: vec![Param::Size, Param::Quality, Param::N, Param::ResponseFormat],
                    ..gpt_image_1()
                },
                "2026-05-12",
            ),
        );
        Self { models }
    }

    /// The entry of `model` as built in, for kinds whose own entries start from a shared one.
    pub(crate) fn builtin_entry(model: &str) -> ModelCapabilities {
        Self::builtin().get(model)
    }

    /// The built-in entries with a provider kind's own entries over them: a vendor that serves
    /// a model under the same name may give it other limits or dates (Azure retires models on
    /// its own calendar).
    pub fn for_kind(own: impl IntoIterator<Item = (&'static str, ModelCapabilities)>) -> Self {
        let mut catalog = Self::builtin();
        catalog
            .models
            .extend(own.into_iter().map(|(name, mut caps)| {
                // An entry of the kind's own is priced by its own name, else keeps what it
                // started from: a kind that serves an OpenAI model under its name bills alike.
                if let Some(prices) =
                    crate::cost::builtin_for(name).or_else(|| crate::cost::builtin(name))
                {
                    caps.prices = Some(prices);
                }
                (name.to_string(), caps)
            }));
        catalog
    }

    /// Applies configuration entries on top of this catalog, in name order.
    ///
    /// An entry for an existing name changes only the fields it sets; a new name starts from
    /// `like` (or an unknown model) and must then be complete enough to be useful.
    pub fn extend<'a>(
        &mut self,
        overrides: impl IntoIterator<Item = (&'a String, &'a ModelOverride)>,
    ) -> Result<(), String> {
        for (name, o) in overrides {
            if let Some(date) = &o.shutdown_date {
                Date::parse(date).map_err(|e| format!("models.\"{name}\".shutdown_date: {e}"))?;
            }
            if let Some(why) = o.prices.as_ref().and_then(Prices::invalid) {
                return Err(format!("models.\"{name}\".prices: {why}"));
            }
            let mut caps = match &o.like {
                Some(base) => self.lookup(base).cloned().ok_or_else(|| {
                    format!(
                        "models.\"{name}\".like names `{base}`, which the catalog does not know"
                    )
                })?,
                None => self
                    .lookup(name)
                    .cloned()
                    .unwrap_or_else(ModelCapabilities::unknown),
            };
            caps.apply(o);
            self.models.insert(name.clone(), caps);
        }
        Ok(())
    }

    fn lookup(&self, model: &str) -> Option<&ModelCapabilities> {
        if let Some(caps) = self.models.get(model) {
            return Some(caps);
        }
        self.models
            .iter()
            .filter_map(|(name, caps)| {
                let prefix = name.strip_suffix('*')?;
                model.starts_with(prefix).then_some((prefix.len(), caps))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, caps)| caps)
    }

    /// The capabilities of `model`: its entry, the longest matching `prefix*` entry, or the
    /// basic checks for an unknown model.
    pub fn get(&self, model: &str) -> ModelCapabilities {
        self.lookup(model)
            .cloned()
            .unwrap_or_else(ModelCapabilities::unknown)
    }

    /// The names of the entries that can make variations, for messages naming the alternatives.
    pub fn variation_models(&self) -> Vec<String> {
        self.entries()
            .filter(|(_, caps)| caps.variations)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Every catalog entry, by name.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &ModelCapabilities)> {
        self.models.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_strictly_and_print_back() {
        for text in ["2026-12-01", "2024-02-29", "1970-01-01", "2099-12-31"] {
            assert_eq!(Date::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "2026-13-01",
            "2026-02-29",
            "2026-12-1",
            "2026/12/01",
            "2026-12-01T00:00:00Z",
            "",
            "２０２６-12-01",
        ] {
            assert!(Date::parse(bad).is_err(), "{bad}");
        }
        let (a, b) = (
            Date::parse("2026-12-01").unwrap(),
            Date::parse("2027-03-01").unwrap(),
        );
        assert_eq!(a.days_until(b), 90);
        assert!(Date::today() >= a, "this code was written on 2026-12-01");
    }

    #[test]
    fn todays_openai_models_and_their_snapshots_have_exactly_their_parameters() {
        let catalog = Catalog::builtin();
        let today = Date::parse("2026-12-01").unwrap();
        for model in ["gpt-image-2.6-flare", "gpt-image-2.6-sunburst-2027-01-15"] {
            let caps = catalog.get(model);
            assert!(caps.known, "{model}");
            for p in [
                Param::Complexity,
                Param::FrameCount,
                Param::Svg,
                Param::Markup,
                Param::InputFidelity,
            ] {
                assert!(caps.takes(p), "{model} takes {p:?}");
            }
            assert!(
                caps.formats.contains(&ImageFormat::Gif)
                    && caps.formats.contains(&ImageFormat::Svg)
            );
            assert_eq!(caps.gif.as_ref().unwrap().default_frames, 9);
            assert_eq!(caps.lifecycle(today).state, ModelState::Active);
        }
        let flare_2_5 = catalog.get("gpt-image-2.5-flare-2026-09-08");
        assert!(flare_2_5.known && flare_2_5.qualities.contains(&"max".to_string()));
        assert!(!flare_2_5.takes(Param::Complexity) && !flare_2_5.takes(Param::Markup));
        assert_eq!(flare_2_5.formats, ImageFormat::RASTER.to_vec());
        let two = catalog.get("gpt-image-2-2026-04-21");
        assert!(two.known && !two.qualities.contains(&"xhigh".to_string()));
        for gone in [
            "gpt-image-1.5",
            "gpt-image-1.5-2025-12-16",
            "gpt-image-1-mini",
            "chatgpt-image-latest",
            "gpt-image-1",
            "dall-e-3",
            "dall-e-2",
        ] {
            let life = catalog.get(gone).lifecycle(today);
            assert_eq!(life.state, ModelState::ShutDown, "{gone}");
            assert_eq!(
                life.replacement.as_deref(),
                Some("gpt-image-2.6-flare"),
                "{gone}"
            );
        }
        assert_eq!(
            catalog
                .get("gpt-image-1.5")
                .lifecycle(Date::parse("2026-11-30").unwrap())
                .state,
            ModelState::Deprecated
        );
    }

    #[test]
    fn lifecycle_and_gif_rules_are_overridable_field_by_field() {
        let mut catalog = Catalog::builtin();
        let mut overrides = BTreeMap::new();
        let gif: GifRules =
            serde_json::from_value(serde_json::json!({"frame_side_caps": []})).unwrap();
        overrides.insert(
            "gpt-image-2.6-flare".to_string(),
            ModelOverride {
                gif: Some(gif),
                shutdown_date: Some("2027-06-01".into()),
                replacement: Some("gpt-image-3".into()),
                ..Default::default()
            },
        );
        catalog.extend(&overrides).unwrap();
        let caps = catalog.get("gpt-image-2.6-flare");
        let rules = caps.gif.clone().unwrap();
        assert_eq!((rules.max_frames, rules.max_side(9)), (16, None));
        // Configured numbers are outside values: describing the last cap must not overflow.
        let edge: GifRules = serde_json::from_value(serde_json::json!({
            "frame_side_caps": [{"up_to_frames": u32::MAX, "max_side": 960}]
        }))
        .unwrap();
        assert_eq!(
            edge.describe_caps(),
            format!("960 px for 2-{} frames", u32::MAX)
        );
        let life = caps.lifecycle(Date::parse("2026-12-01").unwrap());
        assert_eq!(
            (life.state, life.replacement.as_deref()),
            (ModelState::Deprecated, Some("gpt-image-3"))
        );
        let mut bad = BTreeMap::new();
        bad.insert(
            "x".to_string(),
            ModelOverride {
                shutdown_date: Some("soon".into()),
                ..Default::default()
            },
        );
        assert!(catalog.extend(&bad).unwrap_err().contains("shutdown_date"));
    }

    #[test]
    fn prefix_entries_match_new_point_releases() {
        let catalog = Catalog::builtin();
        let caps = catalog.get("gpt-image-2.5-flare");
        assert!(caps.known);
        assert!(caps.qualities.contains(&"xhigh".to_string()));
        assert!(!catalog.get("gpt-image-9").known);
    }

    #[test]
    fn overrides_change_only_what_they_set_and_new_models_inherit_from_like() {
        let mut catalog = Catalog::builtin();
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "dall-e-3".to_string(),
            ModelOverride {
                max_n: Some(4),
                ..Default::default()
            },
        );
        overrides.insert(
            "gpt-image-3".to_string(),
            ModelOverride {
                like: Some("gpt-image-2".into()),
                max_prompt_chars: Some(64_000),
                ..Default::default()
            },
        );
        catalog.extend(&overrides).unwrap();
        let dalle = catalog.get("dall-e-3");
        assert_eq!(dalle.max_n, 4);
        assert_eq!(dalle.styles, vec!["vivid", "natural"]);
        let next = catalog.get("gpt-image-3");
        assert!(next.known);
        assert_eq!(next.max_prompt_chars, 64_000);
        assert_eq!(next.custom_sizes, catalog.get("gpt-image-2").custom_sizes);
    }

    #[test]
    fn edit_limits_and_variation_support_are_data() {
        let mut catalog = Catalog::builtin();
        assert_eq!(catalog.get("gpt-image-1.5").max_edit_images, 16);
        assert_eq!(catalog.get("dall-e-2").max_edit_images, 1);
        assert_eq!(catalog.variation_models(), vec!["dall-e-2".to_string()]);
        assert_eq!(
            Catalog::for_kind(crate::mock::catalog_entries()).variation_models(),
            vec!["dall-e-2".to_string(), crate::mock::MOCK_MODEL.to_string()]
        );
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "local-sd".to_string(),
            ModelOverride {
                like: Some("dall-e-2".into()),
                max_edit_images: Some(4),
                ..Default::default()
            },
        );
        catalog.extend(&overrides).unwrap();
        let local = catalog.get("local-sd");
        assert_eq!((local.max_edit_images, local.variations), (4, true));
        // Entries serialised before the field existed still read, with the GPT default.
        let mut json = serde_json::to_value(catalog.get("gpt-image-2")).unwrap();
        json.as_object_mut().unwrap().remove("max_edit_images");
        let caps: ModelCapabilities = serde_json::from_value(json).unwrap();
        assert_eq!(caps.max_edit_images, 16);
    }

    #[test]
    fn like_must_name_a_known_model() {
        let mut catalog = Catalog::builtin();
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "x".to_string(),
            ModelOverride {
                like: Some("nope".into()),
                ..Default::default()
            },
        );
        let err = catalog.extend(&overrides).unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn size_rule_names_the_broken_constraint() {
        let rule = Catalog::builtin().get("gpt-image-2").custom_sizes.unwrap();
        assert_eq!(rule.violation(2048, 1152), None);
        assert!(rule
            .violation(1000, 1000)
            .unwrap()
            .contains("multiples of 16"));
        assert!(rule.violation(3840, 1024).unwrap().contains("times"));
        assert!(rule.violation(4096, 2048).unwrap().contains("between"));
        assert!(rule.violation(512, 512).unwrap().contains("pixel count"));
    }
}
