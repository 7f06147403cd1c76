//! The image options every request carries besides its prompt, written once and used by the
//! tool schemas, the command line, configuration defaults and the providers' requests.
//!
//! They are provider-neutral: `aspect_ratio` and `resolution` stand beside `size` so that a
//! provider whose API takes a ratio (Gemini, FLUX, Stability, fal) and one that takes `WxH`
//! (OpenAI) are asked the same way; each provider maps what it is given to what its API takes
//! and reports what it sent.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{ImageFormat, ModelCapabilities, Param, ProviderError, SizeRule};

/// How an image is asked for, prompt and model aside. Unset options are not sent, so the
/// provider's own default applies; which ones a model takes is in its capabilities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default)]
#[non_exhaustive]
pub struct ImageOptions {
    /// `WIDTHxHEIGHT` such as `1024x1024`, or `auto`; the sizes each model takes are in
    /// `list_providers`. Leave it unset to give `aspect_ratio` and `resolution` instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub size: Option<String>,
    /// The shape as `WIDTH:HEIGHT`, such as `16:9`, `1:1` or `2:3`; providers that take a size
    /// get the nearest one the model allows (the result's `sent` says which).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "W:H"))]
    pub aspect_ratio: Option<String>,
    /// `1k`, `2k` or `4k`: about how many pixels the long side has; with `aspect_ratio`, or alone
    /// for a square.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub resolution: Option<Resolution>,
    /// Rendering quality as the model names it (`low`, `medium`, `high`, `auto`, ...); higher is
    /// slower and costs more.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub quality: Option<String>,
    /// How many images to make (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub n: Option<u32>,
    /// `png` (default), `jpeg`, `webp`; `gif` (animated, see `frame_count`) and `svg` (vector,
    /// see `svg`) where the model makes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long = "format", value_name = "FORMAT"))]
    pub output_format: Option<ImageFormat>,
    /// 0-100 compression for `jpeg` and `webp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub output_compression: Option<u8>,
    /// `transparent` (needs png or webp), `opaque` or `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub background: Option<String>,
    /// A named style where the model has them (such as `vivid` or `natural`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub style: Option<String>,
    /// Content moderation strictness where the model offers a choice (`auto` or `low`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub moderation: Option<String>,
    /// Seed for reproducible output, where the provider supports it (the mock does).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub seed: Option<u64>,
    /// 0-3 partial images streamed while one image is made, where the model streams: each
    /// arrives as a progress notification (and is saved) before the final image.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub partial_images: Option<u8>,
    /// `low`, `medium` or `high`: how much the model plans before it renders, independent of
    /// `quality`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub complexity: Option<String>,
    /// With `output_format: "gif"`: frames of the animation. `size` is per frame and all frames
    /// share one image, so larger frames fit fewer of them (see `list_providers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub frame_count: Option<u32>,
    /// With `output_format: "gif"`: how long each frame shows, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "MS"))]
    pub frame_duration_ms: Option<u32>,
    /// With `output_format: "svg"`: the text model that writes the SVG and how hard it reasons,
    /// e.g. `{"model": "gpt-5.2", "reasoning": {"effort": "high"}}`; `model` defaults to the
    /// provider's `svg_model` setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(skip))]
    pub svg: Option<SvgOptions>,
    /// Edits only: `high` or `low`, how closely the result keeps the inputs' details such as faces.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(long))]
    pub input_fidelity: Option<String>,
    /// Parameters only one provider has and no option above names, as a JSON object; each key
    /// must be one the model declares (see `list_providers`, `extra_params`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "cli", arg(skip))]
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

/// About how many pixels the long side of an image has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Resolution {
    /// About 1024 pixels.
    #[serde(rename = "1k", alias = "1K")]
    OneK,
    /// About 2048 pixels.
    #[serde(rename = "2k", alias = "2K")]
    TwoK,
    /// About 4096 pixels.
    #[serde(rename = "4k", alias = "4K")]
    FourK,
}

impl Resolution {
    /// Every resolution, smallest first.
    pub const ALL: [Resolution; 3] = [Self::OneK, Self::TwoK, Self::FourK];

    /// The name used in requests (`1k`, `2k`, `4k`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OneK => "1k",
            Self::TwoK => "2k",
            Self::FourK => "4k",
        }
    }

    /// The long side this resolution aims at, pixels.
    pub fn long_side(self) -> u32 {
        match self {
            Self::OneK => 1024,
            Self::TwoK => 2048,
            Self::FourK => 4096,
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Resolution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown resolution `{s}`; expected 1k, 2k or 4k"))
    }
}

/// The authoring settings of an SVG result, nested as the API nests them:
/// `svg: {"model": ..., "reasoning": {"effort": ...}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SvgOptions {
    /// The text model that writes the SVG markup (required by the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// How hard the writer reasons; the values depend on `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<SvgReasoning>,
}

/// `svg.reasoning`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SvgReasoning {
    /// The writer's reasoning effort (`low`, `medium`, `high`, ... as `svg.model` allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effort: Option<String>,
}

impl ImageOptions {
    /// Every option's key as written in requests and configuration, for checking unknown keys
    /// by hand where these options are flattened into a larger table.
    pub const KEYS: [&'static str; 18] = [
        "size",
        "aspect_ratio",
        "resolution",
        "quality",
        "n",
        "output_format",
        "output_compression",
        "background",
        "style",
        "moderation",
        "seed",
        "partial_images",
        "complexity",
        "frame_count",
        "frame_duration_ms",
        "svg",
        "input_fidelity",
        "extra",
    ];

    /// How many images are asked for (1 when unset).
    pub fn n(&self) -> u32 {
        self.n.unwrap_or(1)
    }

    /// The format asked for, or PNG, which every model returns by default.
    pub fn format(&self) -> ImageFormat {
        self.output_format.unwrap_or(ImageFormat::Png)
    }

    /// Whether `param` is set (`n` counts only above 1, `stream` is `partial_images`).
    pub fn is_set(&self, param: Param) -> bool {
        match param {
            Param::Size => self.size.is_some(),
            Param::AspectRatio => self.aspect_ratio.is_some(),
            Param::Resolution => self.resolution.is_some(),
            Param::Quality => self.quality.is_some(),
            Param::N => self.n() > 1,
            Param::OutputFormat => self.output_format.is_some(),
            Param::OutputCompression => self.output_compression.is_some(),
            Param::Background => self.background.is_some(),
            Param::Style => self.style.is_some(),
            Param::Moderation => self.moderation.is_some(),
            Param::Seed => self.seed.is_some(),
            Param::Stream => self.partial_images.is_some(),
            Param::Complexity => self.complexity.is_some(),
            Param::FrameCount => self.frame_count.is_some(),
            Param::FrameDurationMs => self.frame_duration_ms.is_some(),
            Param::Svg => self.svg.is_some(),
            Param::InputFidelity => self.input_fidelity.is_some(),
            Param::Extra => self.extra.as_ref().is_some_and(|e| !e.is_empty()),
            Param::ResponseFormat | Param::Markup => false,
        }
    }

    /// Whether `param` was given at all: as [`is_set`](Self::is_set), except that an explicit
    /// `n = 1` counts, so nothing underneath replaces it.
    fn is_given(&self, param: Param) -> bool {
        self.is_set(param) || (param == Param::N && self.n.is_some())
    }

    /// The options that are set, in [`Param::ALL`] order.
    pub fn params_set(&self) -> Vec<Param> {
        Param::ALL.into_iter().filter(|&p| self.is_set(p)).collect()
    }

    /// Unsets `param`, so the provider's own default applies.
    pub fn clear(&mut self, param: Param) {
        self.copy(param, &Self::default());
    }

    /// Sets `param` to its value in `from` (unset there: unset here).
    fn copy(&mut self, param: Param, from: &Self) {
        match param {
            Param::Size => self.size = from.size.clone(),
            Param::AspectRatio => self.aspect_ratio = from.aspect_ratio.clone(),
            Param::Resolution => self.resolution = from.resolution,
            Param::Quality => self.quality = from.quality.clone(),
            Param::N => self.n = from.n,
            Param::OutputFormat => self.output_format = from.output_format,
            Param::OutputCompression => self.output_compression = from.output_compression,
            Param::Background => self.background = from.background.clone(),
            Param::Style => self.style = from.style.clone(),
            Param::Moderation => self.moderation = from.moderation.clone(),
            Param::Seed => self.seed = from.seed,
            Param::Stream => self.partial_images = from.partial_images,
            Param::Complexity => self.complexity = from.complexity.clone(),
            Param::FrameCount => self.frame_count = from.frame_count,
            Param::FrameDurationMs => self.frame_duration_ms = from.frame_duration_ms,
            Param::Svg => self.svg = from.svg.clone(),
            Param::InputFidelity => self.input_fidelity = from.input_fidelity.clone(),
            Param::Extra => self.extra = from.extra.clone(),
            Param::ResponseFormat | Param::Markup => {}
        }
    }

    /// These options, with every unset one taken from `under`.
    pub fn or(mut self, under: &Self) -> Self {
        for param in under.params_set() {
            if !self.is_given(param) {
                self.copy(param, under);
            }
        }
        self
    }

    /// Fills the unset options `wanted` accepts from `defaults`; returns the ones filled.
    ///
    /// The shape options fill as one (`size` against `aspect_ratio` + `resolution`): a call that
    /// gives either way of sizing keeps it whole, so a default size never contradicts an asked
    /// ratio.
    pub fn fill_from(&mut self, defaults: &Self, wanted: impl Fn(Param) -> bool) -> Vec<Param> {
        let shaped =
            self.size.is_some() || self.aspect_ratio.is_some() || self.resolution.is_some();
        let mut filled = Vec::new();
        for param in defaults.params_set() {
            let shape = matches!(param, Param::Size | Param::AspectRatio | Param::Resolution);
            if self.is_given(param) || (shape && shaped) {
                continue;
            }
            if wanted(param) {
                self.copy(param, defaults);
                filled.push(param);
            }
        }
        filled
    }
}

/// For a model that takes an aspect ratio but no `size`: `size` (`WxH`) turned into the
/// `aspect_ratio` in lowest terms and the `resolution` nearest its long side, with a note
/// saying so; `None` when there is nothing to turn (no size, or the model takes sizes).
///
/// The provider then maps the ratio to the nearest one its API takes and reports it in
/// `sent`: a call failing over from a size-based provider keeps its shape.
pub fn size_as_ratio(options: &mut ImageOptions, caps: &ModelCapabilities) -> Option<String> {
    if caps.params.contains(&crate::Param::Size) || !caps.takes(crate::Param::AspectRatio) {
        return None;
    }
    let size = options.size.as_deref()?;
    let (w, h) = size.split_once(['x', 'X'])?;
    let (w, h): (u32, u32) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    if w == 0 || h == 0 {
        return None;
    }
    let lowest = |w: u32, h: u32| {
        let (mut a, mut b) = (w, h);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        (w / a, h / a)
    };
    let (mut rw, mut rh) = lowest(w, h);
    // Terms above 100 are not a ratio anyone names: keep the shape to two decimals.
    if rw.max(rh) > 100 {
        let scale = 100.0 / f64::from(rw.max(rh));
        (rw, rh) = lowest(
            ((f64::from(rw) * scale).round() as u32).max(1),
            ((f64::from(rh) * scale).round() as u32).max(1),
        );
    }
    let long = w.max(h);
    let resolution = Resolution::ALL
        .into_iter()
        .min_by_key(|r| r.long_side().abs_diff(long))
        .unwrap_or(Resolution::OneK);
    let ratio = format!("{rw}:{rh}");
    let note = format!(
        "`size` {size} was sent as aspect_ratio {ratio}{}: the model takes a ratio, not a size",
        if caps.takes(crate::Param::Resolution) {
            format!(" at resolution {resolution}")
        } else {
            String::new()
        }
    );
    options.size = None;
    options.aspect_ratio = Some(ratio);
    if caps.takes(crate::Param::Resolution) {
        options.resolution = Some(resolution);
    }
    Some(note)
}

/// Parses `W:H` (or `WxH`, `W/H`) into its two positive terms.
pub fn parse_aspect_ratio(ratio: &str) -> Option<(u32, u32)> {
    let (w, h) = ratio.trim().split_once([':', 'x', 'X', '/'])?;
    let (w, h): (u32, u32) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    (w > 0 && h > 0 && w <= 100 && h <= 100).then_some((w, h))
}

/// The `WxH` to send for `options` to a model that takes sizes: `size` itself when given, else
/// the size nearest to `aspect_ratio` at `resolution` that the model allows; `None` when
/// neither is asked for.
pub fn size_for(
    options: &ImageOptions,
    caps: &ModelCapabilities,
) -> Result<Option<String>, ProviderError> {
    if let Some(size) = &options.size {
        return Ok(Some(size.clone()));
    }
    if options.aspect_ratio.is_none() && options.resolution.is_none() {
        return Ok(None);
    }
    let (rw, rh) = match &options.aspect_ratio {
        Some(ratio) => parse_aspect_ratio(ratio).ok_or_else(|| {
            ProviderError::invalid_param(
                "aspect_ratio",
                format!("aspect_ratio `{ratio}` is not WIDTH:HEIGHT such as 16:9 (terms 1-100)"),
            )
        })?,
        None => (1, 1),
    };
    let long = options.resolution.unwrap_or(Resolution::OneK).long_side();
    if let Some(rule) = &caps.custom_sizes {
        if let Some((w, h)) = fit(rule, rw, rh, long) {
            return Ok(Some(format!("{w}x{h}")));
        }
    }
    nearest_fixed(&caps.sizes, rw, rh, long)
        .map(Some)
        .ok_or_else(|| {
            ProviderError::invalid_param(
                "aspect_ratio",
                format!(
                    "{} takes no size near {rw}:{rh}; give `size` instead",
                    if caps.known {
                        "the model"
                    } else {
                        "this model"
                    }
                ),
            )
        })
}

/// The size with ratio `rw:rh` and long side near `long` that fits `rule`, if one does.
fn fit(rule: &SizeRule, rw: u32, rh: u32, long: u32) -> Option<(u32, u32)> {
    let step = rule.multiple_of.max(1);
    let ratio = f64::from(rw.max(rh)) / f64::from(rw.min(rh));
    let ratio = ratio.min(rule.max_ratio);
    let mut long = f64::from(long.min(rule.max_side));
    let pixels = |long: f64| long * long / ratio;
    if pixels(long) > rule.max_pixels as f64 {
        long = (rule.max_pixels as f64 * ratio).sqrt();
    }
    if pixels(long) < rule.min_pixels as f64 {
        long = (rule.min_pixels as f64 * ratio).sqrt();
    }
    let round = |side: f64, up: bool| {
        let steps = side / f64::from(step);
        let steps = if up { steps.ceil() } else { steps.floor() };
        (steps.max(1.0) as u32).saturating_mul(step)
    };
    // Rounding down keeps the pixel cap; the floor is then met by rounding up instead.
    for up in [false, true] {
        let long_side = round(long, up);
        let short_side = round(f64::from(long_side) / ratio, up);
        let (w, h) = if rw >= rh {
            (long_side, short_side)
        } else {
            (short_side, long_side)
        };
        if rule.violation(w, h).is_none() {
            return Some((w, h));
        }
    }
    None
}

/// The listed `WxH` size whose ratio is nearest to `rw:rh`, the one nearest `long` among equals.
fn nearest_fixed(sizes: &[String], rw: u32, rh: u32, long: u32) -> Option<String> {
    let want = (f64::from(rw) / f64::from(rh)).ln();
    sizes
        .iter()
        .filter_map(|s| Some((s, crate::validate::parse_size(s)?)))
        .min_by(|(_, (aw, ah)), (_, (bw, bh))| {
            let score = |w: u32, h: u32| {
                let off = ((f64::from(w) / f64::from(h)).ln() - want).abs();
                let scale = (f64::from(w.max(h)) / f64::from(long)).ln().abs();
                (off, scale)
            };
            let (a, b) = (score(*aw, *ah), score(*bw, *bh));
            a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(s, _)| s.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_becomes_a_ratio_and_resolution_only_for_a_model_without_sizes() {
        let mut ratio_only = ModelCapabilities::unknown();
        ratio_only.params = vec![crate::Param::AspectRatio, crate::Param::Resolution];
        let turned = |size: &str, caps: &ModelCapabilities| {
            let mut o = ImageOptions {
                size: Some(size.into()),
                ..ImageOptions::default()
            };
            let note = size_as_ratio(&mut o, caps);
            (
                o.size,
                o.aspect_ratio,
                o.resolution.map(|r| r.as_str()),
                note.is_some(),
            )
        };
        for (size, ratio, resolution) in [
            ("1536x1024", "3:2", "1k"),
            ("1024x1024", "1:1", "1k"),
            ("3840x2160", "16:9", "4k"),
            ("1000x700", "10:7", "1k"),
            ("1999x1000", "2:1", "2k"),
        ] {
            assert_eq!(
                turned(size, &ratio_only),
                (None, Some(ratio.into()), Some(resolution), true),
                "{size}"
            );
        }
        // Not a size, or a model that takes sizes: left alone.
        assert_eq!(
            turned("big", &ratio_only),
            (Some("big".into()), None, None, false)
        );
        let mut sized = ModelCapabilities::unknown();
        sized.params = vec![crate::Param::Size];
        assert_eq!(
            turned("1536x1024", &sized),
            (Some("1536x1024".into()), None, None, false)
        );
    }

    #[test]
    fn every_key_is_listed_and_round_trips() {
        let mut all = ImageOptions {
            size: Some("1x1".into()),
            aspect_ratio: Some("1:1".into()),
            resolution: Some(Resolution::TwoK),
            quality: Some("q".into()),
            n: Some(2),
            output_format: Some(ImageFormat::Webp),
            output_compression: Some(5),
            background: Some("b".into()),
            style: Some("s".into()),
            moderation: Some("m".into()),
            seed: Some(1),
            partial_images: Some(1),
            complexity: Some("c".into()),
            frame_count: Some(3),
            frame_duration_ms: Some(40),
            svg: Some(SvgOptions::default()),
            input_fidelity: Some("high".into()),
            extra: None,
        };
        all.extra = Some(serde_json::Map::from_iter([("k".into(), 1.into())]));
        let json = serde_json::to_value(&all).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        let mut listed: Vec<_> = ImageOptions::KEYS.iter().map(|k| k.to_string()).collect();
        listed.sort();
        assert_eq!(keys, listed);
        assert_eq!(serde_json::from_value::<ImageOptions>(json).unwrap(), all);
        let mut cleared = all.clone();
        for param in all.params_set() {
            cleared.clear(param);
        }
        assert_eq!(cleared.params_set(), Vec::new());
        assert_eq!(ImageOptions::default().or(&all), all);
    }

    #[test]
    fn defaults_fill_only_what_is_unset_and_wanted_and_sizing_stays_whole() {
        let defaults = ImageOptions {
            size: Some("1024x1024".into()),
            quality: Some("high".into()),
            style: Some("vivid".into()),
            ..Default::default()
        };
        let mut asked = ImageOptions {
            aspect_ratio: Some("16:9".into()),
            ..Default::default()
        };
        let filled = asked.fill_from(&defaults, |p| p != Param::Style);
        assert_eq!(filled, vec![Param::Quality]);
        assert_eq!(asked.size, None);
        assert_eq!(asked.quality.as_deref(), Some("high"));
        assert_eq!(asked.style, None);
    }

    #[test]
    fn ratios_map_to_sizes_the_model_allows() {
        let custom = ModelCapabilities {
            custom_sizes: Some(SizeRule {
                multiple_of: 16,
                min_side: 256,
                max_side: 3840,
                max_ratio: 3.0,
                min_pixels: 655_360,
                max_pixels: 8_294_400,
            }),
            ..ModelCapabilities::unknown()
        };
        let ask = |ratio: Option<&str>, res: Option<Resolution>| ImageOptions {
            aspect_ratio: ratio.map(str::to_owned),
            resolution: res,
            ..Default::default()
        };
        let size = |o: &ImageOptions, c: &ModelCapabilities| size_for(o, c).unwrap().unwrap();
        // 1024x576 is under the pixel floor: the ratio holds as the size grows to meet it.
        assert_eq!(size(&ask(Some("16:9"), None), &custom), "1088x624");
        assert_eq!(
            size(&ask(Some("16:9"), Some(Resolution::FourK)), &custom),
            "3840x2160"
        );
        assert_eq!(
            size(&ask(None, Some(Resolution::TwoK)), &custom),
            "2048x2048"
        );
        assert_eq!(
            size(&ask(Some("9:16"), Some(Resolution::TwoK)), &custom),
            "1152x2048"
        );
        // The pixel cap wins over the long side; the ratio cap over the asked ratio.
        let square_4k = size(&ask(Some("1:1"), Some(Resolution::FourK)), &custom);
        let (w, h) = crate::validate::parse_size(&square_4k).unwrap();
        assert!(
            u64::from(w) * u64::from(h) <= 8_294_400 && w == h,
            "{square_4k}"
        );
        assert_eq!(size(&ask(Some("10:1"), None), &custom), "1408x480");

        let fixed = ModelCapabilities {
            sizes: ["1024x1024", "1536x1024", "1024x1536", "auto"]
                .map(String::from)
                .to_vec(),
            custom_sizes: None,
            ..ModelCapabilities::unknown()
        };
        assert_eq!(size(&ask(Some("16:9"), None), &fixed), "1536x1024");
        assert_eq!(
            size(&ask(Some("2:3"), Some(Resolution::FourK)), &fixed),
            "1024x1536"
        );
        assert_eq!(size(&ask(Some("1:1"), None), &fixed), "1024x1024");

        let err = size_for(&ask(Some("wide"), None), &fixed).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("aspect_ratio"));
        let given = ImageOptions {
            size: Some("512x512".into()),
            ..ask(Some("16:9"), None)
        };
        assert_eq!(size(&given, &fixed), "512x512");
        assert_eq!(size_for(&ImageOptions::default(), &fixed).unwrap(), None);
    }

    #[test]
    fn resolutions_read_in_either_case() {
        assert_eq!("2K".parse::<Resolution>(), Ok(Resolution::TwoK));
        assert!("8k"
            .parse::<Resolution>()
            .unwrap_err()
            .contains("1k, 2k or 4k"));
        let r: Resolution = serde_json::from_str("\"4K\"").unwrap();
        assert_eq!(r, Resolution::FourK);
    }
}
